"""hw.bfp.BFPConverter in the Amaranth simulator, bit-exact against golden ``to_bfp``: denormal,
zero, large-exponent and dominant-value blocks, random blocks, BF16, several mantissa widths, and
random output backpressure."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.bfp import BFPFormat, DEFAULT_BFP, to_bfp
from ternopu.golden.errors import ConfigError
from ternopu.hw.bfp import BFPConverter

#: Constructors that reject their arguments leave a half-built elaboratable behind: expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


def corner_blocks(block: int, dtype: torch.dtype, n_random: int, seed: int) -> torch.Tensor:
    """Rows of ``block`` values: corner cases first, then random (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    finfo = torch.finfo(dtype)
    rows = [
        torch.zeros(block),  # all-zero block
        torch.full((block,), finfo.tiny / 4),  # denormals only
        torch.full((block,), -finfo.max),  # largest exponent, negative
        torch.full((block,), finfo.max),
        torch.cat([torch.tensor([float(finfo.max)]), torch.randn(block - 1, generator=g)]),  # dominant
        torch.cat([torch.tensor([1.0]), torch.full((block - 1,), 1e-7)]),  # tiny next to one
        (torch.arange(block) - block / 2) * 2.0 ** -14,  # denormal/normal boundary
        torch.full((block,), 2047.0 / 1024.0),  # all-ones significand: rounds up in narrow fmts
    ]
    x = torch.stack(rows).to(dtype)
    rnd = torch.randn(n_random, block, generator=g) * torch.exp2(torch.randint(-20, 12, (n_random, 1), generator=g).float())
    out = torch.cat([x, rnd.to(dtype)])
    x = out.float()
    x[~torch.isfinite(x)] = 0.0
    return x.to(dtype)


def _bits(x: torch.Tensor) -> list[int]:
    w = x.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    return [sum(int(v) << (16 * j) for j, v in enumerate(row.tolist())) for row in w]


def _run(fmt, dtype, x, stall_p=0.3, seed=1):
    dut = BFPConverter(fmt, dtype)
    words = _bits(x)
    got = []
    rng = random.Random(seed)

    async def producer(ctx):
        for w in words:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, w)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(words):
            ctx.set(dut.o.ready, rng.random() >= stall_p)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                got.append(([int(v) for v in payload.mant], int(payload.exp), int(payload.msum)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    ref = to_bfp(x, fmt)
    for r, (mant, exp, msum) in enumerate(got):
        assert mant == ref.mant[r].tolist(), f"row {r}"
        assert exp == int(ref.exp[r, 0])
        assert msum == int(ref.mant[r].sum())


def test_default_format_fp16():
    _run(DEFAULT_BFP, torch.float16, corner_blocks(32, torch.float16, 24, seed=5))


@pytest.mark.parametrize("mant_bits", [8, 12, 16])
def test_other_mantissa_widths(mant_bits):
    fmt = BFPFormat(8, mant_bits)
    _run(fmt, torch.float16, corner_blocks(8, torch.float16, 40, seed=mant_bits), stall_p=0.5)


def test_bf16():
    _run(BFPFormat(8, 14), torch.bfloat16, corner_blocks(8, torch.bfloat16, 40, seed=9))


def test_kivi_format_from_fp16():
    from ternopu.golden.pe import KIVI_BFP
    _run(KIVI_BFP, torch.float16, corner_blocks(32, torch.float16, 8, seed=2), stall_p=0.0)


def test_bad_configuration():
    with pytest.raises(ConfigError, match="dtype must be float16 or bfloat16"):
        BFPConverter(DEFAULT_BFP, torch.float32)
    with pytest.raises(ConfigError, match="expected a BFPFormat"):
        BFPConverter((32, 14))


def test_nonfinite_flag():
    dut = BFPConverter(BFPFormat(2, 14))
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 0x3C00 | (0x7C00 << 16))  # 1.0, +inf
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        await ctx.tick()
        seen.append(ctx.get(dut.nonfinite))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1]
