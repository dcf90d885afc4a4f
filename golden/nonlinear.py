"""Nonlinear numerics of the NPE (nonlinear processing engine), defined bit for bit.

The NPE is a pipelined binary32 engine: element-wise IEEE binary32 adders and multipliers
(round to nearest, ties to even, no fused multiply-add), integer units that pick binary32 values
apart by their bit fields, a few small look-up tables and wide integer accumulators. Every
function here uses only those operations, so its result is reproducible bit for bit by torch on
CPU (element-wise float32 ops are correctly rounded there) and by the hardware.

Number format
-------------
binary32: bit 31 = sign, bits 30..23 = biased exponent ``be`` (bias 127), bits 22..0 = fraction.
A normal value is ``(1 + frac/2^23) * 2^(be - 127)``. ``torch.Tensor.view(torch.int32)`` exposes
the bits; exponent assembly adds ``n << 23`` to them (exact whenever the result stays normal).
Results that would be subnormal are flushed to +0 (the NPE has no subnormal path); each function
says where that happens.

Building blocks
---------------
* :func:`exp_approx` -- Cody-Waite range reduction ``x = n * ln2/64 + r`` (``n`` integer, the
  constant split into a 10-bit head and a tail so ``n * head`` is exact), a 64-entry LUT of
  ``2^(j/64)``, a degree-3 Taylor polynomial for ``e^r`` (``|r| <= ln2/128``) and exponent
  assembly ``+ (n >> 6) << 23``.
* :func:`rsqrt_approx` -- exponent halving by bit manipulation, a 128-entry seed LUT indexed by
  the exponent parity and the top 6 fraction bits, two Newton steps.
* :func:`recip_approx` -- 64-entry seed LUT on the top 6 fraction bits, two Newton steps,
  exponent negation by bit manipulation.
* :class:`SumSquares` -- exact, order- and chunk-independent sum of binary32 squares in a 128-bit
  fixed-point accumulator (four 32-bit limbs, LSB ``2^-62``).
* :class:`OnlineSoftmax` -- running max and running denominator over streamed chunks; the sum
  of exponentials (relative to the integer reference ``ceil(running max)``) is exact (fixed point,
  LSB ``2^-36``) until the reference increases, when it is folded into a binary32 partial
  denominator; chunks are processed in index order.

Error bounds
------------
Every ``*_MAX_REL_ERR`` constant is a bound on the relative error against a float64 reference
(``*_ref``), measured on the sweeps in :func:`error_table` and asserted by the tests; each constant
is the measured maximum rounded up (with a small margin) -- see the constant's comment for the
measured value and its domain.

Input policy
------------
Inputs must be float32 tensors (float16 / bfloat16 are accepted and widened exactly). NaN/Inf are
rejected with :class:`~ternopu.golden.errors.NonFiniteError`; values outside a function's stated
domain (negative rsqrt argument, exp argument above :data:`EXP_MAX_INPUT`, ...) and mismatched
shapes with :class:`~ternopu.golden.errors.FormatError`; bad parameters (``eps``, ``chunk``,
``theta``) with :class:`~ternopu.golden.errors.ConfigError`. A result that overflows binary32 is a
:class:`~ternopu.golden.errors.FormatError` too (the hardware raises its error status).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import ConfigError, FormatError, check_finite

__all__ = [
    "EXP_LUT_BITS", "EXP_LUT", "EXP_MAX_INPUT", "EXP_FLUSH_BELOW", "EXP_MAX_REL_ERR",
    "RSQRT_LUT_BITS", "RSQRT_LUT", "RSQRT_NEWTON_STEPS", "RSQRT_MAX_REL_ERR",
    "RECIP_LUT_BITS", "RECIP_LUT", "RECIP_NEWTON_STEPS", "RECIP_MAX_REL_ERR",
    "SS_LSB_EXP", "SS_LIMB_BITS", "SS_NUM_LIMBS", "RMS_MAX_ABS_INPUT", "RMS_MAX_D", "RMS_MIN_EPS",
    "RMSNORM_MAX_REL_ERR", "SOFTMAX_FRAC_BITS", "SOFTMAX_DEFAULT_CHUNK", "SOFTMAX_MAX_CHUNK",
    "SOFTMAX_MAX_ABS_SCORE", "SOFTMAX_MAX_T", "SOFTMAX_FOLD_REL_ERR", "SOFTMAX_MAX_REL_ERR", "SOFTMAX_SUM_ERR", "SILU_MAX_REL_ERR",
    "SILU_BOUND_MIN_INPUT", "ROPE_MAX_ERR", "RELU2_MAX_ABS_INPUT",
    "exp_approx", "exp_ref", "rsqrt_approx", "rsqrt_ref", "recip_approx", "recip_ref",
    "SumSquares", "rmsnorm", "rmsnorm_ref", "OnlineSoftmax", "softmax_online", "softmax_ref", "softmax_rel_err",
    "sigmoid_approx", "silu", "silu_ref", "relu2", "relu2_ref", "swiglu", "swiglu_ref",
    "relu2_glu", "relu2_glu_ref", "residual_add", "rope_tables", "rope", "rope_ref",
    "max_rel_err", "error_table",
]

F32 = torch.float32
_MANT_BITS = 23  # binary32 fraction bits
_EXP_BIAS = 127
_FRAC_MASK = (1 << _MANT_BITS) - 1
_F32_MIN_NORMAL = 2.0 ** -126


def _c(v: float) -> torch.Tensor:
    """A binary32 constant: ``v`` (float64) rounded once to nearest-even binary32."""
    return torch.tensor(v, dtype=torch.float64).to(F32)


# ----------------------------------------------------------------------------------------------
# exp
# ----------------------------------------------------------------------------------------------
EXP_LUT_BITS = 6
"""log2 of the number of ``2^(j/64)`` entries; the reduced argument is ``|r| <= ln2 / 128``."""
_EXP_STEPS = 1 << EXP_LUT_BITS
EXP_LUT = torch.tensor([2.0 ** (j / _EXP_STEPS) for j in range(_EXP_STEPS)], dtype=torch.float64).to(F32)
"""binary32 ``2^(j/64)``, j = 0..63, each rounded once from float64 (``EXP_LUT[0] == 1``)."""
_EXP_STEP = math.log(2.0) / _EXP_STEPS  # ln2/64 in float64 (offline)
_EXP_INV_STEP = _c(1.0 / _EXP_STEP)  # 64/ln2 as binary32
_EXP_HEAD_BITS = 10  # n has <= 14 bits, so n * head (<= 24 bits) is exact in binary32


def _head(v: float, bits: int) -> float:
    """``v`` truncated to ``bits`` significant bits (offline, exact in float64)."""
    e = math.floor(math.log2(abs(v)))
    q = 2.0 ** (e - bits + 1)
    return math.floor(v / q) * q


_EXP_STEP_HI = _c(_head(_EXP_STEP, _EXP_HEAD_BITS))
_EXP_STEP_LO = _c(_EXP_STEP - _head(_EXP_STEP, _EXP_HEAD_BITS))
_EXP_POLY = (_c(1.0 / 6.0), _c(0.5), _c(1.0), _c(1.0))  # Horner, highest degree first
EXP_MAX_INPUT = 88.0
"""Largest accepted argument (``e^88 ~ 1.65e38 < 2^128``); above it :func:`exp_approx` raises."""
EXP_FLUSH_BELOW = math.log(2.0 ** -126)
"""``ln(2^-126) ~ -87.3365``: below this the result would be subnormal and is flushed to +0
(the exact cut is where the assembled exponent field drops below 1)."""
_EXP_CLAMP = -104.0  # anything below flushes; clamping keeps n inside 14 bits (|n| <= 9603)
EXP_MAX_REL_ERR = 2.0e-7
"""Max relative error of :func:`exp_approx` vs float64 ``exp`` for normal results
(``x`` in [EXP_FLUSH_BELOW, EXP_MAX_INPUT]); measured 1.70e-07 on all FP16 inputs and a 2^20-point
sweep of that domain. Analysis: LUT entry, polynomial and final product each round once
(3 * 2^-24 = 1.79e-07) plus < 1e-8 from the reduction and the polynomial's truncation."""


