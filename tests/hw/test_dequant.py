"""hw.dequant in the Amaranth simulator: GPTQ (plain and legacy zero offset) and AWQ checkpoints
packed by the golden packers come out as the plain codes / zeros / scales, under random stalls on
all three streams; KIVI code words unpack like golden ``unpack_lsb_first``."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.errors import ConfigError
from ternopu.golden.int4 import pack_awq, pack_gptq
from ternopu.golden.kivi import pack_lsb_first
from ternopu.hw.dequant import Int4Dequant, KiviCodeUnpack

#: Constructors that reject their arguments leave a half-built elaboratable behind: expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


def words_to_int(words) -> int:
    """Little-endian concatenation of 32-bit words (int32 tensor, any shape, row-major)."""
    return int.from_bytes(words.contiguous().numpy().astype("<i4").tobytes(), "little")


def int4_streams(fmt: str, q, zeros, scales, rows: int, lanes: int, group: int, legacy=False):
    """(qw transfers, meta transfers) of a projection in the PE array's tile/beat order."""
    k, n = q.shape
    if fmt == "gptq":
        pk = pack_gptq(q, zeros, scales, legacy_zero_offset=legacy)
    else:
        pk = pack_awq(q, zeros, scales)
    qwt, qz, sc = pk["qweight"], pk["qzeros"], pk["scales"]
    qws, metas = [], []
    for n0 in range(0, n, lanes):
        for k0 in range(0, k, rows):
            if fmt == "gptq":
                chunk = qwt[k0 // 8:(k0 + rows) // 8, n0:n0 + lanes]
            else:
                chunk = qwt[k0:k0 + rows, n0 // 8:(n0 + lanes) // 8]
            qws.append(words_to_int(chunk))
            if k0 % group == 0:
                g = k0 // group
                zw = words_to_int(qz[g, n0 // 8:(n0 + lanes) // 8])
                sw = int.from_bytes(sc[g, n0:n0 + lanes].contiguous().view(torch.int16).numpy().astype("<i2").tobytes(), "little")
                metas.append(zw | (sw << (4 * lanes)))
    return qws, metas


@pytest.mark.parametrize("fmt, rows, lanes, legacy", [
    ("gptq", 8, 16, False), ("gptq", 16, 8, True), ("awq", 4, 16, False), ("awq", 8, 8, False)])
def test_int4_dequant_streams(fmt, rows, lanes, legacy):
    g = torch.Generator().manual_seed(rows * lanes)
    k, n, group = 64, 2 * lanes, 32
    q = torch.randint(0, 16, (k, n), generator=g)
    q[:8] = 15  # max codes
    q[8:16] = 0
    zeros = torch.randint(1 if legacy else 0, 16, (k // group, n), generator=g)
    scales = (torch.rand(k // group, n, generator=g) * 0.01 + 1e-4).to(torch.float16)
    qws, metas = int4_streams(fmt, q, zeros, scales, rows, lanes, group, legacy)
    dut = Int4Dequant(rows, lanes, group, fmt, legacy_zero_offset=legacy)
    rng = random.Random(5)
    got = []

    def sender(stream, items):
        async def send(ctx):
            for it in items:
                while rng.random() < 0.3:
                    ctx.set(stream.valid, 0)
                    await ctx.tick()
                ctx.set(stream.valid, 1)
                ctx.set(stream.payload, it)
                await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)
        return send

    async def receiver(ctx):
        while len(got) < len(qws):
            ctx.set(dut.o.ready, rng.random() < 0.6)
            _, _, v, r, p = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if v and r:
                got.append(([[int(x) for x in row] for row in p.q], [int(x) for x in p.z], [int(x) for x in p.s]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(sender(dut.qw, qws))
    sim.add_testbench(sender(dut.meta, metas))
    sim.add_testbench(receiver)
    sim.run()
    s_bits = scales.view(torch.int16).to(torch.int64) & 0xFFFF
    i = 0
    for n0 in range(0, n, lanes):
        for k0 in range(0, k, rows):
            qq, zz, ss = got[i]
            i += 1
            assert qq == q[k0:k0 + rows, n0:n0 + lanes].tolist()
            assert zz == zeros[k0 // group, n0:n0 + lanes].tolist()
            assert ss == s_bits[k0 // group, n0:n0 + lanes].tolist()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kivi_code_unpack(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (5, 64 // bits * 2), generator=g)
    words = pack_lsb_first(codes, bits)
    dut = KiviCodeUnpack(bits, words.shape[1])
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for row in words:
            ctx.set(dut.i.payload, words_to_int(row))
            ctx.set(dut.i.valid, 1)
            await ctx.delay(1e-8)
            got.append([int(c) for c in ctx.get(dut.o.payload)])
            assert ctx.get(dut.o.valid) and ctx.get(dut.i.ready)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert got == codes.tolist()


def test_bad_geometry():
    with pytest.raises(ConfigError, match="rows must be a multiple of 8"):
        Int4Dequant(4, 8, 32, "gptq")
    with pytest.raises(ConfigError, match="lanes must be a multiple of 8"):
        Int4Dequant(8, 4, 32, "awq")
    with pytest.raises(ConfigError, match="must divide the group"):
        Int4Dequant(8, 8, 36, "gptq")
    with pytest.raises(ConfigError, match="fmt: expected one of"):
        Int4Dequant(8, 8, 32, "exl2")
    with pytest.raises(ConfigError, match="only for GPTQ"):
        Int4Dequant(8, 8, 32, "awq", legacy_zero_offset=True)
    with pytest.raises(ConfigError, match="expected 2, 4 or 8"):
        KiviCodeUnpack(3, 1)
