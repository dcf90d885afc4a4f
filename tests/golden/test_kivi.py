"""Tests of ternopu.golden.kivi: KIVI quantization, LSB-first packing, residual-window cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ternopu.golden.errors import FormatError, NonFiniteError
from ternopu.golden.kivi import (
    KIVI_BITS,
    KiviCache,
    KiviTensor,
    kivi_dequantize,
    kivi_error_bound,
    kivi_quantize_keys,
    kivi_quantize_values,
    pack_lsb_first,
    unpack_kivi_codes,
    unpack_lsb_first,
)

# Documented accuracy of KIVI on Gaussian K/V (T=1024, C=128, 8 outlier key channels x15 +5),
# group 32: relative Frobenius error, measured 2-bit K 0.379 / V 0.394, 4-bit K 0.0749 /
# V 0.0785, 8-bit K 0.00444 / V 0.00461. Bounds leave ~10% headroom.
REL_ERR_BOUND = {2: 0.42, 4: 0.085, 8: 0.005}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to_int32(u: int) -> int:
    return u - (1 << 32) if u >= (1 << 31) else u


def _rel_err(approx: torch.Tensor, exact: torch.Tensor) -> float:
    e = exact.double()
    return float((approx.double() - e).norm() / e.norm())


def _reference_quantize_group(x: np.ndarray, bits: int):
    """Independent numpy binary32 re-implementation of one group (spec in the module docstring)."""
    levels = np.float32(2**bits - 1)
    mn, mx = x.min(), x.max()  # float16 exact
    mn, mx = (np.float16(0.0) if v == 0 else v for v in (mn, mx))  # a zero min / max is +0
    scale = np.float16((np.float32(mx) - np.float32(mn)) / levels)
    if np.float32(scale) == 0:
        return np.zeros(x.shape, dtype=np.int64), scale, mn
    shifted = x.astype(np.float32) - np.float32(mn)
    q = np.clip(np.rint(shifted / np.float32(scale)), 0, levels).astype(np.int64)
    return q, scale, mn


# ---------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------


def test_pack_hand_built_words():
    # 2-bit: codes 1,2,3,0 | 3,3,3,3 ... LSB first -> 0b00_11_10_01 = 0x39 in the lowest byte
    codes2 = torch.tensor([1, 2, 3, 0, 3, 3, 3, 3] + [0] * 7 + [2])
    assert pack_lsb_first(codes2, 2).tolist() == [_to_int32(0x8000FF39)]
    # 4-bit: 16 codes -> 2 words, code j at bits 4j
    codes4 = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 0xF, 0, 0, 0, 0, 0, 0, 0xA])
    assert pack_lsb_first(codes4, 4).tolist() == [_to_int32(0x87654321), _to_int32(0xA000000F)]
    # 8-bit: 5 codes -> 2 words, padding bits zero
    codes8 = torch.tensor([0x12, 0x34, 0x56, 0xF8, 0x7F])
    words8 = pack_lsb_first(codes8, 8)
    assert words8.dtype == torch.int32
    assert words8.tolist() == [_to_int32(0xF8563412), 0x7F]
    for codes, bits in ((codes2, 2), (codes4, 4), (codes8, 8)):
        assert torch.equal(unpack_lsb_first(pack_lsb_first(codes, bits), bits, len(codes)), codes)


@given(
    bits=st.sampled_from(KIVI_BITS),
    n=st.integers(1, 70),
    rows=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_round_trip(bits, n, rows, seed):
    codes = torch.randint(0, 2**bits, (rows, n), generator=_gen(seed))
    words = pack_lsb_first(codes, bits)
    assert words.shape == (rows, -(-n * bits // 32))
    assert torch.equal(unpack_lsb_first(words, bits, n), codes)
    # bit-level check against an explicit bit stream
    stream = [(int(codes[0, j]) >> b) & 1 for j in range(n) for b in range(bits)]
    for w in range(words.shape[1]):
        word = int(words[0, w]) & 0xFFFFFFFF
        for b in range(32):
            i = 32 * w + b
            assert (word >> b) & 1 == (stream[i] if i < len(stream) else 0)


def test_unpack_rejects_bad_words():
    with pytest.raises(FormatError, match="padding bits beyond the last code must be zero"):
        unpack_lsb_first(torch.tensor([0x100], dtype=torch.int32), 8, 1)
    with pytest.raises(FormatError, match="need 2 words in the last axis"):
        unpack_lsb_first(torch.zeros(3, dtype=torch.int32), 4, 9)
    with pytest.raises(FormatError, match="expected int32 words, got torch.int64"):
        unpack_lsb_first(torch.zeros(1, dtype=torch.int64), 4, 8)
    with pytest.raises(FormatError, match=r"values must lie in \[0, 3\], found \[0, 4\]"):
        pack_lsb_first(torch.tensor([0, 4]), 2)
    with pytest.raises(FormatError, match="expected an integer tensor"):
        pack_lsb_first(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(FormatError, match=r"bits must be one of \(2, 4, 8\), got 3"):
        pack_lsb_first(torch.tensor([0, 1]), 3)


@pytest.mark.parametrize("axis", ["keys", "values"])
@pytest.mark.parametrize("bits", KIVI_BITS)
def test_packed_codes_layout(axis, bits):
    t, c, group = 64, 48, 16
    x = torch.randn(t, c, generator=_gen(bits)).half()
    qt = (kivi_quantize_keys if axis == "keys" else kivi_quantize_values)(x, bits, group)
    words = qt.packed_codes()
    per_group = -(-group * bits // 32)
    rows, cols = (t // group, c) if axis == "keys" else (t, c // group)
    assert words.shape == (rows, cols, per_group)
    # first word of group (0, 0): keys run along tokens of channel 0, values along channels
    first = qt.codes[: min(group, 32 // bits), 0] if axis == "keys" else qt.codes[0, : min(group, 32 // bits)]
    expected = sum(int(v) << (bits * j) for j, v in enumerate(first))
    assert int(words[0, 0, 0]) & 0xFFFFFFFF == expected
    back = unpack_kivi_codes(words, bits=bits, group=group, axis=axis, tokens=t, channels=c)
    assert torch.equal(back, qt.codes)
    assert qt.stored_bytes() == words.numel() * 4 + 2 * 2 * rows * cols


# ---------------------------------------------------------------------------------------------
# quantization arithmetic
# ---------------------------------------------------------------------------------------------


@given(
    bits=st.sampled_from(KIVI_BITS),
    groups=st.integers(1, 3),
    group=st.sampled_from([1, 4, 32]),
    c=st.sampled_from([1, 8, 32]),
    log_scale=st.integers(-14, 10),
    offset=st.sampled_from([0.0, 3.0, -100.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_keys_round_trip_properties(bits, groups, group, c, log_scale, offset, seed):
    t = groups * group
    x = ((torch.randn(t, c, generator=_gen(seed)) + offset) * 2.0**log_scale).half()
    qt = kivi_quantize_keys(x, bits, group)
    assert qt.axis == "keys" and qt.codes.dtype == torch.int64
    assert qt.scale.shape == qt.mn.shape == (groups, c) and qt.scale.dtype == torch.float16
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= 2**bits - 1
    err = (kivi_dequantize(qt).double() - x.double()).abs()
    assert bool((err <= kivi_error_bound(qt)).all())
    # mn is the exact group minimum
    assert torch.equal(qt.mn, x.reshape(groups, group, c).amin(dim=1))


@given(
    bits=st.sampled_from(KIVI_BITS),
    t=st.integers(1, 5),
    groups=st.integers(1, 3),
    group=st.sampled_from([2, 16, 32]),
    log_scale=st.integers(-14, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_values_round_trip_properties(bits, t, groups, group, log_scale, seed):
    c = groups * group
    x = (torch.randn(t, c, generator=_gen(seed)) * 2.0**log_scale).half()
    qt = kivi_quantize_values(x, bits, group)
    assert qt.axis == "values" and qt.scale.shape == (t, groups)
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= 2**bits - 1
    err = (kivi_dequantize(qt).double() - x.double()).abs()
    assert bool((err <= kivi_error_bound(qt)).all())


@pytest.mark.parametrize("bits", KIVI_BITS)
def test_bit_exact_against_numpy_reference(bits):
    t, c, group = 64, 16, 32
    x = (torch.randn(t, c, generator=_gen(100 + bits)) * 3).half()
    x[:group, 0] = 1.5  # constant group
    x[:group, 1] = torch.linspace(0, 2.0**-23, group).half()  # range that underflows the scale
    x[group, 2] = 60000.0  # huge range
    x[group + 1, 2] = -60000.0
    kq = kivi_quantize_keys(x, bits, group)
    vgroup = 8
    vq = kivi_quantize_values(x, bits, vgroup)
    xn = x.numpy()
    for gi in range(t // group):
        for ch in range(c):
            q, s, m = _reference_quantize_group(xn[gi * group : (gi + 1) * group, ch], bits)
            assert np.array_equal(kq.codes[gi * group : (gi + 1) * group, ch].numpy(), q)
            assert kq.scale[gi, ch].item() == float(s) and kq.mn[gi, ch].item() == float(m)
    for tok in range(t):
        for gi in range(c // vgroup):
            q, s, m = _reference_quantize_group(xn[tok, gi * vgroup : (gi + 1) * vgroup], bits)
            assert np.array_equal(vq.codes[tok, gi * vgroup : (gi + 1) * vgroup].numpy(), q)
            assert vq.scale[tok, gi].item() == float(s)
    # dequant: numpy binary32 multiply then add
    deq = kivi_dequantize(kq).numpy()
    s = kq.per_element(kq.scale).numpy().astype(np.float32)
    m = kq.per_element(kq.mn).numpy().astype(np.float32)
    assert np.array_equal(deq, kq.codes.numpy().astype(np.float32) * s + m)
    # codes re-derived from the stored scale/min by the hardware formula are the stored codes
    assert torch.equal(kivi_quantize_keys(x, bits, group).codes, kq.codes)


def test_constant_groups():
    keys = torch.full((32, 8), -2.25, dtype=torch.float16)
    keys[:, 3] = 0.0  # constant per channel
    values = keys.t().contiguous()  # constant per token
    for x, qt in ((keys, kivi_quantize_keys(keys, 2, 32)), (values, kivi_quantize_values(values, 2, 32))):
        assert torch.all(qt.scale == 0) and torch.all(qt.codes == 0)
        d = kivi_dequantize(qt)
        assert not bool(torch.isnan(d).any())
        assert torch.equal(d, x.float())  # exact: x' = 0 * 0 + mn


def test_extreme_fp16_range():
    x = torch.tensor([[-65504.0], [65504.0], [0.0], [1.0]], dtype=torch.float16)
    qt = kivi_quantize_keys(x, 2, 4)
    # scale = fp16(131008 / 3) = 43680; (0 + 65504) / 43680 = 1.4996 -> 1
    assert qt.scale.item() == 43680.0 and qt.codes[:, 0].tolist() == [0, 3, 1, 1]
    assert bool(((kivi_dequantize(qt).double() - x.double()).abs() <= kivi_error_bound(qt)).all())


@pytest.mark.parametrize("bits", KIVI_BITS)
def test_measured_error_gaussian_with_outlier_channels(bits):
    g = _gen(2024)
    t, c = 1024, 128
    k = torch.randn(t, c, generator=g)
    outliers = torch.randperm(c, generator=g)[:8]
    k[:, outliers] = k[:, outliers] * 15 + 5
    v = torch.randn(t, c, generator=g)
    k, v = k.half(), v.half()
    err_k = _rel_err(kivi_dequantize(kivi_quantize_keys(k, bits, 32)), k)
    err_v = _rel_err(kivi_dequantize(kivi_quantize_values(v, bits, 32)), v)
    assert err_k <= REL_ERR_BOUND[bits]
    assert err_v <= REL_ERR_BOUND[bits]
    # the reason KIVI quantizes keys per channel: per-token key groups do worse on outlier channels
    err_k_per_token = _rel_err(kivi_dequantize(kivi_quantize_values(k, bits, 32)), k)
    assert err_k < 0.8 * err_k_per_token


# Groups of 4 whose min and/or max is a zero of either sign (the bits torch's amin / amax return
# for them depend on the tensor shape: keys at C = 48 vs C = 128 differed before the +0 rule).
_SIGNED_ZERO_GROUPS = [
    [0.0, -0.0, 0.0, -0.0],  # mixed zeros
    [-0.0, 0.0, -0.0, 0.0],
    [-0.0, -0.0, 0.0, 0.0],
    [0.0, 0.0, -0.0, -0.0],
    [-0.0, -0.0, -0.0, -0.0],  # all -0
    [0.0, 0.0, 0.0, 0.0],
    [-0.0, 1.0, 2.0, 3.0],  # -0 beside positives: min is a zero
    [1.0, 0.0, -0.0, 2.5],
    [-0.0, -1.0, -2.0, -3.0],  # -0 beside negatives: max is a zero
    [-1.5, 0.0, -0.0, -4.0],
    [-0.0, 7.0, 0.0, -0.0],
    [-2.0, -0.0, 0.0, 3.0],  # zeros strictly inside the range
    [1.0, 1.0, 1.0, 1.0],  # no zeros (controls)
    [-3.0, 0.5, 2.0, -1.0],
]


def _f16_bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().view(torch.int16).numpy().astype(np.uint16)


def _signed_zero_layout(group: int, order: list[int], t_or_c: int, axis: str):
    """Place pattern ``order[j]`` in group slot ``j`` of a keys ``[k*group, t_or_c]`` or values
    ``[t_or_c, k*group]`` tensor (``k`` group rows / columns); other slots are a constant 0.25."""
    groups = torch.tensor(_SIGNED_ZERO_GROUPS, dtype=torch.float16)
    if axis == "keys":
        rows = -(-len(order) // t_or_c)
        x = torch.full((rows * group, t_or_c), 0.25, dtype=torch.float16)
        for j, pi in enumerate(order):
            x[(j // t_or_c) * group : (j // t_or_c + 1) * group, j % t_or_c] = groups[pi]
        return x, [((j // t_or_c), j % t_or_c) for j in range(len(order))]
    cols = -(-len(order) // t_or_c)
    x = torch.full((t_or_c, cols * group), 0.25, dtype=torch.float16)
    for j, pi in enumerate(order):
        x[j % t_or_c, (j // t_or_c) * group : (j // t_or_c + 1) * group] = groups[pi]
    return x, [(j % t_or_c, j // t_or_c) for j in range(len(order))]


@pytest.mark.parametrize("bits", KIVI_BITS)
@pytest.mark.parametrize("axis", ["keys", "values"])
def test_signed_zero_min_max_are_positive_zero(axis, bits):
    """A zero ``mn`` / ``mx`` is +0 (module docstring, step 1): stored ``mn`` and ``scale`` bits are
    the same in every tensor shape and layout, never -0, and match the numpy reference."""
    group, n = 4, len(_SIGNED_ZERO_GROUPS)
    quant = kivi_quantize_keys if axis == "keys" else kivi_quantize_values
    layouts = [
        (list(range(n)), 128),  # keys [4, 128] / values [128, 4]: the wide vectorized reductions
        (list(reversed(range(n))), 48),  # keys [4, 48] / values [48, 4]
        (list(range(n)) * 3, 5),  # keys [36, 5] / values [5, 36]: several groups per channel / token
    ]
    seen = []
    for order, width in layouts:
        x, where = _signed_zero_layout(group, order, width, axis)
        qt = quant(x, bits, group)
        mn_bits, sc_bits = _f16_bits(qt.mn), _f16_bits(qt.scale)
        got = {}
        for (r, c), pi in zip(where, order):
            if axis == "keys":
                codes = qt.codes[r * group : (r + 1) * group, c]
            else:
                codes = qt.codes[r, c * group : (c + 1) * group]
            got.setdefault(pi, (int(mn_bits[r, c]), int(sc_bits[r, c]), codes.tolist()))
            assert got[pi] == (int(mn_bits[r, c]), int(sc_bits[r, c]), codes.tolist())
        assert not (mn_bits == 0x8000).any(), "a stored min is -0"
        assert not (sc_bits & 0x8000).any(), "a stored scale has its sign bit set"
        seen.append(got)
    for pi, g in enumerate(_SIGNED_ZERO_GROUPS):
        q, s, m = _reference_quantize_group(np.array(g, dtype=np.float16), bits)
        bits16 = [int(np.array(v, dtype=np.float16).view(np.uint16)) for v in (m, s)]
        want = (bits16[0], bits16[1], q.tolist())
        for got in seen:
            assert got[pi] == want, f"group {g}: (mn bits, scale bits, codes) {got[pi]} != {want}"
        if min(g) == 0:
            assert want[0] == 0x0000


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------


def _expected_residuals(t: int, r: int, g: int) -> tuple[int, int]:
    rk = t if t < r + g else r + (t - r) % g
    return rk, min(t, r)


@pytest.mark.parametrize("bits", KIVI_BITS)
@pytest.mark.parametrize("t, r, g", [(100, 32, 32), (31, 32, 32), (64, 0, 32), (70, 5, 16), (1, 0, 1)])
def test_cache_policy_and_materialize(bits, t, r, g):
    c = 32
    k = torch.randn(t, c, generator=_gen(t + r)).half()
    v = torch.randn(t, c, generator=_gen(t + r + 1)).half()
    cache = KiviCache(c, bits=bits, group=g, residual=r, value_group=16 if g > 16 else g)
    for i in range(t):
        cache.append(k[i], v[i])
        rk, rv = _expected_residuals(i + 1, r, g)
        assert cache.residual_keys().shape == (rk, c) and cache.residual_values().shape == (rv, c)
    assert len(cache) == t
    rk, rv = _expected_residuals(t, r, g)
    kk, vv = cache.materialize()
    assert kk.shape == vv.shape == (t, c) and kk.dtype == torch.float32
    # residual part is the exact fp16 recent tokens
    assert torch.equal(kk[t - rk :], k[t - rk :].float())
    assert torch.equal(vv[t - rv :], v[t - rv :].float())
    # quantized part equals quantizing the whole history at once
    if t - rk:
        whole = kivi_quantize_keys(k[: t - rk], bits, g)
        qk = cache.quantized_keys()
        assert torch.equal(qk.codes, whole.codes) and torch.equal(qk.scale, whole.scale)
        assert torch.equal(kk[: t - rk], kivi_dequantize(whole))
    else:
        assert cache.quantized_keys() is None
    if t - rv:
        whole_v = kivi_quantize_values(v[: t - rv], bits, cache.value_group)
        assert torch.equal(cache.quantized_values().codes, whole_v.codes)
        assert torch.equal(vv[: t - rv], kivi_dequantize(whole_v))
    # byte accounting
    expect = (rk + rv) * c * 2
    if t - rk:
        expect += cache.quantized_keys().stored_bytes()
    if t - rv:
        expect += cache.quantized_values().stored_bytes()
    assert cache.stored_bytes() == expect
    assert cache.dense_fp16_bytes() == 2 * t * c * 2


def test_cache_max_length_2bit():
    t, c = 4096, 128
    g = _gen(4096)
    k = torch.randn(t, c, generator=g)
    k[:, :4] *= 20
    k, v = k.half(), torch.randn(t, c, generator=g).half()
    cache = KiviCache(c, bits=2, group=32, residual=32)
    cache.extend(k, v)
    assert len(cache) == t
    assert cache.quantized_keys().tokens == t - 32 and cache.quantized_values().tokens == t - 32
    kk, vv = cache.materialize()
    assert torch.equal(cache.quantized_keys().codes, kivi_quantize_keys(k[:-32], 2, 32).codes)
    assert _rel_err(kk, k) <= REL_ERR_BOUND[2] and _rel_err(vv, v) <= REL_ERR_BOUND[2]
    # per token, 2-bit: keys 32 B codes + 16 B scale/min (per 32-token group: 128*4 B),
    # values 32 B codes + 4 groups * 4 B; residual 32 tokens fp16
    q_tokens = t - 32
    expect = q_tokens * (32 + 16) * 2 + 32 * c * 2 * 2
    assert cache.stored_bytes() == expect
    ratio = cache.stored_bytes() / cache.dense_fp16_bytes()
    assert abs(ratio - 0.19384765625) < 1e-12  # 406,528 B vs 2,097,152 B


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


def test_bad_bits_and_groups():
    x = torch.zeros(64, 32, dtype=torch.float16)
    for bits in (3, 1, 16, 0):
        with pytest.raises(FormatError, match=rf"bits must be one of \(2, 4, 8\), got {bits}"):
            kivi_quantize_keys(x, bits, 32)
    with pytest.raises(FormatError, match="group 48 must divide the token count T=64"):
        kivi_quantize_keys(x, 2, 48)
    with pytest.raises(FormatError, match="group 24 must divide the channel count C=32"):
        kivi_quantize_values(x, 4, 24)
    with pytest.raises(FormatError, match="group size must be a positive int, got 0"):
        kivi_quantize_values(x, 4, 0)
    with pytest.raises(FormatError, match="bits must be one of"):
        KiviCache(32, bits=3)
    with pytest.raises(FormatError, match="value group 24 must divide channels=32"):
        KiviCache(32, group=24)
    with pytest.raises(FormatError, match="residual window must be an int >= 0, got -1"):
        KiviCache(32, residual=-1)
    with pytest.raises(FormatError, match="channels must be a positive int"):
        KiviCache(0)


def test_bad_shapes_and_dtypes():
    with pytest.raises(FormatError, match="expected dtype torch.float16, got torch.float32"):
        kivi_quantize_keys(torch.zeros(32, 8), 2, 32)
    with pytest.raises(FormatError, match=r"expected shape \[T, C\], got \(32,\)"):
        kivi_quantize_values(torch.zeros(32, dtype=torch.float16), 2, 32)
    with pytest.raises(FormatError, match=r"expected shape \[T, C\], got \(1, 32, 8\)"):
        kivi_quantize_keys(torch.zeros(1, 32, 8, dtype=torch.float16), 2, 32)
    cache = KiviCache(32)
    with pytest.raises(FormatError, match=r"key row: expected shape \(32,\), got \(16,\)"):
        cache.append(torch.zeros(16, dtype=torch.float16), torch.zeros(32, dtype=torch.float16))
    with pytest.raises(FormatError, match="value row: expected a float16 tensor, got torch.bfloat16"):
        cache.append(torch.zeros(32, dtype=torch.float16), torch.zeros(32, dtype=torch.bfloat16))
    with pytest.raises(FormatError, match=r"keys \(4, 32\) and values \(5, 32\) differ"):
        cache.extend(torch.zeros(4, 32, dtype=torch.float16), torch.zeros(5, 32, dtype=torch.float16))
    assert len(cache) == 0


def test_nonfinite_rejected():
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.zeros(32, 8, dtype=torch.float16)
        x[3, 5] = bad
        with pytest.raises(NonFiniteError, match=r"KIVI keys: 1 non-finite value\(s\) \(first at index \(3, 5\)"):
            kivi_quantize_keys(x, 2, 32)
        with pytest.raises(NonFiniteError, match="KIVI values"):
            kivi_quantize_values(x, 2, 8)
        cache = KiviCache(8, group=8)
        with pytest.raises(NonFiniteError, match="KiviCache value row"):
            cache.append(torch.zeros(8, dtype=torch.float16), x[3])
        assert len(cache) == 0  # nothing appended


def test_kivi_tensor_validation():
    good = kivi_quantize_keys(torch.randn(32, 8, generator=_gen(1)).half(), 2, 32)
    with pytest.raises(FormatError, match=r"codes \(2-bit\): values must lie in \[0, 3\], found \[0, 4\]"):
        KiviTensor(good.codes.clone().fill_(4).index_fill_(0, torch.tensor([0]), 0), good.scale, good.mn, 2, 32, "keys")
    with pytest.raises(FormatError, match=r"scale: expected shape \(1, 8\), got \(8,\)"):
        KiviTensor(good.codes, good.scale[0], good.mn, 2, 32, "keys")
    with pytest.raises(FormatError, match="mn: expected a float16 tensor"):
        KiviTensor(good.codes, good.scale, good.mn.float(), 2, 32, "keys")
    with pytest.raises(FormatError, match="axis must be 'keys' or 'values', got 'rows'"):
        KiviTensor(good.codes, good.scale, good.mn, 2, 32, "rows")
    with pytest.raises(FormatError, match="scales must be >= 0"):
        KiviTensor(good.codes, -good.scale - 1, good.mn, 2, 32, "keys")
    with pytest.raises(FormatError, match="codes: expected dtype torch.int64"):
        KiviTensor(good.codes.int(), good.scale, good.mn, 2, 32, "keys")
    with pytest.raises(FormatError, match=r"expected word array \(1, 8, 2\)"):
        unpack_kivi_codes(torch.zeros(1, 8, 1, dtype=torch.int32), bits=2, group=32, axis="keys", tokens=32, channels=8)
