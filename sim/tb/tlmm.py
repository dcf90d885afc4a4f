"""cocotb testbench for :class:`ternopu.hw.tlmm.TLMM`: bit-exact against the golden TLMM.

Parameters (``tb_params()``, set by tests/sim/test_tlmm_cocotb.py and sim/bench_tlmm.py):

* ``config``: the :class:`~ternopu.hw.tlmm.TLMMConfig` fields of the DUT.
* ``gap_p``: probability of an idle cycle before each transfer on ``cmd``, ``act`` and ``keys``.
* ``stall_p``: probability that ``out.ready`` is low in a cycle.
* ``seed``: seeds the stall pattern and the random tensors.
* ``shapes`` (``real_shapes`` test): list of ``[N, K]`` projections, one token each.
* ``report``: optional path of a JSON file receiving per-projection cycle figures.

The drivers keep Python cheap per cycle: every beat is prepared upfront as one Python integer
(the golden :func:`~ternopu.golden.tlmm.pack_keys` bytes read as little endian), one coroutine per
stream. Integer accumulators and binary32 outputs (as bit patterns) are both compared.
"""

from __future__ import annotations

import json
import random
import time

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from ternopu.golden.bitnet import int8_act_quant, out_scale, rescale, ternary_weight_quant
from ternopu.golden.tlmm import encode_keys, pack_keys, tlmm_matvec
from ternopu.hw.tlmm import TLMMConfig
from ternopu.sim.runner import tb_params

CLOCK_NS = 4


def f32_bits(t: torch.Tensor) -> list[int]:
    """binary32 bit patterns of a float32 tensor, as unsigned ints."""
    return (t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).reshape(-1).tolist()


def pack_struct(layout, values: dict) -> int:
    """Integer value of an Amaranth ``StructLayout`` payload (two's complement fields)."""
    word = 0
    for name, field in layout:
        word |= (int(values[name]) & ((1 << field.width) - 1)) << field.offset
    return word


def to_signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


class Projection:
    """One token through one ternary projection: tensors, golden results, stream items."""

    def __init__(self, cfg: TLMMConfig, wq: torch.Tensor, xq: torch.Tensor, scale: torch.Tensor,
                 load_act: bool = True):
        self.cfg = cfg
        self.n, self.k = wq.shape
        self.load_act = load_act
        keys = encode_keys(wq)
        # Golden: exact integer accumulators, then one binary32 multiply per output.
        self.acc = tlmm_matvec(keys, xq.reshape(1, self.k))[0].tolist()
        self.y = f32_bits(rescale(torch.tensor([self.acc]), scale.reshape(1, 1)))
        self.cmd = cfg.command(self.n, self.k, f32_bits(scale)[0], load_act)
        rt, ct = cfg.tiles(self.n, self.k)
        self.acts = []
        if load_act:
            lanes = cfg.act_lanes
            padded = torch.zeros(ct * lanes, dtype=torch.int64)
            padded[:self.k] = xq.to(torch.int64)
            for c in range(ct):
                word = 0
                for j, a in enumerate(padded[c * lanes:(c + 1) * lanes].tolist()):
                    word |= (a & 0xFF) << (8 * j)
                self.acts.append(word)
        packed = pack_keys(keys, cfg.tables, cfg.lanes, cfg.beat_bits).numpy()
        self.beats = [int.from_bytes(row.tobytes(), "little") for row in packed]
        self.n_out = cfg.out_transfers(self.n, self.k)


