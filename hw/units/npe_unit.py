"""The NPE execution unit: the ``NPE`` instruction (all :class:`~ternopu.hw.isa.NpeOp` subops).

:class:`NPEUnit` follows the unit-slot contract of :mod:`ternopu.hw.overlay`: it reads its
operands from the scratchpad, its parameters (RMSNorm weights, RoPE cos/sin rows) from HBM,
streams the elements through the bit-exact function units of :mod:`ternopu.hw.npe` and writes
the results back to the scratchpad. The semantics and memory formats are those of
``GoldenISS._op_npe`` (:mod:`ternopu.sw.backends.golden_iss`), byte for byte.

Datapath
--------
::

    sp_r[0] -> WordReader A -> Unpacker A --+
                                            +-> join / convert -> dispatch -> function unit --+
    sp_r[1] -> WordReader B -+-> Unpacker B-+   (+ RoPE table)    (by subop, pass)           |
    rd[*] -> weight FIFO ----+                                                                |
    sp_w[0] <- Packer (element -> word, read-modify-write of a partial last word) <-----------+

* A *word reader* walks the element sequence of one operand as runs of elements that share a
  scratch word, keeps up to :data:`READ_AHEAD` words in flight/buffered and never depends on
  ``gnt`` combinationally; the *unpacker* turns each word into elements, one per cycle.
  Reader A streams operand ``a``; reader B streams ``b`` (GLU, residual), or, for ROPE, the
  second half of every head (the partners ``x[i + Dh/2]`` of the first half); the first half
  is kept in a local head buffer as it passes (the partners of the second half), so RoPE
  produces its output in element order and works in place.
* Two-pass subops read ``a`` twice from scratch (the reduction beside the data, then the
  element-wise pass): RMSNORM (sum of squares, then ``(x * r) * w`` with ``w`` streamed from HBM),
  SOFTMAX (online max / sum, then ``exp(s - r) * (1/l)``), ACT_QUANT_INT8 (amax, then quantize).
  The second pass is issued right behind the first; the function unit holds it until its
  row scalar is ready.
* ROPE runs two outputs per pair: output ``j`` of a head feeds the pair ``(x1, x2)`` of its
  index ``i = j mod Dh/2`` through :class:`~ternopu.hw.npe.RopeUnit` and keeps ``y1`` (first
  half) or ``y2`` (second half). The cos/sin row (``Dh * 4`` bytes at ``param_addr``) is loaded
  into a local table first.
* SILU uses the SwiGLU unit with ``up = 1.0`` (``silu(x) * 1.0`` is exact, so the bits are those
  of golden ``silu``); TO_FP32 is a conversion at the join stage (binary16 -> binary32 exact,
  bfloat16 -> binary32 by a 16-bit shift; F32 is copied).
* The packer assembles results into words (4, 2 or 1 bytes per element) and writes them in
  order. The last word, when only partly covered, is read, merged and written (the ISS writes
  exactly ``length`` elements); ACT_QUANT_INT8 then writes the row's binary32 ``amax`` at byte
  ``dst_off + align32(length)`` the same way (4 bytes, the rest of that word preserved).

Throughput and latency
----------------------
One element per cycle on every pass when the scratch grants each read (one word per 8 binary32
elements, per 16 binary16 elements) and the function unit allows it (softmax pass 1 runs at
about 2.8 cycles per score at chunk 64, see docs/npe.md). Fixed costs per instruction: 2 cycles
of decode/checks (+17 for ROPE: the ``length mod head_dim`` check), the divider for
``binary32(1/length)`` (RMSNORM, :data:`RMSNORM_SETUP_CYCLES`), the cos/sin table load (ROPE,
one HBM round trip), the function unit's latency and the reduction's finalize step (two-pass
subops), and 3 cycles for a partial last word (read-modify-write).

Memory ports: ``sp_r[0]`` (reader A, and the read of a read-modify-write at the end),
``sp_r[1]`` (reader B), ``sp_w[0]``. HBM: one read command (one burst of at most
``ctx.dma.max_burst`` beats) at a time; RMSNORM weights go through a FIFO of
:data:`WEIGHT_FIFO_BURSTS` bursts so the next burst is requested while the current one is used
(the HBM round trip is hidden while it is shorter than ``8 * max_burst`` cycles).

HBM addresses
-------------
``param_addr`` is a global HBM address (:mod:`ternopu.sw.compiler.layout`): channel ``addr //
ctx.channel_bytes``, local offset ``addr % ctx.channel_bytes``. A command goes to the port of
the channel with the global address (the overlay's AXI addresses are global; each port streams its own
pseudo-channel); a parameter block that crosses a channel boundary is split there.
``ctx.channel_bytes`` must be a power of two.

Errors (completion code), in the ISS's order
--------------------------------------------
1. ``FIELD_RANGE``: subop > 9, or TO_FP32 with ``fmt`` 3 (the decoder rejects both already),
   or a subop this build does not include (``ops``).
2. ROPE: ``head_dim == 0`` or ``length % head_dim != 0`` -> ``SHAPE``.
3. RMSNORM / ROPE: the parameter block beyond ``ctx.ports * channel_bytes`` -> ``HBM_RANGE``.
4. ``a`` beyond ``ctx.buf_words`` -> ``BUF_RANGE``; then ``b`` (RELU2_GLU, SWIGLU,
   RESIDUAL_ADD) -> ``BUF_RANGE``.
5. RMSNORM: ``length > 65536`` or ``eps`` outside [2^-30, 1] -> ``SHAPE``.
6. A function unit's ``err`` (NaN/Inf inputs, out-of-domain values, overflow: the golden
   NonFiniteError / FormatError) -> ``SHAPE``; the unit stops at the first such result.
7. The result region beyond ``ctx.buf_words`` -> ``BUF_RANGE``: the instruction runs without
   writing (so that 6 takes precedence, as in the ISS). ACT_QUANT_INT8 writes ``xq`` when it
   fits and then reports the ``amax`` word (as the ISS does).
DMA failures: range -> ``HBM_RANGE``, SLVERR/DECERR -> ``AXI_RESP`` (the unit stops).
After an error the result region is undefined (the ISS writes nothing; this unit may have
written the words before the failing element). ``abort`` stops the readers at once, waits for
the HBM command in flight and answers ``done``. Every instruction starts by resetting the
function units (1 cycle), so an aborted or failed instruction leaves no state behind.

Restriction (streaming): the result region must not overlap an operand region at a higher
address than its start (``dst_off > a_off`` in the same buffer with overlap), nor, for TO_FP32
from F16/BF16 (results wider than the operand), overlap it at all. In-place operation
(``dst == a`` or ``dst == b``) is fine for every other subop. The ISS reads all operands before
it writes, so such overlaps would differ; the compiler never emits them.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden import nonlinear as gn
from ternopu.golden.errors import ConfigError

from .. import isa
from ..fpu import Float32Div, f32_bits
from ..isa import ErrorCode, NpeOp
from ..npe import ActQuant, ActUnit, OnlineSoftmaxUnit, RMSNorm, RopeUnit, ToFp16
from ..dma import dma_error_code
from ..overlay import SlotContext
from ..scratchpad import ScratchReadSignature, ScratchWriteSignature
from ..unit_port import DmaReadClientSignature, UnitPortSignature

__all__ = ["NPEUnit", "READ_AHEAD", "WEIGHT_FIFO_BURSTS", "SOFTMAX_CHUNK", "RMSNORM_SETUP_CYCLES",
           "ROPE_CHECK_CYCLES", "f16_to_f32"]

#: Scratch words a reader keeps requested or buffered ahead of its unpacker.
READ_AHEAD = 4
#: Depth of the RMSNorm weight FIFO in DMA bursts (``max_burst`` words each).
WEIGHT_FIFO_BURSTS = 2
#: Softmax chunk of the hardware (the ISS calls ``softmax_online`` with the golden default).
SOFTMAX_CHUNK = gn.SOFTMAX_DEFAULT_CHUNK
#: RMSNORM: cycles for ``binary32(1 / length)`` (Float32Div) before the first pass starts.
RMSNORM_SETUP_CYCLES = Float32Div.LATENCY + 1
#: ROPE: cycles of the bit-serial ``length mod head_dim`` check.
ROPE_CHECK_CYCLES = 17

_LEN_BITS = 17
_RMS_MAX_D = gn.RMS_MAX_D
_EPS_MIN_BITS = f32_bits(gn.RMS_MIN_EPS)
_EPS_MAX_BITS = f32_bits(1.0)
_ONE_BITS = f32_bits(1.0)
_WORD = isa.INSTR_BITS
_ENTRY = data.StructLayout({"data": _WORD, "lane": 5, "count": 6, "last": 1, "pass_": 1})
_ELEM = data.StructLayout({"e": 32, "last": 1, "pass_": 1})
_RES = data.StructLayout({"y": 32, "err": 1, "last": 1})
# ISA enumerations as plain ints (Amaranth compares them as constants)
_OP = {op.name: int(op) for op in NpeOp}
_F16, _BF16 = int(isa.ElemFormat.F16), int(isa.ElemFormat.BF16)


def f16_to_f32(h):
    """Comb: binary16 bits -> binary32 bits, exact; NaN quieted with its payload kept (F16C).

    ``torch`` converts NaN payloads differently in its vector and scalar paths, so NaN inputs
    are outside the golden contract; this is the vector path's (IEEE) answer.
    """
    s, e, f = h[15], h[10:15], h[0:10]
    normal = Cat(Const(0, 13), f, e + 112, s)
    special = Cat(Const(0, 13), f[:9], f != 0, Const(0xFF, 8), s)
    sub = Cat(Const(0, 31), s)  # zero; subnormals below
    for p in range(10):  # top set bit p of f: value 2^(p-24) * 1.rest
        mant = Cat(Const(0, 23 - p), f[:p]) if p else Const(0, 23)
        sub = Mux(f[p], Cat(mant, Const(p + 103, 8), s), sub)
    return Mux(e == 31, special, Mux(e == 0, sub, normal))


def _int_to_f32(m: Module, n, width: int) -> Signal:
    """Comb: unsigned integer ``n`` (< 2^24) -> binary32 bits, exact."""
    out = Signal(32)
    val = Const(0, 32)
    for p in range(width):
        mant = Cat(Const(0, 23 - p), n[:p]) if p else Const(0, 23)
        val = Mux(n[p], Cat(mant, Const(127 + p, 8), Const(0, 1)), val)
    m.d.comb += out.eq(val)
    return out


class _WordReader(wiring.Component):
    """Fetch the scratch words of one operand as runs (elements sharing a word), in order.

    Sequence (per pass, ``passes`` times): linear ``0 .. n-1``, or, with ``rope``, the second
    half of every head: ``h*hd + hd/2 .. h*hd + hd - 1`` for ``h = 0 .. n/hd - 1`` (``n/2``
    elements). ``narrow``: 2-byte elements (16 per word), else 4-byte (8 per word).
    Config inputs must be stable from ``start`` to the end. ``stop`` ends issuing at once.
    Output entries: the word, first lane, element count, ``last`` (end of a pass) and the pass.
    Requests depend on registered state only (never on ``gnt``).
    """

    def __init__(self, ctx: SlotContext):
        self.ctx = ctx
        super().__init__({
            "start": In(1), "stop": In(1),
            "base": In(range(ctx.sp_words)), "n": In(_LEN_BITS), "narrow": In(1), "rope": In(1),
            "hd": In(9), "passes": In(2),
            "sp": Out(ScratchReadSignature(ctx)),
            "o": Out(stream.Signature(_ENTRY)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFO(width=_ENTRY.size, depth=READ_AHEAD)
        active = Signal()
        pass_cur = Signal()
        idx = Signal(_LEN_BITS + 1)
        piece = Signal(_LEN_BITS)
        total = Signal(_LEN_BITS)
        head = Signal(_LEN_BITS + 1)
        inflight = Signal()
        desc = Signal(data.StructLayout({"lane": 5, "count": 6, "last": 1, "pass_": 1}))
        half = self.hd >> 1

        lane = Mux(self.narrow, idx[:4], idx[:3])
        room = Mux(self.narrow, 16, 8) - lane
        cnt = Signal(6)
        m.d.comb += cnt.eq(Mux(piece < room, piece, room))
        word = Mux(self.narrow, idx >> 4, idx >> 3)
        issue = Signal()
        m.d.comb += [
            issue.eq(active & ~self.stop & (q.w_level + inflight < READ_AHEAD)),
            self.sp.req.eq(issue),
            self.sp.addr.eq(self.base + word),
        ]

        def restart():
            return [idx.eq(Mux(self.rope, half, 0)), piece.eq(Mux(self.rope, half, self.n)),
                    total.eq(Mux(self.rope, self.n >> 1, self.n)), head.eq(0)]

        with m.If(self.start):
            m.d.sync += [active.eq(1), pass_cur.eq(0), *restart()]
        accepted = issue & self.sp.gnt
        m.d.sync += inflight.eq(accepted)
        with m.If(accepted):
            m.d.sync += [desc.lane.eq(lane), desc.count.eq(cnt), desc.last.eq(total == cnt),
                         desc.pass_.eq(pass_cur), total.eq(total - cnt)]
            with m.If(piece == cnt):
                with m.If(total == cnt):
                    with m.If(pass_cur + 1 < self.passes):
                        m.d.sync += [pass_cur.eq(1), *restart()]
                    with m.Else():
                        m.d.sync += active.eq(0)
                with m.Else():          # rope: the next head's second half
                    m.d.sync += [head.eq(head + self.hd), idx.eq(head + self.hd + half),
                                 piece.eq(half)]
            with m.Else():
                m.d.sync += [idx.eq(idx + cnt), piece.eq(piece - cnt)]

        entry = Signal(_ENTRY)
        m.d.comb += [entry.data.eq(self.sp.data), entry.lane.eq(desc.lane),
                     entry.count.eq(desc.count), entry.last.eq(desc.last), entry.pass_.eq(desc.pass_),
                     q.w_data.eq(entry.as_value()), q.w_en.eq(inflight),
                     self.o.valid.eq(q.r_rdy), self.o.payload.eq(q.r_data), q.r_en.eq(self.o.ready)]
        return m


class _Unpacker(wiring.Component):
    """Word entries -> elements, one per cycle (``narrow``: 16-bit elements, zero-extended)."""

    def __init__(self):
        super().__init__({
            "narrow": In(1),
            "i": In(stream.Signature(_ENTRY)),
            "o": Out(stream.Signature(_ELEM)),
        })

    def elaborate(self, platform):
        m = Module()
        k = Signal(5)
        p = self.i.payload
        lane = Signal(5)
        m.d.comb += lane.eq(p.lane + k)
        end = k + 1 == p.count
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.o.payload.e.eq(Mux(self.narrow, p.data.word_select(lane[:4], 16),
                                    p.data.word_select(lane[:3], 32))),
            self.o.payload.last.eq(p.last & end),
            self.o.payload.pass_.eq(p.pass_),
            self.i.ready.eq(self.o.ready & end),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += k.eq(Mux(end, 0, k + 1))
        return m


class NPEUnit(wiring.Component):
    """Execution unit of the ``NPE`` instruction (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        Slot geometry: DMA parameters (``mem_bytes`` a power of two), HBM ports, ``buf_words``.
    ops : iterable of NpeOp, optional
        Subops this build executes (default: all). Function units of the others are not built
        (e.g. RELU2_GLU for a Llama-only overlay, SWIGLU for BitNet); their instructions complete
        with ``FIELD_RANGE``.

    Ports
    -----
    ctl : In(UnitPortSignature())
    rd : Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports)
    sp_r : Out(ScratchReadSignature(ctx)).array(2)
    sp_w : Out(ScratchWriteSignature(ctx)).array(1)

    Timing
    ------
    One element per cycle per pass (module docstring); results are visible when ``done`` is
    offered (the last scratch write was granted in an earlier cycle).
    """

    def __init__(self, ctx: SlotContext, ops=None):
        if not isinstance(ctx, SlotContext):
            raise ConfigError(f"NPEUnit needs a SlotContext, got {type(ctx).__name__}")
        mb = ctx.channel_bytes
        if mb & (mb - 1):
            raise ConfigError(f"NPEUnit: ctx.channel_bytes must be a power of two (bytes per HBM "
                              f"channel), got {mb}")
        if ctx.dma.data_width != _WORD:
            raise ConfigError(f"NPEUnit: the DMA data width must be {_WORD} bits, got {ctx.dma.data_width}")
        if not 1 <= ctx.ports <= isa.HBM_PORTS:
            raise ConfigError(f"NPEUnit: ctx.ports must be in [1, {isa.HBM_PORTS}], got {ctx.ports}")
        if ops is None:
            ops = tuple(NpeOp)
        try:
            ops = frozenset(NpeOp(o) for o in ops)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"NPEUnit ops must be NpeOp values, got {ops!r}") from e
        if not ops:
            raise ConfigError("NPEUnit needs at least one subop")
        self.ctx, self.ops = ctx, ops
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)).array(2),
            "sp_w": Out(ScratchWriteSignature(ctx)).array(1),
        })

    # ------------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        bw = ctx.buf_words
        flush = Signal()          # resets the datapath at the start of every instruction

        def sub(name, unit):
            m.submodules[name] = ResetInserter(flush)(unit)
            return unit

        # ---- latched instruction ------------------------------------------------------------
        op = Signal(5)
        n = Signal(_LEN_BITS)
        a_buf, b_buf, d_buf = Signal(3), Signal(3), Signal(3)
        a_w, b_w, d_w = Signal(15), Signal(15), Signal(15)   # word offsets in the buffer
        param = Signal(isa.HBM_ADDR_BITS)
        hd = Signal(9)
        eps = Signal(32)
        fmt = Signal(2)
        code = Signal(ErrorCode)

        built = {o.name for o in self.ops}
        is_ = {}
        for name in _OP:   # subops that are not built are constant 0: their logic is pruned
            is_[name] = Signal(name=f"is_{name.lower()}")
            if name in built:
                m.d.comb += is_[name].eq(op == _OP[name])
        supported = Cat(*(op == _OP[name] for name in sorted(built))).any()
        two_pass = is_["RMSNORM"] | is_["SOFTMAX"] | is_["ACT_QUANT_INT8"]
        uses_b = is_["RELU2_GLU"] | is_["SWIGLU"] | is_["RESIDUAL_ADD"]
        narrow_in = is_["TO_FP32"] & ((fmt == _F16) | (fmt == _BF16))
        # output element bytes: 1 (int8), 2 (fp16), 4
        out1 = is_["ACT_QUANT_INT8"]
        out2 = is_["TO_FP16"]
        n_in_words = Mux(narrow_in, (n + 15) >> 4, (n + 7) >> 3)
        n_out_words = Mux(out1, (n + 31) >> 5, Mux(out2, (n + 15) >> 4, (n + 7) >> 3))

        # ---- function units -----------------------------------------------------------------
        def opt(names, name, make):
            return sub(name, make()) if built & set(names) else None

        rms = opt({"RMSNORM"}, "rmsnorm", RMSNorm)
        sm = opt({"SOFTMAX"}, "softmax", lambda: OnlineSoftmaxUnit(SOFTMAX_CHUNK))
        aq = opt({"ACT_QUANT_INT8"}, "actquant", ActQuant)
        r2 = opt({"RELU2_GLU"}, "relu2_glu", lambda: ActUnit("relu2_glu"))
        sw = opt({"SWIGLU", "SILU"}, "swiglu", lambda: ActUnit("swiglu"))
        add = opt({"RESIDUAL_ADD"}, "residual_add", lambda: ActUnit("residual_add"))
        rope = opt({"ROPE"}, "rope", RopeUnit)
        tf16 = opt({"TO_FP16"}, "to_fp16", ToFp16)
        div = opt({"RMSNORM"}, "inv_d", Float32Div)

        rda = sub("reader_a", _WordReader(ctx))
        rdb = sub("reader_b", _WordReader(ctx))
        ua = sub("unpack_a", _Unpacker())
        ub = sub("unpack_b", _Unpacker())
        wdepth = WEIGHT_FIFO_BURSTS * ctx.dma.max_burst
        wq = sub("weights", fifo.SyncFIFO(width=_WORD, depth=wdepth))
        m.submodules.table = table = Memory(shape=_WORD, depth=32, init=[])
        tab_w = table.write_port()
        tab_c = table.read_port(domain="sync")
        tab_s = table.read_port(domain="sync")
        # ROPE: the first half of the current head, the partners of its second half (re-reading
        # them from scratch would see in-place results already written over them)
        m.submodules.headbuf = headbuf = Memory(shape=32, depth=128, init=[])
        hb_w = headbuf.write_port()
        hb_r = headbuf.read_port(domain="sync")

        # ---- control state ------------------------------------------------------------------
        stop = Signal()            # abort, a DMA error or a function-unit error: wind down
        err_seen = Signal()
        dma_code = Signal(ErrorCode)
        dst_ok = Signal()          # result words may be written (range ok)
        amax_ok = Signal()         # ACT_QUANT_INT8: the amax word may be written
        range_code = Signal(ErrorCode)   # BUF_RANGE of the result region, reported at the end
        start = Signal()           # pulse: start the readers
        pk_done = Signal()         # packer wrote its last word
        inv_d = Signal(32)
        inv_d_ok = Signal()

        m.d.comb += stop.eq(ctl.abort | err_seen | (dma_code != ErrorCode.NONE))

        # ---- HBM parameter fetch (RoPE table, RMSNorm weights) ------------------------------
        mb_bits = ctx.channel_bytes.bit_length() - 1
        f_addr = Signal(isa.HBM_ADDR_BITS + 1)      # global byte address of the next command
        f_left = Signal(_LEN_BITS)                  # beats still to request
        f_busy = Signal()                           # a command is outstanding
        f_port = Signal(range(max(ctx.ports, 2)))
        f_to_table = Signal()
        f_go = Signal()                             # fetching is enabled for this instruction
        tab_ptr = Signal(6)
        local = f_addr[:mb_bits]
        to_bound = (ctx.channel_bytes - local) >> 5
        beats = Signal(range(ctx.dma.max_burst + 1))
        lim = Signal(_LEN_BITS + 1)
        m.d.comb += [lim.eq(Mux(f_left < ctx.dma.max_burst, f_left, ctx.dma.max_burst)),
                     beats.eq(Mux(to_bound < lim, to_bound, lim))]
        cmd_port = f_addr[mb_bits:]
        room = f_to_table | (wq.w_level + beats <= wdepth)
        want = f_go & ~stop & ~f_busy & (f_left != 0) & room
        dma_beat = Signal()
        cur_valid = Signal()
        cur_data = Signal(_WORD)
        for q in range(ctx.ports):
            rq = self.rd[q]
            m.d.comb += [rq.cmd.valid.eq(want & (cmd_port == q)),
                         rq.cmd.payload.addr.eq(f_addr), rq.cmd.payload.beats.eq(beats),   # global address
                         rq.cmd.payload.rows.eq(1), rq.cmd.payload.stride.eq(0),
                         rq.data.ready.eq(1), rq.done.ready.eq(1)]
            with m.If(want & (cmd_port == q) & rq.cmd.ready):
                m.d.sync += [f_busy.eq(1), f_port.eq(q), f_addr.eq(f_addr + (beats << 5)),
                             f_left.eq(f_left - beats)]
            with m.If(f_port == q):
                m.d.comb += [cur_valid.eq(rq.data.valid), cur_data.eq(rq.data.payload.data)]
                with m.If(f_busy & rq.done.valid):
                    m.d.sync += f_busy.eq(0)
                    with m.If((rq.done.payload != 0) & (dma_code == ErrorCode.NONE)):
                        m.d.sync += dma_code.eq(dma_error_code(rq.done.payload))
        m.d.comb += dma_beat.eq(f_busy & cur_valid)
        m.d.comb += [tab_w.addr.eq(tab_ptr[:5]), tab_w.data.eq(cur_data),
                     tab_w.en.eq(dma_beat & f_to_table),
                     wq.w_data.eq(cur_data), wq.w_en.eq(dma_beat & ~f_to_table)]
        with m.If(dma_beat & f_to_table):
            m.d.sync += tab_ptr.eq(tab_ptr + 1)

        # ---- readers ------------------------------------------------------------------------
        for r in (rda, rdb):
            m.d.comb += [r.stop.eq(stop), r.n.eq(n), r.hd.eq(hd)]
        m.d.comb += [
            rda.base.eq(a_buf * bw + a_w), rda.narrow.eq(narrow_in), rda.rope.eq(0),
            rda.passes.eq(Mux(two_pass, 2, 1)),
            rdb.base.eq(Mux(is_["ROPE"], a_buf * bw + a_w, b_buf * bw + b_w)), rdb.narrow.eq(0),
            rdb.rope.eq(is_["ROPE"]), rdb.passes.eq(1),
            ua.narrow.eq(narrow_in), ub.narrow.eq(0),
        ]
        # reader B runs only for the operands it serves
        m.d.comb += [rda.start.eq(start), rdb.start.eq(start & (uses_b | is_["ROPE"]))]
        wiring.connect(m, rda.o, ua.i)
        # B elements: scratch reader B, or the RMSNorm weights from the FIFO
        w_left = Signal(_LEN_BITS)
        with m.If(is_["RMSNORM"]):
            m.d.comb += [ub.i.valid.eq(wq.r_rdy), ub.i.payload.data.eq(wq.r_data),
                         ub.i.payload.lane.eq(0),
                         ub.i.payload.count.eq(Mux(w_left < 8, w_left, 8)),
                         ub.i.payload.last.eq(w_left <= 8), ub.i.payload.pass_.eq(1),
                         wq.r_en.eq(ub.i.ready)]
            with m.If(ub.i.valid & ub.i.ready):
                m.d.sync += w_left.eq(w_left - 8)
        with m.Else():
            wiring.connect(m, rdb.o, ub.i)

        # RMW read port sharing: reader A owns sp_r[0] until the packer needs it (all reads of
        # the sources are done by then: the last result follows the last source element)
        rmw_req = Signal()
        rmw_addr = Signal(range(ctx.sp_words))
        spa = self.sp_r[0]
        m.d.comb += [spa.req.eq(rda.sp.req | rmw_req),
                     spa.addr.eq(Mux(rmw_req, rmw_addr, rda.sp.addr)),
                     rda.sp.gnt.eq(spa.gnt & ~rmw_req), rda.sp.rvalid.eq(spa.rvalid),
                     rda.sp.data.eq(spa.data)]
        wiring.connect(m, rdb.sp, wiring.flipped(self.sp_r[1]))

        # ---- join / convert / RoPE table: one register stage --------------------------------
        ea, eb = ua.o.payload, ub.o.payload
        half = hd >> 1
        pos_in = Signal(9)
        first = pos_in < half
        need_b = uses_b | (is_["ROPE"] & first) | (is_["RMSNORM"] & ea.pass_)
        src_valid = Signal()
        src_ready = Signal()
        src = Signal(data.StructLayout({"a": 32, "b": 32, "last": 1, "pass_": 1, "lc": 3, "ls": 3,
                                        "second": 1}))
        join = ua.o.valid & (ub.o.valid | ~need_b)
        load = Signal()
        m.d.comb += [load.eq(join & (~src_valid | src_ready)),
                     ua.o.ready.eq(load), ub.o.ready.eq(load & need_b)]
        ti = Signal(9)
        si = Signal(9)
        m.d.comb += [ti.eq(Mux(first, pos_in, pos_in - half)), si.eq(half + ti),
                     tab_c.addr.eq(ti[3:8]), tab_s.addr.eq(si[3:8]),
                     tab_c.en.eq(load), tab_s.en.eq(load),
                     hb_w.addr.eq(ti[:7]), hb_w.data.eq(ea.e), hb_w.en.eq(load & is_["ROPE"] & first),
                     hb_r.addr.eq(ti[:7]), hb_r.en.eq(load)]
        a_conv = Mux(narrow_in, Mux(fmt == _F16, f16_to_f32(ea.e[:16]), Cat(Const(0, 16), ea.e[:16])),
                     ea.e)
        with m.If(load):
            m.d.sync += [src_valid.eq(1), src.last.eq(ea.last), src.pass_.eq(ea.pass_),
                         src.lc.eq(ti[:3]), src.ls.eq(si[:3])]
            with m.If(is_["ROPE"]):
                m.d.sync += [src.a.eq(ea.e), src.b.eq(eb.e), src.second.eq(~first),
                             pos_in.eq(Mux(pos_in + 1 == hd, 0, pos_in + 1))]
            with m.Else():
                m.d.sync += [src.a.eq(a_conv), src.b.eq(Mux(is_["SILU"], _ONE_BITS, eb.e))]
        with m.Elif(src_ready):
            m.d.sync += src_valid.eq(0)
        c_val = tab_c.data.word_select(src.lc, 32)
        s_val = tab_s.data.word_select(src.ls, 32)

        # ---- dispatch to the function units -------------------------------------------------
        p1 = src.pass_
        ports = []  # (select, input stream, payload assignments)
        if rms is not None:
            ports += [(is_["RMSNORM"] & ~p1, rms.sq, {"x": src.a}),
                      (is_["RMSNORM"] & p1, rms.x, {"x": src.a, "w": src.b})]
        if sm is not None:
            ports += [(is_["SOFTMAX"] & ~p1, sm.s, {"s": src.a}),
                      (is_["SOFTMAX"] & p1, sm.p_in, {"s": src.a})]
        if aq is not None:
            ports += [(is_["ACT_QUANT_INT8"] & ~p1, aq.obs, {"x": src.a}),
                      (is_["ACT_QUANT_INT8"] & p1, aq.x, {"x": src.a})]
        for sel, unit in ((is_["RELU2_GLU"], r2), (is_["SWIGLU"] | is_["SILU"], sw),
                          (is_["RESIDUAL_ADD"], add)):
            if unit is not None:
                ports.append((sel, unit.i, {"a": src.a, "b": src.b}))
        if rope is not None:
            x1 = Mux(src.second, hb_r.data, src.a)
            x2 = Mux(src.second, src.a, src.b)
            ports.append((is_["ROPE"], rope.i, {"x1": x1, "x2": x2, "c": c_val, "s": s_val}))
        if tf16 is not None:
            ports.append((is_["TO_FP16"], tf16.i, {"x": src.a}))
        ready_terms = []
        for sel, port, fields in ports:
            m.d.comb += port.valid.eq(src_valid & sel)
            for name, v in fields.items():
                m.d.comb += getattr(port.payload, name).eq(v)
            m.d.comb += port.payload.last.eq(src.last)
            ready_terms.append(sel & port.ready)

        # ---- results --------------------------------------------------------------------------
        res_valid = Signal()
        res_ready = Signal()
        res = Signal(_RES)
        pos_out = Signal(9)
        amax = Signal(32)
        outs = [(is_[name], unit.o, y()) for name, unit, y in (
            ("RMSNORM", rms, lambda: rms.o.payload.y),
            ("SOFTMAX", sm, lambda: sm.o.payload.p),
            ("ACT_QUANT_INT8", aq, lambda: aq.o.payload.q.as_unsigned()),
            ("RELU2_GLU", r2, lambda: r2.o.payload.y),
            ("SWIGLU", sw, lambda: sw.o.payload.y),
            ("RESIDUAL_ADD", add, lambda: add.o.payload.y),
            ("ROPE", rope, lambda: Mux(pos_out < half, rope.o.payload.y1, rope.o.payload.y2)),
            ("TO_FP16", tf16, lambda: tf16.o.payload.h),
        ) if unit is not None]
        if sw is not None:   # SILU runs on the SwiGLU unit
            outs = [(sel | is_["SILU"], port, y) if port is sw.o else (sel, port, y) for sel, port, y in outs]
        for sel, port, y in outs:
            m.d.comb += port.ready.eq(sel & res_ready)
            with m.If(sel):
                m.d.comb += [res_valid.eq(port.valid), res.y.eq(y), res.err.eq(port.payload.err),
                             res.last.eq(port.payload.last)]
        with m.If(is_["TO_FP32"]):   # conversion only: the join stage feeds the packer
            m.d.comb += [res_valid.eq(src_valid), res.y.eq(src.a), res.err.eq(0),
                         res.last.eq(src.last)]
        ready_terms.append(is_["TO_FP32"] & res_ready)
        m.d.comb += src_ready.eq(Cat(*ready_terms).any())
        res_fire = res_valid & res_ready
        with m.If(res_fire & is_["ROPE"]):
            m.d.sync += pos_out.eq(Mux(pos_out + 1 == hd, 0, pos_out + 1))
        if aq is not None:
            with m.If(res_fire & is_["ACT_QUANT_INT8"] & res.last):
                m.d.sync += amax.eq(aq.o.payload.amax)
        with m.If(res_fire & res.err):
            m.d.sync += err_seen.eq(1)

        # ---- packer -----------------------------------------------------------------------
        k = Signal(6)                       # elements in the word being assembled
        asm = Signal(_WORD)
        epw = Mux(out1, 32, Mux(out2, 16, 8))
        placed = Signal(_WORD)
        m.d.comb += placed.eq(asm)
        with m.If(out1):
            m.d.comb += placed.word_select(k[:5], 8).eq(res.y[:8])
        with m.Elif(out2):
            m.d.comb += placed.word_select(k[:4], 16).eq(res.y[:16])
        with m.Else():
            m.d.comb += placed.word_select(k[:3], 32).eq(res.y)
        completes = (k + 1 == epw) | res.last
        ws_valid = Signal()                 # write slot: a finished word waiting for the port
        ws_addr = Signal(range(ctx.sp_words))
        ws_data = Signal(_WORD)
        ws_bytes = Signal(6)                # bytes of the word that are ours (32: whole word)
        ws_final = Signal()                 # the last word of the instruction
        ws_write = Signal()                 # really write (range ok, no error)
        out_ptr = Signal(range(ctx.sp_words + 2))
        amax_pending = Signal()
        ebytes = Mux(out1, 1, Mux(out2, 2, 4))
        m.d.comb += res_ready.eq(~(ws_valid & completes) & ~amax_pending & ~pk_done & ~stop)
        with m.If(res_fire):
            with m.If(completes):
                m.d.sync += [ws_valid.eq(1), ws_addr.eq(out_ptr), ws_data.eq(placed),
                             ws_bytes.eq((k + 1) * ebytes), ws_final.eq(res.last & ~out1),
                             ws_write.eq(dst_ok), out_ptr.eq(out_ptr + 1), asm.eq(0), k.eq(0)]
                with m.If(res.last & out1):
                    m.d.sync += amax_pending.eq(1)
            with m.Else():
                m.d.sync += [asm.eq(placed), k.eq(k + 1)]
        # the amax word of ACT_QUANT_INT8 after the last xq word
        with m.If(amax_pending & ~ws_valid):
            m.d.sync += [amax_pending.eq(0), ws_valid.eq(1), ws_addr.eq(out_ptr),
                         ws_data.eq(amax), ws_bytes.eq(4), ws_final.eq(1), ws_write.eq(amax_ok)]

        # write slot: whole words directly, partial words by read-modify-write on sp_r[0]
        spw = self.sp_w[0]
        mask = Signal(_WORD)
        m.d.comb += mask.eq(Mux(ws_bytes[5], Const(-1, _WORD),
                                (Const(1, _WORD + 1) << Cat(Const(0, 3), ws_bytes[:5])) - 1))
        ws_idle = Signal()
        with m.FSM(name="wslot"):
            with m.State("IDLE"):
                m.d.comb += ws_idle.eq(1)
                with m.If(ws_valid):
                    with m.If(~ws_write | stop):
                        m.d.sync += [ws_valid.eq(0), pk_done.eq(ws_final)]
                    with m.Elif(ws_bytes[5]):
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "RMW_READ"
            with m.State("RMW_READ"):
                m.d.comb += [rmw_req.eq(1), rmw_addr.eq(ws_addr)]
                with m.If(spa.gnt):
                    m.next = "RMW_DATA"
            with m.State("RMW_DATA"):
                m.d.sync += ws_data.eq((spa.data & ~mask) | (ws_data & mask))
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [spw.req.eq(1), spw.addr.eq(ws_addr), spw.data.eq(ws_data)]
                with m.If(spw.gnt):
                    m.d.sync += [ws_valid.eq(0), pk_done.eq(ws_final)]
                    m.next = "IDLE"

        # ---- instruction control ------------------------------------------------------------
        f = ctl.cmd.payload.instr.npe
        rem = Signal(9)            # ROPE: length mod head_dim, bit-serial
        bit = Signal(5)
        m.d.comb += ctl.done.payload.eq(code)
        prog = Signal()
        m.d.comb += ctl.progress.eq(prog)
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.comb += flush.eq(1)
                    m.d.sync += [op.eq(f.subop), n.eq(f.length), a_buf.eq(f.a_buf), b_buf.eq(f.b_buf),
                                 d_buf.eq(f.dst_buf), a_w.eq(f.a_off >> 5), b_w.eq(f.b_off >> 5),
                                 d_w.eq(f.dst_off >> 5), param.eq(f.param_addr), hd.eq(f.head_dim),
                                 eps.eq(f.eps), fmt.eq(f.fmt), code.eq(ErrorCode.NONE),
                                 err_seen.eq(0), dma_code.eq(ErrorCode.NONE), pk_done.eq(0),
                                 f_go.eq(0), f_busy.eq(0), tab_ptr.eq(0), inv_d_ok.eq(0),
                                 rem.eq(0), bit.eq(_LEN_BITS - 1), ws_valid.eq(0),
                                 amax_pending.eq(0), k.eq(0), asm.eq(0), pos_in.eq(0),
                                 pos_out.eq(0), src_valid.eq(0)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += prog.eq(1)
                # ROPE: rem = length mod head_dim, one bit per cycle (restoring division)
                r2x = Cat(n.bit_select(bit, 1), rem)
                m.d.sync += [rem.eq(Mux(r2x >= hd, r2x - hd, r2x)), bit.eq(bit - 1)]
                with m.If(~is_["ROPE"] | (bit == 0)):
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.comb += prog.eq(1)
                hbm_total = ctx.ports * ctx.channel_bytes
                p_bytes = Mux(is_["ROPE"], hd << 2, n << 2)
                hbm_bad = (is_["RMSNORM"] | is_["ROPE"]) & (param + p_bytes > hbm_total)
                a_bad = a_w + n_in_words > bw
                b_bad = uses_b & (b_w + ((n + 7) >> 3) > bw)
                rms_bad = is_["RMSNORM"] & ((n > _RMS_MAX_D) | (eps < _EPS_MIN_BITS) | (eps > _EPS_MAX_BITS))
                d_end = d_w + n_out_words
                m.d.sync += [dst_ok.eq(d_end <= bw), amax_ok.eq(d_end + 1 <= bw),
                             range_code.eq(Mux((d_end > bw) | (out1 & (d_end + 1 > bw)),
                                               ErrorCode.BUF_RANGE, ErrorCode.NONE)),
                             out_ptr.eq(d_buf * bw + d_w),
                             f_addr.eq(param), f_to_table.eq(is_["ROPE"]),
                             f_left.eq(Mux(is_["ROPE"], (hd + 7) >> 3, (n + 7) >> 3)),
                             w_left.eq(n)]
                with m.If(~supported | (is_["TO_FP32"] & (fmt > _BF16))):
                    m.d.sync += code.eq(ErrorCode.FIELD_RANGE)
                    m.next = "DONE"
                with m.Elif(is_["ROPE"] & ((hd == 0) | (rem != 0))):
                    m.d.sync += code.eq(ErrorCode.SHAPE)
                    m.next = "DONE"
                with m.Elif(hbm_bad):
                    m.d.sync += code.eq(ErrorCode.HBM_RANGE)
                    m.next = "DONE"
                with m.Elif(a_bad | b_bad):
                    m.d.sync += code.eq(ErrorCode.BUF_RANGE)
                    m.next = "DONE"
                with m.Elif(rms_bad):
                    m.d.sync += code.eq(ErrorCode.SHAPE)
                    m.next = "DONE"
                with m.Elif(is_["ROPE"]):
                    m.d.sync += f_go.eq(1)
                    m.next = "TABLE"
                with m.Elif(is_["RMSNORM"]):
                    m.d.sync += f_go.eq(1)
                    m.next = "SETUP"
                with m.Else():
                    m.next = "START"
            with m.State("TABLE"):
                m.d.comb += prog.eq(dma_beat)
                with m.If(stop):
                    m.next = "DRAIN"
                with m.Elif((f_left == 0) & ~f_busy):
                    m.d.sync += f_go.eq(0)
                    m.next = "START"
            with m.State("SETUP"):   # binary32(1 / length) for RMSNorm
                if div is not None:
                    m.d.comb += [prog.eq(1), div.i.valid.eq(~inv_d_ok), div.i.payload.a.eq(_ONE_BITS),
                                 div.i.payload.b.eq(_int_to_f32(m, n, _LEN_BITS)), div.o.ready.eq(1)]
                    with m.If(div.i.ready):
                        m.d.sync += inv_d_ok.eq(1)
                    with m.If(stop):
                        m.next = "DRAIN"
                    with m.Elif(div.o.valid):
                        m.d.sync += inv_d.eq(div.o.payload.q)
                        m.next = "START"
                else:
                    m.next = "DRAIN"
            with m.State("START"):
                m.d.comb += [start.eq(1), prog.eq(1)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += prog.eq(load | res_fire | spw.gnt | dma_beat | spa.gnt | self.sp_r[1].gnt)
                with m.If(stop):
                    m.next = "DRAIN"
                with m.Elif(pk_done & ~f_busy):
                    m.d.sync += code.eq(range_code)
                    m.next = "DONE"
            with m.State("DRAIN"):   # let the HBM command and a scratch read in flight finish
                with m.If(~f_busy & ws_idle):
                    m.d.sync += code.eq(Mux(dma_code != ErrorCode.NONE, dma_code,
                                            Mux(err_seen, ErrorCode.SHAPE, ErrorCode.NONE)))
                    m.next = "DRAIN2"
            with m.State("DRAIN2"):  # one more cycle: the last read's data lands
                m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += ctl.done.valid.eq(1)
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        if rms is not None:
            m.d.comb += [rms.inv_d.eq(inv_d), rms.eps.eq(eps)]
        return m
