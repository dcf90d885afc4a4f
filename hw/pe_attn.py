"""PE array attention modes: (b) BFP x BFP with an FP16 KV cache, (c) BFP x KIVI 2/4-bit codes.

What it computes (bit for bit :mod:`ternopu.golden.pe`)
--------------------------------------------------------
Every attention product is an aligned block dot product of one *shared* operand vector ``x``
(the query for QK^T, the probabilities for PV) with one *lane* vector per output::

    a, e_a[b]     = to_bfp(x_b)  (mode b)   or  to_bfp(f32(x_b) * f32(s_b))  (mode c, per group)
    w, e_w[o, b]  = to_bfp(k/v)  (mode b)   or  KIVI codes, exponent 0        (mode c)
    I[o, b]       = sum_{i in block b} a[i] * w[o, i]                  DSP slices (exact integers)
    acc[o]        = sum_b rne_shift(I[o, b], e_ref[o] - e_a[b] - e_w[o, b]),
                    e_ref[o] = max_b(e_a[b] + e_w[o, b]) - ALIGN_GUARD_BITS
    y[o]          = binary32(acc[o] * 2**e_ref[o]) + bias[o]           one rounding, one binary32 add

* ``qk_bfp(q, k)``: x = q (FP16), lane o = token, reduction along d (``nb = D / 32`` blocks).
* ``pv_bfp(p, v)``: x = p (FP32), lane o = channel, reduction along tokens (``nb = ceil(T/32)``).
* ``qk_bfp_kivi``: x = q, shared operand ``q * s[j]`` per token group j, lanes = tokens,
  ``bias = u[t // G]`` with ``u = qk_bfp(q, mn)`` (a mode-b command with the ``mn`` rows as keys).
* ``pv_bfp_kivi``: x = p, shared operand ``p * s[:, j]`` per channel group j, lanes = channels,
  ``bias = u[d // G]`` with ``u = pv_bfp(p, mn)`` (a mode-b command).

``bias`` is an optional per-lane binary32 stream (0 otherwise; ``y + 0`` is ``y`` bit for bit),
which also adds the residual (FP16) part of a KIVI cache to the quantized part.

Array and DSP packing
---------------------
``rows = 32`` (one BFP block per beat) x ``cols`` DSP slices; column ``c`` is a 32-deep PCIN
cascade, row ``r`` skewed ``r`` cycles, so the last slice's P holds a whole block sum.

* Mode (b): **one product per DSP** (``B = a[r]`` 14 bits (16 with ``wide``), ``A = w[c][r]``, pre-adder off),
  ``lanes = cols``. Two 14 x 14-bit products cannot share a DSP48E2/DSP58: each needs a 27-bit
  field and the multiplier's A/D input is 27 bits wide, so the golden packings (``int8x2``: 8-bit
  operands; ``int4x2``: 4-bit codes) do not apply. 1 DSP per MAC.
* Mode (c): **two products per DSP**, golden ``int4x2`` (``A = c[2c] | c[2c+1] << 22``,
  ``D = 8 (1 + 2**22)``, pre-adder ``D - A``, ``B`` = the 16-bit scaled-query/probability
  mantissa), ``lanes = 2 * cols``, 0.5 DSP per MAC. With 16-bit mantissas the packing's depth is
  8 products per field, so the cascade restarts (Z = 0) every 8 rows and the four segment sums
  are read back (sign-borrow correction) and added in fabric: ``I = 8 * sum(a) - sum_k field_k``.
  (14-bit mantissas: depth 32, one segment.)

Dataflow and streams (``amaranth.lib.stream``, all with backpressure)
--------------------------------------------------------------------
* ``cmd``: ``{nb, n_tiles, kivi, x_fp16, load_x, bias, code4, wide}``; ``wide`` runs mode b with
  ``fmt_c`` mantissas on both operands (the KIVI min term ``u`` uses the KIVI format). ``nb`` reduction blocks per tile,
  ``n_tiles`` output tiles of ``lanes`` outputs. Zero or too-large counts drop the command and set
  the sticky ``error``. A command is taken only when the previous one has delivered its last output.
* ``x``: if ``load_x``, ``nb`` transfers of 32 words of 32 bits (FP32 bit patterns, or FP16 in the
  low half when ``x_fp16``), stored raw and converted per beat (the x buffer).
* ``kv``: ``n_tiles * nb`` beats, tile by tile, blocks ascending. ``w``: mode b, 32 x ``cols`` FP16
  elements, element (r, c) (reduction index r of the block, lane c) at bits ``16 (r cols + c)``;
  mode c, 32 x ``lanes`` codes of 4 bits (``code4``) or 2 bits, element (r, n) at bits
  ``bits (r lanes + n)`` (LSB-first, the KIVI packing along the lanes). ``s`` (mode c): per
  scale path j (``paths = max(1, lanes / group)``, path j serves lanes ``[j G, (j+1) G)``) 32 FP16
  scales of the block's reduction indices. Layout notes: for PV, row r is token ``32b + r`` and a
  row's lanes are contiguous channels of a value row; for QK, row r is channel ``32b + r`` and the
  lanes are tokens, i.e. the feeder supplies K transposed per 32 x lanes tile (KIVI keys are
  stored grouped along tokens, which is that order).
* ``bias``: if ``bias``, one transfer per tile, ``lanes`` binary32 values.
* ``out``: one transfer per tile ``{y[lanes] (binary32 bits), last}``; mode b fills lanes
  ``0 .. cols-1`` (the rest read 0).

Pipeline: one global enable ``en = ~out.valid | out.ready``. Per beat: x buffer read (1), FP16 ->
FP32 widening and, in mode c, the binary32 multiply ``x * s`` (:func:`ternopu.hw.fpu.fmul`, RNE,
subnormals; 3), block aligner (2: max exponent | shift, RNE, saturate), cascade (31 skew + 4 DSP
stages), segment read-back (1): :data:`BEAT_LATENCY` cycles from accepting a beat to its block
partials entering the partial FIFO (``I[o, b]``, ``e[o, b]``, running max). The FIFO holds
``fifo_depth`` entries (credits: a beat is accepted only while an entry is free). A tile's drain
reads its ``nb`` entries (the last one first: it carries the tile's maximum exponent), shifts and
accumulates (2), reconstructs (:class:`~ternopu.hw.pe_array.ScaledToFloat32`, 3) and adds the bias
(:class:`~ternopu.hw.pe_array.Float32Add`, 4): :data:`DRAIN_LATENCY` cycles from the tile's last
read to ``out``. Drain throughput: one entry per cycle, so one beat per cycle is sustained when
``fifo_depth >= BEAT_LATENCY + 2 * nb + 4``.

Numeric range: the reconstruction and the add handle normal binary32 results and zeros (every
FP16 q/k/v and probabilities of a softmax stay there); a subnormal result sets ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.dsp import DSP48E2, DSP58, INT4_OFFSET, INT4X2_SPACING, packing
from ternopu.golden.errors import ConfigError
from ternopu.golden.pe import ALIGN_GUARD_BITS, KIVI_BFP, aligned_acc_bits

from .bfp import BFP_EXP_BITS, rne_shift_right, rne_shift_signed
from .dsp import FULL_PIPELINE, PREADD_OFF, PREADD_SUB, W_ZERO, Z_PCIN, Z_ZERO, DSPSlice, delay_line
from .fpu import FMUL_STAGES, Pipe, Val, fmul, lzc
from .pe_array import Float32Add, ScaledToFloat32

__all__ = [
    "BLOCK",
    "ALIGN_STAGES",
    "BEAT_LATENCY",
    "DRAIN_LATENCY",
    "AttnConfig",
    "ATTN_DEFAULT",
    "ATTN_TEST",
    "ATTN_MID",
    "AttnArray",
    "widen_f16",
]

BLOCK = 32
"""BFP block = DSP rows = reduction elements per beat."""
ALIGN_STAGES = 2
"""Block aligner: (1) exponent fields and block maximum, (2) shift, RNE, saturate, sign."""
_CASCADE = BLOCK - 1 + FULL_PIPELINE.latency
BEAT_LATENCY = 1 + FMUL_STAGES + ALIGN_STAGES + _CASCADE + 1
"""Enabled cycles from accepting a ``kv`` beat to its block partials entering the partial FIFO."""
DRAIN_LATENCY = 1 + 1 + 1 + ScaledToFloat32.LATENCY + Float32Add.LATENCY + 1
"""Enabled cycles from reading a tile's last FIFO entry to its ``out`` transfer."""
_F32_BIAS = 127
_F16_EMIN_FIELD = 127 - 14  # FP16 denormals live in the 2**-14 binade: their block field floor


