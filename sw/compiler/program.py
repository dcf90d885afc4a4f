"""Program generator: one decode step (or a prefill chunk) as ISA instructions.

Program structure (per token at position ``pos``; details in docs/compiler.md)
-----------------------------------------------------------------------------
1. ``LOAD`` the token's embedding row, ``NPE TO_FP32`` into the residual stream ``x``.
2. Per layer: the attention block, then the FFN block. A routed block is wrapped as::

       SYNC all; NPE TO_FP16 x -> x16; ROUTER (layer, block) -> bitmask;
       SKIP_IF (layer, block) sense=1 count=<block length>;  <block>;  SYNC all

   (no router at layer 0 attention, which never skips). The closing ``SYNC`` is the SKIP_IF
   target, so dependency tokens never cross a skipped block (see :class:`Emitter`).
3. After the last token of the program: final RMSNorm, ``NPE TO_FP16``, ``PE_LINEAR`` (FP16 LM
   head) into the logits buffer, ``STORE`` to the ``io:logits`` region.
4. ``MASK_STORE`` of the token's routing bitmask into its route-history record (every token).
5. ``END``.

Dependency tokens
-----------------
:class:`Emitter` records what each instruction reads and writes (buffer byte ranges, the KV
region, the route history, the routing bitmask, the logits region) and inserts wait/release
marks: an instruction of unit ``c`` that depends on an instruction of another unit ``p`` (RAW,
WAR or WAW) waits on ``p``, and the latest instruction of ``p`` so far releases a token to ``c``,
unless an earlier wait of ``c`` on ``p`` already covers the dependency. At most one token is
outstanding per (producer, consumer) pair, so TOKEN_OVERFLOW cannot happen, and every release is
consumed by a wait of the same barrier section, so a skipped block leaves no token behind.
Barrier sections end at ``SYNC`` of all queues and after ``SKIP_IF`` (whose wait chain
``TO_FP16 -> ROUTER -> SKIP_IF`` covers everything since the preceding ``SYNC``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ternopu.golden.config import layer_prefix, linear_shape, router_names
from ternopu.golden.model import attention_scale
from ternopu.hw import isa
from ternopu.hw.isa import AttnPhase, Block, ElemFormat, KvFormat, NpeOp, Unit, WeightFormat

from .layout import BEAT_BYTES, BUF_BYTES, Buf, align_up

__all__ = ["Emitter", "BufferMap", "burst_shape", "Program", "tokens_program", "step_program",
           "step_instruction_count", "ALL_QUEUES"]

#: SYNC mask of every execution queue (CTRL excluded).
ALL_QUEUES = isa.unit_mask(Unit.LD, Unit.ST, Unit.TLMM, Unit.PE, Unit.NPE)
_INF = 1 << 62
#: Placeholder g127 while only counting instructions (planning without weights).
_ONE_F32 = isa.f32_bits(1.0)


def burst_shape(nbytes: int) -> tuple[int, int]:
    """``(bursts, burst_len)``: equal bursts of at most 256 beats covering ``nbytes``."""
    beats = max(1, -(-nbytes // BEAT_BYTES))
    bursts = -(-beats // isa.MAX_BURST_BEATS)
    return bursts, -(-beats // bursts)


# --------------------------------------------------------------------------------------------
# Emitter with automatic dependency tokens
# --------------------------------------------------------------------------------------------
@dataclass
class _Item:
    name: str
    fields: dict
    unit: int
    wait: int = 0
    release: int = 0


class Emitter:
    """Collects instructions with their accesses and assigns wait/release marks (module docstring).

    An access is ``(space, lo, hi)``: ``space`` is ``"b<id>"`` for an on-chip buffer (byte range
    ``[lo, hi)``) or a name for an HBM / state resource (``"kv"``, ``"route"``, ``"mask"``,
    ``"logits"``) covering everything.
    """

    def __init__(self):
        self.items: list[_Item] = []
        self.labels: dict[str, int] = {}
        self._barrier()

    def _barrier(self) -> None:
        # latest index per (unit, is_write, access): older identical accesses add nothing, since
        # only the latest instruction of each producer unit matters
        self._acc: dict[tuple[int, bool, tuple], int] = {}
        self._synced = [[-1] * isa.NUM_UNITS for _ in range(isa.NUM_UNITS)]
        self._last = [-1] * isa.NUM_UNITS
        self._start = len(self.items)

    @staticmethod
    def _overlap(a: tuple, b: tuple) -> bool:
        return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]

    def emit(self, name: str, reads=(), writes=(), **fields) -> int:
        unit = int(isa.OPCODE_BY_NAME[name].unit)
        idx = len(self.items)
        item = _Item(name, fields, unit)
        deps: dict[int, int] = {}
        for (u, is_write, acc), j in self._acc.items():
            if u == unit:
                continue
            hit = any(self._overlap(acc, w) for w in writes) or (is_write and any(self._overlap(acc, r) for r in reads))
            if hit:
                deps[u] = max(deps.get(u, -1), j)
        for p, j in deps.items():
            if j > self._synced[p][unit]:
                last = self._last[p]
                self.items[last].release |= 1 << unit
                item.wait |= 1 << p
                self._synced[p][unit] = last
        self.items.append(item)
        for a in reads:
            self._acc[(unit, False, a)] = idx
        for a in writes:
            self._acc[(unit, True, a)] = idx
        self._last[unit] = idx
        return idx

    def sync_all(self) -> int:
        idx = self.emit("SYNC", queues=ALL_QUEUES)
        self._barrier()
        return idx

    def skip_if(self, layer: int, block: int, label: str) -> int:
        idx = self.emit("SKIP_IF", reads=[("mask", 0, _INF)], layer=layer, block=block, sense=1, count=label)
        self._barrier()
        return idx

    def label(self, name: str) -> None:
        self.labels[name] = len(self.items)

    def instructions(self) -> list[isa.Instruction]:
        out = []
        for pc, it in enumerate(self.items):
            f = dict(it.fields)
            if isinstance(f.get("count"), str):
                f["count"] = self.labels[f["count"]] - (pc + 1)
            out.append(isa.Instruction.make(it.name, wait=it.wait, release=it.release, **f))
        return out


# --------------------------------------------------------------------------------------------
# Buffer map
# --------------------------------------------------------------------------------------------
class BufferMap:
    """Byte offsets of every on-chip operand (per buffer role of :class:`Buf`)."""

    def __init__(self, cfg, context: int):
        from .plan import CompileError

        h4, kv4, f4 = align_up(cfg.hidden * 4), align_up(cfg.kv_dim * 4), align_up(cfg.ffn * 4)
        h2, kv2, f2 = align_up(cfg.hidden * 2), align_up(cfg.kv_dim * 2), align_up(cfg.ffn * 2)
        hq, fq = align_up(cfg.hidden) + BEAT_BYTES, align_up(cfg.ffn) + BEAT_BYTES
        self.x, self.xe, self.x16 = 0, h4, 2 * h4
        self.h, self.hq, self.h16 = 0, h4, h4 + hq
        self.q, self.k, self.v = 0, h4, h4 + kv4
        self.q16, self.k16, self.v16 = h4 + 2 * kv4, h4 + 2 * kv4 + h2, h4 + 2 * kv4 + h2 + kv2
        score = align_up(context * 4)
        self.score_stride = score if cfg.heads * score <= BUF_BYTES else 0
        self.o, self.o2, self.oq, self.o16 = 0, h4, 2 * h4, 2 * h4 + hq
        self.g, self.u, self.m, self.m2, self.mq, self.m16 = 0, f4, 2 * f4, 3 * f4, 4 * f4, 4 * f4 + fq
        self.out = 0
        self.tmp = 0
        ends = {"X": 3 * h4, "H": h4 + hq + h2, "QKV": self.v16 + kv2, "ATT": score,
                "O": self.o16 + h2, "FFN": self.m16 + f2, "OUT": align_up(cfg.vocab * 4), "TMP": h4}
        for name, end in ends.items():
            if end > BUF_BYTES:
                raise CompileError(f"on-chip buffer {name} needs {end} bytes, more than {BUF_BYTES}")

    def score(self, head: int) -> int:
        return head * self.score_stride


def _b(buf: int, off: int, nbytes: int) -> tuple:
    return (f"b{buf}", off, off + nbytes)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
@dataclass
class Program:
    """An assembled program: bytes plus bookkeeping for reports."""

    code: bytes
    instructions: int
    positions: list[int] = field(default_factory=list)
    unit_counts: dict = field(default_factory=dict)


class _Gen:
    def __init__(self, plan):
        self.plan, self.cfg, self.geo = plan, plan.cfg, plan.geo
        self.bm = BufferMap(plan.cfg, plan.context)
        self.e = Emitter()
        self.scale_bits = isa.f32_bits(float(attention_scale(plan.cfg.head_dim)))
        self.eps_bits = isa.f32_bits(plan.cfg.rms_eps)
        self.desc = plan.addr("desc:kv")
        self.kv_fmt = {16: KvFormat.FP16, 2: KvFormat.KIVI2, 4: KvFormat.KIVI4}[plan.cfg.kv_bits]
        self.nblock = 0

    # -- helpers --------------------------------------------------------------------------------
    def npe(self, op, a, length, dst, *, b=None, a_bytes=None, dst_bytes=None, b_bytes=None,
            param=0, pos=0, head_dim=0, fmt=ElemFormat.F32, reads_extra=()):
        a_bytes = length * 4 if a_bytes is None else a_bytes
        dst_bytes = length * 4 if dst_bytes is None else dst_bytes
        reads = [_b(*a, a_bytes), *reads_extra]
        f = dict(subop=op, a_buf=a[0], a_off=a[1], dst_buf=dst[0], dst_off=dst[1], length=length,
                 param_addr=param, pos=pos, head_dim=head_dim, fmt=fmt)
        if op == NpeOp.RMSNORM:
            f["eps"] = self.eps_bits
        if b is not None:
            reads.append(_b(*b, length * 4 if b_bytes is None else b_bytes))
            f.update(b_buf=b[0], b_off=b[1])
        return self.e.emit("NPE", reads=reads, writes=[_b(*dst, dst_bytes)], **f)

    def rmsnorm(self, src, dst, length, weight_name):
        self.npe(NpeOp.RMSNORM, src, length, dst, param=self.plan.addr(f"norm:{weight_name}"))

    def to16(self, src, dst, length):
        self.npe(NpeOp.TO_FP16, src, length, dst, dst_bytes=length * 2)

    def act_quant(self, src, dst, length):
        self.npe(NpeOp.ACT_QUANT_INT8, src, length, dst, dst_bytes=align_up(length) + 4)

    def linear(self, prefix: str, lin: str, src, dst, reuse: bool = False):
        """One linear layer: TLMM (BitNet, src = int8 codes + amax) or PE_LINEAR (fp16 src)."""
        cfg, plan = self.cfg, self.plan
        k, n = linear_shape(cfg, lin)
        if cfg.family == "bitnet":
            r = plan[f"weights:{prefix}.keys"]
            amax_off = src[1] + align_up(k)
            self.e.emit("TLMM", reads=[_b(src[0], src[1], align_up(k) + 4)], writes=[_b(*dst, n * 4)],
                        w_addr=r.addr(self.geo), port=r.port, nports=r.nports, rows=n, cols=k,
                        src_buf=src[0], src_off=src[1], amax_buf=src[0], amax_off=amax_off,
                        dst_buf=dst[0], dst_off=dst[1], g127=plan.g127.get(prefix, _ONE_F32),
                        reuse_act=int(reuse))
        else:
            w, s, z = (plan[f"weights:{prefix}.{p}"] for p in ("qweight", "scales", "qzeros"))
            self.e.emit("PE_LINEAR", reads=[_b(*src, k * 2)], writes=[_b(*dst, n * 4)],
                        w_addr=w.addr(self.geo), port=w.port, nports=w.nports, rows=n, cols=k,
                        group_log2=cfg.int4_group.bit_length() - 1, scale_addr=s.addr(self.geo),
                        zero_addr=z.addr(self.geo), src_buf=src[0], src_off=src[1], dst_buf=dst[0],
                        dst_off=dst[1], wfmt=WeightFormat.INT4_GPTQ)

    def routed(self, layer: int, block: int, body) -> None:
        """Emit ``body`` wrapped in router + SKIP_IF when the block is routable."""
        cfg, bm, e = self.cfg, self.bm, self.e
        if not cfg.routers or (layer == 0 and block == Block.ATTN):
            body()
            return
        e.sync_all()
        self.to16((Buf.X, bm.x), (Buf.X, bm.x16), cfg.hidden)
        wname = router_names(layer, ("attn", "ffn")[block])[0]
        e.emit("ROUTER", reads=[_b(Buf.X, bm.x16, cfg.hidden * 2)], writes=[("mask", 0, _INF)],
               layer=layer, block=block, src_buf=Buf.X, src_off=bm.x16, dim=cfg.hidden,
               w_addr=self.plan.addr(f"router:{wname}"),
               threshold=isa.f32_bits(float(cfg.router_threshold)))
        label = f"skip{self.nblock}"
        self.nblock += 1
        e.skip_if(layer, block, label)
        body()
        e.label(label)
        e.sync_all()

    # -- blocks ---------------------------------------------------------------------------------
    def attention(self, layer: int, pos: int) -> None:
        cfg, bm, e, plan = self.cfg, self.bm, self.e, self.plan
        p = layer_prefix(layer)
        self.rmsnorm((Buf.X, bm.x), (Buf.H, bm.h), cfg.hidden, f"{p}.input_layernorm.weight")
        outs = (("q_proj", bm.q), ("k_proj", bm.k), ("v_proj", bm.v))
        if cfg.family == "bitnet":
            self.act_quant((Buf.H, bm.h), (Buf.H, bm.hq), cfg.hidden)
            src = (Buf.H, bm.hq)
        else:
            self.to16((Buf.H, bm.h), (Buf.H, bm.h16), cfg.hidden)
            src = (Buf.H, bm.h16)
        for i, (lin, off) in enumerate(outs):
            self.linear(f"{p}.self_attn.{lin}", f"self_attn.{lin}", src, (Buf.QKV, off), reuse=i > 0)
        rt = plan["rope:table"]  # row `pos` of the RoPE table: cos then sin, round-robin over ports
        rope = self.geo.addr((rt.port + pos % rt.nports) % self.geo.ports, rt.base + (pos // rt.nports) * rt.row_bytes)
        self.npe(NpeOp.ROPE, (Buf.QKV, bm.q), cfg.hidden, (Buf.QKV, bm.q), param=rope, pos=pos,
                 head_dim=cfg.head_dim)
        self.npe(NpeOp.ROPE, (Buf.QKV, bm.k), cfg.kv_dim, (Buf.QKV, bm.k), param=rope, pos=pos,
                 head_dim=cfg.head_dim)
        self.to16((Buf.QKV, bm.q), (Buf.QKV, bm.q16), cfg.hidden)
        self.to16((Buf.QKV, bm.k), (Buf.QKV, bm.k16), cfg.kv_dim)
        self.to16((Buf.QKV, bm.v), (Buf.QKV, bm.v16), cfg.kv_dim)
        kv = plan.kv
        hd2 = cfg.head_dim * 2
        for h in range(cfg.kv_heads):
            e.emit("KV_APPEND", reads=[_b(Buf.QKV, bm.k16 + h * hd2, hd2), _b(Buf.QKV, bm.v16 + h * hd2, hd2),
                                       ("route", 0, _INF)],
                   writes=[("kv", 0, _INF)], layer=layer, kv_head=h, token=pos, kv_fmt=self.kv_fmt,
                   head_dim=cfg.head_dim, k_buf=Buf.QKV, k_off=bm.k16 + h * hd2, v_buf=Buf.QKV,
                   v_off=bm.v16 + h * hd2, kv_addr=kv.layer_addr(layer),
                   port=self.geo.split(kv.kv_base)[0], desc_addr=self.desc)
        common = dict(kv_fmt=self.kv_fmt, layer=layer, tokens=pos + 1,
                      resid_tokens=cfg.kv_residual if kv.kivi else 0, kv_addr=kv.layer_addr(layer),
                      port=self.geo.split(kv.kv_base)[0], nports=kv.kv_nports, desc_addr=self.desc)
        kv_reads = [("kv", 0, _INF), ("route", 0, _INF), ("mask", 0, _INF)]
        for h in range(cfg.heads):
            kvh = h // cfg.gqa_ratio
            s_off = bm.score(h)
            e.emit("PE_ATTN", reads=[_b(Buf.QKV, bm.q16 + h * hd2, hd2), *kv_reads],
                   writes=[_b(Buf.ATT, s_off, (pos + 1) * 4)], phase=AttnPhase.QK, kv_head=kvh,
                   src_buf=Buf.QKV, src_off=bm.q16 + h * hd2, dst_buf=Buf.ATT, dst_off=s_off,
                   scale=self.scale_bits, **common)
            self.npe(NpeOp.SOFTMAX, (Buf.ATT, s_off), pos + 1, (Buf.ATT, s_off))
            o_off = bm.o + h * cfg.head_dim * 4
            e.emit("PE_ATTN", reads=[_b(Buf.ATT, s_off, (pos + 1) * 4), *kv_reads],
                   writes=[_b(Buf.O, o_off, cfg.head_dim * 4)], phase=AttnPhase.PV, kv_head=kvh,
                   src_buf=Buf.ATT, src_off=s_off, dst_buf=Buf.O, dst_off=o_off, **common)
        if cfg.family == "bitnet":
            self.rmsnorm((Buf.O, bm.o), (Buf.O, bm.o2), cfg.hidden, f"{p}.self_attn.attn_sub_norm.weight")
            self.act_quant((Buf.O, bm.o2), (Buf.O, bm.oq), cfg.hidden)
            self.linear(f"{p}.self_attn.o_proj", "self_attn.o_proj", (Buf.O, bm.oq), (Buf.TMP, bm.tmp))
        else:
            self.to16((Buf.O, bm.o), (Buf.O, bm.o16), cfg.hidden)
            self.linear(f"{p}.self_attn.o_proj", "self_attn.o_proj", (Buf.O, bm.o16), (Buf.TMP, bm.tmp))
        self.npe(NpeOp.RESIDUAL_ADD, (Buf.X, bm.x), cfg.hidden, (Buf.X, bm.x), b=(Buf.TMP, bm.tmp))

    def ffn(self, layer: int) -> None:
        cfg, bm = self.cfg, self.bm
        p = layer_prefix(layer)
        self.rmsnorm((Buf.X, bm.x), (Buf.H, bm.h), cfg.hidden, f"{p}.post_attention_layernorm.weight")
        if cfg.family == "bitnet":
            self.act_quant((Buf.H, bm.h), (Buf.H, bm.hq), cfg.hidden)
            src = (Buf.H, bm.hq)
        else:
            self.to16((Buf.H, bm.h), (Buf.H, bm.h16), cfg.hidden)
            src = (Buf.H, bm.h16)
        self.linear(f"{p}.mlp.gate_proj", "mlp.gate_proj", src, (Buf.FFN, bm.g))
        self.linear(f"{p}.mlp.up_proj", "mlp.up_proj", src, (Buf.FFN, bm.u), reuse=True)
        if cfg.family == "bitnet":
            self.npe(NpeOp.RELU2_GLU, (Buf.FFN, bm.g), cfg.ffn, (Buf.FFN, bm.m), b=(Buf.FFN, bm.u))
            self.rmsnorm((Buf.FFN, bm.m), (Buf.FFN, bm.m2), cfg.ffn, f"{p}.mlp.ffn_sub_norm.weight")
            self.act_quant((Buf.FFN, bm.m2), (Buf.FFN, bm.mq), cfg.ffn)
            self.linear(f"{p}.mlp.down_proj", "mlp.down_proj", (Buf.FFN, bm.mq), (Buf.TMP, bm.tmp))
        else:
            self.npe(NpeOp.SWIGLU, (Buf.FFN, bm.g), cfg.ffn, (Buf.FFN, bm.m), b=(Buf.FFN, bm.u))
            self.to16((Buf.FFN, bm.m), (Buf.FFN, bm.m16), cfg.ffn)
            self.linear(f"{p}.mlp.down_proj", "mlp.down_proj", (Buf.FFN, bm.m16), (Buf.TMP, bm.tmp))
        self.npe(NpeOp.RESIDUAL_ADD, (Buf.X, bm.x), cfg.hidden, (Buf.X, bm.x), b=(Buf.TMP, bm.tmp))

    def token(self, pos: int, token: int, lm_head: bool) -> None:
        cfg, bm, e, plan = self.cfg, self.bm, self.e, self.plan
        emb = plan["embed:tokens"]
        port = (emb.port + token % emb.nports) % self.geo.ports
        addr = self.geo.addr(port, emb.base + (token // emb.nports) * emb.row_bytes)
        bursts, blen = burst_shape(emb.row_bytes)
        e.emit("LOAD", writes=[_b(Buf.X, bm.xe, emb.row_bytes)], hbm_addr=addr, port=port, nports=1,
               bursts=bursts, burst_len=blen, stride=blen * BEAT_BYTES, dst_buf=Buf.X, dst_off=bm.xe)
        ebytes = 4 if plan.embed_fmt == ElemFormat.F32 else 2
        self.npe(NpeOp.TO_FP32, (Buf.X, bm.xe), cfg.hidden, (Buf.X, bm.x), a_bytes=cfg.hidden * ebytes,
                 fmt=plan.embed_fmt)
        for layer in range(cfg.layers):
            self.routed(layer, Block.ATTN, lambda: self.attention(layer, pos))
            self.routed(layer, Block.FFN, lambda: self.ffn(layer))
        if lm_head:
            self.rmsnorm((Buf.X, bm.x), (Buf.H, bm.h), cfg.hidden, "model.norm.weight")
            self.to16((Buf.H, bm.h), (Buf.H, bm.h16), cfg.hidden)
            w = plan["lm_head:fp16"]
            e.emit("PE_LINEAR", reads=[_b(Buf.H, bm.h16, cfg.hidden * 2)], writes=[_b(Buf.OUT, bm.out, cfg.vocab * 4)],
                   w_addr=w.addr(self.geo), port=w.port, nports=w.nports, rows=cfg.vocab, cols=cfg.hidden,
                   src_buf=Buf.H, src_off=bm.h16, dst_buf=Buf.OUT, dst_off=bm.out, wfmt=WeightFormat.FP16)
            out = plan["io:logits"]
            bursts, blen = burst_shape(cfg.vocab * 4)
            e.emit("STORE", reads=[_b(Buf.OUT, bm.out, bursts * blen * BEAT_BYTES)], writes=[("logits", 0, _INF)],
                   hbm_addr=out.addr(self.geo), port=out.port, nports=1, bursts=bursts, burst_len=blen,
                   stride=blen * BEAT_BYTES, src_buf=Buf.OUT, src_off=bm.out)
        e.emit("MASK_STORE", reads=[("mask", 0, _INF)], writes=[("route", 0, _INF)],
               hbm_addr=plan.kv.route_addr(pos), layers=cfg.layers)


def tokens_program(plan, start_pos: int, tokens, lm_head: bool = True) -> Program:
    """Program for ``tokens`` at positions ``start_pos ..``: LM head after the last one, then END.

    Raises
    ------
    CompileError
        Positions beyond the planned context or token ids outside the vocabulary.
    """
    from .plan import CompileError

    tokens = [int(t) for t in tokens]
    if not tokens:
        raise CompileError("a program needs at least one token")
    if start_pos < 0 or start_pos + len(tokens) > plan.context:
        raise CompileError(f"positions {start_pos}..{start_pos + len(tokens) - 1} exceed the planned "
                           f"context of {plan.context} tokens")
    for t in tokens:
        if not 0 <= t < plan.cfg.vocab:
            raise CompileError(f"token id must lie in [0, {plan.cfg.vocab - 1}], found {t}")
    g = _Gen(plan)
    for i, t in enumerate(tokens):
        g.token(start_pos + i, t, lm_head and i == len(tokens) - 1)
    g.e.emit("END")
    instrs = g.e.instructions()
    counts: dict[str, int] = {}
    for ins in instrs:
        counts[ins.unit.name] = counts.get(ins.unit.name, 0) + 1
    return Program(isa.encode_program(instrs), len(instrs), list(range(start_pos, start_pos + len(tokens))), counts)


def step_program(plan, pos: int, token: int) -> Program:
    """Decode-step program: the token at ``pos``, LM head, END."""
    return tokens_program(plan, pos, [token], True)


def step_instruction_count(plan) -> int:
    """Instructions of one decode step (independent of position and token)."""
    g = _Gen(plan)
    g.token(0, 0, True)
    return len(g.e.items) + 1
