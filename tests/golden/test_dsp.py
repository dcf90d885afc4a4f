"""Tests of golden/dsp.py: slice models (wrap semantics) and packings (exhaustive, depth bounds)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ternopu.golden.dsp import (
    DSP48E2,
    DSP58,
    dsp48e2,
    dsp58,
    dsp_slice,
    pack_int4x2,
    pack_int4x3,
    pack_int8x2,
    packing,
    unpack_int4x2,
    unpack_int4x3,
    unpack_int8x2,
    wrap,
)
from ternopu.golden.errors import FormatError

SLICES = ["dsp48e2", "dsp58"]


def test_wrap_and_ports():
    assert wrap(torch.tensor([2**17, -(2**17) - 1, 5]), 18).tolist() == [-(2**17), 2**17 - 1, 5]
    # multiplier: 27 x 18 signed extremes, exact
    p = dsp48e2(-(2**26), -(2**17))
    assert int(p) == 2**43
    # A enters through its low 27 bits: bit 27.. of a 30-bit A are dropped
    assert int(dsp48e2(2**27 + 3, 1)) == 3
    # pre-adder wraps at 27 bits
    assert int(dsp48e2(2**26 - 1, 1, d=1, preadd="add")) == -(2**26)
    assert int(dsp48e2(5, 1, d=2, preadd="sub")) == -3
    # P wraps at 48 bits (accumulation overflow), C port adds
    assert int(dsp48e2(1, 1, c=2**47 - 1)) == -(2**47)
    assert int(dsp48e2(3, 4, c=5, p_in=100)) == 117
    # DSP58: 24-bit B, 58-bit P
    assert int(dsp58(-(2**26), -(2**23))) == 2**49
    assert int(dsp58(1, 2**23)) == -(2**23)  # B wraps at 24 bits
    assert int(dsp58(1, 1, c=2**57 - 1)) == -(2**57)
    with pytest.raises(FormatError, match="preadd"):
        dsp48e2(1, 1, preadd="mul")
    with pytest.raises(FormatError, match="unknown DSP slice"):
        dsp_slice("dsp48", 1, 1)


@given(
    st.integers(-(2**29), 2**29 - 1),
    st.integers(-(2**17), 2**17 - 1),
    st.integers(-(2**47), 2**47 - 1),
    st.integers(-(2**26), 2**26 - 1),
)
def test_dsp48e2_matches_formula(a, b, c, d):
    a27 = ((a + 2**26) % 2**27) - 2**26
    for mode, ad in (("off", a27), ("add", a27 + d), ("sub", d - a27)):
        ad = ((ad + 2**26) % 2**27) - 2**26
        want = ((ad * b + c + 2**47) % 2**48) - 2**47
        assert int(dsp48e2(a, b, c, d, preadd=mode)) == want


def test_depths_documented():
    assert packing("int8x2", "dsp48e2").depth == 7
    assert packing("int8x2", "dsp58").depth == 7
    assert packing("int4x2", "dsp48e2", 14).depth == 32
    assert packing("int4x2", "dsp48e2", 16).depth == 8
    assert packing("int4x2", "dsp48e2", 12).depth == 128
    assert packing("int4x2", "dsp58", 8).depth == 2048
    assert packing("int4x3", "dsp48e2").depth == 1
    with pytest.raises(FormatError, match="mant_bits must lie in \\[2, 18\\]"):
        packing("int4x2", "dsp48e2", 20)
    assert packing("int4x2", "dsp58", 19).depth == 1
    with pytest.raises(FormatError, match="overflow the 22-bit field"):
        packing("int4x2", "dsp58", 20)
    with pytest.raises(FormatError, match="unknown packing"):
        packing("int2x8")


@pytest.mark.parametrize("dsp", SLICES)
def test_int8x2_exhaustive_pairs(dsp):
    """All 2**16 (a, w) pairs in the high and the low field, with the other field at extremes."""
    a = torch.arange(-128, 128).repeat_interleave(256)
    w = torch.arange(-128, 128).repeat(256)
    for other in (-128, -1, 0, 127):
        o = torch.full_like(a, other)
        for hi_op, lo_op in ((a, o), (o, a)):
            pk = pack_int8x2(hi_op, lo_op, w, dsp=dsp)
            hi, lo = unpack_int8x2(dsp_slice(dsp, **pk.ports()), dsp=dsp)
            assert torch.equal(hi, hi_op * w) and torch.equal(lo, lo_op * w)


@pytest.mark.parametrize("dsp", SLICES)
def test_int8x2_accumulation_depth(dsp):
    """Worst-case sums up to the documented depth are exact; one more can break the low field."""
    depth = packing("int8x2", dsp).depth
    g = torch.Generator().manual_seed(1)
    for a_lo, w in ((-128, -128), (-128, 127), (127, -128)):
        for n in (depth, depth + 1):
            p = None
            a_hi = torch.randint(-128, 128, (n,), generator=g)
            for i in range(n):
                pk = pack_int8x2(a_hi[i], a_lo, w, dsp=dsp)
                p = dsp_slice(dsp, **pk.ports(), p_in=p)
            hi, lo = unpack_int8x2(p, dsp=dsp)
            exact = int(lo) == n * a_lo * w and int(hi) == int((a_hi * w).sum())
            if n == depth:
                assert exact
            elif a_lo == w == -128:
                assert not exact  # the bound is tight for the +2**14 product


@pytest.mark.parametrize("dsp", SLICES)
def test_int4x3_exhaustive(dsp):
    """All 16 x 16 x 16 x 256 (q2, q1, q0, x) combinations of the three-product packing."""
    q = torch.arange(16)
    q2 = q.repeat_interleave(256)
    q1 = q.repeat_interleave(16).repeat(16)
    q0 = q.repeat(256)
    for xv in range(-128, 128):
        x = torch.full_like(q0, xv)
        pk = pack_int4x3(q2, q1, q0, x, dsp=dsp)
        assert int(pk.a.max()) < 2**26  # plain concatenation fits the 27-bit A input
        p = dsp_slice(dsp, **pk.ports())
        r2, r1, r0 = unpack_int4x3(p, x, dsp=dsp)
        assert torch.equal(r2, q2 * xv) and torch.equal(r1, q1 * xv) and torch.equal(r0, q0 * xv)


@pytest.mark.parametrize("dsp", SLICES)
def test_int4x2_exhaustive_int8(dsp):
    """All 16 x 16 x 256 (q_hi, q_lo, x) with an INT8 shared operand."""
    q = torch.arange(16)
    qh = q.repeat_interleave(16).repeat(256)
    ql = q.repeat(16 * 256)
    x = torch.arange(-128, 128).repeat_interleave(256)
    pk = pack_int4x2(qh, ql, x, mant_bits=8, dsp=dsp)
    hi, lo = unpack_int4x2(dsp_slice(dsp, **pk.ports()), x, dsp=dsp)
    assert torch.equal(hi, qh * x) and torch.equal(lo, ql * x)


@pytest.mark.parametrize("dsp,mant_bits", [("dsp48e2", 14), ("dsp48e2", 16), ("dsp48e2", 12), ("dsp58", 14)])
def test_int4x2_mantissa_extremes_and_depth(dsp, mant_bits):
    """Mantissa extremes with every code pair, and a full-depth accumulation of worst cases."""
    mmax = (1 << (mant_bits - 1)) - 1
    q = torch.arange(16)
    qh, ql = q.repeat_interleave(16), q.repeat(16)
    for mv in (mmax, -mmax, 1, -1, 0):
        pk = pack_int4x2(qh, ql, mv, mant_bits=mant_bits, dsp=dsp)
        hi, lo = unpack_int4x2(dsp_slice(dsp, **pk.ports()), mv, dsp=dsp)
        assert torch.equal(hi, qh * mv) and torch.equal(lo, ql * mv)
    depth = packing("int4x2", dsp, mant_bits).depth
    g = torch.Generator().manual_seed(2)
    for q_lo, mv in ((0, mmax), (0, -mmax), (15, -mmax)):  # (8 - q) * m extremes
        m = torch.full((depth,), mv)
        m[::3] = torch.randint(-mmax, mmax + 1, (len(m[::3]),), generator=g) if q_lo == 15 else mv
        q_hi = torch.randint(0, 16, (depth,), generator=g)
        p = None
        for i in range(depth):
            pk = pack_int4x2(q_hi[i], q_lo, m[i], mant_bits=mant_bits, dsp=dsp)
            p = dsp_slice(dsp, **pk.ports(), p_in=p)
        hi, lo = unpack_int4x2(p, m.sum(), dsp=dsp)
        assert int(hi) == int((q_hi * m).sum()) and int(lo) == int((q_lo * m).sum())
    # one product beyond the depth at the worst case overflows the low field
    p = None
    for _ in range(depth + 1):
        pk = pack_int4x2(0, 0, -mmax, mant_bits=mant_bits, dsp=dsp)
        p = dsp_slice(dsp, **pk.ports(), p_in=p)
    _, lo = unpack_int4x2(p, -mmax * (depth + 1), dsp=dsp)
    assert int(lo) != 0


def test_packing_errors():
    with pytest.raises(FormatError, match=r"pack_int8x2 w: values must lie in \[-128, 127\]"):
        pack_int8x2(1, 1, 128)
    with pytest.raises(FormatError, match=r"pack_int4x3 code 0: values must lie in \[0, 15\]"):
        pack_int4x3(16, 0, 0, 1)
    with pytest.raises(FormatError, match=r"pack_int4x3 x"):
        pack_int4x3(1, 0, 0, -129)
    with pytest.raises(FormatError, match=r"pack_int4x2 mantissa: values must lie in \[-8191, 8191\]"):
        pack_int4x2(1, 2, -8192, mant_bits=14)
    with pytest.raises(FormatError, match=r"pack_int4x2 code 1"):
        pack_int4x2(1, -1, 5)


def test_slice_constants():
    assert (DSP48E2.a_bits, DSP48E2.b_bits, DSP48E2.c_bits, DSP48E2.d_bits, DSP48E2.p_bits) == (30, 18, 48, 27, 48)
    assert (DSP58.b_bits, DSP58.p_bits) == (24, 58)
