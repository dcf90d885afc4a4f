"""Float reference models and accuracy metrics for the golden decoder.

The reference runs the *same architectures* as :mod:`ternopu.golden.model` with plain torch float
arithmetic (float64 by default, float32 optional): standard RMSNorm, RoPE with angles computed in
float64, exact softmax, no activation quantization, no block floating point, no KV quantization.

Weights
-------
``weights_source="quantized"`` (default) uses the *same quantized weights* the golden model uses,
dequantized to float: BitNet linears are ``wq * gamma`` (ternary times the absmean scale from
:func:`ternopu.golden.bitnet.ternary_weight_quant`), Llama linears are
:func:`ternopu.golden.int4.dequantize_int4` of the INT4 codes. The difference golden vs reference is
then exactly the error of the overlay's datapath (INT8 activations, BFP, KIVI, approximations).
``weights_source="float"`` uses the float master weights (``{linear}.weight``) instead and so adds
the weight-quantization error.

Routers and KV reuse
--------------------
Routing decisions are either computed in float (``score = w . x + b``; skip when
``score < threshold``; layer-0 attention never skips) or *forced* from a golden routing bitmask so
that golden and reference run the same blocks and the comparison is aligned. Cross-layer KV reuse
follows the same rule as the golden model (:func:`ternopu.golden.model.kv_source_layers`).

Metrics
-------
:func:`compare_greedy` decodes greedily with the golden model, runs the reference teacher-forced on
the same tokens with the golden routing bitmask, and returns the top-1 agreement of the next-token
distributions and the mean KL(ref || golden) (natural log, float64).

Random weights
--------------
:func:`random_bitnet_weights` and :func:`random_llama_weights` draw reproducible weights (seeded
``torch.Generator``) with realistic scales: linears std 0.02 (HF init), RMSNorm weights near 1,
and an LM head scaled so that logits have a standard deviation of about :data:`LOGIT_STD`, which
makes the top-1 token well separated and top-1 agreement meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import (
    ModelConfig,
    layer_prefix,
    linear_prefixes,
    linear_shape,
    norm_names,
    router_names,
)
from .errors import ConfigError, FormatError

__all__ = [
    "LINEAR_INIT_STD",
    "EMBED_STD",
    "LOGIT_STD",
    "NORM_WEIGHT_JITTER",
    "ReferenceModel",
    "DecodeComparison",
    "compare_greedy",
    "kl_divergence",
    "random_bitnet_weights",
    "random_llama_weights",
    "random_router_weights",
    "rope_ref",
]

#: Standard deviation of random linear weights (Hugging Face ``initializer_range``).
LINEAR_INIT_STD = 0.02
#: Standard deviation of random embeddings. Large enough that the token identity survives the
#: residual stream of a few layers (the decode is then strongly token dependent).
EMBED_STD = 1.0
#: Target standard deviation of the logits of a random model (sets the LM head scale).
LOGIT_STD = 4.0
#: RMSNorm weights are ``1 + NORM_WEIGHT_JITTER * N(0, 1)`` so that they are not the identity.
NORM_WEIGHT_JITTER = 0.1


# ---------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------
def _randn(shape, gen: torch.Generator, std: float) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std


def _common_weights(cfg: ModelConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Embeddings, norms and LM head shared by both families (float32)."""
    w = {"model.embed_tokens.weight": _randn((cfg.vocab, cfg.hidden), gen, EMBED_STD)}
    for name, length in norm_names(cfg).items():
        w[name] = 1.0 + _randn((length,), gen, NORM_WEIGHT_JITTER)
    # After the final RMSNorm the hidden state has RMS ~1, so a row of std LOGIT_STD/sqrt(hidden)
    # gives logits of std ~LOGIT_STD.
    lm = _randn((cfg.vocab, cfg.hidden), gen, LOGIT_STD / math.sqrt(cfg.hidden))
    if cfg.tie_word_embeddings:
        w["model.embed_tokens.weight"] = lm
    else:
        w["lm_head.weight"] = lm
    return w


