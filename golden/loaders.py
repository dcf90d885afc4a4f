"""Checkpoint loaders and writers: Hugging Face safetensors (float), GPTQ and AWQ (INT4).

Directory layout (as Hugging Face writes it)
---------------------------------------------
* ``config.json``: ``architectures`` (``["BitNetForCausalLM"]`` or ``["LlamaForCausalLM"]``),
  ``model_type`` (``"bitnet"`` / ``"llama"``), ``hidden_act`` (``"relu2"`` / ``"silu"``),
  ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim`` (optional, default hidden/heads), ``vocab_size``,
  ``rope_theta``, ``rms_norm_eps``, ``max_position_embeddings``, ``tie_word_embeddings`` and, for
  INT4 checkpoints, ``quantization_config``. ternopu-only options (KV format, routers) live in an
  optional ``"ternopu"`` object: ``{"name", "kv_bits", "kv_group", "kv_residual", "routers",
  "router_threshold"}``; checkpoints without it get the :class:`ModelConfig` defaults.
* Weights: ``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` listed by
  ``model.safetensors.index.json`` (``{"metadata": {"total_size": bytes}, "weight_map":
  {tensor name: shard file}}``).

Tensor names follow :mod:`ternopu.golden.config` (HF names). Per family / format:

* BitNet (float master, bf16/fp16/fp32): ``{linear}.weight`` ``[out, in]``. The loader ternarizes
  each with :func:`ternopu.golden.bitnet.ternary_weight_quant` and returns ``{linear}.wq`` int8
  ``[out, in]`` and ``{linear}.gamma`` float32 0-dim next to the float master.
* Llama float checkpoint: ``{linear}.weight`` ``[out, in]``, RTN-quantized on load
  (:func:`ternopu.golden.int4.rtn_quantize`, group ``int4_group``) into ``.q/.zeros/.scales``.
* GPTQ (``quantization_config.quant_method == "gptq"``, bits 4): ``{linear}.qweight`` int32
  ``[in/8, out]``, ``.qzeros`` int32 ``[in/G, out/8]``, ``.scales`` fp16 ``[in/G, out]``, optional
  ``.g_idx`` int32 ``[in]``; unpacked with :func:`ternopu.golden.int4.unpack_gptq`. Zeros are stored
  minus one (the legacy AutoGPTQ convention) unless ``checkpoint_format == "gptq_v2"``. An
  act-order ``g_idx`` (not ``k // G``) is resolved at load time: rows of ``.q`` are regrouped with
  :func:`ternopu.golden.int4.act_order_permutation` and the permutation is returned as
  ``{linear}.act_perm`` int64 ``[in]``; the model gathers its input with it (``x[act_perm]``).
* AWQ (``quant_method == "awq"``, ``version == "gemm"``, bits 4): ``.qweight`` int32 ``[in, out/8]``,
  ``.qzeros`` int32 ``[in/G, out/8]``, ``.scales`` fp16 ``[in/G, out]``; unpacked with
  :func:`ternopu.golden.int4.unpack_awq`.
* Routers (optional, both families): ``model.layers.{i}.router.{attn,ffn}.weight`` ``[hidden]`` and
  ``.bias`` ``[1]``. A checkpoint without them loads with ``routers=False``.

Errors: :class:`CheckpointError` for a missing config or weight file, unreadable / truncated
safetensors, a missing tensor, a shape that does not match the config, an unsupported dtype,
architecture, quantization method or bit width, and tensors of layers the config does not have;
:class:`NonFiniteError` for NaN/Inf in float weights.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import (
    ModelConfig,
    linear_prefixes,
    linear_shape,
    norm_names,
    router_names,
)
from .errors import CheckpointError, ConfigError, check_finite

__all__ = [
    "CONFIG_FILE",
    "SINGLE_FILE",
    "INDEX_FILE",
    "ARCHITECTURES",
    "FLOAT_DTYPES",
    "config_to_hf",
    "config_from_hf",
    "read_tensors",
    "load_checkpoint",
    "save_hf_checkpoint",
    "save_gptq_checkpoint",
    "save_awq_checkpoint",
]

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: family -> (HF architecture, model_type, hidden_act)
ARCHITECTURES = {
    "bitnet": ("BitNetForCausalLM", "bitnet", "relu2"),
    "llama": ("LlamaForCausalLM", "llama", "silu"),
}
#: Float dtypes accepted for float tensors (embeddings, norms, masters, scales, routers).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: ternopu-only options stored in config.json under "ternopu".
_TERNOPU_KEYS = ("name", "kv_bits", "kv_group", "kv_residual", "routers", "router_threshold")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
def config_to_hf(cfg: ModelConfig) -> dict:
    """HF ``config.json`` contents (without ``quantization_config``) for ``cfg``."""
    arch, model_type, act = ARCHITECTURES[cfg.family]
    return {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_act": act,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_eps,
        "max_position_embeddings": cfg.max_pos,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "bfloat16" if cfg.family == "bitnet" else "float16",
        "ternopu": {
            "name": cfg.name, "kv_bits": cfg.kv_bits, "kv_group": cfg.kv_group,
            "kv_residual": cfg.kv_residual, "routers": cfg.routers,
            "router_threshold": cfg.router_threshold,
        },
    }


def _req(d: dict, key: str, where: str):
    if key not in d:
        raise CheckpointError(f"{where}: missing required field {key!r}")
    return d[key]


def config_from_hf(hf: dict, where: str = CONFIG_FILE, int4_group: int | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from ``config.json`` contents.

    Parameters
    ----------
    hf : dict
        Parsed ``config.json``.
    where : str
        Name used in error messages.
    int4_group : int or None
        INT4 group (from ``quantization_config``); default :data:`DEFAULT_INT4_GROUP`.

    Raises
    ------
    CheckpointError
        Unsupported architecture / model type / activation, missing or invalid fields.
    """
    archs = hf.get("architectures") or []
    family = next((f for f, (a, _, _) in ARCHITECTURES.items() if a in archs), None)
    if family is None:
        supported = [a for a, _, _ in ARCHITECTURES.values()]
        raise CheckpointError(f"{where}: unsupported architecture {archs!r}; expected one of {supported}")
    _, model_type, act = ARCHITECTURES[family]
    if hf.get("model_type", model_type) != model_type:
        raise CheckpointError(
            f"{where}: model_type {hf.get('model_type')!r} does not match architecture "
            f"{archs[0]!r} (expected {model_type!r})"
        )
    if hf.get("hidden_act", act) != act:
        raise CheckpointError(f"{where}: hidden_act {hf.get('hidden_act')!r} unsupported for "
                              f"{family} (expected {act!r})")
    hidden = _req(hf, "hidden_size", where)
    heads = _req(hf, "num_attention_heads", where)
    kwargs = dict(
        family=family,
        hidden=hidden,
        ffn=_req(hf, "intermediate_size", where),
        layers=_req(hf, "num_hidden_layers", where),
        heads=heads,
        kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or (hidden // heads if heads else 0),
        vocab=_req(hf, "vocab_size", where),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_eps=float(hf.get("rms_norm_eps", 1e-5)),
        max_pos=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        name=f"{family}-checkpoint",
    )
    if int4_group is not None:
        kwargs["int4_group"] = int4_group
    extra = hf.get("ternopu") or {}
    for k in _TERNOPU_KEYS:
        if k in extra:
            kwargs[k] = extra[k]
    try:
        return ModelConfig(**kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{where}: invalid model configuration: {e}") from e


# ---------------------------------------------------------------------------------------------
# safetensors I/O
# ---------------------------------------------------------------------------------------------
def _shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _write_tensors(directory: Path, tensors: dict, shards: int) -> None:
    """Write ``tensors`` as one file or ``shards`` files plus the index (names in sorted order)."""
    if shards < 1:
        raise CheckpointError(f"shards must be >= 1, found {shards}")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    per = math.ceil(len(names) / shards)
    weight_map, total = {}, 0
    for s in range(shards):
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        fname = _shard_name(s, shards)
        save_file(part, str(directory / fname), metadata={"format": "pt"})
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _read_file(path: Path, names=None) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing weight file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys()) if names is None else names
            out = {}
            for k in keys:
                if k not in f.keys():
                    raise CheckpointError(f"{path.name}: index names tensor {k!r} but the file lacks it")
                out[k] = f.get_tensor(k)
            return out
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
        raise CheckpointError(f"{path.name}: unreadable safetensors file (truncated or corrupt?): {e}") from e


def read_tensors(directory) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint directory (single file or sharded with an index).

    Raises
    ------
    CheckpointError
        No weight file, malformed index, missing shard, unreadable / truncated file.
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{INDEX_FILE}: malformed index ({e})") from e
        by_file: dict[str, list] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
        out = {}
        for fname, names in sorted(by_file.items()):
            out.update(_read_file(directory / fname, names))
        return out
    if (directory / SINGLE_FILE).is_file():
        return _read_file(directory / SINGLE_FILE)
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} and no {INDEX_FILE}")


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------
def _get(tensors: dict, name: str, shape: tuple, dtypes: tuple) -> torch.Tensor:
    """Fetch ``name`` and check its shape and dtype (CheckpointError) and finiteness."""
    if name not in tensors:
        raise CheckpointError(f"missing tensor {name!r}")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(
            f"tensor {name!r}: shape {tuple(t.shape)} does not match the config (expected {tuple(shape)})"
        )
    if t.dtype not in dtypes:
        raise CheckpointError(f"tensor {name!r}: unsupported dtype {t.dtype}; expected one of {dtypes}")
    check_finite(t, f"tensor {name!r}")
    return t


