"""The CSR register map and the CSRBlock / AXI4-Lite slave in the Amaranth simulator."""

from __future__ import annotations

import gc
import json
import random

import pytest
from amaranth.sim import Simulator

from ternopu.hw import csr, isa
from ternopu.hw.axi_lite import RESP_OKAY, RESP_SLVERR, AXI4LiteSlave, axi4_lite_signature
from ternopu.hw.csr import REGISTER_BY_NAME as R, CSRBlock, counter_offset

# --------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------


def test_map_invariants():
    offsets = [r.offset for r in csr.REGISTER_MAP]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert R["ID"].reset == 0x544E5055
    v = R["VERSION"].reset
    assert v & 0xFF == isa.ISA_VERSION_MINOR and (v >> 8) & 0xFF == isa.ISA_VERSION_MAJOR
    assert v >> 24 == csr.NUM_COUNTERS == 1 + 2 * len(isa.Unit) + 2 * isa.HBM_PORTS
    assert R["STATUS"].access == "RO/W1C" and R["CTRL"].access == "W1P"
    assert counter_offset("CYCLES") == 0x100 and counter_offset(1) == 0x108
    assert R["CNT_HBM_WR_P31_HI"].offset == 0x100 + 8 * (csr.NUM_COUNTERS - 1) + 4


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_map_lookup_errors():
    with pytest.raises(KeyError, match="no counter 'FOO'"):
        counter_offset("FOO")
    with pytest.raises(KeyError, match=r"counter index must be in 0..76, got 77"):
        counter_offset(77)
    with pytest.raises(KeyError, match="has no field 'nope'"):
        R["CTRL"].field("nope")
    with pytest.raises(ValueError, match="inc_bits must be an int in"):
        CSRBlock(inc_bits=0)
    gc.collect()  # the half-built component warns when collected: do it under this test's filter
    with pytest.raises(ValueError, match="addr_width must be an int in"):
        axi4_lite_signature(2)


def test_json_export():
    doc = json.loads(csr.register_map_json())
    assert doc["isa_version"] == [isa.ISA_VERSION_MAJOR, isa.ISA_VERSION_MINOR]
    assert len(doc["registers"]) == len(csr.REGISTER_MAP)
    status = next(r for r in doc["registers"] if r["name"] == "STATUS")
    assert [f["name"] for f in status["fields"]] == ["busy", "done", "error"]
    assert doc["error_codes"]["WATCHDOG"] == isa.ErrorCode.WATCHDOG
    assert doc["counters"][0]["name"] == "CYCLES"


# --------------------------------------------------------------------------------------------
# A randomized AXI4-Lite master for the Amaranth simulator
# --------------------------------------------------------------------------------------------


class AxiLiteMaster:
    """Drives AW/W (in random order, random delays) and AR; random B/R ready backpressure."""

    def __init__(self, axi, rng: random.Random):
        self.axi, self.rng = axi, rng

    async def write(self, ctx, addr: int, data: int, strb: int = 0xF) -> int:
        axi, rng = self.axi, self.rng
        d_aw, d_w = rng.randint(0, 3), rng.randint(0, 3)
        aw_done = w_done = False
        t = 0
        while True:
            ctx.set(axi.aw.valid, int(not aw_done and t >= d_aw))
            ctx.set(axi.aw.addr, addr)
            ctx.set(axi.w.valid, int(not w_done and t >= d_w))
            ctx.set(axi.w.data, data)
            ctx.set(axi.w.strb, strb)
            ctx.set(axi.b.ready, int(rng.random() < 0.6))
            _, _, awv, awr, wv, wr, bv, br, resp = await ctx.tick().sample(
                axi.aw.valid, axi.aw.ready, axi.w.valid, axi.w.ready, axi.b.valid, axi.b.ready, axi.b.resp)
            aw_done |= bool(awv and awr)
            w_done |= bool(wv and wr)
            t += 1
            if bv and br:
                assert aw_done and w_done, "B before both AW and W were accepted"
                ctx.set(axi.aw.valid, 0)
                ctx.set(axi.w.valid, 0)
                ctx.set(axi.b.ready, 0)
                return resp
            assert t < 100, "write hung"

    async def read(self, ctx, addr: int) -> tuple[int, int]:
        axi, rng = self.axi, self.rng
        d_ar = rng.randint(0, 3)
        ar_done = False
        t = 0
        while True:
            ctx.set(axi.ar.valid, int(not ar_done and t >= d_ar))
            ctx.set(axi.ar.addr, addr)
            ctx.set(axi.r.ready, int(rng.random() < 0.6))
            _, _, arv, arr, rv, rr, data, resp = await ctx.tick().sample(
                axi.ar.valid, axi.ar.ready, axi.r.valid, axi.r.ready, axi.r.data, axi.r.resp)
            ar_done |= bool(arv and arr)
            t += 1
            if rv and rr:
                assert ar_done
                ctx.set(axi.ar.valid, 0)
                ctx.set(axi.r.ready, 0)
                return data, resp
            assert t < 100, "read hung"


