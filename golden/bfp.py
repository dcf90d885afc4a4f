"""Block floating point (BFP): shared-exponent blocks of integer mantissas, built from FP16/BF16/FP32.

Format
------
A :class:`BFPFormat` ``(block, mant_bits)`` splits the last dimension of a tensor into blocks of
``block`` consecutive elements. Every element of a block is an integer mantissa ``mant`` in the
*symmetric* signed range ``[-(2**(mant_bits-1) - 1), 2**(mant_bits-1) - 1]`` (sign-magnitude origin;
the code ``-2**(mant_bits-1)`` is never produced, so every DSP packing sees a symmetric operand), and
the block has one integer exponent ``exp``. The value of element ``i`` is::

    value[i] = mant[i] * 2**exp[i // block]

``exp`` is the weight of the mantissa LSB. It is derived from the block's largest IEEE exponent
field ``E_blk = max_i max(e_i, 1)`` (denormals and zeros count as field 1, where denormals live)::

    exp = E_blk - bias - (mant_bits - 2)

so magnitude bit ``mant_bits-2`` (the mantissa MSB) has weight ``2**(E_blk - bias)``, the leading-one
weight of the block's largest element. Default ``(32, 14)``: 14 bits = sign + the 11-bit FP16
significand + 2 guard bits, so every FP16 element within two binades of the block's largest
exponent field is converted *exactly* and only smaller elements lose low bits. Why these numbers:
the measured relative L2 error on LLM-like activations (Gaussian plus 25-100x outlier channels,
see ``pe_error_report``) is 0.015-0.03% at (32, 14) against the PE array's 0.1% target (0.08-0.12%
at (32, 12)); 14-bit mantissas still give two INT4 products per DSP48E2 with a whole 32-element
block accumulated inside ``P`` (``dsp.packing("int4x2", mant_bits=14).depth == 32``).

Conversion (what the hardware's aligner does)
---------------------------------------------
Each finite input is decomposed exactly into sign, exponent field ``e`` and integer significand
``sig`` (implicit one included for normals; ``S`` = significand width: FP16 11, BF16 8, FP32 24).
The magnitude is aligned by a shift of ``(E_blk - max(e, 1)) + (S - (mant_bits - 1))`` bits (a
negative shift is an exact left shift): right shifts round half to even on the magnitude (which is
RNE of the signed value, RNE being symmetric), then saturate at ``2**(mant_bits-1) - 1`` (a block
maximum whose significand rounds up to ``2**(mant_bits-1)``; only possible when ``mant_bits - 1 < S``),
and the sign is applied. All-zero blocks get mantissas 0 and ``E_blk = 1``. Non-finite inputs raise
:class:`~ternopu.golden.errors.NonFiniteError`; a last dimension that ``block`` does not divide raises
:class:`~ternopu.golden.errors.FormatError` (callers pad with zeros where padding is legal).

All arithmetic here is integer (int64) on the IEEE bit patterns; ``from_bfp`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ternopu.golden.errors import FormatError, check_finite

__all__ = [
    "BFP_BLOCK",
    "BFP_MANT_BITS",
    "BFP_MAX_MANT_BITS",
    "BFPFormat",
    "DEFAULT_BFP",
    "BFPTensor",
    "IEEEFormat",
    "IEEE_FORMATS",
    "float_fields",
    "float_to_sig_exp",
    "rne_shift",
    "to_bfp",
    "from_bfp",
    "exact_to_float32",
]

#: Default block size: 32 elements share one exponent (4 blocks per INT4 group of 128).
BFP_BLOCK = 32
#: Default mantissa width in bits, sign included: sign + 13 bits = FP16 significand + 2 guard bits.
BFP_MANT_BITS = 14
#: Widest mantissa accepted: values must stay exactly representable in binary32 (24 bits).
BFP_MAX_MANT_BITS = 24


@dataclass(frozen=True)
class BFPFormat:
    """A block-floating-point format: ``block`` elements share one exponent, ``mant_bits``-bit mantissas.

    Parameters
    ----------
    block : int
        Elements per shared exponent, >= 1.
    mant_bits : int
        Signed mantissa width including the sign bit, 2 .. ``BFP_MAX_MANT_BITS``. Mantissas use the
        symmetric range ``[-(2**(mant_bits-1)-1), 2**(mant_bits-1)-1]``.

    Raises
    ------
    FormatError
        If a field is out of range or not an ``int``.
    """

    block: int = BFP_BLOCK
    mant_bits: int = BFP_MANT_BITS

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or isinstance(self.block, bool) or self.block < 1:
            raise FormatError(f"BFPFormat.block must be an int >= 1, got {self.block!r}")
        if (
            not isinstance(self.mant_bits, int)
            or isinstance(self.mant_bits, bool)
            or not 2 <= self.mant_bits <= BFP_MAX_MANT_BITS
        ):
            raise FormatError(
                f"BFPFormat.mant_bits must be an int in [2, {BFP_MAX_MANT_BITS}], got {self.mant_bits!r}"
            )

    @property
    def mant_max(self) -> int:
        """Largest mantissa magnitude, ``2**(mant_bits-1) - 1``."""
        return (1 << (self.mant_bits - 1)) - 1


#: The PE array's activation format.
DEFAULT_BFP = BFPFormat(BFP_BLOCK, BFP_MANT_BITS)


@dataclass(frozen=True)
class IEEEFormat:
    """Bit layout of an IEEE-style binary format: ``exp_bits`` exponent bits, ``frac_bits`` stored fraction bits."""

    exp_bits: int
    frac_bits: int
    bias: int
    int_dtype: torch.dtype  # same-width integer dtype for bit views

    @property
    def sig_bits(self) -> int:
        """Significand width with the implicit one."""
        return self.frac_bits + 1


IEEE_FORMATS: dict[torch.dtype, IEEEFormat] = {
    torch.float16: IEEEFormat(5, 10, 15, torch.int16),
    torch.bfloat16: IEEEFormat(8, 7, 127, torch.int16),
    torch.float32: IEEEFormat(8, 23, 127, torch.int32),
}


def _ieee(dtype: torch.dtype, what: str) -> IEEEFormat:
    if dtype not in IEEE_FORMATS:
        raise FormatError(f"{what}: expected float16, bfloat16 or float32, got {dtype}")
    return IEEE_FORMATS[dtype]


def float_fields(x: torch.Tensor, what: str = "x") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decompose finite floats exactly into ``(sign, efield, sig)``.

    Parameters
    ----------
    x : Tensor
        float16, bfloat16 or float32, any shape, finite.
    what : str
        Name used in error messages.

    Returns
    -------
    sign : int64 Tensor, 0 or 1 (1 = negative; ``-0.0`` has sign 1 and sig 0).
    efield : int64 Tensor, ``max(e, 1)`` where ``e`` is the stored exponent field (denormals -> 1).
    sig : int64 Tensor, integer significand including the implicit one of normals,
        ``0 <= sig < 2**sig_bits``. ``|x| == sig * 2**(efield - bias - frac_bits)`` exactly.

    Raises
    ------
    FormatError
        Unsupported dtype. NonFiniteError: NaN/Inf present.
    """
    f = _ieee(x.dtype, what)
    check_finite(x, what)
    width = 16 if f.int_dtype == torch.int16 else 32
    bits = x.contiguous().view(f.int_dtype).to(torch.int64) & ((1 << width) - 1)
    sign = bits >> (width - 1)
    e = (bits >> f.frac_bits) & ((1 << f.exp_bits) - 1)
    frac = bits & ((1 << f.frac_bits) - 1)
    sig = frac | ((e > 0).to(torch.int64) << f.frac_bits)
    return sign, torch.clamp(e, min=1), sig


