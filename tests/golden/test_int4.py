"""Tests of ternopu.golden.int4: GPTQ/AWQ packing, act-order, RTN, dequant, zero folding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ternopu.golden.errors import FormatError, NonFiniteError
from ternopu.golden.int4 import (
    AWQ_PACK_ORDER,
    AWQ_UNPACK_ORDER,
    INT4_MAX,
    act_order_permutation,
    check_g_idx,
    dequantize_int4,
    expand_group_params,
    folded_group_dot,
    pack_awq,
    pack_gptq,
    rtn_quantize,
    trivial_g_idx,
    unfolded_group_dot,
    unpack_awq,
    unpack_gptq,
)

# RTN bound documented in rtn_quantize: |w - w'| <= s/2 * (1 + 2^-16)
RTN_BOUND_FACTOR = 0.5 * (1 + 2.0**-16)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_plain(k: int, n: int, group: int, seed: int):
    g = _gen(seed)
    q = torch.randint(0, 16, (k, n), generator=g)
    zeros = torch.randint(0, 16, (k // group, n), generator=g)
    scales = (torch.rand(k // group, n, generator=g) * 0.1 + 1e-3).to(torch.float16)
    return q, zeros, scales


def _to_int32(u: int) -> int:
    """Unsigned 32-bit pattern -> the int32 value torch stores."""
    return u - (1 << 32) if u >= (1 << 31) else u


def _act_order_g_idx(k: int, group: int, seed: int) -> torch.Tensor:
    """g_idx as GPTQ act-order produces it: groups formed over a random row permutation."""
    perm = torch.randperm(k, generator=_gen(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group).to(torch.int32)
    return g_idx


# ---------------------------------------------------------------------------------------------
# bit order: hand-built words
# ---------------------------------------------------------------------------------------------


def test_gptq_hand_built_words():
    k, n, group = 16, 8, 16
    q = torch.zeros(k, n, dtype=torch.int64)
    q[:8, 0] = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])  # nibble j <- row j: 0x87654321
    q[8:, 1] = torch.tensor([15, 0, 0, 0, 0, 0, 0, 9])  # second word of column 1: 0x9000000F
    zeros = torch.tensor([[15, 0, 1, 2, 3, 4, 5, 6]])  # nibble j <- column j: 0x6543210F
    scales = torch.ones(1, n, dtype=torch.float16)
    packed = pack_gptq(q, zeros, scales)
    assert packed["qweight"].dtype == torch.int32 and packed["qweight"].shape == (2, 8)
    assert int(packed["qweight"][0, 0]) == _to_int32(0x87654321)
    assert int(packed["qweight"][1, 1]) == _to_int32(0x9000000F)
    assert int(packed["qweight"][1, 0]) == 0
    assert packed["qzeros"].shape == (1, 1)
    assert int(packed["qzeros"][0, 0]) == _to_int32(0x6543210F)
    q2, z2, s2 = unpack_gptq(**packed, group=group)
    assert torch.equal(q2, q) and torch.equal(z2, zeros) and torch.equal(s2, scales)


def test_awq_hand_built_words():
    assert [AWQ_PACK_ORDER[AWQ_UNPACK_ORDER[c]] for c in range(8)] == list(range(8))
    k, n = 8, 16
    q = torch.zeros(k, n, dtype=torch.int64)
    q[0, :8] = torch.arange(8) + 8  # columns 0..7 hold 8..15
    q[1, 8:] = torch.arange(8)  # columns 8..15 of row 1 hold 0..7
    # nibble i holds column [0,2,4,6,1,3,5,7][i]
    # row 0 word 0: nibbles 8,10,12,14,9,11,13,15 -> 0xFDB9ECA8
    # row 1 word 1: nibbles 0,2,4,6,1,3,5,7 -> 0x75316420
    zeros = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 2])  # nibbles 1,3,5,7,2,4,6,8 -> 0x86427531
    scales = torch.ones(1, n, dtype=torch.float16)
    packed = pack_awq(q, zeros, scales)
    assert packed["qweight"].shape == (8, 2) and packed["qzeros"].shape == (1, 2)
    assert int(packed["qweight"][0, 0]) == _to_int32(0xFDB9ECA8)
    assert int(packed["qweight"][1, 1]) == 0x75316420
    assert int(packed["qzeros"][0, 0]) == _to_int32(0x86427531)
    q2, z2, _ = unpack_awq(**packed, group=8)
    assert torch.equal(q2, q) and torch.equal(z2, zeros)


def test_awq_unpack_from_raw_word():
    # a word written by hand, not by pack_awq: nibble i = i -> column PACK_ORDER[i] holds i
    word = torch.tensor([[_to_int32(0x76543210)]], dtype=torch.int32).expand(8, 1).contiguous()
    qzeros = torch.zeros(1, 1, dtype=torch.int32)
    q, _, _ = unpack_awq(word, qzeros, torch.ones(1, 8, dtype=torch.float16))
    expected = [AWQ_UNPACK_ORDER[c] for c in range(8)]  # column c was nibble UNPACK_ORDER[c]
    assert q[0].tolist() == expected == [0, 4, 1, 5, 2, 6, 3, 7]


def test_sign_bit_words_round_trip():
    # every nibble 15: the word is -1 in int32
    q = torch.full((8, 8), 15, dtype=torch.int64)
    zeros = torch.full((1, 8), 8, dtype=torch.int64)
    s = torch.ones(1, 8, dtype=torch.float16)
    p = pack_gptq(q, zeros, s)
    assert torch.all(p["qweight"] == -1)
    assert int(p["qzeros"][0, 0]) == _to_int32(0x88888888)
    assert torch.equal(unpack_gptq(**p, group=8)[0], q)
    pa = pack_awq(q, zeros, s)
    assert torch.all(pa["qweight"] == -1)
    assert torch.equal(unpack_awq(**pa)[0], q)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@given(
    groups=st.integers(1, 3),
    group=st.sampled_from([8, 16, 32, 128]),
    nb=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_gptq_awq_round_trip(groups, group, nb, seed):
    k, n = groups * group, 8 * nb
    q, zeros, scales = _random_plain(k, n, group, seed)
    p = pack_gptq(q, zeros, scales)
    assert p["qweight"].shape == (k // 8, n) and p["qzeros"].shape == (groups, nb)
    for got, want in zip(unpack_gptq(**p, group=group), (q, zeros, scales)):
        assert torch.equal(got, want)
    a = pack_awq(q, zeros, scales)
    assert a["qweight"].shape == (k, nb) and a["qzeros"].shape == (groups, nb)
    for got, want in zip(unpack_awq(**a, group=group), (q, zeros, scales)):
        assert torch.equal(got, want)


def test_legacy_zero_offset():
    q, zeros, scales = _random_plain(16, 8, 8, seed=1)
    zeros = torch.clamp(zeros, 1, 15)
    zeros[0, :8] = torch.tensor([1, 2, 3, 4, 5, 6, 7, 15])
    p = pack_gptq(q, zeros, scales, legacy_zero_offset=True)
    # stored nibble j = z - 1: 0, 1, ..., 6, 14 -> 0xE6543210
    assert int(p["qzeros"][0, 0]) == _to_int32(0xE6543210)
    _, z_new, _ = unpack_gptq(**p, group=8)
    assert torch.equal(z_new, zeros - 1)  # read as new format: off by one, as the format says
    _, z_legacy, _ = unpack_gptq(**p, group=8, legacy_zero_offset=True)
    assert torch.equal(z_legacy, zeros)


def test_legacy_zero_offset_rejects_unrepresentable():
    q, zeros, scales = _random_plain(8, 8, 8, seed=2)
    zeros[0, 3] = 0
    with pytest.raises(FormatError, match="cannot represent z=0"):
        pack_gptq(q, zeros, scales, legacy_zero_offset=True)
    p = pack_gptq(q, torch.full_like(zeros, 15), scales)  # new format, nibble 15
    with pytest.raises(FormatError, match="zero point 16"):
        unpack_gptq(**p, group=8, legacy_zero_offset=True)


# ---------------------------------------------------------------------------------------------
# act-order g_idx
# ---------------------------------------------------------------------------------------------


def test_g_idx_trivial_matches_default():
    k, n, group = 64, 16, 16
    q, zeros, scales = _random_plain(k, n, group, seed=3)
    g_idx = trivial_g_idx(k, group)
    assert g_idx.dtype == torch.int32 and g_idx.tolist() == [i // group for i in range(k)]
    p = pack_gptq(q, zeros, scales)
    unpack_gptq(**p, group=group, g_idx=g_idx)  # validates
    x = torch.randint(-128, 128, (2, k), generator=_gen(4))
    assert torch.equal(
        folded_group_dot(x, q, zeros, group, g_idx=g_idx), folded_group_dot(x, q, zeros, group)
    )
    assert torch.equal(
        dequantize_int4(q, zeros, scales, group, g_idx=g_idx), dequantize_int4(q, zeros, scales, group)
    )


def test_g_idx_act_order_mapping():
    k, n, group = 96, 16, 32
    q, zeros, scales = _random_plain(k, n, group, seed=5)
    g_idx = _act_order_g_idx(k, group, seed=6)
    p = pack_gptq(q, zeros, scales)
    q2, z2, s2 = unpack_gptq(**p, group=group, g_idx=g_idx)
    assert torch.equal(q2, q)  # row order of the checkpoint is kept
    # dequant: row k uses group g_idx[k]
    w = dequantize_int4(q2, z2, s2, group, g_idx=g_idx)
    rows = g_idx.long()
    w_ref = (q.double() - zeros[rows].double()) * scales[rows].double()
    assert torch.equal(w.double(), w_ref)
    z_rows, s_rows = expand_group_params(z2, s2, group, g_idx=g_idx)
    assert torch.equal(z_rows, zeros[rows]) and torch.equal(s_rows, scales[rows])
    # folded == unfolded == permuted contiguous layout
    x = torch.randint(-(2**15), 2**15, (3, k), generator=_gen(7))
    folded = folded_group_dot(x, q, zeros, group, g_idx=g_idx)
    assert torch.equal(folded, unfolded_group_dot(x, q, zeros, group, g_idx=g_idx))
    perm = act_order_permutation(g_idx, group)
    assert torch.equal(folded, folded_group_dot(x[:, perm], q[perm], zeros, group))
    # and the group sums reproduce the full dot product with the dequantized weight
    centred = q.long() - zeros[rows]
    assert torch.equal(folded.sum(dim=1), x @ centred)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda k, g: torch.zeros(k - 1, dtype=torch.int32), "expected shape"),
        (lambda k, g: torch.full((k,), k // g, dtype=torch.int32), r"values must lie in \[0, 2\]"),
        (lambda k, g: torch.zeros(k, dtype=torch.int32), "exactly G=32 rows; group 0 holds 96"),
        (lambda k, g: torch.zeros(k, dtype=torch.float32), "integer tensor"),
        (lambda k, g: torch.zeros(2, k // 2, dtype=torch.int32), "1 dimensions"),
    ],
)
def test_g_idx_inconsistent(make, match):
    k, group = 96, 32
    q, zeros, scales = _random_plain(k, 8, group, seed=8)
    p = pack_gptq(q, zeros, scales)
    bad = make(k, group)
    with pytest.raises(FormatError, match=match):
        unpack_gptq(**p, group=group, g_idx=bad)
    with pytest.raises(FormatError, match=match):
        folded_group_dot(torch.zeros(k, dtype=torch.int64), q, zeros, group, g_idx=bad)
    with pytest.raises(FormatError, match=match):
        dequantize_int4(q, zeros, scales, group, g_idx=bad)


def test_g_idx_uneven_swap():
    g_idx = trivial_g_idx(64, 32).clone()
    g_idx[0] = 1  # group 0 loses a row, group 1 gains one
    with pytest.raises(FormatError, match="group 0 holds 31"):
        check_g_idx(g_idx, 64, 32)


# ---------------------------------------------------------------------------------------------
# dequant formula and RTN
# ---------------------------------------------------------------------------------------------


def test_dequant_formula_exact():
    k, n, group = 256, 32, 128
    q, zeros, scales = _random_plain(k, n, group, seed=9)
    scales[0, 0] = 65504.0  # largest fp16: still exact in float32
    scales[1, 1] = 2.0**-24  # smallest subnormal
    w = dequantize_int4(q, zeros, scales, group)
    assert w.dtype == torch.float32 and w.shape == (k, n)
    ref = (q.double() - zeros.repeat_interleave(group, 0).double()) * scales.repeat_interleave(
        group, 0
    ).double()
    assert torch.equal(w.double(), ref)  # no rounding at all


def _check_rtn(w: torch.Tensor, group: int) -> float:
    q, zeros, scales = rtn_quantize(w, group)
    k, n = w.shape
    assert q.dtype == torch.int64 and zeros.dtype == torch.int64 and scales.dtype == torch.float16
    assert q.shape == (k, n) and zeros.shape == scales.shape == (k // group, n)
    assert int(q.min()) >= 0 and int(q.max()) <= INT4_MAX
    assert int(zeros.min()) >= 0 and int(zeros.max()) <= INT4_MAX
    assert bool((scales >= 0).all())
    wd = dequantize_int4(q, zeros, scales, group).double()
    s = scales.repeat_interleave(group, 0).double()
    err = (w.double() - wd).abs()
    assert bool((err <= s * RTN_BOUND_FACTOR).all()), float((err / s).max())
    live = s > 0
    return float((err[live] / s[live]).max()) if bool(live.any()) else 0.0


@given(
    groups=st.integers(1, 3),
    group=st.sampled_from([8, 32, 128]),
    n=st.integers(1, 12),
    log_scale=st.integers(-20, 12),
    offset=st.sampled_from([0.0, 0.5, -2.0, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rtn_error_bound_property(groups, group, n, log_scale, offset, seed):
    w = (torch.randn(groups * group, n, generator=_gen(seed)) + offset) * 2.0**log_scale
    assert _check_rtn(w, group) <= RTN_BOUND_FACTOR


def test_rtn_corner_groups():
    group = 16
    w = torch.randn(5 * group, 4, generator=_gen(10))
    w[:group, 0] = 0.0  # all-zero group
    w[group : 2 * group, 1] = 3.0  # constant positive group
    w[2 * group : 3 * group, 2] = -7.5  # constant negative group
    w[3 * group : 4 * group, 3] = torch.linspace(1.0, 2.0, group)  # all positive
    w[4 * group, 0] = 1000.0  # single outlier
    w[4 * group + 1 : 5 * group, 0] = 1e-3
    _check_rtn(w, group)
    q, zeros, scales = rtn_quantize(w, group)
    assert float(scales[0, 0]) == 0.0 and int(zeros[0, 0]) == 0
    assert torch.all(q[:group, 0] == 0)
    wd = dequantize_int4(q, zeros, scales, group)
    assert torch.all(wd[:group, 0] == 0)
    assert not bool(torch.isnan(wd).any())
    # constant groups dequantize exactly when the constant is on the grid: -7.5 = -15 * 0.5
    assert torch.all(wd[2 * group : 3 * group, 2] == -7.5)


def test_rtn_scale_rounds_up_to_fp16():
    # (max - min)/15 with max-min = 1 is 0.0666...; RNE would give 0.06665, we need >= exact
    w = torch.zeros(8, 1)
    w[0, 0] = 1.0
    _, _, scales = rtn_quantize(w, 8)
    s = float(scales[0, 0])
    assert s >= 1.0 / 15 and s - 1.0 / 15 < 2.0**-14


def test_rtn_fp16_and_bf16_inputs():
    w = torch.randn(128, 8, generator=_gen(11))
    for dt in (torch.float16, torch.bfloat16):
        wq = w.to(dt)
        _check_rtn(wq.to(torch.float32), 128)
        a = rtn_quantize(wq, 128)
        b = rtn_quantize(wq.to(torch.float32), 128)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# zero folding
# ---------------------------------------------------------------------------------------------


@given(
    groups=st.integers(1, 4),
    group=st.sampled_from([8, 32, 128]),
    n=st.integers(1, 16),
    batch=st.integers(1, 3),
    xbits=st.sampled_from([8, 16, 24]),
    seed=st.integers(0, 2**31 - 1),
)
def test_folded_equals_unfolded(groups, group, n, batch, xbits, seed):
    k = groups * group
    q, zeros, _ = _random_plain(k, n, group, seed)
    lim = 1 << (xbits - 1)
    x = torch.randint(-lim, lim, (batch, k), generator=_gen(seed + 1))
    folded = folded_group_dot(x, q, zeros, group)
    assert folded.dtype == torch.int64 and folded.shape == (batch, groups, n)
    assert torch.equal(folded, unfolded_group_dot(x, q, zeros, group))
    # float64 check on the exact sum (values < 2^53)
    centred = (q - zeros.repeat_interleave(group, 0)).double()
    assert torch.equal(folded.sum(dim=1).double(), x.double() @ centred)


@pytest.mark.parametrize("qv, zv", [(0, 15), (15, 0), (15, 15), (0, 0), (15, 8)])
def test_folded_extreme_codes(qv, zv):
    k, n, group = 256, 8, 128
    q = torch.full((k, n), qv, dtype=torch.int64)
    zeros = torch.full((k // group, n), zv, dtype=torch.int64)
    for x in (torch.full((k,), -128), torch.full((k,), 127), torch.zeros(k, dtype=torch.int64)):
        got = folded_group_dot(x, q, zeros, group)
        assert torch.equal(got, unfolded_group_dot(x, q, zeros, group))
        assert torch.equal(got, torch.full((k // group, n), int(x[0]) * group * (qv - zv)))


def test_folded_zero_activation_group():
    k, n, group = 384, 16, 128
    q, zeros, _ = _random_plain(k, n, group, seed=12)
    x = torch.randint(-128, 128, (k,), generator=_gen(13))
    x[group : 2 * group] = 0
    got = folded_group_dot(x, q, zeros, group)
    assert torch.all(got[1] == 0)
    assert torch.equal(got, unfolded_group_dot(x, q, zeros, group))


# ---------------------------------------------------------------------------------------------
# real shapes (Llama-2-7B)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, n",
    [
        (4096, 4096),
        pytest.param(4096, 11008, marks=pytest.mark.slow),
        pytest.param(11008, 4096, marks=pytest.mark.slow),
    ],
)
def test_llama2_7b_shapes(k, n):
    group = 128
    w = torch.randn(k, n, generator=_gen(k + n)) * 0.02
    q, zeros, scales = rtn_quantize(w, group)
    for packer, unpacker, kw in (
        (pack_gptq, unpack_gptq, {"group": group}),
        (pack_awq, unpack_awq, {"group": group}),
    ):
        p = packer(q, zeros, scales)
        for got, want in zip(unpacker(**p, **kw), (q, zeros, scales)):
            assert torch.equal(got, want)
    # RTN error bound on the whole matrix; float32 difference (the exact float64 check runs in
    # test_rtn_error_bound_property), with one more binary32 ulp of slack for the subtraction
    wd = dequantize_int4(q, zeros, scales, group)
    s = scales.repeat_interleave(group, 0).to(torch.float32)
    assert bool(((w - wd).abs() <= s * (RTN_BOUND_FACTOR * (1 + 2.0**-22))).all())
    # one token through the zero-folded dot product (exact) equals the dequantized integer dot
    x = torch.randint(-(2**11), 2**11, (k,), generator=_gen(14))
    folded = folded_group_dot(x, q, zeros, group)
    assert folded.shape == (k // group, n)
    centred = q[:, :64] - zeros[:, :64].repeat_interleave(group, 0)
    assert torch.equal(folded[:, :64].sum(dim=0), x @ centred)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


def test_bad_group_divisibility():
    w = torch.randn(100, 8)
    with pytest.raises(FormatError, match="group size 128 must divide K=100"):
        rtn_quantize(w, 128)
    q, zeros, scales = _random_plain(256, 8, 128, seed=15)
    with pytest.raises(FormatError, match="group size 96 must divide K=256"):
        dequantize_int4(q, zeros, scales, 96)
    p = pack_gptq(q, zeros, scales)
    with pytest.raises(FormatError, match="group size 96 must divide K=256"):
        unpack_gptq(**p, group=96)
    with pytest.raises(FormatError, match=r"qzeros: expected shape \(4, 1\)"):
        unpack_gptq(**p, group=64)
    a = pack_awq(q, zeros, scales)
    with pytest.raises(FormatError, match="AWQ group size 64 expects 4 qzeros rows, found 2"):
        unpack_awq(**a, group=64)
    with pytest.raises(FormatError, match="does not divide K=256"):
        pack_gptq(q, zeros[:, :][[0, 0, 0]], scales[[0, 0, 0]])
    with pytest.raises(FormatError, match="must divide K=256"):
        folded_group_dot(torch.zeros(256, dtype=torch.int64), q, zeros, 96)


def test_bad_n_not_multiple_of_8():
    q, zeros, scales = _random_plain(128, 12, 128, seed=16)
    with pytest.raises(FormatError, match="multiples of 8, got K=128, N=12"):
        pack_gptq(q, zeros, scales)
    with pytest.raises(FormatError, match="N a multiple of 8, got N=12"):
        pack_awq(q, zeros, scales)
    q, zeros, scales = _random_plain(132, 8, 132, seed=16)
    with pytest.raises(FormatError, match="K=132"):
        pack_gptq(q, zeros, scales)


def test_bad_code_ranges():
    q, zeros, scales = _random_plain(128, 8, 128, seed=17)
    for bad_q in (q.clone().fill_(16), q.clone().fill_(-1)):
        with pytest.raises(FormatError, match=r"q \(4-bit codes\): values must lie in \[0, 15\]"):
            pack_gptq(bad_q, zeros, scales)
        with pytest.raises(FormatError, match=r"q \(4-bit codes\)"):
            dequantize_int4(bad_q, zeros, scales, 128)
    with pytest.raises(FormatError, match=r"zeros \(4-bit zero points\).*found \[16, 16\]"):
        pack_awq(q, zeros.clone().fill_(16), scales)


def test_bad_dtypes():
    q, zeros, scales = _random_plain(128, 8, 128, seed=18)
    with pytest.raises(FormatError, match="q: expected an integer tensor, got torch.float32"):
        pack_gptq(q.float(), zeros, scales)
    with pytest.raises(FormatError, match="scales: expected dtype torch.float16, got torch.float32"):
        pack_gptq(q, zeros, scales.float())
    p = pack_gptq(q, zeros, scales)
    with pytest.raises(FormatError, match="qweight: expected dtype torch.int32, got torch.int64"):
        unpack_gptq(p["qweight"].long(), p["qzeros"], p["scales"])
    with pytest.raises(FormatError, match="qzeros: expected dtype torch.int32"):
        unpack_awq(p["qweight"], p["qzeros"].to(torch.int16), p["scales"])
    with pytest.raises(FormatError, match="x_int: expected an integer tensor"):
        folded_group_dot(torch.zeros(128), q, zeros, 128)
    with pytest.raises(FormatError, match=r"x_int: expected shape \[..., K=128\]"):
        folded_group_dot(torch.zeros(64, dtype=torch.int64), q, zeros, 128)
    with pytest.raises(FormatError, match="could overflow the int64 accumulator"):
        folded_group_dot(torch.full((128,), 2**55), q, zeros, 128)
    with pytest.raises(FormatError, match="w must be a floating tensor"):
        rtn_quantize(torch.zeros(128, 8, dtype=torch.int64))
    with pytest.raises(FormatError, match=r"w must be \[K, N\]"):
        rtn_quantize(torch.zeros(128))


def test_bad_bits():
    q, zeros, scales = _random_plain(128, 8, 128, seed=19)
    with pytest.raises(FormatError, match="bits must be 4, got 3"):
        rtn_quantize(torch.randn(128, 8), bits=3)
    with pytest.raises(FormatError, match="bits must be 4, got 8"):
        pack_gptq(q, zeros, scales, bits=8)
    p = pack_awq(q, zeros, scales)
    with pytest.raises(FormatError, match="bits must be 4, got 2"):
        unpack_awq(**p, bits=2)
    with pytest.raises(FormatError, match="bits must be 4, got 2"):
        unpack_gptq(**pack_gptq(q, zeros, scales), bits=2)
    with pytest.raises(FormatError, match="bits must be 4, got 3"):
        pack_awq(q, zeros, scales, bits=3)


def test_nonfinite_weights_and_scales():
    w = torch.randn(128, 8)
    for bad in (float("nan"), float("inf"), float("-inf")):
        w2 = w.clone()
        w2[5, 3] = bad
        with pytest.raises(NonFiniteError, match=r"rtn_quantize weights: 1 non-finite.*\(5, 3\)"):
            rtn_quantize(w2)
    q, zeros, scales = _random_plain(128, 8, 128, seed=20)
    scales[0, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="scales"):
        pack_gptq(q, zeros, scales)


def test_rtn_scale_overflow():
    w = torch.zeros(8, 1)
    w[0, 0] = 3.0e38
    w[1, 0] = -3.0e38
    with pytest.raises(FormatError, match="RTN scale overflows float16"):
        rtn_quantize(w, 8)
