"""PE-array modes, bit for bit: BFP activations x INT4 weights, BFP x BFP attention, BFP x KIVI.

Every mode has the same three stages.

1. **Block products (exact integers).** Operands are in block floating point (:mod:`ternopu.golden.bfp`,
   default ``DEFAULT_BFP`` = 32-element blocks, 14-bit mantissas) or plain integer codes (INT4
   weights, KIVI codes). For each reduction block ``b`` the PE computes the integer partial sum
   ``I_b = sum_{k in b} m[k] * w[k]`` with exponent ``e_b`` (sum of the operands' block exponents).
   These are the sums the DSP slices accumulate (:mod:`ternopu.golden.dsp`, packing "int4x2" holds a
   whole block in the ``P`` fields).
2. **Block alignment (fixed point).** A reduction spanning several blocks is summed in one fixed-point
   accumulator whose LSB weight is ``e_ref = max_b(e_b) - ALIGN_GUARD_BITS``::

       acc = sum_b rne_shift(I_b, e_ref - e_b)

   i.e. block ``b`` is shifted *left* by ``e_b - e_ref`` when that is >= 0 (exact; blocks within
   ``ALIGN_GUARD_BITS`` binades of the largest) and *right* with round-half-to-even otherwise
   (``|error| <= 2**(e_ref-1)`` per such block). The integer sum is exact and order-independent.
   Accumulator widths are given by :func:`aligned_acc_bits` and checked: every value stays below
   ``2**53`` so stage 3 is exact to evaluate.
3. **One float reconstruction per output.** ``acc * 2**e_ref`` (times an exact integer factor, e.g.
   the FP16 group scale's significand) is rounded once to binary32 (RNE, subnormals kept;
   :func:`~ternopu.golden.bfp.exact_to_float32`). Modes that need several such terms per output
   combine them with binary32 additions in a stated order.

Modes
-----
``linear_bfp_int4``
    ``y[n] = sum_k x[k] * (q[k, n] - z[g, n]) * s[g, n]``. The block size must divide the group.
    Per group ``g`` (blocks ``b`` in ``g``, alignment over the group's blocks):
    ``Pa = sum_b rne_shift(sum_{k in b} m[k] q[k, n], .)``, ``Sa = sum_b rne_shift(sum_{k in b} m[k], .)``
    (``Sa`` is shared by all outputs), ``acc = Pa - z[g, n] * Sa`` (zero folded out of the inner
    product). With the FP16 scale ``s = s_sig * 2**s_exp`` (exact decomposition):
    ``t[g, n] = binary32(acc * s_sig * 2**(e_ref + s_exp))``, one rounding. Then
    ``y = t[0] + t[1] + ... + t[G-1]`` in binary32, **ascending group order**, one RNE add per group.
``qk_bfp``
    ``out[t] = sum_d q[d] k[t, d]``; q and each key row converted to BFP along ``d``; one aligned
    accumulator over the ``D / block`` blocks, one reconstruction. (No ``1/sqrt(d)``: the NPE applies it.)
``pv_bfp``
    ``out[d] = sum_t p[t] v[t, d]``; ``p`` (float32) and each value column converted to BFP along
    ``t`` (``T`` zero-padded to a multiple of the block); one aligned accumulator over the token
    blocks, one reconstruction.
``qk_bfp_kivi`` (default format ``KIVI_BFP`` = 32-element blocks, 16-bit mantissas, see there)
    Keys ``k'[t, d] = c[t, d] * s[t//G, d] + mn[t//G, d]`` (per-channel scale: varies along the
    reduction). The query is scaled per token group first, ``qs[j, d] = f32(q[d]) * f32(s[j, d])``
    (exact: FP16 x FP16 fits binary32), converted to BFP along ``d``, and dotted with the integer codes
    (aligned accumulator, one reconstruction) -> ``r[t]``. The min term ``u[j] = sum_d q[d] mn[j, d]``
    is :func:`qk_bfp` with the ``mn`` rows as keys. ``out[t] = r[t] + u[t//G]`` (one binary32 add).
``pv_bfp_kivi``
    Values ``v'[t, d] = c[t, d] * s[t, d//G] + mn[t, d//G]`` (per-token scale). The probabilities are
    scaled per channel group, ``ps[j, t] = f32(p[t]) * f32(s[t, j])`` (one binary32 RNE multiply),
    converted to BFP along ``t`` and dotted with the codes -> ``r[d]``; the min term
    ``u[j] = sum_t p[t] mn[t, j]`` is :func:`pv_bfp` with ``mn`` as values; ``out[d] = r[d] + u[d//G]``.

Every mode has a float64 reference ``*_ref`` computed from the same (exactly dequantized) operands,
so comparing them measures only the datapath error. Non-finite inputs raise
:class:`~ternopu.golden.errors.NonFiniteError`; bad shapes, ranges or divisibility raise
:class:`~ternopu.golden.errors.FormatError`.
"""