class TB:
    """Clock, reset, stream drivers and the output monitor of one TLMM instance."""

    def __init__(self, dut, cfg: TLMMConfig, seed: int, gap_p: float, stall_p: float):
        self.dut = dut
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.gap_p = gap_p
        self.stall_p = stall_p
        self.cycle = 0
        self.key_accepts: list[int] = []
        self.outs: list[tuple[list[int], list[int], int, int]] = []
        self.out_layout = cfg.out_layout()
        self.cmd_layout = cfg.cmd_layout()
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())

    async def reset(self):
        d = self.dut
        d.rst.value = 1
        for s in (d.cmd__valid, d.act__valid, d.keys__valid, d.out__ready):
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
        clk = self.dut.clk
        gap_p = self.gap_p
        for item in items:
            while gap_p and self.rng.random() < gap_p:
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
        ol = self.out_layout
        y_f, acc_f, last_f = ol["y"], ol["acc"], ol["last"]
        ol_n = self.cfg.out_lanes
        aw = self.cfg.acc_width
        stall_p = self.stall_p
        while len(self.outs) < n:
            d.out__ready.value = int(not stall_p or self.rng.random() >= stall_p)
            await RisingEdge(d.clk)
            if d.out__valid.value and d.out__ready.value:
                word = d.out__payload.value.to_unsigned()
                y = [(word >> (y_f.offset + 32 * j)) & 0xFFFFFFFF for j in range(ol_n)]
                acc = [to_signed((word >> (acc_f.offset + aw * j)) & ((1 << aw) - 1), aw)
                       for j in range(ol_n)]
                self.outs.append((y, acc, (word >> last_f.offset) & 1, self.cycle))
        d.out__ready.value = 0

    async def run(self, projections: list[Projection], timeout_cycles: int) -> float:
        """Stream all projections through the DUT; return the wall-clock seconds it took."""
        d = self.dut
        cmds = [pack_struct(self.cmd_layout, p.cmd) for p in projections]
        acts = [a for p in projections for a in p.acts]
        beats = [b for p in projections for b in p.beats]
        n_out = sum(p.n_out for p in projections)
        t0 = time.perf_counter()
        rx = cocotb.start_soon(self._receive(len(self.outs) + n_out))
        cocotb.start_soon(self._send(d.cmd__valid, d.cmd__payload, d.cmd__ready, cmds))
        cocotb.start_soon(self._send(d.act__valid, d.act__payload, d.act__ready, acts))
        cocotb.start_soon(self._send(d.keys__valid, d.keys__payload, d.keys__ready, beats,
                                     self.key_accepts))
        start = self.cycle
        while not rx.done():
            await ClockCycles(d.clk, 64)
            assert self.cycle - start < timeout_cycles, (
                f"timeout: {len(self.outs)}/{n_out} outputs after {self.cycle - start} cycles")
        assert not int(d.error.value), "engine flagged a command error"
        return time.perf_counter() - t0

    def check(self, projections: list[Projection], first_out: int = 0):
        """Compare output words from ``first_out`` on with the golden model, projection by projection."""
        pos = first_out
        for i, p in enumerate(projections):
            chunk = self.outs[pos:pos + p.n_out]
            pos += p.n_out
            acc = [a for o in chunk for a in o[1]]
            y = [v for o in chunk for v in o[0]]
            if acc[:p.n] != p.acc:
                bad = next(j for j, (a, b) in enumerate(zip(acc, p.acc)) if a != b)
                raise AssertionError(
                    f"projection {i} ({p.n}x{p.k}): acc[{bad}] = {acc[bad]}, golden {p.acc[bad]}")
            if y[:p.n] != p.y:
                bad = next(j for j, (a, b) in enumerate(zip(y, p.y)) if a != b)
                raise AssertionError(
                    f"projection {i} ({p.n}x{p.k}): y[{bad}] = {y[bad]:#010x}, golden {p.y[bad]:#010x}")
            assert all(a == 0 for a in acc[p.n:]), f"projection {i}: padding rows not zero"
            assert [o[2] for o in chunk] == [0] * (p.n_out - 1) + [1], f"projection {i}: last flags"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_projection(cfg, n, k, seed, *, act_values=None, zero_groups=False, load_act=True,
                      xq=None):
    """Random ternary weights / INT8 activations / positive out_scale (golden out_scale)."""
    g = _gen(seed)
    wq = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    if zero_groups:
        wq[:, : 3 * (k // 6)] = 0  # whole all-zero groups (key 0) in the first half
        wq[:: 2, :] = 0  # and all-zero rows
    if xq is None:
        if act_values is None:
            xq = torch.randint(-128, 128, (k,), generator=g, dtype=torch.int8)
        else:
            xq = torch.tensor([act_values[i % len(act_values)] for i in range(k)], dtype=torch.int8)
    amax = torch.rand((1,), generator=g, dtype=torch.float32) * 8 + 1e-3
    gamma = torch.rand((), generator=g, dtype=torch.float32) * 0.1 + 1e-3
    return Projection(cfg, wq, xq, out_scale(amax, gamma), load_act)


def corner_projections(cfg: TLMMConfig, seed: int) -> list[Projection]:
    """Corner cases: -128/127 activations, zero groups, K % 3 != 0, single row / column, reuse."""
    projs = []
    r, c = cfg.lanes, 3 * cfg.tables
    projs.append(random_projection(cfg, 1, 1, seed + 1))  # single row, single column
    projs.append(random_projection(cfg, 1, 2 * c + 2, seed + 2, act_values=[-128]))  # K%3==2
    projs.append(random_projection(cfg, r + 1, 1, seed + 3, act_values=[127]))  # single column
    projs.append(random_projection(cfg, 2 * r + 3, 3 * c + 1, seed + 4,
                                   act_values=[-128, 127, -128, 127, 0], zero_groups=True))
    projs.append(random_projection(cfg, r - 1 if r > 1 else 1, 4 * c, seed + 5))
    # Same activations again without reloading (q/k/v style), new weights.
    projs.append(random_projection(cfg, 2 * r, 4 * c, seed + 6, load_act=False,
                                   xq=_last_xq(projs[-1])))
    projs.append(random_projection(cfg, 3 * r, min(cfg.max_k, 9 * c + 2), seed + 7))
    return projs


def _last_xq(p: Projection) -> torch.Tensor:
    # Rebuild the int8 vector the projection loaded (first k elements of its act words).
    vals = []
    for word in p.acts:
        vals += [to_signed((word >> (8 * j)) & 0xFF, 8) for j in range(p.cfg.act_lanes)]
    return torch.tensor(vals[:p.k], dtype=torch.int8)


def _setup(dut):
    prm = tb_params()
    cfg = TLMMConfig(**prm["config"])
    tb = TB(dut, cfg, prm.get("seed", 1), prm.get("gap_p", 0.0), prm.get("stall_p", 0.0))
    return prm, cfg, tb


@cocotb.test()
async def corners_under_backpressure(dut):
    """Corner projections with random valid gaps and output stalls, bit-exact."""
    prm, cfg, tb = _setup(dut)
    await tb.reset()
    projs = corner_projections(cfg, prm.get("seed", 1))
    beats = sum(len(p.beats) for p in projs)
    await tb.run(projs, timeout_cycles=200 * (beats + 100))
    tb.check(projs)
    if not tb.gap_p and not tb.stall_p:
        # Full rate: within each run of beats without a (re)load, one beat per cycle, and the
        # pipeline latency constant holds.
        acc = tb.key_accepts
        p = projs[-1]
        tail = acc[-len(p.beats):]
        assert tail == list(range(tail[0], tail[0] + len(tail))), "key stream stalled"
        ct = cfg.tiles(p.n, p.k)[1]
        first_out = tb.outs[-p.n_out][3]
        assert first_out - tail[ct - 1] == cfg.result_latency


@cocotb.test()
async def real_shapes(dut):
    """One token through each listed projection (default: BitNet 2B4T shapes), bit-exact."""
    prm, cfg, tb = _setup(dut)
    shapes = prm.get("shapes", [])
    if not shapes:
        return
    await tb.reset()
    seed = prm.get("seed", 1)
    report = []
    for i, (n, k) in enumerate(shapes):
        g = _gen(seed + 100 * i)
        w = torch.randn(n, k, generator=g, dtype=torch.float32) * 0.02
        wq, gamma = ternary_weight_quant(w)
        x = torch.randn(k, generator=g, dtype=torch.float32)
        xq, amax = int8_act_quant(x)
        proj = Projection(cfg, wq, xq, out_scale(amax, gamma))
        before_out = len(tb.outs)
        before_acc = len(tb.key_accepts)
        c0 = tb.cycle
        wall = await tb.run([proj], timeout_cycles=20 * len(proj.beats) + 10_000)
        tb.check([proj], first_out=before_out)
        tb_outs = tb.outs[before_out:]
        acc = tb.key_accepts[before_acc:]
        report.append({
            "n": n, "k": k, "beats": len(proj.beats),
            "ideal_cycles": cfg.ideal_cycles(n, k),
            "key_cycles": acc[-1] - acc[0] + 1,
            "cycles_cmd_to_last_out": tb_outs[-1][3] - c0,
            "first_beat_to_first_out": tb_outs[0][3] - acc[0],
            "last_beat_to_last_out": tb_outs[-1][3] - acc[-1],
            "wall_s": wall,
        })
        dut._log.info("projection %dx%d: %s", n, k, report[-1])
    if prm.get("report"):
        with open(prm["report"], "w") as fh:
            json.dump(report, fh, indent=1)


@cocotb.test()
async def throughput_bench(dut):
    """Drive :class:`ternopu.hw.tlmm_bench.TLMMBench` (HDL sources/sink): cycles and sim speed.

    Parameters: ``config``, ``scenarios`` = [{"name", "n", "k", "jobs"}], ``report`` (JSON path).
    Python only sets the inputs and waits for ``done``: no per-cycle callbacks.
    """
    prm = tb_params()
    cfg = TLMMConfig(**prm["config"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    results = []
    for sc in prm["scenarios"]:
        rt, ct = cfg.tiles(sc["n"], sc["k"])
        dut.row_tiles.value = rt
        dut.group_tiles.value = ct
        dut.jobs.value = sc["jobs"]
        await RisingEdge(dut.clk)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        t0 = time.perf_counter()
        await RisingEdge(dut.done)
        wall = time.perf_counter() - t0
        res = {k: int(getattr(dut, k).value) for k in (
            "cycles", "first_key", "last_key", "beats", "first_out", "last_out", "outs")}
        res.update(name=sc["name"], n=sc["n"], k=sc["k"], jobs=sc["jobs"], row_tiles=rt,
                   group_tiles=ct, wall_s=wall)
        assert res["beats"] == rt * ct * sc["jobs"], res
        assert res["outs"] == rt * cfg.drain_cycles * sc["jobs"], res
        results.append(res)
        dut._log.info("%s", res)
    with open(prm["report"], "w") as fh:
        json.dump(results, fh, indent=1)
