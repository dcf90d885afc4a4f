"""Ternary table-lookup matmul (TLMM): 5-bit weight keys, 14-entry activation tables, key packing.

This module defines, bit for bit, what the TLMM engine computes and how its weight keys are laid
out in memory. Everything here is integer arithmetic (``torch.int64``); results are exact and do
not depend on summation order.

Weights and groups
------------------
Ternary weights ``wq`` are ``int8 [N, K]`` with values in {-1, 0, 1}: ``N`` output rows, ``K``
inputs. Along ``K`` they are cut into ``G = ceil(K / 3)`` groups of :data:`GROUP` = 3; group ``g``
is ``wq[:, 3g : 3g+3]``. If ``K % 3 != 0`` the tail group is padded with zero weights, and the
activation vector is padded with zeros the same way, so padding never changes a result.

Key format (5 bits per 3 weights, 1.67 bits/weight)
---------------------------------------------------
For a group ``(w0, w1, w2)`` (``w0`` is the weight at the LOWEST ``k`` of the group)::

    v    = 9*w0 + 3*w1 + w2            in [-13, 13]
    sign = 1 if v < 0 else 0
    idx  = |v|                          in [0, 13]   (4 bits)
    key  = (sign << 4) | idx            in [0, 31]   (5 bits: bit 4 = sign, bits 3..0 = idx)

``v = 0`` encodes as key 0. Key 16 (sign 1, idx 0) is legal on input and decodes to the all-zero
group as well (the table entry is 0 and its negation is 0). Keys with ``idx`` 14 or 15 (keys 14,
15, 30, 31) do not exist and are rejected with :class:`FormatError`.

Because balanced ternary is unique, every ``idx`` in 0..13 has exactly one digit triple
``(d0, d1, d2)`` with ``9*d0 + 3*d1 + d2 = idx`` (see :data:`PATTERN_DIGITS`), and a negative
``v`` is the digit-wise negation of the triple of ``|v|``. E.g. ``(1, -1, 0)`` -> ``v = 6`` ->
key 6; ``(-1, 1, 0)`` -> ``v = -6`` -> key ``16 | 6 = 22``.

Table
-----
For one activation group ``(a0, a1, a2)`` (INT8, zero padded) the engine builds a 14-entry table::

    T[idx] = d0*a0 + d1*a1 + d2*a2      where (d0, d1, d2) = PATTERN_DIGITS[idx],  T[0] = 0

and a lane holding key ``(sign, idx)`` contributes ``-T[idx]`` if ``sign`` else ``T[idx]``.
For INT8 activations ``|T[idx]| <= 3 * 128 = 384`` (the extreme is all three weights -1 or +1
against three -128 activations), so entries fit :data:`ENTRY_BITS` = 10 bits signed, and the
negated entry fits as well.

Accumulator bound
-----------------
One output accumulates ``G`` signed entries, so ``|y| <= 384 * ceil(K / 3)``;
:func:`acc_bits` gives the signed two's-complement width that holds it. Examples:
K = 2560 -> 854 groups -> |y| <= 327,936 -> 20 bits; K = 6912 -> 2304 groups ->
|y| <= 884,736 -> 21 bits. (Excluding -128 from activations, as BitNet's quantizer does in practice,
lowers the bound to 381 * G but not the width for these K.)

Beat packing (memory layout of keys for the TLMM engine)
--------------------------------------------------------
A *beat* is what the engine consumes in one cycle: ``lanes`` consecutive output rows times
``tables`` consecutive groups (one table per activation group, each table shared by all lanes).

* Rows are padded to a multiple of ``lanes`` and groups to a multiple of ``tables`` with key 0.
* Beat order: row tile ``r`` outer (``r = 0 .. ceil(N/lanes) - 1``), group tile ``c`` inner
  (``c = 0 .. ceil(G/tables) - 1``): the engine sweeps all of ``K`` for ``lanes`` outputs, then moves
  to the next ``lanes`` outputs. Beat number ``b = r * ceil(G/tables) + c``.
* Inside beat ``(r, c)`` the key for lane ``p`` and table ``t`` is ``keys[r*lanes + p, c*tables + t]``
  and occupies beat bits ``[5*(p*tables + t), 5*(p*tables + t) + 5)``, key LSB at the lowest bit.
* Bit order: beat bit ``i`` is bit ``i % 8`` of byte ``i // 8`` (little-endian bits and bytes), i.e.
  the beat read as one little-endian integer of ``beat_bits`` bits. Bits at and above
  ``5*lanes*tables`` are zero. ``beat_bits`` must be a multiple of 8 and ``>= 5*lanes*tables``.
* Beat ``(r, c)`` uses activation groups ``c*tables .. c*tables + tables - 1``, i.e. activations
  ``xq[3*c*tables : 3*(c+1)*tables]`` (zero padded past ``K``); see :func:`beat_activation_groups`.

Worked example: 2 lanes x 2 tables, ``beat_bits = 24``, a toy layer ``N = 2``, ``K = 6``::

    row 0: ( 1, 1, 1 | -1, 0, 0 )  ->  v = 13, -9   ->  keys 13 (0b01101), 25 (0b11001)
    row 1: ( 0, 0, 1 |  0,-1, 1 )  ->  v =  1, -2   ->  keys  1 (0b00001), 18 (0b10010)

    slot (p, t):  (0,0)=13 at bits 0..4, (0,1)=25 at bits 5..9,
                  (1,0)= 1 at bits 10..14, (1,1)=18 at bits 15..19, bits 20..23 = 0
    beat integer = 13 | 25<<5 | 1<<10 | 18<<15 = 0x09072D
    beat bytes   = [0x2D, 0x07, 0x09]

(this exact vector is a unit test).
"""