from __future__ import annotations

import torch

from ternopu.golden.bfp import (
    DEFAULT_BFP,
    BFPFormat,
    exact_to_float32,
    float_to_sig_exp,
    rne_shift,
    to_bfp,
)
from ternopu.golden.errors import FormatError, check_finite, check_int_range

__all__ = [
    "ALIGN_GUARD_BITS",
    "INT4_CODE_MAX",
    "KIVI_CODE_MAX",
    "KIVI_BFP",
    "EXACT_LIMIT_BITS",
    "aligned_acc_bits",
    "aligned_sum",
    "int4_group_acc",
    "linear_bfp_int4",
    "linear_bfp_int4_ref",
    "qk_bfp",
    "qk_bfp_ref",
    "pv_bfp",
    "pv_bfp_ref",
    "qk_bfp_kivi",
    "qk_bfp_kivi_ref",
    "pv_bfp_kivi",
    "pv_bfp_kivi_ref",
]

#: BFP format of the scaled operand (q*scale, p*scale) and the min term in the KIVI modes. Wider than
#: DEFAULT_BFP because folding the min out makes two large terms cancel: |r|, |u| are typically
#: 30-80x |out| for Gaussian values, so their relative errors are amplified by that much; 16-bit
#: mantissas keep the measured rel. L2 at 1-2.5e-4 (14-bit: up to 1.7e-3). The codes are at most
#: 4 bits, so the product still packs two per DSP48E2 ("int4x2", mant_bits=16, depth 8).
KIVI_BFP = BFPFormat(32, 16)
#: Extra LSBs below the largest block exponent in an aligned accumulator.
ALIGN_GUARD_BITS = 8
#: INT4 weight codes and zero points are 0..15.
INT4_CODE_MAX = 15
#: KIVI codes are at most 8 bits.
KIVI_CODE_MAX = 255
#: Every integer handed to the float reconstruction stays below 2**EXACT_LIMIT_BITS.
EXACT_LIMIT_BITS = 53
#: FP16 significand magnitude bound (11 bits), used for the scale-significand factor.
_FP16_SIG_MAX = (1 << 11) - 1


def aligned_acc_bits(max_abs_partial: int, n_blocks: int, factor: int = 1) -> int:
    """Signed width of an aligned accumulator (stage 2), including an optional integer factor.

    ``|acc| <= n_blocks * max_abs_partial * 2**ALIGN_GUARD_BITS * factor``; the width is the number
    of bits of a two's-complement integer holding that bound.

    Examples (default format, 14-bit mantissas, 32-element blocks): INT4 linear group of 128,
    ``P``: ``max_abs_partial = 32*8191*15``, 4 blocks -> 33 bits; times the zero point (<= 15) and
    the FP16 scale significand (< 2**11) for the reconstruction -> 49 bits. QK over D = 128:
    ``32*8191**2``, 4 blocks -> 42 bits. PV over T = 4096: 128 blocks -> 47 bits.
    """
    bound = n_blocks * max_abs_partial * (1 << ALIGN_GUARD_BITS) * factor
    return bound.bit_length() + 1


def _check_exact_limit(bits: int, what: str) -> None:
    if bits > EXACT_LIMIT_BITS:
        raise FormatError(
            f"{what}: accumulator would need {bits} bits, more than the {EXACT_LIMIT_BITS} the "
            "reconstruction handles exactly; shorten the reduction"
        )


