"""The overlay's control/status registers: the register map, defined once, and the CSR block.

The map (:data:`REGISTERS` + the performance-counter array :data:`COUNTERS`, together
:data:`REGISTER_MAP`) is the single source of truth for the RTL :class:`CSRBlock`, the software
driver (:func:`register_map_json`) and ``docs/csr.md`` (``python -m ternopu.hw.docs``).

Bus
---
AXI4-Lite slave (:class:`ternopu.hw.axi_lite.AXI4LiteSlave`), 32-bit registers, a
:data:`CSR_ADDR_BITS`-bit (4 KiB) byte-address window. The low two address bits are ignored
(word registers). Byte strobes are honoured: a write affects only the bits of strobed bytes.

Access types (per field)
------------------------
* ``RO``  -- read only; writes are ignored and answered OKAY (the register exists, so the access is
  not a decode error; software can tell from reading back).
* ``RW``  -- read/write storage; resets to its reset value.
* ``W1C`` -- sticky status bit set by hardware; writing 1 clears it, writing 0 has no effect. A
  hardware set in the same cycle as a software clear wins (no event is lost).
* ``W1P`` -- write 1 to produce a one-cycle pulse on the internal port (exactly one pulse per AXI
  write that carries a 1 in that bit); reads as 0.

Unmapped addresses answer SLVERR (reads return 0) and change nothing.

Performance counters
--------------------
:data:`NUM_COUNTERS` 64-bit counters, counter ``i`` at ``COUNTER_BASE + 8*i`` (``_LO``, low 32 bits)
and ``COUNTER_BASE + 8*i + 4`` (``_HI``). Each counter adds its ``counter_inc[i]`` input every cycle
(wrapping at 2**64, which takes centuries), and is cleared by ``CTRL.clear_counters``. Reading
``_LO`` returns the low half *and* copies the high half of the same cycle's value into the
counter's shadow register; reading ``_HI`` returns that shadow. Reading LO then HI therefore gives a
consistent 64-bit value even while the counter runs.

Status semantics
----------------
``STATUS.done`` is set by a pulse on the ``done`` input; ``STATUS.error`` by a pulse on ``error``,
which also latches ``error_code`` / ``error_pc`` into ``ERROR_CODE`` / ``ERROR_PC`` if no error is
latched yet (the first error wins). Writing 1 to ``CTRL.start`` pulses ``start`` and clears done,
error, ERROR_CODE and ERROR_PC. Clearing ``STATUS.error`` (W1C) also clears ERROR_CODE and ERROR_PC.
``irq = (done & IRQ_ENABLE.done) | (error & IRQ_ENABLE.error)``. ``CTRL.soft_reset`` pulses the
``soft_reset`` output (the overlay resets its queues and units); the CSR block keeps its contents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from amaranth import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .axi_lite import AXI4LiteSlave, axi4_lite_signature

__all__ = [
    "CSR_ADDR_BITS", "CSR_MAP_VERSION", "ID_MAGIC", "ACCESS_TYPES", "CsrField", "Register",
    "REGISTERS", "COUNTERS", "NUM_COUNTERS", "COUNTER_BASE", "COUNTER_INC_BITS", "REGISTER_MAP",
    "REGISTER_BY_NAME", "counter_offset", "register_map_json", "CSRBlock",
]

CSR_ADDR_BITS = 12
#: Revision of this register map (VERSION.csr_rev).
CSR_MAP_VERSION = 1
#: ID register: ASCII "TNPU".
ID_MAGIC = int.from_bytes(b"TNPU", "big")
ACCESS_TYPES = ("RO", "RW", "W1C", "W1P")
#: Default width of each counter's per-cycle increment input (HBM bytes per cycle per port fit).
COUNTER_INC_BITS = 8
COUNTER_BASE = 0x100
#: Cycles before the watchdog ends a wait, at reset (2**24 = 56 ms at 300 MHz).
WATCHDOG_RESET = 1 << 24


@dataclass(frozen=True)
class CsrField:
    """A bit field ``[lsb, lsb + width)`` of a register."""

    name: str
    lsb: int
    width: int
    access: str
    reset: int = 0
    doc: str = ""

    def __post_init__(self):
        assert self.access in ACCESS_TYPES, self
        assert 0 <= self.lsb and self.lsb + self.width <= 32 and 0 <= self.reset < 1 << self.width, self

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


@dataclass(frozen=True)
class Register:
    """A 32-bit register at byte ``offset``."""

    name: str
    offset: int
    doc: str
    fields: tuple[CsrField, ...]

    def __post_init__(self):
        assert self.offset % 4 == 0 and 0 <= self.offset < 1 << CSR_ADDR_BITS, self
        used = 0
        for f in self.fields:
            assert not used & f.mask, f"{self.name}.{f.name} overlaps another field"
            used |= f.mask

    @property
    def reset(self) -> int:
        """Reset value as read (W1P fields read 0)."""
        return sum(f.reset << f.lsb for f in self.fields if f.access != "W1P")

    @property
    def access(self) -> str:
        """Access summary: the field access types, e.g. ``"RO"`` or ``"RO/W1C"``."""
        kinds = []
        for f in self.fields:
            if f.access not in kinds:
                kinds.append(f.access)
        return "/".join(kinds)

    def field(self, name: str) -> CsrField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}")


def _f(name, lsb, width, access, reset=0, doc=""):
    return CsrField(name, lsb, width, access, reset, doc)


#: Performance counters: (name, meaning). Indices are stable: append only.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("CYCLES", "cycles while busy"),
    *[(f"{u.name}_BUSY", f"cycles the {u.name} queue's unit executes an instruction") for u in isa.Unit],
    *[(f"{u.name}_STALL", f"cycles the {u.name} queue's head waits (tokens, memory, full queue)")
      for u in isa.Unit],
    *[(f"HBM_RD_P{p}", f"bytes read through HBM port {p}") for p in range(isa.HBM_PORTS)],
    *[(f"HBM_WR_P{p}", f"bytes written through HBM port {p}") for p in range(isa.HBM_PORTS)],
)
NUM_COUNTERS = len(COUNTERS)
assert NUM_COUNTERS < 256 and COUNTER_BASE + 8 * NUM_COUNTERS <= 1 << CSR_ADDR_BITS


REGISTERS: tuple[Register, ...] = (
    Register("ID", 0x000, 'Identification: ASCII "TNPU".',
             (_f("magic", 0, 32, "RO", ID_MAGIC, "0x544E5055"),)),
    Register("VERSION", 0x004, "ISA and register-map versions, counter count.",
             (_f("isa_minor", 0, 8, "RO", isa.ISA_VERSION_MINOR, "ISA minor version"),
              _f("isa_major", 8, 8, "RO", isa.ISA_VERSION_MAJOR, "ISA major version"),
              _f("csr_rev", 16, 8, "RO", CSR_MAP_VERSION, "register-map revision"),
              _f("num_counters", 24, 8, "RO", NUM_COUNTERS, "number of performance counters"))),
    Register("CTRL", 0x008, "Commands (write 1 to pulse).",
             (_f("start", 0, 1, "W1P", doc="start the program at PROG_BASE; clears done/error"),
              _f("soft_reset", 1, 1, "W1P", doc="reset queues and units (CSRs keep their contents)"),
              _f("clear_counters", 2, 1, "W1P", doc="zero every performance counter"))),
    Register("STATUS", 0x00C, "Run status.",
             (_f("busy", 0, 1, "RO", doc="a program is running"),
              _f("done", 1, 1, "W1C", doc="sticky: END reached"),
              _f("error", 2, 1, "W1C", doc="sticky: stopped with an error (see ERROR_CODE); "
                                          "clearing it clears ERROR_CODE and ERROR_PC"))),
    Register("IRQ_ENABLE", 0x010, "Interrupt enables (irq = done&done_en | error&error_en).",
             (_f("done", 0, 1, "RW", doc="interrupt on done"),
              _f("error", 1, 1, "RW", doc="interrupt on error"))),
    Register("ERROR_CODE", 0x014, "First error since start (ternopu.hw.isa.ErrorCode).",
             (_f("code", 0, 8, "RO", doc="ErrorCode; 0 = none"),)),
    Register("ERROR_PC", 0x018, "Program counter (instruction index) of the first error.",
             (_f("pc", 0, 32, "RO"),)),
    Register("PC", 0x01C, "Current program counter (instruction index being dispatched).",
             (_f("pc", 0, 32, "RO"),)),
    Register("PROG_BASE_LO", 0x020, "Program base HBM byte address, bits [31:0] (32-byte aligned).",
             (_f("addr", 0, 32, "RW"),)),
    Register("PROG_BASE_HI", 0x024, f"Program base HBM byte address, bits [{isa.HBM_ADDR_BITS - 1}:32].",
             (_f("addr", 0, isa.HBM_ADDR_BITS - 32, "RW"),)),
    Register("PROG_LEN", 0x028, "Program length in instructions (32 bytes each).",
             (_f("count", 0, 32, "RW"),)),
    Register("WATCHDOG", 0x02C, "Longest wait in cycles before error WATCHDOG.",
             (_f("cycles", 0, 32, "RW", WATCHDOG_RESET),)),
    Register("SCRATCH", 0x030, "Scratch register for software (bus checks).",
             (_f("value", 0, 32, "RW"),)),
)

def counter_offset(name_or_index: str | int) -> int:
    """Byte offset of a counter's ``_LO`` register (``_HI`` is 4 bytes above)."""
    if isinstance(name_or_index, str):
        names = [n for n, _ in COUNTERS]
        if name_or_index not in names:
            raise KeyError(f"no counter {name_or_index!r}")
        name_or_index = names.index(name_or_index)
    if not 0 <= name_or_index < NUM_COUNTERS:
        raise KeyError(f"counter index must be in 0..{NUM_COUNTERS - 1}, got {name_or_index}")
    return COUNTER_BASE + 8 * name_or_index


