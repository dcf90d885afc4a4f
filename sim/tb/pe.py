"""cocotb testbench for :class:`ternopu.hw.pe_array.PEArray`: bit-exact against golden
:func:`ternopu.golden.pe.linear_bfp_int4` under random backpressure.

Parameters (``tb_params()``, set by tests/sim/test_pe_cocotb.py and sim/bench_pe.py):

* ``config``: :class:`~ternopu.hw.pe_array.PEConfig` fields of the DUT (see :func:`config_params`).
* ``gap_p``: probability of an idle cycle before each transfer on ``cmd``, ``act``, ``qw``, ``meta``.
* ``stall_p``: probability that ``out.ready`` is low in a cycle.
* ``seed``: seeds the stall pattern and the random tensors.
* ``shapes`` (``real_shapes``): list of ``[K, N]`` projections (``y = x @ W``, W ``[K, N]``), one
  token each, Llama-2-like data (:func:`ternopu.golden.pe_error_report.rtn_like_int4`).
* ``report``: optional JSON path receiving per-projection cycle figures.

Every stream item is prepared upfront as one Python integer (the checkpoint's packed words read
as little endian, exactly what a DMA engine would fetch); one coroutine per stream, so Python per
cycle stays at a few handle accesses. Outputs are compared as binary32 bit patterns.
"""

from __future__ import annotations

import functools
import json
import random
import time

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from ternopu.golden.bfp import BFPFormat
from ternopu.golden.int4 import pack_awq, pack_gptq
from ternopu.golden.pe import linear_bfp_int4
from ternopu.golden.pe_error_report import llm_activations, rtn_like_int4
from ternopu.hw.pe_array import PEConfig
from ternopu.sim.runner import tb_params

CLOCK_NS = 4
CONFIG_FIELDS = ("rows", "cols", "group", "out_lanes", "max_k", "max_n", "dsp", "int4_format",
                 "legacy_zero_offset")


@functools.cache
def pe_verilog(cfg: PEConfig) -> str:
    """Verilog of a PEArray (elaboration takes tens of seconds: computed once per process)."""
    from ternopu.hw.pe_array import PEArray
    from ternopu.sim import runner

    return runner.verilog_of(PEArray(cfg), "pe_top")


def build_pe(cfg: PEConfig, tag: str):
    """Verilate and compile a :class:`~ternopu.hw.pe_array.PEArray` (cached by the runner)."""
    from ternopu.sim import runner

    return runner.build(pe_verilog(cfg), "pe_top", tag=tag)


def config_params(cfg: PEConfig) -> dict:
    """JSON-able description of a PEConfig (its BFP format included)."""
    d = {f: getattr(cfg, f) for f in CONFIG_FIELDS}
    d["fmt"] = [cfg.fmt.block, cfg.fmt.mant_bits]
    return d


def config_from_params(d: dict) -> PEConfig:
    kw = {f: d[f] for f in CONFIG_FIELDS}
    return PEConfig(fmt=BFPFormat(*d["fmt"]), **kw)


def f32_bits(t: torch.Tensor) -> list[int]:
    return (t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).reshape(-1).tolist()


def _rows_to_ints(arr: np.ndarray) -> list[int]:
    """Each row of a little-endian array as one integer (its bytes, little endian)."""
    arr = np.ascontiguousarray(arr)
    raw = arr.tobytes()
    step = arr.shape[1] * arr.dtype.itemsize
    return [int.from_bytes(raw[i:i + step], "little") for i in range(0, len(raw), step)]


def pack_struct(layout, values: dict) -> int:
    word = 0
    for name, field in layout:
        word |= (int(values[name]) & ((1 << field.width) - 1)) << field.offset
    return word


