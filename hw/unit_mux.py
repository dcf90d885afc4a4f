"""One engine slot made of several execution units: dispatch by opcode.

A queue of the controller (LD, ST, PE, ...) executes several instruction families; each family is
its own component (a LOAD engine, a KV_APPEND engine, ...) following the unit-slot contract of
:mod:`ternopu.hw.overlay`. :class:`UnitMux` presents them to the overlay as one slot:

* ``ctl.cmd`` goes to the unit that owns the instruction's opcode; that unit becomes the *owner*
  until its ``done`` is taken. The controller issues one instruction per queue at a time, so the
  units of a slot never run concurrently and the owner's DMA clients can be muxed onto the slot's
  ``rd`` / ``wr`` ports (a unit has no DMA command outstanding once it has answered ``done``).
* ``done`` and the owner's DMA streams are taken from the owner; ``progress`` is the OR of all
  units; ``abort`` and ``bitmask`` fan out; ``mask`` writes are ORed (only ROUTER writes it).
* Scratchpad and history-buffer ports (``sp_r``, ``sp_w``, ``hist_r``, ``hist_w``) are not muxed:
  every unit keeps its own ports, concatenated into the slot's arrays in unit order (the order
  of ``units``), so a unit's scratch priority is fixed by that order.
* A key may be :class:`When` (opcodes plus a condition on the command payload) to split one
  opcode between units: ``PE_LINEAR`` with FP16 weights goes to the LM-head unit, the INT4
  formats to the PE array. Entries are matched in order; the first match owns the instruction.
* An opcode of the queue that no unit implements completes at once with ``missing_code``
  (default ``ILLEGAL_OPCODE``), never hangs.

Latency: none added on the command path (combinational dispatch); the owner register adds no
cycle between instructions.
"""

from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from . import isa
from .unit_port import DmaReadClientSignature, DmaWriteClientSignature, MaskWriteSignature, UnitPortSignature

__all__ = ["UnitMux", "When", "MEM_PORTS"]

#: Memory-port members concatenated (not muxed) by :class:`UnitMux`.
MEM_PORTS = ("sp_r", "sp_w", "hist_r", "hist_w")


def _ports(unit, name):
    """The unit's ports of member ``name`` as a list (a single port or an array)."""
    if name not in unit.signature.members:
        return []
    value = getattr(unit, name)
    return list(value) if unit.signature.members[name].dimensions else [value]


class When:
    """A :class:`UnitMux` key: the unit takes ``opcodes`` only where ``cond(payload)`` is 1.

    Parameters
    ----------
    opcodes : str or tuple of str
        Opcode names.
    cond : callable
        ``cond(ctl.cmd.payload) -> Value`` (1 bit), e.g. a field test on ``payload.instr``.
    """

    def __init__(self, opcodes, cond):
        self.opcodes = (opcodes,) if isinstance(opcodes, str) else tuple(opcodes)
        if not callable(cond):
            raise ConfigError(f"When({self.opcodes}): cond must be callable, got {cond!r}")
        self.cond = cond

    def __repr__(self):
        return f"When({self.opcodes!r}, {getattr(self.cond, '__name__', self.cond)!r})"