def widen_f16(m: Module, h, name: str) -> Signal:
    """Exact binary16 -> binary32 bit pattern (subnormals normalized, signed zeros kept), comb."""
    sign, e, f = h[15], h[10:15], h[:10]
    lz = lzc(m, f, 10, name=f"{name}_lz")
    out = Signal(32, name=name)
    sub_frac = Signal(23, name=f"{name}_sf")
    m.d.comb += sub_frac.eq(((f << (lz + 1))[:10]) << 13)
    with m.If(e != 0):
        m.d.comb += out.eq(Cat(Const(0, 13), f, e + (127 - 15), sign))
    with m.Elif(f != 0):
        m.d.comb += out.eq(Cat(sub_frac, (112 - lz)[:8], sign))
    with m.Else():
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    return out


def _bits_signed(bound: int) -> int:
    return int(bound).bit_length() + 1


@dataclass(frozen=True)
class AttnConfig:
    """Geometry and formats of the attention engine.

    Parameters
    ----------
    cols : int
        DSP columns (each a 32-deep cascade): ``cols`` outputs per tile in mode b, ``2 cols`` in c.
    fmt_b : BFPFormat
        Mode (b) format of both operands (golden ``qk_bfp``/``pv_bfp`` default ``DEFAULT_BFP``).
    fmt_c : BFPFormat
        Mode (c) format of the scaled shared operand (golden default ``KIVI_BFP``, 16-bit).
    kivi_group : int
        KIVI group along the lanes (tokens for keys, channels for values).
    max_blocks : int
        Largest ``nb`` (reduction blocks per tile): 128 covers 4096 tokens.
    max_tiles : int
        Largest ``n_tiles``.
    fifo_depth : int
        Partial-FIFO entries, a power of two (see module docstring for the full-rate bound).
    dsp : "dsp48e2" or "dsp58"

    Raises
    ------
    ConfigError
        Any inconsistent parameter.
    """

    cols: int = 64
    fmt_b: BFPFormat = DEFAULT_BFP
    fmt_c: BFPFormat = KIVI_BFP
    kivi_group: int = 32
    max_blocks: int = 128
    max_tiles: int = 4096
    fifo_depth: int = 512
    dsp: str = "dsp48e2"
    clock_hz: float = 300e6

    def __post_init__(self):
        for name in ("cols", "kivi_group", "max_blocks", "max_tiles", "fifo_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"AttnConfig.{name}: expected a positive int, got {v!r}")
        if self.dsp not in ("dsp48e2", "dsp58"):
            raise ConfigError(f"AttnConfig.dsp: expected 'dsp48e2' or 'dsp58', got {self.dsp!r}")
        for name in ("fmt_b", "fmt_c"):
            f = getattr(self, name)
            if not isinstance(f, BFPFormat) or f.block != BLOCK:
                raise ConfigError(f"AttnConfig.{name}: expected a BFPFormat with block {BLOCK}, got {f!r}")
        for name in ("fmt_b", "fmt_c"):
            mb = getattr(self, name).mant_bits
            if mb > 18:
                raise ConfigError(f"AttnConfig.{name}: {mb}-bit mantissas exceed the multiplier's 18-bit B port")
        if aligned_acc_bits(BLOCK * self.fmt_c.mant_max ** 2, self.max_blocks) > 53:
            raise ConfigError(f"AttnConfig.max_blocks: {self.max_blocks} blocks overflow the exact 53-bit "
                              "reconstruction for the wide (fmt_c) BFP x BFP pass")
        packing("int4x2", self.golden_dsp, self.fmt_c.mant_bits)  # raises for too-wide mantissas
        if self.fifo_depth & (self.fifo_depth - 1) or self.fifo_depth < 2 * self.max_blocks:
            raise ConfigError(f"AttnConfig.fifo_depth: expected a power of two >= 2 * max_blocks = "
                              f"{2 * self.max_blocks}, got {self.fifo_depth}")
        if self.lanes % self.kivi_group and self.kivi_group % self.lanes:
            raise ConfigError(f"AttnConfig.kivi_group: {self.kivi_group} must divide or be a multiple of the "
                              f"mode-c lanes {self.lanes}")

    @property
    def golden_dsp(self):
        return DSP48E2 if self.dsp == "dsp48e2" else DSP58

    @property
    def lanes(self) -> int:
        """Outputs per tile in mode c (mode b: ``cols``)."""
        return 2 * self.cols

    @property
    def paths(self) -> int:
        """Shared-operand (scale) paths in mode c: one per KIVI group in a tile."""
        return max(1, self.lanes // self.kivi_group)

    @property
    def dsps(self) -> int:
        return BLOCK * self.cols

    @property
    def segment(self) -> int:
        """Mode-c cascade segment: the int4x2 packing depth for ``fmt_c`` (capped at the block)."""
        return min(BLOCK, packing("int4x2", self.golden_dsp, self.fmt_c.mant_bits).depth)

    def macs_per_cycle(self, kivi: bool) -> int:
        return BLOCK * (self.lanes if kivi else self.cols)

    def dsps_per_mac(self, kivi: bool) -> float:
        return self.dsps / self.macs_per_cycle(kivi)

    # ---- widths -------------------------------------------------------------------------------
    @property
    def partial_bits(self) -> int:
        return max(_bits_signed(BLOCK * f.mant_max ** 2) for f in (self.fmt_b, self.fmt_c))

    @property
    def acc_bits(self) -> int:
        return max(aligned_acc_bits(BLOCK * f.mant_max ** 2, self.max_blocks) for f in (self.fmt_b, self.fmt_c))

    def cmd_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "nb": unsigned(self.max_blocks.bit_length()),
            "n_tiles": unsigned(self.max_tiles.bit_length()),
            "kivi": 1, "x_fp16": 1, "load_x": 1, "bias": 1, "code4": 1, "wide": 1,
        })

    def kv_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "w": unsigned(16 * BLOCK * self.cols),
            "s": data.ArrayLayout(unsigned(16), BLOCK * self.paths),
        })

    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({"y": data.ArrayLayout(unsigned(32), self.lanes), "last": 1})

    # ---- cycle model ------------------------------------------------------------------------
    def ideal_cycles(self, nb: int, n_tiles: int) -> int:
        """One beat per cycle."""
        return nb * n_tiles

    def model_cycles(self, nb: int, n_tiles: int, load_x: bool = True) -> int:
        """Cycles from offering the command to the last ``out`` transfer at full rate (streams fed
        one transfer per cycle): x load, one beat per cycle, beat pipeline, drain of the last tile.
        Equal to the Verilator measurement (sim/bench_pe.py attention section)."""
        load = (nb + 1) if load_x else 0
        return load + nb * n_tiles + BEAT_LATENCY + nb + DRAIN_LATENCY