def int4_streams(cfg: PEConfig, q, zeros, scales) -> tuple[list[int], list[int]]:
    """(``qw`` transfers, ``meta`` transfers) of one projection in tile/beat order (see hw.dequant)."""
    k, n = q.shape
    lanes, rows, group = cfg.lanes, cfg.rows, cfg.group
    if cfg.int4_format == "gptq":
        pk = pack_gptq(q, zeros, scales, legacy_zero_offset=cfg.legacy_zero_offset)
    else:
        pk = pack_awq(q, zeros, scales)
    qw = pk["qweight"].numpy().astype("<i4")
    qz = pk["qzeros"].numpy().astype("<i4")
    sc = pk["scales"].view(torch.int16).numpy().astype("<i2")
    qws, metas = [], []
    for n0 in range(0, n, lanes):
        if cfg.int4_format == "gptq":
            tile = qw[:, n0:n0 + lanes].reshape(k // rows, rows // 8 * lanes)
        else:
            tile = qw[:, n0 // 8:(n0 + lanes) // 8].reshape(k // rows, rows * lanes // 8)
        qws.extend(_rows_to_ints(tile))
        zw = _rows_to_ints(qz[:, n0 // 8:(n0 + lanes) // 8])
        sw = _rows_to_ints(sc[:, n0:n0 + lanes])
        metas.extend(z | (s << (4 * lanes)) for z, s in zip(zw, sw))
    return qws, metas


def act_words(cfg: PEConfig, x: torch.Tensor) -> list[int]:
    """``act`` transfers: one BFP block of FP16 words each."""
    bits = x.contiguous().view(torch.int16).numpy().astype("<i2").reshape(-1, cfg.fmt.block)
    return _rows_to_ints(bits)


class Projection:
    """One token through one INT4 projection: stream items and the golden result."""

    def __init__(self, cfg: PEConfig, x, q, zeros, scales, load_act: bool = True):
        self.k, self.n = q.shape
        n_tiles, k_groups = cfg.tiles(self.n, self.k)
        self.cmd = pack_struct(cfg.cmd_layout(), {"n_tiles": n_tiles, "k_groups": k_groups,
                                                  "load_act": int(load_act)})
        self.acts = act_words(cfg, x) if load_act else []
        self.qws, self.metas = int4_streams(cfg, q, zeros, scales)
        self.y = f32_bits(linear_bfp_int4(x, q, zeros, scales, cfg.group, cfg.fmt))
        self.beats = len(self.qws)
        self.n_out = self.n // cfg.out_lanes


class TB:
    """Clock, reset, stream drivers and the output monitor."""

    def __init__(self, dut, cfg: PEConfig, seed: int, gap_p: float, stall_p: float):
        self.dut, self.cfg = dut, cfg
        self.rng = random.Random(seed)
        self.gap_p, self.stall_p = gap_p, stall_p
        self.cycle = 0
        self.qw_accepts: list[int] = []
        self.outs: list[tuple[list[int], int, int]] = []
        self.out_layout = cfg.out_layout()
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())

    async def reset(self):
        d = self.dut
        d.rst.value = 1
        for s in (d.cmd__valid, d.act__valid, d.qw__valid, d.meta__valid, d.out__ready):
            s.value = 0
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def _send(self, valid, payload, ready, items, record=None):
        clk, gap_p, rng = self.dut.clk, self.gap_p, self.rng
        for item in items:
            while gap_p and rng.random() < gap_p:
                valid.value = 0
                await RisingEdge(clk)
            payload.value = item
            valid.value = 1
            await RisingEdge(clk)
            while not ready.value:
                await RisingEdge(clk)
            if record is not None:
                record.append(self.cycle)
        valid.value = 0

    async def _receive(self, n: int):
        d = self.dut
        y_f, last_f = self.out_layout["y"], self.out_layout["last"]
        ol = self.cfg.out_lanes
        stall_p, rng = self.stall_p, self.rng
        while len(self.outs) < n:
            d.out__ready.value = int(not stall_p or rng.random() >= stall_p)
            await RisingEdge(d.clk)
            if d.out__valid.value and d.out__ready.value:
                word = d.out__payload.value.to_unsigned()
                y = [(word >> (y_f.offset + 32 * j)) & 0xFFFFFFFF for j in range(ol)]
                self.outs.append((y, (word >> last_f.offset) & 1, self.cycle))
        d.out__ready.value = 0

    async def run(self, projections: list[Projection], timeout_cycles: int) -> float:
        d = self.dut
        t0 = time.time()
        n_out = len(self.outs) + sum(p.n_out for p in projections)  # outs accumulate across runs
        cocotb.start_soon(self._send(d.cmd__valid, d.cmd__payload, d.cmd__ready, [p.cmd for p in projections]))
        cocotb.start_soon(self._send(d.act__valid, d.act__payload, d.act__ready,
                                     [a for p in projections for a in p.acts]))
        cocotb.start_soon(self._send(d.qw__valid, d.qw__payload, d.qw__ready,
                                     [w for p in projections for w in p.qws], self.qw_accepts))
        cocotb.start_soon(self._send(d.meta__valid, d.meta__payload, d.meta__ready,
                                     [w for p in projections for w in p.metas]))
        rx = cocotb.start_soon(self._receive(n_out))
        start = self.cycle
        while not rx.done():
            await ClockCycles(d.clk, 256)
            assert self.cycle - start < timeout_cycles, (
                f"timeout: {len(self.outs)}/{n_out} outputs after {timeout_cycles} cycles")
        return time.time() - t0

    def check(self, projections: list[Projection]) -> None:
        i = 0
        ol = self.cfg.out_lanes
        for pi, p in enumerate(projections):
            got = []
            for j in range(p.n_out):
                y, last, _ = self.outs[i]
                i += 1
                got.extend(y)
                assert last == (j == p.n_out - 1), f"projection {pi}: last flag wrong at transfer {j}"
            bad = [n for n in range(p.n) if got[n] != p.y[n]]
            assert not bad, (f"projection {pi} ({p.k}x{p.n}): {len(bad)} outputs differ, first n={bad[0]}: "
                             f"got {got[bad[0]]:#010x} expected {p.y[bad[0]]:#010x}")
        assert not int(self.dut.error.value), "error flag raised"
        assert len(self.outs) == i and ol


def corner_projections(cfg: PEConfig, seed: int) -> list[Projection]:
    """Corner cases on a small engine: zero groups, max/min codes, denormal / large / dominant
    FP16 activations, negative and denormal scales, activation reuse (load_act = 0)."""
    g = torch.Generator().manual_seed(seed)
    lanes, group = cfg.lanes, cfg.group
    k, n = min(cfg.max_k, 4 * group), 2 * lanes
    projs = []
    # 1. LLM-like activations, RTN weights.
    q, z, s = rtn_like_int4(k, n, g, group=group)
    x = llm_activations(1, k, g)[0]
    projs.append(Projection(cfg, x, q, z, s))
    # 2. Same activations reused, extreme codes: q = 15 / z = 0 and q = 0 / z = 15, zero group (q == z).
    q2 = torch.full((k, n), 15, dtype=torch.int64)
    q2[:, n // 2:] = 0
    z2 = torch.zeros(k // group, n, dtype=torch.int64)
    z2[:, n // 2:] = 15
    q2[:group, :lanes] = 7
    z2[0, :lanes] = 7  # group 0 of the first tile: all weights zero
    s2 = (torch.rand(k // group, n, generator=g) * 0.02 + 1e-3).to(torch.float16)
    s2[:, 1::3] = -s2[:, 1::3]  # negative scales
    s2[-1, :4] = torch.tensor([2.0 ** -24, 3 * 2.0 ** -24, 2.0 ** -14, 65504.0], dtype=torch.float16)
    projs.append(Projection(cfg, x, q2, z2, s2, load_act=False))
    # 3. Activations: denormals, +-65504, one dominant value per block, an all-zero group.
    x3 = torch.randn(k, generator=g) * 0.01
    blk = cfg.fmt.block
    x3[:blk] = torch.randn(blk, generator=g) * 2.0 ** -20  # denormal-only block
    x3[blk:2 * blk] = torch.randn(blk, generator=g) * 2.0 ** -16
    x3[blk + 3] = 60000.0  # dominant value next to denormals
    x3[2 * blk] = -65504.0
    x3[group:2 * group] = 0.0  # all-zero group
    x3[3 * blk + 5] = 2.0 ** -24
    q3, z3, s3 = rtn_like_int4(k, n, g, group=group)
    projs.append(Projection(cfg, x3.to(torch.float16), q3, z3, s3))
    # 4. Random codes and zeros everywhere, shortest legal K (one group), all-negative x.
    q4 = torch.randint(0, 16, (group, lanes), generator=g)
    z4 = torch.randint(0, 16, (1, lanes), generator=g)
    s4 = (torch.randn(1, lanes, generator=g) * 0.05).to(torch.float16)
    x4 = -(torch.rand(group, generator=g) * 4).to(torch.float16)
    projs.append(Projection(cfg, x4, q4, z4, s4))
    return projs


@cocotb.test()
async def corners_under_backpressure(dut):
    p = tb_params()
    cfg = config_from_params(p["config"])
    tb = TB(dut, cfg, p.get("seed", 1), p.get("gap_p", 0.0), p.get("stall_p", 0.0))
    await tb.reset()
    projs = corner_projections(cfg, p.get("seed", 1))
    await tb.run(projs, timeout_cycles=200_000)
    tb.check(projs)
    dut._log.info("corners: %d projections, %d output transfers, %d cycles (gap_p %.2f, stall_p %.2f)",
                  len(projs), len(tb.outs), tb.cycle, tb.gap_p, tb.stall_p)
    # A command with zero tiles is dropped and raises the sticky error flag.
    d = dut
    d.cmd__payload.value = pack_struct(cfg.cmd_layout(), {"n_tiles": 0, "k_groups": 1, "load_act": 0})
    d.cmd__valid.value = 1
    await RisingEdge(d.clk)
    d.cmd__valid.value = 0
    await ClockCycles(d.clk, 2)
    assert int(d.error.value) == 1


@cocotb.test()
async def real_shapes(dut):
    p = tb_params()
    cfg = config_from_params(p["config"])
    tb = TB(dut, cfg, p.get("seed", 3), p.get("gap_p", 0.0), p.get("stall_p", 0.0))
    await tb.reset()
    g = torch.Generator().manual_seed(p.get("seed", 3))
    rows = []
    for k, n in p["shapes"]:
        q, z, s = rtn_like_int4(k, n, g, group=cfg.group)
        x = llm_activations(1, k, g)[0]
        proj = Projection(cfg, x, q, z, s)
        tb.qw_accepts.clear()
        n_before = len(tb.outs)
        act_start = tb.cycle
        wall = await tb.run([proj], timeout_cycles=4 * proj.beats + 100_000)
        got = [y for (ys, _, _) in tb.outs[n_before:] for y in ys]
        bad = [i for i in range(n) if got[i] != proj.y[i]]
        assert not bad, f"{k}x{n}: {len(bad)} outputs differ (first {bad[0]})"
        first_beat, last_beat = tb.qw_accepts[0], tb.qw_accepts[-1]
        last_out = tb.outs[-1][2]
        rows.append({
            "k": k, "n": n, "beats": proj.beats, "ideal_cycles": cfg.ideal_cycles(n, k),
            "weight_cycles": last_beat - first_beat + 1,
            "load_cycles": first_beat - act_start,
            "total_cycles": last_out - act_start,
            "last_beat_to_last_out": last_out - last_beat,
            "hbm_bytes": cfg.hbm_bytes(n, k),
            "wall_s": round(wall, 2),
        })
        dut._log.info("%dx%d bit-exact: %s", k, n, rows[-1])
    assert not int(dut.error.value)
    if p.get("report"):
        with open(p["report"], "w") as f:
            json.dump(rows, f, indent=1)