def _counter_registers() -> tuple[Register, ...]:
    regs = []
    for i, (name, doc) in enumerate(COUNTERS):
        regs.append(Register(f"CNT_{name}_LO", counter_offset(i),
                             f"{doc}: bits [31:0]; reading snapshots bits [63:32] into _HI",
                             (_f("value", 0, 32, "RO"),)))
        regs.append(Register(f"CNT_{name}_HI", counter_offset(i) + 4,
                             f"{doc}: bits [63:32] as of the last _LO read", (_f("value", 0, 32, "RO"),)))
    return tuple(regs)


#: Every register, fixed ones then the counter array, in address order.
REGISTER_MAP: tuple[Register, ...] = REGISTERS + _counter_registers()
REGISTER_BY_NAME: dict[str, Register] = {r.name: r for r in REGISTER_MAP}
assert len({r.offset for r in REGISTER_MAP}) == len(REGISTER_MAP)
assert max(r.offset for r in REGISTERS) < COUNTER_BASE


def register_map_json() -> str:
    """The register map as JSON for software and tools (stable key order)."""
    doc = {
        "name": "ternopu_csr",
        "csr_rev": CSR_MAP_VERSION,
        "isa_version": [isa.ISA_VERSION_MAJOR, isa.ISA_VERSION_MINOR],
        "addr_bits": CSR_ADDR_BITS,
        "data_bits": 32,
        "unmapped_response": "SLVERR",
        "ro_write_response": "OKAY (ignored)",
        "error_codes": {c.name: int(c) for c in isa.ErrorCode},
        "counters": [{"index": i, "name": n, "offset": counter_offset(i), "doc": d}
                     for i, (n, d) in enumerate(COUNTERS)],
        "registers": [
            {"name": r.name, "offset": r.offset, "access": r.access, "reset": r.reset, "doc": r.doc,
             "fields": [{"name": f.name, "lsb": f.lsb, "width": f.width, "access": f.access,
                         "reset": f.reset, "doc": f.doc} for f in r.fields]}
            for r in REGISTER_MAP],
    }
    return json.dumps(doc, indent=1)