from __future__ import annotations

import math

import torch

from .errors import FormatError, check_int_range

__all__ = [
    "GROUP",
    "KEY_BITS",
    "IDX_BITS",
    "SIGN_SHIFT",
    "IDX_MASK",
    "TABLE_ENTRIES",
    "MAX_IDX",
    "ENTRY_BITS",
    "ENTRY_MAX_ABS",
    "NEG_ZERO_KEY",
    "PATTERN_DIGITS",
    "num_groups",
    "encode_keys",
    "decode_keys",
    "build_tables",
    "lookup",
    "tlmm_matvec",
    "acc_bound",
    "acc_bits",
    "beat_grid",
    "beat_activation_groups",
    "beat_activation_slice",
    "pack_keys",
    "unpack_keys",
    "tlmm_linear",
]

# ---------------------------------------------------------------------------------------------
# Format constants (defined once; the hardware generator and the compiler import these).
# ---------------------------------------------------------------------------------------------
GROUP = 3
"""Weights per key (activations per table)."""
KEY_BITS = 5
"""Bits per key: 4-bit index + sign."""
IDX_BITS = 4
"""Bits of the table index inside a key (key bits 3..0)."""
SIGN_SHIFT = 4
"""Bit position of the sign inside a key."""
IDX_MASK = (1 << IDX_BITS) - 1
"""Mask of the index field of a key."""
TABLE_ENTRIES = 14
"""Entries per table: pattern sums for idx 0..13 (T[0] = 0)."""
MAX_IDX = TABLE_ENTRIES - 1
"""Largest legal index, 13 = 9 + 3 + 1."""
ENTRY_MAX_ABS = GROUP * 128
"""Largest |table entry| for INT8 activations: 3 * 128 = 384."""
ENTRY_BITS = 10
"""Signed width of a table entry (and of its negation): -512..511 holds +-384."""
NEG_ZERO_KEY = 1 << SIGN_SHIFT
"""Key 16: sign set, idx 0. Legal on input, decodes to the zero group; never produced by encode."""

_INT8_MIN, _INT8_MAX = -128, 127


def _balanced_ternary_digits() -> torch.Tensor:
    """Digit triples (d0, d1, d2) in {-1,0,1} with 9*d0 + 3*d1 + d2 = idx, for idx 0..13."""
    rows = []
    for idx in range(TABLE_ENTRIES):
        found = [
            (d0, d1, d2)
            for d0 in (-1, 0, 1)
            for d1 in (-1, 0, 1)
            for d2 in (-1, 0, 1)
            if 9 * d0 + 3 * d1 + d2 == idx
        ]
        assert len(found) == 1  # balanced ternary is unique
        rows.append(found[0])
    return torch.tensor(rows, dtype=torch.int64)


