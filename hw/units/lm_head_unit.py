"""PE_LINEAR with ``wfmt = FP16`` (the LM head): fp16 rows times an fp16 vector, one BFP dot per row.

Semantics (bit for bit the golden ISS ``_op_pe_linear``, FP16 branch)::

    x = fp16 [K] from scratch (src_buf, src_off)
    W = fp16 [N, K] row-major, a striped stream from w_addr over nports channels
    y = qk_bfp(x, W)           binary32 [N] to scratch (dst_buf, dst_off), exactly 4N bytes

``qk_bfp`` per row is the shared :class:`~ternopu.hw.units.row_dot.BfpRowDot` (the ROUTER's
datapath). The stream (docs/compiler.md): 32-byte beat ``i`` of ``W`` lies in channel
``c = (port + i mod nports) mod 32`` at channel-local byte ``local + (i div nports) * 32``
(``local = w_addr - port * channel_bytes``) and is read through port ``c`` at the global address
``c * channel_bytes + local + ...``. A row of ``K`` elements is ``K/16`` beats, so the rows follow
each other in the stream with no padding.

Dataflow
--------
::

    ctl.cmd -> CHECK -> DIV (beats / nports, 29 cycles) -> XLOAD: x -> x memory (one 512-bit
    block per entry, NaN/Inf check) [-> TAIL: old last dst word when N % 8 != 0] -> ISSUE: one
    DMA command per stripe lane (its whole share) -> RUN:

    rd[port of lane l] --beat--> wreg (2 beats = 1 block) --+--> BfpRowDot --> packer --> sp_w
    x memory[block index] ---------------------------------+     (8 binary32 per scratch word)

The lanes are consumed in stripe order (beat ``i`` from lane ``i mod nports``); each port's DMA
keeps its own bursts in flight, so the stripe delivers up to ``nports`` beats per cycle and the
unit takes one.

Throughput
----------
One weight beat per cycle while a row streams (a block every 2 cycles), then the row's
alignment pass and tail (:data:`~ternopu.hw.units.row_dot.TAIL_CYCLES` + ``K/32`` cycles) during
which the stream waits: ``N * (K/16 + K/32 + TAIL_CYCLES)`` cycles for the instruction plus the
x load and the DMA latency. This is one port's bandwidth, far from what the LM head's size
(``2 N K`` bytes, the largest single read of a decode step) deserves; a wide LM-head engine is
listed among the performance gaps in the README. The unit is correct first.

Errors (ErrorCode on ``done``), in this order: ``BUF_RANGE`` (x past the buffer); ``SHAPE``
(``K % 32 != 0``, as the golden ``qk_bfp`` raises; unit limits: ``K > max_k``, a lane share above
the DMA's ``beats`` field; the port field not the channel of ``w_addr``); ``HBM_RANGE`` (a stripe
channel not present, or a lane's run past its channel); ``SHAPE`` (NaN/Inf in x); ``BUF_RANGE``
(y past the buffer); then while streaming: ``SHAPE`` (NaN/Inf in a weight row, or a result outside
binary32's normal range, which the reconstruction does not produce: the golden model returns a
subnormal there), ``AXI_RESP`` (SLVERR/DECERR). Errors found before the stream write nothing;
errors found while streaming leave the rows before them written (the ISS writes nothing; the
program stops either way). After ``abort`` or a DMA error the unit swallows the rest of every
lane's data and waits for all completions before ``done``: never a hang.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP
from ternopu.golden.errors import ConfigError

from .. import isa
from ..dma import dma_error_code
from ..scratchpad import ScratchReadSignature, ScratchWriteSignature
from ..unit_port import DmaReadClientSignature, UnitPortSignature
from .row_dot import BfpRowDot, fp16_nonfinite

__all__ = ["LMHeadUnit", "PE_LINEAR_OPCODE", "DIV_CYCLES", "is_fp16_linear"]

PE_LINEAR_OPCODE = isa.OPCODE_BY_NAME["PE_LINEAR"].number
_BEATS_BITS = 29          # N * K / 16 < 2**17 * 2**16 / 16
#: Cycles of the stripe division (beats / nports) at the start of every instruction.
DIV_CYCLES = _BEATS_BITS


def is_fp16_linear(payload):
    """UnitMux dispatch condition: a PE_LINEAR instruction with FP16 weights."""
    return payload.instr.pe_linear.wfmt == isa.WeightFormat.FP16


class LMHeadUnit(wiring.Component):
    """PE_LINEAR over fp16 weight rows (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        Slot geometry; ``ctx.channel_bytes`` must be a power of two, DMA words 256 bits.
    max_k : int
        Largest ``K`` (a multiple of 32): sizes the x memory (``max_k / 32`` words of 512 bits) and
        the row dot product's partial memory.

    Ports
    -----
    ctl : In(UnitPortSignature()); rd : Out(DmaReadClientSignature).array(ctx.ports);
    sp_r : Out(ScratchReadSignature(ctx)); sp_w : Out(ScratchWriteSignature(ctx))
    """

    def __init__(self, ctx, max_k: int = 8192):
        mem = ctx.channel_bytes
        if mem & (mem - 1):
            raise ConfigError(f"LMHeadUnit: bytes per HBM port must be a power of two, got {mem}")
        if ctx.dma.data_width != 256:
            raise ConfigError(f"LMHeadUnit: needs 256-bit DMA words, got {ctx.dma.data_width}")
        blk = DEFAULT_BFP.block
        if not isinstance(max_k, int) or max_k < blk or max_k % blk or max_k > 65535:
            raise ConfigError(f"LMHeadUnit.max_k: a multiple of {blk} in [{blk}, 65535], got {max_k!r}")
        self.ctx, self.max_k = ctx, max_k
        self.max_blocks = max_k // blk
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "sp_w": Out(ScratchWriteSignature(ctx)),
        })

    def elaborate(self, platform):  # noqa: C901 - one sequencer, documented in the module docstring
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        P = ctx.ports
        cb = ctx.channel_bytes.bit_length() - 1
        i = ctl.cmd.payload.instr.pe_linear
        bw = ctx.dma.beats_width

        # ---- latched fields ------------------------------------------------------------------------
        n = Signal(17)
        k = Signal(16)
        nports = Signal(6)
        port_f = Signal(5)
        w_addr = Signal(isa.HBM_ADDR_BITS)
        src_off, dst_off = Signal(20), Signal(20)
        src = Signal(range(ctx.sp_words + 1))
        dst = Signal(range(ctx.sp_words + 1))
        code = Signal(isa.ErrorCode)
        chan = w_addr >> cb
        local = w_addr & (ctx.channel_bytes - 1)
        nb = Signal(range(self.max_blocks + 1))          # blocks per row
        m.d.comb += nb.eq(k >> 5)

        # ---- stripe division: beats = q * nports + r -----------------------------------------------
        beats = Signal(_BEATS_BITS)
        num = Signal(_BEATS_BITS)
        q = Signal(_BEATS_BITS)
        r = Signal(7)
        dcount = Signal(range(_BEATS_BITS + 1))
        rows = Signal(_BEATS_BITS)        # ceil(beats / nports): a lane's longest run
        m.d.comb += rows.eq(q + (r != 0))

        # ---- DMA clients -----------------------------------------------------------------------------
        lane = Signal(6)                  # ISSUE: lane being issued; RUN: lane of the next beat
        lane_port = Signal(5)
        m.d.comb += lane_port.eq(port_f + lane)           # mod 32 by the width
        cmd_valid = Signal()
        cmd_ready = Signal()
        share = Signal(_BEATS_BITS)
        m.d.comb += share.eq(q + (lane < r))
        take = Signal()
        flush = Signal()
        d_valid = Signal()
        d_data = Signal(256)
        n_done = Signal(range(P + 1))
        first_err = Signal(isa.ErrorCode)
        dones = []
        for p in range(P):
            c = self.rd[p]
            sel = lane_port == p
            m.d.comb += [c.cmd.valid.eq(cmd_valid & sel), c.cmd.payload.rows.eq(1),
                         c.cmd.payload.addr.eq((lane_port << cb) + local),      # global address
                         c.cmd.payload.beats.eq(share),
                         c.done.ready.eq(1), c.data.ready.eq(flush | (take & sel))]
            with m.If(sel):
                m.d.comb += [cmd_ready.eq(c.cmd.ready), d_valid.eq(c.data.valid), d_data.eq(c.data.payload.data)]
            dones.append(c.done.valid)
        m.d.comb += n_done.eq(sum(dones))
        err_now = Signal(isa.ErrorCode)
        for p in reversed(range(P)):
            c = self.rd[p]
            with m.If(c.done.valid & (c.done.payload != 0)):
                m.d.comb += err_now.eq(dma_error_code(c.done.payload))
        outstanding = Signal(6)
        m.d.sync += outstanding.eq(outstanding + (cmd_valid & cmd_ready) - n_done)
        with m.If((err_now != 0) & (first_err == 0)):
            m.d.sync += first_err.eq(err_now)

        # ---- x memory: one BFP block (32 fp16, two scratch words) per entry --------------------------
        m.submodules.xmem = xmem = Memory(shape=unsigned(512), depth=self.max_blocks, init=[])
        xw = xmem.write_port(granularity=256)
        xr = xmem.read_port()
        xi = Signal(range(ctx.sp_words + 2))     # scratch words requested
        xc = Signal(range(ctx.sp_words + 2))     # scratch words received
        xwords = Signal(range(2 * self.max_blocks + 1))
        m.d.comb += xwords.eq(k >> 4)
        xbad = Signal()
        m.d.comb += [xw.addr.eq(xc >> 1), xw.data.eq(Cat(self.sp_r.data, self.sp_r.data)),
                     xw.en.eq(Mux(xc[0], 0b10, 0b01) & self.sp_r.rvalid.replicate(2))]

        # ---- block assembly and the row dot product ---------------------------------------------------
        m.submodules.dot = dot = BfpRowDot(self.max_blocks)
        wreg = Signal(512)
        wc = Signal(2)
        xb = Signal(range(self.max_blocks + 1))   # block of the row being assembled
        left = Signal(_BEATS_BITS)                # beats still to take
        running = Signal()
        fire = Signal()
        m.d.comb += [dot.i.valid.eq(running & (wc == 2) & ~flush), dot.i.payload.x.eq(xr.data),
                     dot.i.payload.w.eq(wreg), dot.i.payload.last.eq(xb + 1 == nb),
                     fire.eq(dot.i.valid & dot.i.ready)]
        xb_next = Mux(xb + 1 == nb, 0, xb + 1)
        m.d.comb += xr.addr.eq(Mux(fire, xb_next, xb))
        m.d.comb += take.eq(running & ~flush & (left != 0) & ((wc != 2) | fire))
        got = take & d_valid
        with m.If(fire):
            m.d.sync += xb.eq(xb_next)
        with m.If(got):
            m.d.sync += [left.eq(left - 1), lane.eq(Mux(lane + 1 == nports, 0, lane + 1))]
        with m.If(fire & got):
            m.d.sync += [wc.eq(1), wreg[:256].eq(d_data)]
        with m.Elif(fire):
            m.d.sync += wc.eq(0)
        with m.Elif(got):
            m.d.sync += wc.eq(wc + 1)
            with m.If(wc == 0):
                m.d.sync += wreg[:256].eq(d_data)
            with m.Else():
                m.d.sync += wreg[256:].eq(d_data)

        # ---- outputs -> scratch: 8 binary32 per word; a partial last word keeps the old lanes ------
        n_out = Signal(17)
        slot = Signal(3)
        owr = Signal(256)
        tailw = Signal(256)
        w_pend = Signal()
        w_word = Signal(range(ctx.sp_words + 1))
        wbad = Signal()
        m.d.comb += [self.sp_w.addr.eq(w_word), self.sp_w.data.eq(owr), self.sp_w.req.eq(w_pend),
                     dot.o.ready.eq(~w_pend)]
        with m.If(self.sp_w.req & self.sp_w.gnt):
            m.d.sync += [w_pend.eq(0), w_word.eq(w_word + 1)]
        with m.If(dot.o.valid & dot.o.ready):
            m.d.comb += ctl.progress.eq(1)
            word = Signal(256)
            m.d.comb += word.eq(owr)
            with m.If(slot == 0):         # a new word starts from the old contents (tail merge)
                m.d.comb += word.eq(tailw)
            m.d.sync += [n_out.eq(n_out + 1), slot.eq(slot + 1), owr.eq(word),
                         wbad.eq(wbad | dot.o.payload.nonfinite | dot.o.payload.range_error)]
            for j in range(8):
                with m.If(slot == j):
                    m.d.sync += owr[32 * j:32 * (j + 1)].eq(dot.o.payload.value)
            with m.If((slot == 7) | (n_out + 1 == n)):
                m.d.sync += w_pend.eq(~flush)

        # ---- up-front checks -----------------------------------------------------------------------------
        lanes_bad = (chan >= P) | ((chan + nports > P) if P < 32 else 0)
        bad_shape = (k[:5] != 0) | (k > self.max_k) | (port_f != chan)
        bad_dst = (dst_off >> 5) + ((n + 7) >> 3) > ctx.buf_words

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.comb += dot.clear.eq(1)
                    m.d.sync += [n.eq(i.rows), k.eq(i.cols), nports.eq(i.nports), port_f.eq(i.port),
                                 w_addr.eq(i.w_addr), src_off.eq(i.src_off), dst_off.eq(i.dst_off),
                                 src.eq(i.src_buf * ctx.buf_words + (i.src_off >> 5)),
                                 dst.eq(i.dst_buf * ctx.buf_words + (i.dst_off >> 5)),
                                 code.eq(0), flush.eq(0), first_err.eq(0), xbad.eq(0), wbad.eq(0),
                                 running.eq(0), wc.eq(0), xb.eq(0), lane.eq(0),
                                 n_out.eq(0), slot.eq(0), xi.eq(0), xc.eq(0), tailw.eq(0)]
                    with m.If((ctl.cmd.payload.instr.header.opcode != PE_LINEAR_OPCODE)
                              | ~is_fp16_linear(ctl.cmd.payload)):
                        m.d.sync += code.eq(isa.ErrorCode.ILLEGAL_OPCODE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [beats.eq(n * k[4:]), num.eq(n * k[4:]), q.eq(0), r.eq(0), dcount.eq(0)]
                with m.If((src_off >> 5) + ((k + 15) >> 4) > ctx.buf_words):
                    m.d.sync += code.eq(isa.ErrorCode.BUF_RANGE)
                    m.next = "DONE"
                with m.Elif(bad_shape):
                    m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                    m.next = "DONE"
                with m.Else():
                    m.next = "DIV"
            with m.State("DIV"):
                # restoring division, one quotient bit per cycle (MSB first)
                rr = Cat(num[-1], r)
                ge = rr >= nports
                m.d.sync += [num.eq(num << 1), r.eq(Mux(ge, rr - nports, rr)), q.eq(Cat(ge, q)),
                             dcount.eq(dcount + 1)]
                with m.If(dcount == _BEATS_BITS - 1):
                    m.next = "CHECK2"
            with m.State("CHECK2"):
                with m.If(flush):          # aborted before the stream
                    m.next = "DONE"
                with m.Elif(rows >= (1 << bw)):
                    m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                    m.next = "DONE"
                with m.Elif(lanes_bad | (local + (rows << 5) > ctx.channel_bytes)):
                    m.d.sync += code.eq(isa.ErrorCode.HBM_RANGE)
                    m.next = "DONE"
                with m.Else():
                    m.next = "XLOAD"
            with m.State("XLOAD"):
                m.d.comb += [self.sp_r.req.eq(xi < xwords), self.sp_r.addr.eq(src + xi), ctl.progress.eq(1)]
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += xi.eq(xi + 1)
                with m.If(self.sp_r.rvalid):
                    m.d.sync += [xc.eq(xc + 1), xbad.eq(xbad | fp16_nonfinite(self.sp_r.data, 16))]
                with m.If(xc == xwords):
                    with m.If(xbad):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                        m.next = "DONE"
                    with m.Elif(bad_dst):
                        m.d.sync += code.eq(isa.ErrorCode.BUF_RANGE)
                        m.next = "DONE"
                    with m.Elif(n[:3] != 0):
                        m.d.sync += xi.eq(0)
                        m.next = "TAIL"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("TAIL"):
                # the last output word is partial: keep its other lanes (the ISS writes 4N bytes)
                m.d.comb += [self.sp_r.req.eq(xi == 0), self.sp_r.addr.eq(dst + (n >> 3))]
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += xi.eq(1)
                with m.If(self.sp_r.rvalid):
                    m.d.sync += tailw.eq(self.sp_r.data)
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                # one command per stripe lane with a non-empty share (beats < nports leaves some empty)
                m.d.comb += cmd_valid.eq(share != 0)
                with m.If((share == 0) | cmd_ready):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += lane.eq(lane + 1)
                    with m.If(lane + 1 == nports):
                        m.d.sync += [lane.eq(0), left.eq(beats), running.eq(1), w_word.eq(dst)]
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(got):
                    m.d.comb += ctl.progress.eq(1)
                with m.If(((n_out == n) | flush) & ~w_pend & (outstanding == 0) & (n_done == 0)):
                    m.d.sync += running.eq(0)
                    with m.If(first_err != 0):
                        m.d.sync += code.eq(first_err)
                    with m.Elif(flush):
                        m.d.sync += code.eq(isa.ErrorCode.NONE)     # aborted
                    with m.Elif(wbad):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"

        # a DMA error or abort: swallow the rest of every lane, write nothing more
        with m.If((err_now != 0) | ctl.abort):
            m.d.sync += flush.eq(1)
        return m