def run_csr(body, *, inc_bits: int = csr.COUNTER_INC_BITS, seed: int = 0, monitors=()):
    """Simulate a CSRBlock with testbench ``body(ctx, dut, master)`` (+ background monitors)."""
    dut = CSRBlock(inc_bits=inc_bits)
    master = AxiLiteMaster(dut.axi, random.Random(seed))
    finished = []

    async def tb(ctx):
        await ctx.tick()
        await body(ctx, dut, master)
        finished.append(True)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    for mon in monitors:
        async def monitor(ctx, mon=mon):
            await mon(ctx, dut)
        sim.add_testbench(monitor, background=True)
    sim.run()
    assert finished


async def _read_ok(ctx, master, addr):
    data, resp = await master.read(ctx, addr)
    assert resp == RESP_OKAY, f"read {addr:#x}: resp {resp}"
    return data


# --------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------


def test_reset_values_and_rw_readback():
    async def body(ctx, dut, m):
        for r in csr.REGISTER_MAP:
            assert await _read_ok(ctx, m, r.offset) == r.reset, r.name
        rng = random.Random(5)
        for r in csr.REGISTERS:
            rw = sum(f.mask for f in r.fields if f.access == "RW")
            if not rw:
                continue
            value = rng.getrandbits(32)
            assert await m.write(ctx, r.offset, value) == RESP_OKAY
            assert await _read_ok(ctx, m, r.offset) == (value & rw) | (r.reset & ~rw), r.name
        # byte strobes: only strobed bytes change
        await m.write(ctx, R["SCRATCH"].offset, 0x11223344)
        await m.write(ctx, R["SCRATCH"].offset, 0xAABBCCDD, strb=0b0101)
        assert await _read_ok(ctx, m, R["SCRATCH"].offset) == 0x11BB33DD
        # outputs follow the registers
        await m.write(ctx, R["PROG_BASE_LO"].offset, 0x12345678)
        await m.write(ctx, R["PROG_BASE_HI"].offset, 0xFFFFFFFF)
        await m.write(ctx, R["PROG_LEN"].offset, 77)
        await m.write(ctx, R["WATCHDOG"].offset, 1000)
        assert ctx.get(dut.prog_base) == 0x3_12345678
        assert ctx.get(dut.prog_len) == 77 and ctx.get(dut.watchdog) == 1000

    run_csr(body)


def test_ro_writes_ignored_and_unmapped_slverr():
    async def body(ctx, dut, m):
        for name in ["ID", "VERSION", "ERROR_CODE", "PC", "CNT_CYCLES_LO", "CNT_CYCLES_HI"]:
            assert await m.write(ctx, R[name].offset, 0xFFFFFFFF) == RESP_OKAY
            assert await _read_ok(ctx, m, R[name].offset) == R[name].reset
        mapped = {r.offset for r in csr.REGISTER_MAP}
        for addr in [0x034, 0x0FC, 0x0F0, counter_offset(csr.NUM_COUNTERS - 1) + 8, 0xFFC, 0x800]:
            assert addr not in mapped
            assert await m.write(ctx, addr, 0xFFFFFFFF) == RESP_SLVERR
            assert await m.read(ctx, addr) == (0, RESP_SLVERR)
        # the low two address bits are ignored (word registers)
        assert await _read_ok(ctx, m, R["ID"].offset + 3) == csr.ID_MAGIC
        assert await _read_ok(ctx, m, R["SCRATCH"].offset) == 0  # nothing was written by the above

    run_csr(body, seed=1)


