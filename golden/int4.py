"""INT4 weight-only formats: GPTQ / AWQ packed tensors, the RTN group quantizer, zero folding.

Plain-tensor layout (shared with the PE array and the loaders)
--------------------------------------------------------------
A linear layer ``y = x @ W`` stores ``W`` as ``[K, N]`` = (in, out), the GPTQ orientation.

* ``q``      int64 ``[K, N]``       4-bit codes, 0..15
* ``zeros``  int64 ``[K//G, N]``    4-bit zero points, 0..15 (the *true* zero, never z-1)
* ``scales`` float16 ``[K//G, N]``  one scale per (group, output column)
* group ``G`` (default 128) spans ``G`` consecutive input rows ``k``; it must divide ``K``.

The weight value is ``w[k, n] = (q[k, n] - zeros[k // G, n]) * scales[k // G, n]``.
With act-order checkpoints (``g_idx``), row ``k`` uses group ``g_idx[k]`` instead of ``k // G``.

Packed formats (int32 words; bit ``b`` of a word is ``(word >> b) & 1``, LSB first)
----------------------------------------------------------------------------------
GPTQ
    ``qweight`` int32 ``[K/8, N]``: packed along K. Nibble ``j`` (bits ``4j .. 4j+3``) of
    ``qweight[i, n]`` holds ``q[8i + j, n]``.
    ``qzeros`` int32 ``[K/G, N/8]``: packed along N. Nibble ``j`` of ``qzeros[g, i]`` holds the zero
    of column ``8i + j``. Legacy checkpoints (``legacy_zero_offset=True``) store ``z - 1`` in the
    nibble, so they can represent z in 1..16 only; ternopu accepts z in 1..15 for them.
    ``scales`` float16 ``[K/G, N]``. ``g_idx`` int ``[K]`` (optional): group of each input row.
AWQ (GEMM layout)
    ``qweight`` int32 ``[K, N/8]``: packed along N with an interleave. Nibble ``i`` of
    ``qweight[k, b]`` holds column ``8b + AWQ_PACK_ORDER[i]`` with
    ``AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)``. Equivalently column ``8b + c`` lives in nibble
    ``AWQ_UNPACK_ORDER[c]`` with ``AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)`` (the "reverse
    order" applied after extracting the nibbles in bit order).
    ``qzeros`` int32 ``[K/G, N/8]``: same interleave along N; zeros stored as is (no offset).
    ``scales`` float16 ``[K/G, N]``.

torch's int32 is signed: a word whose nibble 7 is >= 8 is negative. Packing builds the word in
int64 and maps it into int32 two's complement explicitly; unpacking masks with 0xFFFFFFFF first.

Arithmetic
----------
* Dequantization is *exact*: ``q - z`` is an integer in -15..15 and the scale has an 11-bit
  significand, so ``float32(q - z) * float32(s)`` needs at most 15 significant bits and no binary32
  rounding happens (overflow is impossible: |w| <= 15 * 65504).
* The datapath never writes dequantized weights back. It folds the zero point out of the inner
  product: ``sum_k (q - z) x = sum_k q x - z * sum_k x`` per group (:func:`folded_group_dot`), both
  sides integer and exact.
"""

from __future__ import annotations

import torch

from .errors import FormatError, check_finite, check_int_range

__all__ = [
    "INT4_BITS",
    "INT4_MAX",
    "NIBBLES_PER_WORD",
    "DEFAULT_GROUP",
    "AWQ_PACK_ORDER",
    "AWQ_UNPACK_ORDER",
    "pack_gptq",
    "unpack_gptq",
    "pack_awq",
    "unpack_awq",
    "trivial_g_idx",
    "check_g_idx",
    "act_order_permutation",
    "rtn_quantize",
    "dequantize_int4",
    "expand_group_params",
    "folded_group_dot",
    "unfolded_group_dot",
]

