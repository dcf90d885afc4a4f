"""PE_ATTN execution sub-unit (hw/units/pe_attn_unit.py) against the golden ISS ``_op_pe_attn``.

Amaranth simulator with the shared harness of tests/hw/test_pe_linear_unit.py: Python models of
the scratchpad (1-cycle reads, random grant denials), of one read DMA per HBM port (random
latency and data gaps) over the ISS's HBM channels; every instruction also runs on the ISS on the
same state and codes and outputs are compared bit for bit.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from amaranth import Elaboratable, Module

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode
from ternopu.hw.units.pe_attn_unit import KV_DESC_MAGIC, PEAttnUnit
from ternopu.sw.compiler.layout import KV_DESC_MAGIC as LAYOUT_MAGIC
from ternopu.sw.compiler.layout import Geometry, KVLayout

sys.path.insert(0, os.path.dirname(__file__))
from test_pe_linear_unit import make_ctx, make_iss, run_unit  # noqa: E402

PORTS, CB, BUFW = 4, 1 << 16, 64
GEO = Geometry(PORTS, CB)
DESC = GEO.addr(0, 0xC000)      # above the KV slots of every channel
ROUTE = GEO.addr(0, 0xD000)


class _WithMask(Elaboratable):
    """The unit with its ``bitmask`` input tied to a constant (one routing bitmask per run)."""

    def __init__(self, dut, mask: int):
        self.dut, self.mask = dut, mask
        self.ctl, self.rd, self.sp_r, self.sp_w = dut.ctl, dut.rd, dut.sp_r, dut.sp_w

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.comb += self.dut.bitmask.eq(self.mask)
        return m


@pytest.fixture(scope="module")
def ctx():
    return make_ctx(PORTS, CB, BUFW)


def _layout(head_dim=64, kv_heads=2, layers=4, max_pos=80, kv_port=1, kv_nports=3):
    sizes = KVLayout.sizes(layers, kv_heads, head_dim, 16, 32)
    per_port = -(-max_pos // kv_nports)
    return KVLayout(layers=layers, kv_heads=kv_heads, head_dim=head_dim, bits=16, group=32, residual=0,
                    max_pos=max_pos, kv_base=GEO.addr(kv_port, 0x40), kv_nports=kv_nports,
                    slot_bytes=sizes["slot_bytes"], kv_layer_stride=per_port * sizes["slot_bytes"],
                    kg_base=0, kg_bytes=0, kg_layer_stride=0, route_base=ROUTE,
                    route_bytes=sizes["route_bytes"])


def _fill(iss, kv: KVLayout, rng: np.random.Generator, skip: np.ndarray, corners=False):
    """Random FP16 KV rows in every slot, route history ``skip`` [tokens, layers] (ATTN bits)."""
    iss.write(DESC, kv.to_bytes())
    for t in range(kv.max_pos):
        for layer in range(kv.layers):
            row = (rng.standard_normal(kv.slot_bytes // 2) * rng.choice([0.01, 1.0, 30.0])).astype(np.float16)
            if corners and t % 7 == 3:
                row[rng.integers(0, row.size, 6)] = np.float16(6e-8)        # fp16 subnormals
                row[rng.integers(0, row.size, 2)] = np.float16(65504.0)
                row[rng.integers(0, row.size, 2)] = np.float16(-65504.0)
            if corners and t % 11 == 5:
                row[:] = 0
            iss.write(kv.slot_addr(GEO, layer, t), row.tobytes())
    rec = np.zeros((kv.max_pos, kv.route_bytes), dtype=np.uint8)
    bits = np.zeros((kv.max_pos, kv.route_bytes * 8), dtype=np.uint8)
    bits[:, 0:2 * kv.layers:2] = skip
    bits[:, 1:2 * kv.layers:2] = rng.integers(0, 2, (kv.max_pos, kv.layers))   # FFN bits: ignored
    rec[:] = np.packbits(bits, axis=1, bitorder="little")
    iss.write(kv.route_base, rec.tobytes())


def _attn(kv, *, phase, layer, head, tokens, src=(2, 0), dst=(3, 0), scale=0.125, kv_addr=None, desc=DESC,
          kv_fmt=0):
    return isa.Instruction.make(
        "PE_ATTN", phase=phase, kv_fmt=kv_fmt, layer=layer, kv_head=head, tokens=tokens, resid_tokens=0,
        kv_addr=kv.layer_addr(layer) if kv_addr is None else kv_addr, port=0, nports=1, src_buf=src[0],
        src_off=src[1], dst_buf=dst[0], dst_off=dst[1], hist=0, desc_addr=desc,
        scale=isa.f32_bits(float(np.float32(scale))))


def _q(rng, d):
    return (rng.standard_normal(d) * 2).astype(np.float16)


def _p(rng, t, kind="softmax"):
    if kind == "softmax":
        x = rng.standard_normal(t) * 3
        p = np.exp(x - x.max())
        return (p / p.sum()).astype(np.float32)
    return rng.standard_normal(t).astype(np.float32)


def _run(ctx, kv, cases, *, bitmask=0, skip=None, seed=0, corners=False, **kw):
    """cases: [(Instruction, sp setup [(buf, off, bytes)], out (buf, off, nbytes) or None)]."""
    rng = np.random.default_rng(seed)
    iss = make_iss(PORTS, CB)
    skip = np.zeros((kv.max_pos, kv.layers), dtype=np.uint8) if skip is None else skip
    _fill(iss, kv, rng, skip, corners)
    for layer in range(isa.MAX_LAYERS):
        for block in range(2):
            iss.bitmask[layer, block] = bool(bitmask >> (2 * layer + block) & 1)
    dut = _WithMask(PEAttnUnit(ctx, max_head_dim=64, max_tokens=1023, **kw), bitmask)
    instrs = [(ins, {"sp": sp}) for ins, sp, _ in cases]
    return run_unit(dut, ctx, instrs, iss, seed=seed, out_regions=[o for _, _, o in cases])


def _check(results, ok=False):
    for n, res in enumerate(results):
        assert res["code"] == res["iss_code"], (n, res["code"], res["iss_code"])
        assert not ok or res["code"] == ErrorCode.NONE, (n, res["code"])
        if res["code"] == ErrorCode.NONE and "out" in res:
            assert np.array_equal(res["out"], res["iss_out"]), (
                n, res["out"].view(np.float32)[:16], res["iss_out"].view(np.float32)[:16])


def test_magic_matches_layout():
    assert KV_DESC_MAGIC == LAYOUT_MAGIC


def test_qk_pv_fp16_no_reuse(ctx):
    """QK and PV over 1, 9 and 41 tokens (partial last blocks and score words), both heads."""
    kv = _layout()
    rng = np.random.default_rng(1)
    cases = []
    for tokens, layer, head in ((1, 0, 0), (9, 1, 1), (41, 2, 1)):
        q = _q(rng, kv.head_dim)
        cases.append((_attn(kv, phase=0, layer=layer, head=head, tokens=tokens, dst=(3, 64)),
                      [(2, 0, q.view(np.uint8))], (3, 64, 4 * tokens + 20)))
        p = _p(rng, tokens)
        cases.append((_attn(kv, phase=1, layer=layer, head=head, tokens=tokens, src=(4, 32)),
                      [(4, 32, p.view(np.uint8))], (3, 0, 4 * kv.head_dim)))
    _check(_run(ctx, kv, cases, seed=2), ok=True)


def test_cross_layer_reuse(ctx):
    """Random route history (tokens skipping attention at layers >= 1) and bitmask for the current
    token: every token reads its KV from the most recent layer it ran attention at."""
    kv = _layout(kv_port=2, kv_nports=4)
    rng = np.random.default_rng(5)
    skip = (rng.random((kv.max_pos, kv.layers)) < 0.5).astype(np.uint8)
    skip[:, 0] = 0
    bitmask = sum(1 << (2 * layer) for layer in (1, 2))     # the current token skipped layers 1, 2
    cases = []
    for tokens, layer, head in ((45, 3, 1), (80, 2, 0)):
        q = _q(rng, kv.head_dim)
        cases.append((_attn(kv, phase=0, layer=layer, head=head, tokens=tokens),
                      [(2, 0, q.view(np.uint8))], (3, 0, 4 * tokens)))
        p = _p(rng, tokens)
        cases.append((_attn(kv, phase=1, layer=layer, head=head, tokens=tokens, src=(4, 0)),
                      [(4, 0, p.view(np.uint8))], (3, 0, 4 * kv.head_dim)))
    _check(_run(ctx, kv, cases, bitmask=bitmask, skip=skip, seed=6), ok=True)


def test_corner_values(ctx):
    """fp16 subnormals, +-65504, all-zero rows, zero / tiny / negative p, a negative scale."""
    kv = _layout(head_dim=32, kv_nports=2)
    rng = np.random.default_rng(7)
    q = _q(rng, 32)
    q[:4] = [65504.0, -65504.0, 6e-8, 0.0]
    p = _p(rng, 40, "normal")
    p[:8] = 0
    p[10] = 1e-30
    p[33] = 3e4
    cases = [
        (_attn(kv, phase=0, layer=1, head=1, tokens=40, scale=-0.3), [(2, 0, q.view(np.uint8))], (3, 0, 160)),
        (_attn(kv, phase=1, layer=1, head=0, tokens=40, src=(5, 0)), [(5, 0, p.view(np.uint8))], (3, 0, 128)),
        (_attn(kv, phase=0, layer=0, head=0, tokens=16, scale=0.0), [(2, 0, np.zeros(32, np.float16).view(np.uint8))],
         (3, 0, 64)),
    ]
    _check(_run(ctx, kv, cases, seed=8, corners=True), ok=True)


def test_errors(ctx):
    kv = _layout()
    rng = np.random.default_rng(9)
    q = _q(rng, kv.head_dim).view(np.uint8)
    bad_q = _q(rng, kv.head_dim)
    bad_q[3] = np.inf
    p = _p(rng, 20).view(np.uint8)
    cases = [
        (_attn(kv, phase=0, layer=1, head=0, tokens=81), [(2, 0, q)], None),                 # > max_pos
        (_attn(kv, phase=0, layer=1, head=0, tokens=8, kv_addr=kv.layer_addr(2)), [], None),  # kv_addr
        (_attn(kv, phase=0, layer=4, head=0, tokens=8, kv_addr=kv.layer_addr(4)), [], None),  # layer
        (_attn(kv, phase=0, layer=1, head=2, tokens=8), [], None),                           # head
        (_attn(kv, phase=0, layer=1, head=0, tokens=8, kv_fmt=1), [], None),                 # kv_fmt
        (_attn(kv, phase=0, layer=1, head=0, tokens=8, desc=DESC + 32), [], None),           # magic
        (_attn(kv, phase=0, layer=1, head=0, tokens=8, desc=GEO.addr(3, CB - 64)), [], None),  # desc HBM
        (_attn(kv, phase=0, layer=1, head=0, tokens=8, src=(2, BUFW * 32 - 64)), [], None),  # src BUF
        (_attn(kv, phase=0, layer=1, head=0, tokens=20, dst=(3, BUFW * 32 - 64)), [(2, 0, q)], None),  # dst BUF
        (_attn(kv, phase=1, layer=1, head=0, tokens=20, src=(4, BUFW * 32 - 64)), [], None),  # p BUF
        (_attn(kv, phase=0, layer=1, head=0, tokens=8), [(2, 0, bad_q.view(np.uint8))], None),  # inf q
        (_attn(kv, phase=1, layer=1, head=0, tokens=20, src=(4, 0)), [(4, 0, p)], (3, 0, 256)),  # good
    ]
    results = _run(ctx, kv, cases, seed=10)
    assert [r["code"] for r in results] == [
        ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE,
        ErrorCode.HBM_RANGE, ErrorCode.BUF_RANGE, ErrorCode.BUF_RANGE, ErrorCode.BUF_RANGE, ErrorCode.SHAPE,
        ErrorCode.NONE]
    _check(results)


def test_config_errors(ctx):
    with pytest.raises(ConfigError):
        PEAttnUnit(ctx, max_head_dim=48)
    with pytest.raises(ConfigError):
        PEAttnUnit(make_ctx(2, 3 * 32 * 1024, 64))
    with pytest.raises(ConfigError):
        PEAttnUnit(make_ctx(2, 1 << 14, 64, max_burst=8), max_head_dim=256)


# =============================================================================================
# states produced by the golden ISS running a compiled model
# =============================================================================================


def _captured_decode_step(layers=3, prompt=(1, 5, 7, 2, 9), gen=6, seed=1):
    """Run a tiny routed BitNet (FP16 KV, 4 HBM ports) on the ISS; in its last decode step record
    every PE_ATTN with its source operand and the old destination bytes. Returns
    ``(iss, captures)``: the ISS after the step (its HBM holds every layer's KV of the step and
    the route history, its bitmask the step's routing decisions) and
    ``[(Instruction, src bytes, dst old bytes)]``."""
    from ternopu.golden.config import BITNET_TINY
    from ternopu.golden.reference import random_bitnet_weights, random_router_weights
    from ternopu.hw.overlay_config import OverlayConfig
    from ternopu.sw.backends.golden_iss import GoldenISS
    from ternopu.sw.compiler import build_image
    from ternopu.sw.device import Session

    cfg = BITNET_TINY.replace(layers=layers, hidden=64, heads=2, kv_heads=1, head_dim=32, ffn=128, vocab=128,
                              max_pos=32, kv_bits=16, routers=True, router_threshold=-0.2)
    w = random_bitnet_weights(cfg, seed)
    w.update(random_router_weights(cfg, seed + 1))
    image = build_image(cfg, w, overlay=OverlayConfig(hbm_ports=PORTS))

    class Capture(GoldenISS):
        armed = False
        caps: list = []

        def _op_pe_attn(self, i):
            if self.armed:
                d = 32
                nsrc = 2 * d if i["phase"] == 0 else 4 * i["tokens"]
                ndst = 4 * (i["tokens"] if i["phase"] == 0 else d)
                ndst = -(-ndst // 32) * 32
                self.caps.append((i, self.buffers[i["src_buf"]][i["src_off"]:i["src_off"] + nsrc].copy(),
                                  self.buffers[i["dst_buf"]][i["dst_off"]:i["dst_off"] + ndst].copy()))
            return super()._op_pe_attn(i)

    dev = Capture()
    dev.armed = True
    session = Session(dev, image)
    session.generate(list(prompt), gen)
    caps = [c for c in dev.caps if c[0]["tokens"] == len(prompt) + gen - 1]   # the last decode step
    assert caps
    return dev, caps, session.routing_bitmask()


def test_iss_produced_decode_step():
    """Every PE_ATTN (all layers, QK and PV) of a decode step of a compiled routed model, executed
    on the unit with the HBM, route history and bitmask the ISS produced, bit-exact with the ISS."""
    dev, caps, history = _captured_decode_step()
    cb = dev.geo.channel_bytes
    bufw = 1024
    ctx = make_ctx(PORTS, cb, bufw)
    iss = GoldenISS_from(dev)
    mask = sum(int(iss.bitmask[layer, b]) << (2 * layer + b) for layer in range(isa.MAX_LAYERS) for b in range(2))
    # some token skipped attention somewhere: the reuse path is exercised
    assert bool(history[:, 1:, 0].any()), history
    instrs, outs = [], []
    for ins, src, dst_old in caps:
        f = ins.fields
        instrs.append((ins, {"sp": [(f["dst_buf"], f["dst_off"], dst_old), (f["src_buf"], f["src_off"], src)]}))
        n = 4 * (f["tokens"] if f["phase"] == 0 else 32)
        outs.append((f["dst_buf"], f["dst_off"], n))
    dut = _WithMask(PEAttnUnit(ctx, max_head_dim=32, max_tokens=63), mask)
    results = run_unit(dut, ctx, instrs, iss, seed=3, out_regions=outs)
    _check(results, ok=True)


def GoldenISS_from(dev):
    """A blank ISS holding ``dev``'s HBM, buffers and bitmask (HBM arrays sized once: the DMA
    model keeps references to them)."""
    from ternopu.sw.backends.golden_iss import GoldenISS

    iss = GoldenISS.blank(dev.geo.ports, dev.geo.channel_bytes)
    iss.mem = [m.copy() for m in dev.mem]
    iss.buffers = [b.copy() for b in dev.buffers]
    iss.bitmask = dev.bitmask.copy()
    return iss
