"""Model configurations of the decoder-only models the golden model (and the overlay) runs.

A :class:`ModelConfig` fixes everything about a model that is not a weight: the family
(``"bitnet"``: BitNet b1.58 ternary weights with INT8 activations, ReLU^2-gated FFN and sub-norms;
``"llama"``: Llama-2 with INT4 group-quantized weights and FP16 activations, SwiGLU FFN), the layer
shapes, RoPE and RMSNorm constants, the KV-cache storage format (FP16 or KIVI 2/4-bit with an FP16
residual window) and the optional per-token routers (SkipGPT style: one router in front of every
attention block and every FFN block of every layer).

Presets
-------
``BITNET_2B4T``, ``BITNET_LARGE`` and ``LLAMA2_7B`` carry the published shapes of the reference
models; ``BITNET_TINY`` (GQA, 4:2 heads) and ``LLAMA_TINY`` are small variants with the same
structure for fast tests and the demo.

Validation happens in ``__post_init__`` and raises :class:`~ternopu.golden.errors.ConfigError`
with a message naming the field, the value found and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "FAMILIES",
    "KV_BITS_CHOICES",
    "KV_FP16_BITS",
    "DEFAULT_INT4_GROUP",
    "DEFAULT_KV_GROUP",
    "DEFAULT_KV_RESIDUAL",
    "ModelConfig",
    "BITNET_2B4T",
    "BITNET_LARGE",
    "LLAMA2_7B",
    "BITNET_TINY",
    "LLAMA_TINY",
    "PRESETS",
]

#: Model families the overlay runs.
FAMILIES = ("bitnet", "llama")
#: ``kv_bits`` value that means "K and V stored as IEEE binary16" (no KIVI quantization).
KV_FP16_BITS = 16
#: Allowed KV storage widths: FP16, or KIVI with 4 or 2 bits per element.
KV_BITS_CHOICES = (KV_FP16_BITS, 4, 2)
#: INT4 weight group along K (GPTQ / AWQ default).
DEFAULT_INT4_GROUP = 128
#: KIVI group size (tokens per key group, channels per value group), as in the KIVI reference.
DEFAULT_KV_GROUP = 32
#: KIVI full-precision residual window (recent tokens kept in FP16).
DEFAULT_KV_RESIDUAL = 32


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and numeric options of one decoder-only model.

    Parameters
    ----------
    name : str
        Human-readable name (used in reports only).
    family : {"bitnet", "llama"}
        ``"bitnet"``: ternary BitLinear layers (INT8 activations, TLMM path), ReLU^2 GLU FFN,
        attention / FFN sub-norms. ``"llama"``: INT4 group-quantized linears through the PE array
        (BFP activations x INT4 weights), SwiGLU FFN.
    hidden, ffn, layers, heads, kv_heads, head_dim, vocab : int
        Model shapes. ``hidden == heads * head_dim``; ``heads % kv_heads == 0`` (GQA).
    rope_theta : float
        RoPE base.
    rms_eps : float
        RMSNorm epsilon (all norms of the model).
    max_pos : int
        Maximum sequence length (size of the offline RoPE tables and of the KV cache).
    int4_group : int
        INT4 weight group along K (llama family): must divide ``hidden`` and ``ffn``.
    kv_bits : {16, 4, 2}
        KV-cache storage: 16 = FP16, 4 / 2 = KIVI codes with FP16 scale and min.
    kv_group : int
        KIVI group (tokens per key group; channels per value group, must divide ``head_dim``).
    kv_residual : int
        KIVI FP16 residual window in tokens; a positive multiple of ``kv_group``.
    routers : bool
        Whether per-token routers decide to skip attention / FFN blocks.
    router_threshold : float
        A block is skipped when its router score is strictly below this threshold
        (``-inf`` never skips). Layer 0 attention never skips.
    tie_word_embeddings : bool
        LM head shares the embedding matrix.
    """

    name: str
    family: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_pos: int = 4096
    int4_group: int = DEFAULT_INT4_GROUP
    kv_bits: int = KV_FP16_BITS
    kv_group: int = DEFAULT_KV_GROUP
    kv_residual: int = DEFAULT_KV_RESIDUAL
    routers: bool = False
    router_threshold: float = 0.0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family: expected one of {FAMILIES}, found {self.family!r}")
        for field in ("hidden", "ffn", "layers", "heads", "kv_heads", "head_dim", "vocab",
                      "max_pos", "int4_group", "kv_group", "kv_residual"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{field}: expected a positive int, found {value!r}")
        if self.heads % self.kv_heads:
            raise ConfigError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}) for GQA"
            )
        if self.hidden != self.heads * self.head_dim:
            raise ConfigError(
                f"hidden ({self.hidden}) must equal heads * head_dim "
                f"({self.heads} * {self.head_dim} = {self.heads * self.head_dim})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE rotate-half, found {self.head_dim}")
        if self.family == "llama":
            for field in ("hidden", "ffn"):
                if getattr(self, field) % self.int4_group:
                    raise ConfigError(
                        f"int4_group ({self.int4_group}) must divide {field} "
                        f"({getattr(self, field)}) for the llama INT4 family"
                    )
        if self.kv_bits not in KV_BITS_CHOICES:
            raise ConfigError(f"kv_bits: expected one of {KV_BITS_CHOICES}, found {self.kv_bits!r}")
        if self.kv_bits != KV_FP16_BITS:
            if self.head_dim % self.kv_group:
                raise ConfigError(
                    f"kv_group ({self.kv_group}) must divide head_dim ({self.head_dim}): "
                    "KIVI value groups span channels of one head"
                )
            if self.kv_residual % self.kv_group:
                raise ConfigError(
                    f"kv_residual ({self.kv_residual}) must be a multiple of kv_group "
                    f"({self.kv_group}) so that full key groups leave the residual window"
                )
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            raise ConfigError(f"rope_theta: expected a positive number, found {self.rope_theta!r}")
        if not isinstance(self.rms_eps, (int, float)) or not (0 < self.rms_eps < 1):
            raise ConfigError(f"rms_eps: expected a number in (0, 1), found {self.rms_eps!r}")
        if not isinstance(self.router_threshold, (int, float)) or math.isnan(self.router_threshold):
            raise ConfigError(f"router_threshold: expected a number, found {self.router_threshold!r}")
        if not isinstance(self.routers, bool):
            raise ConfigError(f"routers: expected a bool, found {self.routers!r}")

    @property
    def gqa_ratio(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    @property
    def kv_dim(self) -> int:
        """Width of one token's K (or V) row over all KV heads: ``kv_heads * head_dim``."""
        return self.kv_heads * self.head_dim

    def replace(self, **changes) -> "ModelConfig":
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


BITNET_2B4T = ModelConfig(
    name="bitnet-b1.58-2B-4T", family="bitnet", hidden=2560, ffn=6912, layers=30, heads=20,
    kv_heads=5, head_dim=128, vocab=128256, rope_theta=500000.0, rms_eps=1e-5, max_pos=4096,
    tie_word_embeddings=True,
)
BITNET_LARGE = ModelConfig(
    name="bitnet_b1_58-large", family="bitnet", hidden=1536, ffn=4096, layers=24, heads=16,
    kv_heads=16, head_dim=96, vocab=32002, rope_theta=10000.0, rms_eps=1e-5, max_pos=2048,
)
LLAMA2_7B = ModelConfig(
    name="Llama-2-7B", family="llama", hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32,
    head_dim=128, vocab=32000, rope_theta=10000.0, rms_eps=1e-5, max_pos=4096,
)
#: Tiny BitNet with GQA (4 query heads over 2 KV heads) for fast tests.
BITNET_TINY = ModelConfig(
    name="bitnet-tiny", family="bitnet", hidden=256, ffn=512, layers=3, heads=4, kv_heads=2,
    head_dim=64, vocab=512, rope_theta=500000.0, rms_eps=1e-5, max_pos=256,
    kv_group=16, kv_residual=16,
)
#: Tiny INT4 Llama (group 128 like the real checkpoints) for fast tests.
LLAMA_TINY = ModelConfig(
    name="llama-tiny", family="llama", hidden=256, ffn=512, layers=3, heads=4, kv_heads=4,
    head_dim=64, vocab=512, rope_theta=10000.0, rms_eps=1e-5, max_pos=256,
    kv_group=16, kv_residual=16,
)

PRESETS = {c.name: c for c in (BITNET_2B4T, BITNET_LARGE, LLAMA2_7B, BITNET_TINY, LLAMA_TINY)}


# --------------------------------------------------------------------------------------------
# Weight naming convention (Hugging Face tensor names), shared by model, reference and loaders.
#
# A *weights dict* maps these names to tensors:
#   model.embed_tokens.weight                    float [vocab, hidden]
#   model.norm.weight                            float [hidden]
#   lm_head.weight                               float [vocab, hidden] (absent when tied)
#   model.layers.{i}.input_layernorm.weight      float [hidden]
#   model.layers.{i}.post_attention_layernorm.weight
#   model.layers.{i}.self_attn.attn_sub_norm.weight   float [hidden]  (bitnet only)
#   model.layers.{i}.mlp.ffn_sub_norm.weight          float [ffn]     (bitnet only)
#   bitnet linears: {linear}.weight              float master [out, in] (HF layout), ternarized
#                                                by the golden model with bitnet.ternary_weight_quant
#   llama linears:  {linear}.q      int64 [in, out] codes 0..15   (GPTQ layout, y = x @ W)
#                   {linear}.zeros  int64 [in // int4_group, out] 0..15
#                   {linear}.scales float16 [in // int4_group, out]
#                   {linear}.weight float [out, in] optional float master (reference only)
#   routers (optional): model.layers.{i}.router.{attn,ffn}.weight float [hidden],
#                       model.layers.{i}.router.{attn,ffn}.bias   float [1]
# where {linear} = model.layers.{i}.self_attn.{q,k,v,o}_proj or model.layers.{i}.mlp.{gate,up,down}_proj.
# --------------------------------------------------------------------------------------------

#: Linear layers of a decoder layer, in execution order.
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
#: Router blocks; index in the routing bitmask's last axis.
ROUTER_BLOCKS = ("attn", "ffn")

__all__ += ["LINEAR_NAMES", "ROUTER_BLOCKS", "layer_prefix", "linear_shape", "linear_prefixes",
            "norm_names", "router_names"]


def layer_prefix(i: int) -> str:
    """HF name prefix of decoder layer ``i``: ``model.layers.{i}``."""
    return f"model.layers.{i}"


def linear_shape(cfg: ModelConfig, linear: str) -> tuple[int, int]:
    """``(in_features, out_features)`` of ``linear`` (one of :data:`LINEAR_NAMES`)."""
    q_out = cfg.heads * cfg.head_dim
    kv_out = cfg.kv_heads * cfg.head_dim
    shapes = {
        "self_attn.q_proj": (cfg.hidden, q_out),
        "self_attn.k_proj": (cfg.hidden, kv_out),
        "self_attn.v_proj": (cfg.hidden, kv_out),
        "self_attn.o_proj": (q_out, cfg.hidden),
        "mlp.gate_proj": (cfg.hidden, cfg.ffn),
        "mlp.up_proj": (cfg.hidden, cfg.ffn),
        "mlp.down_proj": (cfg.ffn, cfg.hidden),
    }
    if linear not in shapes:
        raise ConfigError(f"unknown linear {linear!r}; expected one of {LINEAR_NAMES}")
    return shapes[linear]


def linear_prefixes(cfg: ModelConfig):
    """Yield ``(layer, linear, prefix)`` for every linear of the model, in layer order."""
    for i in range(cfg.layers):
        for lin in LINEAR_NAMES:
            yield i, lin, f"{layer_prefix(i)}.{lin}"


def norm_names(cfg: ModelConfig) -> dict[str, int]:
    """Names of every RMSNorm weight of the model mapped to its length."""
    names = {"model.norm.weight": cfg.hidden}
    for i in range(cfg.layers):
        p = layer_prefix(i)
        names[f"{p}.input_layernorm.weight"] = cfg.hidden
        names[f"{p}.post_attention_layernorm.weight"] = cfg.hidden
        if cfg.family == "bitnet":
            names[f"{p}.self_attn.attn_sub_norm.weight"] = cfg.hidden
            names[f"{p}.mlp.ffn_sub_norm.weight"] = cfg.ffn
    return names


def router_names(i: int, block: str) -> tuple[str, str]:
    """``(weight name, bias name)`` of the router in front of ``block`` ("attn"/"ffn") of layer ``i``."""
    if block not in ROUTER_BLOCKS:
        raise ConfigError(f"router block must be one of {ROUTER_BLOCKS}, found {block!r}")
    base = f"{layer_prefix(i)}.router.{block}"
    return f"{base}.weight", f"{base}.bias"