INT4_BITS = 4
"""Bits per weight code; the only width these formats support here."""
INT4_MAX = (1 << INT4_BITS) - 1
"""Largest code / zero point (15)."""
NIBBLES_PER_WORD = 32 // INT4_BITS
"""4-bit fields per int32 word (8)."""
DEFAULT_GROUP = 128
"""Group size of the reference INT4 checkpoints (Llama-2-7B GPTQ/AWQ)."""
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""AWQ interleave: nibble ``i`` of a word holds column ``AWQ_PACK_ORDER[i]`` of its 8-column block."""
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
"""Inverse interleave: column ``c`` of an 8-column block lives in nibble ``AWQ_UNPACK_ORDER[c]``."""

_WORD_MASK = (1 << 32) - 1
# A folded dot product must stay exact in int64: |x| * 15 * K < 2^63.
_INT64_SAFE = 1 << 62


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_bits(bits: int) -> None:
    if bits != INT4_BITS:
        raise FormatError(f"INT4 formats: bits must be {INT4_BITS}, got {bits}")


def _check_int_tensor(t: torch.Tensor, what: str, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise FormatError(f"{what}: expected an integer tensor, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise FormatError(f"{what}: expected {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_dtype(t: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise FormatError(f"{what}: expected dtype {dtype}, got {t.dtype}")


def _check_shape(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{what}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _group_count(k: int, group: int) -> int:
    if group <= 0:
        raise FormatError(f"group size must be positive, got {group}")
    if k % group != 0:
        raise FormatError(f"group size {group} must divide K={k} (K % G = {k % group})")
    return k // group


def _check_plain(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor | None, group: int | None
) -> tuple[int, int, int]:
    """Validate a plain ``(q, zeros, scales)`` triple; return ``(K, N, G)``."""
    _check_int_tensor(q, "q", 2)
    _check_int_tensor(zeros, "zeros", 2)
    k, n = q.shape
    if zeros.shape[1] != n or zeros.shape[0] == 0:
        raise FormatError(f"zeros: expected shape [K//G, N={n}], got {tuple(zeros.shape)}")
    if group is None:
        if k % zeros.shape[0] != 0:
            raise FormatError(
                f"zeros has {zeros.shape[0]} group rows, which does not divide K={k}"
            )
        group = k // zeros.shape[0]
    groups = _group_count(k, group)
    _check_shape(zeros, (groups, n), "zeros")
    if scales is not None:
        _check_dtype(scales, torch.float16, "scales")
        _check_shape(scales, (groups, n), "scales")
        check_finite(scales, "scales")
    check_int_range(q, 0, INT4_MAX, "q (4-bit codes)")
    check_int_range(zeros, 0, INT4_MAX, "zeros (4-bit zero points)")
    return k, n, group


# --------------------------------------------------------------------------------------------
# nibble packing primitives
# --------------------------------------------------------------------------------------------


def _to_int32_word(words: torch.Tensor) -> torch.Tensor:
    """Map int64 values in [0, 2^32) onto int32 two's complement (explicit, no silent wrap)."""
    signed = torch.where(words >= (1 << 31), words - (1 << 32), words)
    return signed.to(torch.int32)


_IDENTITY_ORDER = tuple(range(NIBBLES_PER_WORD))


def _every_8th(ndim: int, dim: int, pos: int) -> tuple[slice, ...]:
    """Index selecting positions ``pos, pos + 8, pos + 16, ...`` along ``dim``."""
    index = [slice(None)] * ndim
    index[dim] = slice(pos, None, NIBBLES_PER_WORD)
    return tuple(index)


def _pack_nibbles(codes: torch.Tensor, dim: int, order: tuple[int, ...]) -> torch.Tensor:
    """Pack 4-bit codes along ``dim`` (length 8m) into int32 words (length m along ``dim``).

    Nibble ``i`` (bits ``4i .. 4i+3``) of word ``b`` holds the code at position ``8b + order[i]``.
    Works on strided slices (one per nibble) so no [..., 8] temporary is materialized.
    """
    c = codes.to(torch.int64)
    words = None
    for nibble, pos in enumerate(order):
        field = c[_every_8th(c.dim(), dim, pos)]
        words = field << (INT4_BITS * nibble) if words is None else words | (field << (INT4_BITS * nibble))
    return _to_int32_word(words)


