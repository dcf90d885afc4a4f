"""Stream builders and the cocotb testbench for :class:`ternopu.hw.pe_attn.AttnArray`.

The builders turn one attention operation (golden :func:`~ternopu.golden.pe.qk_bfp`,
:func:`~ternopu.golden.pe.pv_bfp`, :func:`~ternopu.golden.pe.qk_bfp_kivi`,
:func:`~ternopu.golden.pe.pv_bfp_kivi`) into the engine's stream items (Python integers in the
payload layouts of :class:`~ternopu.hw.pe_attn.AttnConfig`) plus the golden result; both the
Amaranth-simulator tests (tests/hw/test_pe_attn.py) and the cocotb bench use them.

cocotb parameters (``tb_params()``): ``config`` (AttnConfig fields), ``gap_p``, ``stall_p``,
``seed``, ``cases`` (list of ``{op, t, d, bits}``), ``report`` (optional JSON path receiving
per-case cycle figures).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ternopu.golden import pe
from ternopu.golden.kivi import kivi_quantize_keys, kivi_quantize_values
from ternopu.hw.pe_attn import BLOCK, AttnConfig

CLOCK_NS = 4


def _f16(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float16).contiguous().view(torch.int16).numpy().astype(np.uint16)


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).contiguous().view(torch.int32).numpy().astype(np.uint32)


def _ints(a: np.ndarray) -> list[int]:
    """Rows of a C-contiguous array -> little-endian integers (one per leading index)."""
    a = np.ascontiguousarray(a)
    n = a.shape[0]
    raw = a.reshape(n, -1).view(np.uint8)
    return [int.from_bytes(raw[i].tobytes(), "little") for i in range(n)]


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """[..., n] codes -> [..., n * bits / 8] bytes, LSB-first."""
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], -1, per)
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for i in range(per):
        out |= c[..., i] << (bits * i)
    return out


@dataclass
class Job:
    """One engine command with its stream items and the expected binary32 bit patterns."""

    name: str
    cmd: dict
    x: list[int]
    kv: list[int]
    bias: list[int] | None
    expect: np.ndarray  # uint32 [n_out]
    lanes_used: int
    n_tiles: int
    macs: int
    extra: dict = field(default_factory=dict)

    def decode(self, cfg: AttnConfig, outs: list[int]) -> np.ndarray:
        """``out`` payloads -> uint32 results in output order (first ``len(expect)``)."""
        ys = []
        for v in outs:
            ys.extend((v >> (32 * n)) & 0xFFFFFFFF for n in range(self.lanes_used))
        return np.array(ys[:len(self.expect)], dtype=np.uint32)


def _kv_ints(cfg: AttnConfig, w: np.ndarray, s: np.ndarray | None) -> list[int]:
    """w: [beats, bytes of the w field] uint8; s: [beats, paths * 32] uint16 or None."""
    wbits = 16 * BLOCK * cfg.cols
    wi = _ints(w)
    if s is None:
        return wi
    si = _ints(s)
    return [a | (b << wbits) for a, b in zip(wi, si)]


def _x_words(x: torch.Tensor, nb: int) -> list[int]:
    """x (FP16 or FP32) padded to nb blocks -> nb transfers of 32 words of 32 bits."""
    if x.dtype == torch.float16:
        v = _f16(x).astype(np.uint32)
    else:
        v = _f32(x)
    v = np.concatenate([v, np.zeros(nb * BLOCK - v.shape[0], dtype=np.uint32)])
    return _ints(v.reshape(nb, BLOCK))


def _bias_ints(cfg: AttnConfig, bias: torch.Tensor | None, n_tiles: int, used: int) -> list[int] | None:
    if bias is None:
        return None
    b = np.zeros((n_tiles, cfg.lanes), dtype=np.uint32)
    v = _f32(bias)
    flat = np.zeros(n_tiles * used, dtype=np.uint32)
    flat[:v.shape[0]] = v
    b[:, :used] = flat.reshape(n_tiles, used)
    return _ints(b)


def job_qk(cfg: AttnConfig, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
           load_x: bool = True, name: str = "qk", wide: bool = False) -> Job:
    """Mode (b) scores ``qk_bfp(q, k, fmt)`` (+ bias[t]); q FP16 [D], k FP16 [T, D];
    ``fmt = cfg.fmt_c`` if ``wide`` else ``cfg.fmt_b``."""
    d, t = q.shape[0], k.shape[0]
    C = cfg.cols
    nb, nt = d // BLOCK, -(-t // C)
    kp = np.zeros((nt * C, d), dtype=np.uint16)
    kp[:t] = _f16(k)
    # beat (tile i, block b): element (r, c) = k[iC + c, 32b + r]
    w = kp.reshape(nt, C, nb, BLOCK).transpose(0, 2, 3, 1).reshape(nt * nb, BLOCK * C)
    exp = pe.qk_bfp(q, k, cfg.fmt_c if wide else cfg.fmt_b)
    if bias is not None:
        exp = exp + bias
    cmd = dict(nb=nb, n_tiles=nt, kivi=0, x_fp16=1, load_x=int(load_x), bias=int(bias is not None), code4=1,
               wide=int(wide))
    return Job(name, cmd, _x_words(q, nb) if load_x else [], _kv_ints(cfg, w, None),
               _bias_ints(cfg, bias, nt, C), _f32(exp), C, nt, t * d)


def job_pv(cfg: AttnConfig, p: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
           name: str = "pv", wide: bool = False) -> Job:
    """Mode (b) output ``pv_bfp(p, v)`` (+ bias[d]); p FP32 [T], v FP16 [T, D]."""
    t, d = v.shape
    C = cfg.cols
    nb, nt = -(-t // BLOCK), -(-d // C)
    vp = np.zeros((nb * BLOCK, nt * C), dtype=np.uint16)
    vp[:t, :d] = _f16(v)
    # beat (tile i, block b): element (r, c) = v[32b + r, iC + c]
    w = vp.reshape(nb, BLOCK, nt, C).transpose(2, 0, 1, 3).reshape(nt * nb, BLOCK * C)
    exp = pe.pv_bfp(p, v, cfg.fmt_c if wide else cfg.fmt_b)
    if bias is not None:
        exp = exp + bias
    cmd = dict(nb=nb, n_tiles=nt, kivi=0, x_fp16=int(p.dtype == torch.float16), load_x=1,
               bias=int(bias is not None), code4=1, wide=int(wide))
    return Job(name, cmd, _x_words(p, nb), _kv_ints(cfg, w, None), _bias_ints(cfg, bias, nt, C),
               _f32(exp), C, nt, t * d)


def _check_groups(cfg: AttnConfig, group: int):
    if group % cfg.kivi_group and cfg.paths > 1:
        raise ValueError(f"KIVI group {group} must be a multiple of the engine's path width {cfg.kivi_group}")
    if cfg.paths == 1 and group % cfg.lanes:
        raise ValueError(f"KIVI group {group} must be a multiple of the engine's lanes {cfg.lanes}")


def job_qk_kivi(cfg: AttnConfig, q, codes, scale, mn, group: int, bits: int, bias: torch.Tensor,
                name: str = "qk-kivi") -> Job:
    """Mode (c) scores ``qk_bfp_kivi`` given ``bias = qk_bfp(q, mn)`` repeated per group."""
    _check_groups(cfg, group)
    t, d = codes.shape
    L, K, P = cfg.lanes, cfg.kivi_group, cfg.paths
    nb, nt = d // BLOCK, -(-t // L)
    cp = np.zeros((nt * L, d), dtype=np.uint8)
    cp[:t] = codes.numpy()
    c = cp.reshape(nt, L, nb, BLOCK).transpose(0, 2, 3, 1)  # [nt, nb, r, n]
    w = _pack_codes(c, bits).reshape(nt * nb, -1)
    sc = _f16(scale)  # [t // group, d]
    s = np.zeros((nt, nb, P, BLOCK), dtype=np.uint16)
    for i in range(nt):
        for j in range(P):
            tok = i * L + j * (K if P > 1 else 0)
            if tok < t:
                s[i, :, j, :] = sc[tok // group].reshape(nb, BLOCK)
    exp = pe.qk_bfp_kivi(q, codes, scale, mn, group, cfg.fmt_c)
    cmd = dict(nb=nb, n_tiles=nt, kivi=1, x_fp16=1, load_x=1, bias=1, code4=int(bits == 4))
    return Job(name, cmd, _x_words(q, nb), _kv_ints(cfg, w, s.reshape(nt * nb, -1)),
               _bias_ints(cfg, bias, nt, L), _f32(exp), L, nt, t * d)


def job_pv_kivi(cfg: AttnConfig, p, codes, scale, mn, group: int, bits: int, bias: torch.Tensor,
                name: str = "pv-kivi") -> Job:
    """Mode (c) output ``pv_bfp_kivi`` given ``bias = pv_bfp(p, mn)`` repeated per channel group."""
    _check_groups(cfg, group)
    t, d = codes.shape
    L, K, P = cfg.lanes, cfg.kivi_group, cfg.paths
    nb, nt = -(-t // BLOCK), -(-d // L)
    cp = np.zeros((nb * BLOCK, nt * L), dtype=np.uint8)
    cp[:t, :d] = codes.numpy()
    c = cp.reshape(nb, BLOCK, nt, L).transpose(2, 0, 1, 3)  # [nt, nb, r, n]
    w = _pack_codes(c, bits).reshape(nt * nb, -1)
    sc = np.zeros((nb * BLOCK, scale.shape[1]), dtype=np.uint16)
    sc[:t] = _f16(scale)
    s = np.zeros((nt, nb, P, BLOCK), dtype=np.uint16)
    for i in range(nt):
        for j in range(P):
            ch = i * L + j * (K if P > 1 else 0)
            if ch < d:
                s[i, :, j, :] = sc[:, ch // group].reshape(nb, BLOCK)
    exp = pe.pv_bfp_kivi(p, codes, scale, mn, group, cfg.fmt_c)
    cmd = dict(nb=nb, n_tiles=nt, kivi=1, x_fp16=int(p.dtype == torch.float16), load_x=1, bias=1,
               code4=int(bits == 4))
    return Job(name, cmd, _x_words(p, nb), _kv_ints(cfg, w, s.reshape(nt * nb, -1)),
               _bias_ints(cfg, bias, nt, L), _f32(exp), L, nt, t * d)


def kivi_qk_jobs(cfg: AttnConfig, q, kt, bits: int, name: str = "qk-kivi") -> list[Job]:
    """The two commands of a KIVI QK^T: u = qk_bfp(q, mn) (mode b), then codes with bias u (mode c)."""
    u_job = job_qk(cfg, q, kt.mn, name=f"{name}-u", wide=True)
    u = pe.qk_bfp(q, kt.mn, cfg.fmt_c).repeat_interleave(kt.group)
    return [u_job, job_qk_kivi(cfg, q, kt.codes, kt.scale, kt.mn, kt.group, bits, u, name=name)]


def kivi_pv_jobs(cfg: AttnConfig, p, vt, bits: int, name: str = "pv-kivi") -> list[Job]:
    """u = pv_bfp(p, mn) (mode b), then codes with bias u (mode c)."""
    u_job = job_pv(cfg, p, vt.mn, name=f"{name}-u", wide=True)
    u = pe.pv_bfp(p, vt.mn, cfg.fmt_c).repeat_interleave(vt.group)
    return [u_job, job_pv_kivi(cfg, p, vt.codes, vt.scale, vt.mn, vt.group, bits, u, name=name)]


def cmd_int(cfg: AttnConfig, cmd: dict) -> int:
    return cfg.cmd_layout().const(cmd).as_bits()


def attention_data(t: int, d: int, seed: int):
    """LLM-like q, K, V (FP16, outlier channels) and softmax probabilities (FP32)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, generator=g)
    k = torch.randn(t, d, generator=g)
    k[:, torch.randint(0, d, (4,), generator=g)] *= 12.0  # key outlier channels (KIVI's motivation)
    v = torch.randn(t, d, generator=g)
    s = (k @ q) / d ** 0.5
    p = torch.softmax(s, dim=0).to(torch.float32)
    return q.half(), k.half(), v.half(), p


