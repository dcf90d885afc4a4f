"""AXI4-Lite: the signature (amaranth.lib.wiring) and a generic register-file slave.

Signature
---------
:func:`axi4_lite_signature` describes the five AXI4-Lite channels from the *master's* point of
view (a slave port is ``In(axi4_lite_signature(...))``)::

    aw: valid (out), ready (in), addr [addr_width], prot [3]
    w:  valid (out), ready (in), data [32], strb [4]
    b:  valid (in),  ready (out), resp [2]
    ar: valid (out), ready (in), addr [addr_width], prot [3]
    r:  valid (in),  ready (out), data [32], resp [2]

In generated Verilog a slave port named ``axi`` flattens to ``axi__aw__valid``, ``axi__w__strb``,
``axi__r__data`` and so on (see :data:`FLAT_SIGNALS`, used by the cocotb testbench to map the
ports onto cocotbext-axi's names).

Register-file slave
-------------------
:class:`AXI4LiteSlave` terminates the AXI4-Lite handshakes and presents a simple one-cycle
register bus (:func:`reg_bus_signature`) to a register file:

* write: ``w_en`` is a one-cycle pulse with ``w_addr`` (byte address, low 2 bits cleared),
  ``w_data`` and ``w_strb``; the register file answers ``w_err`` combinationally in that cycle
  (1 = unmapped -> SLVERR on B);
* read: ``r_en`` is a one-cycle pulse with ``r_addr``; the register file answers ``r_data`` and
  ``r_err`` combinationally in that cycle. Read side effects (e.g. a counter snapshot) happen on
  the ``r_en`` cycle, exactly once per AR transfer.

Handshake rules (AXI4-Lite, any valid/ready order): AW and W are accepted independently into
one-entry holding registers (``aw.ready`` / ``w.ready`` are high while the holding register is
empty); the write is performed in the cycle both are held and no B response is pending, and B
is raised in the next cycle and held until ``b.ready``. AR is accepted while no R response is
pending (``ar.ready = ~r.valid``); R is raised in the cycle after AR and held until ``r.ready``.
No ready depends combinationally on a valid, so there are no combinational loops through the
interconnect; one write and one read can be in flight at the same time. Every request gets a
response: there is no state in which the slave waits for anything other than the master.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "DATA_BITS", "STRB_BITS", "RESP_OKAY", "RESP_EXOKAY", "RESP_SLVERR", "RESP_DECERR",
    "axi4_lite_signature", "reg_bus_signature", "AXI4LiteSlave", "FLAT_SIGNALS",
]

#: AXI4-Lite data width (this project uses 32-bit registers only).
DATA_BITS = 32
STRB_BITS = DATA_BITS // 8

#: AXI response codes (BRESP / RRESP).
RESP_OKAY = 0b00
RESP_EXOKAY = 0b01
RESP_SLVERR = 0b10
RESP_DECERR = 0b11


def axi4_lite_signature(addr_width: int) -> wiring.Signature:
    """AXI4-Lite signature, master view, ``addr_width``-bit byte addresses, 32-bit data."""
    if not isinstance(addr_width, int) or not 3 <= addr_width <= 64:
        raise ValueError(f"addr_width must be an int in [3, 64], got {addr_width!r}")
    return wiring.Signature({
        "aw": Out(wiring.Signature({
            "valid": Out(1), "ready": In(1), "addr": Out(addr_width), "prot": Out(3)})),
        "w": Out(wiring.Signature({
            "valid": Out(1), "ready": In(1), "data": Out(DATA_BITS), "strb": Out(STRB_BITS)})),
        "b": Out(wiring.Signature({"valid": In(1), "ready": Out(1), "resp": In(2)})),
        "ar": Out(wiring.Signature({
            "valid": Out(1), "ready": In(1), "addr": Out(addr_width), "prot": Out(3)})),
        "r": Out(wiring.Signature({
            "valid": In(1), "ready": Out(1), "data": In(DATA_BITS), "resp": In(2)})),
    })


#: ``{cocotbext-axi signal name: flattened Verilog suffix}`` for a port named ``<prefix>``:
#: the Verilog name is ``f"{prefix}__{suffix}"``.
FLAT_SIGNALS = {
    "awaddr": "aw__addr", "awprot": "aw__prot", "awvalid": "aw__valid", "awready": "aw__ready",
    "wdata": "w__data", "wstrb": "w__strb", "wvalid": "w__valid", "wready": "w__ready",
    "bresp": "b__resp", "bvalid": "b__valid", "bready": "b__ready",
    "araddr": "ar__addr", "arprot": "ar__prot", "arvalid": "ar__valid", "arready": "ar__ready",
    "rdata": "r__data", "rresp": "r__resp", "rvalid": "r__valid", "rready": "r__ready",
}


def reg_bus_signature(addr_width: int) -> wiring.Signature:
    """The slave's register-file side (outputs of the slave = ``Out``)."""
    return wiring.Signature({
        "w_en": Out(1), "w_addr": Out(addr_width), "w_data": Out(DATA_BITS), "w_strb": Out(STRB_BITS),
        "w_err": In(1),
        "r_en": Out(1), "r_addr": Out(addr_width), "r_data": In(DATA_BITS), "r_err": In(1),
    })