def random_router_weights(cfg: ModelConfig, seed: int, bias: float = 0.0) -> dict[str, torch.Tensor]:
    """Random router tensors: weight std ``1/sqrt(hidden)`` (score std ~ RMS of the stream), bias.

    Parameters
    ----------
    cfg : ModelConfig
    seed : int
        Seed of the ``torch.Generator``.
    bias : float
        Bias of every router (shifts the skip fraction for a given threshold).

    Returns
    -------
    dict[str, Tensor]
        ``model.layers.{i}.router.{attn,ffn}.weight`` float32 [hidden] and ``.bias`` float32 [1].
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(cfg.layers):
        for block in ("attn", "ffn"):
            wname, bname = router_names(i, block)
            out[wname] = _randn((cfg.hidden,), gen, 1.0 / math.sqrt(cfg.hidden))
            out[bname] = torch.tensor([bias], dtype=torch.float32)
    return out


def random_bitnet_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random float master weights of a BitNet b1.58 model (HF names, float32).

    Linears are ``[out, in]`` with std :data:`LINEAR_INIT_STD`; the golden model ternarizes them
    (absmean) itself. Router tensors are added when ``cfg.routers`` (bias 0).

    Raises
    ------
    ConfigError
        If ``cfg.family != "bitnet"``.
    """
    if cfg.family != "bitnet":
        raise ConfigError(f"random_bitnet_weights: expected a bitnet config, found {cfg.family!r}")
    gen = torch.Generator().manual_seed(seed)
    w = _common_weights(cfg, gen)
    for _, lin, prefix in linear_prefixes(cfg):
        k, n = linear_shape(cfg, lin)
        w[f"{prefix}.weight"] = _randn((n, k), gen, LINEAR_INIT_STD)
    if cfg.routers:
        w.update(random_router_weights(cfg, seed + 1))
    return w


def random_llama_weights(cfg: ModelConfig, seed: int, keep_float: bool = True) -> dict[str, torch.Tensor]:
    """Random INT4 Llama weights: float masters quantized with the RTN group quantizer.

    Each linear gets ``{linear}.q`` int64 [in, out], ``{linear}.zeros`` int64 [in//G, out],
    ``{linear}.scales`` float16 [in//G, out] from :func:`ternopu.golden.int4.rtn_quantize`
    (G = ``cfg.int4_group``) and, if ``keep_float``, the float master ``{linear}.weight``
    float32 [out, in] (HF layout) for the reference's ``weights_source="float"``.

    Raises
    ------
    ConfigError
        If ``cfg.family != "llama"``.
    """
    from .int4 import rtn_quantize

    if cfg.family != "llama":
        raise ConfigError(f"random_llama_weights: expected a llama config, found {cfg.family!r}")
    gen = torch.Generator().manual_seed(seed)
    w = _common_weights(cfg, gen)
    for _, lin, prefix in linear_prefixes(cfg):
        k, n = linear_shape(cfg, lin)
        master = _randn((k, n), gen, LINEAR_INIT_STD)  # GPTQ layout [in, out]
        q, zeros, scales = rtn_quantize(master, group=cfg.int4_group, bits=4)
        w[f"{prefix}.q"], w[f"{prefix}.zeros"], w[f"{prefix}.scales"] = q, zeros, scales
        if keep_float:
            w[f"{prefix}.weight"] = master.t().contiguous()
        del master
    if cfg.routers:
        w.update(random_router_weights(cfg, seed + 1))
    return w