def kivi_tensors(k: torch.Tensor, v: torch.Tensor, bits: int, group: int):
    """KIVI-quantized keys (per channel, groups along tokens) and values (per token)."""
    return kivi_quantize_keys(k, bits, group), kivi_quantize_values(v, bits, group)


# =============================================================================================
# cocotb
# =============================================================================================


def config_params(cfg: AttnConfig) -> dict:
    return {"cols": cfg.cols, "kivi_group": cfg.kivi_group, "max_blocks": cfg.max_blocks,
            "max_tiles": cfg.max_tiles, "fifo_depth": cfg.fifo_depth, "dsp": cfg.dsp}


def case_jobs(cfg: AttnConfig, case: dict, seed: int) -> list[Job]:
    """Jobs of one attention case ``{op: qk|pv|qk_kivi|pv_kivi, t, d, bits}``."""
    t, d = case["t"], case["d"]
    q, k, v, p = attention_data(t, d, seed)
    op = case["op"]
    if op == "qk":
        return [job_qk(cfg, q, k, name=f"qk-T{t}")]
    if op == "pv":
        return [job_pv(cfg, p, v, name=f"pv-T{t}")]
    kt, vt = kivi_tensors(k, v, case["bits"], case.get("group", 32))
    if op == "qk_kivi":
        return kivi_qk_jobs(cfg, q, kt, case["bits"], name=f"qk-kivi{case['bits']}-T{t}")
    if op == "pv_kivi":
        return kivi_pv_jobs(cfg, p, vt, case["bits"], name=f"pv-kivi{case['bits']}-T{t}")
    raise ValueError(f"unknown op {op!r}")