class AXI4LiteSlave(wiring.Component):
    """Generic AXI4-Lite slave in front of a register file (see the module docstring).

    Parameters
    ----------
    addr_width : int
        Byte-address width of the slave's window (3..64).

    Ports
    -----
    axi : In(axi4_lite_signature(addr_width))
    bus : Out(reg_bus_signature(addr_width))

    Responses: OKAY, or SLVERR when the register file flags the access (``w_err`` / ``r_err``);
    read data is 0 on SLVERR. ``prot`` is accepted and ignored.
    """

    def __init__(self, addr_width: int):
        self.addr_width = addr_width
        super().__init__({
            "axi": In(axi4_lite_signature(addr_width)),
            "bus": Out(reg_bus_signature(addr_width)),
        })

    def elaborate(self, platform):
        m = Module()
        axi, bus = self.axi, self.bus
        word_mask = ~3  # registers are 32-bit words; byte offsets within a word are ignored

        # ---- write path: independent AW / W holding registers, then one write, then B ----
        aw_full = Signal()
        aw_addr = Signal(self.addr_width)
        w_full = Signal()
        w_data = Signal(DATA_BITS)
        w_strb = Signal(STRB_BITS)
        b_valid = Signal()
        b_resp = Signal(2)

        m.d.comb += [axi.aw.ready.eq(~aw_full), axi.w.ready.eq(~w_full),
                     axi.b.valid.eq(b_valid), axi.b.resp.eq(b_resp)]
        with m.If(axi.aw.valid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(axi.aw.addr & word_mask)]
        with m.If(axi.w.valid & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(axi.w.data), w_strb.eq(axi.w.strb)]

        do_write = aw_full & w_full & ~b_valid
        m.d.comb += [bus.w_en.eq(do_write), bus.w_addr.eq(aw_addr), bus.w_data.eq(w_data),
                     bus.w_strb.eq(w_strb)]
        with m.If(do_write):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), b_valid.eq(1)]
            with m.If(bus.w_err):
                m.d.sync += b_resp.eq(RESP_SLVERR)
            with m.Else():
                m.d.sync += b_resp.eq(RESP_OKAY)
        with m.If(b_valid & axi.b.ready):
            m.d.sync += b_valid.eq(0)

        # ---- read path: AR accepted while no R is pending; register-file read in that cycle ----
        r_valid = Signal()
        r_data = Signal(DATA_BITS)
        r_resp = Signal(2)
        m.d.comb += [axi.ar.ready.eq(~r_valid), axi.r.valid.eq(r_valid),
                     axi.r.data.eq(r_data), axi.r.resp.eq(r_resp)]
        do_read = axi.ar.valid & ~r_valid
        m.d.comb += [bus.r_en.eq(do_read), bus.r_addr.eq(axi.ar.addr & word_mask)]
        with m.If(do_read):
            m.d.sync += r_valid.eq(1)
            with m.If(bus.r_err):
                m.d.sync += [r_data.eq(0), r_resp.eq(RESP_SLVERR)]
            with m.Else():
                m.d.sync += [r_data.eq(bus.r_data), r_resp.eq(RESP_OKAY)]
        with m.If(r_valid & axi.r.ready):
            m.d.sync += r_valid.eq(0)
        return m
