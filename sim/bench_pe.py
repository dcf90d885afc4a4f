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
    print("attention modes (QK^T / PV, FP16 and KIVI KV): not implemented in RTL yet -- see docs/pe_array.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=("mid", "small"), default="mid",
                    help="engine simulated cycle-accurately (default: mid, 8 x 16 DSPs)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
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
    rep["runtime_s"] = round(time.time() - t0, 1)
    _print(rep)
    args.out.write_text(json.dumps(rep, indent=1))
    print(f"wrote {args.out} ({rep['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