try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, RisingEdge
except ImportError:  # pragma: no cover - the builders work without cocotb
    cocotb = None


if cocotb is not None:

    async def _drive(clk, valid, payload, ready, items, gap_p, rng):
        for it in items:
            while gap_p and rng.random() < gap_p:
                valid.value = 0
                await RisingEdge(clk)
            valid.value = 1
            payload.value = it
            while True:
                await RisingEdge(clk)
                if ready.value:
                    break
        valid.value = 0

    async def _run_jobs(dut, cfg, jobs, gap_p, stall_p, rng):
        clk = dut.clk
        outs = []
        n_out = sum(j.n_tiles for j in jobs)
        cmds = [cmd_int(cfg, j.cmd) for j in jobs]
        xs = [w for j in jobs for w in j.x]
        kvs = [w for j in jobs for w in j.kv]
        biases = [w for j in jobs if j.bias is not None for w in j.bias]
        t0 = None
        marks = []

        async def collect():
            nonlocal t0
            cyc = 0
            while len(outs) < n_out:
                dut.out__ready.value = int(not (stall_p and rng.random() < stall_p))
                await RisingEdge(clk)
                cyc += 1
                if dut.out__valid.value and dut.out__ready.value:
                    outs.append(int(dut.out__payload.value))
                    if int(dut.out__payload.value) >> (32 * cfg.lanes) & 1:
                        marks.append(cyc)

        tasks = [
            cocotb.start_soon(_drive(clk, dut.cmd__valid, dut.cmd__payload, dut.cmd__ready, cmds, gap_p, rng)),
            cocotb.start_soon(_drive(clk, dut.x__valid, dut.x__payload, dut.x__ready, xs, gap_p, rng)),
            cocotb.start_soon(_drive(clk, dut.kv__valid, dut.kv__payload, dut.kv__ready, kvs, gap_p, rng)),
            cocotb.start_soon(_drive(clk, dut.bias__valid, dut.bias__payload, dut.bias__ready, biases, gap_p,
                                     rng)),
        ]
        await collect()
        for tk in tasks:
            await tk
        return outs, marks

    def _check(cfg, jobs, outs):
        pos = 0
        for j in jobs:
            got = j.decode(cfg, outs[pos:pos + j.n_tiles])
            pos += j.n_tiles
            bad = np.nonzero(got != j.expect)[0]
            assert not len(bad), (f"{j.name}: {len(bad)} of {len(j.expect)} outputs differ, first at {bad[0]}: "
                                  f"got {got[bad[0]]:#010x} expected {j.expect[bad[0]]:#010x}")

    async def _reset(dut):
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        for s in ("cmd", "x", "kv", "bias"):
            getattr(dut, f"{s}__valid").value = 0
        dut.out__ready.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    @cocotb.test()
    async def attention_cases(dut):
        """Every case bit-exact with golden; at full rate, cycles per command are recorded."""
        from ternopu.sim.runner import tb_params

        prm = tb_params()
        cfg = AttnConfig(**prm["config"])
        rng = random.Random(prm.get("seed", 0))
        await _reset(dut)
        rows = []
        for n, case in enumerate(prm["cases"]):
            jobs = case_jobs(cfg, case, prm.get("seed", 0) + n)
            for j in jobs:  # one command at a time, so each gets its own cycle count
                t0 = time.time()
                outs, marks = await _run_jobs(dut, cfg, [j], prm.get("gap_p", 0.0), prm.get("stall_p", 0.0), rng)
                _check(cfg, [j], outs)
                cyc = marks[-1]
                ideal = cfg.ideal_cycles(j.cmd["nb"], j.n_tiles)
                rows.append({"case": case, "job": j.name, "kivi": j.cmd["kivi"], "nb": j.cmd["nb"],
                             "n_tiles": j.n_tiles, "cycles": cyc, "ideal_cycles": ideal,
                             "model_cycles": cfg.model_cycles(j.cmd["nb"], j.n_tiles, bool(j.cmd["load_x"])),
                             "macs": j.macs, "outputs": int(len(j.expect)), "wall_s": round(time.time() - t0, 2)})
                dut._log.info("%s: %d outputs bit-exact, %d cycles (ideal %d)", j.name, len(j.expect), cyc, ideal)
        if prm.get("report"):
            with open(prm["report"], "w") as f:
                json.dump(rows, f, indent=1)
