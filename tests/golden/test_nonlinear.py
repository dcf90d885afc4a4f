"""Tests of the NPE nonlinear numerics (ternopu.golden.nonlinear): bounds measured, not assumed."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ternopu.golden import nonlinear as nl
from ternopu.golden.errors import ConfigError, FormatError, NonFiniteError

F32 = torch.float32


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(F32)


def _consecutive(start: float, count: int) -> torch.Tensor:
    """``count`` consecutive binary32 values starting at ``start`` (moving away from zero)."""
    b = int(torch.tensor(start, dtype=F32).view(torch.int32))
    return torch.arange(b, b + count, dtype=torch.int32).view(F32)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a.view(torch.int32) == b.view(torch.int32)).all())


# ------------------------------------------------------------------------------------- error table
@pytest.mark.slow
def test_error_table_within_documented_bounds():
    rows = nl.error_table()
    names = {r["name"] for r in rows}
    assert {"exp_approx", "rsqrt_approx", "recip_approx", "silu", "softmax_online", "rmsnorm",
            "rope"} <= names
    for r in rows:
        assert r["points"] > 0
        assert 0.0 <= r["max_err"] <= r["bound"], r


# --------------------------------------------------------------------------------------------- exp
def test_exp_fp16_exhaustive_and_dense_sweep():
    xs = nl._exp_sweep()
    assert nl.max_rel_err(nl.exp_approx(xs), nl.exp_ref(xs)) <= nl.EXP_MAX_REL_ERR


def test_exp_exact_at_zero_and_lut_points():
    assert nl.exp_approx(torch.tensor([0.0, -0.0])).tolist() == [1.0, 1.0]
    # the LUT holds 2^(j/64) rounded once from float64
    ref = torch.tensor([2.0 ** (j / 64) for j in range(64)], dtype=torch.float64).to(F32)
    assert _bits_equal(nl.EXP_LUT, ref)


@pytest.mark.parametrize("start", [1e-30, 1e-3, 0.3, 1.0, 7.0, 50.0, -1e-30, -0.3, -1.0, -20.0, -80.0])
def test_exp_monotone_on_consecutive_floats(start):
    x = _consecutive(start, 200_000)
    x = x[torch.isfinite(x) & (x <= nl.EXP_MAX_INPUT)]
    x, _ = torch.sort(x)
    y = nl.exp_approx(x)
    assert bool((y[1:] >= y[:-1]).all())


def test_exp_monotone_over_all_fp16():
    h = nl._fp16_all_finite()
    h, _ = torch.sort(h[h <= nl.EXP_MAX_INPUT])
    y = nl.exp_approx(h)
    assert bool((y[1:] >= y[:-1]).all())


def test_exp_flush_and_limits():
    lo = nl.EXP_FLUSH_BELOW
    y = nl.exp_approx(torch.tensor([lo - 0.01, lo + 0.01, -1e30, -3.0e38, nl.EXP_MAX_INPUT]))
    assert y[0] == 0 and y[2] == 0 and y[3] == 0
    assert y[1] >= 2.0 ** -126
    assert math.isfinite(float(y[4]))
    assert abs(float(y[4]) / math.exp(nl.EXP_MAX_INPUT) - 1) <= nl.EXP_MAX_REL_ERR
    # the result is never subnormal
    x = torch.linspace(-88.5, -86.5, 100_001, dtype=torch.float64).to(F32)
    y = nl.exp_approx(x)
    assert bool(((y == 0) | (y >= 2.0 ** -126)).all())


def test_exp_bad_inputs():
    with pytest.raises(FormatError, match="<= 88"):
        nl.exp_approx(torch.tensor([88.5]))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.exp_approx(torch.tensor([0.0, float("nan")]))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.exp_approx(torch.tensor([float("-inf")]))
    with pytest.raises(FormatError, match="float32"):
        nl.exp_approx(torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(FormatError, match="torch.Tensor"):
        nl.exp_approx([1.0])


def test_exp_half_input_widened_exactly():
    h = _randn(1000, seed=1, scale=3).to(torch.float16)
    assert _bits_equal(nl.exp_approx(h), nl.exp_approx(h.to(F32)))


# ------------------------------------------------------------------------------- rsqrt / reciprocal
def test_rsqrt_exhaustive_over_two_binades():
    y = nl._mantissa_sweep(1.0, 2)  # every binary32 in [1, 4): 2^24 values
    assert y.numel() == 1 << 24
    assert nl.max_rel_err(nl.rsqrt_approx(y), nl.rsqrt_ref(y)) <= nl.RSQRT_MAX_REL_ERR


@given(st.floats(min_value=2.0 ** -126, max_value=2.0 ** 125, width=32))
def test_rsqrt_scales_exactly_by_powers_of_four(x):
    t = torch.tensor([x, 4 * x], dtype=F32)
    r = nl.rsqrt_approx(t)
    assert float(r[1]) == float(r[0]) / 2
    assert nl.max_rel_err(r, nl.rsqrt_ref(t)) <= nl.RSQRT_MAX_REL_ERR


def test_rsqrt_powers_of_four_exact_and_extremes():
    p4 = torch.tensor([4.0 ** k for k in range(-63, 64)], dtype=torch.float64).to(F32)
    assert torch.equal(nl.rsqrt_approx(p4).to(torch.float64), nl.rsqrt_ref(p4))
    ext = torch.tensor([2.0 ** -126, 2.0 ** -125, 3.4028234663852886e38, 1e-30, 1e30])
    assert nl.max_rel_err(nl.rsqrt_approx(ext), nl.rsqrt_ref(ext)) <= nl.RSQRT_MAX_REL_ERR


def test_rsqrt_bad_inputs():
    for bad in ([-1.0], [0.0], [-0.0], [1e-40]):
        with pytest.raises(FormatError, match="positive normal"):
            nl.rsqrt_approx(torch.tensor(bad))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.rsqrt_approx(torch.tensor([float("inf")]))


def test_recip_exhaustive_one_binade_and_signs():
    y = nl._mantissa_sweep(1.0, 1)
    assert nl.max_rel_err(nl.recip_approx(y), nl.recip_ref(y)) <= nl.RECIP_MAX_REL_ERR
    x = _randn(10_000, seed=2, scale=1e3)
    r = nl.recip_approx(x)
    assert _bits_equal(nl.recip_approx(-x), -r)
    assert nl.max_rel_err(r, nl.recip_ref(x)) <= nl.RECIP_MAX_REL_ERR


def test_recip_powers_of_two_exact_and_flush():
    p2 = torch.tensor([2.0 ** k for k in range(-126, 127)], dtype=torch.float64).to(F32)
    assert torch.equal(nl.recip_approx(p2).to(torch.float64), nl.recip_ref(p2))
    big = torch.tensor([2.0 ** 127, 3.0e38, -3.0e38])
    assert nl.recip_approx(big).tolist() == [0.0, 0.0, -0.0]
    with pytest.raises(FormatError, match="nonzero"):
        nl.recip_approx(torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------------------- sum of squares
def _exact_truncated_sum(x: torch.Tensor) -> int:
    """Reference: sum over elements of floor(float32(x*x) * 2^62), with Python Fractions."""
    total = 0
    for v in (x * x).tolist():
        total += math.floor(Fraction(v) * 2 ** -nl.SS_LSB_EXP)
    return total


def test_sum_squares_exact_against_fractions():
    x = torch.cat([_randn(300, seed=3, scale=100), _randn(300, seed=4, scale=1e-9),
                   torch.tensor([2.0 ** 24, -(2.0 ** 24), 2.0 ** -31, 2.0 ** -32, 0.0, -0.0, 1e-38])])
    acc = nl.SumSquares()
    acc.update(x)
    assert acc.exact() == [_exact_truncated_sum(x)]
    exact = Fraction(acc.exact()[0], 2 ** -nl.SS_LSB_EXP)
    assert abs(Fraction(float(acc.result())) - exact) <= exact * Fraction(1, 2 ** 24)


def test_int_to_f32_rounds_half_to_even():
    assert nl._int_to_f32((1 << 24) + 1, 0) == 2.0 ** 24
    assert nl._int_to_f32((1 << 24) + 3, 0) == 2.0 ** 24 + 4
    assert nl._int_to_f32((1 << 24) + 2, 0) == 2.0 ** 24 + 2
    assert nl._int_to_f32((1 << 100) + (1 << 76) + 1, -62) == math.ldexp((1 << 23) + 1, 77 - 62)
    gen = torch.Generator().manual_seed(5)
    for n in torch.randint(1, 1 << 53, (2000,), generator=gen).tolist():
        # below 2^53 the float64 is exact, so float64 -> float32 is a single RNE rounding
        assert nl._int_to_f32(n, 0) == float(torch.tensor(n, dtype=torch.float64).to(F32))


@settings(max_examples=30)
@given(st.lists(st.integers(min_value=0, max_value=2560), min_size=0, max_size=12),
       st.integers(min_value=0, max_value=2 ** 31))
def test_sum_squares_chunk_and_order_independent(cuts, seed):
    x = _randn(3, 2560, seed=seed % 1000, scale=10.0 ** ((seed % 7) - 3))
    bounds = sorted(set([0, 2560] + cuts))
    chunked = nl.SumSquares((3,))
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunked.update(x[:, a:b])
    whole = nl.SumSquares((3,))
    perm = torch.randperm(2560, generator=torch.Generator().manual_seed(seed % 97))
    whole.update(x[:, perm])
    assert chunked.exact() == whole.exact()
    assert _bits_equal(chunked.result(), whole.result())
    assert chunked.count == 2560


def test_sum_squares_bad_inputs():
    acc = nl.SumSquares((2,))
    with pytest.raises(FormatError, match=r"chunk shape must be"):
        acc.update(torch.ones(3, 4))
    with pytest.raises(FormatError, match="must be <= 16777216"):
        acc.update(torch.full((2, 1), 2.0 ** 25))
    with pytest.raises(NonFiniteError, match="non-finite"):
        acc.update(torch.tensor([[1.0], [float("nan")]]))
    acc.update(torch.zeros(2, nl.RMS_MAX_D))
    with pytest.raises(FormatError, match="at most 65536"):
        acc.update(torch.zeros(2, 1))


# ------------------------------------------------------------------------------------------ rmsnorm
@pytest.mark.parametrize("d", [2560, 4096, 6912])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_rmsnorm_real_shapes_within_bound(d, scale):
    x = _randn(4, d, seed=d, scale=scale)
    w = (1 + 0.2 * _randn(d, seed=d + 1)).to(F32)
    for eps in (1e-5, 1e-6):
        y = nl.rmsnorm(x, w, eps)
        assert y.dtype == F32 and y.shape == x.shape
        assert nl.max_rel_err(y, nl.rmsnorm_ref(x, w, eps)) <= nl.RMSNORM_MAX_REL_ERR


def test_rmsnorm_outliers_and_tiny_rows():
    x = _randn(2, 4096, seed=7, scale=0.5)
    x[0, 17] = 3000.0  # a "massive activation"
    x[1] = _randn(4096, seed=8, scale=1e-5)  # mean(x^2) far below eps
    w = torch.ones(4096)
    assert nl.max_rel_err(nl.rmsnorm(x, w, 1e-6), nl.rmsnorm_ref(x, w, 1e-6)) <= nl.RMSNORM_MAX_REL_ERR
    z = nl.rmsnorm(torch.zeros(1, 2560), torch.ones(2560), 1e-5)
    assert bool((z == 0).all())


def test_rmsnorm_streamed_sum_matches_direct():
    x = _randn(3, 2560, seed=9, scale=2)
    w = _randn(2560, seed=10)
    acc = nl.SumSquares((3,))
    for a in range(0, 2560, 160):
        acc.update(x[:, a:a + 160])
    assert _bits_equal(nl.rmsnorm(x, w, 1e-5, sum_squares=acc.result()), nl.rmsnorm(x, w, 1e-5))
    # rows are independent: the batched result equals row-by-row
    assert _bits_equal(nl.rmsnorm(x, w, 1e-5)[1], nl.rmsnorm(x[1:2], w, 1e-5)[0])


def test_rmsnorm_bad_inputs():
    x, w = torch.ones(2, 8), torch.ones(8)
    with pytest.raises(FormatError, match=r"weight must have shape \[8\]"):
        nl.rmsnorm(x, torch.ones(7), 1e-5)
    with pytest.raises(ConfigError, match="eps"):
        nl.rmsnorm(x, w, 0.0)
    with pytest.raises(ConfigError, match="eps"):
        nl.rmsnorm(x, w, float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.rmsnorm(torch.tensor([[1.0, float("inf")]]), torch.ones(2), 1e-5)
    with pytest.raises(FormatError, match="D >= 1"):
        nl.rmsnorm(torch.ones(2, 0), torch.ones(0), 1e-5)
    with pytest.raises(FormatError, match="sum_squares must have shape"):
        nl.rmsnorm(x, w, 1e-5, sum_squares=torch.ones(3))


# ------------------------------------------------------------------------------------------ softmax
@pytest.mark.parametrize("t,scale,chunk", [(1, 1.0, 1), (5, 2.0, 2), (128, 5.0, 16),
                                           (4096, 3.0, 64), (4096, 30.0, 1), (4096, 8.0, 4096),
                                           (4095, 1.0, 7)])
def test_softmax_random_rows_within_bound(t, scale, chunk):
    s = _randn(4, t, seed=t + chunk, scale=scale)
    p = nl.softmax_online(s, chunk)
    assert p.dtype == F32 and p.shape == s.shape
    assert nl.softmax_rel_err(p, s) <= nl.SOFTMAX_MAX_REL_ERR
    assert float((p.to(torch.float64).sum(-1) - 1).abs().max()) <= nl.SOFTMAX_SUM_ERR


@pytest.mark.parametrize("span", [0.01, 4.0, 40.0])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_softmax_ascending_scores_fold_bound(span, chunk):
    """Ascending scores make the reference ceil(max) grow as often as possible (worst case)."""
    s = torch.linspace(-span / 2, span / 2, 4096, dtype=torch.float64).to(F32)[None]
    state = nl.OnlineSoftmax()
    for a in range(0, 4096, chunk):
        state.update(s[:, a:a + chunk])
    p = state.probs(s)
    assert _bits_equal(p, nl.softmax_online(s, chunk))
    folds = int(state.folds.max())
    assert folds <= math.ceil(span / 2) - math.floor(-span / 2)
    assert nl.softmax_rel_err(p, s) <= nl.SOFTMAX_MAX_REL_ERR + folds * nl.SOFTMAX_FOLD_REL_ERR
    assert float((p.to(torch.float64).sum(-1) - 1).abs().max()) <= nl.SOFTMAX_SUM_ERR


@settings(max_examples=25)
@given(st.integers(min_value=1, max_value=600), st.integers(min_value=0, max_value=1000))
def test_softmax_chunk_independent_when_max_comes_first(chunk, seed):
    s = _randn(2, 600, seed=seed, scale=4)
    s[:, 0] = s.amax(dim=-1) + 1  # the row max is the first score
    assert _bits_equal(nl.softmax_online(s, chunk), nl.softmax_online(s, 600))


@settings(max_examples=25)
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=1000))
def test_softmax_chunkings_agree_within_bound(chunk, seed):
    s = _randn(3, 300, seed=seed, scale=6)
    a, b = nl.softmax_online(s, chunk), nl.softmax_online(s, 1)
    assert nl.softmax_rel_err(a, s) <= nl.SOFTMAX_MAX_REL_ERR
    assert nl.max_rel_err(a, b.to(torch.float64)) <= 2 * nl.SOFTMAX_MAX_REL_ERR


def test_softmax_streaming_api_and_corners():
    s = _randn(2, 1000, seed=11, scale=3)
    st_ = nl.OnlineSoftmax()
    for a in range(0, 1000, 100):
        st_.update(s[:, a:a + 100])
    assert _bits_equal(st_.probs(s), nl.softmax_online(s, 100))
    assert nl.softmax_online(torch.tensor([[3.5]])).tolist() == [[1.0]]
    # masked (-1e30) scores give exactly 0 and leave the rest a proper distribution
    m = _randn(1, 4096, seed=12, scale=2)
    m[0, 2000:] = -1e30
    p = nl.softmax_online(m)
    assert bool((p[0, 2000:] == 0).all())
    assert nl.softmax_rel_err(p[:, :2000], m[:, :2000]) <= nl.SOFTMAX_MAX_REL_ERR
    # equal scores: uniform
    u = nl.softmax_online(torch.full((1, 4096), -7.25))
    assert bool((u == u[0, 0]).all()) and abs(float(u[0, 0]) * 4096 - 1) <= nl.SOFTMAX_MAX_REL_ERR
    # huge spread: the tail flushes to 0, never subnormal
    p = nl.softmax_online(torch.tensor([[0.0, -50.0, -100.0, -1e6]]))
    assert p[0, 2] == 0 and p[0, 3] == 0 and p[0, 1] > 0


def test_softmax_bad_inputs():
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.softmax_online(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.softmax_online(torch.tensor([[0.0, float("-inf")]]))
    with pytest.raises(ConfigError, match="chunk"):
        nl.softmax_online(torch.zeros(1, 4), chunk=0)
    with pytest.raises(ConfigError, match="chunk"):
        nl.softmax_online(torch.zeros(1, 4), chunk=5000)
    with pytest.raises(FormatError, match="T >= 1"):
        nl.softmax_online(torch.zeros(1, 0))
    with pytest.raises(FormatError, match="2\\^120"):
        nl.softmax_online(torch.tensor([[0.0, 1e37]]))
    st_ = nl.OnlineSoftmax()
    with pytest.raises(FormatError, match="no scores"):
        st_.probs(torch.zeros(1, 2))
    st_.update(torch.zeros(2, 3))
    with pytest.raises(FormatError, match="does not match"):
        st_.update(torch.zeros(3, 3))


# ---------------------------------------------------------------------------------- activations
def test_silu_sweep_and_corners():
    x = nl._silu_sweep()
    assert nl.max_rel_err(nl.silu(x), nl.silu_ref(x)) <= nl.SILU_MAX_REL_ERR
    c = nl.silu(torch.tensor([0.0, -0.0, 100.0, 3e38, -100.0, -3e38]))
    assert c[0] == 0 and c[1] == 0
    assert c[2] == 100.0 and c[3] == torch.tensor(3e38)
    assert c[4] == 0 and c[5] == 0  # exp flushed: true value < 4e-42
    sig = nl.sigmoid_approx(torch.tensor([0.0]))
    assert sig.tolist() == [0.5]


def test_swiglu_and_relu2_glu_bit_definitions():
    g, u = _randn(6912, seed=13, scale=3), _randn(6912, seed=14)
    assert _bits_equal(nl.swiglu(g, u), nl.silu(g) * u)
    assert _bits_equal(nl.relu2_glu(g, u), nl.relu2(g) * u)
    # relu2 is one correctly rounded square: float64 square of a float32 is exact, then round once
    assert _bits_equal(nl.relu2(g), nl.relu2_ref(g).to(F32))
    assert nl.max_rel_err(nl.swiglu(g, u), nl.swiglu_ref(g, u)) <= nl.SILU_MAX_REL_ERR + 2.0 ** -23
    assert nl.max_rel_err(nl.relu2_glu(g, u), nl.relu2_glu_ref(g, u)) <= 2 * 2.0 ** -24 + 1e-15
    assert nl.relu2(torch.tensor([-5.0, 0.0, 3.0])).tolist() == [0.0, 0.0, 9.0]


def test_residual_add_and_bad_inputs():
    a, b = _randn(4096, seed=15), _randn(4096, seed=16)
    assert _bits_equal(nl.residual_add(a, b), a + b)
    with pytest.raises(FormatError, match="same shape"):
        nl.residual_add(a, b[:10])
    with pytest.raises(FormatError, match="same shape"):
        nl.swiglu(a, b[:10])
    with pytest.raises(FormatError, match="same shape"):
        nl.relu2_glu(a, b[:10])
    with pytest.raises(FormatError, match="overflows"):
        nl.residual_add(torch.tensor([3e38]), torch.tensor([3e38]))
    with pytest.raises(FormatError, match="<= 2\\^63"):
        nl.relu2(torch.tensor([1e20]))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.silu(torch.tensor([float("nan")]))
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.swiglu(torch.tensor([1.0]), torch.tensor([float("inf")]))


# --------------------------------------------------------------------------------------------- rope
def test_rope_tables_are_rounded_float64():
    cos, sin = nl.rope_tables(4096, 128, 5e5)
    assert cos.shape == (4096, 64) and cos.dtype == F32
    p, i = 3000, 5
    ang = p * 5e5 ** (-2 * i / 128)
    assert float(cos[p, i]) == float(torch.tensor(math.cos(ang)).to(F32))
    assert float(sin[p, i]) == float(torch.tensor(math.sin(ang)).to(F32))
    assert bool((cos[0] == 1).all()) and bool((sin[0] == 0).all())


def test_rope_identity_at_position_zero():
    x = _randn(20, 128, seed=17, scale=5)
    cos, sin = nl.rope_tables(16, 128, 5e5)
    assert torch.equal(nl.rope(x, 0, cos, sin), x)


@pytest.mark.parametrize("theta", [1e4, 5e5])
def test_rope_error_up_to_4096(theta):
    cos, sin = nl.rope_tables(4096, 128, theta)
    x = _randn(32, 128, seed=18, scale=3)  # Llama-2: 32 heads of 128
    x64 = x.to(torch.float64)
    norm = torch.sqrt(x64[:, :64] ** 2 + x64[:, 64:] ** 2).repeat(1, 2)
    for pos in (1, 2, 100, 1023, 2048, 4095):
        y = nl.rope(x, pos, cos, sin)
        err = (y.to(torch.float64) - nl.rope_ref(x, pos, 128, theta)).abs() / norm
        assert float(err.max()) <= nl.ROPE_MAX_ERR
        # the rotation keeps each pair's norm
        yn = torch.sqrt(y.to(torch.float64)[:, :64] ** 2 + y.to(torch.float64)[:, 64:] ** 2)
        assert float(((yn - norm[:, :64]) / norm[:, :64]).abs().max()) <= 2 * nl.ROPE_MAX_ERR


def test_rope_order_of_ops():
    cos, sin = nl.rope_tables(64, 8, 1e4)
    x = _randn(2, 3, 8, seed=19)
    y = nl.rope(x, 33, cos, sin)
    x1, x2, c, s = x[..., :4], x[..., 4:], cos[33], sin[33]
    assert _bits_equal(y[..., :4], (x1 * c) - (x2 * s))
    assert _bits_equal(y[..., 4:], (x2 * c) + (x1 * s))


def test_rope_bad_inputs():
    cos, sin = nl.rope_tables(16, 128, 1e4)
    x = torch.zeros(4, 128)
    with pytest.raises(FormatError, match="pos must be"):
        nl.rope(x, 16, cos, sin)
    with pytest.raises(FormatError, match="pos must be"):
        nl.rope(x, -1, cos, sin)
    with pytest.raises(FormatError, match=r"\[\.\.\., H, 128\]"):
        nl.rope(torch.zeros(4, 96), 1, cos, sin)
    with pytest.raises(FormatError, match="tables"):
        nl.rope(x, 1, cos, sin[:, :10])
    with pytest.raises(NonFiniteError, match="non-finite"):
        nl.rope(torch.full((4, 128), float("nan")), 1, cos, sin)
    with pytest.raises(ConfigError, match="head_dim"):
        nl.rope_tables(16, 127, 1e4)
    with pytest.raises(ConfigError, match="max_pos"):
        nl.rope_tables(0, 128, 1e4)
    with pytest.raises(ConfigError, match="theta"):
        nl.rope_tables(16, 128, 0.5)
