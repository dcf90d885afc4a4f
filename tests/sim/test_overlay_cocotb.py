"""The overlay top in Verilator: Overlay + HDL HBM models, driven over AXI4-Lite by cocotbext-axi.

One build (2 HBM ports, small queues and memories) and one simulator run of every cocotb test in
:mod:`ternopu.sim.tb.overlay`: a normal program, each illegal-instruction class, bad addresses,
a soft reset in the middle of a run followed by a clean rerun, and a fuzz run of 200 random
instruction streams that must each end (done or error) within
:func:`ternopu.sim.tb.overlay.cycle_bound` cycles.
"""

import json

import pytest

from ternopu.sim import runner
from ternopu.sim.tb.overlay import OverlayBench

pytestmark = pytest.mark.sim

#: One C++ file (the wheel's verilated.mk breaks the split-file PCH rules) compiled without
#: optimisation: the simulation is short, the compile is what costs.
FAST_BUILD = ("--output-split", "0", "--output-split-cfuncs", "0", "-CFLAGS", "-O0")

PARAMS = {"ports": 2, "depth": 1024, "read_latency": 10, "buf_words": 16, "slverr_words": 32}


@pytest.fixture(scope="module")
def overlay_sim():
    bench = OverlayBench(ports=PARAMS["ports"], depth=PARAMS["depth"],
                         read_latency=PARAMS["read_latency"], buf_words=PARAMS["buf_words"],
                         slverr_words=PARAMS["slverr_words"])
    top = runner.verilog_of(bench, "overlay_bench")
    return runner.build(top, "overlay_bench", tag="overlay-2p", extra_args=FAST_BUILD)


def test_overlay_programs_faults_and_reset(overlay_sim, tmp_path):
    report = tmp_path / "overlay.json"
    runner.run(overlay_sim, "ternopu.sim.tb.overlay",
               testcase=["normal_program", "illegal_instructions", "bad_addresses", "reset_mid_run"],
               params={**PARAMS, "report": str(report)}, run_name="faults")
    print("overlay:", report.read_text())


def test_overlay_fuzz_random_streams_always_end(overlay_sim, tmp_path):
    report = tmp_path / "fuzz.json"
    runner.run(overlay_sim, "ternopu.sim.tb.overlay", testcase="fuzz",
               params={**PARAMS, "fuzz_programs": 200, "fuzz_seed": 2026, "report": str(report)},
               run_name="fuzz")
    stats = json.loads(report.read_text())["fuzz"]
    print("fuzz:", stats)
    assert stats["done"] > 10 and sum(stats["error"].values()) > 100