def float_to_sig_exp(x: torch.Tensor, what: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact integer form ``x == sig * 2**exp`` of finite FP16/BF16/FP32 values.

    Returns
    -------
    sig : int64 Tensor, signed significand, ``|sig| < 2**sig_bits``.
    exp : int64 Tensor, exponent of the significand LSB.
    """
    f = _ieee(x.dtype, what)
    sign, efield, sig = float_fields(x, what)
    return torch.where(sign == 1, -sig, sig), efield - f.bias - f.frac_bits


def rne_shift(v: torch.Tensor, shift: torch.Tensor | int) -> torch.Tensor:
    """``v * 2**-shift`` rounded half to even, for signed int64 ``v`` and per-element ``shift``.

    ``shift <= 0`` is an exact left shift (callers bound it so nothing overflows int64); ``shift > 0``
    rounds the magnitude half to even and reapplies the sign (identical to RNE of the signed value,
    i.e. what a two's-complement shifter with RNE produces). Shifts above 62 behave as 62 (callers
    keep ``|v| < 2**61``, so the result is 0 there, as it is for any larger shift).

    Parameters
    ----------
    v : int64 Tensor
    shift : int64 Tensor broadcastable to ``v``, or int

    Returns
    -------
    int64 Tensor
    """
    shift = torch.as_tensor(shift, dtype=torch.int64)
    neg = v < 0
    mag = v.abs()
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0, max=62)
    q = mag >> right
    rem = mag - (q << right)
    half = (torch.ones_like(right) << right) >> 1
    up = (right > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    out = (q + up.to(torch.int64)) << left
    return torch.where(neg, -out, out)


@dataclass
class BFPTensor:
    """A tensor in block floating point.

    Attributes
    ----------
    mant : int64 Tensor ``[..., K]``, symmetric signed ``fmt.mant_bits``-bit mantissas.
    exp : int64 Tensor ``[..., K // fmt.block]``, LSB weight exponent of each block.
    fmt : BFPFormat
    """

    mant: torch.Tensor
    exp: torch.Tensor
    fmt: BFPFormat

    def exp_per_element(self) -> torch.Tensor:
        """``exp`` repeated to the shape of ``mant``."""
        return self.exp.repeat_interleave(self.fmt.block, dim=-1)


def to_bfp(x: torch.Tensor, fmt: BFPFormat = DEFAULT_BFP, what: str = "x") -> BFPTensor:
    """Convert FP16 / BF16 / FP32 values to block floating point along the last dimension.

    Parameters
    ----------
    x : Tensor ``[..., K]``, float16, bfloat16 or float32, finite.
    fmt : BFPFormat
        ``K % fmt.block == 0`` is required.
    what : str
        Name used in error messages.

    Returns
    -------
    BFPTensor
        ``mant`` int64 ``[..., K]``, ``exp`` int64 ``[..., K // block]`` (see module docstring:
        shared exponent from the largest exponent field, RNE alignment, symmetric saturation).

    Raises
    ------
    FormatError
        Unsupported dtype, 0-dim input, or ``K % block != 0``.
    NonFiniteError
        NaN or Inf in ``x``.
    """
    f = _ieee(x.dtype, what)
    if x.dim() == 0:
        raise FormatError(f"{what}: expected at least one dimension, got a 0-dim tensor")
    k = x.shape[-1]
    if k % fmt.block:
        raise FormatError(
            f"{what}: last dimension {k} must be a multiple of the BFP block {fmt.block} (pad with zeros)"
        )
    sign, efield, sig = float_fields(x, what)
    blocks = efield.reshape(*x.shape[:-1], k // fmt.block, fmt.block)
    e_blk = blocks.amax(dim=-1)  # integer max: exact, order-independent
    e_el = e_blk.repeat_interleave(fmt.block, dim=-1)
    shift = (e_el - efield) + (f.sig_bits - (fmt.mant_bits - 1))
    mag = torch.clamp(rne_shift(sig, shift), max=fmt.mant_max)
    mant = torch.where(sign == 1, -mag, mag)
    exp = e_blk - f.bias - (fmt.mant_bits - 2)
    return BFPTensor(mant=mant, exp=exp, fmt=fmt)


def exact_to_float32(acc: torch.Tensor, exp: torch.Tensor | int) -> torch.Tensor:
    """Round ``acc * 2**exp`` to binary32, round half to even, for int64 ``|acc| < 2**53``.

    This is the PE array's one float reconstruction (normalize, RNE, subnormals kept). The golden
    model evaluates it as int64 -> float64 (exact: ``|acc| < 2**53``), times ``2**exp`` in float64
    (exact: a power of two, the exponent stays inside float64's normal range for every caller),
    then one RNE conversion to binary32. Only that last step rounds, so the result is the correctly
    rounded binary32 value of the exact integer-times-power-of-two, independent of evaluation order.

    Parameters
    ----------
    acc : int64 Tensor
    exp : int64 Tensor broadcastable to ``acc``, or int; ``-1000 <= exp <= 900``

    Returns
    -------
    float32 Tensor (overflow to +-inf cannot happen for FP16-derived operands; not checked)

    Raises
    ------
    FormatError
        ``|acc| >= 2**53`` or ``exp`` outside ``[-1000, 900]``.
    """
    if acc.numel() and int(acc.abs().max()) >= (1 << 53):
        raise FormatError(f"exact_to_float32: |acc| must be < 2**53, found {int(acc.abs().max())}")
    exp = torch.as_tensor(exp, dtype=torch.int64)
    if exp.numel() and (int(exp.min()) < -1000 or int(exp.max()) > 900):
        raise FormatError(f"exact_to_float32: exponent must lie in [-1000, 900], found [{int(exp.min())}, {int(exp.max())}]")
    # 2**exp built from its float64 bit pattern (exact, no pow()); the product is exact too.
    pow2 = ((exp + 1023) << 52).view(torch.float64)
    return (acc.to(torch.float64) * pow2).to(torch.float32)


def from_bfp(b: BFPTensor) -> torch.Tensor:
    """Exact value of a BFP tensor as float32 ``[..., K]``.

    Exact whenever ``mant * 2**exp`` is a binary32 number (always for FP16/BF16-derived blocks and
    ``mant_bits <= 24``; FP32 blocks deep in the subnormal range round RNE via :func:`exact_to_float32`).
    """
    return exact_to_float32(b.mant, b.exp_per_element())
