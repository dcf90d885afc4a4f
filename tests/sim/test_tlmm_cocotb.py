"""TLMM in Verilator through cocotb: bit-exact against the golden model under backpressure.

Configurations: a small engine (fast, heavy random stalls), a mid-size one whose drain is slower
than short row tiles (drain credits throttle the key stream), and the default U280 engine
(19 tables x 128 lanes, 12288-bit beats) with one token through each BitNet b1.58 2B4T projection.
"""

from __future__ import annotations

import json

import pytest

from ternopu.hw.tlmm import DEFAULT_CONFIG, SMALL_CONFIG, TLMMConfig
from ternopu.hw.tlmm_bench import TLMMBench
from ternopu.sim import runner
from ternopu.sim.bench_tlmm import (
    BITNET_2B4T_SHAPES,
    build_component,
    build_engine,
    config_params,
    run_bench,
)

pytestmark = pytest.mark.sim

MID_CONFIG = TLMMConfig(tables=3, lanes=8, beat_bits=128, max_k=1024, max_n=1024, out_lanes=2)


def build_tlmm(cfg: TLMMConfig, tag: str) -> runner.SimBuild:
    return build_engine(cfg, tag)[0]


@pytest.mark.parametrize("name, cfg, gap_p, stall_p", [
    ("small-stalls", SMALL_CONFIG, 0.3, 0.4),
    ("small-fullrate", SMALL_CONFIG, 0.0, 0.0),
    ("mid-heavy-output-stall", MID_CONFIG, 0.1, 0.8),
    ("mid-fullrate", MID_CONFIG, 0.0, 0.0),
])
def test_corners(name, cfg, gap_p, stall_p):
    sim = build_tlmm(cfg, f"tlmm-{cfg.tables}x{cfg.lanes}")
    runner.run(sim, "ternopu.sim.tb.tlmm", testcase="corners_under_backpressure",
               params={"config": config_params(cfg), "gap_p": gap_p, "stall_p": stall_p,
                       "seed": len(name)}, run_name=name)


@pytest.mark.slow
def test_default_engine_real_shapes(tmp_path):
    """One token through each 2B4T projection on the default engine, then corners with stalls.

    The default engine is built once, inside the benchmark wrapper (pass-through while no
    benchmark runs), and shared with `make bench-tlmm`.
    """
    sim, _ = build_component(TLMMBench(DEFAULT_CONFIG), "tlmm_bench_top", "tlmm-bench-default")
    report = tmp_path / "real.json"
    runner.run(sim, "ternopu.sim.tb.tlmm", testcase="real_shapes",
               params={"config": config_params(DEFAULT_CONFIG), "shapes": BITNET_2B4T_SHAPES,
                       "seed": 3, "report": str(report)}, run_name="real-shapes")
    rows = json.loads(report.read_text())
    assert [(r["n"], r["k"]) for r in rows] == BITNET_2B4T_SHAPES
    for r in rows:
        # No stalls: the key stream ran at one beat per cycle for the whole projection.
        assert r["key_cycles"] == r["beats"] == r["ideal_cycles"]
        assert r["last_beat_to_last_out"] == (DEFAULT_CONFIG.result_latency
                                              + DEFAULT_CONFIG.drain_cycles - 1)
    runner.run(sim, "ternopu.sim.tb.tlmm", testcase="corners_under_backpressure",
               params={"config": config_params(DEFAULT_CONFIG), "gap_p": 0.2, "stall_p": 0.3,
                       "seed": 5}, run_name="default-corners")


def test_bench_wrapper_small(tmp_path):
    """The HDL-driven benchmark path on the small engine: counters and steady-state rate."""
    rep = run_bench(SMALL_CONFIG, shapes=[(9, 13), (16, 60)], jobs=3, out=tmp_path / "b.json",
                    tag="tlmm-bench-small")
    single, big = rep["projections"]
    assert single["ideal_cycles"] == 3 * 3 and big["ideal_cycles"] == 4 * 10
    # 10 beats per row tile >= 2 drain cycles: back-to-back projections run at one beat/cycle.
    assert big["keys_per_cycle_steady"] == SMALL_CONFIG.keys_per_cycle
    assert big["fill_cycles"] == 10 - 1 + SMALL_CONFIG.result_latency
    assert big["drain_cycles"] == SMALL_CONFIG.result_latency + SMALL_CONFIG.drain_cycles - 1
    assert rep["verilator"]["cycles_per_second"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["projections"][1]["shape"] == [16, 60]
