"""binary32/binary16 primitives of :mod:`ternopu.hw.fpu` against torch on CPU, bit for bit.

Each operator is built into a tiny free-running pipeline (``en`` = 1), fed one operand tuple per
cycle in the Amaranth simulator, and compared with the torch element-wise op on the same bit
patterns: random patterns (exponents biased to interesting cases: equal / adjacent exponents,
subnormals, overflow) plus corner values.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from amaranth import Const, Module, Signal, signed
from amaranth.sim import Simulator

from ternopu.hw import fpu

pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")

CORNERS = [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x80800000,
           0x3F800000, 0xBF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F000000, 0x3FC00000, 0x4B000000,
           0x4AFFFFFF, 0x4B7FFFFF, 0x3EFFFFFF, 0x3F000001, 0xC2D00000, 0x42B00000, 0x477FE000,
           0x477FF000, 0x477FEFFF, 0x38800000, 0x33800000, 0x33000000, 0x33000001, 0x387FFFFF]


def run_op(fn, inputs, widths=(32, 32), out_shape=32):
    """Feed ``inputs`` (tuples of ints) one per cycle through ``fn(pipe, *vals)``; return outputs."""
    m = Module()
    ins = [Signal(w, name=f"in{k}") for k, w in enumerate(widths)]
    p = fpu.Pipe(m, Const(1, 1))
    out = fn(p, *[p.input(s) for s in ins])
    o = Signal(out_shape)
    m.d.comb += o.eq(out.sig)
    lat = out.stage
    res = []

    async def bench(ctx):
        for k in range(len(inputs) + lat):
            if k < len(inputs):
                for s, v in zip(ins, inputs[k]):
                    ctx.set(s, v)
            if k >= lat:
                res.append(ctx.get(o))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return res


def as_f32(bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.uint32).view(torch.int32).view(torch.float32)


def bits_of(t: torch.Tensor) -> list[int]:
    return (t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).tolist()


def random_pairs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2 ** 32, (n,), generator=g, dtype=torch.int64)
    b = torch.randint(0, 2 ** 32, (n,), generator=g, dtype=torch.int64)
    q = n // 4
    b[:q] = (a[:q] & 0x7F800000) | (b[:q] & 0x807FFFFF)          # equal exponents
    b[q:2 * q] = a[q:2 * q] ^ (b[q:2 * q] & 0x80FFFFFF)           # adjacent exponents
    a[2 * q:2 * q + q // 2] &= 0x80FFFFFF                          # subnormals / tiny
    b[2 * q + q // 4:3 * q] &= 0x807FFFFF
    pairs = [(x, y) for x, y in zip(a.tolist(), b.tolist())
             if (x >> 23) & 0xFF != 255 and (y >> 23) & 0xFF != 255]
    pairs += [(x, y) for x in CORNERS for y in CORNERS]
    return pairs


@pytest.mark.parametrize("name", ["mul", "add", "sub"])
def test_mul_add_sub_bit_exact(name):
    pairs = random_pairs(2000, {"mul": 1, "add": 2, "sub": 3}[name])
    fn = {"mul": fpu.fmul, "add": fpu.fadd, "sub": fpu.fsub}[name]
    a, b = as_f32([x for x, _ in pairs]), as_f32([y for _, y in pairs])
    ref = {"mul": a * b, "add": a + b, "sub": a - b}[name]
    got = run_op(fn, pairs)
    exp = bits_of(ref)
    bad = [(hex(x), hex(y), hex(gv), hex(e)) for (x, y), gv, e in zip(pairs, got, exp) if gv != e]
    assert not bad, f"{len(bad)} mismatches, first {bad[:4]}"


def test_nonfinite_operands_give_qnan():
    pairs = [(0x7F800000, 0x3F800000), (0x3F800000, 0xFFC00000), (0x7FC00001, 0)]
    for fn in (fpu.fmul, fpu.fadd):
        assert run_op(fn, pairs) == [fpu.F32_QNAN] * 3


def test_max_min_lt():
    pairs = random_pairs(500, 4)
    a, b = as_f32([x for x, _ in pairs]), as_f32([y for _, y in pairs])
    got_max = run_op(fpu.fmax, pairs)
    got_min = run_op(fpu.fmin, pairs)
    got_lt = run_op(lambda p, x, y: p.reg(fpu.flt(p, x, y).sig, 0), pairs, out_shape=1)
    va, vb = a.tolist(), b.tolist()
    for (x, y), mx, mn, lt, fa, fb in zip(pairs, got_max, got_min, got_lt, va, vb):
        assert lt == int(fa < fb), (hex(x), hex(y))
        if fa != fb:
            assert fpu.f32_value(mx) == max(fa, fb) and fpu.f32_value(mn) == min(fa, fb)
        else:
            assert mx == x and mn == x  # ties (incl. +-0) return the first operand


@pytest.mark.parametrize("width,lo,hi,scale", [(8, -128, 127, 0), (40, -(2 ** 39), 2 ** 39 - 1, 36),
                                               (16, -(2 ** 15), 2 ** 15 - 1, 0)])
def test_f2i_round_half_even_saturating(width, lo, hi, scale):
    g = torch.Generator().manual_seed(width)
    vals = torch.cat([
        torch.randn(600, generator=g) * 100,
        torch.arange(-300, 300, dtype=torch.float32) / 2,  # exact halves: ties to even
        torch.rand(300, generator=g) * 2 ** -30,
        torch.tensor([0.0, -0.0, 127.5, -128.5, 126.5, 1e30, -1e30, 2.0 ** -149, 0.4999999,
                      8388607.5, 2.0 ** 23 + 1, -(2.0 ** 31), 3.4e38, 1.0, -1.0]),
    ])
    got = run_op(lambda p, x: fpu.f2i(p, x, width, lo, hi, scale), [(v,) for v in bits_of(vals)],
                 widths=(32,), out_shape=signed(width))
    exp = torch.round(vals.to(torch.float64) * 2.0 ** scale).clamp(lo, hi).to(torch.int64).tolist()
    assert got == exp


@pytest.mark.parametrize("width,lsb_exp,signed_in", [(128, -62, False), (54, -36, False),
                                                     (15, 0, True), (25, 0, True)])
def test_i2f_single_rounding(width, lsb_exp, signed_in):
    import random
    rng = random.Random(width)
    lo = -(1 << (width - 1)) if signed_in else 0
    hi = (1 << (width - 1)) - 1 if signed_in else (1 << width) - 1
    vals = [lo, hi, 0, 1, (1 << 24) + 1, (1 << 25) + 3, (1 << 24) - 1] + [
        rng.randint(lo, hi) >> rng.randint(0, width - 1) for _ in range(400)]
    vals = [max(lo, min(hi, v)) for v in vals]
    if signed_in:
        vals += [-v for v in vals if lo <= -v <= hi]
    shape = signed(width) if signed_in else width
    got = run_op(lambda p, x: fpu.i2f(p, x, lsb_exp), [(v,) for v in vals], widths=(shape,))
    from ternopu.golden.nonlinear import _int_to_f32  # the golden single-rounding reference

    for v, gbits in zip(vals, got):
        ref = _int_to_f32(abs(v), lsb_exp)
        ref = -ref if v < 0 else ref
        assert gbits == (struct.unpack("<I", struct.pack("<f", ref))[0] if v else 0), (v, hex(gbits))


def test_f2h_matches_torch_clamped_conversion():
    g = torch.Generator().manual_seed(5)
    bits = torch.randint(0, 2 ** 32, (1500,), generator=g, dtype=torch.int64)
    bits[:500] = (bits[:500] & 0x87FFFFFF) | 0x30000000   # exponents around the binary16 range
    bits[500:800] = (bits[500:800] & 0x80FFFFFF) | 0x33000000  # binary16 subnormal range
    vals = [v for v in bits.tolist() + fpu_corners() if (v >> 23) & 0xFF != 255]
    x = as_f32(vals)
    exp = x.clamp(-65504, 65504).to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    got = run_op(fpu.f2h, [(v,) for v in vals], widths=(32,), out_shape=16)
    assert got == exp.tolist()


def fpu_corners():
    return CORNERS + [fpu.f32_bits(v) for v in (65504.0, 65519.0, 65520.0, -65520.0, 2.0 ** -24,
                                                 2.0 ** -25, 1.5 * 2.0 ** -25, 2.0 ** -14,
                                                 2.0 ** -15 * 1.0009765625)]


def test_fceil():
    g = torch.Generator().manual_seed(6)
    x = torch.cat([torch.randn(500, generator=g) * 10, torch.randn(200, generator=g) * 1e7,
                   torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0 ** -149, -(2.0 ** -149),
                                 8388607.5, -8388607.5, 2.0 ** 23, 3.4e38, -3.4e38, 0.999999])])
    got = run_op(fpu.fceil, [(v,) for v in bits_of(x)], widths=(32,))
    assert got == bits_of(torch.ceil(x))


def test_scale_pow2_flushes_below_normal():
    from ternopu.golden.nonlinear import _scale_pow2
    g = torch.Generator().manual_seed(7)
    v = torch.rand(300, generator=g) + 0.5
    k = torch.randint(-160, 120, (300,), generator=g)
    got = run_op(fpu.scale_pow2, list(zip(bits_of(v), (k & 0x3FF).tolist())),
                 widths=(32, signed(10)))
    assert got == bits_of(_scale_pow2(v, k))


def div_run(pairs):
    dut = fpu.Float32Div()
    out = []

    async def bench(ctx):
        for a, b in pairs:
            ctx.set(dut.i.payload, {"a": a, "b": b})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 1)
            while True:
                _, _, v, q, err = await ctx.tick().sample(dut.o.valid, dut.o.payload.q,
                                                          dut.o.payload.err)
                if v:
                    break
            out.append((q, err))
            ctx.set(dut.o.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_divider_correctly_rounded():
    g = torch.Generator().manual_seed(8)
    amax = torch.exp(torch.empty(150).uniform_(math.log(1e-5), math.log(3e38), generator=g))
    amax = torch.cat([amax, torch.tensor([1e-5, 127.0, 1.0, 3.0, 2.0 ** -16, 3.4e38, 0.1])])
    num = torch.cat([torch.full((amax.numel() - 40,), 127.0), torch.randn(40, generator=g) * 1e3])
    pairs = list(zip(bits_of(num), bits_of(amax)))
    got = div_run(pairs)
    assert [q for q, _ in got] == bits_of(num / amax)
    assert not any(e for _, e in got)


def test_divider_flags_out_of_contract():
    got = div_run([(0x3F800000, 0), (0x7F800000, 0x3F800000), (0x00800000, 0x7F000000),
                   (0x7F000000, 0x00800000)])
    assert [e for _, e in got] == [1, 1, 1, 1]


def test_pipe_rejects_stage_going_backwards():
    m = Module()
    p = fpu.Pipe(m, Const(1, 1))
    v = p.input(Signal(32), stage=3)
    with pytest.raises(ValueError, match="earlier stage"):
        p.at(v, 1)
    from amaranth.hdl import Fragment
    Fragment.get(m, None)  # elaborate the scratch module (no "never used" warning)
