"""StreamSum in the Amaranth simulator: the fast loop for the smallest unit."""

import random

import pytest
from amaranth.sim import Simulator

from ternopu.hw.smoke import StreamSum


def test_parameters_validated():
    with pytest.raises(ValueError, match="width"):
        StreamSum(width=1)
    with pytest.raises(ValueError, match="max_len"):
        StreamSum(max_len=0)


def test_sums_packets_with_stalls():
    dut = StreamSum(width=8, max_len=64)
    rng = random.Random(7)
    packets = [[-128] * 64, [127] * 3, [5]] + [
        [rng.randint(-128, 127) for _ in range(rng.randint(1, 20))] for _ in range(10)]
    got = []

    async def producer(ctx):
        for pkt in packets:
            for k, x in enumerate(pkt):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"data": x, "last": k == len(pkt) - 1})
                await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(packets):
            ctx.set(dut.o.ready, rng.random() < 0.6)
            # Sample at the clock edge: that is when the transfer happens.
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-4)
    assert got == [sum(p) for p in packets]
