"""ROUTER execution sub-unit of the PE slot: BFP dot product, binary32 bias add, skip bit.

Semantics (bit for bit the golden ISS ``_op_router``)::

    x      = fp16 [dim] from scratch (src_buf, src_off)
    w      = fp16 [dim] at HBM w_addr, bias = binary32 at w_addr + align_up(2*dim, 32)
    score  = qk_bfp(x, w[None])[0] + bias            (one binary32 RNE add)
    bitmask[2*layer + block] = score < threshold     (IEEE compare: NaN -> 0)

``qk_bfp`` (golden :mod:`ternopu.golden.pe`) is the shared :class:`~ternopu.hw.units.row_dot.BfpRowDot`
(BFP conversion of both vectors, exact block products, alignment to the largest block exponent in
a second pass over a partial memory of ``max_dim / 32`` entries, one binary32 rounding).

Memory access
-------------
The weights and the bias are one linear read of ``dim/16 + 1`` beats (the bias beat follows the
weights because ``align_up(2*dim)`` is whole beats) on the HBM port of w_addr's channel: global
address = ``channel * mem_bytes + local`` with ``mem_bytes = ctx.channel_bytes`` (the bytes behind
one port, a power of two), one DMA command (the DMA cuts it into bursts). ``x`` is read from the
scratchpad two words (one BFP block) at a time, overlapped with the DMA beats.

Errors (ErrorCode on ``done``), checked in the ISS order:
``BUF_RANGE`` (x past the buffer), ``HBM_RANGE`` (channel not present or the read runs past the
channel), ``SHAPE`` (``dim % 32 != 0``, ``dim > max_dim``, a NaN/Inf element in x or w),
``AXI_RESP`` (SLVERR/DECERR). Nothing is written to the bitmask on an error.

Timing: per 32-element block about 3 cycles (2 scratch reads / 2 DMA beats, overlapped), then
``dim/32`` cycles of alignment and :data:`RECON_CYCLES` for the reconstruction and the add.
Not pipelined across instructions (a router runs once per block per token: negligible time).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.errors import ConfigError

from .. import isa
from ..dma import dma_error_code
from ..fpu import FADD_STAGES, Pipe, f32_lt, fadd, is_nonfinite
from .row_dot import TAIL_CYCLES, BfpRowDot
from ..scratchpad import ScratchReadSignature
from ..unit_port import DmaReadClientSignature, MaskWriteSignature, UnitPortSignature

__all__ = ["RouterUnit", "ROUTER_OPCODE", "RECON_CYCLES"]

ROUTER_OPCODE = isa.OPCODE_BY_NAME["ROUTER"].number
#: Cycles from the dot product's result to the decision: binary32 add + compare register.
ADD_CYCLES = FADD_STAGES + 1
#: Cycles from the last block to the decision (besides one alignment cycle per block).
RECON_CYCLES = TAIL_CYCLES + ADD_CYCLES


class RouterUnit(wiring.Component):
    """The ROUTER instruction (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        Slot geometry; ``ctx.channel_bytes`` (bytes per HBM port) must be a power of two.
    max_dim : int
        Largest ``dim`` (multiple of 32); sizes the partial-sum memory (``max_dim / 32`` words of
        44 bits) and the accumulator. Larger ``dim`` completes with ``SHAPE``.
    fmt : BFPFormat
        Must be the golden default (32, 14) the converter and the ISS use.

    Ports
    -----
    ctl : In(UnitPortSignature()); rd : Out(DmaReadClientSignature).array(ctx.ports);
    sp_r : Out(ScratchReadSignature(ctx)); mask : Out(MaskWriteSignature())
    """

    def __init__(self, ctx, max_dim: int = 8192, fmt: BFPFormat = DEFAULT_BFP):
        mem = ctx.channel_bytes
        if mem & (mem - 1):
            raise ConfigError(f"RouterUnit: bytes per HBM port must be a power of two, got {mem}")
        if fmt != DEFAULT_BFP:
            raise ConfigError(f"RouterUnit: only the default BFP format {DEFAULT_BFP} is supported, got {fmt}")
        if not isinstance(max_dim, int) or max_dim < fmt.block or max_dim % fmt.block or max_dim > 65535:
            raise ConfigError(f"RouterUnit.max_dim: a multiple of {fmt.block} in [{fmt.block}, 65535], "
                              f"got {max_dim!r}")
        if ctx.dma.data_width != 256:
            raise ConfigError(f"RouterUnit: needs 256-bit DMA words, got {ctx.dma.data_width}")
        self.ctx, self.max_dim, self.fmt = ctx, max_dim, fmt
        self.max_blocks = max_dim // fmt.block
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "mask": Out(MaskWriteSignature()),
        })

    def elaborate(self, platform):  # noqa: C901 - one FSM, documented in the module docstring
        m = Module()
        ctx, ctl, fmt = self.ctx, self.ctl, self.fmt
        cb = ctx.channel_bytes.bit_length() - 1
        r = ctl.cmd.payload.instr.router

        # ---- latched instruction -------------------------------------------------------------
        layer = Signal(isa.LAYER_BITS)
        block = Signal()
        threshold = Signal(32)
        nb = Signal(range(self.max_blocks + 1))        # blocks
        b = Signal(range(self.max_blocks + 1))         # blocks sent to the dot product
        port = Signal(range(max(ctx.ports, 2)))
        x_word = Signal(range(ctx.sp_words + 2))
        code = Signal(isa.ErrorCode)

        # ---- up-front checks (comb on the command) -------------------------------------------
        dim = r.dim
        words = (dim + 15) >> 4                          # x words = weight beats
        chan = r.w_addr >> cb
        local = r.w_addr & (ctx.channel_bytes - 1)
        bad_buf = (r.src_off >> 5) + words > ctx.buf_words
        bad_hbm = (chan >= ctx.ports) | (local + ((words + 1) << 5) > ctx.channel_bytes)
        bad_shape = (dim[:5] != 0) | (dim > self.max_dim)

        # ---- DMA client of the current port ---------------------------------------------------
        d_valid = Signal()
        d_data = Signal(256)
        d_ready = Signal()
        done_valid = Signal()
        done_code = Signal(3)
        cmd_valid = Signal()
        cmd_ready = Signal()
        for q in range(ctx.ports):
            c = self.rd[q]
            sel = port == q
            m.d.comb += [c.data.ready.eq(~sel | d_ready), c.done.ready.eq(1),
                         c.cmd.valid.eq(sel & cmd_valid), c.cmd.payload.rows.eq(1)]
            with m.If(sel):
                m.d.comb += [d_valid.eq(c.data.valid), d_data.eq(c.data.payload.data),
                             done_valid.eq(c.done.valid), done_code.eq(c.done.payload),
                             cmd_ready.eq(c.cmd.ready)]
        cmd_addr = Signal(ctx.dma.addr_width)
        cmd_beats = Signal(20)
        for q in range(ctx.ports):
            m.d.comb += [self.rd[q].cmd.payload.addr.eq(cmd_addr), self.rd[q].cmd.payload.beats.eq(cmd_beats)]

        # ---- block datapath: the shared BFP row dot product ----------------------------------
        m.submodules.dot = dot = BfpRowDot(self.max_blocks, fmt)
        xreg = Signal(512)
        wreg = Signal(512)
        m.d.comb += [dot.i.payload.x.eq(xreg), dot.i.payload.w.eq(wreg), dot.i.payload.last.eq(b + 1 == nb)]

        score = Signal(32)
        bias = Signal(32)
        p = Pipe(m, Const(1, 1), "radd")
        total = fadd(p, p.input(score), p.input(bias))
        ssum = Signal(32)
        m.d.comb += ssum.eq(Mux(is_nonfinite(bias), bias, total.sig))   # finite score + inf/NaN bias
        is_nan = (ssum[23:31] == 0xFF) & (ssum[:23] != 0)
        t_nan = (threshold[23:31] == 0xFF) & (threshold[:23] != 0)
        skip = Signal()
        m.d.sync += skip.eq(f32_lt(ssum, threshold) & ~is_nan & ~t_nan)

        # ---- control ------------------------------------------------------------------------
        xi = Signal(2)          # x reads accepted in this block
        xc = Signal(2)          # x words received
        wc = Signal(2)          # weight beats received
        wait = Signal(range(ADD_CYCLES + 2))
        m.d.comb += [self.mask.addr.eq(Cat(block, layer)), self.mask.bit.eq(skip)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.sync += [layer.eq(r.layer), block.eq(r.block), threshold.eq(r.threshold),
                                 nb.eq(dim >> 5), port.eq(chan), code.eq(isa.ErrorCode.NONE),
                                 x_word.eq(r.src_buf * ctx.buf_words + (r.src_off >> 5)),
                                 cmd_addr.eq(r.w_addr), cmd_beats.eq(words + 1),   # global address
                                 b.eq(0), xi.eq(0), xc.eq(0), wc.eq(0)]
                    m.d.comb += dot.clear.eq(1)
                    with m.If(ctl.cmd.payload.instr.header.opcode != ROUTER_OPCODE):
                        m.d.sync += code.eq(isa.ErrorCode.ILLEGAL_OPCODE)
                        m.next = "DONE"
                    with m.Elif(bad_buf):
                        m.d.sync += code.eq(isa.ErrorCode.BUF_RANGE)
                        m.next = "DONE"
                    with m.Elif(bad_hbm):
                        m.d.sync += code.eq(isa.ErrorCode.HBM_RANGE)
                        m.next = "DONE"
                    with m.Elif(bad_shape):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += cmd_valid.eq(1)
                with m.If(cmd_ready):
                    m.d.comb += ctl.progress.eq(1)
                    m.next = "BLOCK"
            with m.State("BLOCK"):
                # x reads and weight beats of one block overlap; the block fires when both are in
                m.d.comb += [self.sp_r.req.eq(xi != 2), self.sp_r.addr.eq(x_word),
                             d_ready.eq(wc != 2)]
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += [xi.eq(xi + 1), x_word.eq(x_word + 1)]
                with m.If(self.sp_r.rvalid):
                    m.d.sync += xc.eq(xc + 1)
                    with m.If(xc == 0):
                        m.d.sync += xreg[:256].eq(self.sp_r.data)
                    with m.Else():
                        m.d.sync += xreg[256:].eq(self.sp_r.data)
                with m.If(d_valid & d_ready):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += wc.eq(wc + 1)
                    with m.If(wc == 0):
                        m.d.sync += wreg[:256].eq(d_data)
                    with m.Else():
                        m.d.sync += wreg[256:].eq(d_data)
                with m.If(ctl.abort):
                    m.next = "ABORT"
                with m.Elif(done_valid):   # a rejected command (range) delivers no data
                    m.d.sync += code.eq(Mux(done_code == 0, isa.ErrorCode.HBM_RANGE, dma_error_code(done_code)))
                    m.next = "DONE"
                with m.Elif((xc == 2) & (wc == 2)):
                    m.d.comb += dot.i.valid.eq(1)
                    with m.If(dot.i.ready):
                        m.d.comb += ctl.progress.eq(1)
                        m.d.sync += [xi.eq(0), xc.eq(0), wc.eq(0), b.eq(b + 1)]
                        with m.If(b + 1 == nb):
                            m.next = "BIAS"
            with m.State("BIAS"):
                m.d.comb += d_ready.eq(1)
                with m.If(done_valid):
                    m.d.sync += code.eq(Mux(done_code == 0, isa.ErrorCode.HBM_RANGE, dma_error_code(done_code)))
                    m.next = "DONE"
                with m.Elif(d_valid):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += bias.eq(d_data[:32])
                    m.next = "DMA_DONE"
            with m.State("DMA_DONE"):
                with m.If(done_valid):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += code.eq(dma_error_code(done_code))
                    m.next = "DOT"
            with m.State("DOT"):
                m.d.comb += dot.o.ready.eq(1)
                with m.If(dot.o.valid):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += [score.eq(dot.o.payload.value), wait.eq(0)]
                    with m.If(code != isa.ErrorCode.NONE):
                        m.next = "DONE"
                    with m.Elif(dot.o.payload.nonfinite):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ADD"
            with m.State("ADD"):
                m.d.comb += ctl.progress.eq(1)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == ADD_CYCLES):
                    m.next = "DONE"
            with m.State("ABORT"):
                # the DMA command cannot be cancelled: swallow its data until its completion
                m.d.comb += d_ready.eq(1)
                with m.If(done_valid):
                    m.d.sync += code.eq(isa.ErrorCode.NONE)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code),
                             self.mask.we.eq(ctl.done.ready & (code == isa.ErrorCode.NONE))]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m
