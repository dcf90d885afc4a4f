"""program_check (golden ISS vs Verilated overlay) and the HbmSystem it runs on.

Fast tests (no marker): the HbmSystem in the Amaranth simulator (cross-channel DMA reads and
writes, DECERR beyond the backed depth, the wide host port), the diff formatting, the argument
checks and the golden-only path. ``sim`` tests: LOAD / STORE programs through
:func:`program_check` on a small Verilated overlay (2 ports, 64 KiB channels, 64-word buffers,
stub engine units; one cached build shared with tests/sw/test_verilator_backend.py), and a
program whose NPE result the stub cannot produce, to show the harness reports differences.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.dma import DMA_ERR_DECERR, DMA_OK, DmaParams, DmaPort
from ternopu.hw.isa import ErrorCode, NpeOp, Unit
from ternopu.sim.hbm_model import HbmSystem
from ternopu.sim.program_check import describe_diff, program_bytes, program_check

# --------------------------------------------------------------------------------------------
# HbmSystem (Amaranth simulator)
# --------------------------------------------------------------------------------------------
CH_BYTES, DEPTH, LANES = 4096, 16, 4


def _system():
    p = DmaParams(data_width=256, mem_bytes=2 * CH_BYTES, max_burst=4, max_outstanding=2)
    hbm = HbmSystem(2, CH_BYTES, DEPTH, read_latency=6, host_lanes=LANES)
    m = Module()
    m.submodules.hbm = hbm
    dmas = []
    for k in range(2):
        d = DmaPort(p)
        m.submodules[f"dma{k}"] = d
        wiring.connect(m, d.axi, hbm.axi[k])
        dmas.append(d)
    return m, hbm, dmas


def test_hbm_system_every_port_reaches_every_channel():
    m, hbm, dmas = _system()
    rng = random.Random(7)
    words = [rng.getrandbits(256) for _ in range(2 * DEPTH)]
    got = {}

    async def bench(ctx):
        # host: LANES words per cycle, a partial last group (we mask)
        for i in range(0, 2 * DEPTH, LANES):
            k = min(LANES, 2 * DEPTH - i - 1) if i + LANES >= 2 * DEPTH else LANES
            ctx.set(hbm.host.addr, i)
            ctx.set(hbm.host.wdata, sum(w << (256 * j) for j, w in enumerate(words[i:i + LANES])))
            ctx.set(hbm.host.we, (1 << k) - 1)
            await ctx.tick()
        ctx.set(hbm.host.we, 0)
        words[-1] = 0     # the masked lane was not written

        async def read(dma, addr, beats):
            ctx.set(dma.rd_cmd.payload, {"addr": addr, "beats": beats, "rows": 1, "stride": 0})
            ctx.set(dma.rd_cmd.valid, 1)
            await ctx.tick().until(dma.rd_cmd.ready)
            ctx.set(dma.rd_cmd.valid, 0)
            ctx.set(dma.rd_data.ready, 1)
            data = []
            while True:
                _, _, dv, dp, cv, cp = await ctx.tick().sample(dma.rd_data.valid, dma.rd_data.payload,
                                                               dma.rd_done.valid, dma.rd_done.payload)
                if dv:
                    data.append(int(dp.data))
                if cv:
                    break
            ctx.set(dma.rd_done.ready, 1)
            await ctx.tick()
            ctx.set(dma.rd_done.ready, 0)
            return data, int(cp)

        async def write(dma, addr, data):
            ctx.set(dma.wr_cmd.payload, {"addr": addr, "beats": len(data), "rows": 1, "stride": 0})
            ctx.set(dma.wr_cmd.valid, 1)
            await ctx.tick().until(dma.wr_cmd.ready)
            ctx.set(dma.wr_cmd.valid, 0)
            for w in data:
                ctx.set(dma.wr_data.payload, w)
                ctx.set(dma.wr_data.valid, 1)
                await ctx.tick().until(dma.wr_data.ready)
            ctx.set(dma.wr_data.valid, 0)
            while not ctx.get(dma.wr_done.valid):
                await ctx.tick()
            code = ctx.get(dma.wr_done.payload)
            ctx.set(dma.wr_done.ready, 1)
            await ctx.tick()
            ctx.set(dma.wr_done.ready, 0)
            return int(code)

        got["p0_ch1"] = await read(dmas[0], CH_BYTES + 5 * 32, 3)       # port 0 reads channel 1
        got["p1_ch0"] = await read(dmas[1], 2 * 32, 2)                  # port 1 reads channel 0
        got["decerr"] = await read(dmas[0], CH_BYTES + DEPTH * 32, 1)   # past the backed depth
        new = [rng.getrandbits(256) for _ in range(2)]
        got["wr"] = await write(dmas[1], 7 * 32, new)                   # port 1 writes channel 0
        words[7:9] = new
        ctx.set(hbm.host.addr, 6)
        await ctx.tick()
        got["host_rd"] = ctx.get(hbm.host.rdata)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(2e-5)
    assert got["p0_ch1"] == (words[DEPTH + 5:DEPTH + 8], DMA_OK)
    assert got["p1_ch0"] == (words[2:4], DMA_OK)
    assert got["decerr"][1] == DMA_ERR_DECERR and got["decerr"][0] == [0]
    assert got["wr"] == DMA_OK
    assert got["host_rd"] == sum(w << (256 * j) for j, w in enumerate(words[6:6 + LANES]))


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_hbm_system_rejects_bad_geometry():
    with pytest.raises(ConfigError, match="power of two"):
        HbmSystem(2, 3000, 4)
    with pytest.raises(ConfigError, match="depth"):
        HbmSystem(2, 4096, 4096)
    with pytest.raises(ConfigError, match="host_lanes"):
        HbmSystem(2, 4096, 8, host_lanes=0)


# --------------------------------------------------------------------------------------------
# Harness logic (golden side only)
# --------------------------------------------------------------------------------------------

def test_describe_diff_names_first_byte_and_views():
    a = np.arange(64, dtype=np.float32).tobytes()
    b = bytearray(a)
    b[4 * 9 + 2] ^= 0x40
    text = describe_diff("buffer 3", a, bytes(b), 0)
    assert "1 of 256 bytes differ, first at offset 38" in text
    assert "fp32 np.float32(9.0) vs" in text or "fp32 9.0 vs" in text
    assert "int8@38" in text and "fp16@38" in text
    assert describe_diff("x", a, a) == ""
    assert "length" in describe_diff("x", a, a[:-4])


def test_program_bytes_forms_agree():
    a = isa.Assembler()
    a.emit("NOP")
    a.emit("END")
    raw = a.assemble()
    words = [int.from_bytes(raw[i:i + 32], "little") for i in range(0, len(raw), 32)]
    instrs = [isa.Instruction.make("NOP"), isa.Instruction.make("END")]
    assert program_bytes(a) == program_bytes(raw) == program_bytes(words) == program_bytes(instrs) == raw
    with pytest.raises(ConfigError):
        program_bytes(raw[:-1])


def _copy_program(rng, ports=2):
    """LOAD bursts through ports 0/1 into buffer 1, STORE them into channel 1 through port 1."""
    a = isa.Assembler()
    a.emit("LOAD", hbm_addr=0x400, port=0, nports=ports, bursts=4, burst_len=3, stride=0x80, dst_buf=1,
           dst_off=64, release="ST")
    a.emit("STORE", hbm_addr=0x10000 + 0x800, port=1, nports=1, bursts=1, burst_len=12, stride=0, src_buf=1,
           src_off=64, wait="LD")
    a.emit("END")
    src = {0x400: rng.randbytes(0x200), 0x10000 + 0x400: rng.randbytes(0x200)}
    return a, src


def test_golden_side_runs_and_checks_arguments():
    rng = random.Random(3)
    prog, src = _copy_program(rng)
    res = program_check(prog, src, {2: b"\x07" * 40}, read={0x10800: 12 * 32}, rtl=False)
    assert res.rtl is None and res.golden.status.ok
    assert res.golden.buffers[2][:40] == b"\x07" * 40 and len(res.golden.buffers[2]) == 64 * 32
    # burst b of the LOAD reads global address 0x400 + b * 0x80 through port b % 2 (the port picks
    # the AXI master, the address the channel)
    exp = b"".join(src[0x400][b * 0x80:b * 0x80 + 96] for b in range(4))
    assert res.golden.hbm[0x10800] == exp
    with pytest.raises(ConfigError, match="rtl=False"):
        res.mismatches()
    with pytest.raises(ConfigError, match="overlaps"):
        program_check(prog, {res.info["prog_addr"]: b"x" * 32}, rtl=False)
    with pytest.raises(ConfigError, match="buffer 9"):
        program_check(prog, buffers={9: b""}, rtl=False)
    with pytest.raises(ConfigError, match="outside HBM"):
        program_check(prog, {2 * 0x10000 - 16: b"x" * 32}, rtl=False)


# --------------------------------------------------------------------------------------------
# Golden vs RTL (Verilator)
# --------------------------------------------------------------------------------------------
#: The Overlay's default engine slots, spelled out so that this build does not change when
#: ternopu.hw.units.default_units appears (and stays shared with test_verilator_backend.py).
def stub_units():
    from ternopu.hw.overlay import DEFAULT_STUBS
    from ternopu.hw.unit_port import StubUnit

    def f(unit, router=False):
        lo, span = DEFAULT_STUBS[unit]
        return lambda ctx: StubUnit(lo, span, router=router)

    return {Unit.TLMM: f(Unit.TLMM), Unit.PE: f(Unit.PE, True), Unit.NPE: f(Unit.NPE)}


@pytest.mark.sim
def test_load_store_programs_match_golden():
    rng = random.Random(2026)
    prog, src = _copy_program(rng)
    bufs = {b: rng.randbytes(rng.randrange(0, 64 * 32)) for b in range(8)}
    res = program_check(prog, src, bufs, read={**{a: len(v) for a, v in src.items()}, 0x10800: 12 * 32},
                        units=stub_units())
    res.assert_equal()
    assert res.rtl.status.ok and res.rtl.cycles > 0
    assert res.rtl.counters["HBM_WR_P1"] == 12 * 32
    # the RTL also counts the fetch of the 3 instructions on port 0
    assert res.rtl.counters["HBM_RD_P0"] == 2 * 96 + 3 * 32 and res.rtl.counters["HBM_RD_P1"] == 2 * 96
    # an error run: the status (code and pc) is compared too
    bad = isa.Assembler()
    bad.emit("NOP")
    bad.emit("LOAD", hbm_addr=0x400, port=0, nports=1, bursts=1, burst_len=1, stride=0, dst_buf=0,
             dst_off=64 * 32)                                   # past buf_words: BUF_RANGE on the RTL
    bad.emit("END")
    res = program_check(bad, src, units=stub_units())
    assert res.rtl.status.error == ErrorCode.BUF_RANGE and res.rtl.status.error_pc == 1
    assert res.golden.status.ok            # the ISS's buffers are BUF_BYTES long (documented)
    assert any(m.startswith("status:") for m in res.mismatches())


@pytest.mark.sim
def test_harness_reports_a_differing_unit():
    """The stub NPE writes nothing; the ISS computes a residual add: the diff must say where."""
    x = np.linspace(-2, 2, 16, dtype=np.float32).tobytes()
    a = isa.Assembler()
    a.emit("NPE", subop=NpeOp.RESIDUAL_ADD, length=16, a_buf=0, a_off=0, b_buf=0, b_off=0, dst_buf=3, dst_off=32)
    a.emit("END")
    res = program_check(a, buffers={0: x}, units=stub_units())
    bad = res.mismatches()
    assert len(bad) == 1 and bad[0].startswith("buffer 3:") and "first at offset 34" in bad[0], bad   # -4.0f = 00 00 80 c0
    with pytest.raises(AssertionError, match="buffer 3"):
        res.assert_equal()
