"""cocotb testbench for :class:`ternopu.hw.csr.CSRBlock` driven by cocotbext-axi's AxiLiteMaster.

Every AXI channel gets a random pause generator (AW/W/AR valid gaps from the master, B/R ready
stalls), so the slave sees arbitrary valid/ready orders. Amaranth flattens the ``axi`` port to
``axi__aw__addr`` etc.; :func:`axil_bus` maps those names onto cocotbext-axi's channel buses
(:data:`ternopu.hw.axi_lite.FLAT_SIGNALS`).

Parameters (``TERNOPU_TB_PARAMS``): ``seed``, ``pause_p`` (probability of a pause cycle: one
number for every channel or a list for AW, W, B, AR, R), ``inc_bits`` (the DUT's counter
increment width).
"""

from __future__ import annotations

import itertools
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb_bus.bus import Bus
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp
from cocotbext.axi.axil_channels import (
    AxiLiteARBus, AxiLiteAWBus, AxiLiteBBus, AxiLiteRBus, AxiLiteWBus,
)

from ternopu.hw import csr, isa
from ternopu.hw.axi_lite import FLAT_SIGNALS
from ternopu.hw.csr import REGISTER_BY_NAME as R, counter_offset
from ternopu.sim.runner import tb_params


def _channel(cls, dut, prefix: str):
    """A cocotbext-axi channel bus whose signals carry Amaranth's flattened names."""
    bus = cls.__new__(cls)
    Bus.__init__(bus, dut, prefix, {s: FLAT_SIGNALS[s] for s in cls._signals},
                 optional_signals={s: FLAT_SIGNALS[s] for s in cls._optional_signals},
                 bus_separator="__")
    return bus


def axil_bus(dut, prefix: str = "axi") -> AxiLiteBus:
    """cocotbext-axi AxiLiteBus of the DUT's Amaranth AXI4-Lite port ``prefix``."""
    return AxiLiteBus.from_channels(*(_channel(c, dut, prefix) for c in
                                      (AxiLiteAWBus, AxiLiteWBus, AxiLiteBBus, AxiLiteARBus, AxiLiteRBus)))


