"""LM-head unit (hw/units/lm_head_unit.py: PE_LINEAR with FP16 weights) against the golden ISS.

Amaranth simulator with the PE_LINEAR unit test's Python scratchpad (random grant denials) and
per-port DMA models (random data gaps); also the UnitMux split of PE_LINEAR by weight format.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode, WeightFormat
from ternopu.hw.units.lm_head_unit import LMHeadUnit, is_fp16_linear

sys.path.insert(0, os.path.dirname(__file__))
from test_pe_linear_unit import (  # noqa: E402  (same ports / channel size / buffer words)
    BUFW, CB, PORTS, _check, _stream_bytes, _stripe, make_ctx, make_iss, run_unit)

def _head(rng, n, k, *, nports=PORTS, w=0x200, src=(2, 0), dst=(3, 0), x=None, weights=None, port=None,
          dst_fill=None):
    x = torch.randn(k, generator=rng).to(torch.float16) if x is None else x
    wt = (torch.randn(n, k, generator=rng) * 0.05).to(torch.float16) if weights is None else weights
    hbm = []
    _stripe(hbm, w, _stream_bytes(wt), nports)
    sp = [(src[0], src[1], _stream_bytes(x))]
    if dst_fill is not None:     # old contents around the output: a partial last word keeps them
        sp.append((dst[0], dst[1], np.full(4 * n + 32, dst_fill, np.uint8)))
    ins = isa.Instruction.make("PE_LINEAR", w_addr=w, port=w // CB if port is None else port, nports=nports,
                               rows=n, cols=k, group_log2=5, scale_addr=0, zero_addr=0, src_buf=src[0],
                               src_off=src[1], dst_buf=dst[0], dst_off=dst[1], wfmt=WeightFormat.FP16)
    return ins, {"hbm": hbm, "sp": sp}, (dst[0], dst[1], 4 * n + 32)


def _run(cases, seed=0, max_k=512, **kw):
    ctx = make_ctx(PORTS, CB, BUFW)
    iss = make_iss(PORTS, CB)
    return run_unit(LMHeadUnit(ctx, max_k=max_k), ctx, [c[:2] for c in cases], iss, seed=seed,
                    out_regions=[c[2] for c in cases], **kw)


def test_lm_head_random_shapes_and_stripes():
    rng = torch.Generator().manual_seed(21)
    corner_x = torch.randn(64, generator=rng).to(torch.float16)
    corner_x[:32] = 0                                   # an all-zero block
    corner_x[40] = 65504.0
    corner_x[41:48] = 2.0 ** -24                        # subnormals beside the max
    corner_w = (torch.randn(9, 64, generator=rng) * 0.05).to(torch.float16)
    corner_w[0] = 0                                     # an all-zero row: +0.0
    corner_w[1, 40] = -65504.0
    cases = [
        _head(rng, 16, 64),                            # 4 ports, 64 beats
        _head(rng, 13, 96, nports=3, dst_fill=0xA5),   # 3 lanes (not a power of two), N % 8 != 0
        _head(rng, 5, 32, nports=3, w=CB + 0x400),     # a short stream from port 1 over 3 lanes
        _head(rng, 2, 32, nports=4),                   # 4 beats over 4 lanes
        _head(rng, 1, 32, nports=4),                   # 2 beats: two lanes get nothing
        _head(rng, 9, 64, nports=1, w=3 * CB + 0x100, x=corner_x, weights=corner_w, dst_fill=0x3C),
        _head(rng, 8, 256, nports=2, w=2 * CB + 0x800),
    ]
    res = _run(cases, seed=5)
    assert all(r["code"] == ErrorCode.NONE for r in res), [r["code"] for r in res]
    assert all(np.any(r["out"] != 0) for r in res)
    _check(res)


def test_lm_head_errors():
    rng = torch.Generator().manual_seed(22)
    bad_x = torch.randn(64, generator=rng).to(torch.float16)
    bad_x[9] = float("inf")
    bad_w = (torch.randn(8, 64, generator=rng) * 0.05).to(torch.float16)
    bad_w[5, 3] = float("nan")
    cases = [
        _head(rng, 8, 48),                             # K % 32 -> SHAPE
        _head(rng, 8, 64, port=1),                     # port field != channel of w_addr -> SHAPE
        _head(rng, 8, 64, src=(1, BUFW * 32 - 64)),    # x past the buffer -> BUF_RANGE
        _head(rng, 64, 64, w=4 * CB - 0x100, nports=1),   # rows past the last channel -> HBM_RANGE
        _head(rng, 8, 64, x=bad_x),                    # Inf activation -> SHAPE
        _head(rng, 8, 64, weights=bad_w),              # NaN weight -> SHAPE
        _head(rng, 16, 64, dst=(3, BUFW * 32 - 32)),   # y past the buffer -> BUF_RANGE
        _head(rng, 8, 64),                             # and a good one after the errors
    ]
    res = _run(cases, seed=6)
    codes = [r["code"] for r in res]
    assert codes == [ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.BUF_RANGE, ErrorCode.HBM_RANGE,
                     ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.BUF_RANGE, ErrorCode.NONE], codes
    _check(res)


def test_lm_head_k_limit_and_slverr():
    rng = torch.Generator().manual_seed(23)
    res = _run([_head(rng, 8, 128), _head(rng, 8, 64)], seed=7, max_k=64,
               slverr=frozenset())
    assert res[0]["code"] == ErrorCode.SHAPE and res[0]["iss_code"] == ErrorCode.NONE   # unit limit K > max_k
    _check(res[1:])
    res = _run([_head(rng, 16, 64), _head(rng, 16, 64, w=0x1000)], seed=8, slverr=frozenset({(1, 0x200)}))
    assert res[0]["code"] == ErrorCode.AXI_RESP
    res[0]["iss_code"] = ErrorCode.AXI_RESP          # the ISS does not model AXI responses
    _check(res[1:])


def test_lm_head_abort_then_clean_run():
    """Abort in the middle of the stream (every lane busy): done comes, then a clean rerun is exact."""
    rng = torch.Generator().manual_seed(24)
    a = _head(rng, 32, 128)
    res = _run([a, _head(rng, 32, 128, w=0x4000), a], seed=9, abort_at={0: 150, 1: 5})
    assert res[0]["code"] == ErrorCode.NONE and res[1]["code"] == ErrorCode.NONE
    assert res[0]["cycles"] < 2_000 and res[1]["cycles"] < 2_000     # ended soon after the abort
    _check(res[2:])


def test_lm_head_config_errors():
    ctx = make_ctx(PORTS, CB, BUFW)
    with pytest.raises(ConfigError):
        LMHeadUnit(ctx, max_k=48)
    with pytest.raises(ConfigError):
        LMHeadUnit(make_ctx(2, 3 * 32 * 1024, 64))


def test_unit_mux_splits_pe_linear_by_weight_format():
    """PE slot of default_units: FP16 -> LMHeadUnit, INT4 -> PELinearUnit (FIELD_RANGE for FP16 there)."""
    from ternopu.hw.unit_mux import UnitMux, When
    ctx = make_ctx(PORTS, CB, BUFW)
    with pytest.raises(ConfigError, match="two units"):
        UnitMux(ctx, {"PE_LINEAR": LMHeadUnit, When("PE_LINEAR", is_fp16_linear): LMHeadUnit})
    mux = UnitMux(ctx, {When("PE_LINEAR", is_fp16_linear): LMHeadUnit, "ROUTER": LMHeadUnit})
    rng = torch.Generator().manual_seed(25)
    ins, setup, out = _head(rng, 8, 64)
    int4 = isa.Instruction.make("PE_LINEAR", **{**ins.fields, "wfmt": WeightFormat.INT4_GPTQ})
    res = run_unit(mux, ctx, [(ins, setup), (int4, {})], make_iss(PORTS, CB), seed=3,
                   out_regions=[out, None])
    assert res[0]["code"] == ErrorCode.NONE
    _check(res[:1])
    assert res[1]["code"] == ErrorCode.ILLEGAL_OPCODE      # no unit for INT4 in this mux


def test_lm_head_real_row_lengths():
    """Rows of the reference models' hidden sizes: BitNet b1.58 2B4T (2560), Llama-2-7B (4096)."""
    rng = torch.Generator().manual_seed(26)
    x = torch.randn(4096, generator=rng).to(torch.float16)
    x[17] = 300.0                                    # one outlier: wide exponent spread across blocks
    cases = [_head(rng, 12, 2560, x=x[:2560], nports=4), _head(rng, 8, 4096, x=x, nports=3, w=0x8000)]
    res = _run(cases, seed=10, max_k=4096)
    assert all(r["code"] == ErrorCode.NONE for r in res)
    _check(res)
