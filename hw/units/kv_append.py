"""KV_APPEND execution unit (ST queue): FP16 KV slots and KIVI 2/4-bit ring rows, key groups and
quantized values, bit-exact with the golden ISS (``GoldenISS._op_kv_append``).

Also holds the pieces the other KV units share: :class:`HbmBeatEngine` (global HBM byte address
-> DMA commands on the address's channel), and the KIVI
quantizer datapath (:func:`kivi_quant_pipe`).

HBM addressing
--------------
A global HBM byte address names channel ``addr // channel_bytes`` at local offset
``addr % channel_bytes`` (:mod:`ternopu.sw.compiler.layout`); ``channel_bytes`` defaults to the
DMA's ``mem_bytes`` (the bytes behind one port) and must be a power of two. Every access goes
through the port of its channel (the KV layout puts a token's slot wholly in one channel, so a
row is one burst on one port). The DMA command address is the *local* offset by default
(``global_dma_addr=False``: each port sees its own pseudo-channel, as the simulation HBM models
do); with ``global_dma_addr=True`` the global address is sent (an AXI switch that decodes it).
An access whose channel is not present in the build (``>= ctx.ports``) ends with ``HBM_RANGE``.

KV_APPEND semantics (the ISS is the specification)
--------------------------------------------------
1. The KV layout descriptor (21 uint64 words at ``desc_addr``) is read, unless the last
   KV_APPEND used the same ``desc_addr`` (one-entry cache, cleared by ``flush``; the overlay
   should pulse it at every start, because the host may rewrite the descriptor between runs).
2. Checks, in the ISS's order, each ending the instruction with ``SHAPE``: magic, ``kv_fmt`` vs
   the descriptor's bits, ``layer < layers``, ``kv_head < kv_heads``,
   ``kv_addr == kv_base + layer * kv_layer_stride``, ``head_dim`` field == descriptor head_dim,
   ``token < max_pos``. Then the unit's own envelope (``SHAPE`` too, documented limits):
   ``kv_nports`` in ``1..63``; KIVI: ``1 <= group <= max_group``, ``head_dim % group == 0``,
   ``head_dim * group <= max_head_dim * max_group``, ``residual <= max_residual``,
   ``ring_rows >= 1``, records that fit the staging buffer. ``BUF_RANGE`` when a K/V row runs
   past the scratch buffer (``buf_words``).
3. FP16: K then V of head ``h`` into the token's slot (``slot_addr(layer, token)`` + ``4*h*d``).
4. KIVI: the route history of tokens ``0 .. token-1`` is scanned (bit ``2*layer``, one beat per
   record) to count the rows of the layer (``rows``) and remember the tokens of the last
   ``residual + 1`` rows. K/V go to ring entry ``(rows-1) % ring_rows``. When
   ``rows > residual`` and ``(rows - residual) % group == 0``, key group
   ``j = (rows - residual) / group - 1`` is quantized from ring rows ``j*group ..`` (per
   channel) and written to ``kgroup_addr(layer, j)``; when ``rows > residual``, the value of
   row ``rows - residual - 1`` is quantized (per ``group`` channels) into that token's slot.
   Non-finite fp16 in a group being quantized -> ``SHAPE`` (the golden's check).

Partial beats are read-modify-write: a record or row that does not start and end on a 32-byte
boundary is read first, merged in the staging buffer, and written back whole. The ST queue runs
one instruction at a time, so nothing else writes these bytes in between.

Quantizer (bit-exact with :func:`ternopu.golden.kivi._quantize_last`)
--------------------------------------------------------------------
Per group: ``mn``/``mx`` by ordered fp16 compares (IEEE: ``-0 == +0``), a zero of either sign
entering the ``mn``/``mx`` register as ``+0`` (:func:`_f16_pos_zero`), so a zero min / max is
stored as ``+0`` and ``scale`` is never ``-0`` -- the golden's signed-zero rule
(:mod:`ternopu.golden.kivi`, Arithmetic step 1). Equal non-zero finite fp16 values have equal
bits, so which of several equal elements is kept does not matter. Then one pipelined
datapath for both the scale and the codes: ``a = fl32(fl32(x) - fl32(mn))`` (fpu ``fsub``),
``y = fl32(a / s)`` with ``s`` a binary16 divisor (``L`` for the scale, the stored scale for the
codes; a radix-2 long division, two quotient bits per stage, correctly rounded), then
``scale = f2h(y)`` or ``q = min(clamp(RNE(y), 0, 15), L)`` (``0`` when the scale is not > 0).
Latency :data:`QUANT_LATENCY` cycles, one element per cycle.

Throughput (cycles, d = head_dim, g = group): FP16 ~ 4*ceil(2d/32) per row + DMA round trips;
KIVI adds the history scan (one cycle per history token, bursts of ``max_burst`` beats), per
value ``d`` (gather) + ``d/g * (2g + 2*QUANT_LATENCY)``, per key group ``g*d`` (gather) +
``d * (2g + 2*QUANT_LATENCY)`` once every ``g`` rows. The address arithmetic uses one sequential
multiplier/divider (:data:`ARITH_CYCLES` cycles per operation).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.fpu import Pipe, Val, _round_pack, f2h, f2i, fsub, lzc
from ternopu.hw.dma import dma_error_code
from ternopu.hw.overlay import SlotContext
from ternopu.hw.scratchpad import ScratchReadSignature
from ternopu.hw.unit_port import DmaReadClientSignature, DmaWriteClientSignature, UnitPortSignature

__all__ = ["HbmBeatEngine", "KVAppendUnit", "kivi_quant_pipe",
           "QUANT_LATENCY", "ARITH_CYCLES", "KV_DESC_MAGIC", "DESC_BEATS", "SeqArith",
           "channel_bytes_of"]

#: ``b"TNPUKVD1"`` little endian (:data:`ternopu.sw.compiler.layout.KV_DESC_MAGIC`).
KV_DESC_MAGIC = int.from_bytes(b"TNPUKVD1", "little")
#: Descriptor words in memory order (uint64 LE each).
DESC_FIELDS = ("magic", "layers", "kv_heads", "head_dim", "bits", "group", "residual", "max_pos",
               "kv_base", "kv_nports", "slot_bytes", "kv_layer_stride", "kg_base", "kg_bytes",
               "kg_layer_stride", "route_base", "route_bytes", "ring_base", "ring_rows",
               "ring_bytes", "ring_layer_stride")
#: 32-byte beats of the descriptor.
DESC_BEATS = -(-8 * len(DESC_FIELDS) // 32)
#: Cycles of one :class:`SeqArith` operation (operand width of the iterated operand + 2).
ARITH_BITS = 18
ARITH_CYCLES = ARITH_BITS + 2
_ADDR = 64   # width of address arithmetic (descriptor words are 64-bit)


def channel_bytes_of(ctx: SlotContext, channel_bytes) -> int:
    cb = ctx.dma.mem_bytes if channel_bytes is None else channel_bytes
    if not isinstance(cb, int) or cb < 32 or cb & (cb - 1):
        raise ConfigError(f"channel_bytes must be a power of two >= 32 (bytes behind one HBM port), got {cb!r}")
    return cb


# ----------------------------------------------------------------------------------------------
# HBM beat engine
# ----------------------------------------------------------------------------------------------
HBM_REQ_LAYOUT = data.StructLayout({"write": 1, "addr": _ADDR, "beats": 20})


class HbmBeatEngine(wiring.Component):
    """Reads or writes ``beats`` 32-byte beats at a global, 32-byte aligned HBM address.

    Cut into DMA commands of at most ``ctx.dma.max_burst`` beats that never cross a channel
    boundary; each goes to the port of its channel (module docstring), one at a time.

    Ports
    -----
    req : In(stream of HBM_REQ_LAYOUT)
    rdata : Out(stream of 256 bits) -- read beats in address order (no ``last``)
    wdata : In(stream of 256 bits) -- exactly ``beats`` words for a write
    done : Out(stream of ErrorCode) -- one per request: NONE, HBM_RANGE (the access runs past
        ``ctx.ports * channel_bytes``: checked before anything moves; or a DMA range error),
        AXI_RESP; no command is issued after an error or while ``abort`` is high
    abort : In(1)
    progress : Out(1) -- a command or beat moved this cycle
    rd, wr : DMA clients, one per port

    With ``reads=False`` the engine only writes: no ``rd`` clients and no ``rdata`` (every request
    is a write, whatever its ``write`` field says).
    """

    def __init__(self, ctx: SlotContext, *, channel_bytes=None, global_dma_addr: bool = False,
                 reads: bool = True):
        if not isinstance(reads, bool):
            raise ConfigError(f"HbmBeatEngine: reads must be a bool, got {reads!r}")
        self.ctx = ctx
        self.cb = channel_bytes_of(ctx, channel_bytes)
        self.global_dma_addr = global_dma_addr
        self.reads = reads
        members = {
            "req": In(stream.Signature(HBM_REQ_LAYOUT)),
            "rdata": Out(stream.Signature(isa.INSTR_BITS)),
            "wdata": In(stream.Signature(isa.INSTR_BITS)),
            "done": Out(stream.Signature(isa.ErrorCode)),
            "abort": In(1),
            "progress": Out(1),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "wr": Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports),
        }
        if not reads:
            del members["rdata"], members["rd"]
        super().__init__(members)

    def elaborate(self, platform):  # noqa: C901 - one FSM, reads optional
        m = Module()
        ctx, P = self.ctx, self.ctx.ports
        lg = self.cb.bit_length() - 1
        write = Signal() if self.reads else Const(1, 1)
        addr = Signal(_ADDR)
        left = Signal(20)
        cur_n = Signal(range(ctx.dma.max_burst + 1))
        cur = Signal(range(max(P, 2)))
        sent = Signal(range(ctx.dma.max_burst + 1))
        code = Signal(isa.ErrorCode)
        ch = Signal(_ADDR - lg)
        local = Signal(lg)
        room = Signal(lg - 4)
        n = Signal(20)
        m.d.comb += [ch.eq(addr[lg:]), local.eq(addr[:lg]), room.eq((self.cb - local) >> 5)]
        n0 = Mux(left < room, left, room)
        m.d.comb += n.eq(Mux(n0 > ctx.dma.max_burst, ctx.dma.max_burst, n0))
        cmd_addr = addr if self.global_dma_addr else local
        for q in range(P):
            m.d.comb += self.wr[q].done.ready.eq(1)
            if self.reads:
                m.d.comb += [self.rd[q].data.ready.eq(1), self.rd[q].done.ready.eq(1)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    p = self.req.payload
                    m.d.sync += [addr.eq(p.addr), left.eq(p.beats), code.eq(isa.ErrorCode.NONE)]
                    if self.reads:
                        m.d.sync += write.eq(p.write)
                    # the whole access is checked first (nothing moves), as the ISS does
                    with m.If(p.addr + (p.beats << 5) > P * self.cb):
                        m.d.sync += code.eq(isa.ErrorCode.HBM_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.sync += sent.eq(0)
                with m.If((left == 0) | self.abort):
                    m.next = "DONE"
                with m.Elif(ch >= P):
                    m.d.sync += code.eq(isa.ErrorCode.HBM_RANGE)
                    m.next = "DONE"
                with m.Else():
                    for q in range(P):
                        with m.If(ch == q):
                            for c in (self.rd[q], self.wr[q]) if self.reads else (self.wr[q],):
                                m.d.comb += [c.cmd.payload.addr.eq(cmd_addr), c.cmd.payload.beats.eq(n),
                                             c.cmd.payload.rows.eq(1), c.cmd.payload.stride.eq(0)]
                            m.d.comb += self.wr[q].cmd.valid.eq(write)
                            if self.reads:
                                m.d.comb += self.rd[q].cmd.valid.eq(~write)
                                cmd_ready = Mux(write, self.wr[q].cmd.ready, self.rd[q].cmd.ready)
                            else:
                                cmd_ready = self.wr[q].cmd.ready
                            with m.If(cmd_ready):
                                m.d.comb += self.progress.eq(1)
                                m.d.sync += [cur.eq(q), cur_n.eq(n)]
                                m.next = "DATA"
            with m.State("DATA"):
                for q in range(P):
                    with m.If(cur == q):
                        wr = self.wr[q]
                        m.d.comb += [wr.data.valid.eq(write & self.wdata.valid & (sent != cur_n)),
                                     wr.data.payload.eq(self.wdata.payload),
                                     self.wdata.ready.eq(write & wr.data.ready & (sent != cur_n))]
                        beat = self.wdata.valid & self.wdata.ready
                        dv, dp = wr.done.valid, wr.done.payload
                        m.d.comb += wr.done.ready.eq(write)
                        if self.reads:
                            rd = self.rd[q]
                            m.d.comb += [self.rdata.valid.eq(~write & rd.data.valid),
                                         self.rdata.payload.eq(rd.data.payload.data),
                                         rd.data.ready.eq(self.rdata.ready | write)]
                            beat |= self.rdata.valid & self.rdata.ready
                            dv = Mux(write, wr.done.valid, rd.done.valid)
                            dp = Mux(write, wr.done.payload, rd.done.payload)
                            m.d.comb += rd.done.ready.eq(~write)
                        with m.If(beat):
                            m.d.comb += self.progress.eq(1)
                            m.d.sync += sent.eq(sent + 1)
                        with m.If(dv):
                            m.d.comb += self.progress.eq(1)
                            with m.If(dp != 0):
                                m.d.sync += code.eq(dma_error_code(dp))
                                m.next = "DONE"
                            with m.Else():
                                m.d.sync += [addr.eq(addr + (cur_n << 5)), left.eq(left - cur_n)]
                                m.next = "ISSUE"
            with m.State("DONE"):
                m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(code)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m


# ----------------------------------------------------------------------------------------------
# sequential multiply / divide for address arithmetic
# ----------------------------------------------------------------------------------------------
class SeqArith(wiring.Component):
    """``op=0``: ``q, r = divmod(a, b)`` for ``a < 2**18`` (``b != 0``, any 64-bit ``b``);
    ``op=1``: ``q = a * b mod 2**64`` for ``b < 2**18``. :data:`ARITH_CYCLES` cycles from
    ``start`` to ``done`` (a one-cycle pulse; results held until the next start)."""

    def __init__(self):
        super().__init__({"start": In(1), "op": In(1), "a": In(_ADDR), "b": In(_ADDR),
                          "done": Out(1), "q": Out(_ADDR), "r": Out(_ADDR)})

    def elaborate(self, platform):
        m = Module()
        cnt = Signal(range(ARITH_BITS + 2))
        op = Signal()
        x = Signal(ARITH_BITS)      # iterated operand (dividend / multiplier), MSB first
        y = Signal(_ADDR)           # divisor / multiplicand
        busy = Signal()
        with m.If(self.start):
            m.d.sync += [busy.eq(1), cnt.eq(ARITH_BITS), op.eq(self.op), self.q.eq(0), self.r.eq(0),
                         x.eq(Mux(self.op, self.b, self.a)), y.eq(Mux(self.op, self.a, self.b))]
        with m.Elif(busy):
            with m.If(cnt == 0):
                m.d.sync += busy.eq(0)
                m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.sync += [cnt.eq(cnt - 1), x.eq(x << 1)]
                bit = x[ARITH_BITS - 1]
                with m.If(op):
                    m.d.sync += self.q.eq((self.q << 1) + Mux(bit, y, 0))
                with m.Else():
                    rem = Cat(bit, self.r)[:_ADDR + 1]
                    ge = rem >= y
                    m.d.sync += [self.r.eq(Mux(ge, rem - y, rem)), self.q.eq(Cat(ge, self.q))]
        return m


# ----------------------------------------------------------------------------------------------
# KIVI quantizer datapath
# ----------------------------------------------------------------------------------------------
def _h2f(m: Module, h: Value, name: str):
    """Exact binary16 -> binary32 bit pattern (comb)."""
    s, be, f = h[15], h[10:15], h[:10]
    z = lzc(m, f, 10, name=f"{name}_lz")
    sub_f = Signal(10, name=f"{name}_sf")
    m.d.comb += sub_f.eq((f << (z + 1))[:10])
    out = Signal(32, name=name)
    with m.If(be == 31):
        m.d.comb += out.eq(Cat(Const(0, 13), f, Const(0xFF, 8), s))
    with m.Elif(be != 0):
        m.d.comb += out.eq(Cat(Const(0, 13), f, (be + 112)[:8], s))
    with m.Elif(f != 0):
        m.d.comb += out.eq(Cat(Const(0, 13), sub_f, (112 - z)[:8], s))
    with m.Else():
        m.d.comb += out.eq(Cat(Const(0, 31), s))
    return out


def _div_f32_by_f16(p: Pipe, a: Val, s: Val) -> Val:
    """``fl32(a / s)`` for binary32 ``a >= 0`` (zero or normal) and binary16 ``s > 0``, RNE.

    ``s`` may be given as its 15 magnitude bits (the sign bit is never read).

    Radix-2 long division of the 24-bit significand by the 11-bit (normalized) divisor, two
    quotient bits per stage; the sign of ``a`` is kept (``-0 / s = -0``). The quotients that occur
    in the quantizer are normal binary32 numbers (module docstring)."""
    m = p.m
    st, (x, h) = p.align(a, s)
    n = p.name
    # ---- decode (stage st -> st+1)
    hf, hbe = h[:10], h[10:15]
    z = lzc(m, hf, 10, name=f"{n}_dlz")
    ms = Signal(11, name=f"{n}_dms")
    es = Signal(signed(8), name=f"{n}_des")
    with m.If(hbe != 0):
        m.d.comb += [ms.eq(Cat(hf, 1)), es.eq(hbe - 25)]
    with m.Else():
        m.d.comb += [ms.eq(hf << (z + 1)), es.eq(-25 - z)]
    expq = Signal(signed(11), name=f"{n}_deq")
    m.d.comb += expq.eq(x[23:31] - 150 - es - 13)
    ma = Cat(x[:23], 1)
    ms_v = p.reg(ms, st, "dms")
    e_v = p.reg(expq, st, "deq")
    zero_v = p.reg(x[23:31] == 0, st, "dz")
    sg_v = p.reg(x[31], st, "dsg")
    rem_v = p.reg(ma[14:24], st, "drem")      # the first 10 dividend bits are below any divisor
    lo_v = p.reg(ma[:14], st, "dlo")          # remaining dividend bits (then 13 zeros)
    q_v = None                                # quotient bits so far, first bit on top
    stage = st + 1
    bits_done = 0
    QB = 27
    while bits_done < QB:
        rem, d = p.at(rem_v, stage), p.at(ms_v, stage)
        q = p.at(q_v, stage) if q_v is not None else None
        # dividend bits i >= 13 come from lo; below that they are zeros
        lo = p.at(lo_v, stage) if QB - 1 - bits_done >= 13 else None
        for _ in range(min(2, QB - bits_done)):
            i = QB - 1 - bits_done                 # dividend bit index (N = ma << 13)
            nb = lo[i - 13] if i >= 13 else Const(0, 1)
            r2 = Cat(nb, rem)[:12]
            ge = r2 >= d
            rem = Mux(ge, r2 - d, r2)[:11]
            q = ge if q is None else Cat(ge, q)    # grows to QB bits: nothing is shifted out
            bits_done += 1
        rem_v = p.reg(rem, stage, "drem")
        q_v = p.reg(q, stage, "dq")
        # carry on only the lo bits later stages still read: lo[0 .. next i - 13]
        lo_left = QB - 1 - bits_done - 12
        if lo is not None and lo_left > 0:
            lo_v = Val(lo[:lo_left], stage)
        stage += 1
    q, rem = p.at(q_v, stage), p.at(rem_v, stage)
    top = q[26]
    keep = Mux(top, q[3:27], q[2:26])
    guard = Mux(top, q[2], q[1])
    sticky = Mux(top, q[1] | q[0], q[0]) | (rem != 0)
    be = Signal(signed(12), name=f"{n}_dbe")
    m.d.comb += be.eq(p.at(e_v, stage) + top + 2 + 150)
    packed = _round_pack(m, keep[:23], guard, sticky, be[:8], p.at(sg_v, stage))
    out = Mux(p.at(zero_v, stage), Cat(Const(0, 31), p.at(sg_v, stage)), packed)
    return p.reg(out, stage, "dq32")


def kivi_quant_pipe(m: Module, en, x16, mn16, div16, name: str = "kq"):
    """The quantizer datapath (module docstring): ``y = fl32(fl32(x - mn) / div)``.

    Returns ``(pipe, scale16, code, latency)``: ``scale16 = f2h(y)`` (used with ``div = L``),
    ``code = clamp(RNE(y), 0, 15)`` (used with ``div = scale``; the caller applies ``min(., L)``
    and the ``scale > 0`` rule). Inputs at stage 0, both outputs at ``latency``."""
    p = Pipe(m, en, name)
    # the divisor is > 0 (see the callers): its sign bit is not carried into the divider
    xv, mnv, dv = p.input(x16), p.input(mn16), p.input(div16[:15])
    xf = p.comb(lambda s: _h2f(m, s, f"{name}_hx"), xv)
    mf = p.comb(lambda s: _h2f(m, s, f"{name}_hm"), mnv)
    xr, mr = p.reg(xf.sig, 0, "x32"), p.reg(mf.sig, 0, "m32")
    a = fsub(p, xr, mr)
    y = _div_f32_by_f16(p, a, dv)
    sc = f2h(p, y)
    code = f2i(p, y, 5, 0, 15)   # signed(5) holds 0..15
    lat = max(sc.stage, code.stage)
    return p, p.at(sc, lat), p.at(code, lat), lat


def _quant_latency() -> int:
    m = Module()
    m._MustUse__silence = True   # only built to measure the depth
    return kivi_quant_pipe(m, Const(1), Signal(16), Signal(16), Signal(16))[3]


#: Cycles from an element entering the quantizer datapath to its scale / code.
QUANT_LATENCY = _quant_latency()


def _f16_key(h):
    """Unsigned key whose order is the IEEE order of finite binary16 values (-0 below +0)."""
    return Mux(h[15], ~h, h | 0x8000)[:16]


def _f16_pos_zero(h):
    """``h`` with ``-0`` (``0x8000``) replaced by ``+0``; every other binary16 unchanged."""
    return Mux(h[:15] == 0, 0, h)[:16]


def _f16_lt(a, b):
    """IEEE ``a < b`` for finite binary16 (``-0 == +0``)."""
    both_zero = (a[:15] == 0) & (b[:15] == 0)
    return (_f16_key(a) < _f16_key(b)) & ~both_zero


# ----------------------------------------------------------------------------------------------
# the unit
# ----------------------------------------------------------------------------------------------
class KVAppendUnit(wiring.Component):
    """KV_APPEND sub-unit of the ST slot (module docstring).

    Parameters
    ----------
    ctx : SlotContext
    max_head_dim, max_group : int
        Largest head_dim and KIVI group handled; the group buffer holds ``max_head_dim *
        max_group`` fp16 elements (one key group). Larger descriptors end with ``SHAPE``.
    max_residual : int
        Largest KIVI residual window (the unit keeps the tokens of the last ``residual + 1`` rows).
    channel_bytes, global_dma_addr
        HBM addressing (module docstring).

    Members
    -------
    ctl : In(UnitPortSignature())
    rd, wr : Out(DMA client).array(ctx.ports)
    sp_r : Out(scratch read port, request/grant)
    flush : In(1) -- forget the cached descriptor (pulse at every start)
    """

    def __init__(self, ctx: SlotContext, *, max_head_dim: int = 256, max_group: int = 64,
                 max_residual: int = 256, channel_bytes=None, global_dma_addr: bool = False):
        for name, v, hi in (("max_head_dim", max_head_dim, 256), ("max_group", max_group, 1 << 12),
                            ("max_residual", max_residual, 1 << 16)):
            if not isinstance(v, int) or not 2 <= v <= hi:
                raise ConfigError(f"KVAppendUnit {name} must be an int in [2, {hi}], got {v!r}")
        if max_head_dim % 2:
            raise ConfigError(f"KVAppendUnit max_head_dim must be even, got {max_head_dim}")
        self.ctx = ctx
        self.cb = channel_bytes_of(ctx, channel_bytes)
        self.global_dma_addr = global_dma_addr
        self.max_head_dim, self.max_group, self.max_residual = max_head_dim, max_group, max_residual
        self.gbuf_elems = max_head_dim * max_group
        # staging: a key-group record (4-bit codes) or a row, plus one beat of misalignment
        nw = -(-max_group * 4 // 32)
        rec = max_head_dim * (4 * nw + 4)
        self.stg_beats = max(-(-rec // 32), -(-4 * max_head_dim // 32), DESC_BEATS, 16) + 1
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "wr": Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "flush": In(1),
        })

    # -----------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        P, CB = ctx.ports, self.cb
        lgcb = CB.bit_length() - 1
        E = isa.ErrorCode

        m.submodules.eng = eng = HbmBeatEngine(ctx, channel_bytes=CB, global_dma_addr=self.global_dma_addr)
        for q in range(P):
            wiring.connect(m, wiring.flipped(self.rd[q]), eng.rd[q])
            wiring.connect(m, wiring.flipped(self.wr[q]), eng.wr[q])
        m.d.comb += eng.abort.eq(ctl.abort)
        m.submodules.alu = alu = SeqArith()

        # ---- memories
        stg = memory.Memory(shape=unsigned(256), depth=self.stg_beats, init=[])
        m.submodules.stg = stg
        sw = stg.write_port(granularity=16)
        sr = stg.read_port()
        gb = memory.Memory(shape=unsigned(16), depth=self.gbuf_elems, init=[])
        m.submodules.gbuf = gb
        gw = gb.write_port()
        gr = gb.read_port()
        tk = memory.Memory(shape=unsigned(17), depth=self.max_residual + 1, init=[])
        m.submodules.toks = tk
        tw = tk.write_port()
        tr = tk.read_port(domain="comb")

        # ---- instruction fields
        f = ctl.cmd.payload.instr.kv_append
        layer = Signal(8)
        head = Signal(6)
        token = Signal(17)
        fmt = Signal(2)
        hd_f = Signal(9)
        k_sp = Signal(range(ctx.sp_words + 1))
        v_sp = Signal(range(ctx.sp_words + 1))
        k_off_f = Signal(20)
        v_off_f = Signal(20)
        kv_addr = Signal(34)
        desc_addr = Signal(34)
        code = Signal(E)

        # ---- descriptor cache
        desc_raw = Signal(64 * len(DESC_FIELDS))
        desc_ok = Signal()
        desc_at = Signal(34)
        with m.If(self.flush):
            m.d.sync += desc_ok.eq(0)
        D = {name: desc_raw[64 * i:64 * (i + 1)] for i, name in enumerate(DESC_FIELDS)}
        d = D["head_dim"][:9]
        g = Signal(range(self.max_group + 1))
        m.d.comb += g.eq(D["group"])
        R = D["residual"]
        kivi = D["bits"] != 16
        bits4 = D["bits"] == 4
        Lq = Mux(bits4, 15, 3)
        L16 = Mux(bits4, 0x4B80, 0x4200)      # 15.0 / 3.0 as binary16 (the quantizer's divisor)
        nw = Signal(range(self.max_group // 4 + 2))  # words of one packed group
        m.d.comb += nw.eq(Mux(bits4, (g + 7) >> 3, (g + 15) >> 4))
        ngrp_v = Signal(9)                      # value groups per row: d / g
        # per-head offsets and record sizes (small products)
        k_row_off = Signal(16)
        m.d.comb += k_row_off.eq(head * d * 4)
        kg_head = Signal(24)
        m.d.comb += kg_head.eq(d * (nw * 4 + 4))
        vq_head = Signal(20)
        m.d.comb += vq_head.eq(ngrp_v * (nw * 4 + 4))

        # ---- scratch read bookkeeping
        sp_words_row = Signal(6)
        m.d.comb += sp_words_row.eq((d * 2 + 31) >> 5)

        # ---- working registers
        rows = Signal(18)
        wptr = Signal(range(self.max_residual + 2))
        scan_s = Signal(18)            # next history token to read
        scan_chunk = Signal(range(self.stg_beats + 1))
        scan_i = Signal(range(self.stg_beats + 1))
        tmp_q = Signal(_ADDR)
        tmp_r = Signal(_ADDR)
        acc = Signal(_ADDR)
        addr_res = Signal(_ADDR)
        idx = Signal(18)
        jgrp = Signal(18)
        vtok = Signal(17)
        nrow = Signal(18)              # ring row being gathered
        gi = Signal(range(self.max_group + 1))   # rows gathered so far (keys)
        # span write / read-modify-write
        sp_dst = Signal(_ADDR)
        sp_len = Signal(16)
        sh = Signal(5)
        span_beats = Signal(12)
        m.d.comb += [sh.eq(sp_dst[:5]), span_beats.eq((sp_dst[:5] + sp_len + 31) >> 5)]
        span_base = Cat(Const(0, 5), sp_dst[5:])
        rmw = (sh != 0) | (sp_len[:5] != 0)
        shr = Signal(6)
        m.d.comb += shr.eq(32 - sh)

        # ---- engine defaults: read beats land in stg[0..]
        rd_ptr = Signal(range(self.stg_beats + 1))
        m.d.comb += eng.rdata.ready.eq(1)
        with m.If(eng.rdata.valid):
            m.d.sync += rd_ptr.eq(rd_ptr + 1)
        m.d.comb += eng.done.ready.eq(0)

        # stg write-port mux (state logic drives these)
        w_en = Signal(16)
        w_addr = Signal(range(self.stg_beats))
        w_data = Signal(256)
        m.d.comb += [sw.en.eq(w_en), sw.addr.eq(w_addr), sw.data.eq(w_data)]
        with m.If(eng.rdata.valid):
            m.d.comb += [w_en.eq(0xFFFF), w_addr.eq(rd_ptr), w_data.eq(eng.rdata.payload)]
        r_addr = Signal(range(self.stg_beats))
        m.d.comb += sr.addr.eq(r_addr)

        # write feed from stg to the engine
        wf_ptr = Signal(range(self.stg_beats + 1))
        wf_have = Signal()
        wf_mode = Signal()
        m.d.comb += [eng.wdata.payload.eq(sr.data)]
        with m.If(wf_mode):
            fire = eng.wdata.valid & eng.wdata.ready
            m.d.comb += [eng.wdata.valid.eq(wf_have), r_addr.eq(Mux(fire, wf_ptr + 1, wf_ptr))]
            m.d.sync += wf_have.eq(1)
            with m.If(fire):
                m.d.sync += wf_ptr.eq(wf_ptr + 1)

        progress = Signal()
        m.d.comb += ctl.progress.eq(progress | eng.progress)

        # ---- gather (stg -> gbuf), element serial
        ga_i = Signal(10)            # element being addressed
        ga_lane0 = Signal(5)         # lane of element 0 (sh/2)
        ga_base = Signal(range(self.gbuf_elems + 1))
        ga_stride = Signal(range(self.max_group + 1))
        ga_dst = Signal(range(self.gbuf_elems + self.max_group * self.max_head_dim + 1))
        ga_v = Signal()              # read data of the previous cycle is an element
        ga_lane = Signal(4)
        ga_wdst = Signal.like(ga_dst)
        nonfinite = Signal()
        lane_pos = Signal(14)
        m.d.comb += lane_pos.eq(ga_lane0 + ga_i)
        elem = Signal(16)
        m.d.comb += elem.eq(sr.data.word_select(ga_lane, 16))
        m.d.comb += [gw.addr.eq(ga_wdst), gw.data.eq(elem), gw.en.eq(ga_v)]
        with m.If(ga_v & (elem[10:15] == 31)):
            m.d.sync += nonfinite.eq(1)

        # ---- quantizer
        qz_run = Signal()             # pass active (feeding elements)
        qz_x = Signal(16)
        qz_mn = Signal(16)
        qz_div = Signal(15)           # divisor magnitude (L, or a scale > 0: see ``live``)
        qz_valid_in = Signal()
        qz_kind = Signal()            # 0 = scale, 1 = code
        qp, q_scale, q_code, qlat = kivi_quant_pipe(m, Const(1), qz_x, qz_mn, qz_div, name="kq")
        vtag = qp.input(qz_valid_in)
        ktag = qp.input(qz_kind)
        out_valid = qp.at(vtag, qlat)
        out_kind = qp.at(ktag, qlat)
        grp = Signal(range(self.max_head_dim + 1))   # group index
        ngroups = Signal(range(self.max_head_dim + 1))
        pi = Signal(range(self.max_group + 2))       # element index being fed
        gr_v = Signal()                              # gbuf read data valid (element pi-1)
        mn = Signal(16)
        mx = Signal(16)
        first = Signal()
        scale = Signal(16)
        oi = Signal(range(self.max_group + 2))       # output element index (codes)
        word = Signal(32)
        rec_codes = Signal(19)                        # 2-byte lanes of codes of the record
        m.d.comb += rec_codes.eq(ngroups * nw * 2)
        x_rd = gr.data
        m.d.comb += gr.addr.eq(grp * g + pi)

        # ---- arithmetic helpers ------------------------------------------------------------------
        def sync(*stmts):
            m.d.sync += list(stmts)

        def alu_op(state, op, a, b, nxt, on_done):
            """State ``state``: start the ALU; ``state_w``: wait, then ``on_done()`` and go on."""
            with m.State(state):
                m.d.comb += [alu.start.eq(1), alu.op.eq(op), alu.a.eq(a), alu.b.eq(b)]
                m.next = state + "_w"
            with m.State(state + "_w"):
                m.d.comb += progress.eq(1)
                with m.If(alu.done):
                    on_done()
                    m.next = nxt

        def rr_addr(prefix, base, layer_stride, size, nxt):
            """``addr_res = KVLayout._rr(base, layer_stride, idx, layer, size)`` (global)."""
            alu_op(prefix, 0, idx, D["kv_nports"], f"{prefix}_b",
                   lambda: sync([tmp_q.eq(alu.q), tmp_r.eq(alu.r)]))
            alu_op(f"{prefix}_b", 0, base[lgcb:] + tmp_r, P, f"{prefix}_c",
                   lambda: sync(addr_res.eq(alu.r << lgcb)))
            alu_op(f"{prefix}_c", 1, layer_stride, layer, f"{prefix}_d",
                   lambda: sync(acc.eq(base[:lgcb] + alu.q)))
            alu_op(f"{prefix}_d", 1, size, tmp_q, nxt,
                   lambda: sync(addr_res.eq(addr_res + acc + alu.q)))

        def hbm(state, write, addr_v, beats, nxt, err_to="DONE"):
            """Issue one engine request and wait for its completion."""
            with m.State(state):
                m.d.comb += [eng.req.valid.eq(1), eng.req.payload.write.eq(write),
                             eng.req.payload.addr.eq(addr_v), eng.req.payload.beats.eq(beats)]
                m.d.sync += [rd_ptr.eq(0), wf_ptr.eq(0), wf_have.eq(0)]
                with m.If(eng.req.ready):
                    m.next = state + "_w"
            with m.State(state + "_w"):
                if write:
                    m.d.comb += wf_mode.eq(1)
                m.d.comb += eng.done.ready.eq(1)
                with m.If(eng.done.valid):
                    with m.If(eng.done.payload != E.NONE):
                        m.d.sync += code.eq(eng.done.payload)
                        m.next = err_to
                    with m.Else():
                        m.next = nxt

        def check(state, cond, err, nxt):
            with m.State(state):
                with m.If(cond):
                    m.d.sync += code.eq(err)
                    m.next = "DONE"
                with m.Else():
                    m.next = nxt

        def span_write(prefix, fill_state, nxt):
            """``prefix``: read the span if it is partial; then ``fill_state`` (which must go to
            ``prefix_wr``); then write the span."""
            with m.State(prefix):
                with m.If(ctl.abort):
                    m.next = "DONE"
                with m.Elif(rmw):
                    m.next = prefix + "_rd"
                with m.Else():
                    m.next = fill_state
            hbm(prefix + "_rd", 0, span_base, span_beats, fill_state)
            hbm(prefix + "_wr", 1, span_base, span_beats, nxt)

        # scratch row copy (scratch word address sp_src, sp_len bytes) into stg at byte sh
        sp_src = Signal(range(ctx.sp_words + 1))
        sp_w = Signal(6)
        sp_data = Signal(256)

        def sp_copy(prefix, nxt):
            with m.State(prefix):
                m.d.sync += sp_w.eq(0)
                m.next = prefix + "_req"
            with m.State(prefix + "_req"):
                m.d.comb += [self.sp_r.req.eq(1), self.sp_r.addr.eq(sp_src + sp_w)]
                with m.If(self.sp_r.gnt):
                    m.next = prefix + "_data"
            with m.State(prefix + "_data"):
                with m.If(self.sp_r.rvalid):
                    m.d.sync += sp_data.eq(self.sp_r.data)
                    m.d.comb += progress.eq(1)
                    m.next = prefix + "_w0"
            with m.State(prefix + "_w0"):
                beat = Signal(7, name=f"{prefix}_b0")
                m.d.comb += beat.eq(sp_w)
                en = lanes_in_range_dyn(beat)
                hi_lanes = ~((Const(1, 17) << sh[1:])[:16] - 1)[:16]     # lanes >= sh/2: this word
                m.d.comb += [w_en.eq(en & hi_lanes), w_addr.eq(beat),
                             w_data.eq((sp_data << (sh * 8))[:256])]
                m.next = prefix + "_w1"
            with m.State(prefix + "_w1"):
                beat = Signal(7, name=f"{prefix}_b1")
                m.d.comb += beat.eq(sp_w + 1)
                en = lanes_in_range_dyn(beat)
                lo_lanes = ((Const(1, 17) << sh[1:])[:16] - 1)[:16]      # lanes < sh/2: its tail
                m.d.comb += [w_en.eq(en & lo_lanes), w_addr.eq(beat),
                             w_data.eq((sp_data >> (shr * 8))[:256])]
                m.d.sync += sp_w.eq(sp_w + 1)
                with m.If(sp_w + 1 == sp_words_row):
                    m.next = nxt
                with m.Else():
                    m.next = prefix + "_req"

        def lanes_in_range_dyn(beat):
            en = Signal(16)
            base = beat * 32
            for l in range(16):
                pos = base + 2 * l
                m.d.comb += en[l].eq((pos >= sh) & (pos < sh + sp_len))
            return en

        # gather a row of d fp16 elements from stg (row at stg byte sh) into gbuf
        def gather(prefix, nxt):
            with m.State(prefix):
                m.d.sync += [ga_i.eq(0), ga_v.eq(0), ga_lane0.eq(sh >> 1)]
                m.next = prefix + "_run"
            with m.State(prefix + "_run"):
                m.d.comb += [r_addr.eq(lane_pos[4:]), progress.eq(1)]
                m.d.sync += [ga_v.eq(ga_i < d), ga_lane.eq(lane_pos[:4]),
                             ga_wdst.eq(ga_dst), ga_i.eq(ga_i + 1)]
                with m.If(ga_i < d):
                    m.d.sync += ga_dst.eq(ga_dst + ga_stride)
                with m.Else():
                    m.next = nxt

        # quantize ngroups groups of g elements of gbuf into the stg record at byte sh
        def quantize(prefix, nxt):
            with m.State(prefix):
                m.d.sync += grp.eq(0)
                with m.If(nonfinite):
                    m.d.sync += code.eq(E.SHAPE)
                    m.next = "DONE"
                with m.Else():
                    m.next = prefix + "_g"
            with m.State(prefix + "_g"):          # start a group: pass 1 (min / max)
                m.d.sync += [pi.eq(0), gr_v.eq(0), first.eq(1)]
                with m.If(grp == ngroups):
                    m.next = nxt
                with m.Else():
                    m.next = prefix + "_p1"
            with m.State(prefix + "_p1"):
                m.d.comb += progress.eq(1)
                m.d.sync += [pi.eq(pi + 1), gr_v.eq(pi < g)]
                with m.If(gr_v):
                    x = x_rd
                    xz = _f16_pos_zero(x)             # a zero min / max is +0 (golden rule)
                    with m.If(first | _f16_lt(x, mn)):
                        m.d.sync += mn.eq(xz)
                    with m.If(first | _f16_lt(mx, x)):
                        m.d.sync += mx.eq(xz)
                    m.d.sync += first.eq(0)
                with m.If(pi == g + 1):
                    m.next = prefix + "_sc"
            with m.State(prefix + "_sc"):         # scale = f2h(fl32(mx - mn) / L)
                m.d.comb += [qz_x.eq(mx), qz_mn.eq(mn), qz_div.eq(L16), qz_valid_in.eq(1),
                             qz_kind.eq(0)]
                m.next = prefix + "_scw"
            with m.State(prefix + "_scw"):
                m.d.comb += progress.eq(1)
                with m.If(out_valid):
                    m.d.sync += [scale.eq(q_scale), pi.eq(0), gr_v.eq(0), oi.eq(0), word.eq(0)]
                    m.next = prefix + "_p2"
            with m.State(prefix + "_p2"):          # codes: feed g elements, pack the outputs
                m.d.comb += progress.eq(1)
                m.d.sync += gr_v.eq(pi < g)
                with m.If(pi <= g):
                    m.d.sync += pi.eq(pi + 1)
                m.d.comb += [qz_x.eq(x_rd), qz_mn.eq(mn), qz_div.eq(scale), qz_valid_in.eq(gr_v),
                             qz_kind.eq(1)]
                live = (scale[15] == 0) & (scale[:15] != 0)
                cq = Mux(live, Mux(q_code[:5] > Lq, Lq, q_code[:4]), 0)[:4]
                bitpos = Signal(5)
                m.d.comb += bitpos.eq(Mux(bits4, oi << 2, oi << 1))
                nword = Signal(32)
                m.d.comb += nword.eq(word | (cq << bitpos))
                widx = Signal(range(self.max_group + 1))
                m.d.comb += widx.eq(Mux(bits4, oi >> 3, oi >> 4))
                hoff = Signal(4 + len(w_addr))   # stg offset in 2-byte lanes (byte offset / 2)
                m.d.comb += hoff.eq(sh[1:] + ((grp * nw + widx) << 1))
                with m.If(out_valid & out_kind):
                    m.d.sync += [oi.eq(oi + 1), word.eq(nword)]
                    last_in_word = Mux(bits4, oi[:3] == 7, oi[:4] == 15)
                    with m.If(last_in_word | (oi + 1 == g)):
                        m.d.sync += word.eq(0)
                        m.d.comb += [w_addr.eq(hoff[4:]), w_data.eq(Cat(*([nword] * 8))),
                                     w_en.eq(Const(3, 16) << hoff[:4])]
                    with m.If(oi + 1 == g):
                        m.next = prefix + "_smn"
            with m.State(prefix + "_smn"):        # scale at codes + 2*grp
                hoff = Signal(4 + len(w_addr))
                m.d.comb += hoff.eq(sh[1:] + rec_codes + grp)
                m.d.comb += [w_addr.eq(hoff[4:]), w_data.eq(Cat(*([scale] * 16))),
                             w_en.eq(Const(1, 16) << hoff[:4])]
                m.next = prefix + "_smn2"
            with m.State(prefix + "_smn2"):       # mn at codes + 2*ngroups + 2*grp
                hoff = Signal(4 + len(w_addr))
                m.d.comb += hoff.eq(sh[1:] + rec_codes + ngroups + grp)
                m.d.comb += [w_addr.eq(hoff[4:]), w_data.eq(Cat(*([mn] * 16))),
                             w_en.eq(Const(1, 16) << hoff[:4])]
                m.d.sync += grp.eq(grp + 1)
                m.next = prefix + "_g"

        m.d.comb += tr.addr.eq(Mux(wptr == R, 0, wptr + 1))

        # ================================ main FSM ================================================
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    m.d.sync += [layer.eq(f.layer), head.eq(f.kv_head), token.eq(f.token),
                                 fmt.eq(f.kv_fmt), hd_f.eq(f.head_dim),
                                 k_sp.eq(f.k_buf * ctx.buf_words + (f.k_off >> 5)),
                                 v_sp.eq(f.v_buf * ctx.buf_words + (f.v_off >> 5)),
                                 k_off_f.eq(f.k_off), v_off_f.eq(f.v_off),
                                 kv_addr.eq(f.kv_addr), desc_addr.eq(f.desc_addr),
                                 code.eq(E.NONE), nonfinite.eq(0)]
                    with m.If(desc_ok & (desc_at == f.desc_addr)):
                        m.next = "CHK"
                    with m.Else():
                        m.d.sync += desc_ok.eq(0)
                        m.next = "DESC"
            # -- descriptor
            hbm("DESC", 0, desc_addr, DESC_BEATS, "DESC_P")
            desc_i = Signal(range(DESC_BEATS + 2))
            with m.State("DESC_P"):
                m.d.sync += desc_i.eq(0)
                m.next = "DESC_L"
            with m.State("DESC_L"):
                m.d.comb += r_addr.eq(desc_i)
                m.d.sync += desc_i.eq(desc_i + 1)
                with m.If(desc_i != 0):
                    with m.Switch(desc_i - 1):
                        for k in range(DESC_BEATS):
                            with m.Case(k):
                                hi = min(256 * (k + 1), len(desc_raw))
                                m.d.sync += desc_raw[256 * k:hi].eq(sr.data[:hi - 256 * k])
                with m.If(desc_i == DESC_BEATS):
                    m.d.sync += [desc_ok.eq(1), desc_at.eq(desc_addr)]
                    m.next = "CHK"
            # -- checks in the ISS's order
            bits_ok = Mux(fmt == isa.KvFormat.FP16, D["bits"] == 16,
                          Mux(fmt == isa.KvFormat.KIVI2, D["bits"] == 2, D["bits"] == 4))
            with m.State("CHK"):
                with m.If((D["magic"] != KV_DESC_MAGIC) | ~bits_ok | (layer >= D["layers"])
                          | (head >= D["kv_heads"])):
                    m.d.sync += [code.eq(E.SHAPE), desc_ok.eq(D["magic"] == KV_DESC_MAGIC)]
                    m.next = "DONE"
                with m.Else():
                    m.next = "CHK_KA"
            alu_op("CHK_KA", 1, D["kv_layer_stride"], layer, "CHK2",
                   lambda: sync(acc.eq(D["kv_base"] + alu.q)))
            with m.State("CHK2"):
                bad = ((acc != kv_addr) | (hd_f != D["head_dim"]) | (token >= D["max_pos"]))
                env = (D["kv_nports"] == 0) | (D["kv_nports"] >= 64)
                env_k = kivi & ((g == 0) | (D["group"] > self.max_group) | (D["residual"] > self.max_residual)
                                | (D["ring_rows"] == 0) | (D["ring_rows"] >= (1 << 18)))
                with m.If(bad | env | env_k):
                    m.d.sync += code.eq(E.SHAPE)
                    m.next = "DONE"
                with m.Elif(((k_off_f >> 5) + sp_words_row > ctx.buf_words)
                            | ((v_off_f >> 5) + sp_words_row > ctx.buf_words)):
                    m.d.sync += code.eq(E.BUF_RANGE)
                    m.next = "DONE"
                with m.Elif(kivi):
                    m.d.sync += [ngrp_v.eq(0), tmp_r.eq(d)]
                    m.next = "VG"
                with m.Else():
                    m.d.sync += idx.eq(token)
                    m.next = "FA"
            # -- FP16: slot address, then K and V
            rr_addr("FA", D["kv_base"], D["kv_layer_stride"], D["slot_bytes"], "FK")
            self._rows(m, "FK", sp_dst, sp_len, addr_res + k_row_off, d * 2, sp_src, k_sp, span_write,
                       sp_copy, "FV")
            self._rows(m, "FV", sp_dst, sp_len, addr_res + k_row_off + d * 2, d * 2, sp_src, v_sp,
                       span_write, sp_copy, "DONE")

            # -- KIVI: value groups per row (d / g), by repeated subtraction (d <= 256)
            with m.State("VG"):
                with m.If(tmp_r >= g):
                    m.d.sync += [tmp_r.eq(tmp_r - g), ngrp_v.eq(ngrp_v + 1)]
                with m.Elif((tmp_r != 0) | (d * g > self.gbuf_elems)
                            | ((d * (nw * 4 + 4) + 32) > self.stg_beats * 32)):
                    m.d.sync += code.eq(E.SHAPE)
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += [rows.eq(1), wptr.eq(0), scan_s.eq(0)]
                    m.next = "SCAN"
            # -- route history scan: rows of the layer among tokens 0 .. token-1
            rb_beat = (layer >> 7)   # beat of bit 2*layer inside a record
            contiguous = D["route_bytes"] == 32
            room = self.stg_beats if ctx.dma.max_burst > self.stg_beats else ctx.dma.max_burst
            with m.State("SCAN"):
                left = token - scan_s
                with m.If(scan_s == token):
                    m.next = "RING"
                with m.Elif(ctl.abort):
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += scan_chunk.eq(Mux(contiguous, Mux(left > room, room, left), 1))
                    m.next = "SCAN_A"
            alu_op("SCAN_A", 1, D["route_bytes"], scan_s, "SCAN_RD",
                   lambda: sync(acc.eq(D["route_base"] + alu.q + (rb_beat << 5))))
            hbm("SCAN_RD", 0, acc, scan_chunk, "SCAN_P")
            with m.State("SCAN_P"):
                m.d.sync += scan_i.eq(0)
                m.next = "SCAN_L"
            with m.State("SCAN_L"):
                m.d.comb += [r_addr.eq(scan_i), progress.eq(1)]
                m.d.sync += scan_i.eq(scan_i + 1)
                with m.If(scan_i != 0):
                    bit = sr.data.bit_select(Cat(Const(0, 1), layer[:7]), 1)
                    s_tok = scan_s + scan_i - 1
                    with m.If(~bit):
                        m.d.sync += [rows.eq(rows + 1), wptr.eq(Mux(wptr == R, 0, wptr + 1))]
                        m.d.comb += [tw.en.eq(1), tw.addr.eq(wptr), tw.data.eq(s_tok)]
                with m.If(scan_i == scan_chunk):
                    m.d.sync += scan_s.eq(scan_s + scan_chunk)
                    m.next = "SCAN"
            # -- write K/V into ring entry (rows-1) % ring_rows
            alu_op("RING", 0, rows - 1, D["ring_rows"], "RING_A",
                   lambda: sync(idx.eq(alu.r)))
            rr_addr("RING_A", D["ring_base"], D["ring_layer_stride"], D["ring_bytes"], "RK")
            self._rows(m, "RK", sp_dst, sp_len, addr_res + k_row_off, d * 2, sp_src, k_sp, span_write,
                       sp_copy, "RV")
            self._rows(m, "RV", sp_dst, sp_len, addr_res + k_row_off + d * 2, d * 2, sp_src, v_sp,
                       span_write, sp_copy, "KQ")
            # -- key group?
            with m.State("KQ"):
                with m.If(rows > R):
                    m.next = "KQ_D"
                with m.Else():
                    m.next = "DONE"
            alu_op("KQ_D", 0, rows - R, D["group"], "KQ_C",
                   lambda: sync([jgrp.eq(alu.q - 1), tmp_r.eq(alu.r)]))
            with m.State("KQ_C"):
                with m.If(tmp_r == 0):
                    m.d.sync += gi.eq(0)
                    m.next = "KG_M"
                with m.Else():
                    m.next = "VQ"
            # gather rows n = j*g + gi, channel c -> gbuf[c*g + gi]
            alu_op("KG_M", 1, g, jgrp, "KG_R", lambda: sync(nrow.eq(alu.q + gi)))
            alu_op("KG_R", 0, nrow, D["ring_rows"], "KG_A", lambda: sync(idx.eq(alu.r)))
            rr_addr("KG_A", D["ring_base"], D["ring_layer_stride"], D["ring_bytes"], "KG_RD0")
            with m.State("KG_RD0"):
                m.d.sync += [sp_dst.eq(addr_res + k_row_off), sp_len.eq(d * 2), ga_dst.eq(gi),
                             ga_stride.eq(g)]
                m.next = "KG_RD"
            hbm("KG_RD", 0, span_base, span_beats, "KG_G")
            gather("KG_G", "KG_N")
            with m.State("KG_N"):
                m.d.sync += gi.eq(gi + 1)
                with m.If(gi + 1 == g):
                    m.next = "KG_REC"
                with m.Else():
                    m.next = "KG_M"
            # record address: kgroup_addr(layer, j) + head * kg_head
            with m.State("KG_REC"):
                m.d.sync += idx.eq(jgrp)
                m.next = "KG_RA"
            rr_addr("KG_RA", D["kg_base"], D["kg_layer_stride"], D["kg_bytes"], "KG_RB")
            with m.State("KG_RB"):
                m.d.sync += [sp_dst.eq(addr_res + head * kg_head), sp_len.eq(kg_head), ngroups.eq(d)]
                m.next = "KG_S"
            span_write("KG_S", "KG_Q", "VQ")
            quantize("KG_Q", "KG_S_wr")
            # -- value of row n = rows - R - 1 (token vtok)
            with m.State("VQ"):
                with m.If(rows > R):
                    m.d.sync += [nrow.eq(rows - R - 1), nonfinite.eq(0),
                                 vtok.eq(Mux(R == 0, token, tr.data))]
                    m.next = "VQ_R"
                with m.Else():
                    m.next = "DONE"
            alu_op("VQ_R", 0, nrow, D["ring_rows"], "VQ_A", lambda: sync(idx.eq(alu.r)))
            rr_addr("VQ_A", D["ring_base"], D["ring_layer_stride"], D["ring_bytes"], "VQ_RD0")
            with m.State("VQ_RD0"):
                m.d.sync += [sp_dst.eq(addr_res + k_row_off + d * 2), sp_len.eq(d * 2), ga_dst.eq(0),
                             ga_stride.eq(1)]
                m.next = "VQ_RD"
            hbm("VQ_RD", 0, span_base, span_beats, "VQ_G")
            gather("VQ_G", "VQ_T")
            with m.State("VQ_T"):
                m.d.sync += idx.eq(vtok)
                m.next = "VQ_SA"
            rr_addr("VQ_SA", D["kv_base"], D["kv_layer_stride"], D["slot_bytes"], "VQ_RB")
            with m.State("VQ_RB"):
                m.d.sync += [sp_dst.eq(addr_res + head * vq_head), sp_len.eq(vq_head), ngroups.eq(ngrp_v)]
                m.next = "VQ_S"
            span_write("VQ_S", "VQ_Q", "DONE")
            quantize("VQ_Q", "VQ_S_wr")

            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m

    @staticmethod
    def _rows(m, prefix, sp_dst, sp_len, dst, nbytes, sp_src, src, span_write, sp_copy, nxt):
        """Copy a K or V row (``nbytes`` from scratch word ``src``) to HBM byte address ``dst``."""
        with m.State(prefix):
            m.d.sync += [sp_dst.eq(dst), sp_len.eq(nbytes), sp_src.eq(src)]
            m.next = prefix + "_S"
        span_write(prefix + "_S", prefix + "_C", nxt)
        sp_copy(prefix + "_C", prefix + "_S_wr")