def _check_layer_range(cfg: ModelConfig, tensors: dict) -> None:
    """Tensors of layers beyond ``num_hidden_layers`` mean config.json and weights disagree."""
    for name in tensors:
        m = _LAYER_RE.match(name)
        if m and int(m.group(1)) >= cfg.layers:
            raise CheckpointError(
                f"config mismatch: tensor {name!r} belongs to layer {m.group(1)} but config.json "
                f"says num_hidden_layers={cfg.layers}"
            )


def _load_common(cfg: ModelConfig, tensors: dict) -> dict:
    """Embeddings, norms, LM head and routers (float tensors)."""
    out = {"model.embed_tokens.weight": _get(tensors, "model.embed_tokens.weight",
                                            (cfg.vocab, cfg.hidden), FLOAT_DTYPES)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = _get(tensors, "lm_head.weight", (cfg.vocab, cfg.hidden), FLOAT_DTYPES)
    for name, length in norm_names(cfg).items():
        out[name] = _get(tensors, name, (length,), FLOAT_DTYPES)
    return out


def _load_routers(cfg: ModelConfig, tensors: dict) -> tuple[dict, bool]:
    """Router tensors if the checkpoint has them (all or none)."""
    names = [router_names(i, b) for i in range(cfg.layers) for b in ("attn", "ffn")]
    present = [wn in tensors for wn, _ in names]
    if not any(present):
        return {}, False
    out = {}
    for wn, bn in names:
        out[wn] = _get(tensors, wn, (cfg.hidden,), FLOAT_DTYPES)
        out[bn] = _get(tensors, bn, (1,), FLOAT_DTYPES)
    return out, True


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_FILE}")
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{CONFIG_FILE}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{CONFIG_FILE}: expected a JSON object, found {type(hf).__name__}")
    return hf