def _unpack_nibbles(words: torch.Tensor, dim: int, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`_pack_nibbles`: int32 words -> int64 codes, 8x longer along ``dim``."""
    w = words.to(torch.int64) & _WORD_MASK
    shape = list(words.shape)
    shape[dim] *= NIBBLES_PER_WORD
    out = torch.empty(shape, dtype=torch.int64)
    for nibble, pos in enumerate(order):
        out[_every_8th(len(shape), dim, pos)] = (w >> (INT4_BITS * nibble)) & INT4_MAX
    return out


# --------------------------------------------------------------------------------------------
# GPTQ
# --------------------------------------------------------------------------------------------


def pack_gptq(
    q: torch.Tensor,
    zeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    legacy_zero_offset: bool = False,
    bits: int = INT4_BITS,
) -> dict[str, torch.Tensor]:
    """Pack plain INT4 tensors into the GPTQ checkpoint layout.

    Parameters
    ----------
    q : integer tensor [K, N]
        Codes 0..15. ``K % 8 == 0`` and ``N % 8 == 0``.
    zeros : integer tensor [K//G, N]
        True zero points 0..15. The group size is ``G = K // zeros.shape[0]``.
    scales : float16 [K//G, N]
        Finite group scales (copied unchanged).
    legacy_zero_offset : bool
        Store ``z - 1`` (old GPTQ checkpoints). Such files cannot hold z = 0: FormatError.
    bits : int
        Must be 4.

    Returns
    -------
    dict
        ``qweight`` int32 [K/8, N] (nibble j of row i = ``q[8i+j]``), ``qzeros`` int32 [K/G, N/8]
        (nibble j of word i = zero of column 8i+j), ``scales`` float16 [K/G, N].

    Raises
    ------
    FormatError
        Wrong dtypes/shapes, K or N not a multiple of 8, G not dividing K, values out of range,
        non-finite scales, bits != 4, z = 0 with ``legacy_zero_offset``.
    """
    _check_bits(bits)
    k, n, _ = _check_plain(q, zeros, scales, None)
    if k % NIBBLES_PER_WORD or n % NIBBLES_PER_WORD:
        raise FormatError(f"GPTQ packing needs K and N multiples of 8, got K={k}, N={n}")
    stored_zeros = zeros.to(torch.int64)
    if legacy_zero_offset:
        if bool((stored_zeros == 0).any()):
            raise FormatError(
                "legacy_zero_offset: the legacy format stores z-1 and cannot represent z=0; "
                f"found {int((stored_zeros == 0).sum())} zero point(s) equal to 0"
            )
        stored_zeros = stored_zeros - 1
    # packed along K: transpose so K is the last axis, pack, transpose back
    qweight = _pack_nibbles(q, 0, _IDENTITY_ORDER)  # along K
    qzeros = _pack_nibbles(stored_zeros, 1, _IDENTITY_ORDER)  # along N
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.clone()}


def unpack_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    group: int = DEFAULT_GROUP,
    legacy_zero_offset: bool = False,
    g_idx: torch.Tensor | None = None,
    bits: int = INT4_BITS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpack GPTQ tensors into plain ``(q, zeros, scales)``.

    Parameters
    ----------
    qweight : int32 [K/8, N]
    qzeros : int32 [K/G, N/8]
    scales : float16 [K/G, N]
    group : int
        Group size G; must divide K and match ``qzeros``/``scales`` (``K // G`` rows).
    legacy_zero_offset : bool
        The file stores ``z - 1``: the returned zero is ``nibble + 1``. A stored nibble of 15 would
        mean z = 16, which a 4-bit zero cannot be: FormatError.
    g_idx : integer tensor [K], optional
        Act-order group index of each input row. Validated with :func:`check_g_idx`. The returned
        ``q`` keeps the checkpoint's row order and ``zeros``/``scales`` stay indexed by group, so a
        non-trivial ``g_idx`` must be passed on to :func:`dequantize_int4` / :func:`folded_group_dot`
        (or rows regrouped with :func:`act_order_permutation`).
    bits : int
        Must be 4.

    Returns
    -------
    q : int64 [K, N] in 0..15
    zeros : int64 [K/G, N] in 0..15 (true zero points)
    scales : float16 [K/G, N] (a copy)

    Raises
    ------
    FormatError
        Wrong dtypes or shapes, G not dividing K, inconsistent ``g_idx``, non-finite scales,
        legacy nibble 15, bits != 4.
    """
    _check_bits(bits)
    _check_dtype(qweight, torch.int32, "qweight")
    _check_dtype(qzeros, torch.int32, "qzeros")
    _check_dtype(scales, torch.float16, "scales")
    if qweight.dim() != 2 or qzeros.dim() != 2 or scales.dim() != 2:
        raise FormatError(
            "GPTQ tensors must be 2-D: got qweight "
            f"{tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
        )
    k, n = qweight.shape[0] * NIBBLES_PER_WORD, qweight.shape[1]
    groups = _group_count(k, group)
    if n % NIBBLES_PER_WORD:
        raise FormatError(f"GPTQ qweight: N must be a multiple of 8, got N={n}")
    _check_shape(qzeros, (groups, n // NIBBLES_PER_WORD), "qzeros")
    _check_shape(scales, (groups, n), "scales")
    check_finite(scales, "scales")
    q = _unpack_nibbles(qweight, 0, _IDENTITY_ORDER)
    zeros = _unpack_nibbles(qzeros, 1, _IDENTITY_ORDER)
    if legacy_zero_offset:
        if bool((zeros == INT4_MAX).any()):
            raise FormatError(
                "legacy_zero_offset: stored nibble 15 would mean zero point 16, outside 0..15 "
                f"({int((zeros == INT4_MAX).sum())} occurrence(s))"
            )
        zeros = zeros + 1
    if g_idx is not None:
        check_g_idx(g_idx, k, group)
    return q, zeros, scales.clone()


# --------------------------------------------------------------------------------------------
# AWQ
# --------------------------------------------------------------------------------------------


def pack_awq(
    q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, *, bits: int = INT4_BITS
) -> dict[str, torch.Tensor]:
    """Pack plain INT4 tensors into the AWQ (GEMM) checkpoint layout.

    Parameters
    ----------
    q : integer tensor [K, N], codes 0..15, ``N % 8 == 0``
    zeros : integer tensor [K//G, N], zero points 0..15 (G = K // zeros.shape[0])
    scales : float16 [K//G, N]
    bits : int
        Must be 4.

    Returns
    -------
    dict
        ``qweight`` int32 [K, N/8] and ``qzeros`` int32 [K/G, N/8] (nibble i of word b holds column
        ``8b + AWQ_PACK_ORDER[i]``), ``scales`` float16 [K/G, N].

    Raises
    ------
    FormatError
        Wrong dtypes/shapes, N not a multiple of 8, G not dividing K, values out of range, bits != 4.
    """
    _check_bits(bits)
    k, n, _ = _check_plain(q, zeros, scales, None)
    if n % NIBBLES_PER_WORD:
        raise FormatError(f"AWQ packing needs N a multiple of 8, got N={n}")
    qweight = _pack_nibbles(q, 1, AWQ_PACK_ORDER)
    qzeros = _pack_nibbles(zeros, 1, AWQ_PACK_ORDER)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales.clone()}


def unpack_awq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    group: int | None = None,
    bits: int = INT4_BITS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpack AWQ (GEMM) tensors into plain ``(q, zeros, scales)``.

    Parameters
    ----------
    qweight : int32 [K, N/8]
    qzeros : int32 [K/G, N/8]
    scales : float16 [K/G, N]
    group : int, optional
        Expected group size; if given it must equal ``K // qzeros.shape[0]``.
    bits : int
        Must be 4.

    Returns
    -------
    q : int64 [K, N], zeros : int64 [K/G, N], scales : float16 [K/G, N] (a copy)

    Raises
    ------
    FormatError
        Wrong dtypes or shapes, G not dividing K, mismatching ``group``, non-finite scales, bits != 4.
    """
    _check_bits(bits)
    _check_dtype(qweight, torch.int32, "qweight")
    _check_dtype(qzeros, torch.int32, "qzeros")
    _check_dtype(scales, torch.float16, "scales")
    if qweight.dim() != 2 or qzeros.dim() != 2 or scales.dim() != 2:
        raise FormatError(
            "AWQ tensors must be 2-D: got qweight "
            f"{tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
        )
    k, n = qweight.shape[0], qweight.shape[1] * NIBBLES_PER_WORD
    if qzeros.shape[0] == 0 or k % qzeros.shape[0]:
        raise FormatError(f"AWQ qzeros has {qzeros.shape[0]} group rows, which does not divide K={k}")
    inferred = k // qzeros.shape[0]
    if group is not None and group != inferred:
        _group_count(k, group)
        raise FormatError(
            f"AWQ group size {group} expects {k // group} qzeros rows, found {qzeros.shape[0]}"
        )
    groups = k // inferred
    _check_shape(qzeros, (groups, n // NIBBLES_PER_WORD), "qzeros")
    _check_shape(scales, (groups, n), "scales")
    check_finite(scales, "scales")
    q = _unpack_nibbles(qweight, 1, AWQ_PACK_ORDER)
    zeros = _unpack_nibbles(qzeros, 1, AWQ_PACK_ORDER)
    return q, zeros, scales.clone()


# --------------------------------------------------------------------------------------------
# act-order (g_idx)
# --------------------------------------------------------------------------------------------


def trivial_g_idx(k: int, group: int = DEFAULT_GROUP) -> torch.Tensor:
    """The g_idx of a checkpoint without act-order: int32 [K] with ``g_idx[k] = k // G``."""
    _group_count(k, group)
    return (torch.arange(k, dtype=torch.int64) // group).to(torch.int32)


def check_g_idx(g_idx: torch.Tensor, k: int, group: int) -> None:
    """Validate an act-order group index.

    Parameters
    ----------
    g_idx : integer tensor [K]
        Group of each input row.
    k, group : int
        Rows and group size; ``group`` divides ``k``.

    Raises
    ------
    FormatError
        Not an integer 1-D tensor of length K, values outside ``0 .. K//G - 1``, or a group that
        does not hold exactly G rows (GPTQ act-order forms every group from G permuted rows, and
        the hardware's regrouped layout relies on it).
    """
    groups = _group_count(k, group)
    _check_int_tensor(g_idx, "g_idx", 1)
    _check_shape(g_idx, (k,), "g_idx")
    check_int_range(g_idx, 0, groups - 1, "g_idx")
    counts = torch.bincount(g_idx.to(torch.int64), minlength=groups)
    bad = (counts != group).nonzero()
    if bad.numel():
        g = int(bad[0])
        raise FormatError(
            f"g_idx: every group must hold exactly G={group} rows; group {g} holds {int(counts[g])}"
        )


def act_order_permutation(g_idx: torch.Tensor, group: int) -> torch.Tensor:
    """Row permutation that makes act-order groups contiguous (how the compiler lays rows out).

    Parameters
    ----------
    g_idx : integer tensor [K]
        Validated with :func:`check_g_idx`.
    group : int

    Returns
    -------
    perm : int64 [K]
        Stable sort of rows by group: ``q[perm]`` has group ``g`` in rows ``g*G .. g*G+G-1`` and
        ``folded_group_dot(x[..., perm], q[perm], zeros, G)`` equals
        ``folded_group_dot(x, q, zeros, G, g_idx=g_idx)``. The hardware gathers activations with the
        same permutation.
    """
    check_g_idx(g_idx, g_idx.shape[0] if g_idx.dim() == 1 else -1, group)
    return torch.sort(g_idx.to(torch.int64), stable=True).indices


def _row_groups(k: int, group: int, g_idx: torch.Tensor | None) -> torch.Tensor:
    """Group index of every input row: ``k // G`` or the validated ``g_idx``."""
    if g_idx is None:
        return torch.arange(k, dtype=torch.int64) // group
    check_g_idx(g_idx, k, group)
    return g_idx.to(torch.int64)


# --------------------------------------------------------------------------------------------
# RTN quantizer (offline, compiler side)
# --------------------------------------------------------------------------------------------


def _fp16_round_up(x: torch.Tensor) -> torch.Tensor:
    """Round non-negative finite float32 values to binary16 toward +inf (saturation is an error)."""
    h = x.to(torch.float16)  # RNE
    below = h.to(torch.float32) < x
    # For positive binary16 values, the next value up is the bit pattern + 1.
    up = (h.view(torch.int16) + 1).view(torch.float16)
    h = torch.where(below, up, h)
    if bool(torch.isinf(h).any()):
        raise FormatError(
            f"RTN scale overflows float16: largest (max-min)/15 is {float(x.max())}, limit 65504"
        )
    return h


def rtn_quantize(
    w: torch.Tensor, group: int = DEFAULT_GROUP, bits: int = INT4_BITS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max round-to-nearest group quantizer (offline, run by the compiler).

    Per (group of G input rows, output column n), with ``w`` first converted to binary32 (RNE):

    1. ``mn = min(min(w), 0)``, ``mx = max(max(w), 0)`` (exact). Zero is kept in the range, as the
       GPTQ quantizer does, so that the grid always spans the group.
    2. ``s = float16_up(float32(mx - mn) / 15)``: binary32 subtraction and division (RNE), then
       rounded **toward +inf** to binary16 so that ``15 * s >= mx - mn`` (up to the binary32 rounding
       of step 2); this is what makes the ``|w - w'| <= s/2`` bound hold. Overflow: FormatError.
    3. ``z = clamp(RNE(float32(-mn) / s), 0, 15)`` (binary32 division).
    4. ``q = clamp(RNE(float32(w) / s) + z, 0, 15)`` (binary32 division, RNE to integer).

    A group whose values are all zero has ``mx == mn == 0``: it gets ``s = 0``, ``z = 0``, ``q = 0``
    (no division is evaluated) and dequantizes to exactly 0.

    Parameters
    ----------
    w : floating tensor [K, N]
        Finite weights in the (in, out) orientation.
    group : int
        G, must divide K.
    bits : int
        Must be 4.

    Returns
    -------
    q : int64 [K, N] in 0..15
    zeros : int64 [K/G, N] in 0..15
    scales : float16 [K/G, N], >= 0

    Raises
    ------
    FormatError
        Not a 2-D floating tensor, G not dividing K, bits != 4, scale overflowing float16.
    NonFiniteError
        NaN or Inf in ``w``.

    Notes
    -----
    Dequantized ``w' = (q - z) * s`` satisfies ``|w - w'| <= s/2 * (1 + 2^-16)`` element-wise
    (the slack covers the binary32 rounding of ``w / s`` and of ``(mx - mn) / 15``).
    """
    _check_bits(bits)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise FormatError(f"rtn_quantize: w must be a floating tensor, got {getattr(w, 'dtype', type(w))}")
    if w.dim() != 2:
        raise FormatError(f"rtn_quantize: w must be [K, N], got shape {tuple(w.shape)}")
    check_finite(w, "rtn_quantize weights")
    k, n = w.shape
    groups = _group_count(k, group)
    w32 = w.to(torch.float32)
    wg = w32.reshape(groups, group, n)
    zero = torch.zeros((), dtype=torch.float32)
    mn = torch.minimum(wg.amin(dim=1), zero)
    mx = torch.maximum(wg.amax(dim=1), zero)
    scale32 = (mx - mn) / torch.tensor(float(INT4_MAX), dtype=torch.float32)
    scales = _fp16_round_up(scale32)
    s32 = scales.to(torch.float32)
    live = s32 > 0
    # dividing by 1 where the group is all zero keeps the arithmetic NaN-free; results are masked
    safe = torch.where(live, s32, torch.ones_like(s32))
    zeros_f = torch.clamp(torch.round(-mn / safe), 0, INT4_MAX) * live
    # integers up to 2^24 are exact in binary32, so adding the zero and clamping in float is exact;
    # |w| <= mx - mn <= ~15 s, so |w / s| is about 15 at most, far below 2^24
    qf = torch.round(wg / safe.unsqueeze(1))
    qf.add_(zeros_f.unsqueeze(1)).clamp_(0, INT4_MAX).mul_(live.unsqueeze(1))
    return qf.reshape(k, n).to(torch.int64), zeros_f.to(torch.int64), scales


# --------------------------------------------------------------------------------------------
# dequantization and zero-folded dot products
# --------------------------------------------------------------------------------------------


def expand_group_params(
    zeros: torch.Tensor, scales: torch.Tensor, group: int, *, g_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row zero points and scales: int64 [K, N] and float16 [K, N] (row k uses its group)."""
    k = zeros.shape[0] * group
    rows = _row_groups(k, group, g_idx)
    return zeros.to(torch.int64)[rows], scales[rows]


def dequantize_int4(
    q: torch.Tensor,
    zeros: torch.Tensor,
    scales: torch.Tensor,
    group: int = DEFAULT_GROUP,
    *,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize plain INT4 tensors: ``w = float32(q - z) * float32(s)``.

    Parameters
    ----------
    q : integer [K, N], 0..15
    zeros : integer [K/G, N], 0..15
    scales : float16 [K/G, N], finite
    group : int
        G, divides K.
    g_idx : integer [K], optional
        Act-order group of each row (default ``k // G``).

    Returns
    -------
    float32 [K, N]
        Exact: ``q - z`` in -15..15 times an 11-bit-significand scale needs no rounding.

    Raises
    ------
    FormatError
        Wrong dtypes/shapes/ranges, inconsistent ``g_idx``, non-finite scales.
    """
    k, n, group = _check_plain(q, zeros, scales, group)
    z_rows, s_rows = expand_group_params(zeros, scales, group, g_idx=g_idx)
    return (q.to(torch.int64) - z_rows).to(torch.float32) * s_rows.to(torch.float32)


def _check_activation(x_int: torch.Tensor, k: int) -> None:
    _check_int_tensor(x_int, "x_int")
    if x_int.dim() < 1 or x_int.shape[-1] != k:
        raise FormatError(f"x_int: expected shape [..., K={k}], got {tuple(x_int.shape)}")
    if x_int.numel():
        amax = int(x_int.to(torch.int64).abs().max())
        if amax * INT4_MAX * k >= _INT64_SAFE:
            raise FormatError(
                f"x_int: |x| up to {amax} with K={k} could overflow the int64 accumulator "
                "(need |x| * 15 * K < 2^62)"
            )


def folded_group_dot(
    x_int: torch.Tensor,
    q: torch.Tensor,
    zeros: torch.Tensor,
    group: int = DEFAULT_GROUP,
    *,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-group integer dot products with the zero point folded out of the inner product.

    ``out[..., g, n] = sum_{k in g} q[k, n] * x[..., k]  -  zeros[g, n] * sum_{k in g} x[..., k]``,
    which equals ``sum_{k in g} (q[k, n] - zeros[g, n]) * x[..., k]`` exactly. This is what the PE
    array computes: the 4-bit codes multiply the activation mantissas directly and one correction
    per (group, column) uses the group's activation sum.

    Parameters
    ----------
    x_int : integer tensor [..., K]
        Fixed-point activations (e.g. BFP mantissas); ``|x| * 15 * K < 2^62``.
    q : integer [K, N], 0..15
    zeros : integer [K/G, N], 0..15
    group : int
        G, divides K.
    g_idx : integer [K], optional
        Act-order group of each row (default ``k // G``).

    Returns
    -------
    int64 [..., K/G, N]
        Exact (integer arithmetic, order-independent).

    Raises
    ------
    FormatError
        Wrong dtypes/shapes/ranges, overflow risk, inconsistent ``g_idx``.
    """
    k, n, group = _check_plain(q, zeros, None, group)
    _check_activation(x_int, k)
    x = x_int.to(torch.int64)
    q64 = q.to(torch.int64)
    if g_idx is not None:
        check_g_idx(g_idx, k, group)
        perm = act_order_permutation(g_idx, group)
        x, q64 = x[..., perm], q64[perm]
    groups = k // group
    xg = x.reshape(*x.shape[:-1], groups, group)  # [..., g, G]
    qx = torch.einsum("...gk,gkn->...gn", xg, q64.reshape(groups, group, n))
    xsum = xg.sum(dim=-1)  # [..., g]
    return qx - xsum.unsqueeze(-1) * zeros.to(torch.int64)


def unfolded_group_dot(
    x_int: torch.Tensor,
    q: torch.Tensor,
    zeros: torch.Tensor,
    group: int = DEFAULT_GROUP,
    *,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for :func:`folded_group_dot`: ``sum_{k in g} (q[k,n] - z[g(k),n]) * x[..., k]``.

    Same parameters, return type and errors; computed with the zero subtracted per element.
    """
    k, n, group = _check_plain(q, zeros, None, group)
    _check_activation(x_int, k)
    rows = _row_groups(k, group, g_idx)
    centred = q.to(torch.int64) - zeros.to(torch.int64)[rows]  # [K, N]
    prod = x_int.to(torch.int64).unsqueeze(-1) * centred  # [..., K, N]
    out = torch.zeros(*prod.shape[:-2], k // group, n, dtype=torch.int64)
    return out.index_add_(-2, rows, prod)
