"""PE_LINEAR execution sub-unit (hw/units/pe_linear_unit.py) against the golden ISS ``_op_pe_linear``.

Also holds the Amaranth-simulator harness the ROUTER test shares: Python models of the
scratchpad (1-cycle reads, random grant denials on reads and writes), of one read DMA per HBM
port (2-D commands, random latency and data gaps, optional SLVERR addresses) over the ISS's HBM
channels, and of the mask port; instructions run back to back on one unit and every result is
compared with the ISS executing the same instruction on the same state.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from amaranth.sim import Simulator

import ternopu.sw.backends.golden_iss as giss
from ternopu.golden.int4 import pack_gptq
from ternopu.hw import isa
from ternopu.hw.dma import DMA_ERR_RANGE, DMA_ERR_SLVERR, DmaParams
from ternopu.hw.isa import ErrorCode
from ternopu.hw.overlay import SlotContext
from ternopu.hw.pe_array import PEConfig
from ternopu.sw.backends.golden_iss import GoldenISS


# =============================================================================================
# harness (shared with test_router_unit.py)
# =============================================================================================

def make_ctx(ports: int, channel_bytes: int, buf_words: int, max_burst: int = 16) -> SlotContext:
    dma = DmaParams(data_width=256, addr_width=max(12, (ports * channel_bytes - 1).bit_length()),
                    mem_bytes=ports * channel_bytes, max_burst=max_burst)
    return SlotContext(dma, ports, buf_words, channel_bytes=channel_bytes)


def make_iss(ports: int, channel_bytes: int) -> GoldenISS:
    iss = GoldenISS.blank(ports, channel_bytes)
    iss.mem = [np.zeros(channel_bytes, dtype=np.uint8) for _ in range(ports)]
    return iss


@contextmanager
def _iss_buffers(words: int):
    """The ISS checks buffer ranges against the ISA maximum; the unit's buffers are smaller."""
    old = giss.BUF_BYTES
    giss.BUF_BYTES = words * 32
    try:
        yield
    finally:
        giss.BUF_BYTES = old


def _ports(x):
    try:
        return list(x)
    except TypeError:
        return [x]


