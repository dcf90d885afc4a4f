"""PE array: DSP-packed BFP x INT4 matrix-vector engine (mode (a): INT4 linear layers).

What it computes (bit for bit :func:`ternopu.golden.pe.linear_bfp_int4`)
------------------------------------------------------------------------
For one token ``x`` (FP16, ``K``) and one GPTQ/AWQ INT4 weight matrix (``q [K, N]``, zeros and FP16
scales per group of ``group`` rows)::

    m, e_b   = to_bfp(x)                                     (BFPConverter, at activation load)
    I[b, n]  = sum_{k in block b} m[k] * q[k, n]             (DSP48E2/DSP58, 2 products per slice)
    Pa[g, n] = sum_{b in g} rne_shift(I[b, n], e_ref_g - e_b) (block alignment, fixed point)
    Sa[g]    = sum_{b in g} rne_shift(sum_{k in b} m[k], e_ref_g - e_b)   (one extra lane)
    acc      = Pa - z[g, n] * Sa[g]                          (zero folded out of the inner product)
    t[g, n]  = binary32(acc * s_sig * 2**(e_ref_g + s_exp))  (one RNE rounding per group/output)
    y[n]     = t[0, n] + t[1, n] + ... (binary32 RNE adds, ascending group order)

Array and dataflow
------------------
``rows`` (R) x ``cols`` (C) DSP slices. A *beat* is R consecutive input rows ``k`` times
``lanes = 2C`` consecutive outputs ``n``; one beat per cycle. Column ``c`` serves outputs ``2c``
(low P field) and ``2c+1`` (high field): slice ``(r, c)`` gets ``A = q[r, 2c] | q[r, 2c+1] << 22``,
``D = 8 * (1 + 2**22)``, pre-adder ``D - A`` and ``B = m[k0 + r]`` (the activation mantissa is the
operand shared by the two products, and by all C columns of the row: a matvec broadcasts one
activation to many outputs). Golden packing "int4x2": fields hold ``sum (8 - q) m``, restored as
``8 * sum(m) - field``. The R slices of a column form a PCIN cascade (row ``r``'s operands are
skewed by ``r`` cycles); the last slice also adds its own P (``W = P``) except on the first beat of
a BFP block, so after a whole block (``block / R`` beats, at most the packing depth of 32
products per field) the last P holds both block sums ``I[b, 2c]``, ``I[b, 2c+1]``.

Per block end: field extraction with the sign-borrow correction, ``8*msum`` correction, aligned
RNE shift, accumulate (``lanes + 1`` lanes, the extra one computes ``Sa``). Per group end: the
``lanes`` accumulators move into a two-bank drain (hold + shift); the shift bank feeds
``out_lanes`` reconstruction units per cycle: zero fold, scale multiply, one RNE rounding to
binary32 (:class:`ScaledToFloat32`), then the binary32 group sum (:class:`Float32Add`, y kept per
output in a small memory). ``out`` carries the finished ``y`` after the last group.

Streams (``amaranth.lib.stream``, all with backpressure)
--------------------------------------------------------
* ``cmd``: ``{n_tiles, k_groups, load_act}``; ``n_tiles = N / lanes``, ``k_groups = K / group``.
  Zero or too-large counts drop the command and set the sticky ``error``.
* ``act``: if ``load_act``, ``K / block`` transfers of ``block`` FP16 words (element ``j`` in bits
  ``[16j, 16j+16)``), converted and stored once (the activation buffer; reused when ``load_act=0``).
* ``qw`` / ``meta``: the checkpoint's own packed words, see :mod:`ternopu.hw.dequant` (tile order:
  for each output tile all beats in ascending k; one meta transfer per (tile, group)).
* ``out``: ``N / out_lanes`` transfers ``{y[out_lanes] (binary32 bits), last}`` in output order;
  ``last`` on the final transfer of the projection.

Flow control: one global pipeline enable ``en = ~out.valid | out.ready`` (every register of the
engine holds while the output register is full and not taken) plus drain credits: a beat that ends
a group is accepted only while one of the ``drain_banks`` banks is free, so group results
always find room. (On silicon the global enable would be replaced by skid buffers at the unit
boundaries; behaviourally both are cycle-equivalent when ``out`` never stalls.)

Numeric range: the reconstruction and the binary32 adder handle normal numbers and zeros only.
For FP16 activations and FP16 scales every value lies in ``[2**-58, 2**45)`` (block exponent
``>= -26``, guard 8, scale exponent ``>= -24``), far inside binary32's normal range, so no
subnormal and no overflow can occur; a value outside it sets the sticky ``error``.

Default configuration (U280 at 300 MHz) -- see docs/pe_array.md
---------------------------------------------------------------
HBM 460.8 GB/s / 300 MHz = 1536 B/cycle = at most 2956 INT4 weights/cycle once the FP16 scale and
4-bit zero per 128 weights are counted. ``rows = 16`` x ``cols = 128`` slices x 2 products = 4096
weights/cycle on 2048 DSP48E2 (22.7 % of the U280's 9024), 256 outputs per tile (divides 4096 and
11008): the array is faster than HBM can feed it, so a projection is HBM-bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import BFPFormat, DEFAULT_BFP, IEEE_FORMATS
from ternopu.golden.dsp import DSP48E2, DSP58, INT4_OFFSET, INT4X2_SPACING, packing
from ternopu.golden.errors import ConfigError
from ternopu.golden.pe import ALIGN_GUARD_BITS, INT4_CODE_MAX, aligned_acc_bits

from .bfp import BFP_EXP_BITS, HALF_BITS, BFPConverter, rne_shift_signed
from .dequant import DEQUANT_LATENCY, FP16_BITS, Int4Dequant, meta_bits, weight_beat_bits
from .dsp import (
    FULL_PIPELINE,
    PREADD_SUB,
    W_P,
    W_ZERO,
    Z_PCIN,
    Z_ZERO,
    DSPSlice,
    delay_line,
)
from .fp32 import F32_BIAS, F32_BITS, F32_EXP_MAX, F32_FRAC_BITS

__all__ = [
    "MIN_DRAIN_BANKS",
    "HBM_BYTES_PER_CYCLE_300MHZ",
    "PEConfig",
    "DEFAULT_CONFIG",
    "SMALL_CONFIG",
    "MID_CONFIG",
    "ScaledToFloat32",
    "Float32Add",
    "PEArray",
]

MIN_DRAIN_BANKS = 2
"""Fewest group-result banks between the accumulators and the reconstruction (hold + shift)."""
HBM_BYTES_PER_SECOND = 32 * 256 // 8 * 450e6
"""U280 HBM peak: 32 pseudo-channels x 256-bit AXI ports at 450 MHz = 460.8 GB/s."""
HBM_BYTES_PER_CYCLE_300MHZ = HBM_BYTES_PER_SECOND / 300e6
"""1536 bytes per 300 MHz cycle."""
FP16 = IEEE_FORMATS[torch.float16]
FP16_FRAC_BITS = FP16.frac_bits
FP16_SCALE_LSB_OFFSET = FP16.bias + FP16.frac_bits
"""``s = s_sig * 2**(max(e,1) - 25)`` for an FP16 scale with exponent field ``e``."""


def _bits_signed(bound: int) -> int:
    """Two's-complement width holding ``[-bound, bound]``."""
    return int(bound).bit_length() + 1


