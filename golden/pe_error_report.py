"""Measured datapath error of the PE-array modes on realistic data: ``python -m ternopu.golden.pe_error_report``.

Each mode of :mod:`ternopu.golden.pe` is compared with its float64 reference computed from the
*same* quantized operands (the INT4 weights dequantized exactly, the KIVI KV dequantized exactly),
so the numbers measure only what the BFP datapath loses: activation alignment/rounding, block
alignment, the one float reconstruction, and the binary32 combination steps.

Metrics (over all outputs of a case, several tokens / queries stacked)
    ``rel_l2  = ||y - y_ref||_2 / ||y_ref||_2``
    ``max_rel = max|y - y_ref| / max|y_ref|``
Target: ``rel_l2 <= PE_ERROR_TARGET`` (0.1%) for every mode.

Data
    Activations: standard normal FP16 hidden states with a few outlier channels (the same channels
    in every token, 25x to 100x larger), as LLM hidden states have after normalization.
    INT4 weights: Gaussian weights quantized round-to-nearest with asymmetric min/max per group of
    128 (FP16 scale, 4-bit zero), Llama-2-7B shapes 4096x4096, 4096x11008, 11008x4096.
    Attention: head dim 128, T = 128 and 4096; keys with outlier channels; probabilities = float64
    softmax of the scaled scores rounded to float32; KIVI 2- and 4-bit KV with group 32.
The JSON goes to ``build/reports/pe_error.json`` (``--out`` to change it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.pe import (
    KIVI_BFP,
    linear_bfp_int4,
    linear_bfp_int4_ref,
    pv_bfp,
    pv_bfp_kivi,
    pv_bfp_kivi_ref,
    pv_bfp_ref,
    qk_bfp,
    qk_bfp_kivi,
    qk_bfp_kivi_ref,
    qk_bfp_ref,
)

__all__ = [
    "PE_ERROR_TARGET",
    "llm_activations",
    "rtn_like_int4",
    "kivi_like",
    "attention_probs",
    "error_metrics",
    "run_report",
    "main",
]

#: Relative L2 error target of the BFP datapath against the float64 reference.
PE_ERROR_TARGET = 1e-3
DEFAULT_OUT = Path("build/reports/pe_error.json")


def llm_activations(
    n: int, k: int, gen: torch.Generator, n_outliers: int = 8, outlier_scale: float = 50.0
) -> torch.Tensor:
    """FP16 ``[n, k]`` hidden states: N(0, 1) plus ``n_outliers`` fixed channels scaled 25x..``outlier_scale``x."""
    x = torch.randn(n, k, generator=gen, dtype=torch.float64)
    ch = torch.randperm(k, generator=gen)[:n_outliers]
    amp = torch.linspace(outlier_scale / 2, outlier_scale, n_outliers, dtype=torch.float64)
    x[:, ch] *= amp
    return x.to(torch.float16)


def rtn_like_int4(k: int, n: int, gen: torch.Generator, group: int = 128, std: float = 0.02):
    """Gaussian ``[k, n]`` weights quantized RTN, asymmetric min/max per group (offline, float64).

    Returns ``(q int64 [k, n] 0..15, zeros int64 [k//group, n] 0..15, scales float16 [k//group, n])``.
    """
    w = torch.randn(k // group, group, n, generator=gen, dtype=torch.float64) * std
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(torch.float16)
    s = scale.to(torch.float64)
    zeros = torch.clamp(torch.round(-lo / s), 0, 15)
    q = torch.clamp(torch.round(w / s.unsqueeze(1)) + zeros.unsqueeze(1), 0, 15)
    return q.to(torch.int64).reshape(k, n), zeros.to(torch.int64), scale


def kivi_like(x: torch.Tensor, bits: int, group: int, axis: str):
    """KIVI-style min/max quantization of FP16 ``x [T, C]`` (offline, float64 math, FP16 stats).

    ``axis="keys"``: per channel, a group spans ``group`` tokens -> stats ``[T//group, C]``.
    ``axis="values"``: per token, a group spans ``group`` channels -> stats ``[T, C//group]``.
    Returns ``(codes int64 [T, C], scale float16, mn float16)``.
    """
    t, c = x.shape
    xd = x.to(torch.float64)
    if axis == "keys":
        xg = xd.reshape(t // group, group, c)
        red = 1
    else:
        xg = xd.reshape(t, c // group, group)
        red = 2
    mn = xg.amin(dim=red).to(torch.float16)
    scale = ((xg.amax(dim=red) - mn.to(torch.float64)) / (2**bits - 1)).clamp(min=1e-6).to(torch.float16)
    codes = torch.clamp(
        torch.round((xg - mn.to(torch.float64).unsqueeze(red)) / scale.to(torch.float64).unsqueeze(red)),
        0,
        2**bits - 1,
    )
    return codes.to(torch.int64).reshape(t, c), scale, mn


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """float32 softmax of ``k @ q / sqrt(D)`` computed in float64 (test data, not a datapath)."""
    s = (k.to(torch.float64) @ q.to(torch.float64)) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1).to(torch.float32)


def error_metrics(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """``{"rel_l2", "max_rel"}`` of ``y`` against ``ref`` (both flattened, float64 math)."""
    d = y.to(torch.float64).flatten() - ref.to(torch.float64).flatten()
    r = ref.to(torch.float64).flatten()
    return {
        "rel_l2": float(d.norm() / r.norm()),
        "max_rel": float(d.abs().max() / r.abs().max()),
    }


def _linear_case(k, n, tokens, gen, fmt, outlier_scale=50.0):
    q, z, s = rtn_like_int4(k, n, gen)
    x = llm_activations(tokens, k, gen, outlier_scale=outlier_scale)
    ys = [linear_bfp_int4(x[i], q, z, s, 128, fmt) for i in range(tokens)]
    refs = [linear_bfp_int4_ref(x[i], q, z, s, 128) for i in range(tokens)]
    return error_metrics(torch.stack(ys), torch.stack(refs))


def _attention_inputs(t, d, gen):
    q = torch.randn(d, generator=gen).to(torch.float16)
    k = llm_activations(t, d, gen, n_outliers=2, outlier_scale=8.0)
    v = torch.randn(t, d, generator=gen).to(torch.float16)
    return q, k, v


def _attention_cases(t, d, queries, gen, fmt, kivi_fmt):
    out = {}
    acc = {name: ([], []) for name in ("qk_bfp", "pv_bfp", "qk_bfp_kivi4", "pv_bfp_kivi4", "qk_bfp_kivi2", "pv_bfp_kivi2")}
    for _ in range(queries):
        q, k, v = _attention_inputs(t, d, gen)
        p = attention_probs(q, k)
        acc["qk_bfp"][0].append(qk_bfp(q, k, fmt))
        acc["qk_bfp"][1].append(qk_bfp_ref(q, k))
        acc["pv_bfp"][0].append(pv_bfp(p, v, fmt))
        acc["pv_bfp"][1].append(pv_bfp_ref(p, v))
        for bits in (4, 2):
            kc, ks, km = kivi_like(k, bits, 32, "keys")
            vc, vs, vm = kivi_like(v, bits, 32, "values")
            acc[f"qk_bfp_kivi{bits}"][0].append(qk_bfp_kivi(q, kc, ks, km, 32, kivi_fmt))
            acc[f"qk_bfp_kivi{bits}"][1].append(qk_bfp_kivi_ref(q, kc, ks, km, 32))
            acc[f"pv_bfp_kivi{bits}"][0].append(pv_bfp_kivi(p, vc, vs, vm, 32, kivi_fmt))
            acc[f"pv_bfp_kivi{bits}"][1].append(pv_bfp_kivi_ref(p, vc, vs, vm, 32))
    for name, (ys, refs) in acc.items():
        out[name] = error_metrics(torch.stack(ys), torch.stack(refs))
    return out


def run_report(
    seed: int = 0, quick: bool = False, fmt: BFPFormat = DEFAULT_BFP, kivi_fmt: BFPFormat = KIVI_BFP
) -> dict:
    """Measure every mode; returns ``{"format", "target", "cases": [{mode, shape, rel_l2, max_rel}], ...}``.

    ``quick`` uses one token / query per case and skips the format sweep (for tests and CI).
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = 1 if quick else 4
    cases = []
    for k, n in ((4096, 4096), (4096, 11008), (11008, 4096)):
        m = _linear_case(k, n, tokens, gen, fmt)
        cases.append({"mode": "linear_bfp_int4", "shape": f"{k}x{n} g128", **m})
    for t in (128, 4096):
        for name, m in _attention_cases(t, 128, tokens, gen, fmt, kivi_fmt).items():
            cases.append({"mode": name, "shape": f"T={t} D=128", **m})
    sweep = []
    if not quick:
        for b, mb in ((32, 12), (16, 12), (32, 13), (32, 14), (128, 14), (32, 16)):
            for amp in (25.0, 100.0):
                m = _linear_case(4096, 4096, 2, gen, BFPFormat(b, mb), outlier_scale=amp)
                sweep.append({"block": b, "mant_bits": mb, "outlier_scale": amp, **m})
    return {
        "format": {"block": fmt.block, "mant_bits": fmt.mant_bits},
        "kivi_format": {"block": kivi_fmt.block, "mant_bits": kivi_fmt.mant_bits},
        "target_rel_l2": PE_ERROR_TARGET,
        "seed": seed,
        "cases": cases,
        "format_sweep_linear_4096x4096": sweep,
        "all_within_target": all(c["rel_l2"] <= PE_ERROR_TARGET for c in cases),
    }


def _print_table(rep: dict) -> None:
    f, kf = rep["format"], rep["kivi_format"]
    print(
        f"PE datapath error, BFP block {f['block']} / {f['mant_bits']}-bit mantissas "
        f"(KIVI modes: block {kf['block']} / {kf['mant_bits']}-bit)"
    )
    print(f"{'mode':<18} {'shape':<20} {'rel L2':>10} {'max/max':>10}")
    for c in rep["cases"]:
        print(f"{c['mode']:<18} {c['shape']:<20} {c['rel_l2']:>10.3e} {c['max_rel']:>10.3e}")
    if rep["format_sweep_linear_4096x4096"]:
        print("format sweep, linear 4096x4096 (block, mantissa bits, outlier scale):")
        for s in rep["format_sweep_linear_4096x4096"]:
            print(f"  B={s['block']:<4} M={s['mant_bits']:<3} x{s['outlier_scale']:<6.0f} rel L2 {s['rel_l2']:.3e}  max/max {s['max_rel']:.3e}")
    print(f"target rel L2 <= {rep['target_rel_l2']:.0e}: {'met' if rep['all_within_target'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print the table, write the JSON; exit status 1 if a mode misses the target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one token per case, no format sweep")
    args = ap.parse_args(argv)
    t0 = time.time()
    rep = run_report(args.seed, args.quick)
    rep["runtime_s"] = round(time.time() - t0, 1)
    _print_table(rep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep, indent=2))
    print(f"wrote {args.out} ({rep['runtime_s']} s)")
    return 0 if rep["all_within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
