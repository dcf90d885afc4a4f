"""Checkpoint loaders and writers: round trips, sharding, GPTQ/AWQ, and every bad-input path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ternopu.golden.config import BITNET_TINY, LLAMA_TINY, linear_prefixes
from ternopu.golden.errors import CheckpointError, NonFiniteError
from ternopu.golden.bitnet import ternary_weight_quant
from ternopu.golden.int4 import rtn_quantize
from ternopu.golden.loaders import (
    CONFIG_FILE,
    INDEX_FILE,
    SINGLE_FILE,
    config_from_hf,
    config_to_hf,
    load_checkpoint,
    read_tensors,
    save_awq_checkpoint,
    save_gptq_checkpoint,
    save_hf_checkpoint,
)
from ternopu.golden.model import GoldenModel
from ternopu.golden.reference import random_bitnet_weights, random_llama_weights

# Two small layers keep every round trip fast (GQA in the BitNet config).
_SMALL = dict(layers=2, hidden=128, ffn=256, heads=2, head_dim=64, vocab=128)
BIT_CFG = BITNET_TINY.replace(kv_heads=1, **_SMALL)
LLAMA_CFG = LLAMA_TINY.replace(kv_heads=2, **_SMALL)


@pytest.fixture(scope="module")
def bit_weights():
    return random_bitnet_weights(BIT_CFG, seed=11)


@pytest.fixture(scope="module")
def llama_weights():
    return random_llama_weights(LLAMA_CFG, seed=12)


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
def test_config_round_trip():
    for cfg in (BIT_CFG, LLAMA_CFG, BIT_CFG.replace(kv_bits=2, routers=True, router_threshold=0.25)):
        back = config_from_hf(config_to_hf(cfg), int4_group=cfg.int4_group)
        assert back.replace(name=cfg.name) == cfg


def test_config_hf_fields():
    hf = config_to_hf(BIT_CFG)
    assert hf["architectures"] == ["BitNetForCausalLM"] and hf["model_type"] == "bitnet"
    assert hf["hidden_act"] == "relu2"
    hf = config_to_hf(LLAMA_CFG)
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["hidden_act"] == "silu"


def test_config_without_head_dim_and_ternopu_block():
    hf = config_to_hf(LLAMA_CFG)
    del hf["head_dim"], hf["ternopu"]
    cfg = config_from_hf(hf)
    assert cfg.head_dim == LLAMA_CFG.hidden // LLAMA_CFG.heads and cfg.kv_bits == 16


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["MistralForCausalLM"]}, "unsupported architecture"),
        ({"model_type": "llama"}, "model_type"),
        ({"hidden_act": "silu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "invalid model configuration.*kv_heads"),
    ],
)
def test_config_bad(change, match):
    hf = config_to_hf(BIT_CFG)
    hf.update(change)
    with pytest.raises(CheckpointError, match=match):
        config_from_hf(hf)


def test_config_missing_field():
    hf = config_to_hf(BIT_CFG)
    del hf["hidden_size"]
    with pytest.raises(CheckpointError, match="missing required field 'hidden_size'"):
        config_from_hf(hf)


# ---------------------------------------------------------------------------------------------
# HF float checkpoints
# ---------------------------------------------------------------------------------------------
def test_bitnet_round_trip_float32(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights, dtype=torch.float32)
    cfg, w = load_checkpoint(tmp_path)
    assert cfg.replace(name=BIT_CFG.name) == BIT_CFG
    for name, t in bit_weights.items():
        assert torch.equal(w[name], t), name
    for _, _, prefix in linear_prefixes(cfg):
        wq, gamma = ternary_weight_quant(bit_weights[f"{prefix}.weight"])
        assert torch.equal(w[f"{prefix}.wq"], wq) and torch.equal(w[f"{prefix}.gamma"], gamma)


def test_bitnet_round_trip_bf16(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights)  # bf16 master like the published ones
    _, w = load_checkpoint(tmp_path)
    for name, t in bit_weights.items():
        assert w[name].dtype == torch.bfloat16 and torch.equal(w[name], t.to(torch.bfloat16)), name


def test_sharded_equals_single(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path / "one", BIT_CFG, bit_weights)
    save_hf_checkpoint(tmp_path / "many", BIT_CFG, bit_weights, shards=3)
    assert (tmp_path / "many" / INDEX_FILE).is_file()
    assert not (tmp_path / "many" / SINGLE_FILE).exists()
    assert len(list((tmp_path / "many").glob("model-0000?-of-00003.safetensors"))) == 3
    _, a = load_checkpoint(tmp_path / "one")
    _, b = load_checkpoint(tmp_path / "many")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tied_embeddings(tmp_path):
    cfg = BIT_CFG.replace(tie_word_embeddings=True)
    w = random_bitnet_weights(cfg, 5)
    assert "lm_head.weight" not in w
    save_hf_checkpoint(tmp_path, cfg, w, dtype=torch.float32)
    cfg2, w2 = load_checkpoint(tmp_path)
    assert cfg2.tie_word_embeddings and "lm_head.weight" not in w2


def test_routers_round_trip_and_optional(tmp_path, bit_weights):
    cfg = BIT_CFG.replace(routers=True, router_threshold=0.5)
    w = random_bitnet_weights(cfg, 3)
    save_hf_checkpoint(tmp_path / "r", cfg, w, dtype=torch.float32)
    cfg_r, w_r = load_checkpoint(tmp_path / "r")
    assert cfg_r.routers and cfg_r.router_threshold == 0.5
    assert torch.equal(w_r["model.layers.1.router.ffn.weight"], w["model.layers.1.router.ffn.weight"])
    # config asks for routers but the tensors are absent: accepted, routers off
    save_hf_checkpoint(tmp_path / "n", cfg, bit_weights, dtype=torch.float32)
    cfg_n, w_n = load_checkpoint(tmp_path / "n")
    assert not cfg_n.routers and not any(".router." in k for k in w_n)


def test_overrides(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights)
    cfg, _ = load_checkpoint(tmp_path, kv_bits=2)
    assert cfg.kv_bits == 2
    with pytest.raises(CheckpointError, match="invalid override"):
        load_checkpoint(tmp_path, kv_bits=3)


def test_llama_float_checkpoint_rtn_on_load(tmp_path, llama_weights):
    save_hf_checkpoint(tmp_path, LLAMA_CFG, llama_weights, dtype=torch.float32)
    _, w = load_checkpoint(tmp_path)
    prefix = "model.layers.1.mlp.down_proj"
    q, z, s = rtn_quantize(llama_weights[f"{prefix}.weight"].t().contiguous(), group=128)
    assert torch.equal(w[f"{prefix}.q"], q) and torch.equal(w[f"{prefix}.zeros"], z)
    assert torch.equal(w[f"{prefix}.scales"], s)
    assert torch.equal(w[f"{prefix}.q"], llama_weights[f"{prefix}.q"])


# ---------------------------------------------------------------------------------------------
# GPTQ / AWQ
# ---------------------------------------------------------------------------------------------
def _assert_int4_equal(w, ref, cfg):
    for _, _, prefix in linear_prefixes(cfg):
        for key in ("q", "zeros", "scales"):
            assert torch.equal(w[f"{prefix}.{key}"], ref[f"{prefix}.{key}"]), f"{prefix}.{key}"


@pytest.mark.parametrize("legacy", [True, False])
def test_gptq_round_trip(tmp_path, llama_weights, legacy):
    save_gptq_checkpoint(tmp_path, LLAMA_CFG, llama_weights, legacy_zero_offset=legacy, desc_act=True)
    hf = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert hf["quantization_config"]["quant_method"] == "gptq"
    t = load_file(str(tmp_path / SINGLE_FILE))
    assert t["model.layers.0.self_attn.q_proj.qweight"].shape == (128 // 8, 128)
    assert t["model.layers.0.self_attn.q_proj.qweight"].dtype == torch.int32
    cfg, w = load_checkpoint(tmp_path)
    assert cfg.int4_group == 128 and not any(k.endswith(".act_perm") for k in w)
    _assert_int4_equal(w, llama_weights, cfg)
    assert torch.equal(w["model.norm.weight"], llama_weights["model.norm.weight"].half())


def test_awq_round_trip_sharded(tmp_path, llama_weights):
    save_awq_checkpoint(tmp_path, LLAMA_CFG, llama_weights, shards=2)
    t = read_tensors(tmp_path)
    assert t["model.layers.0.mlp.up_proj.qweight"].shape == (128, 256 // 8)
    cfg, w = load_checkpoint(tmp_path)
    _assert_int4_equal(w, llama_weights, cfg)


def test_gptq_act_order(tmp_path, llama_weights):
    """A non-trivial g_idx is regrouped on load; dequantized weights keep the input-row order."""
    from ternopu.golden.int4 import dequantize_int4

    save_gptq_checkpoint(tmp_path, LLAMA_CFG, llama_weights, legacy_zero_offset=False, desc_act=True)
    t = load_file(str(tmp_path / SINGLE_FILE))
    prefix = "model.layers.0.mlp.down_proj"  # K = ffn = 256: two groups of 128
    k = 256
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(3))
    # stored row perm[j] holds natural row j (group j // 128)
    from ternopu.golden.int4 import pack_gptq

    q_nat = llama_weights[f"{prefix}.q"]
    q_stored = torch.empty_like(q_nat)
    q_stored[perm] = q_nat
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // 128).to(torch.int32)
    packed = pack_gptq(q_stored, llama_weights[f"{prefix}.zeros"], llama_weights[f"{prefix}.scales"])
    t[f"{prefix}.qweight"] = packed["qweight"]
    t[f"{prefix}.g_idx"] = g_idx
    save_file(t, str(tmp_path / SINGLE_FILE))
    _, w = load_checkpoint(tmp_path)
    assert f"{prefix}.act_perm" in w
    w_true = dequantize_int4(q_stored, llama_weights[f"{prefix}.zeros"], llama_weights[f"{prefix}.scales"],
                             128, g_idx=g_idx)
    w_loaded = dequantize_int4(w[f"{prefix}.q"], w[f"{prefix}.zeros"], w[f"{prefix}.scales"], 128)
    assert torch.equal(w_loaded, w_true[w[f"{prefix}.act_perm"]])


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def bit_dir(tmp_path, bit_weights):
    return save_hf_checkpoint(tmp_path / "ckpt", BIT_CFG, bit_weights)


@pytest.fixture()
def gptq_dir(tmp_path, llama_weights):
    return save_gptq_checkpoint(tmp_path / "gptq", LLAMA_CFG, llama_weights, legacy_zero_offset=False)


def test_missing_config(bit_dir):
    (bit_dir / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_checkpoint(bit_dir)


def test_config_not_json(bit_dir):
    (bit_dir / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(bit_dir)


def test_missing_weights(bit_dir):
    (bit_dir / SINGLE_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors and no"):
        load_checkpoint(bit_dir)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(bit_dir, keep):
    path = bit_dir / SINGLE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bit_dir)


def test_corrupt_header(bit_dir):
    path = bit_dir / SINGLE_FILE
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00garbag"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bit_dir)


def _rewrite(directory, mutate):
    path = directory / SINGLE_FILE
    t = load_file(str(path))
    mutate(t)
    save_file(t, str(path))


def test_missing_tensor(bit_dir):
    _rewrite(bit_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_checkpoint(bit_dir)


def test_shape_mismatch(bit_dir):
    def mutate(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:32].clone()

    _rewrite(bit_dir, mutate)
    with pytest.raises(CheckpointError, match=r"shape \(32, 128\) does not match the config \(expected \(64, 128\)\)"):
        load_checkpoint(bit_dir)


def test_unsupported_dtype(bit_dir):
    def mutate(t):
        t["model.norm.weight"] = t["model.norm.weight"].to(torch.int8)

    _rewrite(bit_dir, mutate)
    with pytest.raises(CheckpointError, match="unsupported dtype torch.int8"):
        load_checkpoint(bit_dir)


def test_nan_weight(bit_dir):
    def mutate(t):
        t["model.layers.0.mlp.down_proj.weight"][3, 4] = float("nan")

    _rewrite(bit_dir, mutate)
    with pytest.raises(NonFiniteError, match="down_proj"):
        load_checkpoint(bit_dir)


def test_inf_embedding(bit_dir):
    def mutate(t):
        t["model.embed_tokens.weight"][0, 0] = float("inf")

    _rewrite(bit_dir, mutate)
    with pytest.raises(NonFiniteError, match="embed_tokens"):
        load_checkpoint(bit_dir)


def test_extra_layer_is_config_mismatch(bit_dir):
    def mutate(t):
        t["model.layers.2.input_layernorm.weight"] = torch.ones(128, dtype=torch.bfloat16)

    _rewrite(bit_dir, mutate)
    with pytest.raises(CheckpointError, match="config mismatch.*num_hidden_layers=2"):
        load_checkpoint(bit_dir)


def test_config_layers_more_than_tensors(bit_dir):
    hf = json.loads((bit_dir / CONFIG_FILE).read_text())
    hf["num_hidden_layers"] = 3
    (bit_dir / CONFIG_FILE).write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.2"):
        load_checkpoint(bit_dir)


def test_config_hidden_mismatch(bit_dir):
    hf = json.loads((bit_dir / CONFIG_FILE).read_text())
    hf["hidden_size"], hf["head_dim"] = 256, 128
    (bit_dir / CONFIG_FILE).write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="does not match the config"):
        load_checkpoint(bit_dir)


def test_sharded_missing_shard(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weight file"):
        load_checkpoint(tmp_path)


def test_sharded_malformed_index(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights, shards=2)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="malformed index"):
        load_checkpoint(tmp_path)


def test_sharded_index_names_absent_tensor(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights, shards=2)
    idx = json.loads((tmp_path / INDEX_FILE).read_text())
    idx["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="file lacks it"):
        load_checkpoint(tmp_path)


def _set_qc(directory, **changes):
    hf = json.loads((directory / CONFIG_FILE).read_text())
    hf["quantization_config"].update(changes)
    (directory / CONFIG_FILE).write_text(json.dumps(hf))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"quant_method": "bitsandbytes"}, "unsupported quant_method 'bitsandbytes'"),
        ({"bits": 8}, "bits=8; only 4-bit"),
        ({"group_size": -1}, "group_size=-1"),
        ({"group_size": 64}, "qzeros.*does not match"),
    ],
)
def test_gptq_bad_quant_config(gptq_dir, changes, match):
    _set_qc(gptq_dir, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(gptq_dir)


def test_awq_bad_version(tmp_path, llama_weights):
    save_awq_checkpoint(tmp_path, LLAMA_CFG, llama_weights)
    _set_qc(tmp_path, version="gemv")
    with pytest.raises(CheckpointError, match="unsupported AWQ version 'gemv'"):
        load_checkpoint(tmp_path)


def test_gptq_wrong_qweight_dtype(gptq_dir):
    def mutate(t):
        t["model.layers.0.mlp.gate_proj.qweight"] = t["model.layers.0.mlp.gate_proj.qweight"].to(torch.int64)

    _rewrite(gptq_dir, mutate)
    with pytest.raises(CheckpointError, match="unsupported dtype torch.int64"):
        load_checkpoint(gptq_dir)


def test_gptq_legacy_nibble_15(gptq_dir):
    _set_qc(gptq_dir, checkpoint_format="gptq")  # now read as z-1; a true zero 15 reads as 16

    def mutate(t):
        t["model.layers.0.mlp.gate_proj.qzeros"][0, 0] = 0xF

    _rewrite(gptq_dir, mutate)
    with pytest.raises(CheckpointError, match="cannot unpack gptq tensors.*zero point 16"):
        load_checkpoint(gptq_dir)


def test_quantized_bitnet_rejected(bit_dir):
    hf = json.loads((bit_dir / CONFIG_FILE).read_text())
    hf["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (bit_dir / CONFIG_FILE).write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="supported for llama checkpoints only"):
        load_checkpoint(bit_dir)


# ---------------------------------------------------------------------------------------------
# Identical model output through the checkpoint formats
# ---------------------------------------------------------------------------------------------
TOKENS = [3, 9, 27]


def _logits(cfg, weights, **kw):
    g = GoldenModel.from_config_and_weights(cfg, weights, **kw)
    return torch.stack([g.decode_step(t) for t in TOKENS])


def test_hf_round_trip_identical_logits(tmp_path, bit_weights):
    save_hf_checkpoint(tmp_path, BIT_CFG, bit_weights, dtype=torch.float32, shards=2)
    cfg, w = load_checkpoint(tmp_path)
    assert torch.equal(_logits(cfg, w, linear_path="matmul"), _logits(BIT_CFG, bit_weights, linear_path="matmul"))


def test_gptq_and_awq_give_identical_output(tmp_path, llama_weights):
    save_gptq_checkpoint(tmp_path / "g", LLAMA_CFG, llama_weights, legacy_zero_offset=True)
    save_awq_checkpoint(tmp_path / "a", LLAMA_CFG, llama_weights, shards=2)
    cfg_g, wg = load_checkpoint(tmp_path / "g")
    cfg_a, wa = load_checkpoint(tmp_path / "a")
    assert cfg_g == cfg_a
    lg, la = _logits(cfg_g, wg), _logits(cfg_a, wa)
    assert torch.equal(lg, la)
    # and equal to the in-memory model whose non-linear tensors are rounded to fp16 like the files
    mem = {k: (v.half() if v.is_floating_point() and not k.endswith(".scales") else v)
           for k, v in llama_weights.items()}
    assert torch.equal(lg, _logits(LLAMA_CFG, mem))
