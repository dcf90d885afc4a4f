"""Tests of golden/pe.py: bit-exact PE modes, folded vs unfolded math, DSP datapath, error bounds."""

from __future__ import annotations

import pytest
import torch

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat, from_bfp, to_bfp
from ternopu.golden.dsp import dsp48e2, pack_int4x2, packing, unpack_int4x2
from ternopu.golden.errors import FormatError, NonFiniteError
from ternopu.golden.pe import (
    ALIGN_GUARD_BITS,
    KIVI_BFP,
    aligned_acc_bits,
    aligned_sum,
    int4_group_acc,
    linear_bfp_int4,
    linear_bfp_int4_ref,
    pv_bfp,
    pv_bfp_kivi,
    pv_bfp_kivi_ref,
    pv_bfp_ref,
    qk_bfp,
    qk_bfp_kivi,
    qk_bfp_kivi_ref,
    qk_bfp_ref,
)
from ternopu.golden.pe_error_report import (
    PE_ERROR_TARGET,
    attention_probs,
    error_metrics,
    kivi_like,
    llm_activations,
    rtn_like_int4,
)

G = 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def int4_case(k, n, seed, outlier_scale=50.0):
    g = gen(seed)
    q, z, s = rtn_like_int4(k, n, g)
    x = llm_activations(1, k, g, outlier_scale=outlier_scale)[0]
    return x, q, z, s


