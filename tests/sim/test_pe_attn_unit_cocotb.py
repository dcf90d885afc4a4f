"""The PE_ATTN unit inside the Verilated overlay (PE slot): programs compared with the golden ISS.

Uses :func:`ternopu.sim.program_check` (HDL HBM models behind the overlay's DMA ports, scratch
filled and read back through LOAD / STORE). A small unit (head_dim <= 32) keeps the Verilator
build short. The KV slots are spread over both HBM ports; the route history makes tokens skip
attention at layers 1 and 2, so the attention at layer 2 reads reused KV rows from layers 0 / 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode, Unit
from ternopu.hw.units.pe_attn_unit import factory
from ternopu.sw.compiler.layout import Geometry, KVLayout

pytestmark = pytest.mark.sim

PORTS, CB, BUF_WORDS = 2, 1 << 16, 64
GEO = Geometry(PORTS, CB)
D, LAYERS, MAX_POS = 32, 3, 48


def _layout():
    sizes = KVLayout.sizes(LAYERS, 1, D, 16, 32)
    return KVLayout(layers=LAYERS, kv_heads=1, head_dim=D, bits=16, group=32, residual=0, max_pos=MAX_POS,
                    kv_base=GEO.addr(1, 0x40), kv_nports=2, slot_bytes=sizes["slot_bytes"],
                    kv_layer_stride=(MAX_POS // 2) * sizes["slot_bytes"], kg_base=0, kg_bytes=0,
                    kg_layer_stride=0, route_base=GEO.addr(1, 0x8000), route_bytes=sizes["route_bytes"])


def _attn(kv, phase, tokens, layer, src, dst, desc):
    return isa.Instruction.make(
        "PE_ATTN", phase=phase, kv_fmt=0, layer=layer, kv_head=0, tokens=tokens, resid_tokens=0,
        kv_addr=kv.layer_addr(layer), port=0, nports=1, src_buf=src[0], src_off=src[1], dst_buf=dst[0],
        dst_off=dst[1], hist=0, desc_addr=desc, scale=isa.f32_bits(float(np.float32(D ** -0.5))))


def test_pe_attn_programs_match_golden():
    from ternopu.sim.program_check import program_check
    from ternopu.sw.backends.verilator import VerilatorDevice

    rng = np.random.default_rng(11)
    kv = _layout()
    desc = GEO.addr(0, 0x8000)
    hbm = {desc: kv.to_bytes()}
    for t in range(MAX_POS):
        for layer in range(LAYERS):
            hbm[kv.slot_addr(GEO, layer, t)] = (rng.standard_normal(kv.slot_bytes // 2)).astype(np.float16).tobytes()
    skip = rng.random((MAX_POS, LAYERS)) < 0.4
    skip[:, 0] = False
    rec = np.zeros((MAX_POS, 256), dtype=np.uint8)
    rec[:, 0:2 * LAYERS:2] = skip
    hbm[kv.route_base] = np.packbits(rec, axis=1, bitorder="little").tobytes()
    q = (rng.standard_normal(D) * 2).astype(np.float16)
    x = rng.standard_normal(40) * 3
    p = (np.exp(x - x.max()) / np.exp(x - x.max()).sum()).astype(np.float32)
    bufs = {2: q.tobytes(), 4: p.tobytes(), 3: rng.bytes(BUF_WORDS * 32)}
    prog = [_attn(kv, 0, 40, 2, (2, 0), (3, 32), desc), _attn(kv, 1, 40, 2, (4, 0), (5, 0), desc),
            _attn(kv, 0, 13, 1, (2, 0), (3, 256), desc), _attn(kv, 1, 33, 0, (4, 0), (5, 128), desc),
            isa.Instruction.make("END")]
    units = {Unit.PE: factory(max_head_dim=D, max_tokens=1023)}
    dev = VerilatorDevice(ports=PORTS, channel_bytes=CB, depth=CB // 32, buf_words=BUF_WORDS, units=units,
                          read_latency=10, watchdog=1 << 16, max_cycles=400_000)
    try:
        res = program_check(prog, hbm, bufs, units=units, ports=PORTS, channel_bytes=CB, buf_words=BUF_WORDS,
                            device=dev)
        res.assert_equal()
        assert res.golden.status.ok
        print("PE_ATTN program cycles (RTL):", res.rtl.cycles)
        # a tokens > max_pos instruction stops the program with SHAPE on both sides
        bad = [_attn(kv, 0, MAX_POS + 1, 2, (2, 0), (3, 0), desc), isa.Instruction.make("END")]
        res = program_check(bad, hbm, bufs, units=units, ports=PORTS, channel_bytes=CB, buf_words=BUF_WORDS,
                            device=dev)
        res.assert_equal()
        assert res.rtl.status.error == ErrorCode.SHAPE
    finally:
        dev.close()