class UnitMux(wiring.Component):
    """Several units behind one slot (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        Slot geometry (DMA parameters, ports, scratch and history sizes).
    units : dict[str | tuple[str, ...] | When, factory or component]
        Opcode name(s) -> the unit executing them; a factory is called with ``ctx``. An opcode may
        appear in several entries only if every entry but the last is a :class:`When`.
    missing_code : ErrorCode
        Completion code of an opcode routed here that no unit implements.
    """

    def __init__(self, ctx, units: dict, *, missing_code=isa.ErrorCode.ILLEGAL_OPCODE):
        if not units:
            raise ConfigError("UnitMux needs at least one unit")
        self.ctx = ctx
        self.units = []
        self.opcodes = []
        self.conds = []
        seen = {}
        for key, unit in units.items():
            cond = key.cond if isinstance(key, When) else None
            names = key.opcodes if isinstance(key, When) else (key,) if isinstance(key, str) else tuple(key)
            for n in names:
                if n not in isa.OPCODE_BY_NAME:
                    raise ConfigError(f"UnitMux: unknown opcode {n!r}")
                if seen.get(n) == "all":
                    raise ConfigError(f"UnitMux: opcode {n} given to two units (an earlier entry takes "
                                      "all of it; only When entries may share an opcode, before the "
                                      "catch-all)")
                seen[n] = "all" if cond is None else "some"
            if callable(unit) and not isinstance(unit, wiring.Component):
                unit = unit(ctx)
            if "ctl" not in unit.signature.members:
                raise ConfigError(f"UnitMux: the unit for {names} has no 'ctl' port")
            self.units.append(unit)
            self.opcodes.append(tuple(isa.OPCODE_BY_NAME[n].number for n in names))
            self.conds.append(cond)
        self.missing_code = missing_code
        members = lambda n: any(n in u.signature.members for u in self.units)  # noqa: E731
        sig = {"ctl": In(UnitPortSignature())}
        if members("rd"):
            sig["rd"] = Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports)
        if members("wr"):
            sig["wr"] = Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports)
        if members("mask"):
            sig["mask"] = Out(MaskWriteSignature())
        if members("bitmask"):
            sig["bitmask"] = In(2 * isa.MAX_LAYERS)
        for name in MEM_PORTS:
            ports = [p for u in self.units for p in _ports(u, name)]
            if ports:
                proto = next(u for u in self.units if name in u.signature.members)
                member = proto.signature.members[name]
                sig[name] = Out(member.signature).array(len(ports))
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        ctl = self.ctl
        n = len(self.units)
        for i, u in enumerate(self.units):
            m.submodules[f"u{i}"] = u

        opcode = ctl.cmd.payload.instr.header.opcode
        sel = Signal(range(n + 1))           # n: no unit implements the opcode
        m.d.comb += sel.eq(n)
        for i in reversed(range(n)):     # the first matching entry wins
            match = _any_eq(opcode, self.opcodes[i])
            if self.conds[i] is not None:
                match = match & self.conds[i](ctl.cmd.payload)
            with m.If(match):
                m.d.comb += sel.eq(i)
        owner = Signal(range(n + 1))
        busy = Signal()
        missing = Signal()                   # completion pending for an unimplemented opcode

        # command dispatch and completion
        for i, u in enumerate(self.units):
            m.d.comb += [u.ctl.cmd.valid.eq(ctl.cmd.valid & ~busy & (sel == i)),
                         u.ctl.cmd.payload.eq(ctl.cmd.payload),
                         u.ctl.abort.eq(ctl.abort),
                         u.ctl.done.ready.eq(ctl.done.ready & busy & (owner == i))]
            with m.If(sel == i):
                m.d.comb += ctl.cmd.ready.eq(~busy & u.ctl.cmd.ready)
            with m.If(busy & (owner == i)):
                m.d.comb += [ctl.done.valid.eq(u.ctl.done.valid), ctl.done.payload.eq(u.ctl.done.payload)]
        with m.If(sel == n):
            m.d.comb += ctl.cmd.ready.eq(~busy)
        with m.If(missing):
            m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(self.missing_code)]
        with m.If(ctl.cmd.valid & ctl.cmd.ready):
            m.d.sync += [busy.eq(1), owner.eq(sel), missing.eq(sel == n)]
        with m.If(ctl.done.valid & ctl.done.ready):
            m.d.sync += [busy.eq(0), missing.eq(0)]
        progress = 0
        for u in self.units:
            progress = progress | u.ctl.progress
        m.d.comb += ctl.progress.eq(progress)

        # DMA clients: the owner's
        for name in ("rd", "wr"):
            if name not in self.signature.members:
                continue
            for k in range(self.ctx.ports):
                subs = [(i, getattr(u, name)[k]) for i, u in enumerate(self.units)
                        if name in u.signature.members]
                _mux_interface(m, owner, getattr(self, name)[k], subs)

        if "mask" in self.signature.members:
            for u in self.units:
                if "mask" in u.signature.members:
                    with m.If(u.mask.we):
                        m.d.comb += [self.mask.we.eq(1), self.mask.addr.eq(u.mask.addr),
                                     self.mask.bit.eq(u.mask.bit)]
        if "bitmask" in self.signature.members:
            for u in self.units:
                if "bitmask" in u.signature.members:
                    m.d.comb += u.bitmask.eq(self.bitmask)

        for name in MEM_PORTS:
            if name not in self.signature.members:
                continue
            outer = list(getattr(self, name))
            inner = [p for u in self.units for p in _ports(u, name)]
            for o, p in zip(outer, inner):
                wiring.connect(m, p, wiring.flipped(o))
        return m


def _any_eq(value, numbers):
    cond = 0
    for x in numbers:
        cond = cond | (value == x)
    return cond


def _mux_interface(m, owner, outer, subs):
    """Drive ``outer`` (the slot's port, unit view) from the sub-unit whose index is ``owner``.

    Outputs of the units are selected by ``owner``; inputs go to every unit, gated to zero for
    units that do not own the slot.
    """
    outer_leaves = list(outer.signature.flatten(outer))
    for i, port in subs:
        for (path, flow, o_val), (_, _, s_val) in zip(outer_leaves, port.signature.flatten(port)):
            if flow.flow == wiring.Flow.Out:
                with m.If(owner == i):
                    m.d.comb += o_val.eq(s_val)
            else:
                width = len(Value.cast(s_val))
                m.d.comb += Value.cast(s_val).eq((owner == i).replicate(width) & Value.cast(o_val))