PATTERN_DIGITS = _balanced_ternary_digits()
"""``int64 [14, 3]``: row ``idx`` is the weight triple (w0, w1, w2) that table entry ``idx`` sums."""

assert ENTRY_MAX_ABS <= (1 << (ENTRY_BITS - 1)) - 1


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------
def _require_int_tensor(t: torch.Tensor, what: str, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise FormatError(f"{what}: expected an integer tensor, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise FormatError(f"{what}: expected {ndim} dimensions, got shape {tuple(t.shape)}")


def _require_pos_int(v: int, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise FormatError(f"{what}: expected a positive int, got {v!r}")


def _check_keys(keys: torch.Tensor, what: str = "keys") -> torch.Tensor:
    """Validate a key tensor ``[N, G]`` and return it as int64."""
    _require_int_tensor(keys, what, ndim=2)
    k64 = keys.to(torch.int64)
    check_int_range(k64, 0, (1 << KEY_BITS) - 1, what)
    bad = (k64 & IDX_MASK) > MAX_IDX
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise FormatError(
            f"{what}: index field must be 0..{MAX_IDX}, found key {int(k64[pos])} "
            f"(idx {int(k64[pos]) & IDX_MASK}) at {pos}"
        )
    return k64


def _check_activations(xq: torch.Tensor, what: str = "xq") -> torch.Tensor:
    """Validate INT8 activations ``[..., K]`` (K >= 1) and return them as int64."""
    _require_int_tensor(xq, what)
    if xq.dim() < 1 or xq.shape[-1] < 1:
        raise FormatError(f"{what}: expected shape [..., K] with K >= 1, got {tuple(xq.shape)}")
    x64 = xq.to(torch.int64)
    check_int_range(x64, _INT8_MIN, _INT8_MAX, what)
    return x64


def num_groups(k: int) -> int:
    """Number of 3-weight groups along an input dimension of ``k``: ``ceil(k / 3)``.

    Parameters
    ----------
    k : int
        Input dimension, ``>= 1``.

    Returns
    -------
    int
        ``G = ceil(k / GROUP)``.

    Raises
    ------
    FormatError
        If ``k`` is not a positive int.
    """
    _require_pos_int(k, "k")
    return -(-k // GROUP)


def _pad_last(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the last dimension of ``t`` up to ``length`` (no-op if already that long)."""
    extra = length - t.shape[-1]
    if extra == 0:
        return t
    return torch.nn.functional.pad(t, (0, extra))


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def encode_keys(wq: torch.Tensor) -> torch.Tensor:
    """Encode ternary weights into 5-bit keys, one per group of 3 weights along K.

    Parameters
    ----------
    wq : Tensor, integer dtype (normally int8), shape [N, K]
        Ternary weights in {-1, 0, 1}. ``K`` need not be a multiple of 3: the tail group is
        padded with zero weights.

    Returns
    -------
    Tensor, uint8, shape [N, G] with G = ceil(K / 3)
        ``key = ((v < 0) << 4) | |v|`` with ``v = 9*w0 + 3*w1 + w2`` (``w0`` at the lowest k).
        Zero groups give key 0 (never 16).

    Raises
    ------
    FormatError
        If ``wq`` is not a 2-D integer tensor with ``K >= 1`` or holds values outside {-1, 0, 1}.
    """
    _require_int_tensor(wq, "wq", ndim=2)
    n, k = wq.shape
    if k < 1:
        raise FormatError(f"wq: expected K >= 1, got shape {tuple(wq.shape)}")
    w = wq.to(torch.int64)
    check_int_range(w, -1, 1, "wq (ternary weights)")
    g = num_groups(k)
    w = _pad_last(w, GROUP * g).reshape(n, g, GROUP)
    v = 9 * w[..., 0] + 3 * w[..., 1] + w[..., 2]
    key = ((v < 0).to(torch.int64) << SIGN_SHIFT) | v.abs()
    return key.to(torch.uint8)


def decode_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Decode 5-bit keys back into ternary weights.

    Parameters
    ----------
    keys : Tensor, integer dtype (normally uint8), shape [N, G]
        Keys in 0..31 with index field 0..13 (key 16 decodes to the zero group).
    k : int
        Input dimension ``K`` of the layer; ``G`` must equal ``ceil(k / 3)``.

    Returns
    -------
    Tensor, int8, shape [N, k]
        Weights in {-1, 0, 1}; the digits of the tail padding are dropped.

    Raises
    ------
    FormatError
        If the keys are malformed (range, idx 14/15, not 2-D), ``G != ceil(k/3)``, or a padding
        position of the tail group (k >= K) holds a non-zero weight (such a key cannot come from
        :func:`encode_keys` of an ``[N, k]`` matrix).
    """
    k64 = _check_keys(keys)
    g = num_groups(k)
    if k64.shape[1] != g:
        raise FormatError(f"keys: K={k} needs ceil(K/3)={g} groups, got {k64.shape[1]}")
    sign = 1 - 2 * ((k64 >> SIGN_SHIFT) & 1)  # +1 or -1
    digits = PATTERN_DIGITS[k64 & IDX_MASK] * sign.unsqueeze(-1)  # [N, G, 3]
    w = digits.reshape(k64.shape[0], g * GROUP)
    if bool((w[:, k:] != 0).any()):
        raise FormatError(
            f"keys: tail group has non-zero weights at padding positions k >= {k} "
            f"(K={k} is not a multiple of {GROUP})"
        )
    return w[:, :k].to(torch.int8)


# ---------------------------------------------------------------------------------------------
# Tables and the table-lookup matmul
# ---------------------------------------------------------------------------------------------
def build_tables(xq: torch.Tensor) -> torch.Tensor:
    """Build the 14-entry pattern-sum table of every activation group.

    Parameters
    ----------
    xq : Tensor, integer dtype (normally int8), shape [..., K]
        INT8 activations in [-128, 127]; zero padded to ``3 * ceil(K/3)``.

    Returns
    -------
    Tensor, int32, shape [..., G, 14]
        ``T[..., g, idx] = sum_j PATTERN_DIGITS[idx, j] * xq[..., 3g + j]`` (exact integer sums;
        ``|T| <= 384``, 10-bit signed). ``T[..., g, 0] = 0``.

    Raises
    ------
    FormatError
        If ``xq`` is not an integer tensor ``[..., K]`` with ``K >= 1`` in the INT8 range.
    """
    x = _check_activations(xq)
    g = num_groups(x.shape[-1])
    a = _pad_last(x, GROUP * g).reshape(*x.shape[:-1], g, 1, GROUP)
    # Element-wise products and a 3-term integer sum: exact, order independent.
    tables = (a * PATTERN_DIGITS).sum(dim=-1)
    return tables.to(torch.int32)


def lookup(tables: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """One lane's table read with conditional negate: ``-T[idx]`` if sign else ``T[idx]``.

    Parameters
    ----------
    tables : Tensor, integer, shape [..., 14]
        Tables as built by :func:`build_tables`.
    key : Tensor, integer, shape [...] broadcastable to ``tables.shape[:-1]``
        Keys (validated: 0..31, idx <= 13).

    Returns
    -------
    Tensor, int64
        Signed contribution of each key (exact).
    """
    _require_int_tensor(tables, "tables")
    _require_int_tensor(key, "key")
    k64 = key.to(torch.int64)
    check_int_range(k64, 0, (1 << KEY_BITS) - 1, "key")
    if bool(((k64 & IDX_MASK) > MAX_IDX).any()):
        raise FormatError(f"key: index field must be 0..{MAX_IDX}")
    if tables.dim() < 1 or tables.shape[-1] != TABLE_ENTRIES:
        raise FormatError(f"tables: expected shape [..., {TABLE_ENTRIES}], got {tuple(tables.shape)}")
    shape = torch.broadcast_shapes(tables.shape[:-1], k64.shape)
    t = tables.to(torch.int64).expand(*shape, TABLE_ENTRIES)
    k64 = k64.expand(shape)
    entry = torch.gather(t, -1, (k64 & IDX_MASK).unsqueeze(-1)).squeeze(-1)
    neg = ((k64 >> SIGN_SHIFT) & 1).bool()
    return torch.where(neg, -entry, entry)


# Elements of the [tokens, rows, groups] gather done at once; bounds the temporary memory
# (~8 bytes each) for large layers without a Python loop per row.
_GATHER_CHUNK = 1 << 23


def tlmm_matvec(keys: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Ternary matrix-vector product through table lookup, as the TLMM engine computes it.

    For every token: build the tables of its activation groups, let every output row look up the
    entry of each of its keys, negate where the key's sign is set, and accumulate exactly.

    Parameters
    ----------
    keys : Tensor, integer dtype (normally uint8), shape [N, G]
        Weight keys, ``G = ceil(K / 3)``.
    xq : Tensor, integer dtype (normally int8), shape [..., K]
        INT8 activations (one or more tokens).

    Returns
    -------
    Tensor, int64, shape [..., N]
        ``y[..., n] = sum_g (+-) T[..., g, idx[n, g]]``; equals ``xq @ decode_keys(keys, K).T`` in
        exact integer arithmetic. ``|y| <= 384 * G`` (see :func:`acc_bits`); no rounding, no
        saturation is needed.

    Raises
    ------
    FormatError
        Malformed keys or activations, or ``G != ceil(K/3)``.
    """
    k64 = _check_keys(keys)
    x = _check_activations(xq)
    n, g = k64.shape
    if g != num_groups(x.shape[-1]):
        raise FormatError(
            f"keys: activations have K={x.shape[-1]} -> {num_groups(x.shape[-1])} groups, "
            f"keys have {g}"
        )
    lead = x.shape[:-1]
    tables = build_tables(x).to(torch.int64).reshape(-1, g * TABLE_ENTRIES)  # [B, G*14]
    b = tables.shape[0]
    # Flat position of entry idx of group gi in a token's table row.
    flat = torch.arange(g, dtype=torch.int64) * TABLE_ENTRIES + (k64 & IDX_MASK)  # [N, G]
    sign = 1 - 2 * ((k64 >> SIGN_SHIFT) & 1)  # [N, G], +1 / -1
    out = torch.empty(b, n, dtype=torch.int64)
    rows_per_chunk = max(1, _GATHER_CHUNK // max(1, b * g))
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        entries = tables[:, flat[r0:r1]]  # [B, rows, G]
        out[:, r0:r1] = (entries * sign[r0:r1]).sum(dim=-1)  # integer: exact
    return out.reshape(*lead, n)


def acc_bound(max_k: int) -> int:
    """Largest possible ``|y|`` of :func:`tlmm_matvec` for ``K <= max_k``: ``384 * ceil(max_k/3)``.

    Parameters
    ----------
    max_k : int
        Largest input dimension, ``>= 1``.

    Returns
    -------
    int
        ``ENTRY_MAX_ABS * ceil(max_k / 3)``.
    """
    return ENTRY_MAX_ABS * num_groups(max_k)


def acc_bits(max_k: int) -> int:
    """Signed two's-complement accumulator width for any layer with ``K <= max_k``.

    Parameters
    ----------
    max_k : int
        Largest input dimension, ``>= 1``.

    Returns
    -------
    int
        Smallest ``b`` with ``2**(b-1) - 1 >= 384 * ceil(max_k / 3)`` (the bound is symmetric, so
        the negative side fits too). K=2560 -> 20, K=6912 -> 21.

    Raises
    ------
    FormatError
        If ``max_k`` is not a positive int.
    """
    return acc_bound(max_k).bit_length() + 1


# ---------------------------------------------------------------------------------------------
# Beat packing
# ---------------------------------------------------------------------------------------------
def _check_beat_geometry(tables: int, lanes: int, beat_bits: int | None = None) -> None:
    _require_pos_int(tables, "tables")
    _require_pos_int(lanes, "lanes")
    if beat_bits is not None:
        _require_pos_int(beat_bits, "beat_bits")
        need = KEY_BITS * lanes * tables
        if beat_bits % 8 != 0 or beat_bits < need:
            raise FormatError(
                f"beat_bits: must be a multiple of 8 and >= {KEY_BITS}*lanes*tables = {need} "
                f"(lanes={lanes}, tables={tables}), got {beat_bits}"
            )


def beat_grid(n: int, g: int, tables: int, lanes: int) -> tuple[int, int]:
    """Tile counts of the beat stream: ``(ceil(n / lanes), ceil(g / tables))``.

    Parameters
    ----------
    n, g : int
        Output rows and key groups of the layer (``>= 1``).
    tables, lanes : int
        Engine geometry (``>= 1``).

    Returns
    -------
    (int, int)
        Row tiles ``R`` and group tiles ``C``; the stream has ``R * C`` beats, beat
        ``b = r * C + c``.
    """
    _require_pos_int(n, "n")
    _require_pos_int(g, "g")
    _check_beat_geometry(tables, lanes)
    return -(-n // lanes), -(-g // tables)


def beat_activation_groups(c: int, tables: int) -> range:
    """Activation groups used by any beat of group tile ``c``: ``c*tables .. c*tables+tables-1``.

    Groups at or past ``G`` are padding (key 0 against zero activations).
    """
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise FormatError(f"c: expected a non-negative int, got {c!r}")
    _require_pos_int(tables, "tables")
    return range(c * tables, (c + 1) * tables)


def beat_activation_slice(c: int, tables: int) -> slice:
    """Activations used by group tile ``c``: ``xq[3*c*tables : 3*(c+1)*tables]`` (zero padded)."""
    groups = beat_activation_groups(c, tables)
    return slice(GROUP * groups.start, GROUP * groups.stop)


def pack_keys(keys: torch.Tensor, tables: int, lanes: int, beat_bits: int) -> torch.Tensor:
    """Pack keys into the beat stream the TLMM engine reads (layout in the module docstring).

    Parameters
    ----------
    keys : Tensor, integer dtype (normally uint8), shape [N, G]
        Valid keys (0..31, idx <= 13).
    tables : int
        Groups (tables) per beat.
    lanes : int
        Output rows per beat.
    beat_bits : int
        Beat width; multiple of 8 and ``>= 5 * lanes * tables``.

    Returns
    -------
    Tensor, uint8, shape [ceil(N/lanes) * ceil(G/tables), beat_bits // 8]
        Beats in stream order (row tile outer, group tile inner), little-endian bit/byte order,
        padding keys 0, spare bits 0.

    Raises
    ------
    FormatError
        Malformed keys or geometry.
    """
    k64 = _check_keys(keys)
    _check_beat_geometry(tables, lanes, beat_bits)
    n, g = k64.shape
    if n < 1 or g < 1:
        raise FormatError(f"keys: expected N >= 1 and G >= 1, got shape {tuple(k64.shape)}")
    r_tiles, c_tiles = beat_grid(n, g, tables, lanes)
    padded = torch.zeros(r_tiles * lanes, c_tiles * tables, dtype=torch.int64)
    padded[:n, :g] = k64
    # [R, lanes, C, tables] -> [R, C, lanes, tables]: slot s = p*tables + t within a beat.
    slots = padded.reshape(r_tiles, lanes, c_tiles, tables).permute(0, 2, 1, 3)
    slots = slots.reshape(r_tiles * c_tiles, lanes * tables)
    bit_of_key = torch.arange(KEY_BITS, dtype=torch.int64)
    bits = ((slots.unsqueeze(-1) >> bit_of_key) & 1).reshape(r_tiles * c_tiles, -1)  # LSB first
    bits = _pad_last(bits, beat_bits).reshape(-1, beat_bits // 8, 8)
    weights = 1 << torch.arange(8, dtype=torch.int64)
    return (bits * weights).sum(dim=-1).to(torch.uint8)


def unpack_keys(
    beats: torch.Tensor, n: int, g: int, tables: int, lanes: int, *, strict: bool = True
) -> torch.Tensor:
    """Inverse of :func:`pack_keys`: recover the ``[n, g]`` keys from a beat stream.

    Parameters
    ----------
    beats : Tensor, uint8, shape [ceil(n/lanes) * ceil(g/tables), beat_bytes]
        Beat stream; ``8 * beat_bytes >= 5 * lanes * tables``.
    n, g : int
        Rows and groups of the layer.
    tables, lanes : int
        Engine geometry used when packing.
    strict : bool, default True
        Also require padding keys and spare bits to be zero, and every key valid (idx <= 13).

    Returns
    -------
    Tensor, uint8, shape [n, g]

    Raises
    ------
    FormatError
        Wrong beat count / width / dtype, or (strict) non-zero padding or invalid keys.
    """
    if not isinstance(beats, torch.Tensor) or beats.dtype != torch.uint8 or beats.dim() != 2:
        got = f"{beats.dtype} {tuple(beats.shape)}" if isinstance(beats, torch.Tensor) else type(beats)
        raise FormatError(f"beats: expected a uint8 tensor [num_beats, beat_bytes], got {got}")
    r_tiles, c_tiles = beat_grid(n, g, tables, lanes)
    beat_bits = 8 * beats.shape[1]
    _check_beat_geometry(tables, lanes, beat_bits)
    if beats.shape[0] != r_tiles * c_tiles:
        raise FormatError(
            f"beats: n={n}, g={g}, lanes={lanes}, tables={tables} needs "
            f"{r_tiles}*{c_tiles}={r_tiles * c_tiles} beats, got {beats.shape[0]}"
        )
    bits = ((beats.to(torch.int64).unsqueeze(-1) >> torch.arange(8)) & 1).reshape(len(beats), -1)
    used = KEY_BITS * lanes * tables
    if strict and bool(bits[:, used:].any()):
        raise FormatError(f"beats: spare bits at and above bit {used} must be zero")
    key_bits = bits[:, :used].reshape(len(beats), lanes * tables, KEY_BITS)
    slots = (key_bits << torch.arange(KEY_BITS)).sum(dim=-1)
    padded = slots.reshape(r_tiles, c_tiles, lanes, tables).permute(0, 2, 1, 3)
    padded = padded.reshape(r_tiles * lanes, c_tiles * tables)
    keys = padded[:n, :g]
    if strict:
        pad_mask = torch.ones_like(padded, dtype=torch.bool)
        pad_mask[:n, :g] = False
        if bool(padded[pad_mask].any()):
            raise FormatError("beats: padding keys (rows >= n or groups >= g) must be zero")
        _check_keys(keys, "beats (decoded keys)")
    return keys.to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Full BitLinear through the TLMM path
# ---------------------------------------------------------------------------------------------
def tlmm_linear(x: torch.Tensor, keys: torch.Tensor, k: int, gamma) -> torch.Tensor:
    """BitLinear computed the way the overlay does it: act quant -> TLMM -> output rescale.

    Parameters
    ----------
    x : Tensor, float32 (float16/bfloat16 accepted, converted exactly), shape [..., K]
        Activations (finite).
    keys : Tensor, uint8, shape [N, ceil(K/3)]
        Weight keys from :func:`encode_keys`.
    k : int
        Input dimension ``K``; must equal ``x.shape[-1]``.
    gamma : Tensor float32 0-dim (or float)
        Per-tensor weight scale from :func:`ternopu.golden.bitnet.ternary_weight_quant`.

    Returns
    -------
    Tensor, float32, shape [..., N]
        Bit for bit equal to ``bitnet.bitlinear(x, decode_keys(keys, k), gamma)``: the integer
        accumulator is exact either way and the float steps are the same binary32 operations.

    Raises
    ------
    FormatError, NonFiniteError
        As :func:`ternopu.golden.bitnet.int8_act_quant`, :func:`tlmm_matvec` and
        :func:`ternopu.golden.bitnet.rescale`; also if ``x.shape[-1] != k``.
    """
    # Local import: the key/table layer above stands alone (the hardware flow imports only it).
    from .bitnet import int8_act_quant, out_scale, rescale

    _require_pos_int(k, "k")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != k:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise FormatError(f"x: expected shape [..., K={k}], got {shape}")
    xq, amax = int8_act_quant(x)
    acc = tlmm_matvec(keys, xq)
    return rescale(acc, out_scale(amax, gamma))


# Sanity of the documented accumulator examples (cheap; keeps the docstring honest).
assert acc_bits(2560) == 20 and acc_bits(6912) == 21
assert math.ceil(6912 / GROUP) == 2304