class TB:
    """Clock, reset, the AXI-Lite master with random backpressure, and a start-pulse monitor."""

    def __init__(self, dut):
        p = tb_params()
        self.dut = dut
        self.rng = random.Random(p.get("seed", 1))
        self.inc_bits = int(p.get("inc_bits", csr.COUNTER_INC_BITS))
        pause_p = p.get("pause_p", 0.3)  # one probability, or one per channel AW, W, B, AR, R
        pause_p = [float(pause_p)] * 5 if not isinstance(pause_p, list) else [float(x) for x in pause_p]
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
        self.axil = AxiLiteMaster(axil_bus(dut), dut.clk, dut.rst, reset_active_level=True)
        channels = (self.axil.write_if.aw_channel, self.axil.write_if.w_channel,
                    self.axil.write_if.b_channel, self.axil.read_if.ar_channel,
                    self.axil.read_if.r_channel)
        for ch, prob in zip(channels, pause_p, strict=True):
            pattern = [self.rng.random() < prob for _ in range(self.rng.randint(50, 150))]
            ch.set_pause_generator(itertools.cycle(pattern))
        self.inc_vector = 0
        self.start_pulses = 0
        self.start_width_ok = True

    async def reset(self):
        dut = self.dut
        for name in ("busy", "done", "error", "error_code", "error_pc", "pc", "counter_inc"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        cocotb.start_soon(self._watch_start())

    async def _watch_start(self):
        prev = 0
        while True:
            await RisingEdge(self.dut.clk)
            now = int(self.dut.start.value)
            if now and not prev:
                self.start_pulses += 1
            if now and prev:
                self.start_width_ok = False
            prev = now

    async def read(self, addr: int, *, resp=AxiResp.OKAY) -> int:
        r = await self.axil.read(addr, 4)
        assert r.resp == resp, f"read {addr:#x}: {r.resp!r}, expected {resp!r}"
        return int.from_bytes(r.data, "little")

    async def write(self, addr: int, value: int, *, resp=AxiResp.OKAY):
        w = await self.axil.write(addr, value.to_bytes(4, "little"))
        assert w.resp == resp, f"write {addr:#x}: {w.resp!r}, expected {resp!r}"

    def set_inc(self, index: int, value: int):
        # keep the vector here: a cocotb write is applied later, so reading it back is stale
        w = self.inc_bits
        self.inc_vector &= ~(((1 << w) - 1) << (index * w))
        self.inc_vector |= value << (index * w)
        self.dut.counter_inc.value = self.inc_vector

    async def pulse(self, name: str, **inputs):
        for k, v in inputs.items():
            getattr(self.dut, k).value = v
        getattr(self.dut, name).value = 1
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = 0


@cocotb.test()
async def reset_values(dut):
    tb = TB(dut)
    await tb.reset()
    for r in csr.REGISTER_MAP:
        assert await tb.read(r.offset) == r.reset, r.name


@cocotb.test()
async def rw_readback_and_strobes(dut):
    tb = TB(dut)
    await tb.reset()
    for _ in range(3):
        expect = {}
        for r in csr.REGISTERS:
            rw = sum(f.mask for f in r.fields if f.access == "RW")
            if rw:
                v = tb.rng.getrandbits(32)
                await tb.write(r.offset, v)
                expect[r.name] = (v & rw) | (r.reset & ~rw)
        for name, v in expect.items():
            assert await tb.read(R[name].offset) == v, name
    scratch = R["SCRATCH"].offset
    await tb.write(scratch, 0x11223344)
    await tb.axil.write(scratch + 1, b"\xAA")          # strobe 0b0010
    await tb.axil.write(scratch + 3, b"\xBB")          # strobe 0b1000
    assert await tb.read(scratch) == 0xBB22AA44
    lo, hi = R["PROG_BASE_LO"].offset, R["PROG_BASE_HI"].offset
    await tb.write(lo, 0xDEADBEE0)
    await tb.write(hi, 3)
    assert int(dut.prog_base.value) == 0x3_DEADBEE0


@cocotb.test()
async def ro_ignored_unmapped_slverr(dut):
    tb = TB(dut)
    await tb.reset()
    for name in ("ID", "VERSION", "ERROR_PC", "CNT_CYCLES_LO"):
        await tb.write(R[name].offset, 0xFFFFFFFF)
        assert await tb.read(R[name].offset) == R[name].reset
    mapped = {r.offset for r in csr.REGISTER_MAP}
    holes = [a for a in range(0, 1 << csr.CSR_ADDR_BITS, 4) if a not in mapped]
    for addr in [0x034, 0x0FC, holes[-1]] + tb.rng.sample(holes, 8):
        await tb.write(addr, 0x5A5A5A5A, resp=AxiResp.SLVERR)
        assert await tb.read(addr, resp=AxiResp.SLVERR) == 0
    # back-to-back errors and good accesses interleaved, concurrently on read and write channels
    jobs = [cocotb.start_soon(tb.write(0x0F8, 1, resp=AxiResp.SLVERR)),
            cocotb.start_soon(tb.read(R["ID"].offset)),
            cocotb.start_soon(tb.write(R["SCRATCH"].offset, 0xC0FFEE)),
            cocotb.start_soon(tb.read(0xFFC, resp=AxiResp.SLVERR))]
    results = [await j for j in jobs]
    assert results[1] == csr.ID_MAGIC
    assert await tb.read(R["SCRATCH"].offset) == 0xC0FFEE


@cocotb.test()
async def w1c_and_error_latch(dut):
    tb = TB(dut)
    await tb.reset()
    status = R["STATUS"].offset
    dut.busy.value = 1
    await tb.pulse("done")
    await tb.pulse("error", error_code=int(isa.ErrorCode.FIELD_RANGE), error_pc=321)
    await tb.pulse("error", error_code=int(isa.ErrorCode.WATCHDOG), error_pc=999)
    assert await tb.read(status) == 0b111
    assert await tb.read(R["ERROR_CODE"].offset) == isa.ErrorCode.FIELD_RANGE
    assert await tb.read(R["ERROR_PC"].offset) == 321
    await tb.write(status, 0b001)            # zeros and RO bits: no effect
    assert await tb.read(status) == 0b111
    await tb.write(status, 0b010)            # clear done only
    assert await tb.read(status) == 0b101
    await tb.write(R["IRQ_ENABLE"].offset, 0b10)
    await RisingEdge(dut.clk)
    assert int(dut.irq.value) == 1
    await tb.write(status, 0b100)            # clear error: code and pc too
    assert await tb.read(status) == 0b001
    assert await tb.read(R["ERROR_CODE"].offset) == 0
    assert await tb.read(R["ERROR_PC"].offset) == 0
    assert int(dut.irq.value) == 0


@cocotb.test()
async def start_pulse_once_per_write(dut):
    tb = TB(dut)
    await tb.reset()
    ctrl = R["CTRL"].offset
    writes = 0
    for k in range(25):
        v = tb.rng.choice([0, 1, 1, 2, 3, 4, 5])
        await tb.write(ctrl, v)
        writes += v & 1
        if k % 7 == 0:
            await tb.pulse("done")
            assert await tb.read(R["STATUS"].offset) & 0b010
            await tb.write(ctrl, 1)  # start clears done
            writes += 1
            assert await tb.read(R["STATUS"].offset) & 0b010 == 0
    await tb.axil.write(ctrl + 1, b"\x01")   # bit 8: outside the start bit's byte: no pulse
    await ClockCycles(dut.clk, 5)
    assert tb.start_pulses == writes, (tb.start_pulses, writes)
    assert tb.start_width_ok, "a start pulse lasted more than one cycle"
    assert await tb.read(ctrl) == 0


@cocotb.test()
async def counter_snapshot_consistency(dut):
    tb = TB(dut)
    await tb.reset()
    big = 0x9E3779B1 & ((1 << tb.inc_bits) - 1) | 1
    idx = csr.NUM_COUNTERS - 1
    tb.set_inc(0, 1)
    tb.set_inc(idx, big)
    tb.set_inc(5, 3)
    await tb.write(R["CTRL"].offset, 0b100)  # clear_counters
    last = -1
    for _ in range(15):
        lo = await tb.read(counter_offset(idx))
        await ClockCycles(dut.clk, tb.rng.randint(0, 9))
        hi = await tb.read(counter_offset(idx) + 4)
        value = hi << 32 | lo
        assert value % big == 0 and value > last, f"torn or stale snapshot {value:#x}"
        last = value
    c0 = await tb.read(counter_offset(0)) | await tb.read(counter_offset(0) + 4) << 32
    c5 = await tb.read(counter_offset(5))
    assert 0 < c0 and c5 % 3 == 0 and c5 > 3 * c0 / 2
    tb.set_inc(idx, 0)
    tb.set_inc(0, 0)
    tb.set_inc(5, 0)
    await tb.write(R["CTRL"].offset, 0b100)
    for i in (0, 5, idx):
        assert await tb.read(counter_offset(i)) == 0
        assert await tb.read(counter_offset(i) + 4) == 0
