"""PE-array benchmark: ``python -m ternopu.sim.bench_pe`` -> build/bench/pe.json and a table.

What is measured
----------------
1. **Cycle-accurate (Verilator)**: one token through each Llama-2-7B projection (``K x N`` =
   4096x4096, 4096x11008, 11008x4096, INT4 group 128, GPTQ streams) on the simulated engine
   (``--config mid``: :data:`~ternopu.hw.pe_array.MID_CONFIG`, 8 x 16 DSP48E2, or ``small``),
   bit-exact against golden ``linear_bfp_int4`` (the run fails otherwise). Reported: weight-stream
   cycles vs the ideal one beat per cycle, activation-load cycles, total cycles from the command to
   the last output, and MACs per cycle against the peak ``rows * cols * 2``.
2. **Default configuration (U280, 300 MHz)**: the same projections on
   :data:`~ternopu.hw.pe_array.DEFAULT_CONFIG`, from the cycle model that the measurement above
   validates (weight cycles = beats, plus the load and pipeline-drain constants), against the HBM
   time of the bytes each projection must read (weights + zeros + scales at 460.8 GB/s).

3. **Attention (modes b and c)**: one head (head_dim 128) over KV caches of 128 and 4096 tokens,
   FP16 and 2-bit KIVI, on :data:`~ternopu.hw.pe_attn.ATTN_MID` (32 x 4 DSP48E2) cycle-accurately
   and bit-exact (``--attention-only`` skips 1-2), and on :data:`~ternopu.hw.pe_attn.ATTN_DEFAULT`
   (32 x 64) from the validated cycle model. An attention step is QK^T + PV (FP16: 2 commands;
   KIVI: the min-term pass and the code pass of each, 4 commands).

Modelled clock: 300 MHz. Memory model: the streams are fed at one transfer per cycle (no HBM
model); the HBM comparison is analytic (bytes / 1536 B per cycle).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ternopu.hw.pe_array import (
    DEFAULT_CONFIG,
    HBM_BYTES_PER_CYCLE_300MHZ,
    MID_CONFIG,
    SMALL_CONFIG,
    PEConfig,
)

__all__ = ["LLAMA2_7B_SHAPES", "model_cycles", "analytic_rows", "measure", "main"]

#: Llama-2-7B projections (K inputs, N outputs): q/k/v/o, gate/up, down.
LLAMA2_7B_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
DEFAULT_OUT = Path("build/bench/pe.json")


def model_cycles(cfg: PEConfig, k: int, n: int) -> dict:
    """Cycle model of one projection (activations loaded with the command).

    ``load`` = one BFP block per cycle + converter latency + 2 (FSM); ``weights`` = one beat per
    cycle; ``tail`` = last beat -> last output = group latency + one drain of ``lanes/out_lanes``
    steps + result latency.
    """
    from ternopu.hw.bfp import BFPConverter

    load = k // cfg.fmt.block + BFPConverter.LATENCY + 2
    weights = cfg.beats(n, k)
    tail = cfg.group_latency + cfg.drain_steps + cfg.result_latency
    return {"load": load, "weights": weights, "tail": tail, "total": load + weights + tail}


def analytic_rows(cfg: PEConfig, shapes) -> list[dict]:
    rows = []
    for k, n in shapes:
        c = model_cycles(cfg, k, n)
        hbm = cfg.hbm_bytes(n, k) / HBM_BYTES_PER_CYCLE_300MHZ
        rows.append({
            "k": k, "n": n, "macs": k * n, "model_cycles": c["total"], "weight_cycles": c["weights"],
            "ideal_cycles": k * n // cfg.macs_per_cycle, "hbm_cycles": round(hbm),
            "macs_per_cycle": round(k * n / c["total"], 1),
            "us_at_clock": round(c["total"] / cfg.clock_hz * 1e6, 2),
            "bound": "hbm" if hbm > c["weights"] else "array",
        })
    return rows


def measure(cfg: PEConfig, shapes, tag: str, out_dir: Path) -> list[dict]:
    """Run the cocotb ``real_shapes`` testcase on ``cfg``; return its per-projection rows."""
    from ternopu.sim import runner
    from ternopu.sim.tb.pe import build_pe, config_params

    sim = build_pe(cfg, tag)
    report = out_dir / f"pe_measured_{tag}.json"
    runner.run(sim, "ternopu.sim.tb.pe", testcase="real_shapes",
               params={"config": config_params(cfg), "shapes": [list(s) for s in shapes], "seed": 3,
                       "report": str(report.resolve())}, run_name="bench")
    rows = json.loads(report.read_text())
    for r in rows:
        r["macs_per_cycle"] = round(r["k"] * r["n"] / r["total_cycles"], 1)
        r["peak_macs_per_cycle"] = cfg.macs_per_cycle
        r["model_total_cycles"] = model_cycles(cfg, r["k"], r["n"])["total"]
    return rows


ATTN_TOKENS = (128, 4096)
ATTN_HEAD_DIM = 128


def attention_cases(tokens=ATTN_TOKENS, d: int = ATTN_HEAD_DIM) -> list[dict]:
    return [{"op": op, "t": t, "d": d, **({"bits": 2} if "kivi" in op else {})}
            for t in tokens for op in ("qk", "pv", "qk_kivi", "pv_kivi")]


def _attn_jobs_shape(cfg, case: dict) -> list[tuple[str, int, int, bool]]:
    """(name, nb, n_tiles, kivi) of the commands of one case (what the testbench issues)."""
    t, d, g = case["t"], case["d"], case.get("group", 32)
    if case["op"] == "qk":
        return [("qk", d // 32, -(-t // cfg.cols), False)]
    if case["op"] == "pv":
        return [("pv", -(-t // 32), -(-d // cfg.cols), False)]
    if case["op"] == "qk_kivi":
        return [("u", d // 32, -(-(t // g) // cfg.cols), False), ("r", d // 32, -(-t // cfg.lanes), True)]
    return [("u", -(-t // 32), -(-(d // g) // cfg.cols), False), ("r", -(-t // 32), -(-d // cfg.lanes), True)]


def attention_step_rows(cfg, rows_by_case: dict | None = None) -> list[dict]:
    """Per (T, KV format) attention step = QK + PV: cycles (measured if given, else modelled) vs ideal."""
    out = []
    for t in ATTN_TOKENS:
        for kv, ops in (("fp16", ("qk", "pv")), ("kivi2", ("qk_kivi", "pv_kivi"))):
            cyc = ideal = macs = 0
            for op in ops:
                case = {"op": op, "t": t, "d": ATTN_HEAD_DIM}
                for name, nb, nt, kivi in _attn_jobs_shape(cfg, case):
                    ideal += nb * nt
                    if rows_by_case is not None:
                        cyc += rows_by_case[(op, t, name)]
                    else:
                        cyc += cfg.model_cycles(nb, nt)
                macs += 2 * t * ATTN_HEAD_DIM if op.startswith("qk") else 0
            dsp_mac = cfg.dsps_per_mac(kv != "fp16")
            out.append({"tokens": t, "kv": kv, "cycles": cyc, "ideal_cycles": ideal,
                        "efficiency": round(ideal / cyc, 3), "macs": macs,
                        "macs_per_cycle": round(macs / cyc, 1),
                        "peak_macs_per_cycle": cfg.macs_per_cycle(kv != "fp16"),
                        "dsps_per_mac_codes": dsp_mac, "us_at_clock": round(cyc / cfg.clock_hz * 1e6, 2)})
    return out


def measure_attention(out_dir: Path) -> dict:
    """Cycle-accurate attention cases on ATTN_MID (bit-exact or the run fails)."""
    from ternopu.hw.pe_attn import ATTN_MID, AttnArray
    from ternopu.sim import runner
    from ternopu.sim.tb.pe_attn import config_params

    cfg = ATTN_MID
    sim = runner.build(runner.verilog_of(AttnArray(cfg), "attn_top"), "attn_top", tag="attn-mid")
    report = out_dir / "pe_attn_measured.json"
    runner.run(sim, "ternopu.sim.tb.pe_attn", testcase="attention_cases",
               params={"config": config_params(cfg), "cases": attention_cases(), "seed": 5,
                       "report": str(report.resolve())}, run_name="bench-attn")
    jobs = json.loads(report.read_text())
    by = {}
    for j in jobs:
        by[(j["case"]["op"], j["case"]["t"], "r" if j["kivi"] else ("u" if j["job"].endswith("-u") else
                                                                     j["case"]["op"]))] = j["cycles"]
    from ternopu.hw.pe_attn import ATTN_DEFAULT
    return {
        "note": "one head, head_dim 128; step = QK^T + PV; KIVI 2-bit group 32 adds a min-term pass "
                "per product (mode b, 1/group of the tokens or channels); 'cycles' from the command to "
                "the last output, streams fed one transfer per cycle",
        "measured_config": {"cols": cfg.cols, "dsps": cfg.dsps, "lanes_b": cfg.cols, "lanes_c": cfg.lanes},
        "measured_commands": jobs,
        "measured_steps": attention_step_rows(cfg, by),
        "default": {"cols": ATTN_DEFAULT.cols, "dsps": ATTN_DEFAULT.dsps,
                    "dsps_per_mac_fp16": ATTN_DEFAULT.dsps_per_mac(False),
                    "dsps_per_mac_kivi": ATTN_DEFAULT.dsps_per_mac(True),
                    "model_steps": attention_step_rows(ATTN_DEFAULT)},
    }


def _print_attention(a: dict) -> None:
    mc = a["measured_config"]
    print(f"\nPE array attention modes, cycle-accurate (32 x {mc['cols']} DSPs = {mc['dsps']}, bit-exact vs golden)")
    print(f"{'T':>5} {'KV':<6} {'cycles':>8} {'ideal':>8} {'eff':>6} {'MAC/cyc':>8} {'peak':>6} {'DSP/MAC':>8}")
    for r in a["measured_steps"]:
        print(f"{r['tokens']:>5} {r['kv']:<6} {r['cycles']:>8} {r['ideal_cycles']:>8} {r['efficiency']:>6} "
              f"{r['macs_per_cycle']:>8} {r['peak_macs_per_cycle']:>6} {r['dsps_per_mac_codes']:>8}")
    d = a["default"]
    print(f"Default (model): 32 x {d['cols']} = {d['dsps']} DSPs; 1 DSP/MAC FP16 KV, 0.5 DSP/MAC KIVI codes")
    for r in d["model_steps"]:
        print(f"{r['tokens']:>5} {r['kv']:<6} {r['cycles']:>8} {r['ideal_cycles']:>8} {r['efficiency']:>6} "
              f"{r['macs_per_cycle']:>8} {r['us_at_clock']:>8} us")


def _print(rep: dict) -> None:
    m = rep["measured"]
    print(f"PE array, INT4 linear mode, cycle-accurate ({rep['measured_config']['name']}: "
          f"{m['dsps']} DSPs, peak {m['peak_macs_per_cycle']} MAC/cycle, bit-exact vs golden)")
    print(f"{'K x N':<13} {'beats':>8} {'weight cyc':>10} {'load':>6} {'total':>9} {'model':>9} {'MAC/cyc':>8}")
    for r in m["projections"]:
        print(f"{r['k']}x{r['n']:<8} {r['beats']:>8} {r['weight_cycles']:>10} {r['load_cycles']:>6} "
              f"{r['total_cycles']:>9} {r['model_total_cycles']:>9} {r['macs_per_cycle']:>8}")
    d = rep["default"]
    print(f"\nDefault U280 configuration: {d['rows']} x {d['cols']} DSP48E2 = {d['dsps']} DSPs, "
          f"{d['macs_per_cycle']} INT4 MAC/cycle, {d['dsps_per_mac']} DSP per MAC, "
          f"{d['clock_hz'] / 1e6:.0f} MHz; HBM {d['hbm_bytes_per_cycle']:.0f} B/cycle vs array demand "
          f"{d['array_bytes_per_cycle']:.0f} B/cycle")
    print(f"{'K x N':<13} {'model cyc':>9} {'ideal':>8} {'HBM cyc':>8} {'us':>7} {'bound':>6}")
    for r in d["projections"]:
        print(f"{r['k']}x{r['n']:<8} {r['model_cycles']:>9} {r['ideal_cycles']:>8} {r['hbm_cycles']:>8} "
              f"{r['us_at_clock']:>7} {r['bound']:>6}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=("mid", "small"), default="mid",
                    help="engine simulated cycle-accurately (default: mid, 8 x 16 DSPs)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--attention-only", action="store_true",
                    help="only the attention section (keeps the INT4 keys of an existing JSON)")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.attention_only:
        t0 = time.time()
        rep = json.loads(args.out.read_text()) if args.out.exists() else {}
        rep["attention"] = measure_attention(args.out.parent)
        _print_attention(rep["attention"])
        args.out.write_text(json.dumps(rep, indent=1))
        print(f"wrote {args.out} ({round(time.time() - t0, 1)} s)")
        return 0
    cfg = MID_CONFIG if args.config == "mid" else SMALL_CONFIG
    shapes = LLAMA2_7B_SHAPES if args.config == "mid" else [(512, 256), (256, 128)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = measure(cfg, shapes, f"pe-{args.config}", args.out.parent)
    d = DEFAULT_CONFIG
    meta_bytes = d.macs_per_cycle / d.group * 2.5  # FP16 scale + 4-bit zero per group and output
    rep = {
        "clock_hz": 300e6,
        "memory_model": "streams fed one transfer per cycle; HBM comparison analytic (460.8 GB/s)",
        "measured_config": {"name": args.config, "rows": cfg.rows, "cols": cfg.cols, "group": cfg.group,
                            "out_lanes": cfg.out_lanes},
        "measured": {"dsps": cfg.dsps, "peak_macs_per_cycle": cfg.macs_per_cycle, "projections": rows},
        "default": {
            "rows": d.rows, "cols": d.cols, "dsps": d.dsps, "macs_per_cycle": d.macs_per_cycle,
            "products_per_dsp": 2, "dsps_per_mac": d.dsps / d.macs_per_cycle, "clock_hz": d.clock_hz,
            "hbm_bytes_per_cycle": HBM_BYTES_PER_CYCLE_300MHZ,
            "array_bytes_per_cycle": d.macs_per_cycle / 2 + meta_bytes,
            "projections": analytic_rows(d, LLAMA2_7B_SHAPES),
        },
        "runtime_s": None,
    }
    rep["attention"] = measure_attention(args.out.parent)
    rep["runtime_s"] = round(time.time() - t0, 1)
    _print(rep)
    _print_attention(rep["attention"])
    args.out.write_text(json.dumps(rep, indent=1))
    print(f"wrote {args.out} ({rep['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