def aligned_sum(partials: torch.Tensor, exps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: fixed-point sum of block partials with different exponents.

    Parameters
    ----------
    partials : int64 Tensor ``[..., nb]``, exact block sums ``I_b``
    exps : int64 Tensor ``[..., nb]`` (broadcastable), exponent of each partial's LSB

    Returns
    -------
    acc : int64 ``[...]``, ``sum_b rne_shift(I_b, e_ref - e_b)``
    e_ref : int64 ``[...]``, ``max_b e_b - ALIGN_GUARD_BITS``; the value is ``acc * 2**e_ref``
    """
    exps = exps.expand_as(partials)
    e_ref = exps.amax(dim=-1) - ALIGN_GUARD_BITS
    terms = rne_shift(partials, e_ref.unsqueeze(-1) - exps)
    return terms.sum(dim=-1), e_ref


def _check_float(t: torch.Tensor, what: str, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise FormatError(f"{what}: expected a tensor of dtype {' or '.join(map(str, dtypes))}, got {got}")
    if t.dim() != ndim:
        raise FormatError(f"{what}: expected {ndim} dimension(s), got shape {tuple(t.shape)}")
    check_finite(t, what)


def _check_shape(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{what}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_codes(t: torch.Tensor, hi: int, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
        raise FormatError(f"{what}: expected an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    check_int_range(t, 0, hi, what)
    return t.to(torch.int64)


_ACT_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# BFP activations x INT4 group-quantized weights
# --------------------------------------------------------------------------------------------


def _check_int4(x, q, zeros, scales, group, fmt):
    _check_float(x, "linear_bfp_int4 x", _ACT_DTYPES, 1)
    k = x.shape[0]
    if not isinstance(group, int) or group < 1 or k % group:
        raise FormatError(f"linear_bfp_int4: group {group!r} must be a positive divisor of K={k}")
    if group % fmt.block:
        raise FormatError(f"linear_bfp_int4: BFP block {fmt.block} must divide the group {group}")
    if q.dim() != 2 or q.shape[0] != k:
        raise FormatError(f"linear_bfp_int4 q: expected shape ({k}, N), got {tuple(q.shape)}")
    n = q.shape[1]
    qi = _check_codes(q, INT4_CODE_MAX, "linear_bfp_int4 q")
    _check_shape(zeros, (k // group, n), "linear_bfp_int4 zeros")
    zi = _check_codes(zeros, INT4_CODE_MAX, "linear_bfp_int4 zeros")
    _check_float(scales, "linear_bfp_int4 scales", (torch.float16,), 2)
    _check_shape(scales, (k // group, n), "linear_bfp_int4 scales")
    return qi, zi


def int4_group_acc(
    x: torch.Tensor,
    q: torch.Tensor,
    zeros: torch.Tensor,
    group: int,
    fmt: BFPFormat = DEFAULT_BFP,
    *,
    folded: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1-2 of :func:`linear_bfp_int4`: per-(group, output) aligned integer accumulators.

    Parameters
    ----------
    x : float16 / bfloat16 ``[K]``
    q : int ``[K, N]`` codes 0..15; zeros : int ``[K//group, N]`` 0..15
    group : int, divides K; ``fmt.block`` divides ``group``
    folded : bool
        True (the hardware): ``acc = Pa - z * Sa`` with ``Pa``, ``Sa`` aligned separately.
        False (check only): ``acc = sum_b rne_shift(sum_{k in b} m[k] (q[k,n] - z), .)``. Both are
        equal whenever no block is right-shifted (all block exponents of the group within
        ``ALIGN_GUARD_BITS`` of its largest).

    Returns
    -------
    acc : int64 ``[K//group, N]``
    e_ref : int64 ``[K//group]``; group value ``= acc * 2**e_ref`` (before the scale)
    """
    qi = _check_codes(q, INT4_CODE_MAX, "int4_group_acc q")
    zi = _check_codes(zeros, INT4_CODE_MAX, "int4_group_acc zeros")
    k, n = qi.shape
    ng, bpg = k // group, group // fmt.block
    b = to_bfp(x, fmt, "linear_bfp_int4 x")
    m = b.mant.reshape(ng, bpg, fmt.block)
    e = b.exp.reshape(ng, bpg)
    qb = qi.reshape(ng, bpg, fmt.block, n)
    if folded:
        p_blk = torch.einsum("gbk,gbkn->gbn", m, qb)  # what the DSP fields accumulate
        s_blk = m.sum(dim=-1)  # one adder tree per block, shared by all outputs
        pa, _ = aligned_sum(p_blk.permute(0, 2, 1), e.unsqueeze(1))  # [ng, n]
        sa, e_ref = aligned_sum(s_blk, e)  # [ng]
        return pa - zi * sa.unsqueeze(-1), e_ref
    w = qb - zi.reshape(ng, 1, 1, n)
    d_blk = torch.einsum("gbk,gbkn->gbn", m, w)
    acc, _ = aligned_sum(d_blk.permute(0, 2, 1), e.unsqueeze(1))
    return acc, e.amax(dim=-1) - ALIGN_GUARD_BITS


def linear_bfp_int4(
    x: torch.Tensor,
    q: torch.Tensor,
    zeros: torch.Tensor,
    scales: torch.Tensor,
    group: int = 128,
    fmt: BFPFormat = DEFAULT_BFP,
) -> torch.Tensor:
    """INT4 linear layer on the PE array: BFP activations x zero-folded INT4 weights.

    Parameters
    ----------
    x : float16 (or bfloat16) ``[K]``, finite
    q : int ``[K, N]``, codes 0..15 (GPTQ orientation, ``y = x @ W``)
    zeros : int ``[K//group, N]``, 0..15
    scales : float16 ``[K//group, N]``, finite
    group : int, divides ``K``; ``fmt.block`` must divide it
    fmt : BFPFormat

    Returns
    -------
    float32 ``[N]``: per group one exact-integer reconstruction (the FP16 scale's significand
    multiplied in as an integer, one RNE rounding to binary32), summed over groups in ascending
    order with binary32 RNE additions. See the module docstring.

    Raises
    ------
    FormatError
        Shapes, dtypes, code ranges, divisibility, accumulator too wide.
    NonFiniteError
        NaN/Inf in ``x`` or ``scales``.
    """
    qi, zi = _check_int4(x, q, zeros, scales, group, fmt)
    bpg = group // fmt.block
    p_max = fmt.block * fmt.mant_max * INT4_CODE_MAX
    _check_exact_limit(aligned_acc_bits(p_max, bpg, 2 * INT4_CODE_MAX * _FP16_SIG_MAX), "linear_bfp_int4")
    acc, e_ref = int4_group_acc(x, qi, zi, group, fmt)
    s_sig, s_exp = float_to_sig_exp(scales, "linear_bfp_int4 scales")
    t = exact_to_float32(acc * s_sig, e_ref.unsqueeze(-1) + s_exp)  # [ng, n]
    y = t[0].clone()
    for g in range(1, t.shape[0]):  # ascending group order, binary32 RNE adds
        y = y + t[g]
    return y


def linear_bfp_int4_ref(
    x: torch.Tensor, q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int = 128
) -> torch.Tensor:
    """float64 reference ``x @ ((q - z) * s)`` (exact dequantized weights), ``[N]`` float64."""
    k = q.shape[0]
    z = zeros.to(torch.int64).repeat_interleave(group, dim=0)
    s = scales.to(torch.float64).repeat_interleave(group, dim=0)
    w = (q.to(torch.int64) - z).to(torch.float64) * s
    return x.to(torch.float64) @ w if k else torch.zeros(q.shape[1], dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# BFP x BFP (attention with FP16 KV)
# --------------------------------------------------------------------------------------------


def _bfp_dot_rows(a, a_exp, rows, rows_exp, fmt: BFPFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned integer dot of mantissa vector(s) ``a [..., L]`` with ``rows [..., R, L]``.

    ``a`` broadcasts against ``rows`` without its R dimension. Returns ``(acc [..., R], e_ref [..., R])``.
    """
    nb = a.shape[-1] // fmt.block
    ab = a.reshape(*a.shape[:-1], 1, nb, fmt.block)
    rb = rows.reshape(*rows.shape[:-1], nb, fmt.block)
    partial = (ab * rb).sum(dim=-1)  # exact int64 block sums
    return aligned_sum(partial, a_exp.unsqueeze(-2) + rows_exp)


def qk_bfp(q: torch.Tensor, k: torch.Tensor, fmt: BFPFormat = DEFAULT_BFP) -> torch.Tensor:
    """Attention scores ``k @ q`` with both operands in BFP along the head dimension.

    Parameters
    ----------
    q : float16 / bfloat16 ``[D]``; k : float16 / bfloat16 ``[T, D]``; ``D % fmt.block == 0``

    Returns
    -------
    float32 ``[T]``, one reconstruction per token (unscaled: no ``1/sqrt(D)``).

    Raises
    ------
    FormatError / NonFiniteError as the other modes.
    """
    _check_float(q, "qk_bfp q", _ACT_DTYPES, 1)
    _check_float(k, "qk_bfp k", _ACT_DTYPES, 2)
    d = q.shape[0]
    if k.shape[1] != d:
        raise FormatError(f"qk_bfp: k must have {d} columns like q, got shape {tuple(k.shape)}")
    if d % fmt.block:
        raise FormatError(f"qk_bfp: head dimension {d} must be a multiple of the BFP block {fmt.block}")
    _check_exact_limit(aligned_acc_bits(fmt.block * fmt.mant_max**2, d // fmt.block), "qk_bfp")
    bq, bk = to_bfp(q, fmt, "qk_bfp q"), to_bfp(k, fmt, "qk_bfp k")
    acc, e_ref = _bfp_dot_rows(bq.mant, bq.exp, bk.mant, bk.exp, fmt)
    return exact_to_float32(acc, e_ref)


def qk_bfp_ref(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """float64 reference ``k @ q``, ``[T]``."""
    return k.to(torch.float64) @ q.to(torch.float64)


def _pad_last(t: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-t.shape[-1]) % multiple
    return torch.nn.functional.pad(t, (0, pad)) if pad else t


def pv_bfp(p: torch.Tensor, v: torch.Tensor, fmt: BFPFormat = DEFAULT_BFP) -> torch.Tensor:
    """Attention output ``p @ v`` with ``p`` and the value columns in BFP along tokens.

    Parameters
    ----------
    p : float32 (or float16 / bfloat16) ``[T]``; v : float16 / bfloat16 ``[T, D]``.
        ``T`` need not be a multiple of the block: both are zero-padded along ``T``.

    Returns
    -------
    float32 ``[D]``, one reconstruction per channel.
    """
    _check_float(p, "pv_bfp p", (torch.float32, *_ACT_DTYPES), 1)
    _check_float(v, "pv_bfp v", _ACT_DTYPES, 2)
    t = p.shape[0]
    if v.shape[0] != t:
        raise FormatError(f"pv_bfp: v must have {t} rows like p, got shape {tuple(v.shape)}")
    nb = -(-t // fmt.block)
    _check_exact_limit(aligned_acc_bits(fmt.block * fmt.mant_max**2, max(nb, 1)), "pv_bfp")
    bp = to_bfp(_pad_last(p, fmt.block), fmt, "pv_bfp p")
    bv = to_bfp(_pad_last(v.t().contiguous(), fmt.block), fmt, "pv_bfp v")
    acc, e_ref = _bfp_dot_rows(bp.mant, bp.exp, bv.mant, bv.exp, fmt)
    return exact_to_float32(acc, e_ref)


def pv_bfp_ref(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 reference ``p @ v``, ``[D]``."""
    return p.to(torch.float64) @ v.to(torch.float64)


# --------------------------------------------------------------------------------------------
# BFP x KIVI-quantized KV
# --------------------------------------------------------------------------------------------


def _check_kivi(codes, scale, mn, group, red_axis_len, what, stat_shape_of):
    codes_i = _check_codes(codes, KIVI_CODE_MAX, f"{what} codes")
    if not isinstance(group, int) or group < 1 or red_axis_len % group:
        raise FormatError(f"{what}: group {group!r} must be a positive divisor of {red_axis_len}")
    stat_shape = stat_shape_of(group)
    for t, nm in ((scale, "scale"), (mn, "mn")):
        _check_float(t, f"{what} {nm}", (torch.float16,), 2)
        _check_shape(t, stat_shape, f"{what} {nm}")
    return codes_i


def qk_bfp_kivi(
    q: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    group: int,
    fmt: BFPFormat = KIVI_BFP,
) -> torch.Tensor:
    """Attention scores against KIVI keys, scale and min folded out of the inner product.

    Parameters
    ----------
    q : float16 / bfloat16 ``[D]``; ``D % fmt.block == 0``
    codes : int ``[T, D]``, 0..255 (2/4/8-bit codes)
    scale, mn : float16 ``[T//group, D]`` (keys layout: per channel, a group spans ``group`` tokens)
    group : int, divides ``T``

    Returns
    -------
    float32 ``[T]``: ``r[t] + u[t // group]`` (binary32 add), see the module docstring.
    """
    _check_float(q, "qk_bfp_kivi q", _ACT_DTYPES, 1)
    d = q.shape[0]
    if codes.dim() != 2 or codes.shape[1] != d:
        raise FormatError(f"qk_bfp_kivi codes: expected shape (T, {d}), got {tuple(codes.shape)}")
    t = codes.shape[0]
    ci = _check_kivi(codes, scale, mn, group, t, "qk_bfp_kivi", lambda g: (t // g, d))
    if d % fmt.block:
        raise FormatError(f"qk_bfp_kivi: head dimension {d} must be a multiple of the BFP block {fmt.block}")
    _check_exact_limit(aligned_acc_bits(fmt.block * fmt.mant_max * KIVI_CODE_MAX, d // fmt.block), "qk_bfp_kivi")
    ng = t // group
    qs = q.to(torch.float32) * scale.to(torch.float32)  # [ng, D], exact (11 x 11 significand bits)
    bqs = to_bfp(qs, fmt, "qk_bfp_kivi q*scale")
    rows = ci.reshape(ng, group, d)  # tokens of key group j use the query scaled for j
    acc, e_ref = _bfp_dot_rows(bqs.mant, bqs.exp, rows, torch.zeros(1, dtype=torch.int64), fmt)
    r = exact_to_float32(acc, e_ref).reshape(t)
    u = qk_bfp(q, mn, fmt)  # [ng]
    return r + u.repeat_interleave(group)


def qk_bfp_kivi_ref(q, codes, scale, mn, group: int) -> torch.Tensor:
    """float64 reference with exactly dequantized keys ``c * s + mn``, ``[T]``."""
    k = codes.to(torch.float64) * scale.to(torch.float64).repeat_interleave(group, 0) + mn.to(
        torch.float64
    ).repeat_interleave(group, 0)
    return k @ q.to(torch.float64)


def pv_bfp_kivi(
    p: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    group: int,
    fmt: BFPFormat = KIVI_BFP,
) -> torch.Tensor:
    """Attention output against KIVI values, scale and min folded out of the inner product.

    Parameters
    ----------
    p : float32 (or float16 / bfloat16) ``[T]``
    codes : int ``[T, D]``, 0..255
    scale, mn : float16 ``[T, D//group]`` (values layout: per token, a group spans ``group`` channels)
    group : int, divides ``D``

    Returns
    -------
    float32 ``[D]``: ``r[d] + u[d // group]`` (binary32 add), see the module docstring.
    """
    _check_float(p, "pv_bfp_kivi p", (torch.float32, *_ACT_DTYPES), 1)
    t = p.shape[0]
    if codes.dim() != 2 or codes.shape[0] != t:
        raise FormatError(f"pv_bfp_kivi codes: expected shape ({t}, D), got {tuple(codes.shape)}")
    d = codes.shape[1]
    ci = _check_kivi(codes, scale, mn, group, d, "pv_bfp_kivi", lambda g: (t, d // g))
    ngd = d // group
    nb = -(-t // fmt.block)
    _check_exact_limit(aligned_acc_bits(fmt.block * fmt.mant_max * KIVI_CODE_MAX, max(nb, 1)), "pv_bfp_kivi")
    ps = p.to(torch.float32).unsqueeze(-1) * scale.to(torch.float32)  # [T, ngd], binary32 RNE
    bps = to_bfp(_pad_last(ps.t().contiguous(), fmt.block), fmt, "pv_bfp_kivi p*scale")  # [ngd, Tp]
    cols = _pad_last(ci.t().contiguous(), fmt.block).reshape(ngd, group, -1)  # [ngd, group, Tp]
    acc, e_ref = _bfp_dot_rows(bps.mant, bps.exp, cols, torch.zeros(1, dtype=torch.int64), fmt)
    r = exact_to_float32(acc, e_ref).reshape(d)
    u = pv_bfp(p, mn, fmt)  # [ngd]
    return r + u.repeat_interleave(group)


def pv_bfp_kivi_ref(p, codes, scale, mn, group: int) -> torch.Tensor:
    """float64 reference with exactly dequantized values ``c * s + mn``, ``[D]``."""
    v = codes.to(torch.float64) * scale.to(torch.float64).repeat_interleave(group, 1) + mn.to(
        torch.float64
    ).repeat_interleave(group, 1)
    return p.to(torch.float64) @ v