def _as_f32(x: torch.Tensor, what: str) -> torch.Tensor:
    """Check that ``x`` is a finite float tensor and widen it exactly to binary32."""
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise FormatError(f"{what}: expected float32 (or float16/bfloat16), got {x.dtype}")
    check_finite(x, what)
    return x.to(F32)


def _check_no_overflow(y: torch.Tensor, what: str) -> torch.Tensor:
    """Raise :class:`FormatError` if a binary32 result overflowed (the NPE's error status)."""
    if not bool(torch.isfinite(y).all()):
        raise FormatError(f"{what}: result overflows binary32 (|value| > 3.4e38); inputs too large")
    return y


def _scale_pow2(v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``v * 2^k`` by adding ``k`` to the exponent field; results below 2^-126 flush to +0.

    ``v`` must be normal and positive (true at every call site); ``k`` int32/int64 with
    ``be(v) + k <= 254`` guaranteed by the caller's domain.
    """
    bits = v.view(torch.int32).to(torch.int64)
    be = (bits >> _MANT_BITS) + k
    out = (bits + (k << _MANT_BITS)).to(torch.int32).view(F32)
    return torch.where(be >= 1, out, torch.zeros_like(out))


def _exp_core(x: torch.Tensor) -> torch.Tensor:
    """exp for binary32 ``x <= EXP_MAX_INPUT`` (no checks; -inf and huge negatives give 0).

    Steps (every float op binary32 RNE):
      1. ``x <- max(x, -104)`` (result flushes anyway; keeps n within 14 bits).
      2. ``n = round_half_even(x * (64/ln2))`` (one multiply, exact rounding to integer).
      3. ``d = x - n*HI`` (``n*HI`` exact: 14 + 10 bits; the subtraction is exact by Sterbenz),
         ``r = d - n*LO`` (two roundings), ``|r| <= ln2/128`` up to rounding.
      4. ``p = ((r/6 + 1/2) * r + 1) * r + 1`` as ``((C3*r + C2)*r + C1)*r + C0``.
      5. ``v = EXP_LUT[n & 63] * p``; result ``v * 2^(n >> 6)`` by exponent addition, +0 if the
         exponent field would fall below 1.
    """
    x = torch.clamp(x, min=_EXP_CLAMP)
    n = torch.round(x * _EXP_INV_STEP)
    d = x - n * _EXP_STEP_HI
    r = d - n * _EXP_STEP_LO
    c3, c2, c1, c0 = _EXP_POLY
    p = ((c3 * r + c2) * r + c1) * r + c0
    ni = n.to(torch.int64)
    v = EXP_LUT[ni & (_EXP_STEPS - 1)] * p
    return _scale_pow2(v, ni >> EXP_LUT_BITS)


def exp_approx(x: torch.Tensor) -> torch.Tensor:
    """``e^x`` as the NPE computes it (LUT + degree-3 polynomial + exponent assembly).

    Parameters
    ----------
    x : torch.Tensor
        float32 (or float16/bfloat16, widened exactly), any shape, finite, ``<= EXP_MAX_INPUT``.

    Returns
    -------
    torch.Tensor
        float32, same shape. ``exp_approx(0) == 1`` exactly; results below ``2^-126``
        (``x < ~-87.3365``) are +0. Relative error <= :data:`EXP_MAX_REL_ERR` elsewhere.

    Raises
    ------
    NonFiniteError
        NaN/Inf input.
    FormatError
        Wrong dtype or ``x > EXP_MAX_INPUT``.
    """
    x = _as_f32(x, "exp_approx input")
    if x.numel() and float(x.max()) > EXP_MAX_INPUT:
        raise FormatError(f"exp_approx: inputs must be <= {EXP_MAX_INPUT}, found max {float(x.max())}")
    return _exp_core(x)


def exp_ref(x: torch.Tensor) -> torch.Tensor:
    """float64 reference ``exp`` of the (exactly widened) input."""
    return torch.exp(x.to(torch.float64))


# ----------------------------------------------------------------------------------------------
# reciprocal and reciprocal square root
# ----------------------------------------------------------------------------------------------
def _seed_lut(bits: int, lo: float, f, first: float | None = None) -> torch.Tensor:
    """Seeds for interval j of [lo, 2*lo) split in 2^bits parts: ``f(a, b)`` (float64, then one
    rounding to binary32); entry 0 is replaced by ``first`` when given."""
    w = lo / (1 << bits)
    vals = [f(lo + j * w, lo + (j + 1) * w) for j in range(1 << bits)]
    if first is not None:
        vals[0] = first
    return torch.tensor(vals, dtype=torch.float64).to(F32)


RECIP_LUT_BITS = 6
RECIP_LUT = _seed_lut(RECIP_LUT_BITS, 1.0, lambda a, b: 2.0 / (a + b))
"""Seeds ``2/(a+b)`` (minimax relative error, < 2^-7) for mantissa interval [a, b) of width 2^-6.
Powers of two come out exact (checked by the tests)."""
RECIP_NEWTON_STEPS = 2
RECIP_MAX_REL_ERR = 2.0e-7
"""Max relative error of :func:`recip_approx`; measured 1.48e-07 exhaustively on all 2^23
mantissas (the exponent path is exact)."""

RSQRT_LUT_BITS = 6
RSQRT_LUT = torch.cat([
    _seed_lut(RSQRT_LUT_BITS, 1.0, lambda a, b: 2.0 / (math.sqrt(a) + math.sqrt(b)), first=1.0),
    _seed_lut(RSQRT_LUT_BITS, 2.0, lambda a, b: 2.0 / (math.sqrt(a) + math.sqrt(b))),
])
"""128 seeds: index ``parity * 64 + top-6 fraction bits``; parity 0 covers y in [1, 2), parity 1
covers y in [2, 4); seed ``2/(sqrt(a)+sqrt(b))`` (minimax relative error, < 2^-8), except entry 0
= 1.0 so that powers of 4 come out exact (its seed error is < 2^-7)."""
RSQRT_NEWTON_STEPS = 2
RSQRT_MAX_REL_ERR = 2.0e-7
"""Max relative error of :func:`rsqrt_approx`; measured 1.47e-07 exhaustively on all 2^24 binary32
values in [1, 4) (the exponent path is exact, so this covers every normal input)."""

_ONE, _TWO, _HALF, _THREE_HALVES = _c(1.0), _c(2.0), _c(0.5), _c(1.5)


def _split_mantissa(x: torch.Tensor):
    """Return (biased exponent int64, fraction int64) of positive normal binary32 ``x``."""
    bits = x.view(torch.int32).to(torch.int64)
    return (bits >> _MANT_BITS) & 0xFF, bits & _FRAC_MASK


def _from_fields(be: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Assemble positive binary32 from biased exponent and fraction (both int64)."""
    return ((be << _MANT_BITS) | frac).to(torch.int32).view(F32)


def _recip_core(x: torch.Tensor) -> torch.Tensor:
    """1/x for normal binary32 ``x`` (either sign). Results below 2^-126 flush to +-0.

    ``x = s * m * 2^e`` with ``m`` in [1, 2): seed ``r0 = RECIP_LUT[top 6 bits of m]``, then twice
    ``a = m*r; b = 2 - a; r = r*b`` (binary32), so ``r ~ 1/m`` in (0.5, 1]; the result is
    ``r * 2^-e`` (exponent subtraction) with the sign of ``x`` copied.
    """
    neg = x < 0
    ax = torch.abs(x)
    be, frac = _split_mantissa(ax)
    m = _from_fields(torch.full_like(be, _EXP_BIAS), frac)
    r = RECIP_LUT[frac >> (_MANT_BITS - RECIP_LUT_BITS)]
    for _ in range(RECIP_NEWTON_STEPS):
        r = r * (_TWO - m * r)
    out = _scale_pow2(r, _EXP_BIAS - be)
    return torch.where(neg, -out, out)


def recip_approx(x: torch.Tensor) -> torch.Tensor:
    """``1/x`` as the NPE computes it (seed LUT + Newton, no divider).

    Parameters
    ----------
    x : torch.Tensor
        float32 (float16/bfloat16 widened), nonzero, normal (``|x| >= 2^-126``), finite.

    Returns
    -------
    torch.Tensor
        float32, same shape; ``|1/x| < 2^-126`` (``|x| > 2^126``) flushes to signed zero.
        Relative error <= :data:`RECIP_MAX_REL_ERR` otherwise.

    Raises
    ------
    NonFiniteError
        NaN/Inf input.
    FormatError
        Wrong dtype, zero or subnormal input.
    """
    x = _as_f32(x, "recip_approx input")
    if x.numel() and float(torch.abs(x).min()) < _F32_MIN_NORMAL:
        raise FormatError(f"recip_approx: |x| must be >= 2^-126 (normal, nonzero), found "
                          f"{float(torch.abs(x).min())}")
    return _recip_core(x)


def recip_ref(x: torch.Tensor) -> torch.Tensor:
    """float64 reference ``1/x``."""
    return 1.0 / x.to(torch.float64)


def _rsqrt_core(x: torch.Tensor) -> torch.Tensor:
    """1/sqrt(x) for positive normal binary32 ``x`` (no checks).

    ``x = m * 2^e``, ``m`` in [1, 2). Parity ``p = e & 1``; ``y = m * 2^p`` in [1, 4) (exact, by
    setting the exponent field to ``127 + p``) and ``k = (e - p) / 2``, so ``rsqrt(x) =
    rsqrt(y) * 2^-k``. Seed ``r0 = RSQRT_LUT[p*64 + top 6 bits of m]``; ``h = 0.5*y`` (exact);
    two Newton steps ``a = h*r; a = a*r; b = 1.5 - a; r = r*b`` (binary32). Result ``r * 2^-k``
    by exponent subtraction (exact: results stay within [2^-64, 2^63]).
    """
    be, frac = _split_mantissa(x)
    e = be - _EXP_BIAS
    p = e & 1
    k = (e - p) >> 1
    y = _from_fields(_EXP_BIAS + p, frac)
    r = RSQRT_LUT[(p << RSQRT_LUT_BITS) | (frac >> (_MANT_BITS - RSQRT_LUT_BITS))]
    h = y * _HALF
    for _ in range(RSQRT_NEWTON_STEPS):
        r = r * (_THREE_HALVES - (h * r) * r)
    return _scale_pow2(r, -k)


def rsqrt_approx(x: torch.Tensor) -> torch.Tensor:
    """``1/sqrt(x)`` as the NPE computes it (exponent halving + seed LUT + 2 Newton steps).

    Parameters
    ----------
    x : torch.Tensor
        float32 (float16/bfloat16 widened), finite, ``>= 2^-126`` (positive normal).

    Returns
    -------
    torch.Tensor
        float32, same shape, relative error <= :data:`RSQRT_MAX_REL_ERR`;
        ``rsqrt_approx(4 * x) == rsqrt_approx(x) / 2`` exactly.

    Raises
    ------
    NonFiniteError
        NaN/Inf input.
    FormatError
        Wrong dtype, or an input that is negative, zero or subnormal.
    """
    x = _as_f32(x, "rsqrt_approx input")
    if x.numel() and float(x.min()) < _F32_MIN_NORMAL:
        raise FormatError(f"rsqrt_approx: inputs must be positive normal (>= 2^-126), found "
                          f"min {float(x.min())}")
    return _rsqrt_core(x)


def rsqrt_ref(x: torch.Tensor) -> torch.Tensor:
    """float64 reference ``1/sqrt(x)``."""
    return 1.0 / torch.sqrt(x.to(torch.float64))


# ----------------------------------------------------------------------------------------------
# RMSNorm: exact sum of squares + rsqrt
# ----------------------------------------------------------------------------------------------
SS_LSB_EXP = -62
"""Weight of the accumulator LSB (2^-62). Squares are truncated (toward zero) to this grid."""
SS_LIMB_BITS = 32
SS_NUM_LIMBS = 4
"""The accumulator is 128 bits (4 x 32-bit limbs, weights 2^-62 .. 2^65), unsigned. Each square's
fixed-point value is split into limbs, limbs are summed separately in int64 (no carries between
limbs until :meth:`SumSquares.result`), so the sum is exact and independent of order and
chunking. In hardware the limb sums are one 128-bit carry-save/pipelined adder."""
RMS_MAX_ABS_INPUT = 2.0 ** 24
"""Largest accepted ``|x|`` in the sum of squares (x^2 <= 2^48 is exact-range for the format)."""
RMS_MAX_D = 1 << 16
"""Largest number of summed elements: sum <= 2^48 * 2^16 = 2^64 < 2^65 and limb sums < 2^48."""
RMS_MIN_EPS = 2.0 ** -30
"""Smallest accepted eps: truncation of squares below 2^-62 then moves ``mean + eps`` by less
than 2^-32 relative."""
RMSNORM_MAX_REL_ERR = 3.5e-7
"""Max element-wise relative error of :func:`rmsnorm` vs float64 (``x * w / sqrt(mean(x^2)+eps)``);
measured 2.66e-07 on 600 rows of D = 64..6912, std 1e-5..1e4, eps 1e-5 and 1e-6 (the chain has
six binary32 roundings plus rsqrt_approx; the analytic worst case is about 5e-07)."""


def _square_limbs(x: torch.Tensor) -> torch.Tensor:
    """Limbs of the fixed-point value of each binary32 square ``x*x``.

    Parameters
    ----------
    x : torch.Tensor
        float32 ``[..., n]``, ``|x| <= RMS_MAX_ABS_INPUT`` (checked by the caller).

    Returns
    -------
    torch.Tensor
        int64 ``[..., n, SS_NUM_LIMBS]``; limb ``i`` = ``floor(x*x / 2^SS_LSB_EXP) >> 32i & (2^32-1)``
        where ``x*x`` is one binary32 multiply (RNE) and the floor truncates bits below 2^-62.
    """
    sq = x * x
    bits = sq.view(torch.int32).to(torch.int64)
    be = bits >> _MANT_BITS  # sign bit is 0 for a square
    frac = bits & _FRAC_MASK
    mant = torch.where(be > 0, frac | (1 << _MANT_BITS), frac)
    lsb_exp = torch.where(be > 0, be - (_EXP_BIAS + _MANT_BITS), torch.full_like(be, -149))
    shift = lsb_exp - SS_LSB_EXP  # value = mant * 2^shift LSBs
    mask = (1 << SS_LIMB_BITS) - 1
    limbs = []
    for i in range(SS_NUM_LIMBS):
        sh = shift - SS_LIMB_BITS * i
        left = (mant << sh.clamp(0, SS_LIMB_BITS - 1)) & mask
        right = (mant >> (-sh).clamp(0, 63)) & mask
        limb = torch.where(sh >= 0, left, right)
        limbs.append(torch.where(sh >= SS_LIMB_BITS, torch.zeros_like(limb), limb))
    return torch.stack(limbs, dim=-1)


def _int_to_f32(n: int, lsb_exp: int) -> float:
    """``n * 2^lsb_exp`` (n >= 0 integer) rounded once, half to even, to binary32 (as a float).

    The returned Python float is exactly that binary32 value (24-bit significand), so converting
    it to ``torch.float32`` does not round again. The caller guarantees the normal range.
    """
    if n == 0:
        return 0.0
    extra = n.bit_length() - 24
    if extra > 0:
        q, rem = n >> extra, n & ((1 << extra) - 1)
        half = 1 << (extra - 1)
        if rem > half or (rem == half and (q & 1)):
            q += 1
        n, lsb_exp = q, lsb_exp + extra
    return math.ldexp(n, lsb_exp)


@dataclass
class SumSquares:
    """Incremental, exact sum of binary32 squares (the RMSNorm reduction beside the stream).

    The accumulator holds per-limb int64 sums (``[*batch, SS_NUM_LIMBS]``); :meth:`update` adds the
    limbs of ``x*x`` for a chunk of elements; :meth:`result` carries the limbs into one exact
    integer and rounds it once to binary32. Because every step before the final rounding is integer
    addition, the result does not depend on chunk sizes or element order.

    Parameters
    ----------
    batch_shape : tuple of int
        Leading shape of the chunks (e.g. ``(tokens,)``); chunks are ``[*batch_shape, c]``.
    """

    batch_shape: tuple = ()
    limbs: torch.Tensor = field(init=False)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.batch_shape = tuple(int(s) for s in self.batch_shape)
        self.limbs = torch.zeros(self.batch_shape + (SS_NUM_LIMBS,), dtype=torch.int64)

    def update(self, chunk: torch.Tensor) -> None:
        """Add the squares of ``chunk`` (float32 ``[*batch_shape, c]``, ``c >= 0``).

        Raises
        ------
        NonFiniteError
            NaN/Inf in the chunk.
        FormatError
            Wrong shape/dtype, ``|x| > RMS_MAX_ABS_INPUT``, or more than ``RMS_MAX_D`` elements.
        """
        chunk = _as_f32(chunk, "SumSquares chunk")
        if tuple(chunk.shape[:-1]) != self.batch_shape or chunk.dim() != len(self.batch_shape) + 1:
            raise FormatError(f"SumSquares: chunk shape must be [*{list(self.batch_shape)}, c], "
                              f"found {list(chunk.shape)}")
        if self.count + chunk.shape[-1] > RMS_MAX_D:
            raise FormatError(f"SumSquares: at most {RMS_MAX_D} elements per row, found "
                              f"{self.count + chunk.shape[-1]}")
        if chunk.numel() and float(torch.abs(chunk).max()) > RMS_MAX_ABS_INPUT:
            raise FormatError(f"SumSquares: |x| must be <= {RMS_MAX_ABS_INPUT:.0f}, found "
                              f"{float(torch.abs(chunk).max())}")
        self.limbs = self.limbs + _square_limbs(chunk).sum(dim=-2)
        self.count += int(chunk.shape[-1])

    def exact(self) -> list[int]:
        """The exact sums, one Python int per batch row (units of 2^SS_LSB_EXP), row-major."""
        flat = self.limbs.reshape(-1, SS_NUM_LIMBS).tolist()
        return [sum(int(v) << (SS_LIMB_BITS * i) for i, v in enumerate(row)) for row in flat]

    def result(self) -> torch.Tensor:
        """float32 ``[*batch_shape]``: the exact sum of squares rounded once (RNE) to binary32."""
        vals = [_int_to_f32(n, SS_LSB_EXP) for n in self.exact()]
        return torch.tensor(vals, dtype=torch.float64).to(F32).reshape(self.batch_shape)


def _check_eps(eps: float) -> torch.Tensor:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and RMS_MIN_EPS <= eps <= 1.0):
        raise ConfigError(f"rmsnorm: eps must be a finite number in [2^-30, 1], found {eps!r}")
    return _c(float(eps))


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            sum_squares: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm with NPE numerics.

    Steps: ``S`` = binary32 of the exact sum of binary32 squares (:class:`SumSquares`);
    ``mean = S * INV_D`` with ``INV_D = binary32(1/D)`` (offline); ``v = mean + eps``;
    ``r = rsqrt_approx(v)``; ``y = (x * r) * weight`` -- every float op binary32 RNE in that order.

    Parameters
    ----------
    x : torch.Tensor
        float32 ``[..., D]``, ``1 <= D <= RMS_MAX_D``, ``|x| <= RMS_MAX_ABS_INPUT``.
    weight : torch.Tensor
        float32 ``[D]``.
    eps : float
        In [RMS_MIN_EPS, 1]; rounded once to binary32.
    sum_squares : torch.Tensor, optional
        float32 ``[...]`` from a :class:`SumSquares` that already streamed ``x`` (the hardware's
        decoupled reduction); computed here if omitted.

    Returns
    -------
    torch.Tensor
        float32 ``[..., D]``; relative error <= :data:`RMSNORM_MAX_REL_ERR` (elements whose result
        is normal).

    Raises
    ------
    NonFiniteError, FormatError, ConfigError
        Non-finite inputs; bad shapes/ranges or an overflowing result; bad ``eps``.
    """
    x = _as_f32(x, "rmsnorm input")
    weight = _as_f32(weight, "rmsnorm weight")
    eps32 = _check_eps(eps)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise FormatError(f"rmsnorm: input must be [..., D] with D >= 1, found {list(x.shape)}")
    d = x.shape[-1]
    if tuple(weight.shape) != (d,):
        raise FormatError(f"rmsnorm: weight must have shape [{d}], found {list(weight.shape)}")
    if sum_squares is None:
        acc = SumSquares(tuple(x.shape[:-1]))
        acc.update(x)
        s = acc.result()
    else:
        s = _as_f32(sum_squares, "rmsnorm sum_squares")
        if tuple(s.shape) != tuple(x.shape[:-1]):
            raise FormatError(f"rmsnorm: sum_squares must have shape {list(x.shape[:-1])}, "
                              f"found {list(s.shape)}")
        if float(torch.abs(x).max()) > RMS_MAX_ABS_INPUT:
            raise FormatError(f"rmsnorm: |x| must be <= {RMS_MAX_ABS_INPUT:.0f}")
    mean = s * _c(1.0 / d)
    r = _rsqrt_core((mean + eps32).unsqueeze(-1))
    return _check_no_overflow((x * r) * weight, "rmsnorm")


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """float64 reference ``x * weight / sqrt(mean(x^2) + eps)``."""
    x64 = x.to(torch.float64)
    return x64 * weight.to(torch.float64) / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)


# ----------------------------------------------------------------------------------------------
# online softmax
# ----------------------------------------------------------------------------------------------
SOFTMAX_FRAC_BITS = 36
"""Each ``exp(s - m)`` in (0, 1] is converted to fixed point ``round_half_even(e * 2^36)`` (exact
scaling by a power of two, then RNE to an integer) and summed exactly in an int64 accumulator."""
SOFTMAX_MAX_T = 1 << 17
"""Most scores per row: the fixed-point accumulator stays <= 2^17 * 2^36 = 2^53, so its
conversion to binary32 (via an exact float64) is one RNE rounding."""
SOFTMAX_DEFAULT_CHUNK = 64
SOFTMAX_MAX_CHUNK = 4096
SOFTMAX_MAX_ABS_SCORE = 2.0 ** 120
"""Largest accepted ``|score|``; keeps every ``s - m`` finite (masking values like -1e30 are fine)."""
SOFTMAX_MAX_REL_ERR = 3.0e-7
"""Bound ``A`` in ``|p - p_ref| / p_ref <= A + 2^-24 * |s - r| + F * SOFTMAX_FOLD_REL_ERR`` for
every probability with ``p_ref >= 2^-100``; ``r = ceil(max s)`` is the exponent reference and
``F`` the number of folds (times the reference ``ceil(running max)`` increased after the first
chunk). The ``|s - r|`` term is the rounding of the binary32 difference fed to exp (inherent to a
binary32 datapath). Measured A = 2.3e-07 on Gaussian rows of T = 1..4096, std up to 30, chunks
1..4096, and 3.05e-07 with the fold term left out on ascending rows with up to 40 folds."""
SOFTMAX_FOLD_REL_ERR = 4.0e-7
"""Analytic per-fold bound: a fold rounds ``f32(acc)``, the add and the multiply (3 * 2^-24) and
uses ``alpha = exp_approx(-k)`` (k integer, <= EXP_MAX_REL_ERR): 3.8e-07 <= 4e-07."""
SOFTMAX_SUM_ERR = 3.0e-7
"""Max ``|sum(p) - 1|`` (sum taken in float64); measured 1.64e-07 on Gaussian rows (T <= 4096,
std <= 30) and 1.3e-07 on ascending rows with up to 40 folds."""


class OnlineSoftmax:
    """Running max and denominator over score chunks streamed from QK^T.

    State: ``m`` (binary32 running max, exact), ``r = ceil(m)`` (the exponent reference, an
    integer-valued binary32), ``acc`` (int64: exact fixed-point sum, LSB 2^-36, of
    ``exp_approx(s - r)`` for the scores seen since ``r`` last increased; each term is in (0, 1])
    and ``l_old`` (binary32: everything before that, already scaled to the current ``r``).
    Chunk ``s`` (``[..., c]``)::

        m_new = max(m, max(s));  r_new = ceil(m_new)                 (exact)
        if r_new > r:  (a "fold", per row)
            l_old = (l_old + f32(acc) * 2^-36) * exp_approx(r - r_new)   (binary32: add, multiply)
            acc   = 0
        acc  += sum_j rne(exp_approx(s_j - r_new) * 2^36)             (exact integer sum)

    and the denominator is ``l = l_old + f32(acc) * 2^-36`` (``f32`` = one RNE rounding; the
    reference's own term is >= e^-1 so ``l > 0.36``). Folds happen only when the running max
    crosses an integer, so their rounding errors stay few; all other steps are exact integer
    sums, so the result depends on the chunking only through the chunks at which ``r``
    increases: if the first chunk holds the row's max, every chunking gives the same bits. The
    engine streams chunks in index order and the golden model defines exactly that order.
    :meth:`probs` computes ``p = exp_approx(s - r) * recip_approx(l)`` (second pass over the
    stored scores).
    """

    _SCALE = _c(2.0 ** SOFTMAX_FRAC_BITS)
    _INV_SCALE = _c(2.0 ** -SOFTMAX_FRAC_BITS)

    def __init__(self) -> None:
        self.m: torch.Tensor | None = None
        self.r: torch.Tensor | None = None
        self.acc: torch.Tensor | None = None
        self.l_old: torch.Tensor | None = None
        self.folds: torch.Tensor | None = None
        self.count = 0

    def _acc_f32(self) -> torch.Tensor:
        # acc <= 2^53 is exact in float64; float64 -> float32 is the single RNE rounding
        return self.acc.to(torch.float64).to(F32) * self._INV_SCALE

    def update(self, chunk: torch.Tensor) -> None:
        """Fold one chunk (float32 ``[..., c]``, ``1 <= c <= SOFTMAX_MAX_CHUNK``) into the state.

        Raises
        ------
        NonFiniteError, FormatError, ConfigError
            Non-finite or out-of-range scores / a shape that does not match the state or more
            than ``SOFTMAX_MAX_T`` scores; an empty or oversized chunk.
        """
        chunk = _check_scores(chunk)
        c = chunk.shape[-1]
        if c == 0 or c > SOFTMAX_MAX_CHUNK:
            raise ConfigError(f"OnlineSoftmax: chunk size must be in [1, {SOFTMAX_MAX_CHUNK}], found {c}")
        if self.count + c > SOFTMAX_MAX_T:
            raise FormatError(f"OnlineSoftmax: at most {SOFTMAX_MAX_T} scores per row, "
                              f"found {self.count + c}")
        cmax = chunk.amax(dim=-1, keepdim=True)
        if self.m is None:
            m_new = cmax
            r_new = torch.ceil(m_new)
            self.acc = torch.zeros(cmax.shape, dtype=torch.int64)
            self.l_old = torch.zeros(cmax.shape, dtype=F32)
            self.folds = torch.zeros(cmax.shape, dtype=torch.int64)
        else:
            if tuple(self.m.shape) != tuple(cmax.shape):
                raise FormatError(f"OnlineSoftmax: chunk leading shape {list(chunk.shape[:-1])} "
                                  f"does not match the state {list(self.m.shape[:-1])}")
            m_new = torch.maximum(self.m, cmax)
            r_new = torch.ceil(m_new)
            grew = r_new > self.r
            folded = (self.l_old + self._acc_f32()) * _exp_core(self.r - r_new)
            self.l_old = torch.where(grew, folded, self.l_old)
            self.acc = torch.where(grew, torch.zeros_like(self.acc), self.acc)
            self.folds = self.folds + grew.to(torch.int64)
        e = _exp_core(chunk - r_new)
        self.acc = self.acc + torch.round(e * self._SCALE).to(torch.int64).sum(dim=-1, keepdim=True)
        self.m, self.r = m_new, r_new
        self.count += c

    def denominator(self) -> torch.Tensor:
        """binary32 ``l = l_old + f32(acc) * 2^-36``, shape ``[..., 1]`` (> 0.36 by construction)."""
        if self.m is None:
            raise FormatError("OnlineSoftmax: no scores were streamed")
        return self.l_old + self._acc_f32()

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """``exp_approx(s - r) * recip_approx(l)`` for the row's scores ``[..., T]`` (second pass)."""
        l = self.denominator()
        scores = _check_scores(scores)
        if tuple(scores.shape[:-1]) != tuple(l.shape[:-1]):
            raise FormatError(f"OnlineSoftmax: scores shape {list(scores.shape)} does not match "
                              f"the state {list(l.shape[:-1])}")
        return _exp_core(scores - self.r) * _recip_core(l)


def _check_scores(s: torch.Tensor) -> torch.Tensor:
    s = _as_f32(s, "softmax scores")
    if s.dim() < 1:
        raise FormatError("softmax: scores must have at least one dimension [..., T]")
    if s.numel() and float(torch.abs(s).max()) > SOFTMAX_MAX_ABS_SCORE:
        raise FormatError(f"softmax: |score| must be <= 2^120, found {float(torch.abs(s).max())}")
    return s


def softmax_online(scores: torch.Tensor, chunk: int = SOFTMAX_DEFAULT_CHUNK) -> torch.Tensor:
    """Softmax over the last dim as the NPE streams it beside QK^T (see :class:`OnlineSoftmax`).

    Parameters
    ----------
    scores : torch.Tensor
        float32 ``[..., T]``, ``1 <= T <= SOFTMAX_MAX_T``, finite, ``|s| <= SOFTMAX_MAX_ABS_SCORE``.
    chunk : int
        Scores per streamed chunk (chunk ``i`` = scores ``[i*chunk, (i+1)*chunk)``, in index
        order), 1..SOFTMAX_MAX_CHUNK; the last chunk may be shorter.

    Returns
    -------
    torch.Tensor
        float32 ``[..., T]``; relative error of each ``p`` (``p_ref >= 2^-100``) <=
        ``SOFTMAX_MAX_REL_ERR + 2^-24 * |s - ceil(max s)| + folds * SOFTMAX_FOLD_REL_ERR``;
        ``p`` below 2^-126 flushes to 0.

    Raises
    ------
    NonFiniteError, FormatError, ConfigError
        Non-finite scores; empty rows, too many or out-of-range scores; bad ``chunk``.
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= SOFTMAX_MAX_CHUNK:
        raise ConfigError(f"softmax_online: chunk must be an int in [1, {SOFTMAX_MAX_CHUNK}], "
                          f"found {chunk!r}")
    scores = _check_scores(scores)
    t = scores.shape[-1]
    if t == 0:
        raise FormatError("softmax_online: need T >= 1 scores per row, found T = 0")
    state = OnlineSoftmax()
    for start in range(0, t, chunk):
        state.update(scores[..., start:start + chunk])
    return state.probs(scores)


def softmax_rel_err(p: torch.Tensor, scores: torch.Tensor) -> float:
    """Measured ``A = max(|p - p_ref|/p_ref - 2^-24 |s - ceil(max s)|)`` over ``p_ref >= 2^-100``
    (the fold term is not subtracted: this is the number the tests compare with the bounds)."""
    ref = softmax_ref(scores)
    s64 = scores.to(torch.float64)
    slack = (torch.ceil(s64.amax(dim=-1, keepdim=True)) - s64) * 2.0 ** -24
    keep = ref >= 2.0 ** -100
    return float(((p.to(torch.float64) - ref).abs() / ref - slack)[keep].max())


def softmax_ref(scores: torch.Tensor) -> torch.Tensor:
    """float64 reference softmax over the last dim."""
    s = scores.to(torch.float64)
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# element-wise activations
# ----------------------------------------------------------------------------------------------
SILU_MAX_REL_ERR = 4.0e-7
"""Max relative error of :func:`silu` vs float64 for ``x >= SILU_BOUND_MIN_INPUT``; measured
3.32e-07 on all FP16 inputs and 2^20- and 2^22-point sweeps of [-80, 80]."""
SILU_BOUND_MIN_INPUT = -80.0
"""Below about -87.3 ``exp`` flushes and silu returns -0/0 (absolute error < 1e-36)."""
RELU2_MAX_ABS_INPUT = 2.0 ** 63
"""relu2 inputs above this would overflow binary32 when squared."""


def sigmoid_approx(x: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid with NPE numerics, using only ``exp`` of non-positive arguments.

    ``e = exp_approx(-|x|)``; ``r = recip_approx(1 + e)``; result ``r`` for ``x >= 0`` and ``e * r``
    for ``x < 0`` (binary32 ops in that order). float32 in, float32 out, same shape.
    """
    x = _as_f32(x, "sigmoid input")
    e = _exp_core(-torch.abs(x))
    r = _recip_core(_ONE + e)
    return torch.where(x >= 0, r, e * r)


def silu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid_approx(x)`` (one binary32 multiply after :func:`sigmoid_approx`).

    float32 ``[...]`` -> float32 ``[...]``; relative error <= :data:`SILU_MAX_REL_ERR` for
    ``x >= SILU_BOUND_MIN_INPUT``. Raises NonFiniteError / FormatError on bad input.
    """
    x = _as_f32(x, "silu input")
    return x * sigmoid_approx(x)


def silu_ref(x: torch.Tensor) -> torch.Tensor:
    """float64 reference ``x / (1 + exp(-x))``."""
    x64 = x.to(torch.float64)
    return x64 * torch.sigmoid(x64)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)^2``: one exact max, one binary32 multiply (RNE). Exact up to that rounding.

    Raises FormatError if ``x > RELU2_MAX_ABS_INPUT`` (the square would overflow).
    """
    x = _as_f32(x, "relu2 input")
    if x.numel() and float(x.max()) > RELU2_MAX_ABS_INPUT:
        raise FormatError(f"relu2: inputs must be <= 2^63, found {float(x.max())}")
    y = torch.clamp(x, min=0.0)
    return y * y


def relu2_ref(x: torch.Tensor) -> torch.Tensor:
    """float64 reference ``max(x, 0)^2``."""
    return torch.clamp(x.to(torch.float64), min=0.0) ** 2


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise FormatError(f"{what}: operands must have the same shape, found {list(a.shape)} and "
                          f"{list(b.shape)}")


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (binary32 multiply after :func:`silu`); same-shape float32 operands.

    Raises FormatError on shape mismatch or an overflowing product, NonFiniteError on NaN/Inf.
    """
    gate, up = _as_f32(gate, "swiglu gate"), _as_f32(up, "swiglu up")
    _check_same_shape(gate, up, "swiglu")
    return _check_no_overflow(silu(gate) * up, "swiglu")


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """float64 reference ``silu(gate) * up``."""
    return silu_ref(gate) * up.to(torch.float64)


def relu2_glu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``relu2(gate) * up`` (two binary32 multiplies: square, then product); same shapes."""
    gate, up = _as_f32(gate, "relu2_glu gate"), _as_f32(up, "relu2_glu up")
    _check_same_shape(gate, up, "relu2_glu")
    return _check_no_overflow(relu2(gate) * up, "relu2_glu")


def relu2_glu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """float64 reference ``max(gate, 0)^2 * up``."""
    return relu2_ref(gate) * up.to(torch.float64)


def residual_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b``: one binary32 add (RNE) per element; same-shape finite operands.

    Raises FormatError on shape mismatch or overflow, NonFiniteError on NaN/Inf.
    """
    a, b = _as_f32(a, "residual_add a"), _as_f32(b, "residual_add b")
    _check_same_shape(a, b, "residual_add")
    return _check_no_overflow(a + b, "residual_add")


# ----------------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------------
ROPE_MAX_ERR = 2.0e-7
"""Max of ``|out - ref| / sqrt(x1^2 + x2^2)`` over rotated pairs (error relative to the pair's
norm, since a single rotated element may cancel), against float64 rotation with exact angles;
measured 1.38e-07 for head dim 128, theta 1e4 and 5e5, 43 positions in 0..4095, 160 heads
(table rounding 2^-24 + two products + one add)."""


def rope_tables(max_pos: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline cos/sin tables (the compiler stores them; the NPE only reads them).

    ``inv_freq[i] = theta^(-2i/head_dim)``, ``angle[p, i] = p * inv_freq[i]``, both float64, then
    ``cos``/``sin`` in float64 rounded once to binary32 (more accurate than HF's float32 angles).

    Parameters
    ----------
    max_pos : int
        Number of positions (>= 1).
    head_dim : int
        Even, >= 2.
    theta : float
        RoPE base (> 1), e.g. 1e4 (Llama-2) or 5e5 (BitNet b1.58 2B4T).

    Returns
    -------
    (cos, sin) : tuple of torch.Tensor
        float32 ``[max_pos, head_dim // 2]`` each.

    Raises
    ------
    ConfigError
        Bad ``max_pos``, ``head_dim`` or ``theta``.
    """
    if not isinstance(max_pos, int) or max_pos < 1:
        raise ConfigError(f"rope_tables: max_pos must be an int >= 1, found {max_pos!r}")
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ConfigError(f"rope_tables: head_dim must be an even int >= 2, found {head_dim!r}")
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 1):
        raise ConfigError(f"rope_tables: theta must be a finite number > 1, found {theta!r}")
    ang = _rope_angles(max_pos, head_dim, float(theta))
    return torch.cos(ang).to(F32), torch.sin(ang).to(F32)


