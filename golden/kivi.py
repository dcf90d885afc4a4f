"""KIVI KV-cache quantization (2/4/8-bit, asymmetric, fp16 scale and min) and LSB-first packing.

Format
------
A cache tensor ``x`` is float16 ``[T, C]`` (tokens, channels) of one layer and one KV head.

* **Keys** are quantized *per channel*: a group is ``group`` consecutive tokens of one channel.
  ``scale`` and ``mn`` are float16 ``[T // group, C]``; element ``(t, c)`` uses row ``t // group``.
* **Values** are quantized *per token*: a group is ``group`` consecutive channels of one token.
  ``scale`` and ``mn`` are float16 ``[T, C // group]``; element ``(t, c)`` uses column ``c // group``.
* ``codes`` int64 ``[T, C]`` in ``0 .. 2^bits - 1``; ``bits`` in {2, 4, 8}.

Arithmetic (bit-exact; this is what the hardware quantizer and dequant unit compute)
----------------------------------------------------------------------------------
Per group, with ``L = 2^bits - 1``:

1. ``mn = min(x)``, ``mx = max(x)``: exact, stored float16 (``mn`` is one of the inputs).
   **Signed zeros**: IEEE compares ``-0 == +0``, so a group holding both zeros (or only ``-0``)
   has no unique minimum / maximum bit pattern (torch's reductions pick one depending on the
   tensor shape). The rule: a zero ``mn`` or ``mx`` of either sign is replaced by ``+0``
   (bits ``0x0000``) before any use, so the stored ``mn`` is never ``-0``. Then ``mx - mn`` is
   never ``-0`` either (an exact zero difference ``x - x`` is ``+0`` in RNE, and
   ``+0 - +0 = +0``), hence the stored ``scale`` is never ``-0``. Codes do not depend on the
   sign of a zero ``mn``. The hardware quantizer follows the same rule.
2. ``scale = float16(float32(mx) - float32(mn)) / float32(L))``: binary32 subtraction and
   division, each RNE, then RNE to binary16 (stored). No overflow is possible
   (``(mx - mn) / 3 <= 131008 / 3 < 65504``); a tiny range may underflow to ``scale = 0``.
3. Codes use the *stored* scale and min so the hardware can re-derive them:
   ``q = clamp(RNE(float32(float32(x) - float32(mn)) / float32(scale)), 0, L)`` (two binary32 ops,
   RNE each, then RNE to integer and saturation). A group with ``scale == 0`` (constant group,
   or a range that underflowed) gets ``q = 0`` and no division is evaluated.
4. Dequantization: ``x' = float32(q) * float32(scale) + float32(mn)``: the product is exact
   (<= 8 + 11 significant bits), the addition is one binary32 RNE rounding. Not fused.

Error bound (:func:`kivi_error_bound`): ``|x - x'| <= scale/2 + L * ulp16(scale)/2 + eps`` where
the second term covers a scale rounded down to binary16 (the top of the grid may fall short of
``mx``) and ``eps = 2^-15 * scale + 2^-22 * (|x'| + |mn|)`` covers the binary32 roundings.

Packing (:func:`pack_lsb_first`)
-------------------------------
Codes of a row are packed LSB first into int32 words: code ``j`` occupies bits
``bits*j .. bits*j + bits - 1`` of the row's bit stream and bit ``b`` of the stream is bit
``b % 32`` of word ``b // 32``. For bits in {2, 4, 8} a code never crosses a word boundary. Unused
high bits of the last word are zero. In HBM (:meth:`KiviTensor.packed_codes`) each *group* is
packed on its own: keys per (token group, channel) along tokens, values per (token, channel
group) along channels, ``ceil(group * bits / 32)`` words each.

KV cache with a full-precision residual window (:class:`KiviCache`)
-------------------------------------------------------------------
See the class docstring for the exact policy (which tokens stay fp16 and when groups are
quantized) and for the byte accounting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import FormatError, check_finite, check_int_range

__all__ = [
    "KIVI_BITS",
    "DEFAULT_GROUP",
    "DEFAULT_RESIDUAL",
    "WORD_BITS",
    "AXIS_KEYS",
    "AXIS_VALUES",
    "KiviTensor",
    "kivi_quantize_keys",
    "kivi_quantize_values",
    "kivi_dequantize",
    "kivi_error_bound",
    "pack_lsb_first",
    "unpack_lsb_first",
    "unpack_kivi_codes",
    "KiviCache",
]

KIVI_BITS = (2, 4, 8)
"""Supported code widths."""
DEFAULT_GROUP = 32
"""Group size of the KIVI reference configuration (tokens for keys, channels for values)."""
DEFAULT_RESIDUAL = 32
"""Full-precision residual window (recent tokens) of the KIVI reference configuration."""
WORD_BITS = 32
"""Packed codes live in int32 words."""
AXIS_KEYS = "keys"
AXIS_VALUES = "values"
_FP16_BYTES = 2
_WORD_BYTES = WORD_BITS // 8
_FP16_MIN_NORMAL = 2.0**-14
_FP16_MIN_SUBNORMAL = 2.0**-24


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or bits not in KIVI_BITS:
        raise FormatError(f"KIVI bits must be one of {KIVI_BITS}, got {bits!r}")
    return (1 << bits) - 1


def _check_group(group: int) -> None:
    if not isinstance(group, int) or group <= 0:
        raise FormatError(f"KIVI group size must be a positive int, got {group!r}")


def _check_fp16_matrix(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float16:
        raise FormatError(f"{what}: expected dtype torch.float16, got {x.dtype}")
    if x.dim() != 2:
        raise FormatError(f"{what}: expected shape [T, C], got {tuple(x.shape)}")
    check_finite(x, what)


def _group_params_shape(axis: str, t: int, c: int, group: int) -> tuple[int, int]:
    if axis == AXIS_KEYS:
        if t % group:
            raise FormatError(f"KIVI keys: group {group} must divide the token count T={t}")
        return (t // group, c)
    if axis == AXIS_VALUES:
        if c % group:
            raise FormatError(f"KIVI values: group {group} must divide the channel count C={c}")
        return (t, c // group)
    raise FormatError(f"KIVI axis must be {AXIS_KEYS!r} or {AXIS_VALUES!r}, got {axis!r}")


# --------------------------------------------------------------------------------------------
# quantized tensor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KiviTensor:
    """A KIVI-quantized ``[T, C]`` tensor (see the module docstring for the layout).

    Attributes
    ----------
    codes : int64 [T, C], 0 .. 2^bits - 1
    scale : float16, [T//group, C] for keys, [T, C//group] for values; >= 0, finite
    mn : float16, same shape as ``scale``; finite
    bits : int in {2, 4, 8}
    group : int
    axis : "keys" or "values"
    """

    codes: torch.Tensor
    scale: torch.Tensor
    mn: torch.Tensor
    bits: int
    group: int
    axis: str

    def __post_init__(self) -> None:
        levels = _check_bits(self.bits)
        _check_group(self.group)
        if not isinstance(self.codes, torch.Tensor) or self.codes.dim() != 2:
            raise FormatError(f"KiviTensor.codes: expected a 2-D tensor [T, C], got {self.codes!r:.80}")
        if self.codes.dtype != torch.int64:
            raise FormatError(f"KiviTensor.codes: expected dtype torch.int64, got {self.codes.dtype}")
        t, c = self.codes.shape
        shape = _group_params_shape(self.axis, t, c, self.group)
        for name in ("scale", "mn"):
            p = getattr(self, name)
            if not isinstance(p, torch.Tensor) or p.dtype != torch.float16:
                raise FormatError(f"KiviTensor.{name}: expected a float16 tensor, got {getattr(p, 'dtype', p)}")
            if tuple(p.shape) != shape:
                raise FormatError(f"KiviTensor.{name}: expected shape {shape}, got {tuple(p.shape)}")
            check_finite(p, f"KiviTensor.{name}")
        if bool((self.scale < 0).any()):
            raise FormatError("KiviTensor.scale: scales must be >= 0")
        check_int_range(self.codes, 0, levels, f"KiviTensor.codes ({self.bits}-bit)")

    @property
    def tokens(self) -> int:
        """Number of tokens T."""
        return self.codes.shape[0]

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return self.codes.shape[1]

    def per_element(self, p: torch.Tensor) -> torch.Tensor:
        """Broadcast a group parameter (``scale`` or ``mn`` layout) to ``[T, C]``."""
        dim = 0 if self.axis == AXIS_KEYS else 1
        return p.repeat_interleave(self.group, dim=dim)

    def grouped_codes(self) -> torch.Tensor:
        """Codes as ``[rows, cols, group]`` with each group contiguous in the last axis.

        Keys: ``[T//group, C, group]`` (a channel's tokens); values: ``[T, C//group, group]``.
        """
        t, c = self.codes.shape
        if self.axis == AXIS_KEYS:
            return self.codes.reshape(t // self.group, self.group, c).transpose(1, 2)
        return self.codes.reshape(t, c // self.group, self.group)

    def packed_codes(self) -> torch.Tensor:
        """HBM layout of the codes: int32 ``[rows, cols, ceil(group*bits/32)]``, LSB first per group."""
        return pack_lsb_first(self.grouped_codes(), self.bits)

    def stored_bytes(self) -> int:
        """Bytes stored in HBM: packed code words plus the float16 scale and min."""
        words = self.packed_codes().numel()
        return words * _WORD_BYTES + (self.scale.numel() + self.mn.numel()) * _FP16_BYTES


def unpack_kivi_codes(
    words: torch.Tensor, *, bits: int, group: int, axis: str, tokens: int, channels: int
) -> torch.Tensor:
    """Inverse of :meth:`KiviTensor.packed_codes`: int32 words -> int64 codes ``[T, C]``.

    Raises
    ------
    FormatError
        Wrong word-array shape or dtype, non-zero padding bits, bad bits/group/axis.
    """
    _check_bits(bits)
    _check_group(group)
    rows, cols = _group_params_shape(axis, tokens, channels, group)
    n_words = -(-group * bits // WORD_BITS)
    if tuple(words.shape) != (rows, cols, n_words):
        raise FormatError(
            f"packed KIVI {axis}: expected word array {(rows, cols, n_words)}, got {tuple(words.shape)}"
        )
    g = unpack_lsb_first(words, bits, group)
    if axis == AXIS_KEYS:
        return g.transpose(1, 2).reshape(tokens, channels).contiguous()
    return g.reshape(tokens, channels)


# --------------------------------------------------------------------------------------------
# quantize / dequantize
# --------------------------------------------------------------------------------------------


def _positive_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every zero (``-0`` or ``+0``) replaced by ``+0``; other values unchanged.

    torch's ``amin`` / ``amax`` may return either zero of a group holding both (the choice depends
    on the tensor shape); this makes the stored bits deterministic (module docstring, step 1).
    """
    return torch.where(x == 0, torch.zeros_like(x), x)


def _quantize_last(xg: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize float16 groups laid out along the last axis; returns (codes, scale16, mn16)."""
    mn = _positive_zero(xg.amin(dim=-1))
    mx = _positive_zero(xg.amax(dim=-1))
    mn32 = mn.to(torch.float32)
    scale32 = (mx.to(torch.float32) - mn32) / torch.tensor(float(levels), dtype=torch.float32)
    scale = scale32.to(torch.float16)  # RNE, cannot overflow (see module docstring)
    s32 = scale.to(torch.float32)
    live = (s32 > 0).unsqueeze(-1)
    safe = torch.where(live, s32.unsqueeze(-1), torch.ones_like(s32).unsqueeze(-1))
    shifted = xg.to(torch.float32) - mn32.unsqueeze(-1)  # binary32 RNE
    qf = torch.round(shifted / safe)  # binary32 division RNE, then RNE to integer
    q = torch.clamp(qf, 0, levels).to(torch.int64)
    q = torch.where(live, q, torch.zeros_like(q))
    return q, scale, mn


def kivi_quantize_keys(k: torch.Tensor, bits: int, group: int = DEFAULT_GROUP) -> KiviTensor:
    """Quantize keys per channel, each group spanning ``group`` consecutive tokens.

    Parameters
    ----------
    k : float16 [T, C], finite; ``T % group == 0``.
    bits : int in {2, 4, 8}
    group : int > 0

    Returns
    -------
    KiviTensor
        ``axis="keys"``; ``scale``/``mn`` float16 [T//group, C]. Arithmetic in the module docstring.

    Raises
    ------
    FormatError
        Not float16 ``[T, C]``, bad bits, group not dividing T.
    NonFiniteError
        NaN or Inf in ``k``.
    """
    levels = _check_bits(bits)
    _check_group(group)
    _check_fp16_matrix(k, "KIVI keys")
    t, c = k.shape
    _group_params_shape(AXIS_KEYS, t, c, group)
    xg = k.reshape(t // group, group, c).transpose(1, 2)  # [T/G, C, G]
    q, scale, mn = _quantize_last(xg, levels)
    codes = q.transpose(1, 2).reshape(t, c).contiguous()
    return KiviTensor(codes, scale, mn, bits, group, AXIS_KEYS)


def kivi_quantize_values(v: torch.Tensor, bits: int, group: int = DEFAULT_GROUP) -> KiviTensor:
    """Quantize values per token, each group spanning ``group`` consecutive channels.

    Parameters
    ----------
    v : float16 [T, C], finite; ``C % group == 0``.
    bits : int in {2, 4, 8}
    group : int > 0

    Returns
    -------
    KiviTensor
        ``axis="values"``; ``scale``/``mn`` float16 [T, C//group].

    Raises
    ------
    FormatError
        Not float16 ``[T, C]``, bad bits, group not dividing C.
    NonFiniteError
        NaN or Inf in ``v``.
    """
    levels = _check_bits(bits)
    _check_group(group)
    _check_fp16_matrix(v, "KIVI values")
    t, c = v.shape
    _group_params_shape(AXIS_VALUES, t, c, group)
    q, scale, mn = _quantize_last(v.reshape(t, c // group, group), levels)
    return KiviTensor(q.reshape(t, c), scale, mn, bits, group, AXIS_VALUES)


def kivi_dequantize(t: KiviTensor) -> torch.Tensor:
    """Dequantize: ``x' = float32(q) * float32(scale) + float32(mn)`` -> float32 [T, C].

    The product is exact; the addition is one binary32 RNE rounding (no fused multiply-add).
    """
    s = t.per_element(t.scale).to(torch.float32)
    m = t.per_element(t.mn).to(torch.float32)
    return t.codes.to(torch.float32) * s + m


def _ulp16(s: torch.Tensor) -> torch.Tensor:
    """Spacing of binary16 numbers at ``s >= 0`` (float64); ``2^-24`` in the subnormal range."""
    s64 = s.to(torch.float64)
    _, e = torch.frexp(s64)  # s = m * 2^e, m in [0.5, 1)
    normal = torch.ldexp(torch.ones_like(s64), (e - 11).to(torch.int64).to(torch.float64))
    return torch.where(s64 < _FP16_MIN_NORMAL, torch.full_like(s64, _FP16_MIN_SUBNORMAL), normal)


def kivi_error_bound(t: KiviTensor) -> torch.Tensor:
    """Documented per-element bound on ``|x - kivi_dequantize(t)|`` (float64 [T, C]).

    ``scale/2 + L * ulp16(scale)/2 + 2^-15 * scale + 2^-22 * (|x'| + |mn|)`` with ``L = 2^bits - 1``:
    half a grid step, the shortfall of the grid top when the scale was rounded down to binary16
    (this term also bounds the whole range of a group whose scale underflowed to 0), and the
    binary32 roundings of ``x - mn``, of the division and of the final addition.
    """
    levels = (1 << t.bits) - 1
    s = t.per_element(t.scale).to(torch.float64)
    m = t.per_element(t.mn).to(torch.float64).abs()
    xd = kivi_dequantize(t).to(torch.float64).abs()
    return s / 2 + levels * _ulp16(s) / 2 + s * 2.0**-15 + (xd + m) * 2.0**-22


# --------------------------------------------------------------------------------------------
# LSB-first packing
# --------------------------------------------------------------------------------------------


def _codes_per_word(bits: int) -> int:
    _check_bits(bits)
    return WORD_BITS // bits


def pack_lsb_first(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes LSB first into int32 words along the last axis.

    Parameters
    ----------
    codes : integer tensor [..., n], values 0 .. 2^bits - 1
    bits : int in {2, 4, 8}

    Returns
    -------
    int32 [..., ceil(n * bits / 32)]
        Code ``j`` at bits ``bits*j ..`` of the row stream; word ``w`` holds stream bits
        ``32w .. 32w+31`` (two's complement in int32: a set bit 31 makes the word negative).
        Padding bits are zero.

    Raises
    ------
    FormatError
        Bad bits, non-integer codes, codes out of range.
    """
    per = _codes_per_word(bits)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise FormatError(f"pack_lsb_first: expected an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
    if codes.dim() < 1:
        raise FormatError("pack_lsb_first: codes need at least one dimension")
    check_int_range(codes, 0, (1 << bits) - 1, f"pack_lsb_first codes ({bits}-bit)")
    n = codes.shape[-1]
    n_words = -(-n * bits // WORD_BITS)
    c = codes.to(torch.int64)
    pad = n_words * per - n
    if pad:
        c = torch.cat([c, torch.zeros(*c.shape[:-1], pad, dtype=torch.int64)], dim=-1)
    c = c.reshape(*c.shape[:-1], n_words, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (c << shifts).sum(dim=-1)  # disjoint bit fields: exact
    words = torch.where(words >= (1 << 31), words - (1 << 32), words)
    return words.to(torch.int32)


def unpack_lsb_first(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_lsb_first`: int32 ``[..., ceil(n*bits/32)]`` -> int64 ``[..., n]``.

    Raises
    ------
    FormatError
        Bad bits, words not int32, wrong word count, non-zero padding bits.
    """
    per = _codes_per_word(bits)
    if not isinstance(words, torch.Tensor) or words.dtype != torch.int32:
        raise FormatError(f"unpack_lsb_first: expected int32 words, got {getattr(words, 'dtype', type(words))}")
    n_words = -(-n * bits // WORD_BITS)
    if words.dim() < 1 or words.shape[-1] != n_words:
        raise FormatError(
            f"unpack_lsb_first: {n} codes of {bits} bits need {n_words} words in the last axis, "
            f"got shape {tuple(words.shape)}"
        )
    w = words.to(torch.int64) & ((1 << WORD_BITS) - 1)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    codes = ((w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(*words.shape[:-1], n_words * per)
    if bool((codes[..., n:] != 0).any()):
        raise FormatError("unpack_lsb_first: padding bits beyond the last code must be zero")
    return codes[..., :n].contiguous()


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _concat(parts: list[KiviTensor], axis: str, bits: int, group: int, channels: int) -> KiviTensor | None:
    if not parts:
        return None
    return KiviTensor(
        torch.cat([p.codes for p in parts], dim=0),
        torch.cat([p.scale for p in parts], dim=0),
        torch.cat([p.mn for p in parts], dim=0),
        bits,
        group,
        axis,
    )


class KiviCache:
    """KV cache of one layer and one KV head: KIVI-quantized history plus an fp16 residual window.

    Policy (exact)
    --------------
    Tokens arrive one at a time through :meth:`append`. With residual window ``R`` (``residual``)
    and key group ``G`` (``group``):

    * **Keys**: new keys enter the fp16 key residual. As soon as it holds ``R + G`` tokens, its
      oldest ``G`` tokens are quantized as one per-channel group (:func:`kivi_quantize_keys`) and
      leave it. The key residual therefore holds ``T`` tokens while ``T < R + G`` and then between
      ``R`` and ``R + G - 1`` tokens: the most recent ones, which are never quantized early.
    * **Values**: new values enter the fp16 value residual. As soon as it holds ``R + 1`` tokens, the
      oldest is quantized per token (:func:`kivi_quantize_values`, groups of ``value_group``
      channels). The value residual holds the ``min(T, R)`` most recent tokens.

    Quantized tokens are always the oldest, so :meth:`materialize` is quantized part followed by
    residual part, in token order. Quantizing a group at a time gives exactly the same codes as
    quantizing the whole history at once (the groups are independent).

    Byte accounting (:meth:`stored_bytes`): packed code words (:meth:`KiviTensor.packed_codes`)
    + float16 scale and min of every quantized group + 2 bytes per residual element, keys and
    values together. :meth:`dense_fp16_bytes` is ``2 * T * C * 2`` (fp16 keys and values).

    Parameters
    ----------
    channels : int
        C (head dim), > 0; ``value_group`` must divide it.
    bits : int in {2, 4, 8}
    group : int
        Key group in tokens (default 32).
    residual : int
        R >= 0, fp16 recent-token window (default 32).
    value_group : int, optional
        Value group in channels (default ``group``).
    """

    def __init__(
        self,
        channels: int,
        *,
        bits: int = 2,
        group: int = DEFAULT_GROUP,
        residual: int = DEFAULT_RESIDUAL,
        value_group: int | None = None,
    ) -> None:
        _check_bits(bits)
        _check_group(group)
        value_group = group if value_group is None else value_group
        _check_group(value_group)
        if not isinstance(channels, int) or channels <= 0:
            raise FormatError(f"KiviCache: channels must be a positive int, got {channels!r}")
        if channels % value_group:
            raise FormatError(f"KiviCache: value group {value_group} must divide channels={channels}")
        if not isinstance(residual, int) or residual < 0:
            raise FormatError(f"KiviCache: residual window must be an int >= 0, got {residual!r}")
        self.channels = channels
        self.bits = bits
        self.group = group
        self.value_group = value_group
        self.residual = residual
        self._key_groups: list[KiviTensor] = []
        self._value_rows: list[KiviTensor] = []
        self._key_res: list[torch.Tensor] = []
        self._value_res: list[torch.Tensor] = []

    # -- state ------------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        """Tokens appended so far."""
        return len(self._value_rows) + len(self._value_res)

    def __len__(self) -> int:
        return self.tokens

    def _check_row(self, row: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(row, torch.Tensor) or row.dtype != torch.float16:
            raise FormatError(f"KiviCache {what}: expected a float16 tensor, got {getattr(row, 'dtype', type(row))}")
        if tuple(row.shape) != (self.channels,):
            raise FormatError(f"KiviCache {what}: expected shape ({self.channels},), got {tuple(row.shape)}")
        check_finite(row, f"KiviCache {what}")
        return row.clone()

    def append(self, k_row: torch.Tensor, v_row: torch.Tensor) -> None:
        """Append one token's key and value (float16 ``[C]`` each) and apply the policy.

        Raises
        ------
        FormatError
            Wrong dtype or shape. Nothing is appended.
        NonFiniteError
            NaN or Inf in either row. Nothing is appended.
        """
        k_row = self._check_row(k_row, "key row")
        v_row = self._check_row(v_row, "value row")
        self._key_res.append(k_row)
        self._value_res.append(v_row)
        if len(self._key_res) >= self.residual + self.group:
            block = torch.stack(self._key_res[: self.group])
            self._key_groups.append(kivi_quantize_keys(block, self.bits, self.group))
            del self._key_res[: self.group]
        if len(self._value_res) > self.residual:
            oldest = self._value_res.pop(0).unsqueeze(0)
            self._value_rows.append(kivi_quantize_values(oldest, self.bits, self.value_group))

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append ``T`` tokens: float16 ``[T, C]`` keys and values, one :meth:`append` per row."""
        _check_fp16_matrix(k, "KiviCache keys")
        _check_fp16_matrix(v, "KiviCache values")
        if k.shape != v.shape:
            raise FormatError(f"KiviCache.extend: keys {tuple(k.shape)} and values {tuple(v.shape)} differ")
        for t in range(k.shape[0]):
            self.append(k[t], v[t])

    # -- views ------------------------------------------------------------------------------

    def quantized_keys(self) -> KiviTensor | None:
        """Quantized key history (oldest tokens), ``axis="keys"``, or None if empty."""
        return _concat(self._key_groups, AXIS_KEYS, self.bits, self.group, self.channels)

    def quantized_values(self) -> KiviTensor | None:
        """Quantized value history (oldest tokens), ``axis="values"``, or None if empty."""
        return _concat(self._value_rows, AXIS_VALUES, self.bits, self.value_group, self.channels)

    def residual_keys(self) -> torch.Tensor:
        """fp16 key residual ``[Rk, C]`` (most recent tokens, oldest first)."""
        return self._stack(self._key_res)

    def residual_values(self) -> torch.Tensor:
        """fp16 value residual ``[Rv, C]`` (most recent tokens, oldest first)."""
        return self._stack(self._value_res)

    def _stack(self, rows: list[torch.Tensor]) -> torch.Tensor:
        if not rows:
            return torch.zeros(0, self.channels, dtype=torch.float16)
        return torch.stack(rows)

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as the attention sees them: float32 ``[T, C]`` each, token order.

        Quantized history dequantized with :func:`kivi_dequantize`, then the fp16 residual
        converted exactly to float32.
        """
        out = []
        for q, res in ((self.quantized_keys(), self._key_res), (self.quantized_values(), self._value_res)):
            parts = [] if q is None else [kivi_dequantize(q)]
            parts.append(self._stack(res).to(torch.float32))
            out.append(torch.cat(parts, dim=0))
        return out[0], out[1]

    # -- bytes ------------------------------------------------------------------------------

    def stored_bytes(self) -> int:
        """Bytes of the cache as stored: packed codes, fp16 scale/min, fp16 residual (K and V)."""
        total = sum(t.stored_bytes() for t in self._key_groups)
        total += sum(t.stored_bytes() for t in self._value_rows)
        total += (len(self._key_res) + len(self._value_res)) * self.channels * _FP16_BYTES
        return total

    def dense_fp16_bytes(self) -> int:
        """Bytes of the same K and V stored densely in fp16: ``2 * T * C * 2``."""
        return 2 * self.tokens * self.channels * _FP16_BYTES