def test_start_pulse_once_per_write_and_clears_status():
    pulses = []

    async def monitor(ctx, dut):
        async for _, _, start, soft in ctx.tick().sample(dut.start, dut.soft_reset):
            if start:
                pulses.append(("start", 1))
            if soft:
                pulses.append(("soft", 0))

    async def body(ctx, dut, m):
        ctrl = R["CTRL"].offset
        for k in range(5):
            await m.write(ctx, ctrl, 1)
        await m.write(ctx, ctrl, 0)
        await m.write(ctx, ctrl, 1, strb=0b1110)  # bit 0's byte not strobed: no pulse
        await m.write(ctx, ctrl, 2)
        for _ in range(3):
            await ctx.tick()
        assert [p[0] for p in pulses] == ["start"] * 5 + ["soft"]
        assert await _read_ok(ctx, m, ctrl) == 0  # W1P reads 0
        # done / error set by the controller, cleared by start
        ctx.set(dut.done, 1)
        ctx.set(dut.error, 1)
        ctx.set(dut.error_code, isa.ErrorCode.WATCHDOG)
        ctx.set(dut.error_pc, 42)
        await ctx.tick()
        ctx.set(dut.done, 0)
        ctx.set(dut.error, 0)
        assert await _read_ok(ctx, m, R["STATUS"].offset) == 0b110
        assert await _read_ok(ctx, m, R["ERROR_CODE"].offset) == isa.ErrorCode.WATCHDOG
        await m.write(ctx, ctrl, 1)
        assert await _read_ok(ctx, m, R["STATUS"].offset) == 0
        assert await _read_ok(ctx, m, R["ERROR_CODE"].offset) == 0
        assert await _read_ok(ctx, m, R["ERROR_PC"].offset) == 0

    run_csr(body, seed=2, monitors=[monitor])


def test_w1c_first_error_wins_and_irq():
    async def pulse(ctx, sig, **others):
        for s, v in others.items():
            ctx.set(s, v)
        ctx.set(sig, 1)
        await ctx.tick()
        ctx.set(sig, 0)

    async def body(ctx, dut, m):
        status = R["STATUS"].offset
        ctx.set(dut.busy, 1)
        ctx.set(dut.pc, 1234)
        assert await _read_ok(ctx, m, status) == 0b001
        assert await _read_ok(ctx, m, R["PC"].offset) == 1234
        ctx.set(dut.error_code, isa.ErrorCode.MISALIGNED)
        ctx.set(dut.error_pc, 7)
        await pulse(ctx, dut.error)
        ctx.set(dut.error_code, isa.ErrorCode.WATCHDOG)
        ctx.set(dut.error_pc, 9)
        await pulse(ctx, dut.error)  # second error: code/pc keep the first
        assert await _read_ok(ctx, m, R["ERROR_CODE"].offset) == isa.ErrorCode.MISALIGNED
        assert await _read_ok(ctx, m, R["ERROR_PC"].offset) == 7
        assert ctx.get(dut.irq) == 0
        await m.write(ctx, R["IRQ_ENABLE"].offset, 0b10)
        assert ctx.get(dut.irq) == 1
        await m.write(ctx, status, 0b001)  # writing 0 to W1C bits: no effect
        assert await _read_ok(ctx, m, status) == 0b101
        await m.write(ctx, status, 0b100)
        assert await _read_ok(ctx, m, status) == 0b001
        assert await _read_ok(ctx, m, R["ERROR_CODE"].offset) == 0
        assert ctx.get(dut.irq) == 0
        # hardware set in the same cycle as the software clear wins
        await pulse(ctx, dut.done)
        ctx.set(dut.done, 1)
        await m.write(ctx, status, 0b010)
        ctx.set(dut.done, 0)
        assert await _read_ok(ctx, m, status) & 0b010
        await m.write(ctx, status, 0b010)
        assert await _read_ok(ctx, m, status) == 0b001
        await m.write(ctx, R["IRQ_ENABLE"].offset, 0b01)
        await pulse(ctx, dut.done)
        assert ctx.get(dut.irq) == 1

    run_csr(body, seed=3)


