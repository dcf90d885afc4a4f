"""Functional models of the AMD DSP48E2 / DSP58 slices and multi-product packing with exact correction.

Slice models
------------
Only the datapath the PE array uses is modelled: pre-adder, multiplier, and the ALU in add mode
(``P = M + C + P_in``). Every port is a two's-complement bus of fixed width; an operand wider than
its port is *wrapped* (its low bits are kept, as the wiring would), and every internal result wraps
at its width:

==========  =========  =====================  ==================================================
slice       A / D      multiplier             ALU / P
==========  =========  =====================  ==================================================
DSP48E2     A 30, D 27 27 (A[26:0] or AD) x 18 (B)  48 bits, C 48, ``P = wrap48(M + C + P_in)``
DSP58       A 34, D 27 27 (A[26:0] or AD) x 24 (B)  58 bits, C 58, ``P = wrap58(M + C + P_in)``
==========  =========  =====================  ==================================================

The pre-adder result ``AD`` (``A + D`` or ``D - A``) wraps at 27 bits on both slices.

Packing: several products with one shared operand
-------------------------------------------------
The shared operand ``s`` drives B; the other operands ``o_0 .. o_{n-1}`` are placed into the 27-bit
multiplier input at bit offsets ``0, sp, 2*sp, ...`` (``sp`` = field spacing). Then
``P = sum_j s * o_j * 2**(j*sp)`` and field ``j`` of ``P`` is the product ``s * o_j`` (or the sum of
several such products accumulated in ``P``) as long as every lower field stays inside the signed
range of ``sp`` bits. Reading the fields back is the *sign-borrow correction*: a negative low field
borrowed one from the field above, so fields are read from the bottom up as::

    f_j = sext(R_j mod 2**sp, sp);  R_{j+1} = (R_j - f_j) >> sp        (R_0 = P, exact shift)

and the top field is what is left (``P_width - (n-1)*sp`` bits).

Packings provided (``sp``; products per slice; in-``P`` accumulation depth = how many packed
products can be summed in ``P`` before a field can overflow, worst case over all operand values):

* ``int8x2``: two INT8 x INT8 products, shared INT8 ``w`` on B, ``A = a_hi << sp``, ``D = a_lo``,
  pre-adder ``A + D``, ``sp = 18`` on both slices (depth 7). ``sp = 19`` would overflow the 27-bit
  pre-adder for ``a_hi = -128, a_lo < 0``; the DSP58's wider P only widens the top field.
* ``int4x2``: two INT4 (unsigned codes 0..15) x ``mant_bits``-bit signed mantissa products, shared
  mantissa on B. Codes enter as ``8 - q`` (range -7..8): ``A = q_lo | q_hi << 22`` is a plain
  concatenation, ``D = 8 * (1 + 2**22)`` a constant, pre-adder ``D - A``. Fields hold ``(8 - q) * m``,
  whose magnitude is at most ``8 * mant_max`` (one bit narrower than ``q * m``). The exact product
  is restored as ``q * m = 8 * m - f`` (for accumulated fields: ``8 * sum(m) - F``; the PE array
  folds the ``8 * sum(m)`` term into the zero-point term). ``sp = 22`` on both slices; depth
  ``floor((2**21 - 1) / (8 * mant_max))``: 32 for 14-bit mantissas, 128 for 12-bit, 2048 for INT8.
* ``int4x3``: three INT4 x INT8 products, same ``8 - q`` trick with ``sp = 11``:
  ``A = q0 | q1 << 11 | q2 << 22``, ``D = 8 * (1 + 2**11 + 2**22)``. ``(8 - q) * x`` lies in
  ``[-1024, 1016]`` for every INT8 ``x`` (including -128), which fills an 11-bit field exactly: depth 1
  (unpack every cycle; accumulation continues in fabric).

All functions work elementwise on int64 tensors (or Python ints) so exhaustive tests vectorize.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ternopu.golden.errors import FormatError, check_int_range

__all__ = [
    "DSP48E2",
    "DSP58",
    "DSPSlice",
    "SLICES",
    "wrap",
    "dsp_slice",
    "dsp48e2",
    "dsp58",
    "PackedOperands",
    "Packing",
    "packing",
    "pack_shared",
    "unpack_fields",
    "pack_int8x2",
    "unpack_int8x2",
    "pack_int4x2",
    "unpack_int4x2",
    "pack_int4x3",
    "unpack_int4x3",
    "int4_products_from_fields",
    "INT4_OFFSET",
    "INT4X2_SPACING",
    "INT4X3_SPACING",
    "max_accumulation_depth",
]

#: Codes q enter the multiplier as (INT4_OFFSET - q) in -7..8, one bit narrower than q's product range.
INT4_OFFSET = 8
#: Field spacing of the two-product INT4 packing: the widest that keeps (8 - q_hi) << sp in 27 bits.
INT4X2_SPACING = 22
#: Field spacing of the three-product INT4 x INT8 packing.
INT4X3_SPACING = 11
#: Pre-adder output width on both slices.
PREADD_BITS = 27


@dataclass(frozen=True)
class DSPSlice:
    """Port widths of a DSP slice (bits, two's complement)."""

    name: str
    a_bits: int
    b_bits: int
    c_bits: int
    d_bits: int
    p_bits: int
    int8_spacing: int  # field spacing of the int8x2 packing on this slice


DSP48E2 = DSPSlice("dsp48e2", a_bits=30, b_bits=18, c_bits=48, d_bits=27, p_bits=48, int8_spacing=18)
DSP58 = DSPSlice("dsp58", a_bits=34, b_bits=24, c_bits=58, d_bits=27, p_bits=58, int8_spacing=18)
SLICES = {"dsp48e2": DSP48E2, "dsp58": DSP58}


def _slice(dsp: str | DSPSlice) -> DSPSlice:
    if isinstance(dsp, DSPSlice):
        return dsp
    if dsp not in SLICES:
        raise FormatError(f"unknown DSP slice {dsp!r}; expected one of {sorted(SLICES)}")
    return SLICES[dsp]


def _t(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.int64)


def wrap(v, bits: int) -> torch.Tensor:
    """Two's-complement wrap of int64 ``v`` to a signed ``bits``-bit value (keep the low bits)."""
    v = _t(v)
    return ((v + (1 << (bits - 1))) & ((1 << bits) - 1)) - (1 << (bits - 1))


def dsp_slice(dsp: str | DSPSlice, a, b, c=0, d=0, *, preadd: str = "off", p_in=None) -> torch.Tensor:
    """One DSP operation ``P = wrap_P(AD * B + C + P_in)``, elementwise over int64 tensors.

    Parameters
    ----------
    dsp : "dsp48e2" | "dsp58" | DSPSlice
    a, b, c, d : int or int64 Tensor (broadcastable); wrapped to the A, B, C, D port widths.
    preadd : {"off", "add", "sub"}
        Multiplier input: ``A[26:0]`` ("off"), ``wrap27(A + D)`` ("add") or ``wrap27(D - A)`` ("sub");
        ``A`` enters the pre-adder / multiplier through its low 27 bits (sign taken from bit 26).
    p_in : int or int64 Tensor or None
        Previous ``P`` for accumulation (Z mux = P); None means 0.

    Returns
    -------
    int64 Tensor, signed ``p_bits`` wide.

    Raises
    ------
    FormatError
        Unknown slice or pre-adder mode.
    """
    s = _slice(dsp)
    a27 = wrap(wrap(a, s.a_bits), PREADD_BITS)
    d27 = wrap(d, s.d_bits)
    if preadd == "off":
        ad = a27
    elif preadd == "add":
        ad = wrap(a27 + d27, PREADD_BITS)
    elif preadd == "sub":
        ad = wrap(d27 - a27, PREADD_BITS)
    else:
        raise FormatError(f"preadd must be 'off', 'add' or 'sub', got {preadd!r}")
    m = ad * wrap(b, s.b_bits)  # 27 x 18 (24) bits: exact in int64
    p_prev = _t(0) if p_in is None else wrap(p_in, s.p_bits)
    return wrap(m + wrap(c, s.c_bits) + p_prev, s.p_bits)


def dsp48e2(a, b, c=0, d=0, *, preadd: str = "off", p_in=None) -> torch.Tensor:
    """DSP48E2: 27-bit pre-adder, 27 x 18 multiplier, 48-bit ALU. See :func:`dsp_slice`."""
    return dsp_slice(DSP48E2, a, b, c, d, preadd=preadd, p_in=p_in)


def dsp58(a, b, c=0, d=0, *, preadd: str = "off", p_in=None) -> torch.Tensor:
    """DSP58: 27-bit pre-adder, 27 x 24 multiplier, 58-bit ALU. See :func:`dsp_slice`."""
    return dsp_slice(DSP58, a, b, c, d, preadd=preadd, p_in=p_in)


@dataclass
class PackedOperands:
    """Port values of one packed DSP operation (feed to :func:`dsp_slice` as ``**ports``)."""

    a: torch.Tensor
    b: torch.Tensor
    d: torch.Tensor
    preadd: str

    def ports(self) -> dict:
        return {"a": self.a, "b": self.b, "d": self.d, "preadd": self.preadd}


@dataclass(frozen=True)
class Packing:
    """Static description of a packing: field layout and worst-case accumulation depth."""

    name: str
    dsp: DSPSlice
    n_products: int
    spacing: int
    max_abs_field_term: int  # worst |field value| of one packed product
    depth: int  # products that can be accumulated in P per field, worst case


def max_accumulation_depth(field_bits: int, max_pos: int, max_neg: int) -> int:
    """Largest ``n`` such that ``n`` terms in ``[-max_neg, max_pos]`` always fit a signed ``field_bits`` field."""
    hi = (1 << (field_bits - 1)) - 1
    lo = 1 << (field_bits - 1)
    depth_pos = hi // max_pos if max_pos else 1 << 62
    depth_neg = lo // max_neg if max_neg else 1 << 62
    return min(depth_pos, depth_neg)


def packing(name: str, dsp: str | DSPSlice = "dsp48e2", mant_bits: int = 8) -> Packing:
    """Describe packing ``name`` ("int8x2", "int4x2", "int4x3") on slice ``dsp``.

    ``mant_bits`` is the signed width of the shared operand for "int4x2" (BFP mantissas are
    symmetric, ``|m| <= 2**(mant_bits-1) - 1``, except ``mant_bits == 8`` which allows INT8 -128).
    Depth is limited by the lowest field (the top field is far wider for every packing here).
    """
    s = _slice(dsp)
    if name == "int8x2":
        sp = s.int8_spacing
        # a*w for INT8 a, w: in [-128*127, 128*128] = [-16256, 16384]
        return Packing(name, s, 2, sp, 16384, max_accumulation_depth(sp, 16384, 16256))
    if name == "int4x2":
        if not 2 <= mant_bits <= s.b_bits:
            raise FormatError(f"int4x2 on {s.name}: mant_bits must lie in [2, {s.b_bits}], got {mant_bits}")
        m_pos, m_neg = _mant_range(mant_bits)
        # (8 - q) in [-7, 8]: max positive 8*m_pos or 7*m_neg, max negative 8*m_neg or 7*m_pos
        pos = max(8 * m_pos, 7 * m_neg)
        neg = max(8 * m_neg, 7 * m_pos)
        depth = max_accumulation_depth(INT4X2_SPACING, pos, neg)
        if depth < 1:
            raise FormatError(
                f"int4x2: {mant_bits}-bit mantissas overflow the {INT4X2_SPACING}-bit field (at most 19 bits)"
            )
        return Packing(name, s, 2, INT4X2_SPACING, max(pos, neg), depth)
    if name == "int4x3":
        pos, neg = 8 * 127, 8 * 128  # (8-q)*x for INT8 x: [-1024, 1016]
        return Packing(name, s, 3, INT4X3_SPACING, 1024, max_accumulation_depth(INT4X3_SPACING, pos, neg))
    raise FormatError(f"unknown packing {name!r}; expected 'int8x2', 'int4x2' or 'int4x3'")


def _mant_range(mant_bits: int) -> tuple[int, int]:
    """(max positive, max negative magnitude) of the shared mantissa operand."""
    if mant_bits == 8:
        return 127, 128  # plain INT8
    return (1 << (mant_bits - 1)) - 1, (1 << (mant_bits - 1)) - 1  # symmetric BFP mantissa


def pack_shared(operands: list, spacing: int) -> torch.Tensor:
    """``sum_j operands[j] * 2**(j*spacing)``: the packed multiplier operand (exact int64)."""
    out = _t(0)
    for j, o in enumerate(operands):
        out = out + (_t(o) << (j * spacing))
    return out


def unpack_fields(p, n: int, spacing: int) -> list[torch.Tensor]:
    """Split ``P`` into ``n`` signed fields, lowest first, with the sign-borrow correction.

    Field ``j < n-1`` is ``sext`` of ``spacing`` bits; the top field is the rest of ``P``.
    Exact whenever every lower field's true sum lies in ``[-2**(spacing-1), 2**(spacing-1) - 1]``.
    """
    r = _t(p)
    fields = []
    for _ in range(n - 1):
        f = wrap(r, spacing)
        fields.append(f)
        r = (r - f) >> spacing  # exact: r - f is a multiple of 2**spacing
    fields.append(r)
    return fields


def pack_int8x2(a_hi, a_lo, w, *, dsp: str | DSPSlice = "dsp48e2") -> PackedOperands:
    """Two INT8 x INT8 products ``w * a_hi`` and ``w * a_lo`` with shared ``w`` in one slice.

    Parameters
    ----------
    a_hi, a_lo, w : int or int64 Tensor in [-128, 127]

    Returns
    -------
    PackedOperands: ``A = a_hi << 18``, ``D = a_lo``, ``B = w``,
    pre-adder "add". Read back with :func:`unpack_int8x2`.

    Raises
    ------
    FormatError
        An operand outside [-128, 127].
    """
    s = _slice(dsp)
    for v, nm in ((a_hi, "a_hi"), (a_lo, "a_lo"), (w, "w")):
        check_int_range(_t(v), -128, 127, f"pack_int8x2 {nm}")
    return PackedOperands(a=_t(a_hi) << s.int8_spacing, b=_t(w), d=_t(a_lo), preadd="add")


def unpack_int8x2(p, *, dsp: str | DSPSlice = "dsp48e2") -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum w*a_hi, sum w*a_lo)`` from ``P`` of :func:`pack_int8x2` (exact up to the packing's depth)."""
    s = _slice(dsp)
    lo, hi = unpack_fields(p, 2, s.int8_spacing)
    return hi, lo


def _check_codes(qs, what: str) -> None:
    for j, q in enumerate(qs):
        check_int_range(_t(q), 0, 15, f"{what} code {j}")


def pack_int4x2(q_hi, q_lo, m, *, mant_bits: int = 14, dsp: str | DSPSlice = "dsp48e2") -> PackedOperands:
    """Two INT4-code x mantissa products with shared signed mantissa ``m`` in one slice.

    Parameters
    ----------
    q_hi, q_lo : int or int64 Tensor, unsigned codes 0..15
    m : int or int64 Tensor, signed mantissa, ``|m| <= 2**(mant_bits-1) - 1`` (INT8 range if mant_bits 8)
    mant_bits : int, <= B port width

    Returns
    -------
    PackedOperands: ``A = q_lo | q_hi << 22``, ``D = 8 * (1 + 2**22)``, pre-adder "sub" (``D - A``),
    ``B = m``. Fields of ``P`` hold ``(8 - q) * m``; :func:`unpack_int4x2` restores ``q * m``.

    Raises
    ------
    FormatError
        Codes outside 0..15 or a mantissa outside its range.
    """
    s = _slice(dsp)
    pk = packing("int4x2", s, mant_bits)
    _check_codes((q_hi, q_lo), "pack_int4x2")
    pos, neg = _mant_range(mant_bits)
    check_int_range(_t(m), -neg, pos, "pack_int4x2 mantissa")
    a = pack_shared([q_lo, q_hi], pk.spacing)
    d = pack_shared([INT4_OFFSET, INT4_OFFSET], pk.spacing)
    return PackedOperands(a=a, b=_t(m), d=d, preadd="sub")


def int4_products_from_fields(field, m_sum) -> torch.Tensor:
    """``sum q*m`` from a field holding ``sum (8 - q)*m`` and ``m_sum = sum m``: ``8*m_sum - field``."""
    return INT4_OFFSET * _t(m_sum) - _t(field)


def unpack_int4x2(p, m_sum, *, dsp: str | DSPSlice = "dsp48e2") -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum q_hi*m, sum q_lo*m)`` from ``P`` of :func:`pack_int4x2` accumulated over products
    whose mantissas sum to ``m_sum`` (``m_sum = m`` for a single product). Exact up to the depth."""
    lo, hi = unpack_fields(p, 2, INT4X2_SPACING)
    return int4_products_from_fields(hi, m_sum), int4_products_from_fields(lo, m_sum)


def pack_int4x3(q2, q1, q0, x, *, dsp: str | DSPSlice = "dsp48e2") -> PackedOperands:
    """Three INT4-code x INT8 products with shared INT8 ``x`` in one slice (depth 1).

    Parameters
    ----------
    q2, q1, q0 : int or int64 Tensor, codes 0..15 (q0 in the lowest field)
    x : int or int64 Tensor in [-128, 127]

    Returns
    -------
    PackedOperands: ``A = q0 | q1 << 11 | q2 << 22``, ``D = 8 * (1 + 2**11 + 2**22)``, pre-adder
    "sub", ``B = x``. Read back with :func:`unpack_int4x3`.
    """
    s = _slice(dsp)
    _check_codes((q2, q1, q0), "pack_int4x3")
    check_int_range(_t(x), -128, 127, "pack_int4x3 x")
    a = pack_shared([q0, q1, q2], INT4X3_SPACING)
    d = pack_shared([INT4_OFFSET] * 3, INT4X3_SPACING)
    return PackedOperands(a=a, b=_t(x), d=d, preadd="sub")


def unpack_int4x3(p, x_sum, *, dsp: str | DSPSlice = "dsp48e2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q2*x, q1*x, q0*x)`` from ``P`` of :func:`pack_int4x3` (``x_sum = x``; depth 1)."""
    f0, f1, f2 = unpack_fields(p, 3, INT4X3_SPACING)
    return tuple(int4_products_from_fields(f, x_sum) for f in (f2, f1, f0))
