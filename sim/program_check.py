"""Run one program on the golden ISS and on the Verilated overlay; compare HBM, scratch and status.

The check a unit needs before (and after) it is integrated: "this program, from this initial
state, ends in the same state on both". ::

    from ternopu.sim.program_check import program_check

    res = program_check(asm, hbm={0x1000: weights}, buffers={0: x_bytes},
                        read={0x2000: 256}, units={Unit.TLMM: my_factory})
    res.assert_equal()               # AssertionError with a readable diff otherwise
    res.rtl.cycles, res.rtl.counters # cycle count and CSR counters of the program run

Machine set-up (both sides)
---------------------------
HBM: ``ports`` channels of ``channel_bytes`` (global address = ``channel * channel_bytes +
local``, as :mod:`ternopu.sw.compiler.layout`), zero except the ``hbm`` regions. Scratch buffers
``0..7``: zero except ``buffers`` (bytes from offset 0; at most ``buf_words * 32`` each). The
program is placed at ``prog_addr`` (default: near the top of the last channel, below the scratch
staging area; both must not overlap the caller's regions).

* Golden: :meth:`GoldenISS.blank` with the given ``tlmm`` / ``fmt``; HBM and buffers are set
  directly; :meth:`GoldenISS.run`.
* RTL: a :class:`ternopu.sw.backends.verilator.VerilatorDevice` with the same geometry and the
  caller's ``units`` (the build is cached per configuration). Scratch needs no backdoor: the
  initial buffers are written to a staging area at the top of the last channel and moved in by
  a LOAD-only program run first; after the program, a STORE-only program moves every buffer back
  to the staging area, which is then read through the host port. So the RTL side relies on the
  LD / ST slots working (the comparison of a LOAD / STORE program checks exactly that).

Results: :class:`MachineState` per side (status, the ``read`` regions -- by default the ``hbm``
regions -- all eight buffers truncated to ``buf_words * 32`` bytes, counters, cycles).
:meth:`ProgramCheck.assert_equal` compares status (done, error code, error pc), HBM regions and
buffers and reports the first differing byte of each with its fp32 / fp16 / int8 views.

Differences between the two sides that are not bugs: the ISS's buffers are
:data:`~ternopu.sw.compiler.layout.BUF_BYTES` long, the RTL's ``buf_words * 32`` (a program past
``buf_words`` stops with BUF_RANGE only on the RTL); HBM counters differ (the RTL also counts
instruction fetch); the RTL device is fresh per call unless ``device=`` is given (then HBM
outside the given regions holds what earlier checks left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode

__all__ = ["MachineState", "ProgramCheck", "program_check", "describe_diff", "program_bytes",
           "DEFAULT_CHANNEL_BYTES", "DEFAULT_BUF_WORDS"]

#: Default HBM channel span of a check (64 KiB: 2048 words backed per channel).
DEFAULT_CHANNEL_BYTES = 1 << 16
#: Default scratch buffer size of a check (words of 32 bytes).
DEFAULT_BUF_WORDS = 64
_CHUNK = 64   # words per staging LOAD / STORE (one DMA burst at the default max_burst)
_W = isa.BUS_BYTES


@dataclass
class MachineState:
    """Final state of one side: run status, HBM regions (start -> bytes), buffers (id -> bytes),
    counters of the program run, cycles (RTL only)."""

    status: object
    hbm: dict[int, bytes] = field(default_factory=dict)
    buffers: dict[int, bytes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    cycles: int | None = None


@dataclass
class ProgramCheck:
    """Both final states; ``rtl`` is None when the check ran the golden side only."""

    golden: MachineState
    rtl: MachineState | None
    info: dict = field(default_factory=dict)

    def mismatches(self, *, status: bool = True, hbm: bool = True, buffers: bool = True) -> list[str]:
        """Readable description of every difference (empty list: equal)."""
        if self.rtl is None:
            raise ConfigError("program_check ran without the RTL side (rtl=False); nothing to compare")
        g, r = self.golden, self.rtl
        out = []
        if status:
            gs, rs = g.status, r.status
            if (gs.done, gs.error, gs.error_pc if gs.error else -1) != (rs.done, rs.error, rs.error_pc if rs.error else -1):
                out.append(f"status: golden done={gs.done} {gs.error.name} pc {gs.error_pc} ({gs.message!r}); "
                           f"rtl done={rs.done} {rs.error.name} pc {rs.error_pc} ({rs.message!r})")
        if hbm:
            for addr in sorted(g.hbm):
                d = describe_diff(f"HBM [{addr:#x}, {addr + len(g.hbm[addr]):#x})", g.hbm[addr], r.hbm[addr], addr)
                if d:
                    out.append(d)
        if buffers:
            for b in sorted(g.buffers):
                d = describe_diff(f"buffer {b}", g.buffers[b], r.buffers[b], 0)
                if d:
                    out.append(d)
        return out

    def assert_equal(self, **kw) -> None:
        """Raise AssertionError listing :meth:`mismatches` (keyword arguments select what)."""
        bad = self.mismatches(**kw)
        if bad:
            raise AssertionError("golden ISS and RTL differ:\n  " + "\n  ".join(bad))


def describe_diff(name: str, golden: bytes, rtl: bytes, base: int = 0, max_items: int = 4) -> str:
    """'' when equal, else: how many bytes differ, the first one, and the fp32 / fp16 / int8
    values (golden vs rtl) of the aligned elements around the first few differences."""
    a = np.frombuffer(bytes(golden), dtype=np.uint8)
    b = np.frombuffer(bytes(rtl), dtype=np.uint8)
    if a.size != b.size:
        return f"{name}: length golden {a.size} != rtl {b.size}"
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return ""
    lines = [f"{name}: {diff.size} of {a.size} bytes differ, first at offset {int(diff[0])} "
             f"(address {base + int(diff[0]):#x})"]
    shown = set()
    for i in diff:
        w = int(i) & ~3
        if w in shown:
            continue
        shown.add(w)
        if len(shown) > max_items:
            lines.append("    ...")
            break
        ga, ra = a[w:w + 4], b[w:w + 4]
        views = [f"bytes {ga.tobytes().hex()} vs {ra.tobytes().hex()}"]
        if ga.size == 4:
            views.append(f"fp32 {ga.view('<f4')[0]!r} vs {ra.view('<f4')[0]!r}")
        h = int(i) & ~1
        if h + 2 <= a.size:
            views.append(f"fp16@{h} {a[h:h + 2].view('<f2')[0]!r} vs {b[h:h + 2].view('<f2')[0]!r}")
        views.append(f"int8@{int(i)} {int(a[i].astype(np.int8))} vs {int(b[i].astype(np.int8))}")
        lines.append(f"    offset {w}: " + "; ".join(views))
    return "\n".join(lines)


def program_bytes(program) -> bytes:
    """Program as bytes: an :class:`isa.Assembler`, bytes, or a list of 256-bit words / Instructions."""
    if isinstance(program, isa.Assembler):
        return program.assemble()
    if isinstance(program, (bytes, bytearray, memoryview)):
        raw = bytes(program)
        if len(raw) % _W:
            raise ConfigError(f"program bytes must be a multiple of {_W}, got {len(raw)}")
        return raw
    out = bytearray()
    for w in program:
        if isinstance(w, isa.Instruction):
            w = isa.encode(w)
        out += int(w).to_bytes(_W, "little")
    return bytes(out)


def _staging_program(buf_words: int, staging: int, port: int, load: bool) -> bytes:
    """LOADs (or STOREs) of every buffer from (to) the staging area, then END."""
    a = isa.Assembler()
    for b in range(isa.NUM_BUFFERS):
        for w0 in range(0, buf_words, _CHUNK):
            n = min(_CHUNK, buf_words - w0)
            addr = staging + (b * buf_words + w0) * _W
            if load:
                a.emit("LOAD", hbm_addr=addr, port=port, nports=1, bursts=1, burst_len=n, stride=0,
                       dst_buf=b, dst_off=w0 * _W)
            else:
                a.emit("STORE", hbm_addr=addr, port=port, nports=1, bursts=1, burst_len=n, stride=0,
                       src_buf=b, src_off=w0 * _W)
    a.emit("END")
    return a.assemble()


def _overlaps(regions, lo, hi):
    return [(a, a + n) for a, n in regions if a < hi and lo < a + n]


def program_check(program, hbm: dict | None = None, buffers: dict | None = None, *, read: dict | None = None,
                  units=None, tlmm=None, fmt=None, ports: int = 2, channel_bytes: int = DEFAULT_CHANNEL_BYTES,
                  buf_words: int = DEFAULT_BUF_WORDS, read_latency: int = 10, watchdog: int = 1 << 16,
                  max_cycles: int = 2_000_000, prog_addr: int | None = None, rtl: bool = True, device=None,
                  overlay_kw: dict | None = None, build_args=None) -> ProgramCheck:
    """Run ``program`` on the golden ISS and (``rtl=True``) on the Verilated overlay.

    Parameters
    ----------
    program : Assembler, bytes or list of int / Instruction
        The program (it should end with END).
    hbm : dict[int, bytes]
        Initial HBM contents by global byte address (anything else is zero).
    buffers : dict[int, bytes]
        Initial scratch buffer contents from offset 0 (anything else is zero).
    read : dict[int, int]
        HBM regions (address -> bytes) to compare; default the ``hbm`` regions.
    units : dict[Unit, factory]
        Overlay unit slots (default: :func:`ternopu.sw.backends.verilator.engine_units`).
    tlmm, fmt : TLMMConfig, BFPFormat
        ISS configuration (defaults of :meth:`GoldenISS.blank`); ``tlmm`` also goes to the default
        units.
    ports, channel_bytes, buf_words : int
        Geometry (both sides). ``channel_bytes`` is a power of two; all of it is backed.
    read_latency, watchdog, max_cycles : int
        HBM model latency, CSR WATCHDOG and the cycle bound of the RTL run.
    prog_addr : int, optional
        Where the program goes (default: below the staging area in the last channel).
    device : VerilatorDevice, optional
        Reuse an open device (same geometry) instead of starting one; it is not closed.
    overlay_kw : dict
        Further :class:`~ternopu.hw.overlay.Overlay` arguments.
    build_args : sequence of str, optional
        Verilator arguments (default :data:`ternopu.sw.backends.verilator.FAST_BUILD`: quick to
        build, slow per cycle; pass ``RUN_BUILD`` for long programs).

    Raises
    ------
    ConfigError
        Overlapping regions, a buffer larger than ``buf_words * 32``, a bad geometry.
    DeviceError
        The simulator could not be built / started, or a staging run failed.
    """
    from ternopu.sw.backends.golden_iss import GoldenISS

    code = program_bytes(program)
    n_instr = len(code) // _W
    hbm = {int(a): bytes(v) for a, v in (hbm or {}).items()}
    buffers = {int(b): bytes(v) for b, v in (buffers or {}).items()}
    read = {int(a): int(n) for a, n in (read if read is not None else {a: len(v) for a, v in hbm.items()}).items()}
    if channel_bytes <= 0 or channel_bytes & (channel_bytes - 1) or channel_bytes % _W:
        raise ConfigError(f"channel_bytes must be a power of two >= {_W}, got {channel_bytes}")
    sp_bytes = buf_words * _W
    for b, v in buffers.items():
        if not 0 <= b < isa.NUM_BUFFERS or len(v) > sp_bytes:
            raise ConfigError(f"buffer {b}: id must be in [0, {isa.NUM_BUFFERS}) and contents at most "
                              f"buf_words * 32 = {sp_bytes} bytes, got {len(v)}")
    last = ports - 1
    staging_bytes = isa.NUM_BUFFERS * sp_bytes
    init_code = _staging_program(buf_words, 0, last, True)   # sizes only; real addresses below
    staging = last * channel_bytes + channel_bytes - staging_bytes
    aux_bytes = 2 * len(init_code)
    if prog_addr is None:
        prog_addr = staging - aux_bytes - len(code)
        prog_addr -= prog_addr % _W
    init_addr = staging - aux_bytes
    back_addr = init_addr + len(init_code)
    user = [(a, len(v)) for a, v in hbm.items()] + list(read.items())
    top = last * channel_bytes + channel_bytes
    if prog_addr < 0 or prog_addr % _W:
        raise ConfigError(f"prog_addr must be a non-negative multiple of 32, got {prog_addr:#x}")
    if rtl and _overlaps([(prog_addr, len(code))], init_addr, top):
        raise ConfigError(f"the program at {prog_addr:#x} ({len(code)} bytes) overlaps the staging area "
                          f"[{init_addr:#x}, {top:#x}): give a larger channel_bytes or another prog_addr")
    reserved = {"program": (prog_addr, prog_addr + len(code))}
    if rtl:
        reserved["staging"] = (init_addr, top)
    for what, (lo, hi) in reserved.items():
        hit = _overlaps(user, lo, hi)
        if hit:
            raise ConfigError(f"the {what} area [{lo:#x}, {hi:#x}) overlaps caller regions {hit}: move them, "
                              "or give prog_addr / a larger channel_bytes")
    total = ports * channel_bytes
    for a, n in user:
        if a < 0 or a + n > total:
            raise ConfigError(f"region [{a:#x}, {a + n:#x}) outside HBM ({total:#x} bytes)")

    # ---- golden ----------------------------------------------------------------------------------
    iss = GoldenISS.blank(ports, channel_bytes, tlmm=tlmm, fmt=fmt)
    for a, v in hbm.items():
        iss.write(a, v)
    iss.write(prog_addr, code)
    for b, v in buffers.items():
        iss.buffers[b][:len(v)] = np.frombuffer(v, dtype=np.uint8)
    gstat = iss.run(prog_addr, n_instr)
    golden = MachineState(gstat, {a: iss.read(a, n) for a, n in read.items()},
                          {b: iss.buffers[b][:sp_bytes].tobytes() for b in range(isa.NUM_BUFFERS)},
                          dict(gstat.counters))
    info = {"prog_addr": prog_addr, "staging": staging, "instructions": n_instr}
    if not rtl:
        return ProgramCheck(golden, None, info)

    # ---- RTL --------------------------------------------------------------------------------------
    from ternopu.sw.backends.verilator import FAST_BUILD, VerilatorDevice
    from ternopu.sw.device import DeviceError

    own = device is None
    dev = device or VerilatorDevice(ports=ports, channel_bytes=channel_bytes, depth=channel_bytes // _W,
                                    buf_words=buf_words, units=units, tlmm=tlmm, read_latency=read_latency,
                                    watchdog=watchdog, max_cycles=max_cycles, overlay_kw=overlay_kw,
                                    build_args=FAST_BUILD if build_args is None else build_args)
    try:
        for a, v in hbm.items():
            dev.write(a, v)
        dev.write(prog_addr, code)
        stage = bytearray(staging_bytes)
        for b, v in buffers.items():
            stage[b * sp_bytes:b * sp_bytes + len(v)] = v
        dev.write(staging, bytes(stage))
        init_code = _staging_program(buf_words, staging, last, True)
        back_code = _staging_program(buf_words, staging, last, False)
        dev.write(init_addr, init_code)
        dev.write(back_addr, back_code)
        st = dev.run(init_addr, len(init_code) // _W)
        if not st.ok:
            raise DeviceError(f"program_check: the LOAD program that fills the scratch buffers failed "
                              f"({st.error.name} at pc {st.error_pc}: {st.message})", st.error, st.error_pc)
        before = dev.counters()
        rstat = dev.run(prog_addr, n_instr)
        after = dev.counters()
        cycles = getattr(dev, "last_run_cycles", None)
        st = dev.run(back_addr, len(back_code) // _W)
        if not st.ok:
            raise DeviceError(f"program_check: the STORE program that reads the scratch buffers back failed "
                              f"({st.error.name} at pc {st.error_pc}: {st.message})", st.error, st.error_pc)
        raw = dev.read(staging, staging_bytes)
        rtl_state = MachineState(rstat, {a: dev.read(a, n) for a, n in read.items()},
                                 {b: raw[b * sp_bytes:(b + 1) * sp_bytes] for b in range(isa.NUM_BUFFERS)},
                                 {k: after.get(k, 0) - before.get(k, 0) for k in after}, cycles)
        info.update(getattr(dev, "info", {}))
    finally:
        if own:
            dev.close()
    return ProgramCheck(golden, rtl_state, info)
