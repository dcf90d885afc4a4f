"""TLMM pieces in the Amaranth simulator (fast loop): config, table builder, lane, small engine.

Everything is compared with the golden model (:mod:`ternopu.golden.tlmm`,
:mod:`ternopu.golden.bitnet`), never with a re-implementation.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.bitnet import out_scale, rescale
from ternopu.golden.errors import ConfigError
from ternopu.golden.tlmm import build_tables, encode_keys, lookup, pack_keys, tlmm_matvec
from ternopu.hw.tlmm import (
    DEFAULT_CONFIG,
    SMALL_CONFIG,
    TLMM,
    Lane,
    TableBuilder,
    TLMMConfig,
    table_bits_value,
    tree_stages,
)

CORNER_ACTS = (-128, -127, -1, 0, 1, 126, 127)


def _f32_bits(t: torch.Tensor) -> list[int]:
    return (t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).reshape(-1).tolist()


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def test_default_config_figures():
    cfg = DEFAULT_CONFIG
    assert cfg.keys_per_cycle == 2432 and cfg.key_bits_used == 12160
    assert cfg.beat_bits == 48 * 256 and cfg.beat_efficiency > 0.98
    # 32 pseudo-channels x 256 bit at 450 MHz, per 300 MHz cycle.
    assert cfg.beat_bits == 32 * 256 * 450 // 300
    assert cfg.acc_width == 23 and cfg.acc_bound < 1 << 24
    assert cfg.tiles(2560, 2560) == (20, 45) and cfg.tiles(6912, 2560) == (54, 45)
    assert cfg.tiles(2560, 6912) == (20, 122)
    assert cfg.result_latency == 2 + cfg.lane_latency + 2 + 5
    assert tree_stages(1) == 0 and tree_stages(2) == 1 and tree_stages(19) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"tables": 0}, "tables: expected a positive int"),
    ({"lanes": 2.0}, "lanes: expected a positive int"),
    ({"beat_bits": 44}, "beat_bits: expected a multiple of 8"),
    ({"beat_bits": 36}, "beat_bits: expected a multiple of 8 >= 5"),
    ({"out_lanes": 3}, "out_lanes: must divide lanes"),
    ({"max_k": 200_000}, "max_k: accumulators must fit 25 bits"),
    ({"clock_hz": 0.0}, "clock_hz: expected > 0"),
])
def test_config_rejects_bad_parameters(kwargs, match):
    base = dict(tables=2, lanes=4, beat_bits=40, max_k=256, max_n=256, out_lanes=2)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        TLMMConfig(**base)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_command_helper_and_shape_limits():
    cfg = SMALL_CONFIG
    cmd = cfg.command(5, 7, 0x3F800000)
    assert cmd == {"row_tiles": 2, "group_tiles": 2, "out_scale": 0x3F800000, "load_act": 1}
    with pytest.raises(ConfigError, match="exceeds the engine"):
        cfg.command(5, cfg.max_k + 1, 0)
    with pytest.raises(ConfigError, match="out_scale_bits"):
        cfg.command(5, 7, 1 << 32)
    with pytest.raises(ValueError, match="config must be a TLMMConfig"):
        TLMM("big")
    with pytest.raises(ValueError, match="tables must be a positive int"):
        TableBuilder(0)
    with pytest.raises(ValueError, match="acc_width must be an int >= 11"):
        Lane(2, 10)


# ---------------------------------------------------------------------------------------------
# Table builder
# ---------------------------------------------------------------------------------------------
def _run_table_builder(groups: list[tuple[int, int, int]], tables: int) -> list[list[int]]:
    dut = TableBuilder(tables)
    batches = [groups[i:i + tables] for i in range(0, len(groups), tables)]
    got = []

    async def bench(ctx):
        for batch in batches:
            flat = [a for g in batch for a in g] + [0] * (3 * (tables - len(batch)))
            ctx.set(dut.act, flat)
            ctx.set(dut.i_valid, 1)
            await ctx.tick()
            assert ctx.get(dut.o_valid)
            ents = ctx.get(dut.entries)
            got.extend([list(ents[t]) for t in range(len(batch))])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_table_builder_exhaustive_corners_and_random():
    groups = list(itertools.product(CORNER_ACTS, repeat=3))
    rng = random.Random(3)
    groups += [tuple(rng.randint(-128, 127) for _ in range(3)) for _ in range(200)]
    got = _run_table_builder(groups, tables=3)
    want = build_tables(torch.tensor(groups, dtype=torch.int8).reshape(1, -1))[0].tolist()
    assert got == want
    assert max(abs(v) for row in got for v in row) == 384  # the extreme entry is reached


# ---------------------------------------------------------------------------------------------
# Lane
# ---------------------------------------------------------------------------------------------
def _run_lane(tables: int, beats, acc_width: int = 16):
    """beats: list of (entries [tables][14], keys [tables], first, last, gap_cycles)."""
    dut = Lane(tables, acc_width)
    results = []

    async def driver(ctx):
        for ents, keys, first, last, gap in beats:
            ctx.set(dut.table_bits, table_bits_value(ents))
            ctx.set(dut.keys, sum(k << (5 * t) for t, k in enumerate(keys)))
            ctx.set(dut.valid, 1)
            ctx.set(dut.first, first)
            ctx.set(dut.last, last)
            await ctx.tick()
            ctx.set(dut.valid, 0)
            for _ in range(gap):
                await ctx.tick()
        ctx.set(dut.valid, 0)

    async def monitor(ctx):
        n_rows = sum(b[3] for b in beats)
        cycle = 0
        while len(results) < n_rows:
            _, _, rv, res = await ctx.tick().sample(dut.result_valid, dut.result)
            cycle += 1
            if rv:
                results.append((res, cycle))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    return results


def test_lane_all_32_keys():
    rng = random.Random(4)
    acts = torch.tensor([[-128, 127, -1, 5, -77, 100]], dtype=torch.int8)
    tables = build_tables(acts)[0]  # [2, 14]
    ents = tables.tolist()
    beats = []
    want = []
    for key in range(32):
        other = rng.choice([k for k in range(32) if (k & 15) <= 13])
        beats.append((ents, [key, other], 1, 1, 0))
        # Keys with idx 14/15 do not exist: the lane reads them as 0 (golden rejects them).
        t0 = 0 if (key & 15) > 13 else int(lookup(tables[0], torch.tensor(key)))
        want.append(t0 + int(lookup(tables[1], torch.tensor(other))))
    got = _run_lane(2, beats)
    assert [g for g, _ in got] == want


def test_lane_accumulates_rows_with_gaps_and_latency():
    rng = random.Random(5)
    tables_n = 5
    acts = torch.randint(-128, 128, (1, 3 * tables_n * 7), generator=torch.Generator().manual_seed(5),
                         dtype=torch.int8)
    tabs = build_tables(acts)[0].reshape(7, tables_n, 14)
    beats, want = [], []
    for row in range(4):
        n_beats = rng.randint(1, 7)
        total = 0
        for b in range(n_beats):
            keys = [rng.choice([k for k in range(32) if (k & 15) <= 13]) for _ in range(tables_n)]
            total += int(lookup(tabs[b], torch.tensor(keys)).sum())
            beats.append((tabs[b].tolist(), keys, b == 0, b == n_beats - 1, rng.randint(0, 2)))
        want.append(total)
    got = _run_lane(tables_n, beats)
    assert [g for g, _ in got] == want
    # Latency: a single-beat row presented before edge 1 is registered on ``result`` at edge
    # ``latency_for``; the monitor samples at edges, so it sees it at edge ``latency_for + 1``.
    single = _run_lane(tables_n, [(tabs[0].tolist(), [13] * tables_n, 1, 1, 0)])
    assert single[0][1] == Lane.latency_for(tables_n) + 1


# ---------------------------------------------------------------------------------------------
# Whole engine, small configuration
# ---------------------------------------------------------------------------------------------
def _projection(n: int, k: int, seed: int, *, act_values=None, zero_groups: bool = False):
    """Random ternary weights, INT8 activations and a golden out_scale."""
    g = torch.Generator().manual_seed(seed)
    wq = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    if zero_groups:
        wq[:, : 3 * (k // 6)] = 0
    if act_values is None:
        xq = torch.randint(-128, 128, (k,), generator=g, dtype=torch.int8)
    else:
        xq = torch.tensor([act_values[i % len(act_values)] for i in range(k)], dtype=torch.int8)
    amax = torch.rand((1,), generator=g, dtype=torch.float32) * 4 + 0.01
    gamma = torch.rand((), generator=g, dtype=torch.float32) + 0.1
    return wq, xq, out_scale(amax, gamma)


def run_tlmm_amaranth(cfg: TLMMConfig, jobs, *, gap_p=0.0, stall_p=0.0, seed=0,
                      max_cycles=200_000):
    """Drive ``jobs`` = [(wq, xq, scale, load_act)] through TLMM(cfg); return outputs and timing."""
    dut = TLMM(cfg)
    rng = random.Random(seed)
    cmds, acts, beats, n_out = [], [], [], 0
    for wq, xq, scale, load in jobs:
        n, k = wq.shape
        cmds.append(cfg.command(n, k, _f32_bits(scale)[0], load))
        rt, ct = cfg.tiles(n, k)
        if load:
            padded = torch.zeros(ct * cfg.act_lanes, dtype=torch.int64)
            padded[:k] = xq.to(torch.int64)
            acts += [padded[i * cfg.act_lanes:(i + 1) * cfg.act_lanes].tolist() for i in range(ct)]
        packed = pack_keys(encode_keys(wq), cfg.tables, cfg.lanes, cfg.beat_bits)
        beats += [int.from_bytes(bytes(row.tolist()), "little") for row in packed]
        n_out += cfg.out_transfers(n, k)
    outs = []
    accept_cycles = []
    cycle = [0]

    async def clock_count(ctx):
        while True:
            await ctx.tick()
            cycle[0] += 1

    async def send(ctx, port, items, record=None):
        for item in items:
            while rng.random() < gap_p:
                ctx.set(port.valid, 0)
                await ctx.tick()
            ctx.set(port.valid, 1)
            ctx.set(port.payload, item)
            while True:
                _, _, ready = await ctx.tick().sample(port.ready)
                if ready:
                    if record is not None:
                        record.append(cycle[0])
                    break
        ctx.set(port.valid, 0)

    async def cmd_src(ctx):
        await send(ctx, dut.cmd, cmds)

    async def act_src(ctx):
        await send(ctx, dut.act, acts)

    async def key_src(ctx):
        await send(ctx, dut.keys, beats, accept_cycles)

    async def sink(ctx):
        while len(outs) < n_out:
            ctx.set(dut.out.ready, rng.random() >= stall_p)
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.out.valid, dut.out.ready, dut.out.payload)
            if valid and ready:
                outs.append((list(payload.y), list(payload.acc), int(payload.last), cycle[0]))
            assert cycle[0] < max_cycles, "engine hung"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock_count, background=True)
    for tb in (cmd_src, act_src, key_src, sink):
        sim.add_testbench(tb)
    sim.run()
    assert len(outs) == n_out, f"got {len(outs)} of {n_out} outputs"
    return outs, accept_cycles


def _check_jobs(cfg, jobs, outs):
    pos = 0
    last_act = None
    for wq, xq, scale, load in jobs:
        if load:
            last_act = xq
        n, k = wq.shape
        acc = tlmm_matvec(encode_keys(wq), last_act.reshape(1, k))[0]
        y = rescale(acc.reshape(1, n), scale.reshape(1, 1))[0]
        cnt = cfg.out_transfers(n, k)
        got_acc = [a for o in outs[pos:pos + cnt] for a in o[1]][:n]
        got_y = [v for o in outs[pos:pos + cnt] for v in o[0]][:n]
        pad_acc = [a for o in outs[pos:pos + cnt] for a in o[1]][n:]
        assert got_acc == acc.tolist()
        assert got_y == _f32_bits(y)
        assert all(a == 0 for a in pad_acc)
        assert [o[2] for o in outs[pos:pos + cnt]] == [0] * (cnt - 1) + [1]
        pos += cnt


def test_small_engine_bit_exact_with_stalls():
    cfg = SMALL_CONFIG
    jobs = [
        (*_projection(9, 13, 1)[:2], _projection(9, 13, 1)[2], True),  # K % 3 == 1, N % lanes != 0
        (*_projection(1, 1, 2), True),  # single row, single column
        (*_projection(4, 2, 3, act_values=[-128]), True),  # K % 3 == 2, -128 everywhere
        (*_projection(6, 30, 4, act_values=[127, -128, 127], zero_groups=True), True),
    ]
    # Re-use the previous activations (load_act = 0) with new weights.
    wq, _, sc = _projection(5, 30, 5)
    jobs.append((wq, jobs[-1][1], sc, False))
    outs, _ = run_tlmm_amaranth(cfg, jobs, gap_p=0.3, stall_p=0.4, seed=1)
    _check_jobs(cfg, jobs, outs)


def test_small_engine_full_rate_and_latency():
    cfg = TLMMConfig(tables=2, lanes=4, beat_bits=40, max_k=256, max_n=256, out_lanes=4)
    wq, xq, sc = _projection(12, 60, 6)  # 3 row tiles x 10 group tiles
    wq2, _, sc2 = _projection(8, 60, 7)
    jobs = [(wq, xq, sc, True), (wq2, xq, sc2, False)]
    outs, acc_cycles = run_tlmm_amaranth(cfg, jobs)
    _check_jobs(cfg, jobs, outs)
    # No gaps, no stalls: every beat of both projections accepted on consecutive cycles.
    assert acc_cycles == list(range(acc_cycles[0], acc_cycles[0] + len(acc_cycles)))
    # First output of a row tile: result_latency cycles after its last beat was accepted
    # (the transfer happens at the edge ending that cycle, hence +1 in the edge count).
    first_row_tile_last_beat = acc_cycles[cfg.tiles(12, 60)[1] - 1]
    assert outs[0][3] - first_row_tile_last_beat == cfg.result_latency


def test_bad_command_sets_error():
    cfg = SMALL_CONFIG
    dut = TLMM(cfg)

    async def bench(ctx):
        assert not ctx.get(dut.error)
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload, {"row_tiles": 0, "group_tiles": 1, "out_scale": 0, "load_act": 1})
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        assert ctx.get(dut.error)
        assert ctx.get(dut.cmd.ready)  # the command was dropped, the engine is ready again
        assert not ctx.get(dut.act.ready) and not ctx.get(dut.keys.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