def _rope_angles(max_pos: int, head_dim: int, theta: float) -> torch.Tensor:
    i = torch.arange(0, head_dim, 2, dtype=torch.float64)
    inv_freq = theta ** (-i / head_dim)
    return torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]


def rope(x: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (HF Llama convention) at position ``pos``.

    With ``x1 = x[..., :d/2]``, ``x2 = x[..., d/2:]``, ``c = cos[pos]``, ``s = sin[pos]``::

        out[..., :d/2] = (x1 * c) - (x2 * s)
        out[..., d/2:] = (x2 * c) + (x1 * s)

    each product one binary32 multiply, then one binary32 add/subtract (no FMA).

    Parameters
    ----------
    x : torch.Tensor
        float32 ``[..., H, Dh]``, ``Dh == 2 * cos.shape[1]``.
    pos : int
        Position, ``0 <= pos < cos.shape[0]``.
    cos, sin : torch.Tensor
        float32 ``[max_pos, Dh // 2]`` from :func:`rope_tables`.

    Returns
    -------
    torch.Tensor
        float32 ``[..., H, Dh]``; error <= :data:`ROPE_MAX_ERR` of each pair's norm. At ``pos = 0``
        it is the identity (up to the sign of zero).

    Raises
    ------
    NonFiniteError, FormatError
        Non-finite inputs; mismatched shapes or ``pos`` out of range.
    """
    x = _as_f32(x, "rope input")
    cos, sin = _as_f32(cos, "rope cos table"), _as_f32(sin, "rope sin table")
    if cos.dim() != 2 or tuple(cos.shape) != tuple(sin.shape):
        raise FormatError(f"rope: cos/sin tables must both be [max_pos, Dh/2], found "
                          f"{list(cos.shape)} and {list(sin.shape)}")
    if x.dim() < 2 or x.shape[-1] != 2 * cos.shape[1]:
        raise FormatError(f"rope: input must be [..., H, {2 * cos.shape[1]}] to match the tables, "
                          f"found {list(x.shape)}")
    if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos < cos.shape[0]:
        raise FormatError(f"rope: pos must be an int in [0, {cos.shape[0]}), found {pos!r}")
    half = cos.shape[1]
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[pos], sin[pos]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return _check_no_overflow(out, "rope")


def rope_ref(x: torch.Tensor, pos: int, head_dim: int, theta: float) -> torch.Tensor:
    """float64 rotate-half RoPE with exact (float64) angles, for error measurement."""
    ang = _rope_angles(pos + 1, head_dim, float(theta))[pos]
    c, s = torch.cos(ang), torch.sin(ang)
    x64 = x.to(torch.float64)
    half = head_dim // 2
    x1, x2 = x64[..., :half], x64[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


# ----------------------------------------------------------------------------------------------
# error measurement
# ----------------------------------------------------------------------------------------------
def max_rel_err(approx: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |approx - ref| / |ref|`` in float64 over elements with ``ref != 0`` (0.0 if none)."""
    a, r = approx.to(torch.float64), ref.to(torch.float64)
    nz = r != 0
    if not bool(nz.any()):
        return 0.0
    return float((torch.abs(a - r)[nz] / torch.abs(r[nz])).max())


def _fp16_all_finite() -> torch.Tensor:
    """All finite binary16 values, widened exactly to float32."""
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    h = bits.view(torch.float16)
    return h[torch.isfinite(h)].to(F32)


def _sweep(lo: float, hi: float, n: int = 1 << 20) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64).to(F32)


def _exp_sweep() -> torch.Tensor:
    h = _fp16_all_finite()
    h = h[(h >= EXP_FLUSH_BELOW) & (h <= EXP_MAX_INPUT)]
    return torch.cat([h, _sweep(EXP_FLUSH_BELOW + 1e-5, EXP_MAX_INPUT)])


def _silu_sweep() -> torch.Tensor:
    h = _fp16_all_finite()
    return torch.cat([h[h >= SILU_BOUND_MIN_INPUT], _sweep(SILU_BOUND_MIN_INPUT, 80.0)])


def _mantissa_sweep(lo: float, n: int) -> torch.Tensor:
    """Every binary32 value in [lo, 2^n * lo) for lo a power of two (``n`` binades)."""
    start = int(torch.tensor(lo, dtype=F32).view(torch.int32))
    return torch.arange(start, start + (n << _MANT_BITS), dtype=torch.int32).view(F32)


def _softmax_err(gen: torch.Generator) -> tuple[float, float]:
    worst, worst_sum = 0.0, 0.0
    for t, scale, chunk in [(1, 1.0, 1), (7, 3.0, 2), (128, 5.0, 16), (1000, 10.0, 64),
                            (4096, 3.0, 64), (4096, 30.0, 1), (4096, 8.0, 4096), (513, 1.0, 7)]:
        s = (torch.randn(4, t, generator=gen, dtype=torch.float64) * scale).to(F32)
        p = softmax_online(s, chunk)
        worst = max(worst, softmax_rel_err(p, s))
        worst_sum = max(worst_sum, float((p.to(torch.float64).sum(-1) - 1).abs().max()))
    return worst, worst_sum


def _rmsnorm_err(gen: torch.Generator) -> float:
    worst = 0.0
    for d, scale in [(64, 1e-4), (2560, 1.0), (4096, 30.0), (6912, 1e4), (1536, 1e-2)]:
        x = (torch.randn(8, d, generator=gen, dtype=torch.float64) * scale).to(F32)
        w = (1 + 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)).to(F32)
        worst = max(worst, max_rel_err(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6)))
    return worst


