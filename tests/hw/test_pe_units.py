"""PE-array output units in the Amaranth simulator: the binary32 adder against torch float32
addition, the scaled reconstruction against golden ``exact_to_float32``, and the PEConfig rules."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.bfp import BFPFormat, exact_to_float32, float_to_sig_exp
from ternopu.golden.errors import ConfigError
from ternopu.hw.pe_array import DEFAULT_CONFIG, MID_CONFIG, SMALL_CONFIG, Float32Add, PEConfig, ScaledToFloat32

#: Constructors that reject their arguments leave a half-built elaboratable behind: expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


def f32_bits(t: torch.Tensor) -> list[int]:
    return (t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).tolist()


def _pipeline_run(dut, inputs: list[dict], latency: int, outs=("o", "range_error"), stall_p=0.3, seed=0):
    """Drive one input per enabled cycle with random ``en`` stalls; collect outputs in order."""
    rng = random.Random(seed)
    got = []

    async def bench(ctx):
        i = 0
        while len(got) < len(inputs):
            en = rng.random() >= stall_p
            src = inputs[i] if i < len(inputs) else inputs[0]
            for k, v in src.items():
                ctx.set(getattr(dut, k), v)
            ctx.set(dut.i_valid, int(i < len(inputs)))
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                i += 1
                if ctx.get(dut.o_valid):
                    got.append(tuple(ctx.get(getattr(dut, o)) for o in outs))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def _adder_cases(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    b = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    # Near-cancellation and exact cancellation, equal exponents, one operand zero.
    k = n // 5
    b[:k] = -a[:k] * (1 + torch.randn(k, generator=g) * 2.0 ** -20)
    b[k:k + 8] = -a[k:k + 8]
    b[k + 8:k + 16] = 0.0
    a[k + 16:k + 24] = 0.0
    b[k + 24:k + 40] = a[k + 24:k + 40] * 2.0 ** -24 * 3  # sticky-bit rounding cases
    return a.float(), b.float()


def test_float32_add_matches_torch():
    a, b = _adder_cases(600, seed=1)
    ref = a + b
    keep = (ref == 0) | (ref.abs() >= 2.0 ** -126)
    a, b, ref = a[keep], b[keep], ref[keep]
    inputs = [{"a": x, "b": y} for x, y in zip(f32_bits(a), f32_bits(b))]
    got = _pipeline_run(Float32Add(), inputs, Float32Add.LATENCY)
    exp = f32_bits(ref)
    exp = [0 if e == 0x80000000 else e for e in exp]  # -0 + -0 is outside the contract
    assert [g[0] for g in got] == exp
    assert not any(g[1] for g in got)


def test_float32_add_flags_subnormal_results():
    a = torch.tensor([2.0 ** -126 * 1.5], dtype=torch.float32)
    b = torch.tensor([-2.0 ** -126], dtype=torch.float32)
    got = _pipeline_run(Float32Add(), [{"a": f32_bits(a)[0], "b": f32_bits(b)[0]}], 4, stall_p=0.0)
    assert got[0][1] == 1


def test_scaled_to_float32_matches_golden():
    rng = random.Random(4)
    acc_bits = MID_CONFIG.fold_bits
    g = torch.Generator().manual_seed(4)
    scales = (torch.randn(400, generator=g) * torch.exp2(torch.randint(-24, 6, (400,), generator=g).float()))
    scales[:10] = 2.0 ** -24 * torch.arange(1, 11)  # FP16 subnormal scales
    scales[10] = 65504.0
    scales = scales.to(torch.float16)
    accs, exps = [], []
    for i in range(400):
        lim = 1 << rng.choice([2, 10, 20, acc_bits - 2])
        accs.append(rng.choice([0, 1, -1, lim - 1, -(lim - 1), rng.randint(-lim, lim)]))
        exps.append(rng.randint(-34, 3))
    s_sig, s_exp = float_to_sig_exp(scales)
    ref = exact_to_float32(torch.tensor(accs) * s_sig, torch.tensor(exps) + s_exp)
    s_bits = (scales.view(torch.int16).to(torch.int64) & 0xFFFF).tolist()
    inputs = [{"acc": a, "scale": s, "exp": e} for a, s, e in zip(accs, s_bits, exps)]
    got = _pipeline_run(ScaledToFloat32(acc_bits), inputs, ScaledToFloat32.LATENCY)
    assert [x[0] for x in got] == f32_bits(ref)
    assert not any(x[1] for x in got)


def test_config_rules():
    assert DEFAULT_CONFIG.macs_per_cycle == 4096 and DEFAULT_CONFIG.dsps == 2048
    # 256 lanes divide every Llama-2-7B dimension; the credits never throttle the default or mid engine.
    assert 4096 % DEFAULT_CONFIG.lanes == 0 and 11008 % DEFAULT_CONFIG.lanes == 0
    assert DEFAULT_CONFIG.full_rate and MID_CONFIG.full_rate
    assert not PEConfig(drain_banks=2).full_rate
    with pytest.raises(ConfigError, match="drain_banks: expected >= 2"):
        PEConfig(drain_banks=1)
    assert SMALL_CONFIG.lanes == 8 and MID_CONFIG.lanes == 32
    with pytest.raises(ConfigError, match="rows: must divide the BFP block 32"):
        PEConfig(rows=12)
    with pytest.raises(ConfigError, match="rows must be a multiple of 8"):
        PEConfig(rows=4, cols=16, out_lanes=4)
    with pytest.raises(ConfigError, match="group: must be a multiple of the BFP block"):
        PEConfig(group=48)
    with pytest.raises(ConfigError, match="need >= 6"):
        PEConfig(cols=8, out_lanes=4)
    with pytest.raises(ConfigError, match="exceeds the int4x2 accumulation depth"):
        PEConfig(fmt=BFPFormat(64, 14), group=128)
    with pytest.raises(ConfigError, match="dsp: expected"):
        PEConfig(dsp="dsp48e1")
    with pytest.raises(ConfigError, match="lanes = 2\\*cols must be a multiple of 8"):
        PEConfig(cols=6, out_lanes=1, int4_format="awq", rows=4, drain_banks=2)
    with pytest.raises(ConfigError, match="N must be a multiple"):
        SMALL_CONFIG.tiles(12, 64)
    # AWQ allows rows that are not a multiple of 8.
    assert PEConfig(rows=4, cols=16, out_lanes=4, int4_format="awq").rows == 4


@pytest.mark.slow
def test_primitive_dsp_array_elaborates():
    """The array built from DSP48E2 primitives: one Instance per slice (synthesis path)."""
    from amaranth.back import rtlil

    from ternopu.hw.pe_array import PEArray

    cfg = PEConfig(rows=8, cols=4, group=64, out_lanes=1, drain_banks=4, max_k=128, max_n=64,
                   primitive_dsp=True)
    text = rtlil.convert(PEArray(cfg), name="pe_prim")
    assert text.count("cell \\DSP48E2 ") == cfg.dsps
