"""MASK_STORE execution unit (ST queue): the routing bitmask of layers ``0 .. layers-1`` to HBM.

Semantics (``GoldenISS._op_mask_store``): bits ``0 .. 2*layers-1`` of the routing bitmask (bit
``2*layer + block``, 1 = skipped) LSB first -- bit ``i`` is bit ``i % 8`` of byte ``i // 8`` --
zero padded to ``ceil(2*layers / 256)`` 32-byte beats (1 or 2), written at ``hbm_addr``.

Port: the channel of ``hbm_addr`` (a global address, :mod:`ternopu.hw.units.kv_append` "HBM
addressing"); a record that straddles a channel boundary is split there. Errors: ``HBM_RANGE``
(channel not present in the build), ``AXI_RESP``.

Timing: one DMA write command of 1 or 2 beats; the completion is offered after the write
response (the record is visible to the next KV_APPEND / PE_ATTN reading the route history).
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.hw import isa
from ternopu.hw.overlay import SlotContext
from ternopu.hw.unit_port import DmaWriteClientSignature, UnitPortSignature

from .kv_append import HbmBeatEngine, channel_bytes_of

__all__ = ["MaskStoreUnit", "MASK_BITS"]

#: Width of the routing bitmask (2 bits per addressable layer).
MASK_BITS = 2 * isa.MAX_LAYERS


class MaskStoreUnit(wiring.Component):
    """MASK_STORE sub-unit of the ST slot (module docstring).

    Parameters
    ----------
    ctx : SlotContext
    channel_bytes, global_dma_addr
        HBM addressing, as :class:`ternopu.hw.units.kv_append.HbmBeatEngine`.

    Members
    -------
    ctl : In(UnitPortSignature())
    wr : Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports)
    bitmask : In(512)
    """

    def __init__(self, ctx: SlotContext, *, channel_bytes=None, global_dma_addr: bool = False):
        self.ctx = ctx
        self.cb = channel_bytes_of(ctx, channel_bytes)
        self.global_dma_addr = global_dma_addr
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "wr": Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports),
            "bitmask": In(MASK_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        m.submodules.eng = eng = HbmBeatEngine(ctx, channel_bytes=self.cb, global_dma_addr=self.global_dma_addr,
                                               reads=False)
        for q in range(ctx.ports):
            wiring.connect(m, wiring.flipped(self.wr[q]), eng.wr[q])
        m.d.comb += [eng.abort.eq(ctl.abort), ctl.progress.eq(eng.progress)]

        nbits = Signal(range(MASK_BITS + 1))
        addr = Signal(isa.HBM_ADDR_BITS)
        beat = Signal()
        # bits at or above 2*layers are zero
        keep = Signal(MASK_BITS)
        m.d.comb += keep.eq(self.bitmask & ((Const(1, MASK_BITS + 1) << nbits) - 1))
        m.d.comb += eng.wdata.payload.eq(keep.word_select(beat, 256))
        code = Signal(isa.ErrorCode)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    f = ctl.cmd.payload.instr.mask_store
                    m.d.sync += [nbits.eq(f.layers * 2), addr.eq(f.hbm_addr), beat.eq(0)]
                    m.next = "REQ"
            with m.State("REQ"):
                m.d.comb += [eng.req.valid.eq(1), eng.req.payload.write.eq(1),
                             eng.req.payload.addr.eq(addr),
                             eng.req.payload.beats.eq(Mux(nbits > 256, 2, 1))]
                with m.If(eng.req.ready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [eng.wdata.valid.eq(1), eng.done.ready.eq(1)]
                with m.If(eng.wdata.ready):
                    m.d.sync += beat.eq(1)
                with m.If(eng.done.valid):
                    m.d.sync += code.eq(eng.done.payload)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m

