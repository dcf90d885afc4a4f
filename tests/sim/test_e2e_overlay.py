"""End to end on the cycle-accurate overlay: greedy decoding on the Verilated RTL gives the golden
model's token ids and bit-identical logits.

The ``make demo`` model shapes (:func:`ternopu.sw.demo.overlay_model`: 2 layers, hidden 64, vocab
128, routers on) is compiled for the demo's 2-port overlay
with small engines (:data:`ternopu.sw.demo.OVERLAY_ENGINES`) and decoded through :class:`ternopu.sw.device.Session` on three devices: the golden model
(:class:`ternopu.golden.model.GoldenModel`), the golden ISS and the Verilated integrated overlay
(every instruction on a real unit: TLMM, NPE, PE_ATTN, ROUTER, KV_APPEND, MASK_STORE, LM head on
the LMHeadUnit). Prompt, then 16 generated tokens; every step's logits compared bit for bit.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from ternopu.golden.model import ATTN, GoldenModel
from ternopu.hw.overlay_config import OverlayConfig

from ternopu.golden.reference import random_bitnet_weights, random_llama_weights, random_router_weights
from ternopu.sw.demo import OVERLAY_ENGINES, OVERLAY_PORTS, OVERLAY_PROMPT, OVERLAY_TOKENS, overlay_model

pytestmark = pytest.mark.sim

TLMM, PE = OVERLAY_ENGINES


def _bits(t):
    return t.contiguous().view(torch.int32)


def _model(family: str, kv_bits: int):
    cfg = overlay_model(family, kv_bits)
    if family == "bitnet":
        w = random_bitnet_weights(cfg, 1)
    else:
        w = random_llama_weights(cfg, 1, keep_float=False)
    w.update(random_router_weights(cfg, 2))
    return cfg, w


@pytest.mark.slow
@pytest.mark.parametrize("family,kv_bits", [("bitnet", 16)])
def test_greedy_decode_on_overlay_matches_golden(family, kv_bits):
    from ternopu.hw.units import default_units
    from ternopu.sw.backends.golden_iss import GoldenISS
    from ternopu.sw.backends.verilator import DECODE_BUILD, VerilatorDevice
    from ternopu.sw.compiler import build_image
    from ternopu.sw.device import Session

    cfg, w = _model(family, kv_bits)
    image = build_image(cfg, w, overlay=OverlayConfig(hbm_ports=OVERLAY_PORTS), tlmm=TLMM)
    gm = GoldenModel.from_config_and_weights(cfg, w, linear_path="matmul")
    ref_tokens = gm.generate(OVERLAY_PROMPT, OVERLAY_TOKENS)
    ref_logits = gm.step_logits[len(OVERLAY_PROMPT) - 1:]

    iss = Session(GoldenISS(), image).generate(OVERLAY_PROMPT, OVERLAY_TOKENS)
    assert iss.tokens == ref_tokens
    rtl_dev = VerilatorDevice(units=default_units(TLMM, PE), build_args=DECODE_BUILD, max_cycles=5_000_000)
    try:
        session = Session(rtl_dev, image)
        res = session.generate(OVERLAY_PROMPT, OVERLAY_TOKENS)
        assert res.tokens == ref_tokens, (res.tokens, ref_tokens)
        for step, (a, b) in enumerate(zip(res.logits, ref_logits)):
            assert torch.equal(_bits(a), _bits(b)), f"logits differ at generated step {step}"
        mask = session.routing_bitmask()
        assert torch.equal(mask, gm.routing_bitmask)
        assert 0 < mask.float().mean() < 1 and bool(mask[:, :, ATTN].any())   # KV reuse really ran
        cycles = sum(p["counters"]["CYCLES"] for p in res.programs)
        print(f"{family} kv{kv_bits}: {len(OVERLAY_PROMPT)} prompt + {OVERLAY_TOKENS} generated tokens bit-exact, "
              f"{cycles} cycles ({cycles / (len(OVERLAY_PROMPT) + OVERLAY_TOKENS - 1):.0f} per token)")
    finally:
        rtl_dev.close()
