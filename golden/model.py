"""Golden decoder models: BitNet b1.58 and INT4 Llama-2, with routers and cross-layer KV reuse.

Every number here comes from the golden unit functions (TLMM BitLinear, PE-array BFP modes,
KIVI cache, NPE nonlinearities); this module only wires them together and states the order of
the few binary32 operations it adds itself. A model processes one token per
:meth:`GoldenModel.decode_step` (the overlay is a decode engine: a prompt is fed token by token,
so prefill equals a sequence of decode steps and is bit-identical to it).

Dataflow of one token at position ``pos`` (residual stream ``x`` is float32 ``[hidden]``)
-----------------------------------------------------------------------------------------
``x = float32(embed[token])`` (exact from bf16 / fp16 / fp32). For each layer ``l``:

1. Attention router (if ``cfg.routers``, never at layer 0): see *Routers*. If skipped, ``x`` is
   unchanged and no KV is stored at layer ``l`` for this token.
2. ``h = rmsnorm(x, input_layernorm)``.
   BitNet: ``q, k, v = tlmm_linear(h, keys, K, gamma)`` (INT8 absmax activations, ternary keys,
   one rescale per output). Llama: ``h16 = fp16(h)``; ``q, k, v = linear_bfp_int4(h16, ...)``.
3. ``q, k = rope(q, pos), rope(k, pos)`` with the offline binary32 tables of
   :func:`ternopu.golden.nonlinear.rope_tables`; ``k16, v16 = fp16(k), fp16(v)`` are stored
   (FP16 cache, or appended to the layer's :class:`~ternopu.golden.kivi.KiviCache`).
4. Per query head ``h`` (KV head ``h // (heads / kv_heads)``): ``q16 = fp16(q[h])``;
   scores over the visible tokens (see *KV reuse*) with ``pe.qk_bfp`` on FP16 rows and
   ``pe.qk_bfp_kivi`` on quantized rows; ``scores = scores * SCALE`` with
   ``SCALE = float32(1/sqrt(head_dim))`` (offline float64 constant rounded once to binary32;
   one binary32 multiply per score); ``p = softmax_online(scores)``;
   ``o = pe.pv_bfp_kivi(p_quantized, ...) + pe.pv_bfp(p_fp16_rows, ...)`` (one binary32 add,
   quantized part on the left; a part with no rows is left out, not added as zero).
5. BitNet: ``o = rmsnorm(o, attn_sub_norm)``; ``a = tlmm_linear(o, o_proj)``.
   Llama: ``a = linear_bfp_int4(fp16(o), o_proj)``. Then ``x = residual_add(x, a)``.
6. FFN router (if enabled); if skipped ``x`` is unchanged.
7. ``h = rmsnorm(x, post_attention_layernorm)``. BitNet: ``g, u = tlmm_linear(h, gate/up)``,
   ``m = rmsnorm(relu2_glu(g, u), ffn_sub_norm)``, ``d = tlmm_linear(m, down)``.
   Llama: ``g, u = linear_bfp_int4(fp16(h), gate/up)``, ``d = linear_bfp_int4(fp16(swiglu(g, u)), down)``.
   ``x = residual_add(x, d)``.

Final: ``logits = pe.qk_bfp(fp16(rmsnorm(x, norm)), lm_head_fp16)`` (LM head weights converted to
FP16 offline, RNE with saturation), float32 ``[vocab]``.

``fp16(.)`` is binary32 -> binary16 round-to-nearest-even with *saturation* at +-65504 (values
are clamped first, so an overflow never becomes Inf).

Routers (SkipGPT style)
-----------------------
``score = pe.qk_bfp(fp16(x), fp16(w_router)[None])[0] + float32(bias)`` (one binary32 add) on the
block input ``x`` (the residual stream before the block's norm); the block is skipped when
``score < float32(router_threshold)``. Attention of layer 0 never skips, so every token stores KV
at layer 0 at least. ``router_threshold = -inf`` never skips, which equals ``routers=False``.
The skip bits form the routing bitmask ``bool [tokens, layers, 2]`` (``[..., 0]`` attention,
``[..., 1]`` FFN; True = skipped).

KV reuse
--------
A token that skips attention at layer ``l`` stores no KV at ``l``. A query at layer ``l`` and
position ``t`` attends to every token ``s <= t``; token ``s`` contributes the K/V stored at its
*source layer* ``src[s, l] = max{l' <= l : s ran attention at l'}`` (:func:`kv_source_layers`).
Visible rows are gathered in ascending token order. With a KIVI cache each source row is either
in the quantized history or in the FP16 residual window of its source layer's cache (keys and
values independently); the score vector is ordered [quantized key rows, FP16 key rows], each in
ascending token order (with no reuse this is plain token order). Quantized key rows are passed to
``qk_bfp_kivi`` with their group's scale/min expanded per row (group 1), which is how the KV
history buffer holds reused rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .config import KV_FP16_BITS, ModelConfig, layer_prefix, linear_prefixes, linear_shape, norm_names, router_names
from .errors import ConfigError, FormatError, check_finite

__all__ = [
    "FP16_MAX",
    "ATTN",
    "FFN",
    "LINEAR_PATHS",
    "to_fp16_sat",
    "attention_scale",
    "kv_source_layers",
    "visible_kv_rows",
    "KVStats",
    "kv_storage_stats",
    "GoldenModel",
]

#: Largest finite binary16 value; fp16 conversions saturate here.
FP16_MAX = 65504.0
#: Routing bitmask index of the attention block and of the FFN block.
ATTN, FFN = 0, 1
#: Ways to compute a BitNet BitLinear (bit-identical results; see GoldenModel).
LINEAR_PATHS = ("tlmm", "matmul")


def to_fp16_sat(x: torch.Tensor) -> torch.Tensor:
    """binary32 -> binary16, round to nearest even, saturating at +-65504.

    Parameters
    ----------
    x : float32 tensor (finite)

    Returns
    -------
    float16 tensor of the same shape.
    """
    check_finite(x, "fp16 conversion input")
    return x.to(torch.float32).clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def attention_scale(head_dim: int) -> torch.Tensor:
    """``float32(1 / sqrt(head_dim))``: offline float64 value, rounded once to binary32 (0-dim)."""
    return torch.tensor(1.0 / math.sqrt(head_dim), dtype=torch.float64).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Routing bookkeeping (pure functions on the bitmask)
# ---------------------------------------------------------------------------------------------
def kv_source_layers(attn_skip: torch.Tensor) -> torch.Tensor:
    """Layer whose KV each token uses at each layer under cross-layer KV reuse.

    Parameters
    ----------
    attn_skip : bool [T, L]
        True where token ``t`` skipped attention at layer ``l``. Column 0 must be all False.

    Returns
    -------
    int64 [T, L]
        ``src[t, l] = max{l' <= l : not attn_skip[t, l']}``.

    Raises
    ------
    FormatError
        Not a 2-D bool tensor, or a token skipping attention at layer 0.
    """
    if not isinstance(attn_skip, torch.Tensor) or attn_skip.dtype != torch.bool or attn_skip.dim() != 2:
        raise FormatError(f"attn_skip: expected bool [T, L], got {getattr(attn_skip, 'dtype', type(attn_skip))} "
                          f"{tuple(getattr(attn_skip, 'shape', ()))}")
    if attn_skip.numel() and bool(attn_skip[:, 0].any()):
        t = int(attn_skip[:, 0].nonzero()[0])
        raise FormatError(f"attn_skip: token {t} skips attention at layer 0, which never skips")
    t_count, layers = attn_skip.shape
    idx = torch.arange(layers).expand(t_count, layers)
    ran_at = torch.where(attn_skip, torch.zeros_like(idx), idx)
    return torch.cummax(ran_at, dim=1).values


def visible_kv_rows(attn_skip: torch.Tensor, t: int, layer: int) -> list[tuple[int, int]]:
    """``(token, source layer)`` of every KV row a query at position ``t`` sees at ``layer``.

    Tokens ``0 .. t`` in ascending order; ``attn_skip`` is bool [>= t+1, L].
    """
    src = kv_source_layers(attn_skip[: t + 1])
    return [(s, int(src[s, layer])) for s in range(t + 1)]


@dataclass(frozen=True)
class KVStats:
    """KV storage of a decoded sequence.

    Attributes
    ----------
    entries_stored, entries_dense : int
        (token, layer) KV rows stored vs ``tokens * layers`` without reuse.
    bytes_stored, bytes_dense : int
        Bytes at stored precision (K and V, all KV heads; KIVI: packed codes + fp16 scale/min +
        fp16 residual window, as :meth:`KiviCache.stored_bytes` counts them).
    skipped_attn, skipped_ffn : int
        Number of skipped attention / FFN blocks.
    blocks : int
        ``tokens * layers`` (blocks of each kind).
    """

    entries_stored: int
    entries_dense: int
    bytes_stored: int
    bytes_dense: int
    skipped_attn: int
    skipped_ffn: int
    blocks: int

    @property
    def bytes_saved(self) -> int:
        return self.bytes_dense - self.bytes_stored

    @property
    def saved_fraction(self) -> float:
        return self.bytes_saved / self.bytes_dense if self.bytes_dense else 0.0

    @property
    def skipped_fraction(self) -> float:
        """Fraction of all (attention + FFN) blocks that were skipped."""
        return (self.skipped_attn + self.skipped_ffn) / (2 * self.blocks) if self.blocks else 0.0


def kv_storage_stats(skip_mask: torch.Tensor, row_bytes: int) -> KVStats:
    """KV storage of an FP16-style cache where every stored (token, layer) row costs ``row_bytes``.

    Parameters
    ----------
    skip_mask : bool [T, L, 2]
        Routing bitmask.
    row_bytes : int
        Bytes of one token's K and V at one layer (all KV heads).
    """
    t_count, layers = skip_mask.shape[0], skip_mask.shape[1]
    stored = int((~skip_mask[:, :, ATTN]).sum())
    dense = t_count * layers
    return KVStats(stored, dense, stored * row_bytes, dense * row_bytes,
                   int(skip_mask[:, :, ATTN].sum()), int(skip_mask[:, :, FFN].sum()), dense)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class GoldenModel:
    """Bit-exact golden decoder (see the module docstring for every step).

    Build with :meth:`from_config_and_weights`. State: position, KV caches, routing bitmask, the
    next-token logits of every step (``step_logits``).
    """

    def __init__(self, cfg: ModelConfig, weights: dict, fmt=None, linear_path: str = "tlmm"):
        from . import nonlinear, pe
        from .bfp import DEFAULT_BFP

        if linear_path not in LINEAR_PATHS:
            raise ConfigError(f"linear_path must be one of {LINEAR_PATHS}, found {linear_path!r}")
        self.linear_path = linear_path
        self.forced_skip: torch.Tensor | None = None
        self.cfg = cfg
        self.fmt = DEFAULT_BFP if fmt is None else fmt
        self._pe, self._nl = pe, nonlinear
        self.scale = attention_scale(cfg.head_dim)
        self.cos, self.sin = nonlinear.rope_tables(cfg.max_pos, cfg.head_dim, cfg.rope_theta)
        self.threshold = torch.tensor(float(cfg.router_threshold), dtype=torch.float32)
        self._load(weights)
        self.reset()

    @classmethod
    def from_config_and_weights(cls, cfg: ModelConfig, weights: dict, fmt=None,
                                linear_path: str = "tlmm") -> "GoldenModel":
        """Build a model from a config and a weights dict (names of :mod:`ternopu.golden.config`).

        ``fmt`` is the PE array's BFP format (default :data:`ternopu.golden.bfp.DEFAULT_BFP`).
        ``linear_path`` (BitNet only): ``"tlmm"`` computes every BitLinear with
        :func:`ternopu.golden.tlmm.tlmm_linear` (table lookup, as the overlay does);
        ``"matmul"`` uses :func:`ternopu.golden.bitnet.bitlinear` (exact integer matmul), which
        is bit-identical (the accumulator is exact either way) and faster on a CPU.

        BitNet linears may be given as float masters ``{linear}.weight`` (ternarized here with
        ``ternary_weight_quant``) or already as ``{linear}.wq`` / ``{linear}.gamma``. Llama
        linears need ``{linear}.q/.zeros/.scales``.

        Raises
        ------
        ConfigError
            Missing tensors (named), routers enabled without router tensors.
        FormatError, NonFiniteError
            From the unit functions (shapes, NaN/Inf in weights).
        """
        return cls(cfg, weights, fmt, linear_path)

    # -- weights --------------------------------------------------------------------------------
    def _need(self, weights: dict, name: str) -> torch.Tensor:
        if name not in weights:
            raise ConfigError(f"weights: missing tensor {name!r} required by {self.cfg.name}")
        t = weights[name]
        check_finite(t, name)
        return t

    def _load(self, weights: dict) -> None:
        cfg = self.cfg
        emb = self._need(weights, "model.embed_tokens.weight")
        if tuple(emb.shape) != (cfg.vocab, cfg.hidden):
            raise FormatError(f"model.embed_tokens.weight: expected {(cfg.vocab, cfg.hidden)}, "
                              f"found {tuple(emb.shape)}")
        self.embed = emb.to(torch.float32)  # exact from fp16/bf16
        lm = emb if cfg.tie_word_embeddings else self._need(weights, "lm_head.weight")
        self.lm_head16 = to_fp16_sat(lm.to(torch.float32))
        self.norms = {n: self._need(weights, n).to(torch.float32) for n in norm_names(cfg)}
        self.linears = {}
        for _, lin, prefix in linear_prefixes(cfg):
            k, n = linear_shape(cfg, lin)
            if cfg.family == "bitnet":
                from .bitnet import ternary_weight_quant
                from .tlmm import encode_keys

                if f"{prefix}.wq" in weights:
                    wq, gamma = weights[f"{prefix}.wq"], weights[f"{prefix}.gamma"]
                else:
                    wq, gamma = ternary_weight_quant(self._need(weights, f"{prefix}.weight"))
                if tuple(wq.shape) != (n, k):
                    raise FormatError(f"{prefix}: expected ternary weights [{n}, {k}], found {tuple(wq.shape)}")
                self.linears[prefix] = (encode_keys(wq), k, gamma, wq)
            else:
                q = self._need(weights, f"{prefix}.q")
                if tuple(q.shape) != (k, n):
                    raise FormatError(f"{prefix}.q: expected [{k}, {n}] (in, out), found {tuple(q.shape)}")
                self.linears[prefix] = (q, self._need(weights, f"{prefix}.zeros"),
                                        self._need(weights, f"{prefix}.scales"),
                                        weights.get(f"{prefix}.act_perm"))
        self.routers = {}
        if cfg.routers:
            for i in range(cfg.layers):
                for b, block in enumerate(("attn", "ffn")):
                    wn, bn = router_names(i, block)
                    if wn not in weights:
                        raise ConfigError(f"cfg.routers is True but the weights lack {wn!r}")
                    w16 = to_fp16_sat(weights[wn].to(torch.float32)).reshape(1, cfg.hidden)
                    bias = self._need(weights, bn).to(torch.float32).reshape(-1)[0]
                    self.routers[(i, b)] = (w16, bias)

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty KV caches, position 0, empty routing bitmask."""
        cfg = self.cfg
        self.pos = 0
        self.skip = torch.zeros(cfg.max_pos, cfg.layers, 2, dtype=torch.bool)
        self.step_logits: list[torch.Tensor] = []
        if cfg.kv_bits == KV_FP16_BITS:
            self.k16 = torch.zeros(cfg.layers, cfg.max_pos, cfg.kv_heads, cfg.head_dim, dtype=torch.float16)
            self.v16 = torch.zeros_like(self.k16)
        else:
            from .kivi import KiviCache

            self.kivi = [[KiviCache(cfg.head_dim, bits=cfg.kv_bits, group=cfg.kv_group,
                                    residual=cfg.kv_residual) for _ in range(cfg.kv_heads)]
                         for _ in range(cfg.layers)]
            # row r of layer l's caches holds token self.kivi_tokens[l][r]
            self.kivi_tokens: list[list[int]] = [[] for _ in range(cfg.layers)]

    @property
    def routing_bitmask(self) -> torch.Tensor:
        """Skip bits ``bool [tokens, layers, 2]`` of the tokens processed so far (True = skipped)."""
        return self.skip[: self.pos].clone()

    def kv_stats(self) -> KVStats:
        """KV storage of the tokens processed so far, with and without cross-layer reuse."""
        cfg = self.cfg
        if cfg.kv_bits == KV_FP16_BITS:
            return kv_storage_stats(self.routing_bitmask, 2 * cfg.kv_dim * 2)
        base = kv_storage_stats(self.routing_bitmask, 0)
        stored = sum(c.stored_bytes() for layer in self.kivi for c in layer)
        dense = cfg.layers * cfg.kv_heads * _kivi_bytes_for(cfg, self.pos)
        return KVStats(base.entries_stored, base.entries_dense, stored, dense,
                       base.skipped_attn, base.skipped_ffn, base.blocks)

    # -- linear layers --------------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """One linear layer on float32 ``x`` [K] -> float32 [N] (family's datapath)."""
        if self.cfg.family == "bitnet":
            from .tlmm import tlmm_linear

            keys, k, gamma, wq = self.linears[prefix]
            if self.linear_path == "matmul":
                from .bitnet import bitlinear

                return bitlinear(x, wq, gamma)
            return tlmm_linear(x, keys, k, gamma)
        q, zeros, scales, perm = self.linears[prefix]
        x16 = to_fp16_sat(x)
        if perm is not None:  # act-order checkpoint: rows of q were regrouped at load time
            x16 = x16[perm]
        return self._pe.linear_bfp_int4(x16, q, zeros, scales, self.cfg.int4_group, self.fmt)

    # -- router ---------------------------------------------------------------------------------
    def router_score(self, layer: int, block: int, x: torch.Tensor) -> torch.Tensor:
        """Router score (float32 0-dim) of ``block`` (ATTN/FFN) of ``layer`` for block input ``x``."""
        w16, bias = self.routers[(layer, block)]
        return self._pe.qk_bfp(to_fp16_sat(x), w16, self.fmt)[0] + bias

    def force_routing(self, skip_mask: torch.Tensor | None) -> None:
        """Replay a routing bitmask instead of evaluating the routers (None: routers decide).

        ``skip_mask``: bool [tokens, layers, 2]; token ``t`` uses row ``t`` (tokens beyond it are
        not skipped). Attention of layer 0 never skips, whatever the mask says (FormatError if
        it asks to). Works with ``cfg.routers`` False as well (the controller only reads the
        bitmask).
        """
        if skip_mask is not None:
            if (not isinstance(skip_mask, torch.Tensor) or skip_mask.dtype != torch.bool
                    or skip_mask.dim() != 3 or tuple(skip_mask.shape[1:]) != (self.cfg.layers, 2)):
                raise FormatError(f"skip_mask: expected bool [tokens, {self.cfg.layers}, 2], found "
                                  f"{getattr(skip_mask, 'dtype', type(skip_mask))} "
                                  f"{tuple(getattr(skip_mask, 'shape', ()))}")
            if bool(skip_mask[:, 0, ATTN].any()):
                raise FormatError("skip_mask: layer 0 attention never skips")
            skip_mask = skip_mask.clone()
        self.forced_skip = skip_mask

    def _skips(self, layer: int, block: int, x: torch.Tensor, pos: int) -> bool:
        if layer == 0 and block == ATTN:
            return False
        if self.forced_skip is not None:
            return pos < self.forced_skip.shape[0] and bool(self.forced_skip[pos, layer, block])
        if not self.cfg.routers:
            return False
        return bool(self.router_score(layer, block, x) < self.threshold)

    # -- attention ------------------------------------------------------------------------------
    def _store_kv(self, layer: int, pos: int, k16: torch.Tensor, v16: torch.Tensor) -> None:
        if self.cfg.kv_bits == KV_FP16_BITS:
            self.k16[layer, pos] = k16
            self.v16[layer, pos] = v16
        else:
            for h in range(self.cfg.kv_heads):
                self.kivi[layer][h].append(k16[h], v16[h])
            self.kivi_tokens[layer].append(pos)

    def _attend_fp16(self, layer: int, q: torch.Tensor, pos: int) -> torch.Tensor:
        cfg, pe, nl = self.cfg, self._pe, self._nl
        src = kv_source_layers(self.skip[: pos + 1, :, ATTN])[:, layer]
        tok = torch.arange(pos + 1)
        keys, vals = self.k16[src, tok], self.v16[src, tok]  # [T, KVH, Dh] fp16
        out = []
        for h in range(cfg.heads):
            kvh = h // cfg.gqa_ratio
            scores = pe.qk_bfp(to_fp16_sat(q[h]), keys[:, kvh].contiguous(), self.fmt) * self.scale
            p = nl.softmax_online(scores)
            out.append(pe.pv_bfp(p, vals[:, kvh].contiguous(), self.fmt))
        return torch.cat(out)

    def _gather_kivi(self, layer: int, pos: int, kvh: int):
        """Visible rows of KV head ``kvh`` at ``layer``, split into quantized and FP16 parts.

        Returns keys ``(codes [nq, Dh], scale [nq, Dh], mn [nq, Dh])`` (group-1 layout),
        fp16 key rows ``[nr, Dh]``, the score order ``key_tokens`` (list of token positions),
        values ``(codes [mq, Dh], scale [mq, Dh/vg], mn)``, fp16 value rows and ``value_tokens``.
        """
        src = kv_source_layers(self.skip[: pos + 1, :, ATTN])[:, layer]
        kq_rows, kr_rows, vq_rows, vr_rows = [], [], [], []
        kq_tok, kr_tok, vq_tok, vr_tok = [], [], [], []
        views = {}
        for s in range(pos + 1):
            l_src = int(src[s])
            if l_src not in views:
                c = self.kivi[l_src][kvh]
                views[l_src] = (c.quantized_keys(), c.residual_keys(), c.quantized_values(),
                                c.residual_values(), {t: r for r, t in enumerate(self.kivi_tokens[l_src])})
            qk, rk, qv, rv, row_of = views[l_src]
            r = row_of[s]
            nqk = 0 if qk is None else qk.codes.shape[0]
            if r < nqk:
                g = r // qk.group
                kq_rows.append((qk.codes[r], qk.scale[g], qk.mn[g]))
                kq_tok.append(s)
            else:
                kr_rows.append(rk[r - nqk])
                kr_tok.append(s)
            nqv = 0 if qv is None else qv.codes.shape[0]
            if r < nqv:
                vq_rows.append((qv.codes[r], qv.scale[r], qv.mn[r]))
                vq_tok.append(s)
            else:
                vr_rows.append(rv[r - nqv])
                vr_tok.append(s)

        def stack3(rows):
            return tuple(torch.stack([r[i] for r in rows]) for i in range(3)) if rows else None

        def stack1(rows):
            return torch.stack(rows) if rows else None

        return (stack3(kq_rows), stack1(kr_rows), kq_tok + kr_tok,
                stack3(vq_rows), stack1(vr_rows), vq_tok, vr_tok)

    def _attend_kivi(self, layer: int, q: torch.Tensor, pos: int) -> torch.Tensor:
        cfg, pe, nl = self.cfg, self._pe, self._nl
        out = []
        for kvh in range(cfg.kv_heads):
            kq, kr, key_tok, vq, vr, vq_tok, vr_tok = self._gather_kivi(layer, pos, kvh)
            order = {s: i for i, s in enumerate(key_tok)}
            vq_idx = torch.tensor([order[s] for s in vq_tok], dtype=torch.int64)
            vr_idx = torch.tensor([order[s] for s in vr_tok], dtype=torch.int64)
            for h in range(kvh * cfg.gqa_ratio, (kvh + 1) * cfg.gqa_ratio):
                q16 = to_fp16_sat(q[h])
                parts = []
                if kq is not None:
                    parts.append(pe.qk_bfp_kivi(q16, kq[0], kq[1], kq[2], 1, self.fmt))
                if kr is not None:
                    parts.append(pe.qk_bfp(q16, kr, self.fmt))
                scores = torch.cat(parts) * self.scale
                p = nl.softmax_online(scores)
                o = None
                if vq is not None:
                    o = pe.pv_bfp_kivi(p[vq_idx], vq[0], vq[1], vq[2], cfg.kv_group, self.fmt)
                if vr is not None:
                    o_r = pe.pv_bfp(p[vr_idx], vr, self.fmt)
                    o = o_r if o is None else o + o_r
                out.append(o)
        return torch.cat(out)

    def _attention(self, layer: int, h: torch.Tensor, pos: int) -> torch.Tensor:
        cfg, nl, p = self.cfg, self._nl, layer_prefix(layer)
        q = self._linear(h, f"{p}.self_attn.q_proj").view(cfg.heads, cfg.head_dim)
        k = self._linear(h, f"{p}.self_attn.k_proj").view(cfg.kv_heads, cfg.head_dim)
        v = self._linear(h, f"{p}.self_attn.v_proj").view(cfg.kv_heads, cfg.head_dim)
        q = nl.rope(q, pos, self.cos, self.sin)
        k = nl.rope(k, pos, self.cos, self.sin)
        self._store_kv(layer, pos, to_fp16_sat(k), to_fp16_sat(v))
        if cfg.kv_bits == KV_FP16_BITS:
            o = self._attend_fp16(layer, q, pos)
        else:
            o = self._attend_kivi(layer, q, pos)
        if cfg.family == "bitnet":
            o = nl.rmsnorm(o, self.norms[f"{p}.self_attn.attn_sub_norm.weight"], cfg.rms_eps)
        return self._linear(o, f"{p}.self_attn.o_proj")

    def _ffn(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        cfg, nl, p = self.cfg, self._nl, layer_prefix(layer)
        gate = self._linear(h, f"{p}.mlp.gate_proj")
        up = self._linear(h, f"{p}.mlp.up_proj")
        if cfg.family == "bitnet":
            m = nl.relu2_glu(gate, up)
            m = nl.rmsnorm(m, self.norms[f"{p}.mlp.ffn_sub_norm.weight"], cfg.rms_eps)
        else:
            m = nl.swiglu(gate, up)
        return self._linear(m, f"{p}.mlp.down_proj")

    # -- public steps ---------------------------------------------------------------------------
    def layer_forward(self, layer: int, x: torch.Tensor, pos: int) -> torch.Tensor:
        """One decoder layer for the token at ``pos`` (routes, updates KV and the bitmask).

        Parameters
        ----------
        layer : int
        x : float32 [hidden]
            Residual stream entering the layer.
        pos : int
            Position of the token; tokens must be fed in order (``pos`` is the next free one or
            the one being processed by :meth:`decode_step`).

        Returns
        -------
        float32 [hidden]
        """
        cfg, nl, p = self.cfg, self._nl, layer_prefix(layer)
        x = x.to(torch.float32)
        skip_attn = self._skips(layer, ATTN, x, pos)
        self.skip[pos, layer, ATTN] = skip_attn
        if not skip_attn:
            h = nl.rmsnorm(x, self.norms[f"{p}.input_layernorm.weight"], cfg.rms_eps)
            x = nl.residual_add(x, self._attention(layer, h, pos))
        skip_ffn = self._skips(layer, FFN, x, pos)
        self.skip[pos, layer, FFN] = skip_ffn
        if not skip_ffn:
            h = nl.rmsnorm(x, self.norms[f"{p}.post_attention_layernorm.weight"], cfg.rms_eps)
            x = nl.residual_add(x, self._ffn(layer, h))
        return x

    def lm_head(self, x: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm and LM head (BFP x BFP on the PE array): float32 [vocab]."""
        h = self._nl.rmsnorm(x, self.norms["model.norm.weight"], self.cfg.rms_eps)
        return self._pe.qk_bfp(to_fp16_sat(h), self.lm_head16, self.fmt)

    def decode_step(self, token: int) -> torch.Tensor:
        """Process ``token`` at the next position; return next-token logits float32 [vocab].

        Raises
        ------
        FormatError
            Token id outside ``[0, vocab)`` or sequence longer than ``max_pos``.
        """
        cfg = self.cfg
        token = int(token)
        if not 0 <= token < cfg.vocab:
            raise FormatError(f"token id must lie in [0, {cfg.vocab - 1}], found {token}")
        if self.pos >= cfg.max_pos:
            raise FormatError(f"sequence longer than max_pos={cfg.max_pos}")
        pos = self.pos
        x = self.embed[token].clone()
        for layer in range(cfg.layers):
            x = self.layer_forward(layer, x, pos)
        self.pos += 1
        logits = self.lm_head(x)
        self.step_logits.append(logits)
        return logits

    def prefill(self, tokens) -> torch.Tensor:
        """Feed ``tokens`` (non-empty) one by one; return the logits after the last one."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise FormatError("prefill: expected at least one token")
        logits = None
        for t in tokens:
            logits = self.decode_step(t)
        return logits

    def generate(self, prompt, n: int) -> list[int]:
        """Reset, prefill ``prompt`` and greedily decode ``n`` tokens (argmax, lowest id on ties).

        Returns the ``n`` generated ids. ``self.last_generate_seconds`` holds the wall time.
        """
        if n < 1:
            raise FormatError(f"generate: n must be >= 1, found {n}")
        start = time.perf_counter()
        self.reset()
        logits = self.prefill(prompt)
        out = []
        for i in range(n):
            tok = int(torch.argmax(logits))
            out.append(tok)
            if i + 1 < n:
                logits = self.decode_step(tok)
        self.last_generate_seconds = time.perf_counter() - start
        return out


def _kivi_bytes_for(cfg: ModelConfig, tokens: int) -> int:
    """Stored bytes of one KV head's KIVI cache holding ``tokens`` tokens (dense reference)."""
    from .kivi import KiviCache

    c = KiviCache(cfg.head_dim, bits=cfg.kv_bits, group=cfg.kv_group, residual=cfg.kv_residual)
    zero = torch.zeros(cfg.head_dim, dtype=torch.float16)
    for _ in range(tokens):
        c.append(zero, zero)
    return c.stored_bytes()
