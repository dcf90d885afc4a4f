"""TLMM throughput benchmark: cycle-accurate Verilator runs of the default engine.

``python -m ternopu.sim.bench_tlmm`` (``make bench-tlmm``) builds :class:`ternopu.hw.tlmm_bench.TLMMBench`
(the engine plus HDL stream sources and sink, so no Python runs per cycle), streams one token
through each BitNet b1.58 2B4T projection, once alone (activation load + fill + drain included)
and as a back-to-back batch of projections that reuse the activations (steady state), and writes
``build/bench/tlmm.json`` plus a printed table:

* keys consumed per cycle in steady state vs the ideal ``tables * lanes``;
* cycles per projection vs the ideal ``ceil(N/lanes) * ceil(ceil(K/3)/tables)``;
* pipeline fill (first beat accepted -> first output) and drain (last beat -> last output);
* HBM bytes per projection and the bandwidth they imply at the design clock;
* Verilog generation and Verilator build time, simulated cycles per wall-clock second.

Every figure is computed from this run's counters and timers; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ternopu.golden.tlmm import KEY_BITS, num_groups
from ternopu.hw.tlmm import DEFAULT_CONFIG, HBM_BYTES_PER_SECOND, TLMM, TLMMConfig
from ternopu.hw.tlmm_bench import TLMMBench
from ternopu.sim import runner

__all__ = ["BITNET_2B4T_SHAPES", "config_params", "build_component", "build_engine", "run_bench",
           "format_report", "main"]

#: BitNet b1.58 2B4T projections (N outputs x K inputs): q/o, k/v, gate/up, down.
BITNET_2B4T_SHAPES = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]

def config_params(cfg: TLMMConfig) -> dict:
    """The constructor fields of ``cfg`` (what the cocotb side needs to rebuild it)."""
    return {f: getattr(cfg, f) for f in ("tables", "lanes", "beat_bits", "max_k", "max_n",
                                         "out_lanes")}


def build_component(component, toplevel: str, tag: str) -> tuple[runner.SimBuild, dict]:
    """Verilog + cached Verilator build of ``component``; returns the build and its timings."""
    t0 = time.perf_counter()
    verilog = runner.verilog_of(component, toplevel)
    t1 = time.perf_counter()
    sim = runner.build(verilog, toplevel, tag=tag)
    t2 = time.perf_counter()
    # A build taking under a second was found in the cache.
    timing = {"verilog_s": round(t1 - t0, 2), "build_s": round(t2 - t1, 2),
              "build_cached": (t2 - t1) < 1.0, "verilog_bytes": len(verilog)}
    stamp = sim.build_dir / "ternopu_build_time.json"
    if not timing["build_cached"]:
        stamp.write_text(json.dumps(timing))
    elif stamp.exists():
        timing["first_build"] = json.loads(stamp.read_text())
    return sim, timing


def build_engine(cfg: TLMMConfig, tag: str) -> tuple[runner.SimBuild, dict]:
    """The bare engine as ``tlmm_top`` (what the cocotb tests drive)."""
    return build_component(TLMM(cfg), "tlmm_top", tag)


def run_bench(cfg: TLMMConfig = DEFAULT_CONFIG, shapes=BITNET_2B4T_SHAPES, jobs: int = 8,
              out: Path | None = None, tag: str = "tlmm-bench-default") -> dict:
    """Run the benchmark; return (and optionally write) the report dictionary."""
    sim, timing = build_component(TLMMBench(cfg), "tlmm_bench_top", tag)
    scenarios = []
    for n, k in shapes:
        scenarios.append({"name": f"{n}x{k}", "n": n, "k": k, "jobs": 1})
        scenarios.append({"name": f"{n}x{k} x{jobs}", "n": n, "k": k, "jobs": jobs})
    raw_path = sim.build_dir / "bench-run" / "bench_raw.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    runner.run(sim, "ternopu.sim.tb.tlmm", testcase="throughput_bench",
               params={"config": config_params(cfg), "scenarios": scenarios,
                       "report": str(raw_path)}, run_name="bench-run")
    raw = json.loads(raw_path.read_text())
    clock = cfg.clock_hz
    rows = []
    total_cycles = sum(r["cycles"] for r in raw)
    total_wall = sum(r["wall_s"] for r in raw)
    by_name = {r["name"]: r for r in raw}
    for n, k in shapes:
        one = by_name[f"{n}x{k}"]
        many = by_name[f"{n}x{k} x{jobs}"]
        ideal = cfg.ideal_cycles(n, k)
        key_span = many["last_key"] - many["first_key"] + 1
        hbm = cfg.hbm_bytes(n, k)
        useful = n * num_groups(k) * KEY_BITS / 8
        rows.append({
            "shape": [n, k],
            "tiles": [one["row_tiles"], one["group_tiles"]],
            "ideal_cycles": ideal,
            "cycles_single": one["cycles"],
            "efficiency_single": ideal / one["cycles"],
            "act_load_cycles": one["first_key"],
            "fill_cycles": one["first_out"] - one["first_key"],
            "drain_cycles": one["last_out"] - one["last_key"],
            "cycles_per_projection_steady": key_span / jobs,
            "efficiency_steady": ideal * jobs / key_span,
            "keys_per_cycle_steady": many["beats"] * cfg.keys_per_cycle / key_span,
            "keys_per_cycle_ideal": cfg.keys_per_cycle,
            "hbm_bytes": hbm,
            "useful_key_bytes": useful,
            "hbm_gbps_single": hbm / (one["cycles"] / clock) / 1e9,
            "hbm_gbps_steady": hbm * jobs / (key_span / clock) / 1e9,
            "us_single": one["cycles"] / clock * 1e6,
        })
    report = {
        "config": config_params(cfg) | {
            "clock_mhz": clock / 1e6,
            "keys_per_cycle": cfg.keys_per_cycle,
            "beat_efficiency": cfg.beat_efficiency,
            "acc_width": cfg.acc_width,
            "result_latency": cfg.result_latency,
        },
        "bandwidth": {
            "hbm_peak_gbps": HBM_BYTES_PER_SECOND / 1e9,
            "hbm_bits_per_cycle": HBM_BYTES_PER_SECOND * 8 / clock,
            "beat_gbps_at_full_rate": cfg.beat_bits / 8 * clock / 1e9,
            "key_gbps_at_full_rate": cfg.key_bits_used / 8 * clock / 1e9,
        },
        "jobs_steady": jobs,
        "projections": rows,
        "verilator": timing | {
            "simulated_cycles": total_cycles,
            "sim_wall_s": total_wall,
            "cycles_per_second": total_cycles / total_wall if total_wall else None,
        },
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    return report


def format_report(rep: dict) -> str:
    c, b, v = rep["config"], rep["bandwidth"], rep["verilator"]
    lines = [
        f"TLMM {c['tables']} tables x {c['lanes']} lanes, beat {c['beat_bits']} bit, "
        f"clock {c['clock_mhz']:.0f} MHz, acc {c['acc_width']} bit, "
        f"result latency {c['result_latency']} cycles",
        f"HBM peak {b['hbm_peak_gbps']:.1f} GB/s = {b['hbm_bits_per_cycle']:.0f} bit/cycle; "
        f"beat {b['beat_gbps_at_full_rate']:.1f} GB/s, keys {b['key_gbps_at_full_rate']:.1f} GB/s "
        f"at one beat/cycle ({c['keys_per_cycle']} keys/cycle, "
        f"{100 * c['beat_efficiency']:.2f}% of the beat)",
        "",
        f"{'N x K':>12} {'tiles':>9} {'ideal':>6} {'single':>7} {'eff':>6} {'load':>5} "
        f"{'fill':>5} {'drain':>5} {'steady/proj':>11} {'eff':>7} {'keys/cyc':>9} "
        f"{'HBM MB':>7} {'GB/s':>6} {'us':>6}",
    ]
    for r in rep["projections"]:
        n, k = r["shape"]
        lines.append(
            f"{f'{n}x{k}':>12} {'%dx%d' % tuple(r['tiles']):>9} {r['ideal_cycles']:>6} "
            f"{r['cycles_single']:>7} {100 * r['efficiency_single']:>5.1f}% "
            f"{r['act_load_cycles']:>5} {r['fill_cycles']:>5} {r['drain_cycles']:>5} "
            f"{r['cycles_per_projection_steady']:>11.1f} {100 * r['efficiency_steady']:>6.2f}% "
            f"{r['keys_per_cycle_steady']:>9.1f} {r['hbm_bytes'] / 1e6:>7.2f} "
            f"{r['hbm_gbps_steady']:>6.1f} {r['us_single']:>6.2f}")
    fb = v.get("first_build", v)
    lines += [
        "",
        f"(single = one projection alone incl. activation load, fill and drain; steady = "
        f"{rep['jobs_steady']} back-to-back projections reusing the activations; GB/s = steady)",
        f"Verilator: Verilog {v['verilog_bytes'] / 1e6:.1f} MB generated in {v['verilog_s']:.1f} s, "
        f"build {fb['build_s']:.1f} s{' (cached now)' if v['build_cached'] else ''}; "
        f"{v['simulated_cycles']} cycles in {v['sim_wall_s']:.2f} s = "
        f"{v['cycles_per_second']:.0f} simulated cycles/s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8, help="back-to-back projections (steady state)")
    ap.add_argument("--out", type=Path, default=runner.REPO_ROOT / "build" / "bench" / "tlmm.json")
    args = ap.parse_args(argv)
    rep = run_bench(DEFAULT_CONFIG, jobs=args.jobs, out=args.out)
    print(format_report(rep))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
