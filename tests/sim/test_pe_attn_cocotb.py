"""PE array attention modes (b) and (c) in Verilator through cocotb: bit-exact against golden
``qk_bfp`` / ``pv_bfp`` / ``qk_bfp_kivi`` / ``pv_bfp_kivi`` for one head (head_dim 128: Llama-2-7B
and BitNet b1.58 2B4T both use 128) over KV caches of 128 and 4096 tokens, FP16 and 2-bit KIVI
(group 32, golden/kivi.py's default), with and without random backpressure."""

from __future__ import annotations

import functools
import json

import pytest

from ternopu.hw.pe_attn import ATTN_MID, AttnArray, AttnConfig
from ternopu.sim import runner
from ternopu.sim.tb.pe_attn import config_params

pytestmark = pytest.mark.sim

HEAD_DIM = 128


@functools.cache
def build_attn(cfg: AttnConfig, tag: str):
    return runner.build(runner.verilog_of(AttnArray(cfg), "attn_top"), "attn_top", tag=tag)


def _cases(t):
    return [{"op": "qk", "t": t, "d": HEAD_DIM}, {"op": "pv", "t": t, "d": HEAD_DIM},
            {"op": "qk_kivi", "t": t, "d": HEAD_DIM, "bits": 2},
            {"op": "pv_kivi", "t": t, "d": HEAD_DIM, "bits": 2}]


def test_attention_t128_backpressure():
    """T = 128, every op, random gaps on all input streams and out stalls."""
    sim = build_attn(ATTN_MID, "attn-mid")
    runner.run(sim, "ternopu.sim.tb.pe_attn", testcase="attention_cases",
               params={"config": config_params(ATTN_MID), "cases": _cases(128) + [
                   {"op": "qk_kivi", "t": 128, "d": HEAD_DIM, "bits": 4}],
                       "gap_p": 0.25, "stall_p": 0.3, "seed": 11}, run_name="attn-t128-stalls")


@pytest.mark.slow
def test_attention_real_shapes_full_rate(tmp_path):
    """T = 128 and 4096, every op at full rate: bit-exact, one beat per cycle."""
    sim = build_attn(ATTN_MID, "attn-mid")
    report = tmp_path / "attn.json"
    runner.run(sim, "ternopu.sim.tb.pe_attn", testcase="attention_cases",
               params={"config": config_params(ATTN_MID), "cases": _cases(128) + _cases(4096), "seed": 5,
                       "report": str(report)}, run_name="attn-real")
    rows = json.loads(report.read_text())
    for r in rows:
        assert r["cycles"] == r["model_cycles"], r
