"""Amaranth-simulator stream drivers shared by the NPE unit tests (random gaps and stalls)."""

from __future__ import annotations

import random

import torch
from amaranth.sim import Simulator


def f32_bits(t: torch.Tensor) -> list[int]:
    """binary32 bit patterns of a float tensor (flattened)."""
    return (t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64).reshape(-1)
            & 0xFFFFFFFF).tolist()


def f32_from_bits(bits) -> torch.Tensor:
    return torch.tensor(list(bits), dtype=torch.int64).to(torch.uint32).view(torch.int32).view(torch.float32)


def simulate(dut, sources: dict, sinks: dict, *, seed: int = 1, gap_p: float = 0.2,
             stall_p: float = 0.2, setup=None, max_cycles: int = 200_000):
    """Drive ``sources`` (port -> list of payload dicts) and collect ``sinks`` (port -> count).

    Each source gets random valid gaps, each sink random ready stalls. ``setup(ctx)`` sets static
    configuration inputs first. Returns {sink port name: [payload views]} (payloads as ints/structs).
    """
    rng = random.Random(seed)
    got = {name: [] for name in sinks}

    def producer(port, items):
        async def run(ctx):
            if setup is not None:
                setup(ctx)
            for it in items:
                while rng.random() < gap_p:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                ctx.set(port.valid, 1)
                ctx.set(port.payload, it)
                await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)
        return run

    def consumer(name, port, n):
        async def run(ctx):
            while len(got[name]) < n:
                ctx.set(port.ready, rng.random() >= stall_p)
                _, _, v, r, pl = await ctx.tick().sample(port.valid, port.ready, port.payload)
                if v and r:
                    got[name].append(pl)
            ctx.set(port.ready, 0)
        return run

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for port, items in sources.values():
        sim.add_testbench(producer(port, items))
    for name, (port, n) in sinks.items():
        sim.add_testbench(consumer(name, port, n))

    async def watchdog(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
        counts = {name: len(v) for name, v in got.items()}
        raise AssertionError(f"no completion after {max_cycles} cycles (deadlock?), got {counts}")

    sim.add_process(watchdog)  # a process does not keep the simulation alive
    sim.run()
    return got