ATTN_DEFAULT = AttnConfig()
"""32 x 64 DSP48E2 (2048, the size of the INT4 array): mode b 2048 MAC/cycle (1 DSP/MAC), mode c
4096 MAC/cycle (0.5 DSP/MAC)."""
ATTN_TEST = AttnConfig(cols=2, kivi_group=2, max_blocks=8, max_tiles=64, fifo_depth=64)
"""Amaranth-simulator tests: 64 DSPs, 2/4 lanes, scale paths of 2 lanes (2 paths)."""
ATTN_MID = AttnConfig(cols=4, kivi_group=32, max_blocks=128, max_tiles=1024, fifo_depth=512)
"""Verilator real-shape runs: 128 DSPs, 4 / 8 lanes, T up to 4096."""


def _align_block(p: Pipe, words: list[Val], floor_field, mb_c, fmt_b: BFPFormat, fmt_c: BFPFormat,
                 name: str):
    """Block of binary32 bit patterns -> BFP (golden ``to_bfp``), ``ALIGN_STAGES`` stages.

    ``floor_field``: the smallest exponent field that counts for the block maximum (113 when the
    values are FP16 numbers, whose denormals share the 2**-14 binade; 1 for FP32). ``mb_c`` selects
    ``fmt_c``'s mantissa width (else ``fmt_b``'s). Returns ``(mant[], exp)`` Vals.
    mant = RNE(|x| / 2**exp) saturated, exp = E_blk - 127 - (mant_bits - 2): equal to golden's
    shift of the source format's significand because the value is the same.
    """
    m = p.m
    s, sigs = p.align(*words, floor_field, mb_c)
    ws, floor, sel = sigs[:-2], sigs[-2], sigs[-1]
    fields = []
    for j, w in enumerate(ws):
        e = w[23:31]
        fields.append(Mux(e == 0, 1, e))
    level = [Mux(f < floor, floor, f) for f in fields]
    while len(level) > 1:
        nxt = [Mux(level[a] > level[a + 1], level[a], level[a + 1]) for a in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    emax = p.reg(level[0], s, f"{name}_emax")
    el = [p.reg(f, s, f"{name}_e") for f in fields]
    sg = [p.reg(Cat(w[:23], w[23:31] != 0), s, f"{name}_sig") for w in ws]
    sn = [p.reg(w[31], s, f"{name}_sn") for w in ws]
    sel1 = p.reg(sel, s, f"{name}_sel")
    base = Mux(sel1.sig, 25 - fmt_c.mant_bits, 25 - fmt_b.mant_bits)
    mmax = Mux(sel1.sig, fmt_c.mant_max, fmt_b.mant_max)
    mbw = max(fmt_b.mant_bits, fmt_c.mant_bits)
    mants = []
    for j in range(len(ws)):
        sh = Signal(10, name=f"{name}_sh{j}")
        m.d.comb += sh.eq(emax.sig - el[j].sig + base)
        mag = rne_shift_right(m, sg[j].sig, sh, 25, f"{name}_r{j}")
        sat = Mux(mag > mmax, mmax, mag)
        mant = Signal(signed(mbw), name=f"{name}_m{j}")
        m.d.comb += mant.eq(Mux(sn[j].sig, -sat, sat))
        mants.append(p.reg(mant, s + 1, f"{name}_mant"))
    exp = Signal(signed(BFP_EXP_BITS), name=f"{name}_exp")
    m.d.comb += exp.eq(emax.sig - _F32_BIAS - Mux(sel1.sig, fmt_c.mant_bits - 2, fmt_b.mant_bits - 2))
    return mants, p.reg(exp, s + 1, f"{name}_exp")


class AttnArray(wiring.Component):
    """The PE array's attention modes (b) and (c) (see module docstring).

    Ports: ``cmd``, ``x``, ``kv``, ``bias`` (In streams), ``out`` (Out stream), ``busy``, ``error``
    (sticky: a dropped command or a result outside the binary32 normal range).
    """

    def __init__(self, cfg: AttnConfig = ATTN_DEFAULT):
        if not isinstance(cfg, AttnConfig):
            raise ConfigError(f"AttnArray: expected an AttnConfig, got {cfg!r}")
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(cfg.cmd_layout())),
            "x": In(stream.Signature(unsigned(32 * BLOCK))),
            "kv": In(stream.Signature(cfg.kv_layout())),
            "bias": In(stream.Signature(data.ArrayLayout(unsigned(32), cfg.lanes))),
            "out": Out(stream.Signature(cfg.out_layout())),
            "busy": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):  # noqa: C901 - one datapath, documented stage by stage
        cfg = self.cfg
        m = Module()
        C, L, P = cfg.cols, cfg.lanes, cfg.paths
        NB, FD = cfg.max_blocks, cfg.fifo_depth
        pb, eb = cfg.partial_bits, BFP_EXP_BITS
        en = Signal()
        m.d.comb += en.eq(~self.out.valid | self.out.ready)

        # ---- command registers and control ----------------------------------------------------
        c_nb = Signal(range(NB + 1))
        c_tiles = Signal(range(cfg.max_tiles + 1))
        c_kivi, c_fp16, c_bias, c_code4, c_wide = Signal(), Signal(), Signal(), Signal(), Signal()
        pending = Signal()  # a command whose last output has not been taken yet
        loaded = Signal(range(NB + 1))
        b_cnt = Signal(range(NB))
        t_cnt = Signal(range(cfg.max_tiles))
        credits = Signal(range(FD + 1), init=FD)
        credit_ret = Signal()
        cp = self.cmd.payload
        cmd_ok = ((cp.nb != 0) & (cp.nb <= NB) & (cp.n_tiles != 0) & (cp.n_tiles <= cfg.max_tiles))

        m.submodules.xbuf = xbuf = Memory(shape=unsigned(32 * BLOCK), depth=NB, init=[])
        x_wr = xbuf.write_port()
        x_rd = xbuf.read_port(transparent_for=())
        accept = Signal()
        last_b = b_cnt == c_nb - 1
        last_t = t_cnt == c_tiles - 1
        m.d.comb += [x_wr.addr.eq(loaded), x_wr.data.eq(self.x.payload)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~pending)
                with m.If(self.cmd.valid & ~pending):
                    with m.If(~cmd_ok):
                        m.d.sync += self.error.eq(1)
                    with m.Else():
                        m.d.sync += [c_nb.eq(cp.nb), c_tiles.eq(cp.n_tiles), c_kivi.eq(cp.kivi),
                                     c_fp16.eq(cp.x_fp16), c_bias.eq(cp.bias), c_code4.eq(cp.code4), c_wide.eq(cp.wide),
                                     pending.eq(1), loaded.eq(0), b_cnt.eq(0), t_cnt.eq(0)]
                        with m.If(cp.load_x):
                            m.next = "LOAD"
                        with m.Else():
                            m.next = "RUN"
            with m.State("LOAD"):
                m.d.comb += [self.x.ready.eq(1), x_wr.en.eq(self.x.valid)]
                with m.If(self.x.valid):
                    m.d.sync += loaded.eq(loaded + 1)
                    with m.If(loaded == c_nb - 1):
                        m.next = "RUN"
            with m.State("RUN"):
                can = en & (credits != 0)
                m.d.comb += [self.kv.ready.eq(can), accept.eq(self.kv.valid & can)]
                with m.If(accept):
                    m.d.sync += b_cnt.eq(Mux(last_b, 0, b_cnt + 1))
                    with m.If(last_b):
                        m.d.sync += t_cnt.eq(t_cnt + 1)
                        with m.If(last_t):
                            m.next = "IDLE"
        m.d.comb += self.busy.eq(pending)
        m.d.sync += credits.eq(credits - accept + credit_ret)
        m.d.comb += [x_rd.addr.eq(b_cnt), x_rd.en.eq(en)]

        # ---- beat pipeline (stage 0 = accept) ------------------------------------------------
        p = Pipe(m, en, "bp")
        kvp = self.kv.payload
        valid0 = p.input(accept, 0)
        first0 = p.input(b_cnt == 0, 0)
        lastb0 = p.input(last_b, 0)
        kivi0 = p.input(c_kivi, 0)
        code4_0 = p.input(c_code4, 0)
        fp16_0 = p.input(c_fp16, 0)
        wide0 = p.input(c_kivi | c_wide, 0)  # fmt_c mantissas (mode c and the KIVI min-term pass)
        xdat = Val(x_rd.data, 1)
        # x (and the scales) as binary32 at stage 1
        s1, (xd, fp16_1) = p.align(xdat, fp16_0)
        xw = []
        for j in range(BLOCK):
            raw = xd[32 * j:32 * (j + 1)]
            wide = widen_f16(m, raw[:16], f"xw{j}")
            xw.append(Val(Mux(fp16_1, wide, raw), s1))
        a_mant, a_exp = [], []
        s_fm = s1 + FMUL_STAGES
        for path in range(P):
            src = []
            for j in range(BLOCK):
                sv = p.at(p.input(kvp.s[path * BLOCK + j], 0), s1)
                s32 = Val(widen_f16(m, sv, f"sw{path}_{j}"), s1)
                prod = fmul(p, xw[j], s32)
                src.append(p.comb(lambda a, b, k: Mux(k, a, b), prod, xw[j], kivi0))
            floor = p.comb(lambda k, f: Mux(k | ~f, 1, _F16_EMIN_FIELD), kivi0, fp16_0)
            mants, exp = _align_block(p, src, floor, wide0, cfg.fmt_b, cfg.fmt_c, f"al{path}")
            a_mant.append(mants)
            a_exp.append(exp)
        # lane operands, mode b: FP16 k/v converted per lane along the 32 rows
        w_mant, w_exp = [], []
        for c in range(C):
            words = []
            for r in range(BLOCK):
                h = p.at(p.input(kvp.w[16 * (r * C + c):16 * (r * C + c + 1)], 0), s1)
                words.append(Val(widen_f16(m, h, f"ww{r}_{c}"), s1))
            mants, exp = _align_block(p, words, p.const(_F16_EMIN_FIELD, 8), wide0,
                                      cfg.fmt_b, cfg.fmt_c, f"wl{c}")
            w_mant.append(mants)
            w_exp.append(exp)
        s_dsp = s_fm + ALIGN_STAGES
        assert a_exp[0].stage == s_dsp

        # ---- DSP cascades ---------------------------------------------------------------------
        gdsp = cfg.golden_dsp
        seg = cfg.segment
        nseg = BLOCK // seg
        d_const = INT4_OFFSET * (1 + (1 << INT4X2_SPACING))
        seg_p = []  # per column: list of (P value, stage) at segment ends
        for c in range(C):
            path = (2 * c) // cfg.kivi_group if P > 1 else 0
            prev = None
            ends = []
            for r in range(BLOCK):
                sl = DSPSlice(gdsp, FULL_PIPELINE)
                m.submodules[f"dsp_r{r}_c{c}"] = sl
                st = s_dsp + r
                # codes of lanes 2c, 2c+1 in row r (4- or 2-bit packing)
                codes = []
                for n in (2 * c, 2 * c + 1):
                    c4 = kvp.w[4 * (r * L + n):4 * (r * L + n + 1)]
                    c2 = kvp.w[2 * (r * L + n):2 * (r * L + n + 1)]
                    codes.append(p.comb(lambda a, b, f: Mux(f, a, Cat(b, Const(0, 2))),
                                        p.input(c4, 0), p.input(c2, 0), code4_0))
                kv_a = p.comb(lambda q0, q1: Cat(q0, Const(0, INT4X2_SPACING - 4), q1), *codes)
                # codes are unsigned (bit 26 stays 0); the mantissa is signed: Mux sign-extends it
                a_now = Mux(p.at(kivi0, st), p.at(kv_a, st), p.at(w_mant[c][r], st))
                m.d.comb += [
                    sl.a.eq(a_now),
                    sl.b.eq(Mux(p.at(kivi0, st), p.at(a_mant[path][r], st), p.at(a_mant[0][r], st))),
                    sl.d.eq(Mux(p.at(kivi0, st), d_const, 0)),
                    sl.c.eq(0),
                    sl.preadd.eq(Mux(p.at(kivi0, st), PREADD_SUB, PREADD_OFF)),
                    sl.w_sel.eq(W_ZERO),
                    sl.ce.eq(en),
                ]
                if prev is None:
                    m.d.comb += sl.z_sel.eq(Z_ZERO)
                elif r % seg == 0:
                    m.d.comb += [sl.z_sel.eq(Mux(p.at(kivi0, st), Z_ZERO, Z_PCIN)), sl.pcin.eq(prev.p)]
                else:
                    m.d.comb += [sl.z_sel.eq(Z_PCIN), sl.pcin.eq(prev.p)]
                if r % seg == seg - 1:
                    ends.append(Val(sl.p, st + FULL_PIPELINE.latency))
                prev = sl
            seg_p.append(ends)
        s_p = s_dsp + _CASCADE

        # ---- segment read-back, block partials and exponents (stage s_p -> s_p + 1) ---------------
        kivi_p = p.at(kivi0, s_p)
        parts, exps = [], []
        for c in range(C):
            path = (2 * c) // cfg.kivi_group if P > 1 else 0
            ends = [p.at(v, s_p) for v in seg_p[c]]
            lo_sum = sum(e[:INT4X2_SPACING].as_signed() for e in ends)
            hi_sum = sum(e[INT4X2_SPACING:].as_signed() + e[INT4X2_SPACING - 1] for e in ends)
            msum = sum(p.at(a_mant[path][r], s_p) for r in range(BLOCK))
            lo = Signal(signed(pb), name=f"plo{c}")
            hi = Signal(signed(pb), name=f"phi{c}")
            m.d.comb += [lo.eq(Mux(kivi_p, INT4_OFFSET * msum - lo_sum, ends[-1])),
                         hi.eq(Mux(kivi_p, INT4_OFFSET * msum - hi_sum, 0))]
            ea = Mux(kivi_p, p.at(a_exp[path], s_p), p.at(a_exp[0], s_p) + p.at(w_exp[c], s_p))
            parts += [lo, hi]
            exps += [ea, p.at(a_exp[path], s_p)]
        # lane order: mode c lane n = 2c + field; mode b lane c = column c (low field slot)
        lane_i, lane_e = [], []
        for n in range(L):
            if n < C:
                bi, be_ = parts[2 * n], exps[2 * n]
            else:
                bi, be_ = Const(0, signed(pb)), Const(0, signed(eb))
            ci, ce_ = parts[n], exps[n]
            lane_i.append(p.reg(Mux(kivi_p, ci, bi), s_p, f"li{n}"))
            lane_e.append(p.reg(Mux(kivi_p, ce_, be_)[:eb].as_signed(), s_p, f"le{n}"))
        s_w = s_p + 1
        assert s_w == BEAT_LATENCY
        v_w = p.at(valid0, s_w)
        first_w = p.at(first0, s_w)
        lastb_w = p.at(lastb0, s_w)

        # ---- partial FIFO ----------------------------------------------------------------------
        ent = data.StructLayout({
            "i": data.ArrayLayout(signed(pb), L),
            "e": data.ArrayLayout(signed(eb), L),
            "emax": data.ArrayLayout(signed(eb), L),
        })
        m.submodules.fifo = fifo = Memory(shape=ent, depth=FD, init=[])
        f_wr = fifo.write_port()
        f_rd = fifo.read_port(transparent_for=())
        wr_ptr = Signal(range(FD))
        run_max = [Signal(signed(eb), name=f"rmax{n}") for n in range(L)]
        tiles_ready = Signal(range(cfg.max_tiles + 1))
        tile_done = Signal()
        m.d.comb += [f_wr.addr.eq(wr_ptr), f_wr.en.eq(en & v_w), tile_done.eq(en & v_w & lastb_w)]
        for n in range(L):
            e_n = lane_e[n].sig
            mx = Mux(first_w | (e_n > run_max[n]), e_n, run_max[n])
            m.d.comb += [f_wr.data.i[n].eq(lane_i[n].sig), f_wr.data.e[n].eq(e_n), f_wr.data.emax[n].eq(mx)]
            with m.If(en & v_w):
                m.d.sync += run_max[n].eq(mx)
        with m.If(en & v_w):
            m.d.sync += wr_ptr.eq(wr_ptr + 1)

        # ---- drain: read a tile's entries (last first), align, accumulate -------------------------
        d_busy = Signal()
        d_i = Signal(range(NB + 1))
        rd_base = Signal(range(FD))
        start = Signal()
        issue = Signal()
        is_last = Signal()
        need_bias = c_bias
        m.d.comb += start.eq(~d_busy & (tiles_ready != 0))
        # first read of a tile: entry nb-1; then entries 0 .. nb-2
        m.d.comb += is_last.eq(Mux(start, c_nb == 1, d_i == c_nb - 2))
        bias_ok = ~need_bias | ~is_last | self.bias.valid
        m.d.comb += issue.eq(en & (start | d_busy) & bias_ok)
        m.d.comb += [f_rd.en.eq(en),
                     f_rd.addr.eq(Mux(start, rd_base + c_nb - 1, rd_base + d_i)),
                     self.bias.ready.eq(issue & is_last & need_bias),
                     credit_ret.eq(issue)]
        with m.If(issue):
            with m.If(start):
                m.d.sync += [d_busy.eq(c_nb != 1), d_i.eq(0)]
            with m.Else():
                m.d.sync += d_i.eq(d_i + 1)
            with m.If(is_last):
                m.d.sync += [d_busy.eq(0), rd_base.eq(rd_base + c_nb)]
        m.d.sync += tiles_ready.eq(tiles_ready + tile_done - (issue & start))

        # R1: entry data available
        r1_v, r1_first, r1_last = Signal(), Signal(), Signal()
        r1_bias = Signal(data.ArrayLayout(unsigned(32), L))
        with m.If(en):
            m.d.sync += [r1_v.eq(issue), r1_first.eq(issue & start), r1_last.eq(issue & is_last),
                         r1_bias.eq(Mux(need_bias, self.bias.payload.as_value(), 0))]
        e_ref_reg = [Signal(signed(eb + 1), name=f"eref{n}") for n in range(L)]
        r2_v, r2_first, r2_last = Signal(), Signal(), Signal()
        r2_bias = Signal.like(r1_bias)
        r2_val = [Signal(signed(pb + ALIGN_GUARD_BITS + 2), name=f"r2v{n}") for n in range(L)]
        r2_eref = [Signal(signed(eb + 1), name=f"r2e{n}") for n in range(L)]
        with m.If(en):
            m.d.sync += [r2_v.eq(r1_v), r2_first.eq(r1_first), r2_last.eq(r1_last), r2_bias.eq(r1_bias)]
        for n in range(L):
            ent_i, ent_e, ent_mx = f_rd.data.i[n], f_rd.data.e[n], f_rd.data.emax[n]
            eref = Signal(signed(eb + 1), name=f"erefn{n}")
            m.d.comb += eref.eq(Mux(r1_first, ent_mx - ALIGN_GUARD_BITS, e_ref_reg[n]))
            sh = Signal(signed(eb + 2), name=f"dsh{n}")
            m.d.comb += sh.eq(eref - ent_e)
            v = rne_shift_signed(m, ent_i, sh, ALIGN_GUARD_BITS, pb + 1, f"dal{n}")
            with m.If(en):
                m.d.sync += [r2_val[n].eq(v), r2_eref[n].eq(eref)]
                with m.If(r1_v & r1_first):
                    m.d.sync += e_ref_reg[n].eq(eref)
        # R2: accumulate; on the tile's last entry hand the sum to the reconstruction
        ab = cfg.acc_bits
        acc = [Signal(signed(ab), name=f"acc{n}") for n in range(L)]
        r3_v = Signal()
        r3_acc = [Signal(signed(ab), name=f"r3acc{n}") for n in range(L)]
        r3_e = [Signal(signed(eb + 2), name=f"r3e{n}") for n in range(L)]
        r3_bias = Signal.like(r1_bias)
        with m.If(en):
            m.d.sync += [r3_v.eq(r2_v & r2_last), r3_bias.eq(r2_bias)]
            for n in range(L):
                tot = Mux(r2_first, 0, acc[n]) + r2_val[n]
                with m.If(r2_v):
                    m.d.sync += acc[n].eq(tot)
                m.d.sync += [r3_acc[n].eq(tot), r3_e[n].eq(r2_eref[n])]
        recon, adders = [], []
        for n in range(L):
            u = ScaledToFloat32(ab)
            m.submodules[f"recon{n}"] = u
            m.d.comb += [u.acc.eq(r3_acc[n]), u.scale.eq(0x3C00), u.exp.eq(r3_e[n]),
                         u.i_valid.eq(r3_v), u.en.eq(en)]
            recon.append(u)
        bias_t = delay_line(m, r3_bias.as_value(), ScaledToFloat32.LATENCY, en, "biast")
        for n in range(L):
            a = Float32Add()
            m.submodules[f"badd{n}"] = a
            m.d.comb += [a.a.eq(recon[n].o), a.b.eq(bias_t[32 * n:32 * (n + 1)]),
                         a.i_valid.eq(recon[n].o_valid), a.en.eq(en)]
            adders.append(a)

        # ---- output register, command completion ----------------------------------------------
        out_cnt = Signal(range(cfg.max_tiles + 1))
        y_last = Signal()
        m.d.comb += y_last.eq(out_cnt == c_tiles - 1)
        with m.If(en):
            m.d.sync += [self.out.valid.eq(adders[0].o_valid), self.out.payload.last.eq(y_last)]
            for n in range(L):
                m.d.sync += self.out.payload.y[n].eq(adders[n].o)
            with m.If(adders[0].o_valid):
                m.d.sync += out_cnt.eq(Mux(y_last, 0, out_cnt + 1))
        with m.If(self.out.valid & self.out.ready & self.out.payload.last):
            m.d.sync += pending.eq(0)
        errs = Cat(*[u.range_error for u in recon], *[a.range_error for a in adders])
        with m.If(errs.any()):
            m.d.sync += self.error.eq(1)
        return m
