"""Attention modes (b) and (c) of the PE array in the Amaranth simulator: bit-exact vs golden
``qk_bfp`` / ``pv_bfp`` / ``qk_bfp_kivi`` / ``pv_bfp_kivi`` with corner values and random
backpressure on every stream."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden import pe
from ternopu.golden.errors import ConfigError
from ternopu.golden.kivi import kivi_quantize_keys, kivi_quantize_values
from ternopu.hw.pe_attn import ATTN_TEST, AttnArray, AttnConfig
from ternopu.sim.tb.pe_attn import (
    cmd_int,
    job_pv,
    job_qk,
    kivi_pv_jobs,
    kivi_qk_jobs,
)

CFG = ATTN_TEST


def run_jobs(jobs, gap_p=0.0, stall_p=0.0, seed=0, cfg=CFG, extra_cmds=()):
    dut = AttnArray(cfg)
    rng = random.Random(seed)
    outs, errs = [], []
    n_out = sum(j.n_tiles for j in jobs)
    cmds = [cmd_int(cfg, c) for c in extra_cmds] + [cmd_int(cfg, j.cmd) for j in jobs]
    streams = {
        "cmd": cmds,
        "x": [w for j in jobs for w in j.x],
        "kv": [w for j in jobs for w in j.kv],
        "bias": [w for j in jobs if j.bias is not None for w in j.bias],
    }

    def feeder(name):
        async def tb(ctx):
            s = getattr(dut, name)
            for it in streams[name]:
                while gap_p and rng.random() < gap_p:
                    await ctx.tick()
                ctx.set(s.valid, 1)
                ctx.set(s.payload.as_value() if hasattr(s.payload, "as_value") else s.payload, it)
                await ctx.tick().until(s.ready)
                ctx.set(s.valid, 0)
        return tb

    async def collector(ctx):
        while len(outs) < n_out:
            ctx.set(dut.out.ready, int(not (stall_p and rng.random() < stall_p)))
            _, _, valid, ready, payload, err = await ctx.tick().sample(
                dut.out.valid, dut.out.ready, dut.out.payload.as_value(), dut.error)
            if valid and ready:
                outs.append(payload)
        errs.append(ctx.get(dut.error))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in streams:
        sim.add_testbench(feeder(name), background=True)
    sim.add_testbench(collector)
    sim.run()
    pos = 0
    for j in jobs:
        got = j.decode(cfg, outs[pos:pos + j.n_tiles])
        pos += j.n_tiles
        np.testing.assert_array_equal(got, j.expect, err_msg=j.name)
    return errs[0]


def _corner_qk(d, t, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, generator=g).half()
    k = (torch.randn(t, d, generator=g) * 3).half()
    q[:32] = 0  # zero query block
    q[32:40] = torch.tensor([6.0e-8, -6.0e-8, 1e-6, 0, 0, 0, 0, 0]).half()  # denormals
    k[0] = 0  # zero key row
    k[1, :32] = 65504.0  # largest FP16
    k[1, 32:] = -65504.0
    k[2, 5] = 60000.0  # one dominant value next to denormals
    k[2, 6:32] = 6.0e-8
    k[3, :] = torch.tensor(2.0 ** -24).half()  # all denormal row
    return q, k


def test_qk_pv_mode_b_bit_exact_under_backpressure():
    q, k = _corner_qk(64, 7, 1)
    g = torch.Generator().manual_seed(2)
    t = 70  # not a multiple of the block: zero-padded
    p = torch.softmax(torch.randn(t, generator=g) * 3, 0)
    p[:5] = 0
    p[5] = 1e-30  # deep FP32 subnormal-scale probability
    v = (torch.randn(t, 4, generator=g)).half()
    v[:, 1] = 0
    v[3, 2] = -65504.0
    bias = torch.randn(7, generator=g)
    # qk-bias reuses the loaded query (load_x = 0)
    jobs = [job_qk(CFG, q, k), job_qk(CFG, q, k, bias=bias, load_x=False, name="qk-bias"), job_pv(CFG, p, v)]
    err = run_jobs(jobs, gap_p=0.3, stall_p=0.4, seed=3)
    assert err == 0


def test_kivi_mode_c_bit_exact_2_and_4_bit():
    g = torch.Generator().manual_seed(5)
    d, t = 64, 8
    q = torch.randn(d, generator=g).half()
    k = (torch.randn(t, d, generator=g) * 2).half()
    k[:, 7] *= 20  # outlier channel
    v = torch.randn(t, d, generator=g).half()
    p = torch.softmax(torch.randn(t, generator=g), 0)
    jobs = []
    for bits in (2, 4):
        kt = kivi_quantize_keys(k, bits, 4)
        vt = kivi_quantize_values(v, bits, 4)
        if bits == 4:  # max / min codes
            kt.codes[0] = 15
            kt.codes[1] = 0
        jobs += kivi_qk_jobs(CFG, q, kt, bits, name=f"qk{bits}")
        jobs += kivi_pv_jobs(CFG, p, vt, bits, name=f"pv{bits}")
    err = run_jobs(jobs, gap_p=0.2, stall_p=0.3, seed=7)
    assert err == 0


def test_full_rate_and_bad_command():
    """No gaps: one beat per cycle; a dropped command sets the sticky error and is skipped."""
    q, k = _corner_qk(64, 6, 9)
    bad = dict(nb=0, n_tiles=1, kivi=0, x_fp16=1, load_x=0, bias=0, code4=1)
    err = run_jobs([job_qk(CFG, q, k)], extra_cmds=[bad])
    assert err == 1


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_config_errors():
    with pytest.raises(ConfigError):
        AttnConfig(cols=0)
    with pytest.raises(ConfigError):
        AttnConfig(fifo_depth=300)
    with pytest.raises(ConfigError):
        AttnConfig(cols=4, kivi_group=3)
    with pytest.raises(ConfigError):
        AttnArray("x")
    assert AttnConfig().dsps_per_mac(False) == 1.0 and AttnConfig().dsps_per_mac(True) == 0.5
    assert pe.KIVI_BFP.mant_bits == AttnConfig().fmt_c.mant_bits
