"""The TLMM unit inside the Verilated overlay: programs compared with the golden ISS.

Uses :func:`ternopu.sim.program_check` (HDL HBM models behind the overlay's DMA ports, scratch
filled and read back through LOAD / STORE). A small engine (2 tables x 4 lanes, one 256-bit word
per beat) keeps the Verilator build short; the stripe spans both HBM ports of the build.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch

from ternopu.golden.tlmm import encode_keys, pack_keys
from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode, Unit
from ternopu.hw.tlmm import TLMMConfig
from ternopu.hw.units.tlmm_unit import factory

pytestmark = pytest.mark.sim

CFG = TLMMConfig(tables=2, lanes=4, beat_bits=256, max_k=256, max_n=256, out_lanes=2)
PORTS = 2
CB = 1 << 16
BUF_WORDS = 64


def _stream(hbm: dict, port: int, local: int, raw: bytes, nports: int) -> None:
    """Striped placement (docs/compiler.md) as global-address regions, one per word."""
    raw = raw + bytes(-len(raw) % 32)
    for i in range(len(raw) // 32):
        ch = (port + i % nports) % 32
        hbm[ch * CB + local + (i // nports) * 32] = raw[32 * i:32 * i + 32]


def _keys(rng: torch.Generator, n: int, k: int) -> bytes:
    wq = torch.randint(-1, 2, (n, k), generator=rng, dtype=torch.int8)
    return pack_keys(encode_keys(wq), CFG.tables, CFG.lanes, CFG.beat_bits).numpy().tobytes()


def _f32(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def test_tlmm_programs_match_golden():
    from ternopu.sim.program_check import program_check
    from ternopu.sw.backends.verilator import VerilatorDevice

    gen = torch.Generator().manual_seed(3)
    rng = random.Random(3)
    hbm: dict[int, bytes] = {}
    # three projections of one token (the second and third reuse the activations), then one
    # with another token and a partial last output word
    shapes = [(13, 40, 0, 2, False), (6, 40, 1, 1, True), (9, 40, 0, 2, True), (10, 61, 0, 2, False)]
    bufs = {0: bytearray(BUF_WORDS * 32), 1: bytearray(BUF_WORDS * 32),
            2: bytearray(rng.randbytes(BUF_WORDS * 32)), 3: bytearray(rng.randbytes(BUF_WORDS * 32))}
    x1 = torch.randint(-128, 128, (40,), generator=gen, dtype=torch.int8).numpy().tobytes()
    x2 = torch.randint(-128, 128, (61,), generator=gen, dtype=torch.int8).numpy().tobytes()
    bufs[0][0:40] = x1
    bufs[0][64:125] = x2
    bufs[1][0:4] = struct.pack("<I", _f32(3.25))
    bufs[1][32:36] = struct.pack("<I", _f32(0.75))
    prog, local = [], 0
    for j, (n, k, port, nports, reuse) in enumerate(shapes):
        raw = _keys(gen, n, k)
        _stream(hbm, port, local, raw, nports)
        prog.append(isa.Instruction.make(
            "TLMM", w_addr=port * CB + local, port=port, nports=nports, rows=n, cols=k,
            src_buf=0, src_off=0 if k == 40 else 64, amax_buf=1, amax_off=0 if k == 40 else 32,
            dst_buf=2 + j % 2, dst_off=64 * j, g127=_f32(0.01 / 127), reuse_act=int(reuse)))
        local += 32 * (-(-len(raw) // 32 // nports)) + 32
    prog.append(isa.Instruction.make("END"))
    # channel_bytes explicit: the overlay's ctx.channel_bytes follows its hbm_bytes argument, whose
    # meaning (per channel vs. whole HBM) is changing while the device server is written
    units = {Unit.TLMM: factory(CFG, channel_bytes=CB)}
    dev = VerilatorDevice(ports=PORTS, channel_bytes=CB, depth=CB // 32, buf_words=BUF_WORDS,
                          units=units, tlmm=CFG, read_latency=10, watchdog=1 << 16,
                          max_cycles=200_000)
    try:
        res = program_check(prog, hbm, {b: bytes(v) for b, v in bufs.items()}, units=units,
                            tlmm=CFG, ports=PORTS, channel_bytes=CB, buf_words=BUF_WORDS,
                            device=dev)
        res.assert_equal()
        assert res.golden.status.ok
        print("TLMM program cycles (RTL):", res.rtl.cycles)

        # errors: the stripe runs past the channel end (HBM_RANGE), then y past the buffer
        # (BUF_RANGE, RTL buffers are buf_words long: checked on the RTL side only)
        bad = [isa.Instruction.make("TLMM", w_addr=CB + CB - 32, port=1, nports=1, rows=8,
                                    cols=40, g127=_f32(0.01)), isa.Instruction.make("END")]
        res = program_check(bad, {}, {}, units=units, tlmm=CFG, ports=PORTS, channel_bytes=CB,
                            buf_words=BUF_WORDS, device=dev)
        res.assert_equal()
        assert res.rtl.status.error == ErrorCode.HBM_RANGE
        over = [isa.Instruction.make("TLMM", w_addr=0, port=0, nports=1, rows=16, cols=3,
                                     dst_off=BUF_WORDS * 32 - 32, g127=_f32(0.01)),
                isa.Instruction.make("END")]
        res = program_check(over, {0: bytes(32)}, {}, units=units, tlmm=CFG, ports=PORTS,
                            channel_bytes=CB, buf_words=BUF_WORDS, device=dev)
        assert res.rtl.status.error == ErrorCode.BUF_RANGE
        assert np.frombuffer(res.rtl.buffers[0], np.uint8).sum() == 0
    finally:
        dev.close()
