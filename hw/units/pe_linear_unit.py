"""PE_LINEAR execution sub-unit of the PE slot: INT4 GPTQ linear layers on the PE array.

Semantics (bit for bit the golden ISS ``_op_pe_linear``, INT4_GPTQ): ``x`` fp16 ``[K]`` from scratch,
GPTQ ``qweight`` int32 ``[K/8, N]``, fp16 ``scales [K/G, N]`` and int32 ``qzeros [K/G, N/8]`` each a
striped stream over ``nports`` channels from its own address (docs/compiler.md: logical beat ``i`` in
channel ``(p0 + i mod nports) mod ports`` at local ``base + (i div nports)*32``), ``y`` binary32
``[N] = linear_bfp_int4(...)`` to scratch. The arithmetic is the PE array's mode (a)
(:class:`ternopu.hw.pe_array.PEArray`: BFP converter, DSP slices, zero fold, reconstruction).

Dataflow
--------
The PE array is output-stationary per tile of ``lanes`` outputs: it wants, for tile ``t``, every
qweight row ``r`` (``lanes`` words at column ``t*lanes``) in ascending ``k``, and one meta transfer
(the tile's ``lanes/8`` zero words and ``lanes`` scales) per group. The checkpoint layout in HBM is
K-major, so the unit *gathers*: per tile, (1) META: for every group the zero and scale row pieces
of the tile are read into an on-chip meta memory (``max_k / group`` entries of ``lanes * 20`` bits);
(2) QW: for every qweight row the tile's ``lanes*4`` bytes are read and ``rows/8`` of them make one
PE beat; the meta memory feeds the array's meta stream meanwhile. A row piece ("segment") of ``W``
logical beats lies on ``min(W, nports)`` consecutive stripe lanes: one DMA command per lane (its
``ceil`` share of the beats, contiguous in that channel), then the beats are merged back in
logical order and the piece is cut out at its byte offset. A partial last tile (``N % lanes``) is
padded with zero words / zero scales and its extra outputs are dropped.

Throughput (known limit): segments run one after another (command round trip + ``W`` beats each,
one beat per cycle), so a projection takes about ``(K/8) * ceil(N/lanes) * (latency + lanes/8)``
cycles, far below the array's one beat per cycle. The fix is a tile-major weight layout in HBM
(see the report in the unit's PR / docs: qweight as ``[N/lanes, K/8, lanes]``, scales and zeros
per tile likewise), which turns every tile into one long sequential stream over all ports.

Errors (ErrorCode on ``done``), in the ISS order where it has one: ``BUF_RANGE`` (x), ``FIELD_RANGE``
(``wfmt = FP16``: LM-head rows need the PE array's BFP x BFP mode, not in RTL yet), ``SHAPE`` (``K %
group``, ``N % 8``; unit limits: ``group != cfg.group``, ``K > cfg.max_k``, ``ceil(N/lanes) >
cfg.max_n/lanes``, ``nports`` not a power of two or more than the ports present; the port field
not the channel of ``w_addr``), ``HBM_RANGE`` (a stream's channel not present or its run past the
channel), ``SHAPE`` (NaN/Inf in x or in a scale), ``BUF_RANGE`` (y), ``AXI_RESP``. A NaN/Inf scale
or an AXI error is found while streaming: y may then be partly written. After an error or
``abort`` the remaining schedule is fed with zeros (no DMA) so the PE array finishes its command.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from .. import isa
from ..dequant import meta_bits, weight_beat_bits
from ..pe_array import PEArray, PEConfig
from ..scratchpad import ScratchReadSignature, ScratchWriteSignature
from ..unit_port import DmaReadClientSignature, UnitPortSignature
from ..dma import dma_error_code

__all__ = ["PELinearUnit", "PE_LINEAR_OPCODE"]

PE_LINEAR_OPCODE = isa.OPCODE_BY_NAME["PE_LINEAR"].number
_QW, _ZR, _SC = 0, 1, 2


class PELinearUnit(wiring.Component):
    """PE_LINEAR (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        ``ctx.channel_bytes`` (bytes per HBM port = channel size) must be a power of two.
    pe_cfg : PEConfig
        The array (GPTQ format, ``out_lanes`` dividing 8 or a multiple of 8).

    Ports
    -----
    ctl : In(UnitPortSignature()); rd : Out(DmaReadClientSignature).array(ctx.ports);
    sp_r : Out(ScratchReadSignature(ctx)); sp_w : Out(ScratchWriteSignature(ctx))
    """

    def __init__(self, ctx, pe_cfg: PEConfig):
        mem = ctx.channel_bytes
        if mem & (mem - 1):
            raise ConfigError(f"PELinearUnit: bytes per HBM port must be a power of two, got {mem}")
        if not isinstance(pe_cfg, PEConfig) or pe_cfg.int4_format != "gptq" or pe_cfg.legacy_zero_offset:
            raise ConfigError(f"PELinearUnit: needs a GPTQ PEConfig (no legacy zero offset), got {pe_cfg!r}")
        ol = pe_cfg.out_lanes
        if not (8 % ol == 0 or ol % 8 == 0):
            raise ConfigError(f"PELinearUnit: out_lanes must divide 8 or be a multiple of 8, got {ol}")
        if ctx.dma.data_width != 256:
            raise ConfigError(f"PELinearUnit: needs 256-bit DMA words, got {ctx.dma.data_width}")
        self.ctx, self.cfg = ctx, pe_cfg
        L = pe_cfg.lanes
        self.wmax = max(L // 8, (31 + 2 * L + 31) // 32, (31 + L // 2 + 31) // 32)
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "sp_w": Out(ScratchWriteSignature(ctx)),
        })

    def elaborate(self, platform):  # noqa: C901 - one sequencer, documented in the module docstring
        m = Module()
        ctx, cfg, ctl = self.ctx, self.cfg, self.ctl
        L, R, OL = cfg.lanes, cfg.rows, cfg.out_lanes
        P_ = ctx.ports
        cb = ctx.channel_bytes.bit_length() - 1
        gmax = cfg.max_k // cfg.group
        m.submodules.pe = pe = PEArray(cfg)
        i = ctl.cmd.payload.instr.pe_linear

        # ---- latched fields --------------------------------------------------------------------
        n = Signal(17)
        k = Signal(16)
        lg = Signal(3)           # log2 nports
        src = Signal(range(ctx.sp_words + 1))
        dst = Signal(range(ctx.sp_words + 1))
        addr = [Signal(isa.HBM_ADDR_BITS, name=f"addr{j}") for j in range(3)]
        nports = Signal(6)
        port_f = Signal(5)
        group_log2 = Signal(3)
        wfmt = Signal()
        src_off, dst_off = Signal(20), Signal(20)
        code = Signal(isa.ErrorCode)
        flush = Signal()

        n_tiles = Signal(range(cfg.max_n // L + 2))
        groups = Signal(range(gmax + 1))
        m.d.comb += [n_tiles.eq((n + L - 1) // L), groups.eq(k >> group_log2)]
        chan = [a >> cb for a in addr]
        base = [a & (ctx.channel_bytes - 1) for a in addr]
        nbytes = [k * n >> 1, (k >> group_log2) * n * 2, (k >> group_log2) * n >> 1]

        def lane_rows(nb):
            return (((nb + 31) >> 5) + nports - 1) >> lg

        # ---- DMA clients: per-port outstanding commands, error capture --------------------------
        outstanding = Signal(range(P_ * 2 + 2))
        cmd_port = Signal(range(max(P_, 2)))
        cmd_valid = Signal()
        cmd_addr = Signal(ctx.dma.addr_width)
        cmd_beats = Signal(16)
        cmd_ready = Signal()
        take_port = Signal(range(max(P_, 2)))
        take = Signal()           # merger ready for a beat from take_port
        d_valid = Signal()
        d_data = Signal(256)
        n_done = Signal(range(P_ + 1))
        first_err = Signal(isa.ErrorCode)
        dones = []
        for q in range(P_):
            c = self.rd[q]
            m.d.comb += [c.cmd.valid.eq(cmd_valid & (cmd_port == q)), c.cmd.payload.addr.eq(cmd_addr),
                         c.cmd.payload.beats.eq(cmd_beats), c.cmd.payload.rows.eq(1),
                         c.done.ready.eq(1),
                         c.data.ready.eq(flush | (take & (take_port == q)))]
            with m.If(cmd_port == q):
                m.d.comb += cmd_ready.eq(c.cmd.ready)
            with m.If(take_port == q):
                m.d.comb += [d_valid.eq(c.data.valid), d_data.eq(c.data.payload.data)]
            dones.append(c.done.valid)
        m.d.comb += n_done.eq(sum(dones))
        err_now = Signal(isa.ErrorCode)
        for q in reversed(range(P_)):
            c = self.rd[q]
            with m.If(c.done.valid & (c.done.payload != 0)):
                m.d.comb += err_now.eq(Mux(c.done.payload == 0, 0, dma_error_code(c.done.payload)))
        issued = cmd_valid & cmd_ready
        m.d.sync += outstanding.eq(outstanding + issued - n_done)
        with m.If((err_now != 0) & (first_err == 0)):
            m.d.sync += first_err.eq(err_now)

        # ---- meta memory, qw assembly -------------------------------------------------------------
        m.submodules.meta = meta = Memory(shape=unsigned(meta_bits(L)), depth=max(gmax, 2), init=[])
        mw = meta.write_port(granularity=None)
        mr = meta.read_port(domain="comb")
        qacc = Signal(weight_beat_bits(R, L))
        rr = Signal(range(max(R // 8, 2)))
        qw_full = Signal()
        m.d.comb += [pe.qw.payload.eq(qacc), pe.qw.valid.eq(qw_full)]
        with m.If(pe.qw.valid & pe.qw.ready):
            m.d.sync += qw_full.eq(0)

        # ---- segment walker state ------------------------------------------------------------------
        t = Signal(range(cfg.max_n // L + 2))
        g = Signal(range(max(gmax, cfg.max_k // 8) + 1))   # group (META) or qweight row (QW)
        kind = Signal(2)
        lt = Signal(range(L + 1))                             # lanes of this tile
        m.d.comb += lt.eq(Mux(n - t * L >= L, L, n - t * L))
        seg_start = Signal(isa.HBM_ADDR_BITS + 4)
        seg_bytes = Signal(range(2 * L * 4 + 1))
        with m.Switch(kind):
            with m.Case(_QW):
                m.d.comb += [seg_start.eq((g * n + t * L) << 2), seg_bytes.eq(lt << 2)]
            with m.Case(_ZR):
                m.d.comb += [seg_start.eq((g * n + t * L) >> 1), seg_bytes.eq(lt >> 1)]
            with m.Default():
                m.d.comb += [seg_start.eq((g * n + t * L) << 1), seg_bytes.eq(lt << 1)]
        s_p0 = Signal(5)
        s_base = Signal(ctx.dma.addr_width)
        with m.Switch(kind):
            for j in range(3):
                with m.Case(j):
                    m.d.comb += [s_p0.eq(chan[j]), s_base.eq(base[j])]
        a = seg_start >> 5
        off = seg_start[:5]
        w_beats = Signal(range(self.wmax + 1))
        m.d.comb += w_beats.eq((off + seg_bytes + 31) >> 5)
        c = Signal(range(self.wmax + 1))
        mask_p = (Const(1, 6) << lg) - 1

        def port_of(lane):
            s = s_p0 + lane
            return Mux(s >= P_, s - P_, s)

        lane_c = (a + c) & mask_p
        m.d.comb += [cmd_port.eq(port_of(lane_c)),
                     cmd_addr.eq((port_of(lane_c) << cb) + s_base + (((a + c) >> lg) << 5)),   # global address
                     cmd_beats.eq(((w_beats - 1 - c) >> lg) + 1),
                     take_port.eq(port_of(lane_c))]
        window = Signal(256 * self.wmax)
        piece = Signal(8 * 4 * L)
        m.d.comb += piece.eq((window >> (off << 3)) & ((Const(1, 8 * 4 * L + 1) << (seg_bytes << 3)) - 1))

        # ---- scratch reads of x (pass 1: NaN/Inf check, pass 2: load into the array) -------------
        xi = Signal(range(ctx.sp_words + 1))
        xc = Signal(range(ctx.sp_words + 1))
        xwords = Signal(range(ctx.sp_words + 1))
        m.d.comb += xwords.eq((k + 15) >> 4)
        xreg = Signal(512)
        xbad = Signal()
        act_full = Signal()
        m.d.comb += [pe.act.payload.eq(xreg), pe.act.valid.eq(act_full), self.sp_r.addr.eq(src + xi)]
        with m.If(pe.act.valid & pe.act.ready):
            m.d.sync += act_full.eq(0)

        def nonfinite16(word, count):
            return Cat(*[word[16 * j + 10:16 * j + 15] == 0x1F for j in range(count)]).any()

        # ---- outputs -> scratch ----------------------------------------------------------------------
        n_out = Signal(range(cfg.max_n + L + 1))       # outputs taken from the array
        n_out_end = Signal.like(n_out)
        m.d.comb += n_out_end.eq(n_tiles * L)
        owr = Signal(256)
        w_pend = Signal()
        w_addr = Signal(range(ctx.sp_words + 1))
        keep_out = Signal()
        m.d.comb += [self.sp_w.addr.eq(w_addr), self.sp_w.data.eq(owr), self.sp_w.req.eq(w_pend)]
        with m.If(self.sp_w.req & self.sp_w.gnt):
            m.d.sync += [w_pend.eq(0), w_addr.eq(w_addr + 1)]
        if OL <= 8:
            m.d.comb += pe.out.ready.eq(~w_pend)
            with m.If(pe.out.valid & pe.out.ready):
                m.d.sync += [n_out.eq(n_out + OL),
                             owr.eq(Cat(owr[32 * OL:], *[pe.out.payload.y[j] for j in range(OL)]))]
                with m.If(((n_out + OL) & 7) == 0):
                    m.d.sync += w_pend.eq(keep_out & (n_out < n))
        else:
            chunk = Signal(range(OL // 8 + 1))
            ys = Cat(*[pe.out.payload.y[j] for j in range(OL)])
            m.d.comb += pe.out.ready.eq(~w_pend & (chunk == OL // 8))
            with m.If(pe.out.valid & ~w_pend & (chunk != OL // 8)):
                m.d.sync += [owr.eq(ys.word_select(chunk, 256)), chunk.eq(chunk + 1),
                             w_pend.eq(keep_out & (n_out + chunk * 8 < n))]
            with m.If(pe.out.valid & pe.out.ready):
                m.d.sync += [n_out.eq(n_out + OL), chunk.eq(0)]

        # ---- meta feed of the array during QW ----------------------------------------------------
        mg = Signal(range(gmax + 1))
        meta_on = Signal()
        m.d.comb += [mr.addr.eq(mg), pe.meta.payload.eq(mr.data), pe.meta.valid.eq(meta_on & (mg < groups))]
        with m.If(pe.meta.valid & pe.meta.ready):
            m.d.sync += mg.eq(mg + 1)

        # ---- up-front checks ----------------------------------------------------------------------
        pow2 = (nports & (nports - 1)) == 0
        log2_np = Signal(3)
        for j in range(6):
            with m.If(nports == (1 << j)):
                m.d.comb += log2_np.eq(j)
        bad_shape = ((k & ((Const(1, 8) << group_log2) - 1)) != 0) | (n[:3] != 0)
        bad_limit = ((group_log2 != cfg.group.bit_length() - 1) | (k > cfg.max_k)
                     | (n_tiles > cfg.max_n // L) | ~pow2 | (nports > P_))
        bad_hbm = Signal()
        for j in range(3):
            with m.If((chan[j] >= P_) | (base[j] + (lane_rows(nbytes[j]) << 5) > ctx.channel_bytes)):
                m.d.comb += bad_hbm.eq(1)
        bad_dst = (dst_off >> 5) + (n >> 3) > ctx.buf_words

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.sync += [n.eq(i.rows), k.eq(i.cols), nports.eq(i.nports), port_f.eq(i.port),
                                 group_log2.eq(i.group_log2), wfmt.eq(i.wfmt),
                                 addr[_QW].eq(i.w_addr), addr[_SC].eq(i.scale_addr), addr[_ZR].eq(i.zero_addr),
                                 src.eq(i.src_buf * ctx.buf_words + (i.src_off >> 5)),
                                 dst.eq(i.dst_buf * ctx.buf_words + (i.dst_off >> 5)),
                                 src_off.eq(i.src_off), dst_off.eq(i.dst_off),
                                 code.eq(0), flush.eq(0), first_err.eq(0), xbad.eq(0)]
                    with m.If(ctl.cmd.payload.instr.header.opcode != PE_LINEAR_OPCODE):
                        m.d.sync += code.eq(isa.ErrorCode.ILLEGAL_OPCODE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [lg.eq(log2_np), xi.eq(0), xc.eq(0)]
                with m.If((src_off >> 5) + ((k + 15) >> 4) > ctx.buf_words):
                    m.d.sync += code.eq(isa.ErrorCode.BUF_RANGE)
                    m.next = "DONE"
                with m.Elif(wfmt):
                    m.d.sync += code.eq(isa.ErrorCode.FIELD_RANGE)
                    m.next = "DONE"
                with m.Elif(bad_shape | bad_limit | (port_f != chan[_QW])):
                    m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                    m.next = "DONE"
                with m.Else():
                    m.next = "CHECK2"
            with m.State("CHECK2"):      # lg is latched now (lane_rows uses it)
                with m.If(bad_hbm):
                    m.d.sync += code.eq(isa.ErrorCode.HBM_RANGE)
                    m.next = "DONE"
                with m.Else():
                    m.next = "XSCAN"
            with m.State("XSCAN"):
                m.d.comb += [self.sp_r.req.eq(xi < xwords), ctl.progress.eq(1)]
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += xi.eq(xi + 1)
                with m.If(self.sp_r.rvalid):
                    m.d.sync += [xc.eq(xc + 1), xbad.eq(xbad | nonfinite16(self.sp_r.data, 16))]
                with m.If(xc == xwords):
                    with m.If(xbad):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                        m.next = "DONE"
                    with m.Elif(bad_dst):
                        m.d.sync += code.eq(isa.ErrorCode.BUF_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "START"
            with m.State("START"):
                m.d.comb += [pe.cmd.valid.eq(1), pe.cmd.payload.n_tiles.eq(n_tiles),
                             pe.cmd.payload.k_groups.eq(groups), pe.cmd.payload.load_act.eq(1)]
                with m.If(pe.cmd.ready):
                    m.d.sync += [xi.eq(0), xc.eq(0), n_out.eq(0), w_addr.eq(dst),
                                 keep_out.eq(1), t.eq(0)]
                    m.next = "XLOAD"
            with m.State("XLOAD"):
                # two words per BFP block; the pair register empties into the array's act stream
                # a pair's first word only when the previous pair has left the register
                m.d.comb += [self.sp_r.req.eq((xi < xwords) & Mux(xi[0], 1, (xi == xc) & ~act_full)),
                             ctl.progress.eq(1)]
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += xi.eq(xi + 1)
                with m.If(self.sp_r.rvalid):
                    m.d.sync += [xc.eq(xc + 1), xreg.eq(Cat(xreg[256:], self.sp_r.data))]
                    with m.If(xc[0]):
                        m.d.sync += act_full.eq(1)
                with m.If((xc == xwords) & ~act_full):
                    m.d.sync += [kind.eq(_ZR), g.eq(0)]
                    m.next = "SEG_ISSUE"
            # ---- one segment: issue its commands, merge its beats, store the piece -------------
            with m.State("SEG_ISSUE"):
                m.d.sync += c.eq(0)
                with m.If(flush):
                    m.d.sync += window.eq(0)
                    m.next = "SEG_STORE"
                with m.Else():
                    m.next = "SEG_CMD"
            with m.State("SEG_CMD"):
                m.d.comb += cmd_valid.eq(~flush)
                with m.If(flush):
                    m.d.sync += window.eq(0)
                    m.next = "SEG_STORE"
                with m.Elif(cmd_ready):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += c.eq(c + 1)
                    with m.If((c + 1 == w_beats) | (c + 1 == (Const(1, 6) << lg))):
                        m.d.sync += c.eq(0)
                        m.next = "SEG_DATA"
            with m.State("SEG_DATA"):
                m.d.comb += take.eq(~flush)
                with m.If(flush):
                    m.d.sync += window.eq(0)
                    m.next = "SEG_STORE"
                with m.Elif(d_valid):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += [c.eq(c + 1)]
                    for j in range(self.wmax):
                        with m.If(c == j):
                            m.d.sync += window[256 * j:256 * (j + 1)].eq(d_data)
                    with m.If(c + 1 == w_beats):
                        m.next = "SEG_WAIT"
            with m.State("SEG_WAIT"):
                with m.If(flush | ((outstanding == 0) & (n_done == 0))):
                    m.next = "SEG_STORE"
            with m.State("SEG_STORE"):
                with m.If(kind == _QW):
                    with m.If(~qw_full):
                        m.d.comb += ctl.progress.eq(1)
                        for j in range(R // 8):
                            with m.If(rr == j):
                                m.d.sync += qacc[32 * L * j:32 * L * (j + 1)].eq(piece[:32 * L])
                        m.d.sync += rr.eq(Mux(rr == R // 8 - 1, 0, rr + 1))
                        with m.If(rr == R // 8 - 1):
                            m.d.sync += qw_full.eq(1)
                        m.d.sync += g.eq(g + 1)
                        with m.If(g + 1 == (k >> 3)):
                            m.next = "TILE_END"
                        with m.Else():
                            m.next = "SEG_ISSUE"
                with m.Else():
                    m.d.comb += [mw.addr.eq(g), ctl.progress.eq(1)]
                    m.d.comb += mw.en.eq(1)
                    with m.If(kind == _ZR):
                        m.d.comb += mw.data.eq(Cat(piece[:4 * L], mr.data[4 * L:]))
                        m.d.comb += mr.addr.eq(g)
                        m.d.sync += kind.eq(_SC)
                        m.next = "SEG_ISSUE"
                    with m.Else():
                        m.d.comb += [mr.addr.eq(g), mw.data.eq(Cat(mr.data[:4 * L], piece[:16 * L]))]
                        with m.If(nonfinite16(piece[:16 * L], L) & ~flush):
                            m.d.sync += xbad.eq(1)
                        m.d.sync += [kind.eq(_ZR), g.eq(g + 1)]
                        with m.If(g + 1 == groups):
                            m.d.sync += [kind.eq(_QW), g.eq(0), mg.eq(0), meta_on.eq(1)]
                        m.next = "SEG_ISSUE"
            with m.State("TILE_END"):
                # the array has taken all of this tile's meta once its last beat is accepted
                with m.If(~qw_full):
                    m.d.sync += [meta_on.eq(0), t.eq(t + 1), g.eq(0), kind.eq(_ZR)]
                    with m.If(t + 1 == n_tiles):
                        m.next = "OUT_WAIT"
                    with m.Else():
                        m.next = "SEG_ISSUE"
            with m.State("OUT_WAIT"):
                with m.If((n_out == n_out_end) & ~w_pend & (outstanding == 0)):
                    with m.If(first_err != 0):
                        m.d.sync += code.eq(first_err)
                    with m.Elif(xbad):
                        m.d.sync += code.eq(isa.ErrorCode.SHAPE)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"

        # errors and abort: stop issuing, zeros for the rest of the schedule, drop the outputs
        with m.If((err_now != 0) | ctl.abort):
            m.d.sync += [flush.eq(1), keep_out.eq(0)]
        return m
