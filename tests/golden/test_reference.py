"""Float reference models, random weight generators and the accuracy metrics."""

from __future__ import annotations

import math

import pytest
import torch

from ternopu.golden.config import BITNET_TINY, LLAMA_TINY, linear_prefixes
from ternopu.golden.errors import ConfigError, FormatError
from ternopu.golden.int4 import dequantize_int4
from ternopu.golden.nonlinear import rope_ref as npe_rope_ref
from ternopu.golden.reference import (
    EMBED_STD,
    LINEAR_INIT_STD,
    LOGIT_STD,
    ReferenceModel,
    kl_divergence,
    random_bitnet_weights,
    random_llama_weights,
    random_router_weights,
    rmsnorm_ref,
    rope_ref,
)

BIT = BITNET_TINY.replace(layers=1, hidden=128, ffn=256, heads=2, kv_heads=1, head_dim=64, vocab=128)
LLAMA = LLAMA_TINY.replace(layers=1, hidden=128, ffn=256, heads=2, kv_heads=2, head_dim=64, vocab=128)


def test_random_weights_reproducible_and_seeded():
    a, b, c = (random_bitnet_weights(BIT, s) for s in (1, 1, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])
    la, lb = random_llama_weights(LLAMA, 3), random_llama_weights(LLAMA, 3)
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_random_weight_scales():
    w = random_bitnet_weights(BITNET_TINY, 0)
    lin = w["model.layers.0.mlp.gate_proj.weight"]
    assert lin.shape == (512, 256) and abs(float(lin.std()) - LINEAR_INIT_STD) < 0.002
    assert abs(float(w["model.embed_tokens.weight"].std()) - EMBED_STD) < 0.05
    # LM head row std LOGIT_STD / sqrt(hidden): unit-RMS hidden states give logits of std ~LOGIT_STD
    h = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    logits = h @ w["lm_head.weight"].t()
    assert abs(float(logits.std()) - LOGIT_STD) < 0.4


def test_llama_weights_quantized_with_rtn():
    w = random_llama_weights(LLAMA, 4)
    for _, _, p in linear_prefixes(LLAMA):
        deq = dequantize_int4(w[f"{p}.q"], w[f"{p}.zeros"], w[f"{p}.scales"], 128)
        master = w[f"{p}.weight"].t()
        s_rows = w[f"{p}.scales"].float().repeat_interleave(128, 0)
        assert bool(((deq - master).abs() <= s_rows / 2 * (1 + 2**-16) + 1e-12).all())
    assert "model.layers.0.mlp.up_proj.weight" not in random_llama_weights(LLAMA, 4, keep_float=False)


def test_generators_reject_wrong_family():
    with pytest.raises(ConfigError, match="expected a bitnet config"):
        random_bitnet_weights(LLAMA, 0)
    with pytest.raises(ConfigError, match="expected a llama config"):
        random_llama_weights(BIT, 0)


def test_router_weights():
    r = random_router_weights(BIT, 0, bias=0.25)
    assert r["model.layers.0.router.attn.weight"].shape == (128,)
    assert r["model.layers.0.router.ffn.bias"].tolist() == [0.25]
    assert "model.layers.0.router.attn.weight" in random_bitnet_weights(BIT.replace(routers=True), 0)


def test_rope_ref_matches_npe_reference_and_rotates():
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for pos in (0, 1, 17):
        ours = rope_ref(x, pos, 64, 1e4)
        theirs = npe_rope_ref(x, pos, 64, 1e4).to(torch.float64)
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
        # a rotation keeps the norm of every (i, i + d/2) pair
        assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert torch.equal(rope_ref(x, 0, 64, 1e4), x)


def test_rmsnorm_ref_unit_rms():
    x = torch.randn(5, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 7
    y = rmsnorm_ref(x, torch.ones(256), 1e-12)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(5, dtype=torch.float64), rtol=1e-9)


def test_kl_divergence_properties():
    gen = torch.Generator().manual_seed(3)
    p, q = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(4, dtype=torch.float64), atol=1e-15)
    assert bool((kl_divergence(p, q) > 0).all())
    assert torch.allclose(kl_divergence(p, p + 5.0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    # two-point check against the closed form
    a = torch.tensor([0.0, math.log(3)], dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(kl_divergence(a, b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cfg", [BIT, LLAMA], ids=["bitnet", "llama"])
def test_float32_reference_close_to_float64(cfg):
    w = random_bitnet_weights(cfg, 5) if cfg.family == "bitnet" else random_llama_weights(cfg, 5)
    toks = [1, 2, 3, 4]
    l64 = ReferenceModel(cfg, w).forward_tokens(toks)
    l32 = ReferenceModel(cfg, w, dtype=torch.float32).forward_tokens(toks)
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    assert float((l32.double() - l64).abs().max()) < 1e-4


def test_quantized_vs_float_weights_differ_only_by_weight_quantization():
    w = random_llama_weights(LLAMA, 6)
    toks = [5, 6, 7]
    lq = ReferenceModel(LLAMA, w).forward_tokens(toks)
    lf = ReferenceModel(LLAMA, w, weights_source="float").forward_tokens(toks)
    kl = kl_divergence(lf, lq)
    assert bool((kl > 0).all()) and float(kl.max()) < 0.05


def test_forced_skip_changes_output_and_is_recorded():
    cfg = BIT.replace(layers=2)
    w = random_bitnet_weights(cfg, 7)
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[1, 1, 0] = True  # token 1 skips attention at layer 1
    mask[2, 1, 1] = True  # token 2 skips the FFN at layer 1
    ref = ReferenceModel(cfg, w)
    forced = ref.forward_tokens([1, 2, 3], mask)
    assert torch.equal(ref.routing_bitmask, mask)
    dense = ReferenceModel(cfg, w).forward_tokens([1, 2, 3])
    assert torch.equal(forced[0], dense[0]) and not torch.equal(forced[1], dense[1])


def test_reference_routers_threshold():
    cfg = BIT.replace(layers=2, routers=True, router_threshold=-math.inf)
    w = random_bitnet_weights(cfg, 8)
    ref = ReferenceModel(cfg, w)
    ref.forward_tokens([1, 2])
    assert not ref.routing_bitmask.any()
    cfg_all = cfg.replace(router_threshold=math.inf)
    ref_all = ReferenceModel(cfg_all, w)
    ref_all.forward_tokens([1, 2])
    m = ref_all.routing_bitmask
    assert not m[:, 0, 0].any() and m[:, 1, 0].all() and m[:, :, 1].all()


def test_reference_bad_inputs():
    w = random_bitnet_weights(BIT, 9)
    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        ReferenceModel(BIT, w, dtype=torch.float16)
    with pytest.raises(ConfigError, match="weights_source must be"):
        ReferenceModel(BIT, w, weights_source="int4")
    lw = random_llama_weights(LLAMA, 9, keep_float=False)
    with pytest.raises(ConfigError, match="needs the float master"):
        ReferenceModel(LLAMA, lw, weights_source="float")
    ref = ReferenceModel(BIT, w)
    with pytest.raises(FormatError, match="token id must lie in"):
        ref.decode_step(BIT.vocab)
