"""Memory planner: where every tensor, the KV cache and the programs live in HBM.

The plan depends only on shapes (:class:`~ternopu.golden.config.ModelConfig`), the overlay
(:class:`~ternopu.hw.overlay_config.OverlayConfig`, :class:`~ternopu.hw.tlmm.TLMMConfig`) and the
context length, never on weight values, so "does it fit" is answered without packing anything.

Rules (also in docs/compiler.md)
--------------------------------
* Every channel (pseudo-channel) has its own fill pointer ``top[p]``; allocations are 32-byte
  aligned.
* **Striped** regions (weight streams, LM head, KV slots, key groups, embedding rows) use all
  ``hbm_ports`` channels and start at the same local offset on each (the largest fill pointer),
  so a stream reads at the full bandwidth of every port.
* **Row** regions (embedding rows, RoPE table rows) put row ``r`` in channel ``r % ports``.
* **Single** regions (norm weights, router weights, descriptor, route history, logits,
  instruction slot) go to the channel with the lowest fill pointer.
* Initialized data (weights and parameters) is planned first, zero-initialized state (KV cache,
  key groups, route history, logits, instructions) after it, so the image file holds only the
  initialized prefix of each channel.
* If any channel overflows, :class:`CompileError` names the capacity, what the model needs, the
  largest regions and the longest context that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ternopu.golden.config import KV_FP16_BITS, ModelConfig, linear_prefixes, linear_shape, norm_names, router_names
from ternopu.golden.errors import TernopuError
from ternopu.golden.tlmm import beat_grid, num_groups
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.hw.tlmm import TLMMConfig

from .layout import BEAT_BYTES, Geometry, KV_DESC_BYTES, KVLayout, align_up

__all__ = ["CompileError", "Region", "MemoryPlan", "plan_memory", "max_context", "DEFAULT_PREFILL_CHUNK",
           "embed_row_bytes"]

#: Prompt tokens per prefill program (longer prompts run as several programs).
DEFAULT_PREFILL_CHUNK = 16


class CompileError(TernopuError, ValueError):
    """The model cannot be compiled for this overlay (does not fit, unsupported shape or feature)."""


@dataclass(frozen=True)
class Region:
    """One allocation.

    ``kind``: ``"single"`` (``nbytes`` contiguous in channel ``port`` from ``base``), ``"stripe"``
    (striped stream, :mod:`.layout`), ``"rows"`` (``count`` rows of ``row_bytes`` round-robin over
    ``nports`` channels: row ``r`` in channel ``port + r % nports`` at ``base + (r // nports) *
    row_bytes``), ``"kv"`` (KV slots / key groups, addressed through :class:`KVLayout`).
    ``per_port`` is the span reserved in each channel used; ``init`` says whether the image file
    carries its bytes (else zero).
    """

    name: str
    kind: str
    port: int
    base: int
    nbytes: int
    nports: int
    per_port: int
    init: bool
    row_bytes: int = 0
    count: int = 0

    def addr(self, geo: Geometry) -> int:
        return geo.addr(self.port, self.base)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MemoryPlan:
    """Result of :func:`plan_memory`: regions by name, fill pointers, the KV layout."""

    cfg: ModelConfig
    overlay: OverlayConfig
    tlmm: TLMMConfig
    context: int
    prefill_chunk: int
    geo: Geometry
    regions: dict[str, Region] = field(default_factory=dict)
    top: list[int] = field(default_factory=list)
    init_top: list[int] = field(default_factory=list)
    kv: KVLayout | None = None
    embed_fmt: int = 2
    #: binary32 bit pattern of gamma/127 per BitNet linear prefix (TLMM immediate), from the weights.
    g127: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Region:
        return self.regions[name]

    def addr(self, name: str) -> int:
        return self.regions[name].addr(self.geo)

    @property
    def used_bytes(self) -> int:
        return sum(self.top)

    def summary(self) -> dict:
        """Bytes per region category (weights, kv, ...), totals and capacity."""
        cats: dict[str, int] = {}
        for r in self.regions.values():
            cat = r.name.split(":")[0]
            cats[cat] = cats.get(cat, 0) + r.per_port * (r.nports if r.kind != "single" else 1)
        return {"categories": cats, "used_bytes": self.used_bytes, "capacity_bytes": self.geo.total_bytes,
                "max_channel_fill": max(self.top), "channel_bytes": self.geo.channel_bytes,
                "context": self.context}


class _Allocator:
    def __init__(self, geo: Geometry):
        self.geo = geo
        self.top = [0] * geo.ports
        self.regions: dict[str, Region] = {}

    def single(self, name: str, nbytes: int, init: bool) -> Region:
        port = min(range(self.geo.ports), key=lambda p: (self.top[p], p))
        span = align_up(max(nbytes, 1))
        r = Region(name, "single", port, self.top[port], nbytes, 1, span, init)
        self.top[port] += span
        self.regions[name] = r
        return r

    def striped(self, name: str, kind: str, per_port: int, nbytes: int, init: bool, **extra) -> Region:
        base = max(self.top)
        per_port = align_up(per_port)
        r = Region(name, kind, 0, base, nbytes, self.geo.ports, per_port, init, **extra)
        for p in range(self.geo.ports):
            self.top[p] = base + per_port
        self.regions[name] = r
        return r

    def stream(self, name: str, nbytes: int) -> Region:
        beats = -(-nbytes // BEAT_BYTES)
        rows = -(-beats // self.geo.ports)
        return self.striped(name, "stripe", rows * BEAT_BYTES, nbytes, True)

    def rows(self, name: str, count: int, row_bytes: int, init: bool) -> Region:
        per = -(-count // self.geo.ports) * row_bytes
        return self.striped(name, "rows", per, count * row_bytes, init, row_bytes=row_bytes, count=count)


def embed_row_bytes(cfg: ModelConfig, elem_bytes: int) -> int:
    """Bytes of one embedding row in HBM: a whole number of equal bursts (<= 256 beats each)."""
    beats = -(-cfg.hidden * elem_bytes // BEAT_BYTES)
    bursts = -(-beats // 256)
    return bursts * -(-beats // bursts) * BEAT_BYTES


def linear_streams(cfg: ModelConfig, tlmm: TLMMConfig, lin: str) -> dict[str, int]:
    """Byte sizes of the streams of one linear layer (``keys`` or ``qweight/scales/qzeros``)."""
    k, n = linear_shape(cfg, lin)
    if cfg.family == "bitnet":
        r_tiles, c_tiles = beat_grid(n, num_groups(k), tlmm.tables, tlmm.lanes)
        return {"keys": r_tiles * c_tiles * tlmm.beat_bits // 8}
    g = cfg.int4_group
    return {"qweight": k // 8 * n * 4, "scales": k // g * n * 2, "qzeros": k // g * (n // 8) * 4}


def check_supported(cfg: ModelConfig, overlay: OverlayConfig, tlmm: TLMMConfig) -> None:
    """Shapes the overlay / ISA cannot run raise :class:`CompileError` naming the limit."""
    if cfg.head_dim % 32:
        raise CompileError(f"head_dim must be a multiple of 32 (BFP block, 32-byte buffer rows), "
                           f"found {cfg.head_dim}")
    if cfg.head_dim > 256:
        raise CompileError(f"head_dim must be <= 256 (ISA head_dim field), found {cfg.head_dim}")
    for what, v in (("hidden", cfg.hidden), ("ffn", cfg.ffn)):
        if v % 32:
            raise CompileError(f"{what} must be a multiple of 32 (BFP block), found {v}")
        if cfg.family == "bitnet" and v > tlmm.max_k:
            raise CompileError(f"{what}={v} exceeds the TLMM engine's max_k={tlmm.max_k}")
    if cfg.layers > 128:
        raise CompileError(f"at most 128 layers fit a 32-byte route record, found {cfg.layers}")
    if cfg.family == "llama" and cfg.int4_group not in (32, 64, 128):
        raise CompileError(f"int4_group must be 32, 64 or 128 (PE_LINEAR group_log2), found {cfg.int4_group}")
    if cfg.vocab * 4 > (1 << 20):
        raise CompileError(f"vocab {cfg.vocab} logits do not fit a 1 MiB on-chip buffer")


def plan_memory(cfg: ModelConfig, overlay: OverlayConfig | None = None, tlmm: TLMMConfig | None = None,
                context: int | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                step_instructions: int | None = None, embed_fmt: int = 2, check_fit: bool = True) -> MemoryPlan:
    """Plan HBM for ``cfg`` on ``overlay`` with room for ``context`` tokens (default ``cfg.max_pos``).

    Parameters
    ----------
    step_instructions : int, optional
        Instructions of one decode-step program (sizes the instruction slot; default: generated).
    embed_fmt : int
        :class:`ternopu.hw.isa.ElemFormat` of the embedding rows in HBM (BF16/F16: 2 bytes, F32: 4).
    check_fit : bool
        Raise :class:`CompileError` when a channel overflows (False: return the plan anyway).

    Raises
    ------
    CompileError
        Unsupported shapes, ``context > cfg.max_pos``, or the plan does not fit the HBM.
    """
    overlay = overlay or OverlayConfig()
    tlmm = tlmm or TLMMConfig()
    context = cfg.max_pos if context is None else int(context)
    if not 1 <= context <= cfg.max_pos:
        raise CompileError(f"context must be in [1, max_pos={cfg.max_pos}], found {context}")
    if context > (1 << 17) - 1:
        raise CompileError(f"context {context} exceeds the ISA's 17-bit token fields")
    check_supported(cfg, overlay, tlmm)
    board = overlay.board_info
    geo = Geometry(overlay.hbm_ports, board.hbm_bytes_per_channel)
    a = _Allocator(geo)
    a.single("desc:kv", KV_DESC_BYTES, True)
    # ---- initialized data -----------------------------------------------------------------------
    for name, length in norm_names(cfg).items():
        a.single(f"norm:{name}", length * 4, True)
    a.rows("rope:table", cfg.max_pos, align_up(cfg.head_dim * 4), True)
    if cfg.routers:
        for i in range(cfg.layers):
            for block in ("attn", "ffn"):
                a.single(f"router:{router_names(i, block)[0]}", align_up(cfg.hidden * 2) + BEAT_BYTES, True)
    a.rows("embed:tokens", cfg.vocab, embed_row_bytes(cfg, 4 if embed_fmt == 0 else 2), True)
    for _, lin, prefix in linear_prefixes(cfg):
        for part, nbytes in linear_streams(cfg, tlmm, lin).items():
            a.stream(f"weights:{prefix}.{part}", nbytes)
    a.stream("lm_head:fp16", cfg.vocab * cfg.hidden * 2)
    init_top = list(a.top)
    # ---- zero-initialized state -----------------------------------------------------------------
    bits = cfg.kv_bits
    sizes = KVLayout.sizes(cfg.layers, cfg.kv_heads, cfg.head_dim, bits, cfg.kv_group)
    per_layer = -(-context // geo.ports) * sizes["slot_bytes"]
    kv = a.striped("kv:slots", "kv", cfg.layers * per_layer, cfg.layers * context * sizes["slot_bytes"], False)
    kg_stride = kg_base = ring_base = ring_rows = ring_stride = 0
    if bits != KV_FP16_BITS:
        groups = -(-context // cfg.kv_group)
        kg_stride = -(-groups // geo.ports) * sizes["kg_bytes"]
        kg = a.striped("kv:key_groups", "kv", cfg.layers * kg_stride, cfg.layers * groups * sizes["kg_bytes"], False)
        kg_base = kg.addr(geo)
        ring_rows = cfg.kv_residual + cfg.kv_group
        ring_stride = -(-ring_rows // geo.ports) * sizes["fp16_row"]
        ring = a.striped("kv:residual_ring", "kv", cfg.layers * ring_stride,
                         cfg.layers * ring_rows * sizes["fp16_row"], False)
        ring_base = ring.addr(geo)
    route = a.single("kv:route_history", context * sizes["route_bytes"], False)
    from .program import burst_shape

    bursts, blen = burst_shape(cfg.vocab * 4)
    a.single("io:logits", bursts * blen * BEAT_BYTES, False)
    plan = MemoryPlan(cfg, overlay, tlmm, context, prefill_chunk, geo, embed_fmt=int(embed_fmt))
    plan.kv = KVLayout(layers=cfg.layers, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, bits=bits,
                       group=cfg.kv_group, residual=cfg.kv_residual, max_pos=context,
                       kv_base=kv.addr(geo), kv_nports=geo.ports, slot_bytes=sizes["slot_bytes"],
                       kv_layer_stride=per_layer, kg_base=kg_base, kg_bytes=sizes["kg_bytes"],
                       kg_layer_stride=kg_stride, route_base=route.addr(geo), route_bytes=sizes["route_bytes"],
                       ring_base=ring_base, ring_rows=ring_rows, ring_bytes=sizes["fp16_row"],
                       ring_layer_stride=ring_stride)
    plan.regions, plan.top, plan.init_top = a.regions, a.top, init_top
    if step_instructions is None:
        from .program import step_instruction_count

        step_instructions = step_instruction_count(plan)
    a.single("io:program", step_instructions * prefill_chunk * 32 + 32, False)
    plan.regions, plan.top = a.regions, a.top
    if check_fit and max(plan.top) > geo.channel_bytes:
        raise CompileError(_overflow_message(plan, step_instructions, embed_fmt))
    return plan


def _overflow_message(plan: MemoryPlan, step_instructions: int, embed_fmt: int) -> str:
    cfg, geo = plan.cfg, plan.geo
    worst = max(range(geo.ports), key=lambda p: plan.top[p])
    summary = plan.summary()["categories"]
    big = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(summary.items(), key=lambda kv: -kv[1])[:4])
    fit = max_context(cfg, plan.overlay, plan.tlmm, plan.prefill_chunk, step_instructions, embed_fmt)
    fit_text = (f"the longest context that fits is {fit} tokens" if fit else
                "even a 1-token context does not fit (the weights alone exceed the HBM)")
    return (f"{cfg.name} with a {plan.context}-token context ({cfg.kv_bits}-bit KV) does not fit the "
            f"{plan.overlay.board} HBM: channel {worst} needs {plan.top[worst] / 2**20:.1f} MiB of "
            f"{geo.channel_bytes / 2**20:.0f} MiB ({geo.ports} channels, {geo.total_bytes / 2**30:.1f} GiB "
            f"total, plan needs {plan.used_bytes / 2**30:.2f} GiB); largest parts: {big}; {fit_text}")


def max_context(cfg: ModelConfig, overlay: OverlayConfig | None = None, tlmm: TLMMConfig | None = None,
                prefill_chunk: int = DEFAULT_PREFILL_CHUNK, step_instructions: int | None = None,
                embed_fmt: int = 2) -> int:
    """Longest context (<= ``cfg.max_pos``) whose plan fits; 0 if none does."""
    if step_instructions is None:
        step_instructions = plan_memory(cfg.replace(max_pos=max(cfg.max_pos, 1)), overlay, tlmm, 1,
                                        prefill_chunk, None, embed_fmt, check_fit=False).regions[
            "io:program"].nbytes // 32 // prefill_chunk

    def fits(n: int) -> bool:
        p = plan_memory(cfg, overlay, tlmm, n, prefill_chunk, step_instructions, embed_fmt, check_fit=False)
        return max(p.top) <= p.geo.channel_bytes

    if not fits(1):
        return 0
    lo, hi = 1, cfg.max_pos
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