# =============================================================================================
# binary32 units of the output stage (normal numbers and zeros; see module docstring)
# =============================================================================================


class ScaledToFloat32(wiring.Component):
    """``binary32(acc * s_sig * 2**(e + s_exp))`` rounded half to even, 3-stage pipeline.

    Parameters
    ----------
    acc_bits : int
        Signed width of ``acc``.

    Ports
    -----
    acc : In(signed(acc_bits)); scale : In(16) FP16 bits (finite, any sign; a zero scale gives +0);
    exp : In(signed(BFP_EXP_BITS + 2)) the LSB weight ``e`` of ``acc``; i_valid, en (init 1);
    o : Out(32) binary32 bits; o_valid; range_error : Out(1) (this result would be subnormal or
    overflow: outside the unit's contract, the result is then unspecified).

    The product ``acc * s_sig`` is exact (``acc_bits + 11`` bits); the only rounding is the final
    normalize-and-round, so the result equals golden ``exact_to_float32(acc * s_sig, e + s_exp)``.
    A zero product gives ``+0.0`` (as the golden float64 path does).
    """

    LATENCY = 3

    def __init__(self, acc_bits: int):
        self.acc_bits = acc_bits
        super().__init__({
            "acc": In(signed(acc_bits)),
            "scale": In(FP16_BITS),
            "exp": In(signed(BFP_EXP_BITS + 2)),
            "i_valid": In(1),
            "en": In(1, init=1),
            "o": Out(F32_BITS),
            "o_valid": Out(1),
            "range_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        en = self.en
        pw = self.acc_bits + FP16_FRAC_BITS + 1  # |acc * s_sig| < 2**(acc_bits - 1 + 11)
        # ---- stage 1: exact product, sign, exponent of its LSB ----------------------------------
        s_e = self.scale[FP16_FRAC_BITS:15]
        s_sig = Cat(self.scale[:FP16_FRAC_BITS], s_e != 0)
        s_exp = Mux(s_e == 0, 1, s_e) - FP16_SCALE_LSB_OFFSET
        amag = Mux(self.acc < 0, -self.acc, self.acc)
        s1_mag = Signal(pw)
        s1_sign, s1_valid = Signal(), Signal()
        s1_e = Signal(signed(BFP_EXP_BITS + 4))
        with m.If(en):
            m.d.sync += [
                s1_mag.eq(amag.as_unsigned() * s_sig),
                s1_sign.eq((self.acc < 0) ^ self.scale[15]),
                s1_e.eq(self.exp + s_exp),
                s1_valid.eq(self.i_valid),
            ]
        # ---- stage 2: leading one, normalize to 24 bits + guard + sticky -----------------------
        msb = Signal(range(pw))
        for b in range(pw):
            with m.If(s1_mag[b]):
                m.d.comb += msb.eq(b)
        left = Signal(range(24))
        right = Signal(range(pw))
        with m.If(msb <= 23):
            m.d.comb += left.eq(23 - msb)
        with m.Else():
            m.d.comb += right.eq(msb - 23)
        wide = Signal(pw + 24)
        m.d.comb += wide.eq((s1_mag << left) << 1)  # one extra LSB to catch the guard bit
        shifted = Signal(pw + 24)
        m.d.comb += shifted.eq(wide >> right)
        lost = Signal()
        m.d.comb += lost.eq((shifted << right)[:pw + 24] != wide)
        # the fraction only: the leading one (shifted[24]) is implied by the exponent field
        s2_keep = Signal(F32_FRAC_BITS)
        s2_guard, s2_sticky, s2_sign, s2_zero, s2_valid = Signal(), Signal(), Signal(), Signal(), Signal()
        s2_ef = Signal(signed(BFP_EXP_BITS + 6))  # biased exponent field before rounding
        with m.If(en):
            m.d.sync += [
                s2_keep.eq(shifted[1:1 + F32_FRAC_BITS]),
                s2_guard.eq(shifted[0]),
                s2_sticky.eq(lost),
                s2_sign.eq(s1_sign),
                s2_zero.eq(s1_mag == 0),
                s2_ef.eq(s1_e + msb + F32_BIAS),
                s2_valid.eq(s1_valid),
            ]
        # ---- stage 3: round half to even, pack -------------------------------------------------
        up = s2_guard & (s2_sticky | s2_keep[0])
        # 31 bits: a carry out of an all-ones exponent field needs s2_ef >= F32_EXP_MAX, which
        # ``bad`` already catches
        packed = Signal(31)
        m.d.comb += packed.eq(Cat(s2_keep, s2_ef[:8]) + up)
        bad = ~s2_zero & ((s2_ef < 1) | (s2_ef >= F32_EXP_MAX)
                          | (packed[F32_FRAC_BITS:F32_FRAC_BITS + 8] == F32_EXP_MAX))
        with m.If(en):
            m.d.sync += [
                self.o.eq(Mux(s2_zero, 0, Cat(packed, s2_sign))),
                self.o_valid.eq(s2_valid),
                self.range_error.eq(s2_valid & bad),
            ]
        return m


class Float32Add(wiring.Component):
    """Pipelined binary32 adder ``a + b``, round half to even, 4 stages.

    Contract: operands are normal numbers or zeros (a zero exponent field reads as zero, DAZ) and
    the exact sum is zero or at least ``2**-126`` in magnitude (no subnormal results); then the
    result equals ``torch.float32`` addition bit for bit, except that ``-0 + -0`` gives ``+0``
    (the PE array never produces ``-0``). A result that would be subnormal or overflow raises
    ``range_error`` (value unspecified).

    Stages: (1) unpack, order by magnitude, exponent difference; (2) align the smaller significand
    with guard, round and sticky bits and add / subtract; (3) normalize (carry out or leading
    zeros); (4) round to nearest even and pack.
    """

    LATENCY = 4

    def __init__(self):
        super().__init__({
            "a": In(F32_BITS), "b": In(F32_BITS), "i_valid": In(1), "en": In(1, init=1),
            "o": Out(F32_BITS), "o_valid": Out(1), "range_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        en, fb = self.en, F32_FRAC_BITS
        a_mag, b_mag = self.a[:31], self.b[:31]
        swap = b_mag > a_mag
        big = Mux(swap, self.b, self.a)
        small = Mux(swap, self.a, self.b)
        eb, es = big[fb:31], small[fb:31]
        # ---- stage 1 ------------------------------------------------------------------------
        s1_bm, s1_sm = Signal(24), Signal(24)
        s1_e = Signal(8)
        s1_d = Signal(range(32))
        s1_sign, s1_sub, s1_valid = Signal(), Signal(), Signal()
        with m.If(en):
            m.d.sync += [
                s1_bm.eq(Mux(eb == 0, 0, Cat(big[:fb], Const(1, 1)))),
                s1_sm.eq(Mux(es == 0, 0, Cat(small[:fb], Const(1, 1)))),
                s1_e.eq(eb),
                s1_d.eq(Mux(eb - es > 31, 31, eb - es)),
                s1_sign.eq(big[31]),
                s1_sub.eq(self.a[31] ^ self.b[31]),
                s1_valid.eq(self.i_valid),
            ]
        # ---- stage 2: align with G, R, S and add --------------------------------------------
        sm_x = Signal(27)
        m.d.comb += sm_x.eq(s1_sm << 3)
        sh = Signal(27)
        m.d.comb += sh.eq(sm_x >> s1_d)
        sticky = Signal()
        m.d.comb += sticky.eq((sh << s1_d)[:27 + 31] != sm_x)
        aligned = sh | sticky
        s2_sum = Signal(28)
        s2_e = Signal(8)
        s2_sign, s2_valid = Signal(), Signal()
        with m.If(en):
            m.d.sync += [
                s2_sum.eq(Mux(s1_sub, (s1_bm << 3) - aligned, (s1_bm << 3) + aligned)),
                s2_e.eq(s1_e), s2_sign.eq(s1_sign), s2_valid.eq(s1_valid),
            ]
        # ---- stage 3: normalize so the leading one sits at bit 26 ---------------------------
        lead = Signal(range(28))
        for b in range(28):
            with m.If(s2_sum[b]):
                m.d.comb += lead.eq(b)
        lz = Signal(range(27))
        m.d.comb += lz.eq(26 - lead)
        norm = Signal(27)
        e_n = Signal(signed(11))
        with m.If(s2_sum[27]):
            m.d.comb += [norm.eq((s2_sum >> 1) | s2_sum[0]), e_n.eq(s2_e + 1)]
        with m.Else():
            m.d.comb += [norm.eq(s2_sum << lz), e_n.eq(s2_e - lz)]
        s3_norm = Signal(27)
        s3_e = Signal(signed(11))
        s3_zero, s3_sign, s3_valid = Signal(), Signal(), Signal()
        with m.If(en):
            m.d.sync += [s3_norm.eq(norm), s3_e.eq(e_n), s3_zero.eq(s2_sum == 0),
                         s3_sign.eq(s2_sign), s3_valid.eq(s2_valid)]
        # ---- stage 4: round half to even, pack ------------------------------------------------
        keep = s3_norm[3:27]
        up = s3_norm[2] & ((s3_norm[:2] != 0) | keep[0])
        packed = Signal(31)  # a carry out of the exponent field needs s3_e >= F32_EXP_MAX: ``bad``
        m.d.comb += packed.eq(Cat(keep[:fb], s3_e[:8]) + up)
        bad = ~s3_zero & ((s3_e < 1) | (s3_e >= F32_EXP_MAX)
                          | (packed[fb:fb + 8] == F32_EXP_MAX))
        with m.If(en):
            m.d.sync += [
                self.o.eq(Mux(s3_zero, 0, Cat(packed, s3_sign))),
                self.o_valid.eq(s3_valid),
                self.range_error.eq(s3_valid & bad),
            ]
        return m


# =============================================================================================
# configuration
# =============================================================================================


@dataclass(frozen=True)
class PEConfig:
    """Geometry of the PE array and the constants software reads from it.

    Parameters
    ----------
    rows : int
        Input rows (k) per beat = DSP rows of the cascade; divides ``fmt.block``; a multiple of 8
        for GPTQ (8 codes per qweight word along k).
    cols : int
        DSP columns; ``lanes = 2 * cols`` outputs per tile (two INT4 products per slice);
        ``lanes % 8 == 0`` (qzeros pack 8 columns per word).
    group : int
        INT4 quantization group (rows); a multiple of ``fmt.block``.
    out_lanes : int
        Reconstruction units (outputs per ``out`` transfer); divides ``lanes``; the drain needs
        ``lanes / out_lanes >= Float32Add.LATENCY + 2`` steps per group (read-after-write
        distance of the per-output binary32 sums).
    drain_banks : int
        Group-result banks (``drain_banks - 1`` hold banks in a FIFO + the shift bank), >= 2; also
        the number of group-end beats allowed in flight (credits). Full rate needs
        ``drain_banks * group / rows >= credit_cycles`` (see :attr:`full_rate`).
    max_k, max_n : int
        Largest projection; size the activation buffer and the tile counters.
    dsp : "dsp48e2" or "dsp58"
    int4_format : "gptq" or "awq"; legacy_zero_offset : GPTQ ``z - 1`` checkpoints.
    fmt : BFPFormat of the activations (block must not exceed the int4x2 packing depth).
    clock_hz : float, the modelled design clock.
    primitive_dsp : bool
        Build the slices as ``Instance("DSP48E2"/"DSP58")`` for synthesis (not simulatable here;
        see :class:`ternopu.hw.dsp.DSPSlice`). On silicon the cascade would use PCOUT -> PCIN
        routing; this wrapper feeds PCIN from the previous slice's P through fabric instead
        (a known limitation of the primitive option, not yet using the dedicated cascade).

    Raises
    ------
    ConfigError
        Any inconsistent parameter (message names it, expected and found).
    """

    rows: int = 16
    cols: int = 128
    group: int = 128
    out_lanes: int = 32
    drain_banks: int = 5
    max_k: int = 16384
    max_n: int = 32768
    dsp: str = "dsp48e2"
    int4_format: str = "gptq"
    legacy_zero_offset: bool = False
    fmt: BFPFormat = DEFAULT_BFP
    clock_hz: float = 300e6
    primitive_dsp: bool = False

    def __post_init__(self):
        for name in ("rows", "cols", "group", "out_lanes", "drain_banks", "max_k", "max_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"PEConfig.{name}: expected a positive int, got {v!r}")
        if self.dsp not in ("dsp48e2", "dsp58"):
            raise ConfigError(f"PEConfig.dsp: expected 'dsp48e2' or 'dsp58', got {self.dsp!r}")
        blk = self.fmt.block
        if blk % self.rows:
            raise ConfigError(f"PEConfig.rows: must divide the BFP block {blk}, got {self.rows}")
        if self.group % blk:
            raise ConfigError(f"PEConfig.group: must be a multiple of the BFP block {blk}, got {self.group}")
        depth = packing("int4x2", self.golden_dsp, self.fmt.mant_bits).depth
        if blk > depth:
            raise ConfigError(
                f"PEConfig.fmt: a {blk}-element block exceeds the int4x2 accumulation depth {depth} "
                f"for {self.fmt.mant_bits}-bit mantissas")
        if self.lanes % self.out_lanes:
            raise ConfigError(f"PEConfig.out_lanes: must divide lanes = {self.lanes}, got {self.out_lanes}")
        if self.drain_steps < Float32Add.LATENCY + 2:
            raise ConfigError(
                f"PEConfig.out_lanes: lanes / out_lanes = {self.drain_steps} drain steps per group, "
                f"need >= {Float32Add.LATENCY + 2} (binary32 sum read-after-write distance)")
        if self.drain_banks < MIN_DRAIN_BANKS:
            raise ConfigError(f"PEConfig.drain_banks: expected >= {MIN_DRAIN_BANKS}, got {self.drain_banks}")
        if self.max_k % self.group:
            raise ConfigError(f"PEConfig.max_k: must be a multiple of the group {self.group}, got {self.max_k}")
        # The dequant unit's geometry rules (rows % 8 for GPTQ, lanes % 8, ...).
        _dequant_check(self.rows, self.lanes, self.group, self.int4_format, self.legacy_zero_offset)

    # ---- geometry ------------------------------------------------------------------------------
    @property
    def golden_dsp(self):
        return DSP48E2 if self.dsp == "dsp48e2" else DSP58

    @property
    def lanes(self) -> int:
        """Outputs per tile = products per beat row (2 per DSP column)."""
        return 2 * self.cols

    @property
    def dsps(self) -> int:
        return self.rows * self.cols

    @property
    def macs_per_cycle(self) -> int:
        """Peak INT4 x mantissa products per cycle (rows x cols x 2)."""
        return self.rows * self.lanes

    @property
    def steps_per_block(self) -> int:
        return self.fmt.block // self.rows

    @property
    def blocks_per_group(self) -> int:
        return self.group // self.fmt.block

    @property
    def beats_per_group(self) -> int:
        return self.group // self.rows

    @property
    def drain_steps(self) -> int:
        """Reconstruction cycles per group and tile."""
        return self.lanes // self.out_lanes

    # ---- widths ------------------------------------------------------------------------------
    @property
    def qm_bits(self) -> int:
        """Signed width of a block sum ``sum q*m`` (and of ``msum``)."""
        return _bits_signed(self.fmt.block * self.fmt.mant_max * INT4_CODE_MAX)

    @property
    def acc_bits(self) -> int:
        """Signed width of the aligned group accumulators ``Pa`` and ``Sa`` (golden bound)."""
        return aligned_acc_bits(self.fmt.block * self.fmt.mant_max * INT4_CODE_MAX, self.blocks_per_group)

    @property
    def fold_bits(self) -> int:
        """Signed width of ``Pa - z * Sa``."""
        return self.acc_bits + 5

    # ---- commands and streams ---------------------------------------------------------------
    def tiles(self, n: int, k: int) -> tuple[int, int]:
        """``(n_tiles, k_groups)`` of an ``N x K`` projection (``N % lanes == 0``, ``K % group == 0``)."""
        if n % self.lanes or k % self.group:
            raise ConfigError(f"projection {n}x{k}: N must be a multiple of {self.lanes} and K of {self.group}")
        return n // self.lanes, k // self.group

    def beats(self, n: int, k: int) -> int:
        return (n // self.lanes) * (k // self.rows)

    def cmd_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "n_tiles": unsigned(max(1, (self.max_n // self.lanes).bit_length())),
            "k_groups": unsigned(max(1, (self.max_k // self.group).bit_length())),
            "load_act": unsigned(1),
        })

    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({"y": data.ArrayLayout(unsigned(F32_BITS), self.out_lanes),
                                  "last": unsigned(1)})

    @property
    def cascade_latency(self) -> int:
        """Cycles from a beat's registered operands to the block sum in the last slice's P."""
        return (self.rows - 1) + FULL_PIPELINE.latency

    @property
    def group_latency(self) -> int:
        """Cycles from accepting a group's last beat to its accumulators reaching the drain."""
        return DEQUANT_LATENCY + 1 + self.cascade_latency + 3

    @property
    def result_latency(self) -> int:
        """Cycles from a drain step to its ``out`` transfer (fold, reconstruct, binary32 add)."""
        return 1 + 1 + ScaledToFloat32.LATENCY + Float32Add.LATENCY + 1

    @property
    def credit_cycles(self) -> int:
        """Cycles a group holds its drain credit: accept of its last beat -> end of its drain."""
        return self.group_latency + 2 + self.drain_steps

    @property
    def full_rate(self) -> bool:
        """Whether the credits never throttle the weight stream (one beat per cycle sustained)."""
        return self.drain_banks * self.beats_per_group >= self.credit_cycles

    def ideal_cycles(self, n: int, k: int) -> int:
        """One beat per cycle: ``(N / lanes) * (K / rows)``."""
        return self.beats(n, k)

    def hbm_bytes(self, n: int, k: int) -> int:
        """Bytes a projection reads at stored precision (weights, zeros, scales)."""
        groups = k // self.group
        return k * n // 2 + groups * n // 2 + groups * n * 2


def _dequant_check(rows, lanes, group, fmt, legacy):
    """Raise ConfigError for a geometry :class:`Int4Dequant` cannot serve (no elaboratable built)."""
    from ternopu.golden.int4 import NIBBLES_PER_WORD
    if fmt not in ("gptq", "awq"):
        raise ConfigError(f"PEConfig.int4_format: expected 'gptq' or 'awq', got {fmt!r}")
    if fmt == "gptq" and rows % NIBBLES_PER_WORD:
        raise ConfigError(f"PEConfig.rows: GPTQ packs 8 rows per word, rows must be a multiple of 8, got {rows}")
    if lanes % NIBBLES_PER_WORD:
        raise ConfigError(f"PEConfig.cols: lanes = 2*cols must be a multiple of 8, got {lanes}")
    if legacy and fmt != "gptq":
        raise ConfigError("PEConfig.legacy_zero_offset: exists only for GPTQ checkpoints")


DEFAULT_CONFIG = PEConfig()
"""U280 at 300 MHz: 16 x 128 DSP48E2 (2048), 4096 INT4 MACs/cycle, 256 lanes (divide 4096 and
11008): above the HBM rate of 3072 INT4 weights/cycle, so projections are HBM-bound (docs/pe_array.md)."""
SMALL_CONFIG = PEConfig(rows=8, cols=4, group=64, out_lanes=1, drain_banks=4, max_k=512, max_n=256)
"""Tiny engine for fast tests (8 lanes, group 64)."""
MID_CONFIG = PEConfig(rows=8, cols=16, group=128, out_lanes=4, drain_banks=2, max_k=11008, max_n=11008)
"""Llama-2-7B real-shape runs in Verilator (32 lanes, 256 products/cycle, 128 DSPs)."""


# =============================================================================================
# the array
# =============================================================================================


class PEArray(wiring.Component):
    """The PE array in INT4-linear mode (see module docstring). ``error``: sticky, a dropped command
    or a reconstruction out of the binary32 normal range."""

    def __init__(self, cfg: PEConfig = DEFAULT_CONFIG):
        if not isinstance(cfg, PEConfig):
            raise ConfigError(f"PEArray: expected a PEConfig, got {cfg!r}")
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(cfg.cmd_layout())),
            "act": In(stream.Signature(unsigned(HALF_BITS * cfg.fmt.block))),
            "qw": In(stream.Signature(unsigned(weight_beat_bits(cfg.rows, cfg.lanes)))),
            "meta": In(stream.Signature(unsigned(meta_bits(cfg.lanes)))),
            "out": Out(stream.Signature(cfg.out_layout())),
            "error": Out(1),
        })

    def elaborate(self, platform):  # noqa: C901 - one datapath, documented stage by stage
        cfg = self.cfg
        m = Module()
        R, C, L, OL = cfg.rows, cfg.cols, cfg.lanes, cfg.out_lanes
        fmt = cfg.fmt
        mb = fmt.mant_bits
        SPB, BPG = cfg.steps_per_block, cfg.blocks_per_group
        n_blocks_max = cfg.max_k // fmt.block
        gdsp = cfg.golden_dsp

        en = Signal()
        m.d.comb += en.eq(~self.out.valid | self.out.ready)

        m.submodules.conv = conv = BFPConverter(fmt)
        m.submodules.deq = deq = Int4Dequant(R, L, cfg.group, cfg.int4_format, cfg.legacy_zero_offset)
        wiring.connect(m, wiring.flipped(self.qw), deq.qw)
        wiring.connect(m, wiring.flipped(self.meta), deq.meta)

        # ---- activation buffer: one word per BFP block {mant[block], exp, msum} -------------
        act_layout = data.StructLayout({
            "mant": data.ArrayLayout(signed(mb), fmt.block),
            "exp": signed(BFP_EXP_BITS),
            "msum": signed(conv.msum_bits),
        })
        m.submodules.act_mem = act_mem = Memory(shape=act_layout, depth=n_blocks_max, init=[])
        m.submodules.grp_mem = grp_mem = Memory(shape=signed(BFP_EXP_BITS),
                                                depth=cfg.max_k // cfg.group, init=[])
        act_wr = act_mem.write_port()
        act_rd = act_mem.read_port()
        grp_wr = grp_mem.write_port()
        grp_rd = grp_mem.read_port()

        # ---- command / control ------------------------------------------------------------
        n_tiles = Signal(range(cfg.max_n // L + 1))
        k_groups = Signal(range(cfg.max_k // cfg.group + 1))
        n_act = Signal(range(n_blocks_max + 1))  # blocks to load
        sent = Signal(range(n_blocks_max + 1))
        written = Signal(range(n_blocks_max + 1))
        run_max = Signal(signed(BFP_EXP_BITS))
        t_cnt = Signal.like(n_tiles)
        g_cnt = Signal.like(k_groups)
        g_wr = Signal.like(k_groups)
        b_cnt = Signal(range(max(2, BPG)))
        s_cnt = Signal(range(max(2, SPB)))
        in_grp = Signal(range(max(2, BPG)))  # block index inside the group being loaded
        credits = Signal(range(cfg.drain_banks + 1), init=cfg.drain_banks)
        credit_ret = Signal()

        cmd_ok = ((self.cmd.payload.n_tiles != 0) & (self.cmd.payload.k_groups != 0)
                  & (self.cmd.payload.n_tiles <= cfg.max_n // L)
                  & (self.cmd.payload.k_groups <= cfg.max_k // cfg.group))
        last_step = s_cnt == SPB - 1
        last_blk = b_cnt == BPG - 1
        last_grp = g_cnt == k_groups - 1
        last_tile = t_cnt == n_tiles - 1
        grp_end_beat = last_step & last_blk
        accept = Signal()

        # Converter input comes straight from the act stream while loading.
        m.d.comb += [conv.i.payload.eq(self.act.payload), conv.o.ready.eq(1)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(~cmd_ok):
                        m.d.sync += self.error.eq(1)
                    with m.Else():
                        m.d.sync += [
                            n_tiles.eq(self.cmd.payload.n_tiles),
                            k_groups.eq(self.cmd.payload.k_groups),
                            n_act.eq(self.cmd.payload.k_groups * BPG),
                            sent.eq(0), written.eq(0), g_wr.eq(0), in_grp.eq(0),
                            t_cnt.eq(0), g_cnt.eq(0), b_cnt.eq(0), s_cnt.eq(0),
                        ]
                        with m.If(self.cmd.payload.load_act):
                            m.next = "LOAD"
                        with m.Else():
                            m.next = "RUN"
            with m.State("LOAD"):
                m.d.comb += [conv.i.valid.eq(self.act.valid & (sent < n_act)),
                             self.act.ready.eq(conv.i.ready & (sent < n_act))]
                with m.If(self.act.valid & self.act.ready):
                    m.d.sync += sent.eq(sent + 1)
                with m.If(written == n_act):
                    m.next = "RUN"
            with m.State("RUN"):
                can = en & ((credits != 0) | ~grp_end_beat)
                m.d.comb += [deq.o.ready.eq(can), accept.eq(deq.o.valid & can)]
                with m.If(accept):
                    m.d.sync += s_cnt.eq(Mux(last_step, 0, s_cnt + 1))
                    with m.If(last_step):
                        m.d.sync += b_cnt.eq(Mux(last_blk, 0, b_cnt + 1))
                        with m.If(last_blk):
                            m.d.sync += g_cnt.eq(Mux(last_grp, 0, g_cnt + 1))
                            with m.If(last_grp):
                                m.d.sync += t_cnt.eq(t_cnt + 1)
                                with m.If(last_tile):
                                    m.next = "IDLE"

        # Activation writes (converter output, LOAD only produces valid outputs).
        blk_of_write = written
        e_new = conv.o.payload.exp
        mx = Mux((in_grp == 0) | (e_new > run_max), e_new, run_max)
        m.d.comb += [
            act_wr.addr.eq(blk_of_write), act_wr.data.eq(conv.o.payload.as_value()),
            act_wr.en.eq(conv.o.valid),
            grp_wr.addr.eq(g_wr),
            grp_wr.data.eq(mx), grp_wr.en.eq(conv.o.valid & (in_grp == BPG - 1)),
        ]
        with m.If(conv.o.valid):
            m.d.sync += [written.eq(written + 1), run_max.eq(mx),
                         in_grp.eq(Mux(in_grp == BPG - 1, 0, in_grp + 1))]
            with m.If(in_grp == BPG - 1):
                m.d.sync += g_wr.eq(g_wr + 1)

        # Credits: consumed by an accepted group-end beat, returned when a shift bank finishes.
        take_credit = accept & grp_end_beat
        m.d.sync += credits.eq(credits - take_credit + credit_ret)

        # ---- meta FIFO (z, s of a group, pushed at its last beat, popped at the drain) -------
        meta_layout = data.StructLayout({"z": data.ArrayLayout(unsigned(4), L),
                                         "s": data.ArrayLayout(unsigned(FP16_BITS), L)})
        mf = [Signal(meta_layout, name=f"mfifo{i}") for i in range(cfg.drain_banks)]
        mf_w = Signal(range(cfg.drain_banks))
        mf_r = Signal(range(cfg.drain_banks))
        with m.If(take_credit):
            for i in range(cfg.drain_banks):
                with m.If(mf_w == i):
                    m.d.sync += [mf[i].z.eq(deq.o.payload.z), mf[i].s.eq(deq.o.payload.s)]
            m.d.sync += mf_w.eq(Mux(mf_w == cfg.drain_banks - 1, 0, mf_w + 1))

        # ---- stage 0 -> 1: beat register, activation / group memory reads -------------------
        blk_idx = g_cnt * BPG + b_cnt
        m.d.comb += [act_rd.addr.eq(blk_idx), act_rd.en.eq(en), grp_rd.addr.eq(g_cnt), grp_rd.en.eq(en)]
        flags_layout = data.StructLayout({
            "v": 1, "first_step": 1, "blk_end": 1, "blk_first": 1, "grp_end": 1,
            "first_grp": 1, "last_grp": 1, "proj_end": 1, "step": range(max(2, SPB)),
        })
        s1_q = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(4), L), R))
        s1_f = Signal(flags_layout)
        with m.If(en):
            m.d.sync += [
                s1_q.eq(deq.o.payload.q),
                s1_f.v.eq(accept),
                s1_f.first_step.eq(s_cnt == 0),
                s1_f.blk_end.eq(last_step),
                s1_f.blk_first.eq(b_cnt == 0),
                s1_f.grp_end.eq(grp_end_beat),
                s1_f.first_grp.eq(g_cnt == 0),
                s1_f.last_grp.eq(last_grp),
                s1_f.proj_end.eq(last_grp & last_tile),
                s1_f.step.eq(s_cnt),
            ]
        s1_act = act_rd.data
        e_ref_now = grp_rd.data - ALIGN_GUARD_BITS

        # ---- DSP array: rows x cols, PCIN cascade down each column ---------------------------
        d_const = INT4_OFFSET * (1 + (1 << INT4X2_SPACING))
        ps = []
        for c in range(C):
            prev = None
            for r in range(R):
                sl = DSPSlice(gdsp, FULL_PIPELINE, primitive=cfg.primitive_dsp)
                m.submodules[f"dsp_r{r}_c{c}"] = sl
                # Mantissa of row r: element step*R + r of the block word (zeroed for bubbles).
                mant = Signal(signed(mb), name=f"mant_r{r}_c{c}")
                with m.Switch(s1_f.step):
                    for st in range(SPB):
                        with m.Case(st):
                            m.d.comb += mant.eq(s1_act.mant[st * R + r])
                a_now = Cat(s1_q[r][2 * c], Const(0, INT4X2_SPACING - 4), s1_q[r][2 * c + 1])
                b_now = Mux(s1_f.v, mant, 0)
                first_now = s1_f.first_step & s1_f.v
                a_sk = delay_line(m, a_now, r, en, f"a_r{r}_c{c}")
                b_sk = delay_line(m, b_now, r, en, f"b_r{r}_c{c}")
                m.d.comb += [sl.a.eq(a_sk), sl.b.eq(b_sk), sl.d.eq(d_const), sl.c.eq(0),
                             sl.preadd.eq(PREADD_SUB), sl.ce.eq(en)]
                if r == R - 1:
                    f_sk = delay_line(m, first_now, r, en, f"f_r{r}_c{c}")
                    m.d.comb += sl.w_sel.eq(Mux(f_sk, W_ZERO, W_P))
                else:
                    m.d.comb += sl.w_sel.eq(W_ZERO)
                if prev is None:
                    m.d.comb += sl.z_sel.eq(Z_ZERO)
                else:
                    m.d.comb += [sl.z_sel.eq(Z_PCIN), sl.pcin.eq(prev.p)]
                prev = sl
            ps.append(prev.p)

        # Per-beat side information delayed to the cascade's output.
        side_layout = data.StructLayout({"f": flags_layout, "msum": signed(conv.msum_bits),
                                         "e_blk": signed(BFP_EXP_BITS), "e_ref": signed(BFP_EXP_BITS + 1)})
        side_now = Signal(side_layout)
        m.d.comb += [side_now.f.eq(s1_f), side_now.msum.eq(s1_act.msum),
                     side_now.e_blk.eq(s1_act.exp), side_now.e_ref.eq(e_ref_now)]
        side_p = delay_line(m, side_now.as_value(), cfg.cascade_latency, en, "side")
        side_p = data.View(side_layout, side_p)

        # ---- stage U: field extraction (sign-borrow correction), q*m = 8*msum - field ------------
        qm_bits = cfg.qm_bits
        u_qm = [Signal(signed(qm_bits), name=f"u_qm{n}") for n in range(L + 1)]
        u_side = Signal(side_layout)
        eight_msum = side_p.msum * INT4_OFFSET
        with m.If(en):
            m.d.sync += u_side.eq(side_p)
            for c in range(C):
                p = ps[c]
                lo = p[:INT4X2_SPACING].as_signed()
                hi = p[INT4X2_SPACING:].as_signed() + p[INT4X2_SPACING - 1]
                m.d.sync += [u_qm[2 * c].eq(eight_msum - lo), u_qm[2 * c + 1].eq(eight_msum - hi)]
            m.d.sync += u_qm[L].eq(side_p.msum)  # the Sa lane: sum of mantissas

        # ---- stage S: align to the group's reference exponent (RNE right / exact left) ------------
        shift = Signal(signed(BFP_EXP_BITS + 2))
        m.d.comb += shift.eq(u_side.e_ref - u_side.e_blk)
        sh_bits = qm_bits + ALIGN_GUARD_BITS + 2
        s_val = [Signal(signed(sh_bits), name=f"s_val{n}") for n in range(L + 1)]
        s_side = Signal(side_layout)
        with m.If(en):
            m.d.sync += s_side.eq(u_side)
            for n in range(L + 1):
                v = rne_shift_signed(m, u_qm[n], shift, ALIGN_GUARD_BITS, qm_bits + 1, f"al{n}")
                m.d.sync += s_val[n].eq(v)

        # ---- stage A: group accumulators Pa (lanes) and Sa ----------------------------------------
        acc_bits = cfg.acc_bits
        pa = [Signal(signed(acc_bits), name=f"pa{n}") for n in range(L + 1)]
        a_gdone = Signal()
        a_side = Signal(side_layout)
        do_blk = s_side.f.v & s_side.f.blk_end
        with m.If(en):
            m.d.sync += [a_gdone.eq(do_blk & s_side.f.grp_end), a_side.eq(s_side)]
            with m.If(do_blk):
                for n in range(L + 1):
                    m.d.sync += pa[n].eq(Mux(s_side.f.blk_first, 0, pa[n]) + s_val[n])

        # ---- drain: hold bank + shift bank -----------------------------------------------------
        bank_layout = data.StructLayout({
            "pa": data.ArrayLayout(signed(acc_bits), L),
            "z": data.ArrayLayout(unsigned(4), L),
            "s": data.ArrayLayout(unsigned(FP16_BITS), L),
            "sa": signed(acc_bits), "e_ref": signed(BFP_EXP_BITS + 1),
            "first_grp": 1, "last_grp": 1, "proj_end": 1,
        })
        H = cfg.drain_banks - 1  # hold banks (FIFO) in front of the shift bank
        holds = [Signal(bank_layout, name=f"hold{i}") for i in range(H)]
        h_w = Signal(range(max(2, H)))
        h_r = Signal(range(max(2, H)))
        h_cnt = Signal(range(H + 1))
        head = Signal(bank_layout)
        with m.Switch(h_r):
            for i in range(H):
                with m.Case(i):
                    m.d.comb += head.eq(holds[i])
        shb = Signal(bank_layout)
        sh_busy = Signal()
        sh_step = Signal(range(max(2, cfg.drain_steps)))
        DS = cfg.drain_steps
        sh_last = sh_busy & (sh_step == DS - 1)
        move = Signal()
        m.d.comb += [move.eq((h_cnt != 0) & (~sh_busy | sh_last)), credit_ret.eq(en & sh_last)]

        def ring_next(ptr, size):
            return Mux(ptr == size - 1, 0, ptr + 1)

        with m.If(en):
            m.d.sync += h_cnt.eq(h_cnt + a_gdone - move)
            with m.If(sh_busy):
                m.d.sync += sh_step.eq(sh_step + 1)
                # shift the bank down by out_lanes entries
                for n in range(L - OL):
                    m.d.sync += [shb.pa[n].eq(shb.pa[n + OL]), shb.z[n].eq(shb.z[n + OL]),
                                 shb.s[n].eq(shb.s[n + OL])]
                with m.If(sh_last):
                    m.d.sync += [sh_busy.eq(0), sh_step.eq(0)]
            with m.If(move):
                m.d.sync += [shb.eq(head), sh_busy.eq(1), sh_step.eq(0), h_r.eq(ring_next(h_r, H))]
            with m.If(a_gdone):
                m.d.sync += [h_w.eq(ring_next(h_w, H)), mf_r.eq(ring_next(mf_r, cfg.drain_banks))]
                for i in range(H):
                    with m.If(h_w == i):
                        hold = holds[i]
                        for n in range(L):
                            m.d.sync += hold.pa[n].eq(pa[n])
                        m.d.sync += [
                            hold.sa.eq(pa[L]), hold.e_ref.eq(a_side.e_ref),
                            hold.first_grp.eq(a_side.f.first_grp), hold.last_grp.eq(a_side.f.last_grp),
                            hold.proj_end.eq(a_side.f.proj_end),
                        ]
                        for j in range(cfg.drain_banks):
                            with m.If(mf_r == j):
                                m.d.sync += [hold.z.eq(mf[j].z), hold.s.eq(mf[j].s)]

        # ---- reconstruction: R0 issue, R1 zero fold, ScaledToFloat32, Float32Add ------------------
        fold_bits = cfg.fold_bits
        r1_acc = [Signal(signed(fold_bits), name=f"r1_acc{j}") for j in range(OL)]
        r1_s = [Signal(FP16_BITS, name=f"r1_s{j}") for j in range(OL)]
        info_layout = data.StructLayout({"v": 1, "first_grp": 1, "last_grp": 1, "proj_end": 1,
                                         "step": range(max(2, DS)), "e_ref": signed(BFP_EXP_BITS + 1)})
        r1_info = Signal(info_layout)
        with m.If(en):
            m.d.sync += [
                r1_info.v.eq(sh_busy), r1_info.first_grp.eq(shb.first_grp),
                r1_info.last_grp.eq(shb.last_grp), r1_info.proj_end.eq(shb.proj_end & sh_last),
                r1_info.step.eq(sh_step), r1_info.e_ref.eq(shb.e_ref),
            ]
            for j in range(OL):
                m.d.sync += [r1_acc[j].eq(shb.pa[j] - shb.z[j] * shb.sa), r1_s[j].eq(shb.s[j])]
        recon = []
        for j in range(OL):
            u = ScaledToFloat32(fold_bits)
            m.submodules[f"recon{j}"] = u
            m.d.comb += [u.acc.eq(r1_acc[j]), u.scale.eq(r1_s[j]), u.exp.eq(r1_info.e_ref),
                         u.i_valid.eq(r1_info.v), u.en.eq(en)]
            recon.append(u)
        t_info = data.View(info_layout, delay_line(m, r1_info.as_value(), ScaledToFloat32.LATENCY, en, "tinfo"))

        m.submodules.y_mem = y_mem = Memory(shape=unsigned(F32_BITS * OL), depth=max(2, DS), init=[])
        y_rd = y_mem.read_port(domain="comb")
        y_wr = y_mem.write_port()
        m.d.comb += y_rd.addr.eq(t_info.step)
        adders = []
        for j in range(OL):
            a = Float32Add()
            m.submodules[f"yadd{j}"] = a
            y_old = y_rd.data[F32_BITS * j:F32_BITS * (j + 1)]
            m.d.comb += [a.a.eq(Mux(t_info.first_grp, 0, y_old)), a.b.eq(recon[j].o),
                         a.i_valid.eq(t_info.v), a.en.eq(en)]
            adders.append(a)
        y_info = data.View(info_layout, delay_line(m, t_info.as_value(), Float32Add.LATENCY, en, "yinfo"))
        y_new = Cat(*[a.o for a in adders])
        m.d.comb += [y_wr.addr.eq(y_info.step), y_wr.data.eq(y_new), y_wr.en.eq(en & y_info.v)]

        # ---- output register -----------------------------------------------------------------------
        with m.If(en):
            m.d.sync += [self.out.valid.eq(y_info.v & y_info.last_grp),
                         self.out.payload.last.eq(y_info.proj_end)]
            for j in range(OL):
                m.d.sync += self.out.payload.y[j].eq(adders[j].o)
        range_err = Cat(*[u.range_error for u in recon], *[a.range_error for a in adders]).any()
        with m.If(range_err):
            m.d.sync += self.error.eq(1)
        return m
