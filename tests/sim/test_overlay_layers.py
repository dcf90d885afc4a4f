"""Whole decoder layers on the integrated overlay (all real units) in Verilator, bit-exact with the
golden ISS.

A small model (tests/sw/test_golden_iss.py ``small_cfg``: 2 layers, hidden 64, head_dim 32, GQA
BitNet or INT4 Llama with group 32) is compiled for a 2-port overlay with small engines; the
program of each token (without the LM head) is extended by a SYNC and a STORE of the residual
stream ``x`` (buffer X) to the logits area, then run on the golden ISS and on the Verilated overlay
(``ternopu.hw.units.default_units``). After every token the residual stream, the whole KV region
(slots, key groups, residual ring) and the route history must be identical byte for byte. Tokens
run one after another on both devices, so the KV cache grows (attention over 1..N tokens,
cross-layer KV reuse when routers skip attention).
"""

from __future__ import annotations

import numpy as np
import pytest

from ternopu.golden.config import BITNET_TINY, LLAMA_TINY
from ternopu.golden.reference import random_bitnet_weights, random_llama_weights, random_router_weights
from ternopu.hw import isa
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.sw.demo import OVERLAY_ENGINES

pytestmark = pytest.mark.sim

#: Small engines (the demo's): TLMM 3 tables x 8 lanes (3 words per beat), PE array 8 x 4 DSPs, group 32.
TLMM, PE = OVERLAY_ENGINES
TOKENS = [3, 17, 42]
#: Tokens run per family: the INT4 Llama layers take ~87k cycles per token on the small PE_LINEAR
#: (K-major GPTQ layout, see hw/units/pe_linear_unit.py), ~3 minutes each in the unoptimised build.
TOKENS_RUN = {"bitnet": 3, "llama": 2}


def small_cfg(family: str, kv_bits: int, routers: bool):
    base = BITNET_TINY if family == "bitnet" else LLAMA_TINY
    return base.replace(layers=2, hidden=64, heads=2, kv_heads=1 if family == "bitnet" else 2, head_dim=32,
                        ffn=128, vocab=128, int4_group=32, max_pos=32, kv_bits=kv_bits, kv_group=8,
                        kv_residual=8, routers=routers, router_threshold=-0.5)


def _weights(cfg, seed=1):
    w = random_bitnet_weights(cfg, seed) if cfg.family == "bitnet" else random_llama_weights(cfg, seed, keep_float=False)
    if cfg.routers:
        w.update(random_router_weights(cfg, seed + 1))
    return w


def _program(plan, pos: int, token: int) -> tuple[bytes, int]:
    """The token's program without LM head, then SYNC + STORE of x to io:logits + END."""
    from ternopu.sw.compiler.layout import BEAT_BYTES, Buf
    from ternopu.sw.compiler.program import ALL_QUEUES, tokens_program

    prog = tokens_program(plan, pos, [token], lm_head=False)
    words = [int.from_bytes(prog.code[i:i + 32], "little") for i in range(0, len(prog.code), 32)]
    assert isa.decode(words[-1]).op.name == "END"
    nbytes = plan.cfg.hidden * 4
    beats = -(-nbytes // BEAT_BYTES)
    out = plan.addr("io:logits")
    tail = [isa.Instruction.make("SYNC", queues=ALL_QUEUES),
            isa.Instruction.make("STORE", hbm_addr=out, port=plan.geo.split(out)[0], nports=1, bursts=1,
                                 burst_len=beats, stride=0, src_buf=Buf.X, src_off=0),
            isa.Instruction.make("END")]
    code = b"".join(w.to_bytes(32, "little") for w in words[:-1]) + isa.encode_program(tail)
    return code, len(words) + 2


def _kv_spans(plan):
    geo = plan.geo
    for name, r in plan.regions.items():
        if name.startswith("kv:"):
            ports = [r.port] if r.kind == "single" else [(r.port + i) % geo.ports for i in range(r.nports)]
            for p in ports:
                yield name, geo.addr(p, r.base), r.per_port


@pytest.mark.slow
@pytest.mark.parametrize("family,kv_bits,routers", [("bitnet", 16, True), ("llama", 16, True)])
def test_layers_bit_exact_on_integrated_overlay(family, kv_bits, routers):
    from ternopu.hw.units import default_units
    from ternopu.sw.backends.golden_iss import GoldenISS
    from ternopu.sw.backends.verilator import DECODE_BUILD, VerilatorDevice
    from ternopu.sw.compiler import build_image

    cfg = small_cfg(family, kv_bits, routers)
    image = build_image(cfg, _weights(cfg), overlay=OverlayConfig(hbm_ports=2), tlmm=TLMM)
    plan = image.plan
    iss = GoldenISS()
    iss.load(image)
    rtl = VerilatorDevice(units=default_units(TLMM, PE), build_args=DECODE_BUILD, max_cycles=2_000_000)
    try:
        rtl.load(image)
        prog_addr = plan.addr("io:program")
        tokens = TOKENS[:TOKENS_RUN[family]]
        for pos, tok in enumerate(tokens):
            code, n = _program(plan, pos, tok)
            outs = []
            for dev in (iss, rtl):
                dev.write(prog_addr, code)
                st = dev.run(prog_addr, n)
                assert st.ok, f"{dev.name} token {pos}: {st.error.name} at pc {st.error_pc}: {st.message}"
                outs.append(dev)
            x_iss, x_rtl = (np.frombuffer(d.read(plan.addr("io:logits"), cfg.hidden * 4), dtype="<u4")
                            for d in (iss, rtl))
            assert np.array_equal(x_iss, x_rtl), \
                f"token {pos}: residual stream differs at {np.flatnonzero(x_iss != x_rtl)[:8].tolist()}"
            for name, addr, nbytes in _kv_spans(plan):
                a, b = iss.read(addr, nbytes), rtl.read(addr, nbytes)
                if a != b:
                    i = next(j for j in range(nbytes) if a[j] != b[j])
                    pytest.fail(f"token {pos}: {name} at {addr:#x} differs first at byte {i}")
        # the routers really skipped blocks, attention included (cross-layer KV reuse ran)
        kv = plan.kv
        hist = iss.read(kv.route_base, len(tokens) * kv.route_bytes)[::kv.route_bytes]
        assert any(b & 0b100 for b in hist), f"no token skipped layer 1 attention: {list(hist)}"
        c = rtl.counters()
        print(f"{family}: {len(tokens)} tokens x {cfg.layers} layers in {c['CYCLES']} cycles; "
              + ", ".join(f"{u} busy {c[u + '_BUSY']}" for u in ("LD", "ST", "TLMM", "PE", "NPE")))
        assert c["CYCLES"] > 0 and c["TLMM_BUSY" if family == "bitnet" else "PE_BUSY"] > 0 and c["PE_BUSY"] > 0 and c["NPE_BUSY"] > 0
    finally:
        rtl.close()
