"""PE array (INT4-linear mode) in Verilator through cocotb: bit-exact against golden
``linear_bfp_int4`` under random backpressure, corner values, and one token through each
Llama-2-7B projection shape with INT4 group-128 weights (GPTQ and AWQ streams)."""

from __future__ import annotations

import json

import pytest

from ternopu.hw.pe_array import MID_CONFIG, SMALL_CONFIG, PEConfig
from ternopu.sim import runner
from ternopu.sim.tb.pe import build_pe, config_params

pytestmark = pytest.mark.sim

#: Llama-2-7B projections as (K inputs, N outputs): q/k/v/o, gate/up, down.
LLAMA2_7B_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]

AWQ_SMALL = PEConfig(rows=4, cols=4, group=64, out_lanes=1, max_k=512, max_n=256, int4_format="awq",
                     dsp="dsp58")


@pytest.mark.parametrize("name, cfg, gap_p, stall_p", [
    ("small-stalls", SMALL_CONFIG, 0.3, 0.4),
    ("small-fullrate", SMALL_CONFIG, 0.0, 0.0),
    ("awq-dsp58-stalls", AWQ_SMALL, 0.2, 0.5),
])
def test_corners(name, cfg, gap_p, stall_p):
    sim = build_pe(cfg, f"pe-{cfg.int4_format}-{cfg.rows}x{cfg.cols}-{cfg.dsp}")
    runner.run(sim, "ternopu.sim.tb.pe", testcase="corners_under_backpressure",
               params={"config": config_params(cfg), "gap_p": gap_p, "stall_p": stall_p,
                       "seed": len(name)}, run_name=name)


@pytest.mark.slow
def test_llama2_projections_bit_exact(tmp_path):
    """One token through each Llama-2-7B projection on the mid-size engine, full rate."""
    sim = build_pe(MID_CONFIG, "pe-mid")
    report = tmp_path / "real.json"
    runner.run(sim, "ternopu.sim.tb.pe", testcase="real_shapes",
               params={"config": config_params(MID_CONFIG), "shapes": LLAMA2_7B_SHAPES, "seed": 3,
                       "report": str(report)}, run_name="real-shapes")
    rows = json.loads(report.read_text())
    assert [(r["k"], r["n"]) for r in rows] == LLAMA2_7B_SHAPES
    for r in rows:
        # Without stalls the weight stream runs at one beat per cycle for the whole projection.
        assert r["weight_cycles"] == r["beats"] == r["ideal_cycles"]