def _rope_err(gen: torch.Generator) -> float:
    worst = 0.0
    for theta in (1e4, 5e5):
        cos, sin = rope_tables(4096, 128, theta)
        x = torch.randn(4, 128, generator=gen, dtype=torch.float64).to(F32)
        for pos in (0, 1, 17, 1000, 2047, 4095):
            y, ref = rope(x, pos, cos, sin).to(torch.float64), rope_ref(x, pos, 128, theta)
            x64 = x.to(torch.float64)
            norm = torch.sqrt(x64[..., :64] ** 2 + x64[..., 64:] ** 2).repeat(1, 2)
            worst = max(worst, float((torch.abs(y - ref) / norm).max()))
    return worst


def error_table() -> list[dict]:
    """Measure every approximation on a fixed sweep (fixed seed; deterministic).

    Returns
    -------
    list of dict
        One dict per function with keys ``name``, ``sweep`` (what was measured), ``points``,
        ``max_err`` (measured), ``bound`` (the documented constant) and ``metric``.
    """
    gen = torch.Generator().manual_seed(20240607)
    rows = []

    def add(name, sweep, points, err, bound, metric="max relative error vs float64"):
        rows.append(dict(name=name, sweep=sweep, points=int(points), max_err=float(err),
                         bound=float(bound), metric=metric))

    xs = _exp_sweep()
    add("exp_approx", "all FP16 + 2^20 linspace in [-87.33, 88]", xs.numel(),
        max_rel_err(exp_approx(xs), exp_ref(xs)), EXP_MAX_REL_ERR)
    ys = _mantissa_sweep(1.0, 2)[::4]
    add("rsqrt_approx", "every 4th binary32 in [1, 4) (tests: all)", ys.numel(),
        max_rel_err(rsqrt_approx(ys), rsqrt_ref(ys)), RSQRT_MAX_REL_ERR)
    ys = _mantissa_sweep(1.0, 1)[::2]
    add("recip_approx", "every 2nd binary32 in [1, 2) (tests: all)", ys.numel(),
        max_rel_err(recip_approx(ys), recip_ref(ys)), RECIP_MAX_REL_ERR)
    xs = _silu_sweep()
    add("silu", "all FP16 >= -80 + 2^20 linspace in [-80, 80]", xs.numel(),
        max_rel_err(silu(xs), silu_ref(xs)), SILU_MAX_REL_ERR)
    sm, sm_sum = _softmax_err(gen)
    add("softmax_online", "8 configs T=1..4096, chunk 1..4096, p >= 2^-100", 4 * 14049,
        sm, SOFTMAX_MAX_REL_ERR, "max rel err minus 2^-24*|s - max s| vs float64")
    add("softmax_online sum", "same rows", 32, sm_sum, SOFTMAX_SUM_ERR, "max |sum(p) - 1|")
    add("rmsnorm", "8 rows each of D=64..6912, scale 1e-4..1e4, eps 1e-6", 8 * 15168,
        _rmsnorm_err(gen), RMSNORM_MAX_REL_ERR)
    add("rope", "Dh=128, theta 1e4/5e5, pos 0..4095, 4 heads", 2 * 6 * 4 * 128, _rope_err(gen),
        ROPE_MAX_ERR, "max |err| / pair norm vs float64")
    return rows