def run_unit(dut, ctx, instrs, iss, *, seed=0, mask=False, gnt_deny=0.3, gap_p=0.3,
             slverr=frozenset(), out_regions=None, abort_at=None, max_cycles=3_000_000):
    """Run ``instrs`` ([(Instruction, setup)]) on ``dut`` and on ``iss``; returns per instruction
    ``{code, iss_code, mask, iss_mask, out, iss_out}``. ``setup``: ``hbm`` [(global addr, bytes)],
    ``sp`` [(buf, off, bytes)] applied to both before the instruction; ``out_regions[i]`` =
    (buf, off, nbytes) read back from both afterwards."""
    rng = random.Random(seed)
    cb = ctx.channel_bytes
    hbm = [iss.mem[p] for p in range(ctx.ports)]          # shared: the ISS never writes HBM here
    sp = {}                                                # word index -> int
    results = []
    masks = []

    def sp_put(buf, off, data):
        data = np.asarray(data, dtype=np.uint8)
        raw = bytes(data) + bytes((-len(data)) % 32)
        base = buf * ctx.buf_words + off // 32
        for i in range(len(raw) // 32):
            # keep the bytes a partial last word does not cover (the ISS writes exactly n bytes)
            old = sp.get(base + i, 0).to_bytes(32, "little")
            nb = min(32, len(data) - 32 * i)
            sp[base + i] = int.from_bytes(raw[32 * i:32 * i + nb] + old[nb:], "little")

    def sp_get(buf, off, n):
        base = buf * ctx.buf_words + off // 32
        raw = b"".join(sp.get(base + i, 0).to_bytes(32, "little") for i in range(-(-n // 32)))
        return np.frombuffer(raw[:n], dtype=np.uint8)

    sim = Simulator(dut)
    sim.add_clock(1e-8)

    for rp in _ports(getattr(dut, "sp_r", [])):
        async def reader(ctx_, rp=rp):
            pending = None
            while True:
                g = rng.random() >= gnt_deny
                ctx_.set(rp.gnt, g)
                ctx_.set(rp.rvalid, pending is not None)
                if pending is not None:
                    ctx_.set(rp.data, sp.get(pending, 0))
                _, _, req, addr = await ctx_.tick().sample(rp.req, rp.addr)
                pending = addr if (req and g) else None
        sim.add_process(reader)

    for wp in _ports(getattr(dut, "sp_w", [])):
        async def writer(ctx_, wp=wp):
            while True:
                g = rng.random() >= gnt_deny
                ctx_.set(wp.gnt, g)
                _, _, req, addr, data = await ctx_.tick().sample(wp.req, wp.addr, wp.data)
                if req and g:
                    sp[addr] = data
        sim.add_process(writer)

    for q, c in enumerate(getattr(dut, "rd", [])):
        async def dma(ctx_, q=q, c=c):
            ctx_.set(c.done.valid, 0)
            while True:
                ctx_.set(c.cmd.ready, 1)
                _, _, valid, pl = await ctx_.tick().sample(c.cmd.valid, c.cmd.payload)
                if not valid:
                    continue
                ctx_.set(c.cmd.ready, 0)
                # global address: port q reaches its own channel q only (as the overlay bench)
                addr, beats, rows, stride = pl.addr - q * cb, pl.beats, pl.rows, pl.stride
                code = 0
                if beats and rows and (addr < 0 or addr + (rows - 1) * stride + beats * 32 > cb):
                    code = DMA_ERR_RANGE
                elif beats and rows:
                    for _ in range(rng.randint(1, 6)):
                        await ctx_.tick()
                    for r_ in range(rows):
                        for i in range(beats):
                            a = addr + r_ * stride + 32 * i
                            if (q, a) in slverr:
                                code = code or DMA_ERR_SLVERR
                            while rng.random() < gap_p:
                                ctx_.set(c.data.valid, 0)
                                await ctx_.tick()
                            word = int.from_bytes(hbm[q][a:a + 32].tobytes(), "little")
                            last = r_ == rows - 1 and i == beats - 1
                            ctx_.set(c.data.valid, 1)
                            ctx_.set(c.data.payload, {"data": word, "last": last})
                            while True:
                                _, _, rdy = await ctx_.tick().sample(c.data.ready)
                                if rdy:
                                    break
                            ctx_.set(c.data.valid, 0)
                ctx_.set(c.done.valid, 1)
                ctx_.set(c.done.payload, code)
                while True:
                    _, _, rdy = await ctx_.tick().sample(c.done.ready)
                    if rdy:
                        break
                ctx_.set(c.done.valid, 0)
        sim.add_process(dma)

    if mask:
        async def mask_mon(ctx_):
            async for _, _, we, addr, bit in ctx_.tick().sample(dut.mask.we, dut.mask.addr, dut.mask.bit):
                if we:
                    masks.append((addr, bit))
        sim.add_process(mask_mon)

    async def main(ctx_):
        ctl = dut.ctl
        ctx_.set(ctl.done.ready, 1)
        for n, (ins, setup) in enumerate(instrs):
            for addr, data in setup.get("hbm", []):
                iss.write(addr, bytes(np.asarray(data, dtype=np.uint8)))
            for buf, off, data in setup.get("sp", []):
                data = np.asarray(data, dtype=np.uint8)
                iss.buffers[buf][off:off + data.size] = data
                sp_put(buf, off, data)
            # ISS on the same state
            with _iss_buffers(ctx.buf_words):
                try:
                    iss._execute(ins)
                    iss_code = ErrorCode.NONE
                except giss._Stop as s:
                    iss_code = s.code
            n_mask = len(masks)
            ctx_.set(ctl.cmd.payload.as_value(), isa.encode(ins) | (n << isa.INSTR_BITS))
            ctx_.set(ctl.cmd.valid, 1)
            while True:
                _, _, rdy = await ctx_.tick().sample(ctl.cmd.ready)
                if rdy:
                    break
            ctx_.set(ctl.cmd.valid, 0)
            cycles = 0
            while True:
                at = abort_at.get(n) if isinstance(abort_at, dict) else abort_at   # per instruction
                if at is not None and cycles == at:
                    ctx_.set(ctl.abort, 1)
                _, _, v, code = await ctx_.tick().sample(ctl.done.valid, ctl.done.payload)
                cycles += 1
                if v:
                    break
                assert cycles < max_cycles, f"instruction {n} ({ins.opcode}) did not complete"
            ctx_.set(ctl.abort, 0)
            res = {"code": ErrorCode(code), "iss_code": iss_code, "cycles": cycles}
            if mask:
                f = ins.fields
                new = masks[n_mask:]
                res["mask"] = new[-1][1] if new else None
                res["mask_writes"] = new
                res["iss_mask"] = int(iss.bitmask[f["layer"], f["block"]])
            if out_regions is not None and out_regions[n] is not None:
                buf, off, nbytes = out_regions[n]
                res["out"] = sp_get(buf, off, nbytes)
                res["iss_out"] = iss.buffers[buf][off:off + nbytes].copy()
            results.append(res)

    sim.add_testbench(main)
    sim.run()
    return results


# =============================================================================================
# PE_LINEAR
# =============================================================================================

PORTS, CB, BUFW = 4, 1 << 16, 256
CFG = PEConfig(rows=8, cols=4, group=64, out_lanes=1, drain_banks=4, max_k=512, max_n=256)


def _gptq_case(rng, n, k, group, *, corner=None, x=None):
    q = torch.randint(0, 16, (k, n), generator=rng)
    zeros = torch.randint(0, 16, (k // group, n), generator=rng)
    scales = (torch.rand(k // group, n, generator=rng) * 0.02 + 1e-3).to(torch.float16)
    if corner == "codes":
        q[:group] = 15
        zeros[0] = 0
        q[group:2 * group] = 0
        zeros[1 % zeros.shape[0]] = 15
        scales[0, 0] = 6.0e-8          # fp16 subnormal scale
        scales[-1, -1] = -65504.0
        q[:, 1] = zeros.repeat_interleave(group, 0)[:, 1]   # an all-zero (q == z) column
    if x is None:
        x = torch.randn(k, generator=rng).to(torch.float16)
        x[torch.randint(0, k, (2,), generator=rng)] = 40.0
    packed = pack_gptq(q, zeros, scales)
    qweight, qzeros = packed["qweight"], packed["qzeros"]
    return x, qweight, qzeros, scales


def _stream_bytes(t) -> np.ndarray:
    a = t.contiguous().numpy()
    return np.frombuffer(a.astype(a.dtype.newbyteorder("<")).tobytes(), dtype=np.uint8)


def _stripe(iss_setup, addr, raw, nports):
    """HBM writes placing ``raw`` as a striped stream from ``addr`` (docs/compiler.md)."""
    p0, base = divmod(addr, CB)
    beats = -(-raw.size // 32)
    pad = np.zeros(beats * 32, np.uint8)
    pad[:raw.size] = raw
    for i in range(beats):
        ch = (p0 + i % nports) % PORTS
        if base + (i // nports) * 32 + 32 > CB:     # the HBM_RANGE case: what fits
            continue
        iss_setup.append((ch * CB + base + (i // nports) * 32, pad[32 * i:32 * i + 32]))


def _linear(rng, n, k, *, group=64, nports=PORTS, w=0x100, s=0x4000, z=0x6000, src=(2, 0), dst=(3, 0),
            corner=None, x=None, port=None, wfmt=0, n_field=None):
    x, qweight, qzeros, scales = _gptq_case(rng, n, k, group, corner=corner, x=x)
    hbm = []
    _stripe(hbm, w, _stream_bytes(qweight), nports)
    _stripe(hbm, s, _stream_bytes(scales), nports)
    _stripe(hbm, z, _stream_bytes(qzeros), nports)
    ins = isa.Instruction.make("PE_LINEAR", w_addr=w, port=w // CB if port is None else port, nports=nports,
                               rows=n if n_field is None else n_field, cols=k, group_log2=group.bit_length() - 1, scale_addr=s,
                               zero_addr=z, src_buf=src[0], src_off=src[1], dst_buf=dst[0],
                               dst_off=dst[1], wfmt=wfmt)
    return ins, {"hbm": hbm, "sp": [(src[0], src[1], _stream_bytes(x))]}, (dst[0], dst[1], 4 * n)


def _run(cases, seed=0, **kw):
    ctx = make_ctx(PORTS, CB, BUFW)
    iss = make_iss(PORTS, CB)
    from ternopu.hw.units.pe_linear_unit import PELinearUnit
    dut = PELinearUnit(ctx, CFG)
    instrs = [(c[0], c[1]) for c in cases]
    outs = [c[2] for c in cases]
    return run_unit(dut, ctx, instrs, iss, seed=seed, out_regions=outs, **kw)


def _check(results):
    for i, r in enumerate(results):
        assert r["code"] == r["iss_code"], (i, r["code"], r["iss_code"])
        if r["code"] == ErrorCode.NONE:
            got, exp = r["out"].view(np.uint32), r["iss_out"].view(np.uint32)
            bad = np.nonzero(got != exp)[0]
            assert bad.size == 0, (i, bad[:8], got[bad[:8]], exp[bad[:8]])


def test_pe_linear_random_shapes():
    rng = torch.Generator().manual_seed(11)
    cases = [
        _linear(rng, 8, 64),                       # one partial tile (N < lanes)
        _linear(rng, 24, 128, nports=2),           # 3 tiles, 2 ports
        _linear(rng, 16, 192, nports=1, w=CB + 0x200, port=1, s=2 * CB + 0x4000, z=3 * CB + 0x6000),
        _linear(rng, 40, 128, nports=4, corner="codes"),   # N % lanes != 0 on 4 ports, corners
    ]
    res = _run(cases, seed=5)
    assert all(r["code"] == ErrorCode.NONE for r in res)
    assert sum(r["out"].size for r in res) == 4 * (8 + 24 + 16 + 40)
    assert all(np.any(r["out"] != 0) for r in res)
    _check(res)


def test_pe_linear_errors():
    rng = torch.Generator().manual_seed(12)
    bad_x = torch.randn(64, generator=rng).to(torch.float16)
    bad_x[3] = float("nan")
    cases = [
        _linear(rng, 16, 64, n_field=12),          # N % 8 -> SHAPE
        _linear(rng, 8, 64, port=1),               # port field != channel of w_addr -> SHAPE
        _linear(rng, 8, 64, x=bad_x),              # NaN activation -> SHAPE
        _linear(rng, 8, 64, src=(2, BUFW * 32 - 64)),   # x past the buffer -> BUF_RANGE
        _linear(rng, 8, 64, w=4 * CB - 32),        # weights past the last channel -> HBM_RANGE
        _linear(rng, 8, 64, wfmt=1),               # FP16 LM-head rows: not in this unit yet
        _linear(rng, 8, 64),                       # and a good one after the errors
    ]
    res = _run(cases, seed=6)
    codes = [r["code"] for r in res]
    assert codes[:5] == [ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.BUF_RANGE,
                         ErrorCode.HBM_RANGE], codes
    assert codes[5] == ErrorCode.FIELD_RANGE and codes[6] == ErrorCode.NONE
    res[5]["iss_code"] = ErrorCode.FIELD_RANGE     # the ISS runs wfmt=1; the unit reports it unsupported
    _check(res)


def test_pe_linear_slverr_then_good():
    rng = torch.Generator().manual_seed(13)
    a = _linear(rng, 16, 128)
    b = _linear(rng, 16, 128, w=0x2000, s=0x8000, z=0xA000)
    res = _run([a, b], seed=7, slverr=frozenset({(1, 0x100)}))
    assert res[0]["code"] == ErrorCode.AXI_RESP
    res[0]["iss_code"] = ErrorCode.AXI_RESP        # the ISS does not model AXI responses
    _check(res[1:])