def _quant_params(hf: dict) -> tuple[str | None, dict]:
    """``(quant_method or None, quantization_config)`` with bit width / method validated."""
    qc = hf.get("quantization_config")
    if qc is None:
        return None, {}
    method = qc.get("quant_method")
    if method not in ("gptq", "awq"):
        raise CheckpointError(f"unsupported quant_method {method!r}; expected 'gptq' or 'awq'")
    bits = qc.get("bits", qc.get("w_bit"))
    if bits != 4:
        raise CheckpointError(f"unsupported {method} bits={bits!r}; only 4-bit weights are supported")
    group = qc.get("group_size", qc.get("q_group_size"))
    if not isinstance(group, int) or group <= 0:
        raise CheckpointError(f"unsupported {method} group_size={group!r}; expected a positive group")
    if method == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
        raise CheckpointError(f"unsupported AWQ version {qc.get('version')!r}; expected 'gemm'")
    if method == "awq" and qc.get("zero_point") is False:
        raise CheckpointError("unsupported AWQ zero_point=false; expected asymmetric (zero_point=true)")
    return method, qc


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------
def load_checkpoint(directory, **overrides) -> tuple[ModelConfig, dict]:
    """Load a checkpoint directory into ``(ModelConfig, weights dict)``.

    Parameters
    ----------
    directory : path
        Holds ``config.json`` and the safetensors file(s).
    **overrides
        :class:`ModelConfig` fields to replace after reading (e.g. ``kv_bits=2``,
        ``routers=True``, ``router_threshold=0.1``).

    Returns
    -------
    cfg : ModelConfig
    weights : dict[str, Tensor]
        Tensors named as in :mod:`ternopu.golden.config`. BitNet: float masters plus ``.wq`` /
        ``.gamma``; Llama: ``.q`` / ``.zeros`` / ``.scales`` (plus ``.weight`` for float
        checkpoints); routers when present.

    Raises
    ------
    CheckpointError, NonFiniteError
        See the module docstring.
    """
    directory = Path(directory)
    hf = _read_config(directory)
    method, qc = _quant_params(hf)
    cfg = config_from_hf(hf, int4_group=qc.get("group_size", qc.get("q_group_size")) if method else None)
    if method and cfg.family != "llama":
        raise CheckpointError(f"{method} quantization is supported for llama checkpoints only, "
                              f"found family {cfg.family!r}")
    tensors = read_tensors(directory)
    _check_layer_range(cfg, tensors)
    weights = _load_common(cfg, tensors)
    routers, has_routers = _load_routers(cfg, tensors)
    weights.update(routers)
    if cfg.family == "bitnet":
        _load_bitnet_linears(cfg, tensors, weights)
    elif method is None:
        _load_llama_float_linears(cfg, tensors, weights)
    else:
        _load_int4_linears(cfg, tensors, weights, method, qc)
    if not has_routers:
        overrides.setdefault("routers", False)
    try:
        cfg = cfg.replace(**overrides) if overrides else cfg
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"invalid override {overrides}: {e}") from e
    return cfg, weights


