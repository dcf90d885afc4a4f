"""PE_ATTN execution sub-unit of the PE slot: attention of one (layer, KV head) over the KV cache.

Semantics (bit for bit the golden ISS ``_op_pe_attn`` with an FP16 KV cache)::

    desc   = KV layout descriptor at desc_addr (docs/compiler.md, sw/compiler/layout.py)
    src[s] = layer whose KV token s uses (cross-layer reuse, golden ``kv_source_layers``):
             the highest L <= layer where token s ran attention; the route-history record of
             token s < pos says so (bit 2L = 1: skipped), the current token pos = tokens - 1
             always uses ``layer`` itself (its KV was just appended there)
    row[s] = fp16 [head_dim] at slot_addr(src[s], s) + row_offsets(kv_head)[phase]
    QK:  scores[s] = qk_bfp(q, row[s]) * scale     (q fp16 [head_dim] from src_buf; binary32 out)
    PV:  out[d]    = pv_bfp(p, rows)[d]            (p binary32 [tokens] from src_buf)

Datapath
--------
* QK. q is converted to BFP once (32-element blocks, 14-bit mantissas, golden ``to_bfp``). Each
  key row streams in as ``head_dim / 16`` DMA beats; every two beats form one block, converted
  and dotted with q's block (32 exact products, ``I_b``, exponent ``e_b = eq_b + ek_b``). After a
  token's last block its ``head_dim / 32`` partials are aligned in parallel to
  ``max(e_b) - ALIGN_GUARD_BITS`` (RNE right shifts, exact left shifts) and summed; one
  reconstruction to binary32 (``ScaledToFloat32`` with scale 1.0) and one binary32 multiply by
  ``scale`` (``fpu.fmul``, IEEE RNE) give the score. Pipeline: 2 cycles per block, scores leave
  in token order through a FIFO and are packed 8 per scratch word.
* PV. The BFP blocks run along tokens: per token block of 32, the 32 ``p`` values (binary32) are
  converted to one BFP block and the 32 value rows are buffered on chip (``32 x head_dim/16``
  words); per channel the block exponent is the largest exponent field of its 32 values. The
  aligned accumulation over token blocks needs the largest block exponent of each channel over
  *all* blocks before the first term is rounded, so PV makes **two passes** over the value rows:
  pass 1 only finds, per channel, ``emax = max_b(ep_b + ev_b)``; pass 2 computes the block
  partials (16 channels at a time, 32 tokens each) and adds ``rne_shift(I_b, emax - 8 - e_b)``
  into per-channel accumulators; at the end every channel is reconstructed once.

Memory access
-------------
HBM (DMA commands carry global addresses, ``channel * ctx.channel_bytes + local``; each command
goes to the port of the channel it reads): the descriptor (one 6-beat command), per block of 32 tokens the
route-history records of its tokens (commands of up to ``ctx.dma.max_burst`` one-beat records
on route_base's channel), then one ``head_dim/16``-beat command per token on the token's slot
channel ``(chan(kv_base) + s mod kv_nports) mod ports``. Row commands go out ahead of the
consumer (up to ``lookahead`` tokens, one command per port at a time), so consecutive tokens,
which lie on different ports, stream concurrently. Scratch: one read port (q, p, the old last
score word) and one write port (scores / output).

Errors (ErrorCode on ``done``), in the ISS order where it can be told apart:
descriptor read -> ``HBM_RANGE``; bad magic, kv_fmt / layer / kv_head / kv_addr not matching the
descriptor, KIVI ``resid_tokens != residual``, ``tokens > max_pos`` -> ``SHAPE``; history or row
read past a channel / on an absent port -> ``HBM_RANGE``, SLVERR/DECERR -> ``AXI_RESP``; the
source operand past the buffer -> ``BUF_RANGE``; a non-finite q / k / v / p element ->
``SHAPE``; the destination past the buffer -> ``BUF_RANGE``. Limits of this unit (also
``SHAPE``): ``head_dim`` not a multiple of 32 or above ``max_head_dim``, ``tokens`` above
``max_tokens``, ``route_bytes != 32`` (more than 128 layers), ``kv_nports == 0``, and the KIVI
formats (not implemented here yet). A read that the ISS would continue into the next channel is
``HBM_RANGE`` here (the compiler never places data so). On an HBM error the scores already
written stay written (the ISS writes nothing); the run stops anyway.

Numeric contract: ``scale`` finite (the compiler's ``1/sqrt(head_dim)``); PV results above
binary32's subnormal range (true whenever some p of the row is >= 2**-100, e.g. any softmax
output): the reconstruction handles normal numbers and zeros only; a result outside that
range (subnormal, or beyond binary32's largest finite value) ends the instruction with ``SHAPE``,
in the place of a non-finite element (the ISS has no such error: such inputs are outside the unit).

Timing (cycles, not counting DMA latency): QK ``2 * head_dim/32`` per token once the stream
runs (the DMA delivers a beat per cycle per port; the datapath takes one beat per cycle);
PV pass 1 ``head_dim/16`` per token + ``2 * head_dim/16`` per block, pass 2 ``2 * head_dim/16``
per token (stream, then transposed compute) + ``head_dim/16`` per block, then ``head_dim`` for
the output. PV reads the value rows twice (see above): the price of one exact aligned sum
without a partial-sum memory of ``tokens/32 x head_dim`` entries.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.errors import ConfigError
from ternopu.golden.pe import ALIGN_GUARD_BITS, aligned_acc_bits

from .. import isa
from ..bfp import rne_shift_right, rne_shift_signed
from ..dma import dma_error_code
from ..fpu import FMUL_STAGES, Pipe, fmul
from ..pe_array import ScaledToFloat32
from ..scratchpad import ScratchReadSignature, ScratchWriteSignature
from ..unit_port import DmaReadClientSignature, UnitPortSignature

__all__ = ["PEAttnUnit", "factory", "PE_ATTN_OPCODE", "KV_DESC_MAGIC", "DESC_BEATS", "ROUTE_BYTES",
           "QK_TAIL_CYCLES", "DRAIN_CYCLES"]

PE_ATTN_OPCODE = isa.OPCODE_BY_NAME["PE_ATTN"].number
#: Descriptor magic ``b"TNPUKVD1"`` (the same constant as ``ternopu.sw.compiler.layout``).
KV_DESC_MAGIC = int.from_bytes(b"TNPUKVD1", "little")
#: Beats of the descriptor read (21 uint64 words, 192 bytes).
DESC_BEATS = 6
#: The only route-history record size handled: one beat (<= 128 layers).
ROUTE_BYTES = 32
#: Cycles from a token's last key beat to its score entering the output FIFO.
QK_TAIL_CYCLES = 1 + 1 + 1 + 1 + ScaledToFloat32.LATENCY + FMUL_STAGES
#: Cycles DRAIN waits after the last DMA completion so the QK pipeline is empty.
DRAIN_CYCLES = QK_TAIL_CYCLES + 4
_FP16_ONE = 0x3C00
_LANES = 16            # fp16 elements per beat
_F16_EXP_OFF = 15 + 12   # fp16 BFP exponent = field - bias - (mant_bits - 2)
_F32_EXP_OFF = 127 + 12
_DESC = ("magic", "layers", "kv_heads", "head_dim", "bits", "group", "residual", "max_pos", "kv_base",
         "kv_nports", "slot_bytes", "kv_layer_stride", "kg_base", "kg_bytes", "kg_layer_stride",
         "route_base", "route_bytes", "ring_base", "ring_rows", "ring_bytes", "ring_layer_stride")


def _max_tree(vals):
    while len(vals) > 1:
        nxt = [Mux(vals[i] > vals[i + 1], vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
        vals = nxt + ([vals[-1]] if len(vals) % 2 else [])
    return vals[0]


def _sum_tree(vals):
    while len(vals) > 1:
        nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
        vals = nxt + ([vals[-1]] if len(vals) % 2 else [])
    return vals[0]


def _fields(word, frac_bits: int, exp_bits: int):
    """``(sign, efield = max(e, 1), sig with the implicit one, all-ones exponent)``."""
    e = word[frac_bits:frac_bits + exp_bits]
    return (word[frac_bits + exp_bits], Mux(e == 0, 1, e), Cat(word[:frac_bits], e != 0),
            e == (1 << exp_bits) - 1)


def _align(m, sign, ef, sig, e_blk, sig_bits: int, fmt: BFPFormat, name: str):
    """Golden ``to_bfp`` for one element: shift ``(e_blk - ef) + (S - (mant_bits - 1))``, RNE on
    the magnitude, symmetric saturation, sign. Returns a signed ``mant_bits`` Signal."""
    base = sig_bits - (fmt.mant_bits - 1)
    d = Signal(len(e_blk) + 5, name=f"{name}_d")
    if base <= 0:   # an exact left shift first: the same value, so the same rounding
        src = Cat(Const(0, -base), sig)
        m.d.comb += d.eq(e_blk - ef)
    else:
        src = sig
        m.d.comb += d.eq(e_blk - ef + base)
    mag = rne_shift_right(m, src, d, len(src) + 1, name)
    out = Signal(signed(fmt.mant_bits), name=f"{name}_m")
    sat = Mux(mag > fmt.mant_max, fmt.mant_max, mag)
    m.d.comb += out.eq(Mux(sign, -sat, sat))
    return out


def _bfp_block(m, words, frac_bits: int, exp_bits: int, fmt: BFPFormat, name: str):
    """Whole-block conversion (combinational): ``(mantissas, block exponent field, nonfinite)``."""
    f = [_fields(w, frac_bits, exp_bits) for w in words]
    e_blk = Signal(exp_bits, name=f"{name}_eblk")
    m.d.comb += e_blk.eq(_max_tree([x[1] for x in f]))
    mants = [_align(m, s, ef, sig, e_blk, frac_bits + 1, fmt, f"{name}{j}") for j, (s, ef, sig, _) in enumerate(f)]
    return mants, e_blk, Cat(*[x[3] for x in f]).any()


class PEAttnUnit(wiring.Component):
    """The PE_ATTN instruction, FP16 KV cache with cross-layer reuse (module docstring).

    Parameters
    ----------
    ctx : ternopu.hw.overlay.SlotContext
        Slot geometry; ``ctx.channel_bytes`` (bytes per HBM channel) a power of two, 256-bit DMA
        words, ``ctx.dma.max_burst >= max_head_dim / 16``.
    max_head_dim : int
        Largest head dimension (multiple of 32, <= 256): sizes q's BFP store (``max_head_dim/32``
        blocks), the value-block buffer (``32 * max_head_dim / 16`` words) and the per-channel
        accumulators.
    max_tokens : int
        Largest ``tokens`` (<= 131071); sizes the PV accumulators
        (``aligned_acc_bits(32 * 8191**2, ceil(max_tokens / 32))`` bits).
    lookahead : int
        Row commands issued ahead of the consumer (one per port at a time).
    fmt : BFPFormat
        Must be the golden default (32, 14).

    Ports
    -----
    ctl : In(UnitPortSignature()); rd : Out(DmaReadClientSignature).array(ctx.ports);
    sp_r : Out(ScratchReadSignature(ctx)); sp_w : Out(ScratchWriteSignature(ctx));
    bitmask : In(512) (the current routing bitmask, bit 2*layer + block)
    """

    def __init__(self, ctx, max_head_dim: int = 256, max_tokens: int = (1 << 17) - 1, lookahead: int = 8,
                 fmt: BFPFormat = DEFAULT_BFP):
        try:
            self._check(ctx, max_head_dim, max_tokens, lookahead, fmt)
        except ConfigError:
            self._MustUse__silence = True      # a rejected configuration is not an unused unit
            raise
        self.ctx, self.fmt = ctx, fmt
        self.max_head_dim, self.max_tokens, self.lookahead = max_head_dim, max_tokens, lookahead
        self.nbq_max = max_head_dim // 32
        self.g_max = max_head_dim // _LANES
        self.part_bits = (32 * fmt.mant_max ** 2).bit_length() + 1          # one block partial
        self.qk_acc_bits = aligned_acc_bits(32 * fmt.mant_max ** 2, self.nbq_max)
        self.pv_acc_bits = aligned_acc_bits(32 * fmt.mant_max ** 2, -(-max_tokens // 32))
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
            "sp_w": Out(ScratchWriteSignature(ctx)),
            "bitmask": In(2 * isa.MAX_LAYERS),
        })

    @staticmethod
    def _check(ctx, max_head_dim, max_tokens, lookahead, fmt):
        mem = ctx.channel_bytes
        if mem & (mem - 1):
            raise ConfigError(f"PEAttnUnit: ctx.channel_bytes (bytes per HBM channel) must be a power of two, got {mem}")
        if ctx.dma.data_width != 256:
            raise ConfigError(f"PEAttnUnit: needs 256-bit DMA words, got {ctx.dma.data_width}")
        if fmt != DEFAULT_BFP:
            raise ConfigError(f"PEAttnUnit: only the default BFP format {DEFAULT_BFP} is supported, got {fmt}")
        if not isinstance(max_head_dim, int) or max_head_dim < 32 or max_head_dim % 32 or max_head_dim > 256:
            raise ConfigError(f"PEAttnUnit.max_head_dim: a multiple of 32 in [32, 256], got {max_head_dim!r}")
        if not isinstance(max_tokens, int) or not 1 <= max_tokens < 1 << 17:
            raise ConfigError(f"PEAttnUnit.max_tokens: an int in [1, 131071], got {max_tokens!r}")
        if not isinstance(lookahead, int) or not 1 <= lookahead <= 32:
            raise ConfigError(f"PEAttnUnit.lookahead: an int in [1, 32], got {lookahead!r}")
        if ctx.dma.max_burst < max_head_dim // 16 or ctx.dma.max_burst < DESC_BEATS:
            raise ConfigError(f"PEAttnUnit: DMA max_burst {ctx.dma.max_burst} is below a row "
                              f"({max_head_dim // 16} beats) or the descriptor ({DESC_BEATS} beats)")

    def elaborate(self, platform):  # noqa: C901 - one FSM, documented in the module docstring
        m = Module()
        ctx, ctl, fmt = self.ctx, self.ctl, self.fmt
        ports = ctx.ports
        mem = ctx.channel_bytes
        cb = mem.bit_length() - 1
        E = isa.ErrorCode
        a = ctl.cmd.payload.instr.pe_attn
        EB = 12                                      # signed exponent width (BFP sums, e_ref)
        W64 = 80                                     # address arithmetic (64-bit fields + products)

        # ---- latched instruction ------------------------------------------------------------------
        instr = Signal(isa.INSTRUCTION_LAYOUT)
        ins = instr.pe_attn
        code = Signal(E)
        stop = Signal()                              # abort or DMA error: issue nothing more
        qk = Signal()
        T = Signal(17)                               # tokens
        pos = Signal(17)
        nblk = Signal(13)

        # ---- descriptor ---------------------------------------------------------------------------
        desc = Signal(64 * 24)
        dw = {name: desc[64 * i:64 * i + 64] for i, name in enumerate(_DESC)}
        d = Signal(9)                                # head_dim
        G = Signal(5)                                # beats per row = head_dim / 16
        nbq = Signal(4)                              # blocks per row = head_dim / 32
        kv_np = Signal(6)                            # kv_nports (<= 32 after the check)
        kv_port0 = Signal(range(max(ports, 2)))
        kv_local = Signal(W64)
        slot_bytes = Signal(W64)
        layer_stride = Signal(W64)
        row_off = Signal(W64)
        route_port = Signal(range(max(ports, 2)))
        route_local = Signal(W64)
        route_bad = Signal()
        src_w0 = Signal(range(ctx.sp_words + 1))
        dst_w0 = Signal(range(ctx.sp_words + 1))
        bad_src = Signal()
        bad_dst = Signal()
        nonfin = Signal()
        scale = Signal(32)

        # ---- DMA clients --------------------------------------------------------------------------
        busy = Signal(ports)
        iss_valid = Signal()
        iss_port = Signal(range(max(ports, 2)))
        iss_addr = Signal(ctx.dma.addr_width)       # the DMA command's address field
        iss_beats = Signal(9)
        iss_fire = Signal()
        rx_port = Signal(range(max(ports, 2)))
        rx_ready = Signal()
        rx_valid = Signal()
        rx_data = Signal(256)
        drain = Signal()
        for q in range(ports):
            c = self.rd[q]
            m.d.comb += [c.cmd.valid.eq(iss_valid & (iss_port == q) & ~busy[q]),
                         c.cmd.payload.addr.eq(iss_addr), c.cmd.payload.beats.eq(iss_beats),
                         c.cmd.payload.rows.eq(1),
                         c.data.ready.eq(drain | ((rx_port == q) & rx_ready)),
                         c.done.ready.eq(1)]
            with m.If(c.cmd.valid & c.cmd.ready):
                m.d.comb += iss_fire.eq(1)
                m.d.sync += busy[q].eq(1)
            with m.If(c.done.valid):
                m.d.sync += busy[q].eq(0)
                with m.If(c.done.payload != 0):
                    m.d.sync += stop.eq(1)
                    with m.If(code == E.NONE):
                        m.d.sync += code.eq(dma_error_code(c.done.payload))
            with m.If(rx_port == q):
                m.d.comb += [rx_valid.eq(c.data.valid), rx_data.eq(c.data.payload.data)]
        rx_fire = Signal()
        m.d.comb += rx_fire.eq(rx_valid & rx_ready)

        # ---- per-token stream bookkeeping ----------------------------------------------------------
        blk = Signal(13)                             # token block (32 tokens)
        n_blk = Signal(6)                            # tokens in this block
        srcs = Array(Signal(8, name=f"src{i}") for i in range(32))
        i_t = Signal(6)                              # next token to issue (in the block)
        c_t = Signal(6)                              # token being consumed
        c_beat = Signal(5)
        is_mod = Signal(6)
        is_port = Signal(range(max(ports, 2)))
        is_off = Signal(W64)                         # (s // kv_nports) * slot_bytes
        cs_mod = Signal(6)
        cs_port = Signal(range(max(ports, 2)))
        h_n = Signal(6)                              # history records of this block
        h_i = Signal(6)
        h_c = Signal(6)

        def port_next(p):
            return Mux(p + 1 == ports, 0, p + 1)

        # ---- scratch read port ------------------------------------------------------------------
        sp_r = self.sp_r
        rq_addr = Signal(range(ctx.sp_words + 1))
        rq_left = Signal(6)
        rq_got = Signal(6)
        m.d.comb += sp_r.addr.eq(rq_addr)

        # ---- output FIFO and packer ---------------------------------------------------------------
        fifo_rst = Signal()
        m.submodules.ofifo = ofifo = ResetInserter(fifo_rst)(fifo.SyncFIFO(width=32, depth=32))
        out_total = Signal(17)
        out_cnt = Signal(17)
        w_lane = Signal(3)
        w_addr = Signal(range(ctx.sp_words + 1))
        wbuf = Signal(256)
        tail_old = Signal(256)
        wpend = Signal()
        suppress = Signal()
        m.d.comb += [self.sp_w.addr.eq(w_addr), self.sp_w.data.eq(wbuf), self.sp_w.req.eq(wpend & ~suppress)]
        with m.If(wpend):
            with m.If(suppress | self.sp_w.gnt):
                m.d.sync += [wpend.eq(0), w_addr.eq(w_addr + 1), wbuf.eq(tail_old)]
        with m.Else():
            m.d.comb += ofifo.r_en.eq(1)
            with m.If(ofifo.r_rdy):
                with m.Switch(w_lane):
                    for k in range(8):
                        with m.Case(k):
                            m.d.sync += wbuf[32 * k:32 * k + 32].eq(ofifo.r_data)
                m.d.sync += [out_cnt.eq(out_cnt + 1), w_lane.eq(w_lane + 1)]
                with m.If((w_lane == 7) | (out_cnt + 1 == out_total)):
                    m.d.sync += [wpend.eq(1), w_lane.eq(0)]

        # ---- QK pipeline --------------------------------------------------------------------------
        # stage A: one 32-element block (q while loading, else a key block)
        a_v, a_isq, a_last = Signal(), Signal(), Signal()
        a_blk = Signal(512)
        a_b = Signal(3)
        halves = [a_blk[16 * j:16 * j + 16] for j in range(32)]
        km, k_eblk, k_nf = _bfp_block(m, halves, 10, 5, fmt, "kc")
        qm = Array(Signal(14 * 32, name=f"qm{b}") for b in range(self.nbq_max))
        qe = Array(Signal(signed(EB), name=f"qe{b}") for b in range(self.nbq_max))
        k_exp = Signal(signed(EB))
        m.d.comb += k_exp.eq(k_eblk - _F16_EXP_OFF)
        q_sel = qm[a_b]
        dot = _sum_tree([q_sel[14 * j:14 * j + 14].as_signed() * km[j] for j in range(32)])
        b_v, b_last = Signal(), Signal()
        b_I = Signal(signed(self.part_bits))
        b_e = Signal(signed(EB))
        b_b = Signal(3)
        m.d.sync += [b_v.eq(a_v & ~a_isq), b_last.eq(a_last), b_I.eq(dot), b_e.eq(qe[a_b] + k_exp),
                     b_b.eq(a_b)]
        with m.If(a_v & a_isq):
            m.d.sync += [qm[a_b].eq(Cat(*[x.as_unsigned() for x in km])), qe[a_b].eq(k_exp)]
        with m.If(a_v & k_nf):
            m.d.sync += nonfin.eq(1)
        # stage C: the token's partials, copied whole when its last block arrives
        P = [Signal(signed(self.part_bits), name=f"P{i}") for i in range(self.nbq_max)]
        PE = [Signal(signed(EB), name=f"PE{i}") for i in range(self.nbq_max)]
        F = [Signal(signed(self.part_bits), name=f"F{i}") for i in range(self.nbq_max)]
        FE = [Signal(signed(EB), name=f"FE{i}") for i in range(self.nbq_max)]
        f_v = Signal()
        m.d.sync += f_v.eq(b_v & b_last)
        for i in range(self.nbq_max):
            with m.If(b_v & (b_b == i)):
                m.d.sync += [P[i].eq(b_I), PE[i].eq(b_e)]
            with m.If(b_v & b_last):
                m.d.sync += [F[i].eq(Mux(b_b == i, b_I, P[i])), FE[i].eq(Mux(b_b == i, b_e, PE[i]))]
        # stage D: parallel alignment to max(e) - guard and the exact sum
        lo = Const(-(1 << (EB - 1)), signed(EB))
        fe_used = [Mux(nbq > i, FE[i], lo) for i in range(self.nbq_max)]
        qk_eref = Signal(signed(EB))
        m.d.comb += qk_eref.eq(_max_tree(fe_used) - ALIGN_GUARD_BITS)
        terms = [Mux(nbq > i, rne_shift_signed(m, F[i], qk_eref - FE[i], ALIGN_GUARD_BITS,
                                               self.part_bits + 1, f"qal{i}"), 0)
                 for i in range(self.nbq_max)]
        d_v = Signal()
        d_acc = Signal(signed(self.pv_acc_bits))
        d_eref = Signal(signed(EB))
        m.d.sync += [d_v.eq(f_v), d_acc.eq(_sum_tree(terms)), d_eref.eq(qk_eref)]

        # ---- reconstruction (shared) and the QK scale multiply --------------------------------------
        m.submodules.recon = recon = ScaledToFloat32(self.pv_acc_bits)
        r_acc = Signal(signed(self.pv_acc_bits))
        r_exp = Signal(signed(EB))
        r_v = Signal()
        m.d.comb += [recon.acc.eq(r_acc), recon.exp.eq(r_exp), recon.i_valid.eq(r_v), recon.scale.eq(_FP16_ONE)]
        with m.If(recon.range_error):   # a subnormal / overflowing result: outside the contract
            m.d.sync += nonfin.eq(1)
        pp = Pipe(m, Const(1, 1), "qs")
        prod = fmul(pp, pp.input(recon.o), pp.input(scale))
        mv = recon.o_valid & qk
        for k in range(FMUL_STAGES):
            nv = Signal(name=f"mv{k}")
            m.d.sync += nv.eq(mv)
            mv = nv
        m.d.comb += [ofifo.w_en.eq(Mux(qk, mv, recon.o_valid & ~qk)),
                     ofifo.w_data.eq(Mux(qk, prod.sig, recon.o))]

        # ---- PV: p block, value-block buffer, per-channel state ---------------------------------------
        pbuf = Signal(1024)
        pwords = [pbuf[32 * j:32 * j + 32] for j in range(32)]
        pm_c, p_eblk, _ = _bfp_block(m, pwords, 23, 8, fmt, "pc")
        p_nf = Cat(*[(pwords[j][23:31] == 0xFF) & (n_blk > j) for j in range(32)]).any()
        pm = Array(Signal(signed(14), name=f"pm{j}") for j in range(32))
        pexp = Signal(signed(EB))
        m.submodules.vmem = vmem = Memory(shape=unsigned(256), depth=32 * self.g_max, init=[])
        vw = vmem.write_port()
        vr = vmem.read_port()
        vexp = Array(Signal(5 * _LANES, name=f"vx{j}") for j in range(self.g_max))
        grp = Signal(5)
        m.submodules.emem = emem = Memory(shape=unsigned(EB * _LANES), depth=self.g_max, init=[])
        m.submodules.amem = amem = Memory(shape=unsigned(self.pv_acc_bits * _LANES), depth=self.g_max, init=[])
        ew, er = emem.write_port(), emem.read_port()
        aw, ar = amem.write_port(), amem.read_port()
        m.d.comb += [er.addr.eq(grp), ar.addr.eq(grp), ew.addr.eq(grp), aw.addr.eq(grp)]
        first_blk = Signal()
        pass2 = Signal()
        cur_vx = vexp[grp]
        e_b = [Signal(signed(EB), name=f"eb{k}") for k in range(_LANES)]
        for k in range(_LANES):
            m.d.comb += e_b[k].eq(pexp + cur_vx[5 * k:5 * k + 5] - _F16_EXP_OFF)
        e_old = [er.data[EB * k:EB * k + EB].as_signed() for k in range(_LANES)]
        e_new = Cat(*[Mux(first_blk | (e_b[k] > e_old[k]), e_b[k], e_old[k]) for k in range(_LANES)])
        # transposed compute: one stored row word (16 channels of one token) per cycle
        rd_t = Signal(6)
        v_v = Signal()
        v_t = Signal(5)
        vmants = []
        for k in range(_LANES):
            s_, ef_, sig_, _ = _fields(vr.data[16 * k:16 * k + 16], 10, 5)
            vmants.append(_align(m, s_, ef_, sig_, cur_vx[5 * k:5 * k + 5], 11, fmt, f"va{k}"))
        Iacc = [Signal(signed(self.part_bits), name=f"I{k}") for k in range(_LANES)]
        pm_t = pm[v_t]
        with m.If(v_v):
            m.d.sync += [Iacc[k].eq(Iacc[k] + pm_t * vmants[k]) for k in range(_LANES)]
        a_old = [ar.data[self.pv_acc_bits * k:self.pv_acc_bits * (k + 1)].as_signed() for k in range(_LANES)]
        a_new = Cat(*[(Mux(first_blk, 0, a_old[k])
                       + rne_shift_signed(m, Iacc[k], e_old[k] - ALIGN_GUARD_BITS - e_b[k], ALIGN_GUARD_BITS,
                                          self.part_bits + 1, f"pal{k}"))[:self.pv_acc_bits]
                      for k in range(_LANES)])
        o_lane = Signal(5)

        # ---- up-front checks on the latched instruction + descriptor ---------------------------------
        kv_bits = Mux(ins.kv_fmt == isa.KvFormat.FP16, 16, Mux(ins.kv_fmt == isa.KvFormat.KIVI2, 2, 4))
        layer_addr = Signal(W64 + 8)
        m.d.comb += layer_addr.eq(dw["kv_base"] + ins.layer * dw["kv_layer_stride"])
        shape_bad = ((dw["magic"] != KV_DESC_MAGIC) | (dw["bits"] != kv_bits)
                     | (ins.layer >= dw["layers"]) | (ins.kv_head >= dw["kv_heads"])
                     | (layer_addr != ins.kv_addr)
                     | ((ins.kv_fmt != isa.KvFormat.FP16) & (ins.resid_tokens != dw["residual"]))
                     | (ins.tokens > dw["max_pos"]))
        hd = dw["head_dim"]
        # at the default max_tokens every value of the 17-bit field is within the limit
        tokens_over = (ins.tokens > self.max_tokens) if self.max_tokens < (1 << len(ins.tokens)) - 1 else 0
        hw_bad = ((ins.kv_fmt != isa.KvFormat.FP16) | (hd == 0) | (hd[:5] != 0) | (hd > self.max_head_dim)
                  | tokens_over | (dw["kv_nports"] == 0) | (dw["kv_nports"] > 32)
                  | ((ins.tokens > 1) & (dw["route_bytes"] != ROUTE_BYTES)))

        # ---- control ------------------------------------------------------------------------------
        src_idx = srcs[i_t]
        pv_out = Signal()
        dr_cnt = Signal(range(DRAIN_CYCLES + 1))
        m.d.sync += [a_v.eq(0), dr_cnt.eq(0)]   # stage A holds a block for exactly one cycle
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    da = a.desc_addr
                    m.d.sync += [instr.eq(ctl.cmd.payload.instr), code.eq(E.NONE), stop.eq(0), nonfin.eq(0),
                                 qk.eq(a.phase == 0),
                                 T.eq(a.tokens), pos.eq(a.tokens - 1), nblk.eq((a.tokens + 31) >> 5),
                                 scale.eq(a.scale), rq_got.eq(0), a_v.eq(0), out_cnt.eq(0),
                                 w_lane.eq(0), pass2.eq(0), wpend.eq(0)]
                    m.d.comb += fifo_rst.eq(1)
                    with m.If(ctl.cmd.payload.instr.header.opcode != PE_ATTN_OPCODE):
                        m.d.sync += code.eq(E.ILLEGAL_OPCODE)
                        m.next = "FINAL"
                    with m.Elif(((da >> cb) >= ports) | ((da & (mem - 1)) + 32 * DESC_BEATS > mem)):
                        m.d.sync += code.eq(E.HBM_RANGE)
                        m.next = "FINAL"
                    with m.Else():
                        m.next = "D_ISSUE"
            with m.State("D_ISSUE"):
                m.d.comb += [iss_valid.eq(1), iss_port.eq(ins.desc_addr >> cb),
                             iss_addr.eq(ins.desc_addr), iss_beats.eq(DESC_BEATS)]
                with m.If(ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
                with m.Elif(iss_fire):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += h_c.eq(0)
                    m.next = "D_DATA"
            with m.State("D_DATA"):
                m.d.comb += [rx_ready.eq(1), rx_port.eq(ins.desc_addr >> cb)]
                with m.If(rx_fire):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += [desc.eq(Cat(desc[256:256 * DESC_BEATS], rx_data)), h_c.eq(h_c + 1)]
                    with m.If(h_c == DESC_BEATS - 1):
                        m.next = "CHECK"
                with m.If(stop | ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
            with m.State("CHECK"):
                m.d.comb += ctl.progress.eq(1)
                hdv = hd[:9]
                kvb = dw["kv_base"]
                words_src = Mux(qk, hdv >> 4, (ins.tokens + 7) >> 3)
                words_dst = Mux(qk, (ins.tokens + 7) >> 3, hdv >> 3)
                m.d.sync += [
                    d.eq(hdv), G.eq(hdv >> 4), nbq.eq(hdv >> 5), kv_np.eq(dw["kv_nports"][:6]),
                    kv_port0.eq((kvb >> cb) % ports), kv_local.eq(kvb & (mem - 1)),
                    slot_bytes.eq(dw["slot_bytes"]), layer_stride.eq(dw["kv_layer_stride"]),
                    row_off.eq(ins.kv_head * hdv * 4 + Mux(qk, 0, hdv * 2)),
                    route_port.eq(dw["route_base"] >> cb), route_local.eq(dw["route_base"] & (mem - 1)),
                    route_bad.eq((dw["route_base"] >> cb) >= ports),
                    src_w0.eq(ins.src_buf * ctx.buf_words + (ins.src_off >> 5)),
                    dst_w0.eq(ins.dst_buf * ctx.buf_words + (ins.dst_off >> 5)),
                    bad_src.eq((ins.src_off >> 5) + words_src > ctx.buf_words),
                    bad_dst.eq((ins.dst_off >> 5) + words_dst > ctx.buf_words),
                    out_total.eq(Mux(qk, ins.tokens, hdv)),
                ]
                with m.If(shape_bad | hw_bad):
                    m.d.sync += code.eq(E.SHAPE)
                    m.next = "FINAL"
                with m.Else():
                    m.next = "PREP"
            with m.State("PREP"):
                # the old contents of a partially written last score word (QK, tokens % 8 != 0)
                m.d.sync += [suppress.eq(bad_src | bad_dst), w_addr.eq(dst_w0), wbuf.eq(0), tail_old.eq(0),
                             rq_addr.eq(dst_w0 + (pos >> 3))]
                with m.If(qk & (T[:3] != 0) & ~bad_dst):
                    m.next = "TAIL"
                with m.Else():
                    m.next = "QPREP"
            with m.State("TAIL"):
                m.d.comb += sp_r.req.eq(rq_got == 0)
                with m.If(sp_r.req & sp_r.gnt):
                    m.d.sync += rq_got.eq(1)
                with m.If(sp_r.rvalid):
                    m.d.sync += [tail_old.eq(sp_r.data), wbuf.eq(sp_r.data)]
                    m.next = "QPREP"
            with m.State("QPREP"):
                m.d.sync += [rq_addr.eq(src_w0), rq_left.eq(G), rq_got.eq(0), a_b.eq(0)]
                with m.If(qk & ~bad_src):
                    m.next = "QLOAD"
                with m.Else():
                    m.next = "PASS"
            with m.State("QLOAD"):
                m.d.comb += [sp_r.req.eq(rq_left != 0), ctl.progress.eq(1)]
                with m.If(sp_r.req & sp_r.gnt):
                    m.d.sync += [rq_left.eq(rq_left - 1), rq_addr.eq(rq_addr + 1)]
                with m.If(sp_r.rvalid):
                    m.d.sync += rq_got.eq(rq_got + 1)
                    with m.If(~rq_got[0]):
                        m.d.sync += pbuf[:256].eq(sp_r.data)
                    with m.Else():
                        m.d.sync += [a_v.eq(1), a_isq.eq(1), a_last.eq(0), a_blk.eq(Cat(pbuf[:256], sp_r.data)),
                                     a_b.eq(rq_got >> 1)]
                with m.If(rq_got == G):
                    m.next = "PASS"
            with m.State("PASS"):
                # start of a pass over the tokens: reset the stream counters
                m.d.sync += [a_isq.eq(0), blk.eq(0), first_blk.eq(1), is_mod.eq(0), is_port.eq(kv_port0),
                             is_off.eq(0), cs_mod.eq(0), cs_port.eq(kv_port0), a_b.eq(0)]
                m.next = "BLOCK"
            with m.State("BLOCK"):
                s0 = blk << 5
                left = T - s0
                m.d.sync += [n_blk.eq(Mux(left > 32, 32, left)),
                             h_n.eq(Mux(pos > s0, Mux(pos - s0 > 32, 32, pos - s0), 0)),
                             h_i.eq(0), h_c.eq(0), i_t.eq(0), c_t.eq(0), c_beat.eq(0),
                             rq_addr.eq(src_w0 + (blk << 2)), rq_got.eq(0), pbuf.eq(0),
                             rq_left.eq(Mux(left > 32, 4, (left + 7) >> 3))]
                m.d.sync += [srcs[i].eq(ins.layer) for i in range(32)]
                for k in range(self.g_max):
                    m.d.sync += vexp[k].eq(Cat(*[Const(1, 5)] * _LANES))
                with m.If(stop | ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "HIST"
            with m.State("HIST"):
                # route-history records of the block's tokens before pos -> source layer per token
                rem = h_n - h_i
                nb = Mux(rem > ctx.dma.max_burst, ctx.dma.max_burst, rem)
                addr = route_local + ((blk << 5) + h_i) * ROUTE_BYTES
                m.d.comb += [iss_port.eq(route_port), iss_addr.eq((route_port << cb) + addr), iss_beats.eq(nb),
                             rx_ready.eq(1)]
                m.d.comb += rx_port.eq(route_port)
                with m.If((h_i != h_n) & ~stop):
                    with m.If(route_bad | (addr + nb * ROUTE_BYTES > mem)):
                        m.d.sync += [code.eq(E.HBM_RANGE), stop.eq(1)]
                    with m.Else():
                        m.d.comb += iss_valid.eq(1)
                with m.If(iss_fire):
                    m.d.sync += h_i.eq(h_i + nb)
                with m.If(rx_fire):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += h_c.eq(h_c + 1)
                    ran_src = Signal(8)
                    for L in range(1, isa.MAX_LAYERS // 2):
                        with m.If(~rx_data[2 * L] & (ins.layer >= L)):
                            m.d.comb += ran_src.eq(L)
                    m.d.sync += srcs[h_c].eq(ran_src)
                with m.If(stop | ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
                with m.Elif(h_c == h_n):
                    m.next = "PLOAD"
            with m.State("PLOAD"):
                # PV: this block's p (binary32) from scratch; QK and bad_src skip it
                with m.If(qk | bad_src):
                    m.d.sync += rq_left.eq(0)
                m.d.comb += sp_r.req.eq(~qk & ~bad_src & (rq_left != 0))
                with m.If(sp_r.req & sp_r.gnt):
                    m.d.sync += [rq_left.eq(rq_left - 1), rq_addr.eq(rq_addr + 1)]
                with m.If(sp_r.rvalid):
                    m.d.sync += rq_got.eq(rq_got + 1)
                    with m.Switch(rq_got):
                        for k in range(4):
                            with m.Case(k):
                                m.d.sync += pbuf[256 * k:256 * k + 256].eq(sp_r.data)
                with m.If((rq_left == 0) & ~(sp_r.rvalid & ~qk)):
                    m.next = "PCONV"
            with m.State("PCONV"):
                # lanes past the last token are zero (golden pads p with zeros)
                for j in range(32):
                    with m.If(n_blk <= j):
                        m.d.sync += pbuf[32 * j:32 * j + 32].eq(0)
                m.next = "PLATCH"
            with m.State("PLATCH"):
                m.d.sync += [pm[j].eq(pm_c[j]) for j in range(32)]
                m.d.sync += pexp.eq(p_eblk - _F32_EXP_OFF)
                with m.If(~qk & p_nf):
                    m.d.sync += nonfin.eq(1)
                m.next = "ROWS"
            with m.State("ROWS"):
                # row commands run ahead of the consumer, one per port
                raddr = Signal(W64 + 8)
                m.d.comb += raddr.eq(kv_local + src_idx * layer_stride + is_off + row_off)
                m.d.comb += [iss_port.eq(is_port), iss_addr.eq((is_port << cb) + raddr), iss_beats.eq(G)]
                with m.If((i_t != n_blk) & (i_t - c_t < self.lookahead) & ~stop):
                    with m.If(raddr + (G << 4) * 2 > mem):
                        m.d.sync += [code.eq(E.HBM_RANGE), stop.eq(1)]
                    with m.Else():
                        m.d.comb += iss_valid.eq(1)
                with m.If(iss_fire):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += i_t.eq(i_t + 1)
                    with m.If(is_mod + 1 == kv_np):
                        m.d.sync += [is_mod.eq(0), is_port.eq(kv_port0), is_off.eq(is_off + slot_bytes)]
                    with m.Else():
                        m.d.sync += [is_mod.eq(is_mod + 1), is_port.eq(port_next(is_port))]
                # consumer: beats of token c_t in order
                m.d.comb += rx_port.eq(cs_port)
                sink_ok = Mux(qk, ofifo.w_level < 16, 1)
                m.d.comb += rx_ready.eq((c_t != i_t) & sink_ok)
                with m.If(rx_fire):
                    m.d.comb += ctl.progress.eq(1)
                    last_beat = c_beat + 1 == G
                    m.d.sync += c_beat.eq(Mux(last_beat, 0, c_beat + 1))
                    with m.If(last_beat):
                        m.d.sync += c_t.eq(c_t + 1)
                        with m.If(cs_mod + 1 == kv_np):
                            m.d.sync += [cs_mod.eq(0), cs_port.eq(kv_port0)]
                        with m.Else():
                            m.d.sync += [cs_mod.eq(cs_mod + 1), cs_port.eq(port_next(cs_port))]
                    # QK: two beats make a block
                    with m.If(qk):
                        with m.If(~c_beat[0]):
                            m.d.sync += pbuf[:256].eq(rx_data)
                        with m.Else():
                            blast = (c_beat >> 1) + 1 == nbq
                            m.d.sync += [a_v.eq(1), a_isq.eq(0), a_last.eq(blast),
                                         a_blk.eq(Cat(pbuf[:256], rx_data)), a_b.eq(c_beat >> 1)]
                    with m.Else():
                        nf = Cat(*[rx_data[16 * k + 10:16 * k + 15] == 0x1F for k in range(_LANES)]).any()
                        with m.If(nf):
                            m.d.sync += nonfin.eq(1)
                        old = vexp[c_beat]
                        new = []
                        for k in range(_LANES):
                            e = rx_data[16 * k + 10:16 * k + 15]
                            ef = Mux(e == 0, 1, e)
                            o = old[5 * k:5 * k + 5]
                            new.append(Mux(ef > o, ef, o))
                        m.d.sync += vexp[c_beat].eq(Cat(*new))
                m.d.comb += [vw.addr.eq(c_t * self.g_max + c_beat),
                             vw.data.eq(rx_data), vw.en.eq(rx_fire & ~qk & pass2)]
                with m.If(stop | ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
                with m.Elif(c_t == n_blk):
                    m.d.sync += [grp.eq(0), rd_t.eq(0), v_v.eq(0)]
                    m.next = "AFTER"
            with m.State("AFTER"):
                m.d.sync += [grp.eq(0), rd_t.eq(0), v_v.eq(0), o_lane.eq(0)]
                m.d.sync += [Iacc[k].eq(0) for k in range(_LANES)]
                with m.If(qk):
                    m.next = "NEXT"
                with m.Elif(pass2):
                    m.next = "COMP"
                with m.Else():
                    m.next = "EUPD"
            with m.State("EUPD"):
                # pass 1: emax[c] = max(emax[c], ep + ev[c]) one group of 16 channels per 2 cycles
                m.d.comb += ctl.progress.eq(1)
                m.d.sync += o_lane.eq(~o_lane[0])
                m.d.comb += [ew.data.eq(e_new), ew.en.eq(o_lane[0])]
                with m.If(o_lane[0]):
                    m.d.sync += grp.eq(grp + 1)
                    with m.If(grp + 1 == G):
                        m.next = "NEXT"
            with m.State("COMP"):
                # pass 2: per group, the block partial of 16 channels over the block's tokens
                m.d.comb += ctl.progress.eq(1)
                m.d.comb += vr.addr.eq(rd_t * self.g_max + grp)
                m.d.sync += [v_v.eq(rd_t != n_blk), v_t.eq(rd_t)]
                with m.If(rd_t != n_blk):
                    m.d.sync += rd_t.eq(rd_t + 1)
                with m.Elif(~v_v):
                    m.next = "COMP_AL"
            with m.State("COMP_AL"):
                m.d.comb += [ctl.progress.eq(1), aw.data.eq(a_new), aw.en.eq(1)]
                m.d.sync += [grp.eq(grp + 1), rd_t.eq(0)]
                m.d.sync += [Iacc[k].eq(0) for k in range(_LANES)]
                with m.If(grp + 1 == G):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "COMP"
            with m.State("NEXT"):
                m.d.sync += [blk.eq(blk + 1), first_blk.eq(0)]
                with m.If(blk + 1 != nblk):
                    m.next = "BLOCK"
                with m.Elif(qk):
                    m.next = "FLUSH"
                with m.Elif(~pass2):
                    m.d.sync += pass2.eq(1)
                    m.next = "PASS"
                with m.Else():
                    m.d.sync += [grp.eq(0), o_lane.eq(0)]
                    m.next = "OUT_WAIT"
            with m.State("OUT_WAIT"):
                m.next = "OUT"
            with m.State("OUT"):
                # PV: one reconstruction per channel, 16 per group
                m.d.comb += ctl.progress.eq(1)
                with m.If(ofifo.w_level < 24):
                    m.d.comb += pv_out.eq(1)
                    m.d.sync += o_lane.eq(o_lane + 1)
                    with m.If(o_lane == _LANES - 1):
                        m.d.sync += [o_lane.eq(0), grp.eq(grp + 1)]
                        with m.If(grp + 1 == G):
                            m.next = "FLUSH"
                        with m.Else():
                            m.next = "OUT_WAIT"
            with m.State("FLUSH"):
                with m.If((out_cnt == out_total) & ~wpend):
                    with m.If(code != E.NONE):
                        pass
                    with m.Elif(bad_src):
                        m.d.sync += code.eq(E.BUF_RANGE)
                    with m.Elif(nonfin):
                        m.d.sync += code.eq(E.SHAPE)
                    with m.Elif(bad_dst):
                        m.d.sync += code.eq(E.BUF_RANGE)
                    m.next = "FINAL"
                with m.If(stop | ctl.abort):
                    m.d.sync += stop.eq(1)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # abort or DMA error: swallow outstanding beats, let the output pipeline empty
                m.d.comb += drain.eq(1)
                m.d.sync += [suppress.eq(1), out_total.eq(0)]
                with m.If((busy == 0) & ~wpend):
                    m.d.sync += dr_cnt.eq(dr_cnt + 1)
                    with m.If(dr_cnt == DRAIN_CYCLES):
                        m.next = "DONE"
            with m.State("FINAL"):
                with m.If(busy == 0):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"

        # reconstruction input: QK from stage D, PV from the accumulator memory (state OUT)
        with m.If(qk):
            m.d.comb += [r_acc.eq(d_acc), r_exp.eq(d_eref), r_v.eq(d_v)]
        with m.Else():
            lane_acc = Array(a_old)[o_lane[:4]]
            lane_e = Array(e_old)[o_lane[:4]]
            m.d.comb += [r_acc.eq(lane_acc), r_exp.eq(lane_e - ALIGN_GUARD_BITS), r_v.eq(pv_out)]
        return m


def factory(**kw):
    """A slot factory ``ctx -> PEAttnUnit(ctx, **kw)`` (the PE slot composes it with PE_LINEAR and
    ROUTER through :class:`ternopu.hw.unit_mux.UnitMux`)."""
    def make(ctx):
        return PEAttnUnit(ctx, **kw)
    return make