class CSRBlock(wiring.Component):
    """AXI4-Lite control/status register block of the overlay (map: module docstring, docs/csr.md).

    Parameters
    ----------
    inc_bits : int
        Width of each counter's per-cycle increment input (default :data:`COUNTER_INC_BITS`).

    Ports
    -----
    axi : In(axi4_lite_signature(CSR_ADDR_BITS))
        The host's AXI4-Lite master connects here.
    start, soft_reset : Out(1)
        One-cycle pulses (CTRL.start / CTRL.soft_reset writes).
    prog_base : Out(34), prog_len : Out(32), watchdog : Out(32)
        Register contents for the controller.
    busy, done, error : In(1)
        ``busy`` level; ``done`` and ``error`` pulses (set the sticky STATUS bits).
    error_code : In(8), error_pc : In(32)
        Latched with the first ``error`` pulse.
    pc : In(32)
        Live program counter.
    counter_inc : In(ArrayLayout(unsigned(inc_bits), NUM_COUNTERS))
        Per-cycle increments of the performance counters.
    irq : Out(1)
        Level interrupt.

    Timing
    ------
    A write takes effect in the cycle the AXI slave performs it (the cycle after both AW and W
    have been accepted): ``start`` / ``soft_reset`` are high during exactly that cycle, register
    and STATUS updates are visible from the next one. A counter snapshot is taken in the cycle the
    AR transfer is accepted.
    """

    def __init__(self, inc_bits: int = COUNTER_INC_BITS):
        if not isinstance(inc_bits, int) or not 1 <= inc_bits <= 32:
            raise ValueError(f"inc_bits must be an int in [1, 32], got {inc_bits!r}")
        self.inc_bits = inc_bits
        super().__init__({
            "axi": In(axi4_lite_signature(CSR_ADDR_BITS)),
            "start": Out(1),
            "soft_reset": Out(1),
            "prog_base": Out(isa.HBM_ADDR_BITS),
            "prog_len": Out(32),
            "watchdog": Out(32),
            "busy": In(1),
            "done": In(1),
            "error": In(1),
            "error_code": In(8),
            "error_pc": In(32),
            "pc": In(32),
            "counter_inc": In(data.ArrayLayout(unsigned(inc_bits), NUM_COUNTERS)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.slave = slave = AXI4LiteSlave(CSR_ADDR_BITS)
        wiring.connect(m, wiring.flipped(self.axi), slave.axi)
        bus = slave.bus

        # ---- storage of RW / W1C fields, keyed by (register, field) ----
        store: dict[tuple[str, str], Signal] = {}
        for r in REGISTERS:
            for f in r.fields:
                if f.access in ("RW", "W1C"):
                    store[r.name, f.name] = Signal(f.width, init=f.reset, name=f"{r.name.lower()}_{f.name}")

        # ---- RO field sources ----
        err_code = Signal(8)  # latched with the first error
        err_pc = Signal(32)
        ro_source = {
            ("STATUS", "busy"): self.busy,
            ("ERROR_CODE", "code"): err_code,
            ("ERROR_PC", "pc"): err_pc,
            ("PC", "pc"): self.pc,
        }

        def field_value(r: Register, f: CsrField):
            if f.access == "W1P":
                return 0
            if f.access in ("RW", "W1C"):
                return store[r.name, f.name]
            src = ro_source.get((r.name, f.name))
            return f.reset if src is None else src

        # strobed write mask: bit b writable iff its byte's strobe is set
        wmask = Signal(32)
        m.d.comb += wmask.eq(Cat(*(bus.w_strb[i].replicate(8) for i in range(4))))
        wbits = Signal(32)
        m.d.comb += wbits.eq(bus.w_data & wmask)

        pulses = {("CTRL", "start"): self.start, ("CTRL", "soft_reset"): self.soft_reset}
        clear_counters = Signal()
        pulses["CTRL", "clear_counters"] = clear_counters
        sw_clear = {}  # (reg, field) -> comb signal: software W1C of this field this cycle
        for r in REGISTERS:
            for f in r.fields:
                if f.access == "W1C":
                    sw_clear[r.name, f.name] = Signal(f.width, name=f"{r.name.lower()}_{f.name}_w1c")

        # ---- write decode ----
        counters_hit_w = (bus.w_addr >= COUNTER_BASE) & (bus.w_addr < COUNTER_BASE + 8 * NUM_COUNTERS)
        m.d.comb += bus.w_err.eq(1)
        with m.Switch(bus.w_addr):
            for r in REGISTERS:
                with m.Case(r.offset):
                    m.d.comb += bus.w_err.eq(0)
                    for f in r.fields:
                        bits = wbits[f.lsb:f.lsb + f.width]
                        mask = wmask[f.lsb:f.lsb + f.width]
                        with m.If(bus.w_en):
                            if f.access == "RW":
                                reg = store[r.name, f.name]
                                m.d.sync += reg.eq((reg & ~mask) | bits)
                            elif f.access == "W1C":
                                m.d.comb += sw_clear[r.name, f.name].eq(bits)
                            elif f.access == "W1P":
                                m.d.comb += pulses[r.name, f.name].eq(bits)
            with m.Default():
                with m.If(counters_hit_w):
                    m.d.comb += bus.w_err.eq(0)  # counters are RO: ignored, OKAY

        # ---- status / error latching (hardware set wins over software clear) ----
        done, error = store["STATUS", "done"], store["STATUS", "error"]
        with m.If(self.start | sw_clear["STATUS", "done"]):
            m.d.sync += done.eq(0)
        with m.If(self.done):
            m.d.sync += done.eq(1)
        clearing_error = self.start | sw_clear["STATUS", "error"]
        with m.If(clearing_error):
            m.d.sync += [error.eq(0), err_code.eq(0), err_pc.eq(0)]
        with m.If(self.error & (~error | clearing_error)):
            m.d.sync += [error.eq(1), err_code.eq(self.error_code), err_pc.eq(self.error_pc)]
        with m.Elif(self.error):
            m.d.sync += error.eq(1)
        m.d.comb += self.irq.eq((done & store["IRQ_ENABLE", "done"]) | (error & store["IRQ_ENABLE", "error"]))

        # ---- outputs to the controller ----
        m.d.comb += [
            self.prog_base.eq(store["PROG_BASE_LO", "addr"] | (store["PROG_BASE_HI", "addr"] << 32)),
            self.prog_len.eq(store["PROG_LEN", "count"]),
            self.watchdog.eq(store["WATCHDOG", "cycles"]),
        ]

        # ---- performance counters with per-counter HI shadow ----
        counters = [Signal(64, name=f"cnt_{n.lower()}") for n, _ in COUNTERS]
        shadows = [Signal(32, name=f"cnt_{n.lower()}_hi_shadow") for n, _ in COUNTERS]
        for i, c in enumerate(counters):
            with m.If(clear_counters):
                m.d.sync += c.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + self.counter_inc[i])

        # ---- read decode: fixed registers by a case, counters by index ----
        cidx = Signal(range(NUM_COUNTERS + 1))
        in_counters = Signal()
        m.d.comb += [
            in_counters.eq((bus.r_addr >= COUNTER_BASE) & (bus.r_addr < COUNTER_BASE + 8 * NUM_COUNTERS)),
            cidx.eq((bus.r_addr - COUNTER_BASE)[3:]),
        ]
        read_hi = bus.r_addr[2]
        m.d.comb += bus.r_err.eq(1)
        with m.Switch(bus.r_addr):
            for r in REGISTERS:
                with m.Case(r.offset):
                    value = 0
                    for f in r.fields:
                        value = value | (field_value(r, f) << f.lsb)
                    m.d.comb += [bus.r_err.eq(0), bus.r_data.eq(value)]
            with m.Default():
                with m.If(in_counters):
                    m.d.comb += [
                        bus.r_err.eq(0),
                        bus.r_data.eq(Mux(read_hi, Array(shadows)[cidx], Array(counters)[cidx][:32])),
                    ]
        # LO read of counter i: copy bits [63:32] of the same cycle's value into its shadow
        for i in range(NUM_COUNTERS):
            with m.If(bus.r_en & in_counters & ~read_hi & (cidx == i)):
                m.d.sync += shadows[i].eq(counters[i][32:])
        return m
