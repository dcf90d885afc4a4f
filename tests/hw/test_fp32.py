"""binary32 units in the Amaranth simulator, compared bit for bit with torch float32 on CPU."""

from __future__ import annotations

import random
import struct

import pytest
import torch
from amaranth.sim import Simulator

from ternopu.hw.fp32 import F32_QNAN, Float32Mul, IntToFloat32


def _bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _torch_mul_bits(a: list[int], b: list[int]) -> list[int]:
    ta = torch.tensor([x - (1 << 32) if x >> 31 else x for x in a], dtype=torch.int64)
    tb = torch.tensor([x - (1 << 32) if x >> 31 else x for x in b], dtype=torch.int64)
    fa = ta.to(torch.int32).view(torch.float32)
    fb = tb.to(torch.int32).view(torch.float32)
    prod = (fa * fb).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return prod.tolist()


def _run_pipeline(dut, feed, latency: int, stall_p: float = 0.0, seed: int = 0):
    """Push one operand set per cycle (``feed(ctx, item)``), toggling ``en`` randomly; collect ``o``."""
    rng = random.Random(seed)
    items = list(feed.items)
    got = []

    async def bench(ctx):
        i = 0
        while len(got) < len(items):
            en = rng.random() >= stall_p
            ctx.set(dut.en, en)
            if i < len(items):
                feed(ctx, items[i])
                ctx.set(dut.i_valid, 1)
            else:
                ctx.set(dut.i_valid, 0)
            _, _, o, ov = await ctx.tick().sample(dut.o, dut.o_valid)
            if en and i < len(items):
                i += 1
            # Outputs are registered: what we see after the edge is the stage-3 content.
            if en and ctx.get(dut.o_valid):
                got.append(ctx.get(dut.o))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


class _Feed:
    def __init__(self, items, setter):
        self.items = items
        self.setter = setter

    def __call__(self, ctx, item):
        self.setter(ctx, item)


def _mul(a: list[int], b: list[int], stall_p: float = 0.0) -> list[int]:
    dut = Float32Mul()

    def setter(ctx, ab):
        ctx.set(dut.a, ab[0])
        ctx.set(dut.b, ab[1])

    return _run_pipeline(dut, _Feed(list(zip(a, b)), setter), Float32Mul.LATENCY, stall_p)


def _i2f(width: int, xs: list[int], stall_p: float = 0.0) -> list[int]:
    dut = IntToFloat32(width)

    def setter(ctx, x):
        ctx.set(dut.i, x)

    return _run_pipeline(dut, _Feed(xs, setter), IntToFloat32.LATENCY, stall_p)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_validated():
    with pytest.raises(ValueError, match="width must be an int in"):
        IntToFloat32(26)
    with pytest.raises(ValueError, match="width must be an int in"):
        IntToFloat32(1)


@pytest.mark.parametrize("width", [2, 21, 25])
def test_int_to_float_exact(width):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    rng = random.Random(width)
    xs = sorted({lo, hi, 0, 1, -1, lo + 1, hi - 1} & set(range(lo, hi + 1)))
    xs += [rng.randint(lo, hi) for _ in range(400)]
    # Every power of two and its neighbours inside the range: the normalization shift corners.
    for e in range(width - 1):
        xs += [v for v in ((1 << e), (1 << e) - 1, -(1 << e), -(1 << e) + 1) if lo <= v <= hi]
    got = _i2f(width, xs, stall_p=0.3)
    want = (torch.tensor(xs, dtype=torch.int64).to(torch.float32).view(torch.int32).to(torch.int64)
            & 0xFFFFFFFF).tolist()
    assert got == want


def _random_normal(rng: random.Random, exp_lo: int = 1, exp_hi: int = 254) -> int:
    return (rng.getrandbits(1) << 31) | (rng.randint(exp_lo, exp_hi) << 23) | rng.getrandbits(23)


def test_mul_random_normals_and_corners():
    rng = random.Random(1)
    a, b = [], []
    # Products spread over the whole range: normal, overflowing, underflowing results.
    for _ in range(1500):
        a.append(_random_normal(rng))
        b.append(_random_normal(rng))
    # Exponent sums near the subnormal boundary and near overflow (the rounding-carry cases).
    for _ in range(800):
        ea = rng.randint(1, 126)
        eb = rng.randint(max(1, 100 - ea), min(254, 130 - ea))
        a.append(_random_normal(rng, ea, ea))
        b.append(_random_normal(rng, eb, eb))
    for _ in range(300):
        ea = rng.randint(127, 254)
        eb = rng.randint(max(1, 378 - ea), min(254, 384 - ea))
        a.append(_random_normal(rng, ea, ea))
        b.append(_random_normal(rng, eb, eb))
    corners = [0.0, -0.0, 1.0, -1.0, 1.5, 2.0 ** -126, 3.4028234663852886e38, 2.0 ** -63, 0.5,
               1.0000001192092896, 1.9999998807907715, 7.874015808105469e-08]
    for x in corners:
        for y in corners:
            a.append(_bits(x))
            b.append(_bits(y))
    # Halfway cases: mantissa products whose dropped bits are exactly 1/2 ulp.
    for _ in range(200):
        ma = rng.getrandbits(12) | 1
        a.append((127 << 23) | (ma << 11))
        b.append((127 << 23) | (1 << 22) | rng.getrandbits(1) << 11)
    got = _mul(a, b, stall_p=0.25)
    want = _torch_mul_bits(a, b)
    mism = [(hex(x), hex(y), hex(g), hex(w)) for x, y, g, w in zip(a, b, got, want) if g != w]
    assert not mism, f"{len(mism)} mismatches, first {mism[:5]}"


def test_mul_subnormal_results_exact():
    # Products landing on and around every subnormal binade, including the round-up into the
    # smallest normal and products that round to zero.
    rng = random.Random(2)
    a, b = [], []
    for target in range(-150, -120):
        for _ in range(20):
            ea = rng.randint(1, 126)
            eb = target + 254 - ea
            if 1 <= eb <= 254:
                a.append(_random_normal(rng, ea, ea))
                b.append(_random_normal(rng, eb, eb))
    got = _mul(a, b)
    want = _torch_mul_bits(a, b)
    assert len(a) > 300
    assert got == want
    # The set really exercised the subnormal and zero outputs.
    exps = {(w >> 23) & 0xFF for w in want}
    assert 0 in exps and 1 in exps


def test_mul_daz_and_nonfinite_policy():
    sub = 0x00000005  # a subnormal operand: treated as +0 (DAZ), torch would not flush it
    one, neg_two = _bits(1.0), _bits(-2.0)
    inf, nan = 0x7F800000, 0x7FC00001
    got = _mul([sub, sub | (1 << 31), inf, nan, one], [one, neg_two, one, one, inf])
    assert got == [0x00000000, 0x00000000, F32_QNAN, F32_QNAN, F32_QNAN]
    # The stated limit: the smallest TLMM output scale (gamma = amax = 1e-5) is a normal number.
    g127 = torch.tensor(1e-5, dtype=torch.float32) / torch.tensor(127.0, dtype=torch.float32)
    smallest = torch.tensor(1e-5, dtype=torch.float32) * g127
    assert ((_bits(float(smallest)) >> 23) & 0xFF) > 0