def test_linear_matches_exact_group_rounding_when_aligned():
    """Independent evaluation: if no block is right-shifted, each group term is the exact
    value sum_k x_bfp[k] (q - z) s rounded once to binary32, then summed in ascending order."""
    x, q, z, s = int4_case(512, 96, 1, outlier_scale=1.0)
    b = to_bfp(x, DEFAULT_BFP)
    e = b.exp.reshape(-1, G // DEFAULT_BFP.block)
    assert int((e.amax(-1, keepdim=True) - e).max()) <= ALIGN_GUARD_BITS  # precondition
    xv = b.mant.double() * torch.pow(2.0, b.exp_per_element().double())  # exact BFP values
    w = (q - z.repeat_interleave(G, 0)).double() * s.double().repeat_interleave(G, 0)
    terms = (xv.reshape(-1, G, 1) * w.reshape(-1, G, 96)).sum(1)  # exact: < 2**53 spread
    want = terms[0].float()
    for t in terms[1:]:
        want = want + t.float()
    assert torch.equal(linear_bfp_int4(x, q, z, s, G), want)


def test_folded_equals_unfolded_when_exact():
    x, q, z, s = int4_case(1024, 64, 2)
    acc_f, e_f = int4_group_acc(x, q, z, G, folded=True)
    acc_u, e_u = int4_group_acc(x, q, z, G, folded=False)
    assert torch.equal(acc_f, acc_u) and torch.equal(e_f, e_u)


def test_folded_vs_unfolded_with_right_shifted_block():
    """A block far below the group's largest is rounded; both forms stay within the bound."""
    x, q, z, s = int4_case(256, 32, 3, outlier_scale=1.0)
    x = x.clone()
    x[:32] = (x[:32].float() * 1e-4).half()  # block 0: ~13 binades below the others
    acc_f, e = int4_group_acc(x, q, z, G, folded=True)
    acc_u, _ = int4_group_acc(x, q, z, G, folded=False)
    # each right-shifted partial is off by <= 1/2 LSB; folded form: Pa and z*Sa each
    assert int((acc_f - acc_u).abs().max()) <= 1 + 15
    ref = linear_bfp_int4_ref(x, q, z, s, G)
    assert error_metrics(linear_bfp_int4(x, q, z, s, G), ref)["rel_l2"] < 1e-3


def test_dsp_datapath_reproduces_block_partials():
    """The int4x2 packing on a DSP48E2 model, one block (32 products) accumulated in P per
    pair of outputs, yields exactly the block partials sum_k m[k] q[k, n] of the golden model."""
    x, q, z, s = int4_case(128, 8, 4)
    m = to_bfp(x).mant.reshape(4, 32)
    assert packing("int4x2", "dsp48e2", 14).depth >= 32
    qb = q.reshape(4, 32, 8)
    want = torch.einsum("bk,bkn->bn", m, qb)
    for n in range(0, 8, 2):
        p = None
        for k in range(32):
            pk = pack_int4x2(qb[:, k, n + 1], qb[:, k, n], m[:, k], mant_bits=14)
            p = dsp48e2(**pk.ports(), p_in=p)
        hi, lo = unpack_int4x2(p, m.sum(-1))
        assert torch.equal(hi, want[:, n + 1]) and torch.equal(lo, want[:, n])


def test_zero_groups_and_extreme_codes():
    k, n = 512, 16
    x = torch.randn(k, generator=gen(5)).half()
    x[128:256] = 0.0  # an all-zero group
    q = torch.zeros(k, n, dtype=torch.int64)
    q[:, 8:] = 15
    z = torch.zeros(k // G, n, dtype=torch.int64)
    z[:, 4:12] = 15
    s = torch.full((k // G, n), 0.0123, dtype=torch.float16)
    y = linear_bfp_int4(x, q, z, s, G)
    ref = linear_bfp_int4_ref(x, q, z, s, G)
    nz = ref.abs() > 0
    assert torch.equal(y[~nz], torch.zeros_like(y[~nz]))  # (q - z) == 0 columns are exactly 0
    assert error_metrics(y[nz], ref[nz])["rel_l2"] < 3e-4
    assert torch.equal(linear_bfp_int4(torch.zeros(k, dtype=torch.float16), q, z, s, G), torch.zeros(n))


def test_denormal_and_large_inputs():
    k, n = 256, 32
    _, q, z, s = int4_case(k, n, 6)
    x = torch.full((k,), 6e-8, dtype=torch.float16)  # smallest FP16 subnormals
    x[1::2] = -(2.0**-20)
    ref = linear_bfp_int4_ref(x, q, z, s, G)
    assert error_metrics(linear_bfp_int4(x, q, z, s, G), ref)["rel_l2"] == 0.0  # exact: fits BFP
    x2 = torch.randn(k, generator=gen(7)).half()
    x2[10] = 65504.0
    x2[200] = -65504.0  # a dominant value in two blocks
    ref2 = linear_bfp_int4_ref(x2, q, z, s, G)
    assert error_metrics(linear_bfp_int4(x2, q, z, s, G), ref2)["rel_l2"] < 1e-4


def test_bfloat16_activations_and_other_formats():
    x, q, z, s = int4_case(256, 16, 8)
    ref = linear_bfp_int4_ref(x.bfloat16(), q, z, s, G)
    assert error_metrics(linear_bfp_int4(x.bfloat16(), q, z, s, G), ref)["rel_l2"] < 1e-3
    for fmt in (BFPFormat(128, 14), BFPFormat(16, 12)):
        assert error_metrics(linear_bfp_int4(x, q, z, s, G, fmt), linear_bfp_int4_ref(x, q, z, s, G))["rel_l2"] < 2e-3


def test_aligned_sum_and_widths():
    acc, e = aligned_sum(torch.tensor([[3, 5, 1]]), torch.tensor([[0, 0 - ALIGN_GUARD_BITS - 1, -40]]))
    assert int(e) == -ALIGN_GUARD_BITS
    assert int(acc) == (3 << ALIGN_GUARD_BITS) + 2 + 0  # 5/2 -> 2 (tie to even), 1 * 2**-32 -> 0
    assert aligned_acc_bits(32 * 8191 * 15, 4) == 33
    assert aligned_acc_bits(32 * 8191 * 15, 4, 2 * 15 * 2047) == 49
    assert aligned_acc_bits(32 * 8191**2, 4) == 42
    assert aligned_acc_bits(32 * 8191**2, 128) == 47


def test_qk_pv_bit_exact_properties():
    g = gen(9)
    q = torch.randn(128, generator=g).half()
    k = torch.randn(40, 128, generator=g).half()
    # keys equal to the query's BFP-exact values: result is the exactly rounded dot product
    q_exact = torch.tensor([1.0, -2.0, 0.5, 3.0] * 32, dtype=torch.float16)
    k_exact = torch.tensor([[0.25, 1.0, -4.0, 2.0] * 32] * 3, dtype=torch.float16)
    assert torch.equal(qk_bfp(q_exact, k_exact), qk_bfp_ref(q_exact, k_exact).float())
    assert error_metrics(qk_bfp(q, k), qk_bfp_ref(q, k))["rel_l2"] < 5e-4
    # zero query -> exact zeros; T not a multiple of the block pads with zeros
    assert torch.equal(qk_bfp(torch.zeros(128, dtype=torch.float16), k), torch.zeros(40))
    p = attention_probs(q, k)
    v = torch.randn(40, 128, generator=g).half()
    padded = pv_bfp(torch.cat([p, torch.zeros(24)]), torch.cat([v, torch.zeros(24, 128, dtype=torch.float16)]))
    assert torch.equal(pv_bfp(p, v), padded)
    assert error_metrics(pv_bfp(p, v), pv_bfp_ref(p, v))["rel_l2"] < 5e-4
    one_hot = torch.zeros(40)
    one_hot[17] = 1.0
    # selecting one token returns that row as the value columns' BFP holds it (p = 1.0 is exact)
    v_cols = from_bfp(to_bfp(torch.cat([v, torch.zeros(24, 128, dtype=torch.float16)]).t().contiguous()))
    assert torch.equal(pv_bfp(one_hot, v), v_cols[:, 17])


def test_kivi_modes_against_reference_and_unfolded():
    g = gen(10)
    t, d = 256, 128
    q = torch.randn(d, generator=g).half()
    k = llm_activations(t, d, g, n_outliers=2, outlier_scale=8.0)
    v = torch.randn(t, d, generator=g).half()
    p = attention_probs(q, k)
    for bits in (2, 4, 8):
        kc, ks, km = kivi_like(k, bits, 32, "keys")
        vc, vs, vm = kivi_like(v, bits, 32, "values")
        ek = error_metrics(qk_bfp_kivi(q, kc, ks, km, 32), qk_bfp_kivi_ref(q, kc, ks, km, 32))
        ev = error_metrics(pv_bfp_kivi(p, vc, vs, vm, 32), pv_bfp_kivi_ref(p, vc, vs, vm, 32))
        assert ek["rel_l2"] < 4e-4 and ev["rel_l2"] < 6e-4, (bits, ek, ev)
    # codes all zero: only the min term remains, which is qk_bfp / pv_bfp of the mins
    zc = torch.zeros(t, d, dtype=torch.int64)
    assert torch.equal(qk_bfp_kivi(q, zc, ks, km, 32), qk_bfp(q, km, KIVI_BFP).repeat_interleave(32))
    assert torch.equal(pv_bfp_kivi(p, zc, vs, vm, 32), pv_bfp(p, vm, KIVI_BFP).repeat_interleave(32))


def test_error_bounds_small_shapes():
    """Measured datapath error at reduced sizes (same generators as pe_error_report)."""
    res = {}
    for seed in range(3):
        x, q, z, s = int4_case(1024, 256, 20 + seed, outlier_scale=100.0)
        res.setdefault("linear", []).append(
            error_metrics(linear_bfp_int4(x, q, z, s, G), linear_bfp_int4_ref(x, q, z, s, G))["rel_l2"]
        )
    assert max(res["linear"]) < 0.5 * PE_ERROR_TARGET, res


def test_real_shapes_llama2():
    """One Llama-2-7B FFN up-projection (4096 x 11008) token and attention over 4096 tokens."""
    x, q, z, s = int4_case(4096, 11008, 30)
    m = error_metrics(linear_bfp_int4(x, q, z, s, G), linear_bfp_int4_ref(x, q, z, s, G))
    assert m["rel_l2"] < 0.5 * PE_ERROR_TARGET and m["max_rel"] < PE_ERROR_TARGET, m
    g = gen(31)
    t, d = 4096, 128
    qv = torch.randn(d, generator=g).half()
    k = llm_activations(t, d, g, n_outliers=2, outlier_scale=8.0)
    v = torch.randn(t, d, generator=g).half()
    p = attention_probs(qv, k)
    assert error_metrics(qk_bfp(qv, k), qk_bfp_ref(qv, k))["rel_l2"] < 0.5 * PE_ERROR_TARGET
    assert error_metrics(pv_bfp(p, v), pv_bfp_ref(p, v))["rel_l2"] < 0.5 * PE_ERROR_TARGET
    kc, ks, km = kivi_like(k, 2, 32, "keys")
    vc, vs, vm = kivi_like(v, 2, 32, "values")
    ek = error_metrics(qk_bfp_kivi(qv, kc, ks, km, 32), qk_bfp_kivi_ref(qv, kc, ks, km, 32))
    ev = error_metrics(pv_bfp_kivi(p, vc, vs, vm, 32), pv_bfp_kivi_ref(p, vc, vs, vm, 32))
    assert ek["rel_l2"] < 0.5 * PE_ERROR_TARGET and ev["rel_l2"] < 0.5 * PE_ERROR_TARGET, (ek, ev)


def test_errors():
    x, q, z, s = int4_case(256, 16, 40)
    with pytest.raises(FormatError, match="group 100 must be a positive divisor of K=256"):
        linear_bfp_int4(x, q, z[:2], s[:2], 100)
    with pytest.raises(FormatError, match="BFP block 48 must divide the group 128"):
        linear_bfp_int4(x, q, z, s, G, BFPFormat(48, 14))
    with pytest.raises(FormatError, match=r"q: values must lie in \[0, 15\]"):
        linear_bfp_int4(x, q + 1, z, s, G)
    with pytest.raises(FormatError, match=r"zeros: expected shape \(2, 16\)"):
        linear_bfp_int4(x, q, z[:1], s, G)
    with pytest.raises(FormatError, match="scales: expected a tensor of dtype torch.float16"):
        linear_bfp_int4(x, q, z, s.float(), G)
    with pytest.raises(FormatError, match="x: expected a tensor of dtype"):
        linear_bfp_int4(x.float(), q, z, s, G)
    bad = x.clone()
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError, match="linear_bfp_int4 x"):
        linear_bfp_int4(bad, q, z, s, G)
    s_bad = s.clone()
    s_bad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="scales"):
        linear_bfp_int4(x, q, z, s_bad, G)
    qv = torch.zeros(96, dtype=torch.float16)
    with pytest.raises(FormatError, match="head dimension 96 must be a multiple of the BFP block 64"):
        qk_bfp(qv, torch.zeros(4, 96, dtype=torch.float16), BFPFormat(64, 14))
    with pytest.raises(FormatError, match="k must have 96 columns"):
        qk_bfp(qv, torch.zeros(4, 64, dtype=torch.float16))
    with pytest.raises(FormatError, match="v must have 3 rows"):
        pv_bfp(torch.zeros(3), torch.zeros(4, 32, dtype=torch.float16))
    with pytest.raises(FormatError, match="accumulator would need"):
        pv_bfp(torch.zeros(1 << 13), torch.zeros(1 << 13, 32, dtype=torch.float16), BFPFormat(32, 24))
    q128 = torch.zeros(128, dtype=torch.float16)
    st = torch.ones(2, 128, dtype=torch.float16)
    with pytest.raises(FormatError, match="group 48 must be a positive divisor of 64"):
        qk_bfp_kivi(q128, torch.zeros(64, 128, dtype=torch.int64), st, st, 48)
    with pytest.raises(FormatError, match=r"codes: values must lie in \[0, 255\]"):
        qk_bfp_kivi(q128, torch.full((64, 128), 256), st, st, 32)
    with pytest.raises(FormatError, match=r"mn: expected shape \(2, 128\)"):
        qk_bfp_kivi(q128, torch.zeros(64, 128, dtype=torch.int64), st, st[:1], 32)
    with pytest.raises(FormatError, match=r"scale: expected shape \(64, 4\)"):
        pv_bfp_kivi(torch.zeros(64), torch.zeros(64, 128, dtype=torch.int64), st, st, 32)
    with pytest.raises(NonFiniteError, match="pv_bfp_kivi p"):
        pv_bfp_kivi(torch.full((64,), float("nan")), torch.zeros(64, 128, dtype=torch.int64), st, st, 32)
    with pytest.raises(FormatError, match="codes: expected an integer tensor"):
        pv_bfp_kivi(torch.zeros(64), torch.zeros(64, 128), st, st, 32)


@pytest.mark.slow
def test_error_report_quick(tmp_path):
    """The report CLI runs end to end at the real shapes (one token / query each) within target."""
    from ternopu.golden.pe_error_report import main

    out = tmp_path / "pe_error.json"
    assert main(["--quick", "--out", str(out)]) == 0
    import json

    rep = json.loads(out.read_text())
    assert rep["all_within_target"] and len(rep["cases"]) == 15
