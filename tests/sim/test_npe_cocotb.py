"""NPE units in Verilator through cocotb: real shapes, exhaustive FP16 sweeps, random stalls.

One Verilator build of :class:`ternopu.sim.tb.npe.NpeBench` (cached under sim_build/) serves all
tests; each test runs one cocotb testcase of :mod:`ternopu.sim.tb.npe`.
"""

import pytest

from ternopu.sim import runner

pytestmark = pytest.mark.sim


# The generated C++ of these wide float pipelines is large; -O0 roughly halves the g++ time on a
# busy 2-core machine and the testbenches are bound by cocotb's per-cycle Python anyway.
EXTRA_ARGS = ("-CFLAGS", "-O0")
_builds: dict = {}


def bench(group: str):
    if group not in _builds:
        from ternopu.sim.tb.npe import NpeBench
        top = runner.verilog_of(NpeBench(group), "npe_bench")
        _builds[group] = runner.build(top, "npe_bench", tag=f"npe-{group}",
                                      extra_args=EXTRA_ARGS)
    return _builds[group]


@pytest.mark.parametrize("group,case,params", [
    # exhaustive sweeps: ~63k elements each, ~45 s of per-cycle cocotb callbacks
    pytest.param("elt", "exp_all_fp16", {"gap_p": 0.1, "stall_p": 0.1}, marks=pytest.mark.slow),
    pytest.param("elt", "silu_all_fp16", {"gap_p": 0.1, "stall_p": 0.1}, marks=pytest.mark.slow),
    ("elt", "swiglu_llama_ffn", {"seed": 2}),
    ("elt", "relu2_glu_bitnet_ffn", {"seed": 3}),
    ("elt", "rope_32_heads", {"seed": 8}),
    ("elt", "fp16_conversion_sweep", {"seed": 9}),
    ("norm", "rmsnorm_real_rows", {"d": 2560, "seed": 4}),
    ("norm", "rmsnorm_real_rows", {"d": 4096, "seed": 5}),
    ("norm", "act_quant_real_rows", {"seed": 6}),
    pytest.param("sm", "softmax_4096_scores", {"seed": 7, "gap_p": 0.3, "stall_p": 0.3},
                 marks=pytest.mark.slow),
])
def test_npe_in_verilator(group, case, params):
    params = dict(params, group=group)
    name = case + "".join(f"-{k}{v}" for k, v in sorted(params.items()))
    runner.run(bench(group), "ternopu.sim.tb.npe", testcase=case, params=params, run_name=name)
