"""The interface between the controller and an execution unit, DMA client ports, and a stub unit.

Unit port (:class:`UnitPortSignature`, seen from the controller)
---------------------------------------------------------------
* ``cmd`` (Out, ``amaranth.lib.stream``, payload :data:`UNIT_CMD_LAYOUT`): one decoded
  instruction -- ``instr`` (the 256-bit word as :data:`ternopu.hw.isa.INSTRUCTION_LAYOUT`, so the
  unit reads ``cmd.payload.instr.tlmm.rows`` etc.) and ``pc`` (its instruction index, 32 bits).
  The controller raises ``valid`` only when the instruction's wait tokens are available and the
  unit has no instruction in execution; the transfer (``valid & ready``) is the instant the
  instruction *starts* and its tokens are taken. A unit that is not ready simply keeps
  ``ready`` low (counted as a stall of its queue).
* ``done`` (In, stream of :class:`ternopu.hw.isa.ErrorCode`): exactly one completion per accepted
  command, raised when the instruction's results are visible to every other unit (buffer writes
  done, HBM writes acknowledged). ``payload`` is ``ErrorCode.NONE`` or the run-time error the unit
  found (``HBM_RANGE``, ``BUF_RANGE``, ``SHAPE``, ``AXI_RESP``). The controller keeps
  ``done.ready`` high at all times: a completion is taken in the cycle it is offered.
* ``progress`` (In, 1 bit): the unit did useful work this cycle (moved a beat, computed a
  step). The watchdog ends a run after ``WATCHDOG`` consecutive cycles without progress anywhere;
  a unit waiting on something external (a memory response) keeps ``progress`` low.
* ``abort`` (Out, 1 bit, level): the run is being stopped (error or soft reset). A unit should
  end its current instruction as soon as it safely can and still answer ``done`` (the code is
  ignored). Units with AXI transactions in flight finish them (AXI bursts cannot be cancelled);
  the DMAs never hang, so this is bounded.

The controller issues at most one instruction to a unit at a time (the next one after the
completion of the previous), so a unit needs no pc/release bookkeeping of its own.

DMA client ports
----------------
:class:`DmaReadClientSignature` / :class:`DmaWriteClientSignature` are the
:class:`ternopu.hw.dma.ReadDMA` / ``WriteDMA`` command/data/completion streams seen from a client
(the unit): a unit that reads HBM declares ``rd: Out(DmaReadClientSignature(p)).array(ports)``;
the overlay arbitrates every port's DMA between its clients (:mod:`ternopu.hw.overlay`).

Router bitmask write port
-------------------------
:class:`MaskWriteSignature` (seen from the writer, the ROUTER on the PE unit): ``we`` writes
``bit`` to routing-bitmask bit ``addr = 2*layer + block`` (1 = skip the block).

Stub unit
---------
:class:`StubUnit` is a behavioural unit for controller and overlay tests: every instruction takes
``stub_cycles(pc, lo, span)`` cycles (a fixed pseudo-random function of the pc, so timing varies
between instructions but is reproducible in Python), can be told to report an error code at one
pc or to hang (no completion, no progress) at one pc, and, as the PE stub, executes ROUTER with a
score of zero: bitmask bit = (0.0 < threshold) in binary32.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from . import isa
from .dma import ERR_WIDTH, DmaParams, read_data_layout

__all__ = [
    "PC_BITS", "UNIT_CMD_LAYOUT", "UnitPortSignature", "MaskWriteSignature",
    "DmaReadClientSignature", "DmaWriteClientSignature", "MASK_ADDR_BITS", "stub_cycles",
    "router_stub_bit", "StubUnit", "ENGINE_UNITS",
]

#: Width of a program counter (instruction index); PROG_LEN is a 32-bit CSR.
PC_BITS = 32
#: Routing bitmask bits: 2 per layer (:class:`ternopu.hw.isa.Block`).
MASK_ADDR_BITS = isa.LAYER_BITS + 1
#: Units with a queue (everything but CTRL), in :class:`ternopu.hw.isa.Unit` order.
ENGINE_UNITS = tuple(u for u in isa.Unit if u != isa.Unit.CTRL)

#: Payload of a unit command: the decoded word and its pc.
UNIT_CMD_LAYOUT = data.StructLayout({
    "instr": isa.INSTRUCTION_LAYOUT,
    "pc": unsigned(PC_BITS),
})


class UnitPortSignature(wiring.Signature):
    """Controller <-> unit interface, controller's view (a unit has ``In(UnitPortSignature())``)."""

    def __init__(self):
        super().__init__({
            "cmd": Out(stream.Signature(UNIT_CMD_LAYOUT)),
            "done": In(stream.Signature(isa.ErrorCode)),
            "progress": In(1),
            "abort": Out(1),
        })


class MaskWriteSignature(wiring.Signature):
    """Routing-bitmask write port, writer's view: ``we``, ``addr`` (2*layer + block), ``bit``."""

    def __init__(self):
        super().__init__({"we": Out(1), "addr": Out(MASK_ADDR_BITS), "bit": Out(1)})


class DmaReadClientSignature(wiring.Signature):
    """A read-DMA client (unit) view: ``cmd`` out, ``data`` and ``done`` in (:class:`ReadDMA`)."""

    def __init__(self, p: DmaParams):
        super().__init__({
            "cmd": Out(stream.Signature(p.command)),
            "data": In(stream.Signature(read_data_layout(p.data_width))),
            "done": In(stream.Signature(unsigned(ERR_WIDTH))),
        })