def test_counter_snapshot_consistency():
    inc = 0x9E3779B1  # large odd increment: LO wraps every other cycle, HI moves every cycle

    async def body(ctx, dut, m):
        idx = csr.NUM_COUNTERS - 1
        ctx.set(dut.counter_inc[idx], inc)
        ctx.set(dut.counter_inc[0], 1)
        await m.write(ctx, R["CTRL"].offset, 0b100)  # clear_counters
        last = -1
        for k in range(12):
            lo = await _read_ok(ctx, m, counter_offset(idx))
            for _ in range(m.rng.randint(0, 5)):
                await ctx.tick()  # HI must not move while we dawdle
            hi = await _read_ok(ctx, m, counter_offset(idx) + 4)
            value = hi << 32 | lo
            assert value % inc == 0, f"torn snapshot {value:#x}"
            assert value > last
            last = value
        cycles = await _read_ok(ctx, m, counter_offset(0))
        assert 20 < cycles < 2000
        ctx.set(dut.counter_inc[idx], 0)
        await m.write(ctx, R["CTRL"].offset, 0b100)
        assert await _read_ok(ctx, m, counter_offset(idx)) == 0
        assert await _read_ok(ctx, m, counter_offset(idx) + 4) == 0

    run_csr(body, inc_bits=32, seed=4)


def test_slave_concurrent_read_and_write():
    """Reads and writes in flight at the same time, from two independent masters' views."""
    dut = AXI4LiteSlave(8)
    regs = {}
    log = []

    async def regfile(ctx):
        async for _, _, wen, waddr, wdata, ren, raddr in ctx.tick().sample(
                dut.bus.w_en, dut.bus.w_addr, dut.bus.w_data, dut.bus.r_en, dut.bus.r_addr):
            if wen:
                regs[waddr] = wdata
                log.append(("w", waddr))
            if ren:
                log.append(("r", raddr))
            # combinational answers for the *next* cycle's addresses are set by `answer`

    async def answer(ctx):
        async for raddr, waddr in ctx.changed(dut.bus.r_addr, dut.bus.w_addr):
            ctx.set(dut.bus.r_data, regs.get(raddr, 0xDEAD))
            ctx.set(dut.bus.r_err, int(raddr >= 0x80))
            ctx.set(dut.bus.w_err, int(waddr >= 0x80))

    wm = AxiLiteMaster(dut.axi, random.Random(11))
    done = []

    async def writer(ctx):
        for k in range(20):
            resp = await wm.write(ctx, 4 * (k % 40), k)
            assert resp == (RESP_OKAY if 4 * (k % 40) < 0x80 else RESP_SLVERR)
        assert await wm.write(ctx, 0x84, 1) == RESP_SLVERR
        done.append("w")

    rm = AxiLiteMaster(dut.axi, random.Random(12))

    async def reader(ctx):
        for k in range(20):
            _, resp = await rm.read(ctx, 0x90 if k % 5 == 4 else 4 * k)
            assert resp == (RESP_SLVERR if k % 5 == 4 else RESP_OKAY)
        done.append("r")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(regfile, background=True)
    sim.add_process(answer)
    sim.add_testbench(writer)
    sim.add_testbench(reader)
    sim.run()
    assert sorted(done) == ["r", "w"]
    assert sum(1 for k, _ in log if k == "w") == 21 and sum(1 for k, _ in log if k == "r") == 20


def test_committed_csr_doc_is_up_to_date(tmp_path):
    from ternopu.hw import docs

    assert (docs.DOCS_DIR / "csr.md").read_text() == docs.csr_markdown(), \
        "docs/csr.md is stale: run `python -m ternopu.hw.docs`"
    assert docs.main(["--check"]) == 0
    # the generator writes into a fresh directory and --check then agrees; a stale file is caught
    assert docs.main(["--docs-dir", str(tmp_path), "--csr-json", str(tmp_path / "csr.json")]) == 0
    assert json.loads((tmp_path / "csr.json").read_text())["name"] == "ternopu_csr"
    (tmp_path / "csr.md").write_text("stale\n")
    assert docs.main(["--check", "--docs-dir", str(tmp_path)]) == 1
