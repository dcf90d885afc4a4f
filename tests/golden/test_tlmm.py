"""Tests of golden/tlmm.py: key format, tables, table-lookup matmul, beat packing."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ternopu.golden import tlmm
from ternopu.golden.errors import FormatError
from ternopu.golden.tlmm import (
    ENTRY_BITS,
    GROUP,
    KEY_BITS,
    NEG_ZERO_KEY,
    PATTERN_DIGITS,
    TABLE_ENTRIES,
    acc_bits,
    acc_bound,
    beat_activation_groups,
    beat_activation_slice,
    beat_grid,
    build_tables,
    decode_keys,
    encode_keys,
    lookup,
    num_groups,
    pack_keys,
    tlmm_matvec,
    unpack_keys,
)

ALL_PATTERNS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int8)  # [27,3]
CORNER_ACTS = (-128, -127, -1, 0, 1, 127)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_ternary(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(-1, 2, (n, k), generator=_gen(seed), dtype=torch.int8)


def _rand_int8(shape, seed: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=_gen(seed), dtype=torch.int8)


def _matmul_ref(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """Plain exact integer reference: y = xq @ wq^T in int64."""
    return xq.to(torch.int64) @ wq.to(torch.int64).T


# ------------------------------------------------------------------ constants and key format
def test_constants():
    assert (GROUP, KEY_BITS, TABLE_ENTRIES, ENTRY_BITS) == (3, 5, 14, 10)
    assert PATTERN_DIGITS.shape == (14, 3)
    values = PATTERN_DIGITS @ torch.tensor([9, 3, 1])
    assert values.tolist() == list(range(14))


def test_all_27_patterns_encode_decode_exhaustive():
    keys = encode_keys(ALL_PATTERNS)
    assert keys.shape == (27, 1) and keys.dtype == torch.uint8
    for (w0, w1, w2), key in zip(ALL_PATTERNS.tolist(), keys[:, 0].tolist()):
        v = 9 * w0 + 3 * w1 + w2
        assert key == ((16 if v < 0 else 0) | abs(v))
    assert len(set(keys[:, 0].tolist())) == 27  # injective
    assert 16 not in keys.tolist()  # zero is always key 0
    assert torch.equal(decode_keys(keys, 3), ALL_PATTERNS)


def test_key_16_decodes_to_zero_group():
    keys = torch.tensor([[NEG_ZERO_KEY, 0]], dtype=torch.uint8)
    assert decode_keys(keys, 6).tolist() == [[0] * 6]
    xq = _rand_int8((6,), 1)
    assert tlmm_matvec(keys, xq).tolist() == [0]


def test_w0_is_lowest_k():
    wq = torch.tensor([[1, 0, 0, 0, 0, 1]], dtype=torch.int8)
    assert encode_keys(wq).tolist() == [[9, 1]]


def test_tail_group_padding_in_encode():
    wq = torch.tensor([[1, -1, 1, 1], [0, 0, 0, -1]], dtype=torch.int8)  # K=4: tail (w, 0, 0)
    assert encode_keys(wq).tolist() == [[7, 9], [0, 16 | 9]]
    wq5 = torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.int8)  # K=5: tail (1, 1, 0)
    assert encode_keys(wq5).tolist() == [[0, 12]]


# ------------------------------------------------------------------ tables and lookup
@pytest.mark.parametrize("acts", [(-128, -128, -128), (127, 127, 127), (0, 0, 0), (-128, 127, 0),
                                  (127, -128, -1), (5, -7, 100)])
def test_lookup_equals_dot_for_all_27_patterns(acts):
    xq = torch.tensor(acts, dtype=torch.int8)
    table = build_tables(xq)  # [1, 14]
    assert table.shape == (1, 14) and table.dtype == torch.int32
    keys = encode_keys(ALL_PATTERNS)[:, 0]
    got = lookup(table[0], keys)
    want = ALL_PATTERNS.to(torch.int64) @ xq.to(torch.int64)
    assert torch.equal(got, want)


def test_lookup_exhaustive_corner_acts_and_random():
    corner = torch.tensor(list(itertools.product(CORNER_ACTS, repeat=3)), dtype=torch.int8)
    rand = _rand_int8((500, 3), 7)
    acts = torch.cat([corner, rand])  # [M, 3]
    tables = build_tables(acts)[:, 0, :]  # [M, 14]
    keys = encode_keys(ALL_PATTERNS)[:, 0]  # [27]
    got = lookup(tables.unsqueeze(1), keys.unsqueeze(0))  # [M, 27]
    want = acts.to(torch.int64) @ ALL_PATTERNS.to(torch.int64).T
    assert torch.equal(got, want)


def test_table_entry_bound_is_384_and_fits_10_bits():
    t = build_tables(torch.full((3,), -128, dtype=torch.int8))
    assert int(t.abs().max()) == 384 == tlmm.ENTRY_MAX_ABS
    assert int(t[0, 0]) == 0
    assert 384 <= 2 ** (ENTRY_BITS - 1) - 1 and -384 >= -(2 ** (ENTRY_BITS - 1))


def test_build_tables_pads_tail_and_batches():
    xq = torch.tensor([[1, 2, 3, 4], [-1, -2, -3, -4]], dtype=torch.int8)
    t = build_tables(xq)
    assert t.shape == (2, 2, 14)
    # tail group is (4, 0, 0): T[idx] = d0 * 4
    assert torch.equal(t[0, 1], PATTERN_DIGITS[:, 0].to(torch.int32) * 4)
    assert torch.equal(t[1], -t[0])


# ------------------------------------------------------------------ tlmm_matvec == matmul
@pytest.mark.parametrize(
    "n,k",
    [(1, 1), (1, 2), (1, 3), (4, 1), (7, 4), (5, 5), (16, 6), (33, 97), (64, 128), (3, 300), (1, 2560)],
)
def test_tlmm_matvec_equals_matmul_random(n, k):
    wq = _rand_ternary(n, k, seed=n * 1000 + k)
    xq = _rand_int8((k,), seed=k)
    assert torch.equal(tlmm_matvec(encode_keys(wq), xq), _matmul_ref(xq, wq))


@pytest.mark.parametrize("k", [9, 10, 11])
def test_tlmm_matvec_extreme_activations(k):
    wq = _rand_ternary(32, k, seed=k)
    wq[0] = 1
    wq[1] = -1
    wq[2, :3] = 0  # all-zero weight group
    wq[3] = 0  # all-zero row
    keys = encode_keys(wq)
    for fill in (-128, 127, 0):
        xq = torch.full((k,), fill, dtype=torch.int8)
        y = tlmm_matvec(keys, xq)
        assert torch.equal(y, _matmul_ref(xq, wq))
    y = tlmm_matvec(keys, torch.full((k,), -128, dtype=torch.int8))
    assert int(y[1]) == 128 * k and int(y[3]) == 0


def test_tlmm_matvec_batch_of_tokens():
    wq = _rand_ternary(50, 130, seed=3)
    xq = _rand_int8((2, 3, 130), seed=4)
    y = tlmm_matvec(encode_keys(wq), xq)
    assert y.shape == (2, 3, 50) and y.dtype == torch.int64
    assert torch.equal(y, _matmul_ref(xq, wq))


def test_tlmm_matvec_chunked_gather(monkeypatch):
    """Force the row-chunk path (many chunks) and check it changes nothing."""
    monkeypatch.setattr(tlmm, "_GATHER_CHUNK", 100)
    wq = _rand_ternary(37, 61, seed=11)
    xq = _rand_int8((3, 61), seed=12)
    assert torch.equal(tlmm_matvec(encode_keys(wq), xq), _matmul_ref(xq, wq))


def test_tlmm_matvec_worst_case_reaches_bound():
    k = 6912
    wq = torch.ones(2, k, dtype=torch.int8)
    wq[1] = -1
    y = tlmm_matvec(encode_keys(wq), torch.full((k,), -128, dtype=torch.int8))
    assert y.tolist() == [-128 * k, 128 * k]
    assert 128 * k == acc_bound(k)
    bits = acc_bits(k)
    assert -(2 ** (bits - 1)) <= -acc_bound(k) and acc_bound(k) <= 2 ** (bits - 1) - 1
    assert acc_bound(k) > 2 ** (bits - 2) - 1  # one bit fewer would not do


def test_acc_bits_values():
    assert acc_bits(1) == 10  # one group: |y| <= 384
    assert acc_bits(2560) == 20
    assert acc_bits(6912) == 21
    assert acc_bits(8640) == 22
    assert acc_bound(6912) == 884_736
    with pytest.raises(FormatError, match="positive int"):
        acc_bits(0)


@pytest.mark.parametrize(
    "n,k",
    [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
    ids=["qo_proj", "kv_proj", "gate_up", "down"],
)
def test_bitnet_2b4t_projection_shapes_single_token(n, k):
    wq = _rand_ternary(n, k, seed=n + k)
    xq = _rand_int8((k,), seed=k + 1)
    keys = encode_keys(wq)
    assert keys.shape == (n, num_groups(k))
    y = tlmm_matvec(keys, xq)
    assert torch.equal(y, _matmul_ref(xq, wq))
    assert int(y.abs().max()) <= acc_bound(k)


@given(
    n=st.integers(1, 12),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_roundtrip_and_matvec(n, k, seed):
    wq = _rand_ternary(n, k, seed)
    xq = _rand_int8((2, k), seed + 1)
    keys = encode_keys(wq)
    assert torch.equal(decode_keys(keys, k), wq)
    assert torch.equal(tlmm_matvec(keys, xq), _matmul_ref(xq, wq))


@given(
    w=st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=30),
    a=st.lists(st.integers(-128, 127), min_size=30, max_size=30),
)
def test_property_single_row_dot(w, a):
    k = len(w)
    wq = torch.tensor([w], dtype=torch.int8)
    xq = torch.tensor(a[:k], dtype=torch.int8)
    assert int(tlmm_matvec(encode_keys(wq), xq)[0]) == sum(wi * ai for wi, ai in zip(w, a))


# ------------------------------------------------------------------ beat packing
def test_beat_bit_order_hand_computed():
    """The worked example of the module docstring: 2 lanes x 2 tables, 24-bit beats."""
    wq = torch.tensor([[1, 1, 1, -1, 0, 0], [0, 0, 1, 0, -1, 1]], dtype=torch.int8)
    keys = encode_keys(wq)
    assert keys.tolist() == [[13, 25], [1, 18]]
    beats = pack_keys(keys, tables=2, lanes=2, beat_bits=24)
    assert beats.dtype == torch.uint8
    assert beats.tolist() == [[0x2D, 0x07, 0x09]]
    assert 13 | 25 << 5 | 1 << 10 | 18 << 15 == 0x09072D


def test_beat_order_and_padding_hand_computed():
    """N=3, G=3 with 2 lanes x 2 tables: 2 row tiles x 2 group tiles, padded with key 0."""
    keys = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8)
    beats = pack_keys(keys, tables=2, lanes=2, beat_bits=24)
    assert beats.shape == (4, 3)

    def beat_int(slots):
        return sum(s << (5 * i) for i, s in enumerate(slots))

    # slot order (p, t): (0,0), (0,1), (1,0), (1,1)
    expected = [
        beat_int([1, 2, 4, 5]),  # r=0, c=0
        beat_int([3, 0, 6, 0]),  # r=0, c=1 (group 3 is padding)
        beat_int([7, 8, 0, 0]),  # r=1, c=0 (row 3 is padding)
        beat_int([9, 0, 0, 0]),  # r=1, c=1
    ]
    got = [int.from_bytes(bytes(b.tolist()), "little") for b in beats]
    assert got == expected
    assert torch.equal(unpack_keys(beats, 3, 3, tables=2, lanes=2), keys)


@pytest.mark.parametrize(
    "n,g,tables,lanes,beat_bits",
    [
        (1, 1, 1, 1, 8),
        (5, 7, 2, 3, 32),
        (16, 16, 4, 4, 80),
        (17, 33, 4, 4, 128),
        (10, 5, 8, 1, 40),
        (64, 854, 16, 8, 640),
        (40, 9, 3, 16, 256),
        (3, 100, 1, 51, 256),
    ],
)
def test_pack_unpack_roundtrip(n, g, tables, lanes, beat_bits):
    wq = _rand_ternary(n, 3 * g, seed=n * g)
    keys = encode_keys(wq)
    beats = pack_keys(keys, tables, lanes, beat_bits)
    r, c = beat_grid(n, g, tables, lanes)
    assert beats.shape == (r * c, beat_bits // 8)
    assert torch.equal(unpack_keys(beats, n, g, tables, lanes), keys)
    # Spare bits above 5*lanes*tables are zero.
    as_int = [int.from_bytes(bytes(b.tolist()), "little") for b in beats]
    assert all(v >> (KEY_BITS * lanes * tables) == 0 for v in as_int)


def test_pack_slot_position_matches_contract():
    """Each key lands at bits [5*(p*tables+t), +5) of beat r*C + c (checked slot by slot)."""
    n, g, tables, lanes, beat_bits = 7, 10, 3, 2, 32
    keys = encode_keys(_rand_ternary(n, 3 * g, seed=99))
    beats = pack_keys(keys, tables, lanes, beat_bits)
    r_tiles, c_tiles = beat_grid(n, g, tables, lanes)
    as_int = [int.from_bytes(bytes(b.tolist()), "little") for b in beats]
    for row in range(r_tiles * lanes):
        for grp in range(c_tiles * tables):
            r, p = divmod(row, lanes)
            c, t = divmod(grp, tables)
            field = (as_int[r * c_tiles + c] >> (5 * (p * tables + t))) & 31
            want = int(keys[row, grp]) if row < n and grp < g else 0
            assert field == want


def test_packed_stream_drives_matvec():
    """Simulate the engine from the beat stream: per beat, look up `tables` groups for `lanes` rows."""
    n, k, tables, lanes = 10, 20, 3, 4
    wq = _rand_ternary(n, k, seed=5)
    xq = _rand_int8((k,), seed=6)
    keys = encode_keys(wq)
    g = keys.shape[1]
    beats = pack_keys(keys, tables, lanes, 64)
    r_tiles, c_tiles = beat_grid(n, g, tables, lanes)
    x_pad = torch.zeros(3 * c_tiles * tables, dtype=torch.int8)
    x_pad[:k] = xq
    acc = [0] * (r_tiles * lanes)
    for b, beat in enumerate(beats):
        r, c = divmod(b, c_tiles)
        beat_tables = build_tables(x_pad[beat_activation_slice(c, tables)])  # [tables, 14]
        assert list(beat_activation_groups(c, tables)) == list(range(c * tables, (c + 1) * tables))
        value = int.from_bytes(bytes(beat.tolist()), "little")
        for p in range(lanes):
            for t in range(tables):
                key = (value >> (5 * (p * tables + t))) & 31
                acc[r * lanes + p] += int(lookup(beat_tables[t], torch.tensor(key)))
    assert acc[:n] == _matmul_ref(xq, wq).tolist()
    assert acc[n:] == [0] * (len(acc) - n)


# ------------------------------------------------------------------ bad inputs
def test_encode_rejects_bad_weights():
    with pytest.raises(FormatError, match=r"values must lie in \[-1, 1\], found \[0, 2\]"):
        encode_keys(torch.tensor([[1, 2, 0]], dtype=torch.int8))
    with pytest.raises(FormatError, match="expected an integer tensor"):
        encode_keys(torch.zeros(2, 3))
    with pytest.raises(FormatError, match="expected 2 dimensions"):
        encode_keys(torch.zeros(3, dtype=torch.int8))
    with pytest.raises(FormatError, match="K >= 1"):
        encode_keys(torch.zeros(2, 0, dtype=torch.int8))


def test_decode_rejects_bad_keys():
    with pytest.raises(FormatError, match=r"index field must be 0..13, found key 14"):
        decode_keys(torch.tensor([[14]], dtype=torch.uint8), 3)
    with pytest.raises(FormatError, match=r"found key 31"):
        decode_keys(torch.tensor([[31]], dtype=torch.uint8), 3)
    with pytest.raises(FormatError, match=r"values must lie in \[0, 31\]"):
        decode_keys(torch.tensor([[32]], dtype=torch.int64), 3)
    with pytest.raises(FormatError, match=r"needs ceil\(K/3\)=2 groups, got 1"):
        decode_keys(torch.tensor([[1]], dtype=torch.uint8), 4)
    with pytest.raises(FormatError, match="padding positions"):
        decode_keys(torch.tensor([[1]], dtype=torch.uint8), 2)  # (0,0,1): w2 past K=2


def test_matvec_rejects_bad_inputs():
    keys = encode_keys(_rand_ternary(4, 6, 0))
    with pytest.raises(FormatError, match="K=7 -> 3 groups, keys have 2"):
        tlmm_matvec(keys, torch.zeros(7, dtype=torch.int8))
    with pytest.raises(FormatError, match=r"xq: values must lie in \[-128, 127\], found \[0, 128\]"):
        tlmm_matvec(keys, torch.tensor([0, 0, 0, 0, 0, 128], dtype=torch.int16))
    with pytest.raises(FormatError, match="xq: expected an integer tensor"):
        tlmm_matvec(keys, torch.zeros(6))
    with pytest.raises(FormatError, match="K >= 1"):
        build_tables(torch.zeros(0, dtype=torch.int8))
    with pytest.raises(FormatError, match="index field"):
        lookup(build_tables(torch.zeros(3, dtype=torch.int8))[0], torch.tensor(15))


def test_pack_rejects_bad_geometry_and_streams():
    keys = torch.zeros(4, 4, dtype=torch.uint8)
    with pytest.raises(FormatError, match=r"multiple of 8 and >= 5\*lanes\*tables = 40"):
        pack_keys(keys, tables=2, lanes=4, beat_bits=32)
    with pytest.raises(FormatError, match="multiple of 8"):
        pack_keys(keys, tables=1, lanes=1, beat_bits=12)
    with pytest.raises(FormatError, match="lanes: expected a positive int"):
        pack_keys(keys, tables=1, lanes=0, beat_bits=8)
    beats = pack_keys(keys, tables=2, lanes=2, beat_bits=24)
    with pytest.raises(FormatError, match="needs 2\\*2=4 beats, got 3"):
        unpack_keys(beats[:3], 4, 4, tables=2, lanes=2)
    with pytest.raises(FormatError, match="expected a uint8 tensor"):
        unpack_keys(beats.to(torch.int32), 4, 4, tables=2, lanes=2)
    dirty = beats.clone()
    dirty[0, 2] = 0x80  # bit 23: a spare bit
    with pytest.raises(FormatError, match="spare bits"):
        unpack_keys(dirty, 4, 4, tables=2, lanes=2)
    keys3 = torch.ones(3, 3, dtype=torch.uint8)
    padded_beats = pack_keys(keys3, tables=2, lanes=2, beat_bits=24)
    padded_beats[1, 0] |= 0x20  # slot (0,1) of beat (0,1) = group 3: padding
    with pytest.raises(FormatError, match="padding keys"):
        unpack_keys(padded_beats, 3, 3, tables=2, lanes=2)
    # non-strict mode ignores padding content
    assert torch.equal(unpack_keys(padded_beats, 3, 3, tables=2, lanes=2, strict=False), keys3)
    with pytest.raises(FormatError, match="c: expected a non-negative int"):
        beat_activation_groups(-1, 2)
