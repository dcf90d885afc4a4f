"""ROUTER execution sub-unit (hw/units/router_unit.py) against the golden ISS ``_op_router``.

Amaranth simulator; Python models play the scratchpad (1-cycle reads, random grant denials) and
the per-port read DMAs (random data gaps); the HBM contents are the ISS's channels.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from ternopu.hw import isa
from ternopu.hw.isa import ErrorCode
from ternopu.hw.units.router_unit import RouterUnit

sys.path.insert(0, os.path.dirname(__file__))
from test_pe_linear_unit import make_ctx, make_iss, run_unit  # noqa: E402

PORTS, CB, BUFW = 2, 1 << 14, 128


@pytest.fixture(scope="module")
def dut_ctx():
    ctx = make_ctx(PORTS, CB, BUFW)
    return ctx


def _f16_bytes(t):
    return t.to(torch.float16).numpy().view(np.uint8)


def _case(rng, dim, *, x=None, w=None, bias=None, thr=None, src_off=0, w_addr=None):
    x = x if x is not None else (torch.randn(dim, generator=rng) * 2).to(torch.float16)
    w = w if w is not None else (torch.randn(dim, generator=rng) * 0.05).to(torch.float16)
    bias = float(torch.randn(1, generator=rng)) if bias is None else bias
    score = float((x.double() * w.double()).sum())
    thr = (score + bias + float(torch.randn(1, generator=rng)) * 0.01) if thr is None else thr
    w_addr = (CB + 4096) if w_addr is None else w_addr
    return dict(x=x, w=w, bias=bias, thr=thr, src_off=src_off, w_addr=w_addr, dim=dim)


def _run(ctx, cases, seed):
    """Run the cases back to back on one unit; compare each (code, bit) with the ISS."""
    iss = make_iss(PORTS, CB)
    instrs = []
    for i, c in enumerate(cases):
        layer, block = i % 200, i % 2
        w = np.concatenate([_f16_bytes(c["w"]), np.zeros((-2 * c["dim"]) % 32, np.uint8),
                            np.frombuffer(np.float32(c["bias"]).tobytes(), np.uint8)])
        w = w[:max(0, PORTS * CB - c["w_addr"])]        # the HBM_RANGE case: what fits
        instrs.append((isa.Instruction.make("ROUTER", layer=layer, block=block, src_buf=1,
                                            src_off=c["src_off"], dim=c["dim"], w_addr=c["w_addr"],
                                            threshold=isa.f32_bits(float(np.float32(c["thr"])))),
                       {"hbm": [(c["w_addr"], w)], "sp": [(1, c["src_off"], _f16_bytes(c["x"]))]}))
    results = run_unit(RouterUnit(ctx, max_dim=512), ctx, instrs, iss, seed=seed, mask=True)
    return results


def _check(results):
    for res in results:
        assert res["code"] == res["iss_code"], res
        if res["code"] == ErrorCode.NONE:
            assert res["mask"] == res["iss_mask"], res


def test_router_random_and_corners(dut_ctx):
    rng = torch.Generator().manual_seed(3)
    cases = [_case(rng, 32), _case(rng, 96), _case(rng, 256)]
    # corners: fp16 subnormals next to large values, 65504, zero blocks, exact threshold tie
    x = torch.zeros(64, dtype=torch.float16)
    x[0] = 65504.0
    x[1:16] = torch.tensor([2.0 ** -24 * (i + 1) for i in range(15)], dtype=torch.float16)
    x[40] = -3.0
    w = torch.full((64,), 6.1e-5, dtype=torch.float16)
    w[33] = -65504.0
    cases.append(_case(rng, 64, x=x, w=w, bias=0.0, thr=0.0))
    cases.append(_case(rng, 64, x=torch.zeros(64, dtype=torch.float16), bias=0.0, thr=0.0))   # 0 < 0 false
    cases.append(_case(rng, 64, x=torch.zeros(64, dtype=torch.float16), bias=-1e-45, thr=0.0))  # subnormal
    cases.append(_case(rng, 32, bias=float("-inf"), thr=-3.0e38))
    cases.append(_case(rng, 32, bias=float("nan"), thr=1.0))
    cases.append(_case(rng, 32, thr=float("inf")))
    cases.append(_case(rng, 32, src_off=64, w_addr=0))   # port 0
    _check(_run(dut_ctx, cases, seed=1))


def test_router_errors(dut_ctx):
    rng = torch.Generator().manual_seed(4)
    bad_x = (torch.randn(32, generator=rng)).to(torch.float16)
    bad_x[5] = float("inf")
    cases = [
        _case(rng, 48),                                   # dim % 32 -> SHAPE
        _case(rng, 32, x=bad_x),                          # non-finite x -> SHAPE
        _case(rng, 64, src_off=BUFW * 32 - 64),           # x past the buffer -> BUF_RANGE
        _case(rng, 64, w_addr=2 * CB - 128),              # weights + bias past the channel -> HBM_RANGE
        _case(rng, 64),                                   # and a good one after the errors
    ]
    results = _run(dut_ctx, cases, seed=2)
    assert [r["code"] for r in results] == [ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.BUF_RANGE,
                                            ErrorCode.HBM_RANGE, ErrorCode.NONE]
    _check(results)


def test_router_config_errors(dut_ctx):
    from ternopu.golden.errors import ConfigError
    with pytest.raises(ConfigError):
        RouterUnit(dut_ctx, max_dim=33)
    with pytest.raises(ConfigError):
        RouterUnit(make_ctx(2, 3 * 32 * 1024, 64))
