"""hw.dsp slices in the Amaranth simulator against the golden DSP models (random + corner operands,
random clock-enable stalls, P accumulation, cascade input) and the Instance emission."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.back import rtlil
from amaranth.sim import Simulator

from ternopu.golden import dsp as gdsp
from ternopu.golden.errors import ConfigError
from ternopu.hw.dsp import (
    PREADD_ADD,
    PREADD_OFF,
    PREADD_SUB,
    W_C,
    W_P,
    W_ZERO,
    Z_C,
    Z_P,
    Z_PCIN,
    Z_ZERO,
    DSPPipeline,
    DSPSlice,
)

#: Constructors that reject their arguments leave a half-built elaboratable behind: expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")

PREADD_NAMES = {PREADD_OFF: "off", PREADD_ADD: "add", PREADD_SUB: "sub"}


def _rand_signed(rng, bits):
    # Half the draws are corner values (most negative, most positive, 0, -1).
    if rng.random() < 0.3:
        return rng.choice([-(1 << (bits - 1)), (1 << (bits - 1)) - 1, 0, -1, 1])
    return rng.randint(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _reference(s, ops):
    """Sequential golden results P_j of the ops (P feedback = previous result)."""
    out, prev = [], 0
    for op in ops:
        mres = int(gdsp.dsp_slice(s, op["a"], op["b"], 0, op["d"], preadd=PREADD_NAMES[op["preadd"]]))
        w = {W_ZERO: 0, W_P: prev, W_C: op["c"]}[op["w_sel"]]
        z = {Z_ZERO: 0, Z_PCIN: op["pcin"], Z_P: prev, Z_C: op["c"]}[op["z_sel"]]
        prev = int(gdsp.wrap(mres + w + z, s.p_bits))
        out.append(prev)
    return out


def _run(s, pipeline, n_ops, seed, ce_p=0.25, feedback=True):
    rng = random.Random(seed)
    dut = DSPSlice(s, pipeline)
    to_alu = pipeline.to_alu
    ops = []
    for _ in range(n_ops):
        ops.append({
            "a": _rand_signed(rng, s.a_bits), "b": _rand_signed(rng, s.b_bits),
            "c": _rand_signed(rng, s.c_bits), "d": _rand_signed(rng, s.d_bits),
            "pcin": _rand_signed(rng, s.p_bits), "preadd": rng.choice([0, 1, 2]),
            "w_sel": rng.choice([W_ZERO, W_P, W_C] if feedback else [W_ZERO, W_C]),
            "z_sel": rng.choice([Z_ZERO, Z_PCIN, Z_P, Z_C] if feedback else [Z_ZERO, Z_C]),
        })
    expected = _reference(s, ops)
    got = {}

    async def bench(ctx):
        step = 0
        while step < n_ops + to_alu + 2:
            ce = rng.random() >= ce_p
            j = step if step < n_ops else None
            src = ops[j] if j is not None else ops[rng.randrange(n_ops)]
            for name in ("a", "b", "c", "d", "preadd", "w_sel", "z_sel"):
                ctx.set(getattr(dut, name), src[name] if ce else _rand_signed(rng, 2) & 1)
            k = step - to_alu  # the op at the ALU this step consumes its pcin now
            ctx.set(dut.pcin, ops[k]["pcin"] if 0 <= k < n_ops else 0)
            ctx.set(dut.ce, ce)
            await ctx.tick()
            if ce:
                step += 1
                if pipeline.p_reg:
                    r = step - 1 - to_alu
                else:
                    r = step - to_alu
                if 0 <= r < n_ops:
                    got[r] = ctx.get(dut.p)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [got[i] for i in range(n_ops)] == expected


@pytest.mark.parametrize("slice_", [gdsp.DSP48E2, gdsp.DSP58], ids=["dsp48e2", "dsp58"])
@pytest.mark.parametrize("pipeline", [DSPPipeline(1, 1, 1, 1), DSPPipeline(0, 0, 0, 1),
                                      DSPPipeline(1, 0, 1, 1)], ids=["full", "p-only", "no-ad"])
def test_slice_matches_golden_with_stalls(slice_, pipeline):
    _run(slice_, pipeline, 400, seed=hash((slice_.name, pipeline.latency)) & 0xFFFF)


def test_slice_without_p_register():
    _run(gdsp.DSP48E2, DSPPipeline(1, 1, 1, 0), 200, seed=3, feedback=False)


@pytest.mark.parametrize("slice_", [gdsp.DSP48E2, gdsp.DSP58], ids=["dsp48e2", "dsp58"])
def test_int4x2_packing_accumulates_a_block(slice_):
    """A 32-product block of packed INT4 x 14-bit mantissa products accumulated in P, read back
    exactly with the golden sign-borrow correction (extreme codes and mantissas)."""
    rng = random.Random(11)
    dut = DSPSlice(slice_)
    lat = dut.latency
    blocks = []
    for case in range(6):
        if case == 0:
            qs = [(0, 15)] * 32; ms = [8191] * 32
        elif case == 1:
            qs = [(15, 0)] * 32; ms = [-8191] * 32
        else:
            qs = [(rng.randint(0, 15), rng.randint(0, 15)) for _ in range(32)]
            ms = [rng.randint(-8191, 8191) for _ in range(32)]
        blocks.append((qs, ms))
    ops = [(b, i) for b in range(len(blocks)) for i in range(32)]
    results = {}

    async def bench(ctx):
        for t in range(len(ops) + lat + 1):
            if t < len(ops):
                b, i = ops[t]
                (qh, ql), mm = blocks[b][0][i], blocks[b][1][i]
                po = gdsp.pack_int4x2(qh, ql, mm, dsp=slice_)
                ctx.set(dut.a, int(po.a)); ctx.set(dut.d, int(po.d)); ctx.set(dut.b, int(po.b))
                ctx.set(dut.preadd, PREADD_SUB)
                ctx.set(dut.w_sel, W_ZERO)
                ctx.set(dut.z_sel, Z_ZERO if i == 0 else Z_P)
            await ctx.tick()
            r = t - lat + 1
            if 0 <= r < len(ops) and ops[r][1] == 31:
                results[ops[r][0]] = ctx.get(dut.p)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for b, (qs, ms) in enumerate(blocks):
        hi, lo = gdsp.unpack_int4x2(results[b], sum(ms), dsp=slice_)
        assert int(hi) == sum(q[0] * m for q, m in zip(qs, ms))
        assert int(lo) == sum(q[1] * m for q, m in zip(qs, ms))


def test_pipeline_validation():
    with pytest.raises(ConfigError, match="in_reg: expected 0 or 1"):
        DSPPipeline(in_reg=2)
    with pytest.raises(ConfigError, match="expected golden DSP48E2 or DSP58"):
        DSPSlice("dsp48e2")
    with pytest.raises(ConfigError, match="expected a DSPPipeline"):
        DSPSlice(gdsp.DSP48E2, (1, 1, 1, 1))


@pytest.mark.parametrize("slice_, name", [(gdsp.DSP48E2, "DSP48E2"), (gdsp.DSP58, "DSP58")])
def test_primitive_instance_emitted(slice_, name):
    dut = DSPSlice(slice_, DSPPipeline(1, 1, 1, 1), primitive=True)
    text = rtlil.convert(dut)
    assert f"cell \\{name} " in text
    attrs = dut.primitive_attributes()
    assert attrs["BREG"] == 2 and attrs["AMULTSEL"] == "AD" and attrs["PREG"] == 1
    for key in ("AREG", "BREG", "ADREG", "MREG", "PREG", "OPMODEREG", "INMODEREG"):
        assert f"parameter \\{key} " in text
