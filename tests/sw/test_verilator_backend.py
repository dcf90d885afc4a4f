"""The ``verilator`` Device backend: host port round trips, run status and errors, close / crash.

Two cached builds (stub engine units, so they do not change when real units land):
* the program_check geometry (2 ports, 64 KiB channels, 64-word buffers), shared with
  tests/sim/test_program_check.py -- write/read round trips, error runs, the cycle bound, a killed
  simulator, close;
* a tiny compiled image on 2 HBM ports (geometry from its plan) -- a Session whose program word is
  corrupted stops with DeviceError carrying ILLEGAL_OPCODE and the pc.
The LOAD / STORE program comparison against the golden ISS is in tests/sim/test_program_check.py.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from ternopu.hw import isa
from ternopu.hw.csr import COUNTERS
from ternopu.hw.isa import ErrorCode, Unit
from ternopu.sw.backends.verilator import FAST_BUILD
from ternopu.sw.device import Device, DeviceError, Session, backend_names, open_device

pytestmark = pytest.mark.sim

GEOMETRY = dict(ports=2, channel_bytes=1 << 16, depth=(1 << 16) // 32, buf_words=64, read_latency=10,
                build_args=FAST_BUILD)


def stub_units():
    """The Overlay's default engine slots spelled out (the same build as test_program_check.py)."""
    from ternopu.hw.overlay import DEFAULT_STUBS
    from ternopu.hw.unit_port import StubUnit

    def f(unit, router=False):
        lo, span = DEFAULT_STUBS[unit]
        return lambda ctx: StubUnit(lo, span, router=router)

    return {Unit.TLMM: f(Unit.TLMM), Unit.PE: f(Unit.PE, True), Unit.NPE: f(Unit.NPE)}


@pytest.fixture(scope="module")
def dev():
    d = open_device("verilator", units=stub_units(), **GEOMETRY)
    yield d
    d.close()


def _asm(*ops):
    a = isa.Assembler()
    for name, kw in ops:
        a.emit(name, **kw)
    return a.assemble()


def test_registered():
    assert "verilator" in backend_names()


def test_write_read_round_trip(dev):
    rng = random.Random(11)
    # unaligned, across the channel boundary (channel 0 -> 1), odd lengths and a long block
    for addr, n in [(3, 5), (0x10000 - 40, 100), (0x1234, 3000), (0x10000 + 0x2000, 32 * 37)]:
        data = rng.randbytes(n)
        dev.write(addr, data)
        assert dev.read(addr, n) == data, (addr, n)
    # neighbours of an unaligned write are untouched
    dev.write(0x3000, b"\xaa" * 64)
    dev.write(0x3000 + 7, b"\x55" * 3)
    assert dev.read(0x3000, 64) == b"\xaa" * 7 + b"\x55" * 3 + b"\xaa" * 54
    with pytest.raises(DeviceError, match="outside HBM"):
        dev.read(2 * 0x10000 - 8, 16)


def test_run_status_errors_and_counters(dev):
    nop, end = ("NOP", {}), ("END", {})
    prog = _asm(nop, ("LOAD", dict(hbm_addr=0x100, port=1, nports=1, bursts=1, burst_len=4, stride=0, dst_buf=2,
                                   dst_off=0)), end)
    dev.write(0x8000, prog)
    before = dev.counters()
    st = dev.run(0x8000, 3)
    assert st.ok, st
    after = dev.counters()
    assert set(after) == {n for n, _ in COUNTERS}
    assert after["HBM_RD_P1"] - before["HBM_RD_P1"] == 4 * 32
    assert after["HBM_RD_P0"] - before["HBM_RD_P0"] == 3 * 32            # the fetch
    assert after["CYCLES"] > before["CYCLES"] and after["LD_BUSY"] > before["LD_BUSY"]
    assert dev.last_run_cycles >= after["CYCLES"] - before["CYCLES"]
    # illegal opcode at pc 2
    words = bytearray(_asm(nop, nop, nop, end))
    words[2 * 32:3 * 32] = (0x7F).to_bytes(32, "little")
    dev.write(0x8000, bytes(words))
    st = dev.run(0x8000, 4)
    assert (st.done, st.error, st.error_pc) == (False, ErrorCode.ILLEGAL_OPCODE, 2)
    with pytest.raises(DeviceError) as e:
        st.raise_for_error()
    assert (e.value.code, e.value.pc) == (ErrorCode.ILLEGAL_OPCODE, 2)
    # HBM range and program alignment
    dev.write(0x8000, _asm(("LOAD", dict(hbm_addr=2 * 0x10000, port=0, nports=1, bursts=1, burst_len=1,
                                         stride=0, dst_buf=0, dst_off=0)), end))
    st = dev.run(0x8000, 2)
    assert (st.error, st.error_pc) == (ErrorCode.HBM_RANGE, 0)
    assert dev.run(0x8010, 2).error == ErrorCode.PROG_ALIGN
    # the machine still works
    dev.write(0x8000, _asm(nop, end))
    assert dev.run(0x8000, 2).ok


