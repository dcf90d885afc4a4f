"""cocotb testbench for :class:`ternopu.hw.smoke.StreamSum`, with random stalls on both sides."""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from ternopu.sim.runner import tb_params


class TB:
    """Owns the clock, reset and the stream driver / monitor of the DUT."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.i__valid.value = 0
        self.dut.o__ready.value = 0
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def send(self, packets, gap_p: float):
        dut = self.dut
        width = int(tb_params()["width"])
        mask = (1 << width) - 1
        for pkt in packets:
            for k, x in enumerate(pkt):
                while self.rng.random() < gap_p:
                    dut.i__valid.value = 0
                    await RisingEdge(dut.clk)
                dut.i__valid.value = 1
                dut.i__payload.value = (x & mask) | (int(k == len(pkt) - 1) << width)
                await RisingEdge(dut.clk)
                while not dut.i__ready.value:
                    await RisingEdge(dut.clk)
        dut.i__valid.value = 0

    async def receive(self, n: int, stall_p: float):
        dut = self.dut
        got = []
        while len(got) < n:
            dut.o__ready.value = int(self.rng.random() >= stall_p)
            await RisingEdge(dut.clk)
            if dut.o__valid.value and dut.o__ready.value:
                got.append(dut.o__payload.value.to_signed())
        dut.o__ready.value = 0
        return got


@cocotb.test()
async def sums_under_backpressure(dut):
    p = tb_params()
    tb = TB(dut, p.get("seed", 1))
    await tb.reset()
    width = int(p["width"])
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    packets = [[lo] * 7, [hi] * 5, [0], [lo, hi, lo, hi]]
    packets += [[tb.rng.randint(lo, hi) for _ in range(tb.rng.randint(1, 40))] for _ in range(30)]
    expected = [sum(pkt) for pkt in packets]
    rx = cocotb.start_soon(tb.receive(len(packets), p.get("stall_p", 0.3)))
    await tb.send(packets, p.get("gap_p", 0.3))
    got = await rx
    assert got == expected, f"first mismatch at packet {next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)}"