class DmaWriteClientSignature(wiring.Signature):
    """A write-DMA client (unit) view: ``cmd`` and ``data`` out, ``done`` in (:class:`WriteDMA`)."""

    def __init__(self, p: DmaParams):
        super().__init__({
            "cmd": Out(stream.Signature(p.command)),
            "data": Out(stream.Signature(unsigned(p.data_width))),
            "done": In(stream.Signature(unsigned(ERR_WIDTH))),
        })


_HASH_MUL = 0x9E3779B1


def stub_cycles(pc: int, lo: int, span: int) -> int:
    """Cycles a :class:`StubUnit` spends on the instruction at ``pc``.

    ``lo + (((pc * 0x9E3779B1) mod 2**32) >> 16) mod span``; ``span`` is a power of two, so the
    hardware takes the low bits. The unit is busy for exactly that many cycles after the cycle it
    accepted the instruction, and offers ``done`` in the last of them.
    """
    return lo + ((((pc * _HASH_MUL) & 0xFFFFFFFF) >> 16) & (span - 1))


def router_stub_bit(threshold_bits: int) -> int:
    """Bitmask bit the stub ROUTER writes: ``0.0 < threshold`` (binary32 compare; NaN -> 0)."""
    sign = threshold_bits >> 31 & 1
    exp = threshold_bits >> 23 & 0xFF
    man = threshold_bits & 0x7FFFFF
    is_nan = exp == 0xFF and man != 0
    return int(not sign and (threshold_bits & 0x7FFFFFFF) != 0 and not is_nan)


class StubUnit(wiring.Component):
    """Behavioural execution unit for tests (see module docstring).

    Parameters
    ----------
    lo : int
        Fewest cycles per instruction (>= 1).
    span : int
        Power of two; cycles are ``lo .. lo + span - 1`` (:func:`stub_cycles`).
    router : bool
        Also execute ROUTER (stub decision, :func:`router_stub_bit`) through a ``mask`` port.

    Ports
    -----
    ctl : In(UnitPortSignature())
    fail_en : In(1), fail_pc : In(32), fail_code : In(8)
        When ``fail_en``, the instruction at ``fail_pc`` completes with ``fail_code``.
    hang_en : In(1), hang_pc : In(32)
        When ``hang_en``, the instruction at ``hang_pc`` never completes and shows no progress
        (until ``ctl.abort``, which ends it at once).
    deaf : In(1)
        A hung instruction ignores ``abort`` too (a misbehaving unit: tests the drain timeout).
    mask : Out(MaskWriteSignature()) (only with ``router=True``)
        Written in the cycle the ROUTER's completion is offered.

    Timing: accepts a command whenever idle; ``progress`` is high in every executing cycle.
    """

    def __init__(self, lo: int = 1, span: int = 1, *, router: bool = False):
        if not isinstance(lo, int) or not 1 <= lo < 1 << 16:
            raise ConfigError(f"StubUnit lo must be an int in [1, 65535], got {lo!r}")
        if not isinstance(span, int) or span < 1 or span & (span - 1) or span > 1 << 15:
            raise ConfigError(f"StubUnit span must be a power of two in [1, 32768], got {span!r}")
        self.lo, self.span, self.router = lo, span, router
        sig = {
            "ctl": In(UnitPortSignature()),
            "fail_en": In(1), "fail_pc": In(PC_BITS), "fail_code": In(isa.ErrorCode),
            "hang_en": In(1), "hang_pc": In(PC_BITS), "deaf": In(1),
        }
        if router:
            sig["mask"] = Out(MaskWriteSignature())
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        ctl = self.ctl
        count = Signal(17)
        pc = Signal(PC_BITS)
        word = Signal(isa.INSTRUCTION_LAYOUT)
        code = Signal(isa.ErrorCode)
        lg = self.span.bit_length() - 1
        hashed = Signal(32)
        m.d.comb += hashed.eq(ctl.cmd.payload.pc * _HASH_MUL)
        cycles = self.lo + (hashed[16:16 + lg] if lg else 0)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    p = ctl.cmd.payload
                    m.d.sync += [count.eq(cycles), pc.eq(p.pc), word.eq(p.instr)]
                    with m.If(self.hang_en & (p.pc == self.hang_pc)):
                        m.next = "HANG"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += ctl.progress.eq(1)
                with m.If(ctl.abort):
                    m.d.sync += code.eq(isa.ErrorCode.NONE)
                    m.next = "DONE"
                with m.Elif(count == 1):
                    m.d.comb += ctl.done.valid.eq(1)
                    m.d.comb += ctl.done.payload.eq(
                        Mux(self.fail_en & (pc == self.fail_pc), self.fail_code, 0))
                    self._router(m, word, ctl.done.ready)
                    with m.If(ctl.done.ready):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += code.eq(ctl.done.payload)
                        m.next = "DONE"
                with m.Else():
                    m.d.sync += count.eq(count - 1)
            with m.State("HANG"):
                with m.If(ctl.abort & ~self.deaf):
                    m.d.sync += code.eq(isa.ErrorCode.NONE)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m

    def _router(self, m, word, fire):
        """Stub ROUTER: write bit (layer, block) = (0.0 < threshold) with the completion."""
        if not self.router:
            return
        r = word.router
        t = r.threshold
        is_nan = (t[23:31] == 0xFF) & (t[:23] != 0)
        m.d.comb += [
            self.mask.we.eq(fire & (word.header.opcode == isa.OPCODE_BY_NAME["ROUTER"].number)),
            self.mask.addr.eq(r.layer * 2 + r.block),
            self.mask.bit.eq(~t[31] & (t[:31] != 0) & ~is_nan),
        ]