def test_cycle_bound_returns_not_done_and_machine_recovers(dev):
    # LD waits for a token from ST that never comes; the watchdog (1M cycles) is far away, the
    # simulation bound is not
    saved = dev.max_cycles
    dev.max_cycles = 3000
    try:
        dev.write(0x8000, _asm(("LOAD", dict(hbm_addr=0, port=0, nports=1, bursts=1, burst_len=1, stride=0,
                                             dst_buf=0, dst_off=0, wait="ST")), ("END", {})))
        t0 = time.perf_counter()
        st = dev.run(0x8000, 2)
        assert not st.done and st.error == ErrorCode.NONE and "no interrupt within 3000 cycles" in st.message
        assert time.perf_counter() - t0 < 120
        with pytest.raises(DeviceError, match="NONE"):
            st.raise_for_error()
    finally:
        dev.max_cycles = saved
    dev.write(0x8000, _asm(("NOP", {}), ("END", {})))
    assert dev.run(0x8000, 2).ok


def test_killed_simulator_becomes_device_error_and_close_does_not_hang():
    d = open_device("verilator", units=stub_units(), **GEOMETRY)
    d.write(0, b"\x01" * 32)
    os.killpg(d._proc.proc.pid, signal.SIGKILL)      # the child we started, and its simulator
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="simulator"):
        d.read(0, 32)
    with pytest.raises(DeviceError):
        d.read(0, 32)
    d.close()
    assert time.perf_counter() - t0 < 30
    d2 = open_device("verilator", units=stub_units(), **GEOMETRY)
    t0 = time.perf_counter()
    d2.close()
    d2.close()
    assert time.perf_counter() - t0 < 30
    with pytest.raises(DeviceError, match="no simulator"):
        d2.run(0, 1)


# --------------------------------------------------------------------------------------------
# Session on a compiled image
# --------------------------------------------------------------------------------------------
class _Corrupting(Device):
    """Delegates to a device; turns word ``pc`` of every program the Session writes into 0x7F."""

    name = "corrupting"

    def __init__(self, inner, prog_addr: int, pc: int):
        self.inner, self.prog_addr, self.pc = inner, prog_addr, pc

    def load(self, image):
        self.inner.load(image)

    def write(self, addr, data):
        data = bytearray(data)
        if addr == self.prog_addr:
            data[self.pc * 32:(self.pc + 1) * 32] = (0x7F).to_bytes(32, "little")
        self.inner.write(addr, bytes(data))

    def read(self, addr, nbytes):
        return self.inner.read(addr, nbytes)

    def run(self, prog_addr, n_instr):
        return self.inner.run(prog_addr, n_instr)

    def counters(self):
        return self.inner.counters()

    def close(self):
        self.inner.close()


def test_session_error_code_and_pc_from_the_rtl():
    from ternopu.hw.overlay_config import OverlayConfig
    from ternopu.sw.compiler import build_image
    sys.path.insert(0, str(Path(__file__).parent))
    from test_golden_iss import small_cfg, weights_for

    cfg = small_cfg("bitnet", 16, routers=False, layers=1).replace(vocab=64, max_pos=8)
    image = build_image(cfg, weights_for(cfg, 3), OverlayConfig(hbm_ports=2))
    inner = open_device("verilator", units=stub_units(), read_latency=10, build_args=FAST_BUILD)
    with _Corrupting(inner, image.plan.addr("io:program"), pc=2) as dev:
        session = Session(dev, image)
        assert inner.info["ports"] == 2 and inner.info["channel_bytes"] == image.plan.geo.channel_bytes
        assert inner.read(image.plan.addr("desc:kv"), 32) == bytes(image.plan.kv.to_bytes()[:32])
        with pytest.raises(DeviceError) as e:
            session.run_tokens([1])
        assert (e.value.code, e.value.pc) == (ErrorCode.ILLEGAL_OPCODE, 2)
        assert "ILLEGAL_OPCODE" in str(e.value)
