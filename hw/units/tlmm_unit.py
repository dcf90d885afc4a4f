"""The TLMM execution unit: the TLMM instruction on the :class:`ternopu.hw.tlmm.TLMM` engine.

What it executes
----------------
``TLMM`` (docs/isa.md, golden semantics ``GoldenISS._op_tlmm``)::

    y[N] = rescale(tlmm_matvec(keys, xq), amax * g127)        binary32, bit for bit

* keys: the ``row_tiles * group_tiles`` engine beats of :func:`ternopu.golden.tlmm.pack_keys`,
  a striped stream from ``w_addr``: 32-byte word ``i`` of the stream lies in HBM channel
  ``c = (port + i mod nports) mod 32`` at channel-local byte ``local + (i div nports) * 32``,
  where ``local = w_addr - port * channel_bytes`` (docs/compiler.md); it is read through port
  ``c`` at the global address ``c * channel_bytes + local + ...``;
* ``xq[K]`` int8 from scratch ``src_buf/src_off``, ``amax`` binary32 from ``amax_buf/amax_off``
  (element 0 of that word), ``g127`` from the instruction; ``out_scale = amax * g127`` (one
  binary32 RNE multiply, :class:`ternopu.hw.fp32.Float32Mul`);
* ``y[N]`` binary32 to scratch ``dst_buf/dst_off``, 8 per 256-bit word; in a last partial word the
  bytes past ``y[N-1]`` keep their previous contents (the ISS writes exactly ``4*N`` bytes).
* ``reuse_act = 1`` sends the engine command without activations: the engine reuses the ones the
  previous TLMM loaded (the compiler sets it only when ``src`` holds the same ``xq``).

Structure
---------
::

    ctl.cmd ─► CHECK (5 registered stages: tiles, stream words, per-port counts, range checks)
          ─► AMAX / TAIL scratch reads ─► SCALE (Float32Mul) ─► engine cmd ─► RUN ─► done
                                                                    │
    rd[q] ─► FIFO q (fifo_depth words, credit-based issue) ──► gather: beat slot s takes the head
             one command of <= cmd_words words per port            of port (port + lane_s) mod 32
             at a time, all stripe ports concurrently              ─► engine.keys (beat_words x 256)
    sp_r  ─► byte gearbox (3*tables bytes per transfer) ─────────────► engine.act (unless reuse_act)
    engine.out ─► packer (8 x binary32 per word, tail merge) ─► 2-word FIFO ─► sp_w

The key stream is prefetched from the end of CHECK, in parallel with the scratch reads, the scale
multiply and the activation load.

Throughput
----------
The gather completes one engine beat (``beat_words = beat_bits / 256`` words) per cycle when the
``beat_words`` FIFOs it needs are non-empty, so the engine runs at its steady state of one beat
per cycle as long as the stripe delivers ``beat_words`` words per cycle. A port has one command
in flight at a time (the DMA client rule); with a round trip of ``R`` cycles between the last word
of one command and the first of the next it delivers ``cmd_words / (cmd_words + R)`` words per
cycle. With ``cmd_words = max_burst`` (default: the port is released to other units after every
burst) full rate needs ``nports > beat_words`` by that factor; ``cmd_words`` >> ``max_burst``
(the DMA cuts the command into bursts and keeps ``max_outstanding`` in flight) reaches full rate
at ``nports = beat_words`` but holds each stripe port for most of the instruction.
The activation gearbox reads one scratch word per cycle (``ceil(K/32)`` cycles for the load, of
which the engine needs ``group_tiles``); the output packer writes one word (8 outputs) per cycle.
Fixed cost per instruction: :data:`CHECK_CYCLES` + 2 scratch reads (+1 with a partial last word)
+ :data:`SCALE_LATENCY` + the engine's fill and drain (``result_latency + drain_cycles``).

Errors (``done`` payload, first found wins, in this order)
----------------------------------------------------------
* ``SHAPE``: ``K`` or ``N`` outside ``1..max_k`` / ``1..max_n`` (:meth:`TLMMConfig.check_shape`);
  ``w_addr`` not in channel ``port`` (``port*channel_bytes <= w_addr < (port+1)*channel_bytes``,
  as the ISS checks the port field).
* ``HBM_RANGE``: a stripe port not present in this build (``(port + j) mod 32 >= ports``), or
  the stripe's rows run past the channel (``local + ceil(words/nports)*32 > channel_bytes``,
  every stripe port is checked for the full row count, like the ISS); a DMA range error.
* ``BUF_RANGE``: ``src_off + K``, ``amax_off + 4`` or ``dst_off + 4N`` beyond ``buf_words*32``
  (``src`` is checked also with ``reuse_act``, as in the ISS).
* ``SHAPE``: ``amax * g127`` not finite (the ISS raises ``NonFiniteError``); an output that
  overflows to infinity (reported at the end, outputs are written anyway).
  Also ``SHAPE`` (deliberately, where the ISS would compute a value): a subnormal ``amax``,
  ``g127`` or ``amax * g127``, which the engine's multiplier would flush to zero (DAZ); the
  compiler never produces them (``amax >= 1e-5``, ``g127 >= 1e-5/127``).
* ``AXI_RESP``: a SLVERR/DECERR completion (the stream still runs to its end; outputs invalid).

Errors found before the key stream starts write nothing. After ``abort``, a fatal DMA error or
a scale error the unit stops issuing, waits for the completions of the commands in flight
(swallowing their data), resets the engine and its FIFOs and answers ``done``.

Not checked (the ISS's strict key decoding would say ``SHAPE``): the encoding of the keys
(idx 14/15, non-zero padding keys or spare bits); the engine reads idx 14/15 as 0.

Addressing: global HBM addresses on every port (channel ``c`` at ``c * channel_bytes``, every port
reaches every channel as through the U280's HBM switch; the Verilator device's convention).
``channel_bytes`` comes from the parameter, else ``ctx.channel_bytes`` if the context has it, else
``ctx.dma.mem_bytes // ctx.ports`` (the DMA range-checks the whole space).

Differences from the ISS's checks (deliberate, hardware-side):
the ISS wraps stripe channels modulo its channel count and lets a stripe row run into the next
channel (HBM_RANGE only past the end of HBM); the unit wraps modulo 32 (a missing port is
HBM_RANGE) and checks each channel's end. Subnormal scale operands (above) are SHAPE.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError
from ternopu.golden.tlmm import GROUP

from .. import isa
from ..dma import DMA_ERR_DECERR, DMA_ERR_SLVERR, dma_error_code
from ..fp32 import F32_BITS, Float32Mul
from ..scratchpad import ScratchReadSignature, ScratchWriteSignature
from ..tlmm import DEFAULT_CONFIG, TLMM, TLMMConfig
from ..unit_port import DmaReadClientSignature, UnitPortSignature

__all__ = ["TLMMUnit", "factory", "CHECK_CYCLES", "SCALE_LATENCY", "WORD_BITS", "WORD_BYTES",
           "OUT_PER_WORD", "stream_words", "div_const"]

#: Bits / bytes of a scratch word and of a DMA data word (one 32-byte ISA beat).
WORD_BITS = isa.INSTR_BITS
WORD_BYTES = WORD_BITS // 8
#: binary32 outputs per scratch word.
OUT_PER_WORD = WORD_BITS // F32_BITS
#: Cycles from accepting the instruction to the check decision: the chain of registered stages
#: fields -> tiles / flags -> group tiles -> stream words -> words / nports -> rows -> range.
CHECK_CYCLES = 7
#: Cycles of the ``amax * g127`` multiply.
SCALE_LATENCY = Float32Mul.LATENCY
_F32_EXP = slice(23, 31)
#: Stripe ports addressable by the ISA (port numbers wrap modulo 32).
_PORT_SPACE = isa.HBM_PORTS


def div_const(x, d: int):
    """``floor(x / d)`` for an unsigned value ``x`` and a constant ``d >= 1`` (no divider).

    A shift for powers of two, else one multiply by ``ceil(2**(n+l) / d)`` and a shift by ``n+l``
    (``n = len(x)``, ``l = ceil(log2 d)``): exact for every ``x < 2**n`` (Granlund-Montgomery).
    """
    if d < 1:
        raise ConfigError(f"div_const: divisor must be >= 1, got {d}")
    n = len(x)
    if d & (d - 1) == 0:
        return x >> (d.bit_length() - 1)
    lg = (d - 1).bit_length()
    mul = -(-(1 << (n + lg)) // d)
    return (x * mul) >> (n + lg)


def stream_words(cfg: TLMMConfig, n: int, k: int) -> int:
    """32-byte words of the key stream of an ``N x K`` projection."""
    return cfg.ideal_cycles(n, k) * (cfg.beat_bits // WORD_BITS)


class TLMMUnit(wiring.Component):
    """TLMM slot unit (module docstring): instruction in, keys from HBM, activations and outputs
    in scratch, one engine.

    Parameters
    ----------
    ctx : SlotContext
        ``dma`` (256-bit data, ``max_burst``, ``addr_width``), ``ports`` (1..32), ``buf_words``.
    cfg : TLMMConfig
        Engine geometry; ``beat_bits`` must be a multiple of 256 (an engine beat is
        ``beat_words`` whole stream words) and ``out_lanes`` must divide 8 or be a multiple of 8.
    fifo_depth : int, optional
        Words buffered per HBM port (default ``2 * min(cmd_words, 4 * max_burst)``). With
        ``cmd_words <= fifo_depth`` a command is issued only when its words fit (the R channel
        is never stalled, a port can take its next command while the previous burst still sits
        in the FIFO); longer commands rely on back-pressure of the DMA data stream.
    channel_bytes : int, optional
        Bytes per HBM channel (see "Addressing").
    cmd_words : int, optional
        Words per DMA command (default ``ctx.dma.max_burst``: one burst per command).

    Ports
    -----
    ctl : In(UnitPortSignature())
    rd : Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports)
    sp_r : Out(ScratchReadSignature(ctx)), sp_w : Out(ScratchWriteSignature(ctx))

    Attributes
    ----------
    engine : TLMM
        The engine (also a submodule).
    beat_words : int
        Stream words per engine beat.
    """

    def __init__(self, ctx, cfg: TLMMConfig = DEFAULT_CONFIG, *, fifo_depth: int | None = None,
                 channel_bytes: int | None = None, cmd_words: int | None = None):
        try:
            self._check(ctx, cfg, fifo_depth, channel_bytes, cmd_words)
        except ConfigError:
            self._MustUse__silence = True   # a refused unit is not an unused one
            raise
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "sp_w": Out(ScratchWriteSignature(ctx)),
        })

    def _check(self, ctx, cfg, fifo_depth, channel_bytes, cmd_words) -> None:
        """Validate the parameters and set the attributes."""
        if not isinstance(cfg, TLMMConfig):
            raise ConfigError(f"TLMMUnit cfg: expected a TLMMConfig, got {type(cfg).__name__}")
        p = ctx.dma
        if p.data_width != WORD_BITS:
            raise ConfigError(f"TLMMUnit: DMA data width must be {WORD_BITS}, got {p.data_width}")
        if not isinstance(ctx.ports, int) or not 1 <= ctx.ports <= _PORT_SPACE:
            raise ConfigError(f"TLMMUnit: ctx.ports must be in [1, {_PORT_SPACE}], got {ctx.ports!r}")
        if cfg.beat_bits % WORD_BITS:
            raise ConfigError(
                f"TLMMUnit: cfg.beat_bits must be a multiple of {WORD_BITS} (an engine beat is "
                f"whole 32-byte stream words), got {cfg.beat_bits}")
        o = cfg.out_lanes
        if not (OUT_PER_WORD % o == 0 or o % OUT_PER_WORD == 0):
            raise ConfigError(
                f"TLMMUnit: cfg.out_lanes must divide {OUT_PER_WORD} or be a multiple of it, got {o}")
        if channel_bytes is None:
            channel_bytes = getattr(ctx, "channel_bytes", None) or p.mem_bytes // ctx.ports
        if (not isinstance(channel_bytes, int) or channel_bytes < WORD_BYTES
                or channel_bytes % WORD_BYTES or channel_bytes * ctx.ports > 1 << p.addr_width):
            raise ConfigError(
                f"TLMMUnit channel_bytes: expected a multiple of {WORD_BYTES} with ports * "
                f"channel_bytes <= 2**addr_width = {1 << p.addr_width}, got {channel_bytes!r}")
        if cmd_words is None:
            cmd_words = p.max_burst
        if (not isinstance(cmd_words, int) or not 1 <= cmd_words < 1 << p.beats_width):
            raise ConfigError(
                f"TLMMUnit cmd_words: expected an int in [1, {(1 << p.beats_width) - 1}], "
                f"got {cmd_words!r}")
        if fifo_depth is None:
            fifo_depth = 2 * min(cmd_words, 4 * p.max_burst)
        if not isinstance(fifo_depth, int) or fifo_depth < min(cmd_words, p.max_burst):
            raise ConfigError(
                f"TLMMUnit fifo_depth: expected an int >= min(cmd_words, max_burst) = "
                f"{min(cmd_words, p.max_burst)}, got {fifo_depth!r}")
        self.ctx, self.cfg = ctx, cfg
        self.fifo_depth, self.channel_bytes, self.cmd_words = fifo_depth, channel_bytes, cmd_words
        self.beat_words = cfg.beat_bits // WORD_BITS
        self.engine = TLMM(cfg)

    def elaborate(self, platform):
        m = Module()
        ctx, cfg, ctl = self.ctx, self.cfg, self.ctl
        p = ctx.dma
        P, BW, D = ctx.ports, self.beat_words, self.fifo_depth
        T, L, O = cfg.tables, cfg.lanes, cfg.out_lanes
        A = cfg.act_lanes                      # activation bytes per engine act transfer
        cb = self.channel_bytes                # bytes per HBM channel
        C = self.cmd_words
        credit = C <= D                        # else: long commands, back-pressure on the R channel
        buf_bytes = ctx.buf_words * WORD_BYTES
        E = min(O, OUT_PER_WORD)               # outputs handled per packer step
        S = max(1, O // OUT_PER_WORD)          # packer steps per engine out transfer
        EC = isa.ErrorCode

        flush = Signal()   # resets the datapath (engine, FIFOs) after an abort / fatal error
        eng = ResetInserter(flush)(self.engine)
        m.submodules.engine = eng
        e = self.engine

        # ---- latched instruction fields ----------------------------------------------------
        f = ctl.cmd.payload.instr.tlmm
        n = Signal(17)
        k = Signal(16)
        w_addr = Signal(isa.HBM_ADDR_BITS)
        port0 = Signal(5)
        nports = Signal(6)
        src = Signal(range(ctx.sp_words + 1))
        amax_a = Signal(range(ctx.sp_words + 1))
        dst = Signal(range(ctx.sp_words + 1))
        src_off, amax_off, dst_off = Signal(20), Signal(20), Signal(20)
        g127 = Signal(32)
        reuse = Signal()

        code = Signal(EC)
        # The first error wins; later ones are ignored.
        def set_code(c):
            with m.If(code == EC.NONE):
                m.d.sync += code.eq(c)

        # ---- check pipeline (registered stages, CHECK_CYCLES cycles) -----------------------
        rt_w = max(1, cfg.max_row_tiles.bit_length())
        gt_w = max(1, cfg.max_group_tiles.bit_length())
        words_max = cfg.max_row_tiles * cfg.max_group_tiles * BW
        ww = max(1, words_max.bit_length())
        # stage 1
        groups = Signal(16)
        row_tiles = Signal(rt_w)
        shape_bad, chan_bad, lanes_bad = Signal(), Signal(), Signal()
        src_bad, amax_bad, dst_bad = Signal(), Signal(), Signal()
        local = Signal(max(1, (cb - 1).bit_length()))
        # stage 2
        group_tiles = Signal(gt_w)
        # stage 3
        words = Signal(ww)
        # stage 4
        quo = Signal(ww)
        # stage 5
        rem = Signal(6)
        rows = Signal(ww)
        hbm_bad = Signal()

        lo = Signal((_PORT_SPACE * cb).bit_length())
        m.d.comb += lo.eq(port0 * cb)
        m.d.sync += [
            groups.eq(div_const((k + (GROUP - 1))[:17], GROUP)),
            row_tiles.eq(div_const(n + (L - 1), L)),   # ceil(n / L)
            shape_bad.eq((k == 0) | (k > cfg.max_k) | (n == 0) | (n > cfg.max_n)),
            chan_bad.eq((w_addr < lo) | (w_addr >= lo + cb)),
            lanes_bad.eq((port0 >= P) | ((port0 + nports > P) if P < _PORT_SPACE else 0)),
            local.eq(w_addr - lo),
            src_bad.eq(src_off + k > buf_bytes),
            amax_bad.eq(amax_off + (F32_BITS // 8) > buf_bytes),
            dst_bad.eq(dst_off + n * (F32_BITS // 8) > buf_bytes),
            group_tiles.eq(div_const((groups + (T - 1))[:17], T)),
            words.eq(row_tiles * group_tiles * BW),
        ]
        # floor(words / nports) by a reciprocal table (exact: see div_const's argument with
        # l = 5 >= ceil(log2 nports) for every nports <= 32)
        shift = ww + 5
        recip = Array([Const(-(-(1 << shift) // max(d, 1)), shift + 1) for d in range(_PORT_SPACE + 1)])
        m.d.sync += quo.eq((words * recip[nports]) >> shift)
        m.d.sync += [rem.eq(words - quo * nports),
                     rows.eq(quo + (words != quo * nports)),
                     hbm_bad.eq(local + rows * WORD_BYTES > cb)]

        # ---- HBM side: per-port FIFOs and command issue ------------------------------------
        stop = Signal()         # no new DMA commands (abort / error drain)
        draining = Signal()     # swallow DMA data instead of buffering it
        start_dma = Signal()    # load the per-port counters (end of CHECK, no error)
        fatal = Signal()        # sticky: a DMA completion without its data (range / misaligned)
        fifos, port_idle = [], []
        for q in range(P):
            ff = ResetInserter(flush)(fifo.SyncFIFOBuffered(width=WORD_BITS, depth=D))
            m.submodules[f"kfifo{q}"] = ff
            fifos.append(ff)
            rd = self.rd[q]
            lane = Signal(5, name=f"lane{q}")
            left = Signal(ww, name=f"left{q}")          # words still to request
            addr = Signal(p.addr_width, name=f"addr{q}")
            busy = Signal(name=f"busy{q}")              # a command awaits its completion
            infl = Signal(range(max(C, D) + 1), name=f"infl{q}")  # requested, not yet arrived
            m.d.comb += lane.eq(q - port0)              # modulo 32
            with m.If(start_dma):
                # global address: channel q at q * channel_bytes (every port reaches every
                # channel through the HBM switch; the stripe reads channel q on port q)
                m.d.sync += [left.eq(Mux(lane < nports, quo + (lane < rem), 0)),
                             addr.eq(q * cb + local), infl.eq(0)]
            blen = Signal(range(C + 1), name=f"blen{q}")
            m.d.comb += blen.eq(Mux(left < C, left, C))
            issue = Signal(name=f"issue{q}")
            room = (ff.level + infl + blen <= D) if credit else 1
            m.d.comb += [
                rd.cmd.valid.eq(~stop & ~busy & (left != 0) & room),
                rd.cmd.payload.addr.eq(addr),
                rd.cmd.payload.beats.eq(blen),
                rd.cmd.payload.rows.eq(1),
                issue.eq(rd.cmd.valid & rd.cmd.ready),
            ]
            got = Signal(name=f"got{q}")
            m.d.comb += [rd.data.ready.eq(draining | ff.w_rdy),
                         got.eq(rd.data.valid & rd.data.ready),
                         ff.w_en.eq(rd.data.valid & ~draining),
                         ff.w_data.eq(rd.data.payload.data),
                         rd.done.ready.eq(1)]
            m.d.sync += infl.eq(infl + Mux(issue, blen, 0) - got)
            with m.If(issue):
                m.d.sync += [busy.eq(1), left.eq(left - blen), addr.eq(addr + blen * WORD_BYTES)]
            with m.If(rd.done.valid):
                m.d.sync += busy.eq(0)
                with m.If(rd.done.payload != 0):
                    set_code(dma_error_code(rd.done.payload))
                    # range / misaligned: the command moved no data, the stream cannot finish
                    with m.If((rd.done.payload != DMA_ERR_SLVERR)
                              & (rd.done.payload != DMA_ERR_DECERR)):
                        m.d.sync += fatal.eq(1)
            with m.If(issue | got | rd.done.valid):
                m.d.comb += ctl.progress.eq(1)
            idle = Signal(name=f"idle{q}")
            m.d.comb += idle.eq(~busy)
            port_idle.append((idle, left))
        all_idle = Signal()
        m.d.comb += all_idle.eq(Cat(*[i for i, _ in port_idle]).all())
        all_done = Signal()
        m.d.comb += all_done.eq(all_idle & Cat(*[lf == 0 for _, lf in port_idle]).all())

        # ---- key gather: beat slot s <- head of port (port0 + lane_s) mod 32 -----------------
        run = Signal()
        heads = Array([ff.r_data for ff in fifos])
        ready_q = Array([ff.r_rdy for ff in fifos])
        filled = Signal(range(BW + 1))
        hold = [Signal(WORD_BITS, name=f"hold{s}") for s in range(BW)]
        lane_s = [Signal(6, name=f"slot_lane{s}") for s in range(BW)]
        phys = [Signal(5, name=f"slot_port{s}") for s in range(BW)]
        take = [Signal(name=f"take{s}") for s in range(BW)]
        init_lane = [Array([Const(s % max(d, 1), 6) for d in range(_PORT_SPACE + 1)])
                     for s in range(BW)]
        step_tab = Array([Const(BW % max(d, 1), 6) for d in range(_PORT_SPACE + 1)])
        slot_data = []
        for s in range(BW):
            m.d.comb += phys[s].eq(port0 + lane_s[s])
            ok = Signal(name=f"cand{s}")
            pos = Signal(7, name=f"pos{s}")           # s - filled (only meaningful if >= 0)
            m.d.comb += [pos.eq(s - filled),
                         ok.eq(run & (filled <= s) & (pos < nports)
                               & (ready_q[phys[s]] if P > 1 else fifos[0].r_rdy))]
            prev = take[s - 1] if s else 0
            m.d.comb += take[s].eq(ok & ((filled == s) | prev))
            head = heads[phys[s]] if P > 1 else fifos[0].r_data
            d = Signal(WORD_BITS, name=f"slot{s}")
            m.d.comb += d.eq(Mux(filled > s, hold[s], head))
            slot_data.append(d)
            with m.If(take[s]):
                m.d.sync += hold[s].eq(head)
        complete = Signal()
        m.d.comb += [complete.eq((filled == BW) | take[BW - 1]),
                     e.keys.valid.eq(complete),
                     e.keys.payload.eq(Cat(*slot_data))]
        for q in range(P):
            m.d.comb += fifos[q].r_en.eq(
                Cat(*[take[s] & (phys[s] == q) for s in range(BW)]).any())
        handed = Signal()
        m.d.comb += handed.eq(e.keys.valid & e.keys.ready)
        with m.If(handed):
            m.d.sync += filled.eq(0)
            for s in range(BW):
                nxt = lane_s[s] + step_tab[nports]
                m.d.sync += lane_s[s].eq(Mux(nxt >= nports, nxt - nports, nxt))
            m.d.comb += ctl.progress.eq(1)
        with m.Elif(complete):
            m.d.sync += filled.eq(BW)
        with m.Else():
            nf = Signal.like(filled)
            m.d.comb += nf.eq(filled)
            for s in reversed(range(BW)):
                with m.If(~((filled > s) | take[s])):
                    m.d.comb += nf.eq(s)
            m.d.sync += filled.eq(nf)
        with m.If(start_dma):
            m.d.sync += filled.eq(0)
            for s in range(BW):
                m.d.sync += lane_s[s].eq(init_lane[s][nports])

        # ---- scratch reads: amax, tail word, activation gearbox ---------------------------
        sp_r = self.sp_r
        act_run = Signal()
        cap = A + 2 * WORD_BYTES                        # gearbox capacity in bytes
        gbuf = Signal(8 * cap)                          # bytes at and above gcnt are zero
        gcnt = Signal(range(cap + 1))
        rd_left = Signal(range(ctx.buf_words + 2))      # xq words still to read
        rd_ptr = Signal(range(ctx.sp_words + 1))
        tiles_left = Signal(gt_w)
        m.d.comb += [e.act.payload.eq(gbuf[:8 * A])]
        gpop = Signal()
        m.d.comb += [
            e.act.valid.eq(act_run & (tiles_left != 0)
                           & ((gcnt >= A) | ((rd_left == 0) & ~sp_r.rvalid))),
            gpop.eq(e.act.valid & e.act.ready),
        ]
        g_req = Signal()
        m.d.comb += g_req.eq(act_run & (rd_left != 0)
                             & (gcnt + Mux(sp_r.rvalid, WORD_BYTES, 0) + WORD_BYTES <= cap))
        with m.If(act_run):
            after = Signal(range(cap + 1))
            m.d.comb += after.eq(Mux(gpop, Mux(gcnt > A, gcnt - A, 0), gcnt))
            shifted = Signal(8 * cap)
            m.d.comb += shifted.eq(Mux(gpop, gbuf >> (8 * A), gbuf))
            with m.If(sp_r.rvalid):
                m.d.sync += [gbuf.eq(shifted | (sp_r.data << (after * 8))[:8 * cap]),
                             gcnt.eq(after + WORD_BYTES)]
            with m.Else():
                m.d.sync += [gbuf.eq(shifted), gcnt.eq(after)]
            with m.If(gpop):
                m.d.sync += tiles_left.eq(tiles_left - 1)
                m.d.comb += ctl.progress.eq(1)
            with m.If(sp_r.req & sp_r.gnt):
                m.d.sync += [rd_left.eq(rd_left - 1), rd_ptr.eq(rd_ptr + 1)]
                m.d.comb += ctl.progress.eq(1)

        # ---- output packer -> write FIFO -> sp_w ------------------------------------------
        m.submodules.wfifo = wf = ResetInserter(flush)(
            fifo.SyncFIFO(width=WORD_BITS + len(self.sp_w.addr), depth=2))
        m.d.comb += [self.sp_w.req.eq(wf.r_rdy),
                     self.sp_w.data.eq(wf.r_data[:WORD_BITS]),
                     self.sp_w.addr.eq(wf.r_data[WORD_BITS:]),
                     wf.r_en.eq(self.sp_w.gnt)]
        with m.If(self.sp_w.req & self.sp_w.gnt):
            m.d.comb += ctl.progress.eq(1)
        tail_old = Signal(WORD_BITS)
        row = Signal(18)           # first row of the current packer step
        wptr = Signal(len(self.sp_w.addr))
        wslots = [Signal(F32_BITS, name=f"wslot{t}") for t in range(OUT_PER_WORD)]
        sub = Signal(range(max(S, 2)))
        out_done = Signal()
        tail_n = Signal(3)
        m.d.comb += tail_n.eq(n[:3])
        # bit t: slot t lies at or past the tail of the last word (t >= tail_n)
        tail_slots = Signal(OUT_PER_WORD)
        m.d.comb += tail_slots.eq(Const((1 << OUT_PER_WORD) - 1, OUT_PER_WORD) << tail_n)
        step = Signal()
        m.d.comb += [step.eq(run & e.out.valid & wf.w_rdy & ~out_done),
                     e.out.ready.eq(wf.w_rdy & (sub == S - 1) & run & ~out_done)]
        vals = [Signal(F32_BITS, name=f"outv{i}") for i in range(E)]
        for i in range(E):
            m.d.comb += vals[i].eq(Array([e.out.payload.y[j * E + i] for j in range(S)])[sub]
                                   if S > 1 else e.out.payload.y[i])
        posn = Signal(3)
        m.d.comb += posn.eq(row[:3])
        merged = []
        last_word = Signal()
        m.d.comb += last_word.eq(row + E >= n)
        for t in range(OUT_PER_WORD):
            v = wslots[t]
            if E < OUT_PER_WORD:
                v = Mux(posn == (t // E) * E, vals[t % E], v)
            else:
                v = vals[t]
            keep_old = last_word & (tail_n != 0) & tail_slots[t]
            merged.append(Mux(keep_old, tail_old[F32_BITS * t:F32_BITS * (t + 1)], v))
        with m.If(step):
            m.d.comb += ctl.progress.eq(1)
            m.d.sync += [row.eq(row + E), sub.eq(Mux(sub == S - 1, 0, sub + 1))]
            with m.If(row < n):
                for t in range(OUT_PER_WORD):
                    if E < OUT_PER_WORD:
                        with m.If(posn == (t // E) * E):
                            m.d.sync += wslots[t].eq(vals[t % E])
                for i in range(E):
                    with m.If((row + i < n) & (vals[i][_F32_EXP] == 0xFF)):
                        set_code(EC.SHAPE)
                with m.If((posn + E == OUT_PER_WORD) | last_word):
                    m.d.comb += [wf.w_en.eq(1), wf.w_data.eq(Cat(*merged, wptr))]
                    m.d.sync += wptr.eq(wptr + 1)
            with m.If(e.out.payload.last & (sub == S - 1)):
                m.d.sync += out_done.eq(1)

        # ---- scale multiply -----------------------------------------------------------------
        m.submodules.scale_mul = mul = Float32Mul()
        amax = Signal(32)
        scale = Signal(32)
        mul_go = Signal()
        m.d.comb += [mul.a.eq(amax), mul.b.eq(g127), mul.i_valid.eq(mul_go), mul.en.eq(1)]

        def subnormal(x):
            return (x[_F32_EXP] == 0) & (x[:23] != 0)

        # ---- control ------------------------------------------------------------------------
        cnt = Signal(range(CHECK_CYCLES))
        with m.FSM(name="tlmm_unit"):
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.sync += [
                        n.eq(f.rows), k.eq(f.cols), w_addr.eq(f.w_addr), port0.eq(f.port),
                        nports.eq(f.nports), g127.eq(f.g127), reuse.eq(f.reuse_act),
                        src_off.eq(f.src_off), amax_off.eq(f.amax_off), dst_off.eq(f.dst_off),
                        src.eq(f.src_buf * ctx.buf_words + (f.src_off >> 5)),
                        amax_a.eq(f.amax_buf * ctx.buf_words + (f.amax_off >> 5)),
                        dst.eq(f.dst_buf * ctx.buf_words + (f.dst_off >> 5)),
                        code.eq(EC.NONE), cnt.eq(0), out_done.eq(0),
                    ]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += ctl.progress.eq(1)
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(ctl.abort):
                    m.next = "DONE"
                with m.Elif(cnt == CHECK_CYCLES - 1):
                    with m.If(shape_bad | chan_bad):
                        m.d.sync += code.eq(EC.SHAPE)
                        m.next = "DONE"
                    with m.Elif(lanes_bad | hbm_bad):
                        m.d.sync += code.eq(EC.HBM_RANGE)
                        m.next = "DONE"
                    with m.Elif(src_bad | amax_bad):
                        m.d.sync += code.eq(EC.BUF_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.d.comb += start_dma.eq(1)
                        m.next = "AMAX"
            with m.State("AMAX"):
                m.d.comb += [sp_r.req.eq(1), sp_r.addr.eq(amax_a)]
                with m.If(sp_r.gnt):
                    m.d.comb += ctl.progress.eq(1)
                    m.next = "AMAX_WAIT"
            with m.State("AMAX_WAIT"):
                m.d.sync += amax.eq(sp_r.data[:32])
                with m.If(tail_n != 0):
                    m.next = "TAIL"
                with m.Else():
                    m.next = "SCALE_GO"
            with m.State("TAIL"):
                m.d.comb += [sp_r.req.eq(~dst_bad), sp_r.addr.eq(dst + (n >> 3))]
                with m.If(dst_bad | sp_r.gnt):
                    m.d.comb += ctl.progress.eq(1)
                    m.next = "TAIL_WAIT"
            with m.State("TAIL_WAIT"):
                m.d.sync += tail_old.eq(sp_r.data)
                m.next = "SCALE_GO"
            with m.State("SCALE_GO"):
                m.d.comb += [mul_go.eq(1), ctl.progress.eq(1)]
                m.next = "SCALE"
            with m.State("SCALE"):
                m.d.comb += ctl.progress.eq(1)
                with m.If(mul.o_valid):
                    m.d.sync += scale.eq(mul.o)
                    bad = ((amax[_F32_EXP] == 0xFF) | (mul.o[_F32_EXP] == 0xFF)
                           | subnormal(amax) | subnormal(g127) | subnormal(mul.o))
                    with m.If(bad):
                        m.d.sync += code.eq(EC.SHAPE)
                        m.next = "FLUSH"
                    with m.Elif(dst_bad):
                        m.d.sync += code.eq(EC.BUF_RANGE)
                        m.next = "FLUSH"
                    with m.Else():
                        m.d.sync += [tiles_left.eq(Mux(reuse, 0, group_tiles)),
                                     rd_left.eq(Mux(reuse, 0, (k + (WORD_BYTES - 1)) >> 5)),
                                     rd_ptr.eq(src), gcnt.eq(0), gbuf.eq(0), row.eq(0), sub.eq(0),
                                     wptr.eq(dst)]
                        m.next = "ENGINE"
            with m.State("ENGINE"):
                m.d.comb += [e.cmd.valid.eq(1), e.cmd.payload.row_tiles.eq(row_tiles),
                             e.cmd.payload.group_tiles.eq(group_tiles),
                             e.cmd.payload.out_scale.eq(scale), e.cmd.payload.load_act.eq(~reuse)]
                with m.If(ctl.abort | fatal):
                    m.next = "FLUSH"
                with m.Elif(e.cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [run.eq(1), act_run.eq(1),
                             sp_r.req.eq(g_req), sp_r.addr.eq(rd_ptr)]
                with m.If(ctl.abort | fatal):
                    m.next = "FLUSH"
                with m.Elif(out_done & ~wf.r_rdy & all_done):
                    m.next = "DONE"
            with m.State("FLUSH"):
                m.d.comb += draining.eq(1)
                m.d.sync += stop.eq(1)
                with m.If(all_idle & stop):
                    m.d.comb += flush.eq(1)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                m.d.sync += stop.eq(1)
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        with m.If(start_dma):
            m.d.sync += [stop.eq(0), fatal.eq(0)]
        return m


def factory(cfg: TLMMConfig = DEFAULT_CONFIG, **kw):
    """A slot factory ``ctx -> TLMMUnit(ctx, cfg, **kw)`` for ``Overlay(units={Unit.TLMM: ...})``."""
    def make(ctx):
        return TLMMUnit(ctx, cfg, **kw)
    return make
