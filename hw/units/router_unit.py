"""ROUTER execution sub-unit of the PE slot: BFP dot product, binary32 bias add, skip bit.

Semantics (bit for bit the golden ISS ``_op_router``)::

    x      = fp16 [dim] from scratch (src_buf, src_off)
    w      = fp16 [dim] at HBM w_addr, bias = binary32 at w_addr + align_up(2*dim, 32)
    score  = qk_bfp(x, w[None])[0] + bias            (one binary32 RNE add)
    bitmask[2*layer + block] = score < threshold     (IEEE compare: NaN -> 0)

``qk_bfp`` (golden :mod:`ternopu.golden.pe`): both vectors go through the BFP converter
(:class:`ternopu.hw.bfp.BFPConverter`, 32-element blocks, 14-bit mantissas), each block gives an
exact integer ``I_b = sum m_x m_w`` with exponent ``e_b = ex_b + ew_b``; the blocks are aligned to
``e_ref = max_b e_b - ALIGN_GUARD_BITS`` with RNE right shifts and summed exactly, and the sum is
rounded once to binary32. The alignment needs the maximum over *all* blocks, so the unit keeps the
block partials in a small memory (``max_dim / 32`` entries) and aligns them in a second pass.

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
``dim/32 + 2`` cycles of alignment, :data:`RECON_CYCLES` for the reconstruction and the add.
Not pipelined across instructions (a router runs once per block per token: negligible time).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.errors import ConfigError
from ternopu.golden.pe import ALIGN_GUARD_BITS, aligned_acc_bits

from .. import isa
from ..bfp import BFP_EXP_BITS, BFPConverter, rne_shift_signed
from ..dma import dma_error_code
from ..fpu import FADD_STAGES, Pipe, f32_lt, fadd, is_nonfinite
from ..pe_array import ScaledToFloat32
from ..scratchpad import ScratchReadSignature
from ..unit_port import DmaReadClientSignature, MaskWriteSignature, UnitPortSignature

__all__ = ["RouterUnit", "ROUTER_OPCODE", "RECON_CYCLES"]

ROUTER_OPCODE = isa.OPCODE_BY_NAME["ROUTER"].number
#: Cycles from the aligned sum to the decision: reconstruction + binary32 add + compare register.
RECON_CYCLES = ScaledToFloat32.LATENCY + FADD_STAGES + 1
_FP16_ONE = 0x3C00   # ScaledToFloat32 with scale 1.0 is the plain acc * 2**e reconstruction


def _fp16_nonfinite(word: int | object, n: int):
    """1 if any of the ``n`` FP16 elements packed in ``word`` has an all-ones exponent field."""
    return Cat(*[word[16 * j + 10:16 * j + 15] == 0x1F for j in range(n)]).any()


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
        self.qm_bits = (fmt.block * fmt.mant_max ** 2).bit_length() + 1
        self.acc_bits = aligned_acc_bits(fmt.block * fmt.mant_max ** 2, self.max_blocks)
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

        # ---- block datapath: two converters, block dot product, partial memory --------------
        m.submodules.cx = cx = BFPConverter(fmt)
        m.submodules.cw = cw = BFPConverter(fmt)
        xreg = Signal(512)
        wreg = Signal(512)
        fire = Signal()
        m.d.comb += [cx.i.payload.eq(xreg), cw.i.payload.eq(wreg), cx.i.valid.eq(fire),
                     cw.i.valid.eq(fire), cx.o.ready.eq(1), cw.o.ready.eq(1)]
        prod = [cx.o.payload.mant[j] * cw.o.payload.mant[j] for j in range(fmt.block)]
        while len(prod) > 1:
            prod = [prod[i] + prod[i + 1] for i in range(0, len(prod) - 1, 2)] + (
                [prod[-1]] if len(prod) % 2 else [])
        p_val = Signal()
        p_sum = Signal(signed(self.qm_bits))
        p_exp = Signal(signed(BFP_EXP_BITS + 1))
        m.d.sync += [p_val.eq(cx.o.valid), p_sum.eq(prod[0]),
                     p_exp.eq(cx.o.payload.exp + cw.o.payload.exp)]
        m.submodules.parts = parts = Memory(shape=unsigned(self.qm_bits + BFP_EXP_BITS + 1),
                                            depth=self.max_blocks, init=[])
        pw = parts.write_port()
        pr = parts.read_port()
        n_written = Signal(range(self.max_blocks + 1))
        e_max = Signal(signed(BFP_EXP_BITS + 1))
        m.d.comb += [pw.en.eq(p_val), pw.addr.eq(n_written), pw.data.eq(Cat(p_sum, p_exp))]
        with m.If(p_val):
            m.d.sync += [n_written.eq(n_written + 1),
                         e_max.eq(Mux((n_written == 0) | (p_exp > e_max), p_exp, e_max))]

        # ---- second pass: alignment and sum ----------------------------------------------------
        e_ref = Signal(signed(BFP_EXP_BITS + 2))
        m.d.comb += e_ref.eq(e_max - ALIGN_GUARD_BITS)
        rd_i = Signal(range(self.max_blocks + 1))
        rd_v = Signal()
        acc = Signal(signed(self.acc_bits))
        part_I = pr.data[:self.qm_bits].as_signed()
        part_e = pr.data[self.qm_bits:].as_signed()
        shifted = rne_shift_signed(m, part_I, e_ref - part_e, ALIGN_GUARD_BITS, self.qm_bits + 1, "al")
        m.d.comb += pr.addr.eq(rd_i)
        with m.If(rd_v):
            m.d.sync += acc.eq(acc + shifted)

        # ---- reconstruction, bias add, compare ------------------------------------------------
        m.submodules.recon = recon = ScaledToFloat32(self.acc_bits)
        rec_go = Signal()
        m.d.comb += [recon.acc.eq(acc), recon.scale.eq(_FP16_ONE), recon.exp.eq(e_ref),
                     recon.i_valid.eq(rec_go)]
        score = Signal(32)
        bias = Signal(32)
        with m.If(recon.o_valid):
            m.d.sync += score.eq(recon.o)
        p = Pipe(m, Const(1, 1), "radd")
        total = fadd(p, p.input(score), p.input(bias))
        ssum = Signal(32)
        m.d.comb += ssum.eq(Mux(is_nonfinite(bias), bias, total.sig))   # finite score + inf/NaN bias
        is_nan = (ssum[23:31] == 0xFF) & (ssum[:23] != 0)
        t_nan = (threshold[23:31] == 0xFF) & (threshold[:23] != 0)
        skip = Signal()
        m.d.sync += skip.eq(f32_lt(ssum, threshold) & ~is_nan & ~t_nan)

        # ---- control ------------------------------------------------------------------------
        b = Signal(range(self.max_blocks + 1))
        xi = Signal(2)          # x reads accepted in this block
        xc = Signal(2)          # x words received
        wc = Signal(2)          # weight beats received
        nonfin = Signal()
        wait = Signal(4)
        m.d.comb += [self.mask.addr.eq(Cat(block, layer)), self.mask.bit.eq(skip)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.sync += [layer.eq(r.layer), block.eq(r.block), threshold.eq(r.threshold),
                                 nb.eq(dim >> 5), port.eq(chan), code.eq(isa.ErrorCode.NONE),
                                 x_word.eq(r.src_buf * ctx.buf_words + (r.src_off >> 5)),
                                 cmd_addr.eq(r.w_addr), cmd_beats.eq(words + 1),   # global address
                                 b.eq(0), xi.eq(0), xc.eq(0), wc.eq(0), nonfin.eq(0),
                                 n_written.eq(0), acc.eq(0)]
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
                    m.d.comb += [fire.eq(1), ctl.progress.eq(1)]
                    m.d.sync += [xi.eq(0), xc.eq(0), wc.eq(0), b.eq(b + 1),
                                 nonfin.eq(nonfin | _fp16_nonfinite(xreg, 32) | _fp16_nonfinite(wreg, 32))]
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
                    m.d.sync += [code.eq(dma_error_code(done_code)), rd_i.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # the last block's partial leaves the converters BFPConverter.LATENCY + 1 cycles
                # after it fired
                with m.If(n_written == nb):
                    with m.If(code != isa.ErrorCode.NONE):
                        m.next = "DONE"
                    with m.Elif(nonfin):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += rd_i.eq(0)
                        m.next = "ALIGN"
            with m.State("ALIGN"):
                m.d.comb += ctl.progress.eq(1)
                m.d.sync += [rd_i.eq(rd_i + 1), rd_v.eq(rd_i < nb)]
                with m.If(rd_i == nb + 1):
                    m.d.sync += rd_v.eq(0)
                    m.d.comb += rec_go.eq(1)
                    m.d.sync += wait.eq(0)
                    m.next = "RECON"
            with m.State("RECON"):
                m.d.comb += ctl.progress.eq(1)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == RECON_CYCLES + 1):
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