def _load_bitnet_linears(cfg: ModelConfig, tensors: dict, weights: dict) -> None:
    from .bitnet import ternary_weight_quant

    for _, lin, prefix in linear_prefixes(cfg):
        k, n = linear_shape(cfg, lin)
        w = _get(tensors, f"{prefix}.weight", (n, k), FLOAT_DTYPES)
        weights[f"{prefix}.weight"] = w
        wq, gamma = ternary_weight_quant(w.float())
        weights[f"{prefix}.wq"], weights[f"{prefix}.gamma"] = wq, gamma


def _load_llama_float_linears(cfg: ModelConfig, tensors: dict, weights: dict) -> None:
    from .int4 import rtn_quantize

    for _, lin, prefix in linear_prefixes(cfg):
        k, n = linear_shape(cfg, lin)
        w = _get(tensors, f"{prefix}.weight", (n, k), FLOAT_DTYPES)
        weights[f"{prefix}.weight"] = w
        q, z, s = rtn_quantize(w.float().t().contiguous(), group=cfg.int4_group, bits=4)
        weights[f"{prefix}.q"], weights[f"{prefix}.zeros"], weights[f"{prefix}.scales"] = q, z, s


def _load_int4_linears(cfg: ModelConfig, tensors: dict, weights: dict, method: str, qc: dict) -> None:
    from .int4 import act_order_permutation, trivial_g_idx, unpack_awq, unpack_gptq

    g = cfg.int4_group
    legacy = method == "gptq" and qc.get("checkpoint_format", "gptq") != "gptq_v2"
    for _, lin, prefix in linear_prefixes(cfg):
        k, n = linear_shape(cfg, lin)
        if k % g or n % 8:
            raise CheckpointError(f"{prefix}: in={k} must be a multiple of group_size={g} and "
                                  f"out={n} a multiple of 8 for packed INT4")
        qshape = (k // 8, n) if method == "gptq" else (k, n // 8)
        qweight = _get(tensors, f"{prefix}.qweight", qshape, (torch.int32,))
        qzeros = _get(tensors, f"{prefix}.qzeros", (k // g, n // 8), (torch.int32,))
        scales = _get(tensors, f"{prefix}.scales", (k // g, n), (torch.float16,))
        try:
            if method == "gptq":
                g_idx = None
                if f"{prefix}.g_idx" in tensors:
                    g_idx = _get(tensors, f"{prefix}.g_idx", (k,), (torch.int32, torch.int64))
                q, z, s = unpack_gptq(qweight, qzeros, scales, group=g, legacy_zero_offset=legacy,
                                      g_idx=g_idx)
            else:
                q, z, s = unpack_awq(qweight, qzeros, scales, group=g)
        except CheckpointError:
            raise
        except ValueError as e:  # FormatError from the unpackers: report as a bad checkpoint
            raise CheckpointError(f"{prefix}: cannot unpack {method} tensors: {e}") from e
        if method == "gptq" and g_idx is not None and not torch.equal(
                g_idx.to(torch.int64), trivial_g_idx(k, g).to(torch.int64)):
            # act-order: regroup rows so that groups are contiguous; the datapath gathers the
            # activations with the same permutation (``{linear}.act_perm``).
            perm = act_order_permutation(g_idx, g)
            q = q[perm].contiguous()
            weights[f"{prefix}.act_perm"] = perm
        weights[f"{prefix}.q"], weights[f"{prefix}.zeros"], weights[f"{prefix}.scales"] = q, z, s


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def _common_tensors(cfg: ModelConfig, weights: dict, dtype: torch.dtype) -> dict:
    out = {"model.embed_tokens.weight": weights["model.embed_tokens.weight"].to(dtype)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = weights["lm_head.weight"].to(dtype)
    for name in norm_names(cfg):
        out[name] = weights[name].to(dtype)
    for i in range(cfg.layers):
        for block in ("attn", "ffn"):
            for name in router_names(i, block):
                if name in weights:
                    out[name] = weights[name].to(dtype)
    return out


def _prepare_dir(directory) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save_hf_checkpoint(directory, cfg: ModelConfig, weights: dict, *, dtype=torch.bfloat16,
                       shards: int = 1) -> Path:
    """Write an HF float checkpoint (BitNet float master or float Llama).

    Parameters
    ----------
    directory : path
        Created if missing.
    cfg : ModelConfig
    weights : dict
        Needs the float masters ``{linear}.weight`` ``[out, in]``.
    dtype : torch.dtype
        Storage dtype of every float tensor (bf16 like the BitNet master checkpoints; float32
        keeps a float32 dict bit-exact through a round trip).
    shards : int
        1: ``model.safetensors``; more: sharded files plus ``model.safetensors.index.json``.

    Returns
    -------
    Path of the directory.
    """
    directory = _prepare_dir(directory)
    tensors = _common_tensors(cfg, weights, dtype)
    for _, _, prefix in linear_prefixes(cfg):
        if f"{prefix}.weight" not in weights:
            raise CheckpointError(f"save_hf_checkpoint: weights lack the float master {prefix}.weight")
        tensors[f"{prefix}.weight"] = weights[f"{prefix}.weight"].to(dtype)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_hf(cfg), indent=2))
    _write_tensors(directory, tensors, shards)
    return directory


def _int4_config(cfg: ModelConfig, qc: dict) -> dict:
    hf = config_to_hf(cfg)
    hf["torch_dtype"] = "float16"
    hf["quantization_config"] = qc
    return hf


def save_gptq_checkpoint(directory, cfg: ModelConfig, weights: dict, *, shards: int = 1,
                         legacy_zero_offset: bool = True, desc_act: bool = False) -> Path:
    """Write a GPTQ INT4 checkpoint of a llama model (``.q/.zeros/.scales`` in ``weights``).

    Non-linear float tensors are stored as float16. ``legacy_zero_offset=True`` stores zeros
    minus one (``checkpoint_format "gptq"``, what AutoGPTQ writes); False writes
    ``checkpoint_format "gptq_v2"``. ``desc_act=True`` also writes the (identity-order) ``g_idx``
    ``k // group``.
    """
    from .int4 import pack_gptq

    if cfg.family != "llama":
        raise ConfigError(f"GPTQ checkpoints hold llama models, found family {cfg.family!r}")
    directory = _prepare_dir(directory)
    tensors = _common_tensors(cfg, weights, torch.float16)
    for _, lin, prefix in linear_prefixes(cfg):
        packed = pack_gptq(weights[f"{prefix}.q"], weights[f"{prefix}.zeros"],
                           weights[f"{prefix}.scales"], legacy_zero_offset=legacy_zero_offset)
        for key in ("qweight", "qzeros", "scales"):
            tensors[f"{prefix}.{key}"] = packed[key]
        if desc_act:
            k, _ = linear_shape(cfg, lin)
            tensors[f"{prefix}.g_idx"] = (torch.arange(k) // cfg.int4_group).to(torch.int32)
    qc = {"quant_method": "gptq", "bits": 4, "group_size": cfg.int4_group, "desc_act": desc_act,
          "sym": False, "checkpoint_format": "gptq" if legacy_zero_offset else "gptq_v2"}
    (directory / CONFIG_FILE).write_text(json.dumps(_int4_config(cfg, qc), indent=2))
    _write_tensors(directory, tensors, shards)
    return directory


def save_awq_checkpoint(directory, cfg: ModelConfig, weights: dict, *, shards: int = 1) -> Path:
    """Write an AWQ (GEMM version) INT4 checkpoint of a llama model (``.q/.zeros/.scales``)."""
    from .int4 import pack_awq

    if cfg.family != "llama":
        raise ConfigError(f"AWQ checkpoints hold llama models, found family {cfg.family!r}")
    directory = _prepare_dir(directory)
    tensors = _common_tensors(cfg, weights, torch.float16)
    for _, _, prefix in linear_prefixes(cfg):
        packed = pack_awq(weights[f"{prefix}.q"], weights[f"{prefix}.zeros"], weights[f"{prefix}.scales"])
        for key in ("qweight", "qzeros", "scales"):
            tensors[f"{prefix}.{key}"] = packed[key]
    qc = {"quant_method": "awq", "bits": 4, "group_size": cfg.int4_group, "version": "gemm",
          "zero_point": True}
    (directory / CONFIG_FILE).write_text(json.dumps(_int4_config(cfg, qc), indent=2))
    _write_tensors(directory, tensors, shards)
    return directory