# ---------------------------------------------------------------------------------------------
# Float building blocks
# ---------------------------------------------------------------------------------------------
def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Standard RMSNorm ``x / sqrt(mean(x^2) + eps) * weight`` in the dtype of ``x``."""
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def rope_ref(x: torch.Tensor, pos: int, head_dim: int, theta: float) -> torch.Tensor:
    """Rotate-half RoPE (HF Llama convention) with angles computed in float64.

    ``x``: [..., H, Dh]; channel ``i < Dh/2`` pairs with ``i + Dh/2`` at frequency
    ``theta^(-2i/Dh)``.
    """
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / head_dim)
    ang = pos * inv_freq
    cos = torch.cat([ang.cos(), ang.cos()]).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()]).to(x.dtype)
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def kl_divergence(ref_logits: torch.Tensor, golden_logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || golden) of the softmax distributions along the last axis, float64, natural log."""
    lp = torch.log_softmax(ref_logits.double(), -1)
    lq = torch.log_softmax(golden_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Reference model
# ---------------------------------------------------------------------------------------------
class ReferenceModel:
    """Float reference decoder (BitNet b1.58 or INT4 Llama-2 architecture).

    Parameters
    ----------
    cfg : ModelConfig
    weights : dict[str, Tensor]
        Weights dict (see :mod:`ternopu.golden.config` for the names).
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32``.
    weights_source : {"quantized", "float"}
        Dequantized quantized weights (measures the datapath) or float masters.

    Notes
    -----
    State: a KV cache per (layer, token) in ``dtype`` plus the routing bitmask of the tokens
    processed so far. :meth:`decode_step` processes one token at the next position.
    """

    def __init__(self, cfg: ModelConfig, weights: dict, *, dtype=torch.float64,
                 weights_source: str = "quantized"):
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"reference dtype must be float32 or float64, found {dtype}")
        if weights_source not in ("quantized", "float"):
            raise ConfigError(f"weights_source must be 'quantized' or 'float', found {weights_source!r}")
        self.cfg = cfg
        self.dtype = dtype
        self.weights_source = weights_source
        self.linears = {prefix: self._dense_weight(weights, prefix)
                        for _, _, prefix in linear_prefixes(cfg)}
        self.norms = {n: weights[n].to(dtype) for n in norm_names(cfg)}
        self.embed = weights["model.embed_tokens.weight"].to(dtype)
        lm = weights["model.embed_tokens.weight"] if cfg.tie_word_embeddings else weights["lm_head.weight"]
        self.lm_head = lm.to(dtype)
        self.routers = {}
        if cfg.routers:
            for i in range(cfg.layers):
                for block in ("attn", "ffn"):
                    wn, bn = router_names(i, block)
                    if wn in weights:
                        self.routers[(i, block)] = (weights[wn].to(dtype), weights[bn].to(dtype))
        self.reset()

    # -- weights ------------------------------------------------------------------------------
    def _dense_weight(self, weights: dict, prefix: str) -> torch.Tensor:
        """Dense float weight ``[out, in]`` of one linear in ``self.dtype``."""
        if self.weights_source == "float":
            if f"{prefix}.weight" not in weights:
                raise ConfigError(f"weights_source='float' needs the float master {prefix}.weight")
            return weights[f"{prefix}.weight"].to(self.dtype)
        if self.cfg.family == "bitnet":
            from .bitnet import ternary_weight_quant

            if f"{prefix}.wq" in weights:  # already ternarized (loader output)
                wq, gamma = weights[f"{prefix}.wq"], weights[f"{prefix}.gamma"]
            else:
                wq, gamma = ternary_weight_quant(weights[f"{prefix}.weight"])
            return wq.to(self.dtype) * gamma.to(self.dtype)
        from .int4 import dequantize_int4

        w = dequantize_int4(weights[f"{prefix}.q"], weights[f"{prefix}.zeros"],
                            weights[f"{prefix}.scales"], self.cfg.int4_group)
        perm = weights.get(f"{prefix}.act_perm")
        if perm is not None:  # act-order: row j of q is input row perm[j]
            w_in_order = torch.empty_like(w)
            w_in_order[perm] = w
            w = w_in_order
        return w.t().to(self.dtype).contiguous()

    # -- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every processed token."""
        cfg = self.cfg
        self.pos = 0
        self.k_cache = torch.zeros(cfg.layers, cfg.max_pos, cfg.kv_heads, cfg.head_dim, dtype=self.dtype)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.skip = torch.zeros(cfg.max_pos, cfg.layers, 2, dtype=torch.bool)

    @property
    def routing_bitmask(self) -> torch.Tensor:
        """Skip bits ``bool [tokens, layers, 2]`` (``[..., 0]`` attention, ``[..., 1]`` FFN)."""
        return self.skip[: self.pos].clone()

    # -- blocks -------------------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return self.linears[prefix] @ x

    def _route(self, layer: int, block: str, x: torch.Tensor, forced) -> bool:
        """Skip decision for one block (True = skip)."""
        if layer == 0 and block == "attn":
            return False
        if forced is not None:
            return bool(forced)
        if not self.cfg.routers or (layer, block) not in self.routers:
            return False
        w, b = self.routers[(layer, block)]
        return bool((w @ x + b[0]) < self.cfg.router_threshold)

    def _attention(self, layer: int, h: torch.Tensor, pos: int) -> torch.Tensor:
        from .model import kv_source_layers

        cfg, p = self.cfg, layer_prefix(layer)
        q = self._linear(h, f"{p}.self_attn.q_proj").view(cfg.heads, cfg.head_dim)
        k = self._linear(h, f"{p}.self_attn.k_proj").view(cfg.kv_heads, cfg.head_dim)
        v = self._linear(h, f"{p}.self_attn.v_proj").view(cfg.kv_heads, cfg.head_dim)
        q = rope_ref(q, pos, cfg.head_dim, cfg.rope_theta)
        k = rope_ref(k, pos, cfg.head_dim, cfg.rope_theta)
        self.k_cache[layer, pos] = k
        self.v_cache[layer, pos] = v
        src = kv_source_layers(self.skip[: pos + 1, :, 0])[:, layer]  # [pos+1]
        tok = torch.arange(pos + 1)
        keys = self.k_cache[src, tok]  # [T, kvh, Dh]
        vals = self.v_cache[src, tok]
        out = torch.empty(cfg.heads, cfg.head_dim, dtype=self.dtype)
        for hd in range(cfg.heads):
            kvh = hd // cfg.gqa_ratio
            scores = keys[:, kvh] @ q[hd] / math.sqrt(cfg.head_dim)
            out[hd] = torch.softmax(scores, -1) @ vals[:, kvh]
        out = out.reshape(-1)
        if cfg.family == "bitnet":
            out = rmsnorm_ref(out, self.norms[f"{p}.self_attn.attn_sub_norm.weight"], cfg.rms_eps)
        return self._linear(out, f"{p}.self_attn.o_proj")

    def _ffn(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        cfg, p = self.cfg, layer_prefix(layer)
        gate = self._linear(h, f"{p}.mlp.gate_proj")
        up = self._linear(h, f"{p}.mlp.up_proj")
        if cfg.family == "bitnet":
            act = torch.relu(gate) ** 2 * up
            act = rmsnorm_ref(act, self.norms[f"{p}.mlp.ffn_sub_norm.weight"], cfg.rms_eps)
        else:
            act = gate * torch.sigmoid(gate) * up
        return self._linear(act, f"{p}.mlp.down_proj")

    def layer_forward(self, layer: int, x: torch.Tensor, pos: int, forced_skip=None) -> torch.Tensor:
        """One decoder layer for one token (updates this layer's KV cache and skip bits).

        Parameters
        ----------
        layer : int
        x : Tensor [hidden]
            Residual stream entering the layer (converted to ``self.dtype``).
        pos : int
            Token position.
        forced_skip : sequence of two bools or None
            Forced (attention, FFN) skip bits, e.g. from the golden bitmask.

        Returns
        -------
        Tensor [hidden] in ``self.dtype``.
        """
        cfg, p = self.cfg, layer_prefix(layer)
        x = x.to(self.dtype)
        fa, ff = (None, None) if forced_skip is None else (forced_skip[0], forced_skip[1])
        skip_attn = self._route(layer, "attn", x, fa)
        self.skip[pos, layer, 0] = skip_attn
        if not skip_attn:
            h = rmsnorm_ref(x, self.norms[f"{p}.input_layernorm.weight"], cfg.rms_eps)
            x = x + self._attention(layer, h, pos)
        skip_ffn = self._route(layer, "ffn", x, ff)
        self.skip[pos, layer, 1] = skip_ffn
        if not skip_ffn:
            h = rmsnorm_ref(x, self.norms[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
            x = x + self._ffn(layer, h)
        return x

    def decode_step(self, token: int, forced_skip: torch.Tensor | None = None) -> torch.Tensor:
        """Process ``token`` at the next position; return next-token logits [vocab] in ``dtype``.

        ``forced_skip``: optional bool [layers, 2] skip bits for this token.
        """
        cfg = self.cfg
        if self.pos >= cfg.max_pos:
            raise FormatError(f"sequence longer than max_pos={cfg.max_pos}")
        if not 0 <= int(token) < cfg.vocab:
            raise FormatError(f"token id must lie in [0, {cfg.vocab - 1}], found {int(token)}")
        pos = self.pos
        x = self.embed[int(token)].clone()
        for layer in range(cfg.layers):
            fs = None if forced_skip is None else forced_skip[layer]
            x = self.layer_forward(layer, x, pos, fs)
        self.pos += 1
        x = rmsnorm_ref(x, self.norms["model.norm.weight"], cfg.rms_eps)
        return self.lm_head @ x

    def forward_tokens(self, tokens, skip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced run from an empty state: logits ``[len(tokens), vocab]``.

        ``skip_mask``: optional bool [len(tokens), layers, 2] forced routing (golden bitmask).
        """
        self.reset()
        rows = []
        for t, tok in enumerate(tokens):
            rows.append(self.decode_step(int(tok), None if skip_mask is None else skip_mask[t]))
        return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeComparison:
    """Result of :func:`compare_greedy`.

    Attributes
    ----------
    top1_agreement : float
        Fraction of decode steps whose golden argmax equals the reference argmax.
    mean_kl : float
        Mean over decode steps of KL(ref || golden) in nats.
    max_kl : float
        Largest per-step KL.
    tokens : list[int]
        Greedy tokens generated by the golden model.
    ref_top1 : list[int]
        Reference argmax at each step (teacher-forced on the golden tokens).
    """

    top1_agreement: float
    mean_kl: float
    max_kl: float
    tokens: list
    ref_top1: list


def compare_greedy(golden, reference: ReferenceModel, prompt, n: int) -> DecodeComparison:
    """Greedy-decode ``n`` tokens with ``golden``; score the reference on the same tokens.

    The golden model runs :meth:`~ternopu.golden.model.GoldenModel.generate` (its next-token
    logits at every step are kept); the reference is then run teacher-forced on
    ``prompt + generated[:-1]`` with the golden routing bitmask forced, so both see the same
    tokens and run the same blocks. The distributions compared are the ``n`` next-token
    distributions (the one after the prompt and after each generated token but the last).

    Returns
    -------
    DecodeComparison
    """
    prompt = [int(t) for t in prompt]
    tokens = golden.generate(prompt, n)
    golden_logits = torch.stack(golden.step_logits[-n:]).double()
    seq = prompt + tokens[:-1]
    mask = golden.routing_bitmask[: len(seq)]
    ref_logits = reference.forward_tokens(seq, mask)[len(prompt) - 1:].double()
    kl = kl_divergence(ref_logits, golden_logits)
    ref_top1 = ref_logits.argmax(-1)
    agree = (ref_top1 == golden_logits.argmax(-1)).double().mean()
    return DecodeComparison(
        top1_agreement=float(agree), mean_kl=float(kl.mean()), max_kl=float(kl.max()),
        tokens=tokens, ref_top1=[int(t) for t in ref_top1],
    )
