"""TLMM execution unit in the Amaranth simulator, bit-exact against the golden ISS ``_op_tlmm``.

The bench plays the controller (``ctl``), the scratchpad (1-cycle reads, random grant denials)
and one read DMA per HBM port (random command acceptance, latency and data gaps; SLVERR / range
errors on request). Each instruction also runs on a blank :class:`GoldenISS` with the same HBM
channels and buffers; scratch and error codes must agree byte for byte.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.errors import ConfigError
from ternopu.golden.tlmm import encode_keys, pack_keys
from ternopu.hw import isa
from ternopu.hw.dma import DMA_ERR_RANGE, DMA_ERR_SLVERR, DmaParams
from ternopu.hw.isa import ErrorCode
from ternopu.hw.tlmm import TLMMConfig
from ternopu.hw.units.tlmm_unit import TLMMUnit, div_const, factory, stream_words
from ternopu.sw.backends.golden_iss import GoldenISS, _Stop
from ternopu.sw.compiler.layout import BUF_BYTES, Geometry

CB = 1 << 14          # bytes per HBM channel (the DMA's address space per port)
BUF_WORDS = BUF_BYTES // 32   # the ISA's buffer size, so BUF_RANGE agrees with the ISS

# tables x lanes, beat words, out_lanes: one word per beat / three words per beat (rotating
# stripe) / two packer steps per engine output transfer
C1 = TLMMConfig(tables=2, lanes=4, beat_bits=256, max_k=256, max_n=256, out_lanes=2)
C3 = TLMMConfig(tables=3, lanes=8, beat_bits=768, max_k=512, max_n=256, out_lanes=8)
C16 = TLMMConfig(tables=2, lanes=16, beat_bits=256, max_k=128, max_n=256, out_lanes=16)


@dataclass(frozen=True)
class Ctx:
    """Stand-in for ``ternopu.hw.overlay.SlotContext`` (same fields)."""

    dma: DmaParams
    ports: int
    buf_words: int

    @property
    def sp_words(self) -> int:
        return isa.NUM_BUFFERS * self.buf_words


def make_ctx(ports=4, max_burst=4):
    """Global HBM addresses on every port (channel c at c * CB), as the Verilator device has."""
    return Ctx(DmaParams(data_width=256, addr_width=20, mem_bytes=ports * CB, max_burst=max_burst),
               ports, BUF_WORDS)


def f32(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


# ---------------------------------------------------------------------------------------------
# Machine state shared by the RTL bench and the ISS
# ---------------------------------------------------------------------------------------------
@dataclass
class Machine:
    ports: int
    mem: list = field(default_factory=list)       # per channel, CB bytes
    bufs: list = field(default_factory=list)      # 8 buffers, BUF_WORDS*32 bytes

    @classmethod
    def blank(cls, ports):
        return cls(ports, [np.zeros(CB, np.uint8) for _ in range(ports)],
                   [np.zeros(BUF_WORDS * 32, np.uint8) for _ in range(isa.NUM_BUFFERS)])

    def copy(self):
        return Machine(self.ports, [a.copy() for a in self.mem], [b.copy() for b in self.bufs])

    def put_stream(self, port, local, data: bytes, nports):
        """Striped placement (docs/compiler.md): word i on port (port + i % nports) % 32."""
        data = data + bytes(-len(data) % 32)
        for i in range(len(data) // 32):
            ch = (port + i % nports) % 32
            a = local + (i // nports) * 32
            self.mem[ch][a:a + 32] = np.frombuffer(data[32 * i:32 * i + 32], np.uint8)


def run_iss(cfg, mach: Machine, ins: isa.Instruction):
    iss = GoldenISS(tlmm=cfg)
    iss.geo = Geometry(mach.ports, CB)
    iss.mem = [a.copy() for a in mach.mem]
    for b in range(isa.NUM_BUFFERS):
        iss.buffers[b][:BUF_WORDS * 32] = mach.bufs[b]
    try:
        iss._execute(ins)
        code = ErrorCode.NONE
    except _Stop as s:
        code = s.code
    return code, [iss.buffers[b][:BUF_WORDS * 32].copy() for b in range(isa.NUM_BUFFERS)]


# ---------------------------------------------------------------------------------------------
# RTL bench
# ---------------------------------------------------------------------------------------------
@dataclass
class BenchOpts:
    gnt_p: float = 0.0          # probability a scratch request is denied
    gap_p: float = 0.0          # probability of an idle cycle between DMA data words
    cmd_wait: int = 0           # max random cycles before a DMA command is accepted
    latency: int = 3            # DMA first-word latency (cycles), randomised up to 2x
    slverr_at: tuple = ()       # (port, command index): complete with SLVERR
    range_at: tuple = ()        # (port, command index): complete with a range error, no data
    abort_at: dict = field(default_factory=dict)  # instruction index -> cycles after start
    seed: int = 0


def run_rtl(cfg, ctx, mach: Machine, instrs, opts: BenchOpts = BenchOpts(), max_cycles=20000,
            **unit_kw):
    """Run ``instrs`` one after another on a fresh unit; mutates ``mach.bufs``; returns a report."""
    dut = TLMMUnit(ctx, cfg, **unit_kw)
    rng = random.Random(opts.seed)
    sp = np.concatenate(mach.bufs).reshape(-1, 32)   # word-addressed view, written back at end
    rep = {"codes": [], "cycles": [], "beats": {}, "violations": [], "first_beat": {}, "last_beat": {}}
    state = {"cycle": 0, "running": False, "start": 0, "idx": -1}

    async def controller(ctx_):
        for i, ins in enumerate(instrs):
            state["idx"] = i
            ctx_.set(dut.ctl.cmd.payload.instr.bits, isa.encode(ins))
            ctx_.set(dut.ctl.cmd.payload.pc, i)
            ctx_.set(dut.ctl.cmd.valid, 1)
            while True:
                _, _, ready = await ctx_.tick().sample(dut.ctl.cmd.ready)
                if ready:
                    break
            start = state["cycle"]
            ctx_.set(dut.ctl.cmd.valid, 0)
            ctx_.set(dut.ctl.done.ready, 1)
            abort_after = opts.abort_at.get(i)
            while True:
                if abort_after is not None and state["cycle"] - start >= abort_after:
                    ctx_.set(dut.ctl.abort, 1)
                _, _, v, code = await ctx_.tick().sample(dut.ctl.done.valid, dut.ctl.done.payload)
                if v:
                    break
            ctx_.set(dut.ctl.abort, 0)
            rep["codes"].append(ErrorCode(code))
            rep["cycles"].append(state["cycle"] - start)
        state["finished"] = True

    async def clock(ctx_):
        async for _, _, kv, kr in ctx_.tick().sample(dut.engine.keys.valid, dut.engine.keys.ready):
            state["cycle"] += 1
            if kv and kr:
                i = state["idx"]
                rep["first_beat"].setdefault(i, state["cycle"])
                rep["beats"][i] = rep["beats"].get(i, 0) + 1
                rep["last_beat"][i] = state["cycle"]

    async def scratch(ctx_):
        r, w = dut.sp_r, dut.sp_w
        while True:
            ctx_.set(r.gnt, int(rng.random() >= opts.gnt_p))
            ctx_.set(w.gnt, int(rng.random() >= opts.gnt_p))
            _, _, rq, ra, rg, wq, wa, wd, wg = await ctx_.tick().sample(
                r.req, r.addr, r.gnt, w.req, w.addr, w.data, w.gnt)
            if rq and rg:
                ctx_.set(r.rvalid, 1)
                ctx_.set(r.data, int.from_bytes(sp[ra].tobytes(), "little"))
            else:
                ctx_.set(r.rvalid, 0)
            if wq and wg:
                sp[wa] = np.frombuffer(int(wd).to_bytes(32, "little"), np.uint8)

    def dma(q):
        async def proc(ctx_):
            rd = dut.rd[q]
            ncmd = 0
            ctx_.set(rd.done.payload, 0)
            while True:
                wait = rng.randint(0, opts.cmd_wait)
                for _ in range(wait):
                    await ctx_.tick()
                ctx_.set(rd.cmd.ready, 1)
                while True:
                    _, _, v, pl = await ctx_.tick().sample(rd.cmd.valid, rd.cmd.payload)
                    if v:
                        break
                ctx_.set(rd.cmd.ready, 0)
                addr, beats = int(pl.addr), int(pl.beats)
                ch, addr = divmod(addr, CB)
                if ch != q:   # the unit reads channel q through port q
                    rep["violations"].append(("channel", q, ch))
                code = 0
                if (q, ncmd) in opts.range_at or addr + 32 * beats > CB:
                    code = DMA_ERR_RANGE
                elif (q, ncmd) in opts.slverr_at:
                    code = DMA_ERR_SLVERR
                ncmd += 1
                for _ in range(rng.randint(opts.latency, 2 * opts.latency)):
                    # a second command while this one runs breaks the client rule
                    _, _, v = await ctx_.tick().sample(rd.cmd.valid)
                    if v:
                        rep["violations"].append((q, state["cycle"]))
                if code != DMA_ERR_RANGE:
                    for b in range(beats):
                        while rng.random() < opts.gap_p:
                            ctx_.set(rd.data.valid, 0)
                            await ctx_.tick()
                        word = mach.mem[q][addr + 32 * b:addr + 32 * b + 32]
                        ctx_.set(rd.data.valid, 1)
                        ctx_.set(rd.data.payload.data, int.from_bytes(word.tobytes(), "little"))
                        ctx_.set(rd.data.payload.last, int(b == beats - 1))
                        while True:
                            _, _, ready = await ctx_.tick().sample(rd.data.ready)
                            if ready:
                                break
                    ctx_.set(rd.data.valid, 0)
                ctx_.set(rd.done.valid, 1)
                ctx_.set(rd.done.payload, code)
                while True:
                    _, _, ready = await ctx_.tick().sample(rd.done.ready)
                    if ready:
                        break
                ctx_.set(rd.done.valid, 0)
        return proc

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(controller)
    sim.add_process(clock)
    sim.add_process(scratch)
    for q in range(ctx.ports):
        sim.add_process(dma(q))

    async def guard(ctx_):
        for _ in range(max_cycles):
            await ctx_.tick()
            if state.get("finished"):
                return
        raise AssertionError(f"bench did not finish in {max_cycles} cycles: {rep}")
    sim.add_testbench(guard, background=False)
    sim.run()
    flat = sp.reshape(isa.NUM_BUFFERS, -1)
    for b in range(isa.NUM_BUFFERS):
        mach.bufs[b][:] = flat[b]
    return rep


# ---------------------------------------------------------------------------------------------
# Problem generators
# ---------------------------------------------------------------------------------------------
def tlmm_problem(cfg, mach, rng, n, k, *, port, nports, local, src=(0, 0), amax=(1, 0),
                 dst=(2, 0), reuse=False, amax_value=None, g127=None, xq=None, act_extreme=False):
    """Place random keys / activations / amax; return the TLMM instruction."""
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    wq = torch.randint(-1, 2, (n, k), generator=gen, dtype=torch.int8)
    keys = encode_keys(wq)
    beats = pack_keys(keys, cfg.tables, cfg.lanes, cfg.beat_bits)
    raw = beats.numpy().tobytes()
    assert len(raw) == stream_words(cfg, n, k) * 32
    mach.put_stream(port, local, raw, nports)
    if xq is None:
        if act_extreme:
            xq = torch.full((k,), -128, dtype=torch.int8)
        else:
            xq = torch.randint(-128, 128, (k,), generator=gen, dtype=torch.int8)
    if not reuse:
        b, off = src
        mach.bufs[b][off:off + k] = xq.numpy().view(np.uint8)
    amax_value = amax_value if amax_value is not None else f32(rng.uniform(0.01, 50.0))
    b, off = amax
    mach.bufs[b][off:off + 4] = np.frombuffer(struct.pack("<I", amax_value), np.uint8)
    g127 = g127 if g127 is not None else f32(rng.uniform(1e-3, 1.0) / 127)
    return isa.Instruction.make(
        "TLMM", w_addr=port * CB + local, port=port, nports=nports, rows=n, cols=k,
        src_buf=src[0], src_off=src[1], amax_buf=amax[0], amax_off=amax[1], dst_buf=dst[0],
        dst_off=dst[1], g127=g127, reuse_act=int(reuse)), xq


def fill_garbage(mach, rng):
    for b in mach.bufs:
        b[:] = np.frombuffer(rng.randbytes(b.size), np.uint8)


def check_against_iss(cfg, ctx, mach, instrs, opts, expect_codes=None, compare=None, **unit_kw):
    """Run on RTL and (sequentially) on the ISS; compare codes and every scratch byte (unless
    ``compare`` is False; by default only when every instruction succeeds)."""
    ref = mach.copy()
    iss_codes = []
    for ins in instrs:
        code, bufs = run_iss(cfg, ref, ins)
        iss_codes.append(code)
        ref.bufs = bufs
    rep = run_rtl(cfg, ctx, mach, instrs, opts, **unit_kw)
    assert not rep["violations"], rep["violations"]
    want = expect_codes if expect_codes is not None else iss_codes
    assert rep["codes"] == list(want), (rep["codes"], iss_codes)
    if compare is None:
        compare = all(c == ErrorCode.NONE for c in want)
    if compare:
        for b in range(isa.NUM_BUFFERS):
            diff = np.nonzero(mach.bufs[b] != ref.bufs[b])[0]
            assert diff.size == 0, (f"buffer {b}: first difference at byte {diff[0]}: rtl "
                                    f"{mach.bufs[b][diff[0] & ~3:(diff[0] & ~3) + 4]} iss "
                                    f"{ref.bufs[b][diff[0] & ~3:(diff[0] & ~3) + 4]}")
    return rep, iss_codes


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_div_const_exact():
    from amaranth import Signal
    from amaranth.sim import Simulator as S
    x = Signal(17)
    outs = {d: Signal(17, name=f"q{d}") for d in (3, 7, 19, 128)}
    from amaranth import Module
    m = Module()
    for d, o in outs.items():
        m.d.comb += o.eq(div_const(x, d))
    sim = S(m)
    vals = [0, 1, 2, 3, 127, 128, 129, (1 << 17) - 1, (1 << 17) - 2] + \
        random.Random(1).sample(range(1 << 17), 200)

    async def tb(ctx):
        for v in vals:
            ctx.set(x, v)
            for d, o in outs.items():
                assert ctx.get(o) == v // d, (v, d)
    sim.add_testbench(tb)
    sim.run()


def test_config_checks():
    ctx = make_ctx()
    with pytest.raises(ConfigError, match="multiple of 256"):
        TLMMUnit(ctx, TLMMConfig(tables=2, lanes=4, beat_bits=40, max_k=256, max_n=256, out_lanes=2))
    with pytest.raises(ConfigError, match="out_lanes"):
        TLMMUnit(ctx, TLMMConfig(tables=2, lanes=12, beat_bits=256, max_k=256, max_n=256, out_lanes=12))
    with pytest.raises(ConfigError, match="fifo_depth"):
        TLMMUnit(ctx, C1, fifo_depth=2)
    with pytest.raises(ConfigError, match="TLMMConfig"):
        TLMMUnit(ctx, "small")
    unit = factory(C1)(ctx)
    assert isinstance(unit, TLMMUnit) and unit.beat_words == 1
    unit._MustUse__silence = unit.engine._MustUse__silence = True


@pytest.mark.parametrize("cfg, seed", [(C1, 1), (C1, 2), (C3, 3), (C16, 4)])
def test_random_shapes_bit_exact(cfg, seed):
    """Random N, K (K % 3 != 0, N % lanes != 0 included), stripes, grant denials, DMA gaps."""
    rng = random.Random(seed)
    ctx = make_ctx(ports=4, max_burst=4)
    mach = Machine.blank(4)
    fill_garbage(mach, rng)
    instrs = []
    shapes = [(1, 1), (cfg.lanes + 1, 3 * cfg.tables + 2)] + \
        [(rng.randint(1, 3 * cfg.lanes), rng.randint(1, 9 * cfg.tables)) for _ in range(2)]
    local = 0
    for j, (n, k) in enumerate(shapes):
        nports = rng.randint(1, 4)
        port = rng.randint(0, 4 - nports)
        ins, _ = tlmm_problem(cfg, mach, rng, n, k, port=port, nports=nports, local=local,
                              src=(j % 3, 32 * rng.randint(0, 8)), amax=(3, 32 * j),
                              dst=(4 + j % 2, 32 * rng.randint(0, 20)),
                              act_extreme=(j == 1))
        local += 32 * (-(-stream_words(cfg, n, k) // nports)) + 64
        instrs.append(ins)
    opts = BenchOpts(gnt_p=0.3, gap_p=0.3, cmd_wait=3, latency=2, seed=seed)
    check_against_iss(cfg, ctx, mach, instrs, opts)


def test_reuse_act_and_back_to_back():
    """q/k/v-style: the second and third projections reuse the loaded activations."""
    cfg, rng = C3, random.Random(7)
    ctx = make_ctx(ports=4)
    mach = Machine.blank(4)
    fill_garbage(mach, rng)
    k = 40
    i1, xq = tlmm_problem(cfg, mach, rng, 13, k, port=0, nports=4, local=0, src=(0, 64))
    i2, _ = tlmm_problem(cfg, mach, rng, 9, k, port=1, nports=3, local=4096, src=(0, 64),
                         reuse=True, xq=xq, dst=(5, 0))
    i3, _ = tlmm_problem(cfg, mach, rng, 17, k, port=2, nports=1, local=8192, src=(0, 64),
                         reuse=True, xq=xq, dst=(6, 32))
    check_against_iss(cfg, ctx, mach, [i1, i2, i3], BenchOpts(gnt_p=0.2, gap_p=0.2, seed=7))


def test_full_rate_steady_state():
    """No stalls, nports >= beat words: one engine beat per cycle once the FIFOs are primed."""
    cfg, rng = C3, random.Random(11)
    ctx = make_ctx(ports=4, max_burst=8)
    mach = Machine.blank(4)
    n, k = 64, 9 * 12                                 # 8 row tiles x 12 group tiles = 96 beats
    ins, _ = tlmm_problem(cfg, mach, rng, n, k, port=0, nports=4, local=0)
    rep, _ = check_against_iss(cfg, ctx, mach, [ins], BenchOpts(latency=1, seed=11))
    ideal = cfg.ideal_cycles(n, k)
    assert rep["beats"][0] == ideal
    span = rep["last_beat"][0] - rep["first_beat"][0] + 1
    # 3 words per beat from 4 ports, each port one 8-word command at a time with a ~4-cycle
    # round trip: 4 * 8/12 = 2.67 words/cycle at worst -> allow 15 %
    assert span <= ideal * 1.15 + 4, (span, ideal, rep["cycles"])


def test_full_rate_one_word_beats():
    cfg, rng = C1, random.Random(12)
    ctx = make_ctx(ports=4, max_burst=8)
    mach = Machine.blank(4)
    n, k = 32, 6 * 20                                 # 8 x 20 = 160 beats
    ins, _ = tlmm_problem(cfg, mach, rng, n, k, port=0, nports=2, local=0)
    rep, _ = check_against_iss(cfg, ctx, mach, [ins], BenchOpts(latency=1, seed=12))
    ideal = cfg.ideal_cycles(n, k)
    span = rep["last_beat"][0] - rep["first_beat"][0] + 1
    assert rep["beats"][0] == ideal and span == ideal, (span, ideal)


def test_errors_match_iss():
    cfg, rng = C1, random.Random(5)
    ctx = make_ctx(ports=4)
    mach = Machine.blank(4)
    fill_garbage(mach, rng)
    good, _ = tlmm_problem(cfg, mach, rng, 10, 40, port=1, nports=2, local=0)

    def var(**kw):
        f = dict(good.fields)
        f.update(kw)
        return isa.Instruction.make("TLMM", **f)
    cases = [
        var(w_addr=2 * CB, port=1),                          # channel != port -> SHAPE
        var(w_addr=4 * CB - 64, port=3, nports=1),           # rows past the last channel
        var(src_off=BUF_WORDS * 32 - 32),                    # xq past the buffer
        var(dst_off=BUF_WORDS * 32 - 32),                    # y past the buffer
    ]
    want = [ErrorCode.SHAPE, ErrorCode.HBM_RANGE, ErrorCode.BUF_RANGE, ErrorCode.BUF_RANGE]
    # amax value infinite / NaN -> SHAPE (golden NonFiniteError), output overflow -> SHAPE
    b, off = good["amax_buf"], good["amax_off"]
    for bits in (0x7F800000, 0x7FC00001):
        mm = mach.copy()
        mm.bufs[b][off:off + 4] = np.frombuffer(struct.pack("<I", bits), np.uint8)
        # found before the engine starts: nothing written, like the ISS
        _, codes = check_against_iss(cfg, ctx, mm, [good], BenchOpts(seed=1),
                                     expect_codes=[ErrorCode.SHAPE], compare=True)
        assert codes == [ErrorCode.SHAPE]
    mm = mach.copy()     # y overflows to infinity: SHAPE (the RTL has written outputs already)
    mm.bufs[b][off:off + 4] = np.frombuffer(struct.pack("<I", f32(3e38)), np.uint8)
    _, codes = check_against_iss(cfg, ctx, mm, [var(g127=f32(1.0))], BenchOpts(seed=2),
                                 expect_codes=[ErrorCode.SHAPE])
    assert codes == [ErrorCode.SHAPE]
    # each static error alone (nothing written), then a good instruction still works
    for ins, code in zip(cases, want):
        check_against_iss(cfg, ctx, mach.copy(), [ins, good], BenchOpts(seed=3),
                          expect_codes=[code, ErrorCode.NONE], compare=True)
        assert run_iss(cfg, mach, ins)[0] == code


def test_errors_beyond_iss():
    """Checks the ISS does not make: engine limits, missing ports, subnormal scale operands."""
    cfg, rng = C1, random.Random(6)
    ctx = make_ctx(ports=4)
    mach = Machine.blank(4)
    good, _ = tlmm_problem(cfg, mach, rng, 10, 40, port=1, nports=2, local=0)

    def var(**kw):
        f = dict(good.fields)
        f.update(kw)
        return isa.Instruction.make("TLMM", **f)
    cases = [(var(cols=cfg.max_k + 1), ErrorCode.SHAPE),
             (var(rows=cfg.max_n + 1), ErrorCode.SHAPE),
             (var(port=2, nports=3, w_addr=2 * CB), ErrorCode.HBM_RANGE),   # port 4 absent
             (var(g127=1), ErrorCode.SHAPE)]                               # subnormal g127
    for ins, code in cases:
        rep = run_rtl(cfg, ctx, mach.copy(), [ins, good], BenchOpts(seed=4))
        assert rep["codes"] == [code, ErrorCode.NONE], (ins, rep["codes"])


def test_axi_errors_and_abort():
    cfg, rng = C1, random.Random(8)
    ctx = make_ctx(ports=4, max_burst=4)
    mach = Machine.blank(4)
    fill_garbage(mach, rng)
    a, _ = tlmm_problem(cfg, mach, rng, 16, 30, port=0, nports=2, local=0)
    b, _ = tlmm_problem(cfg, mach, rng, 12, 24, port=1, nports=3, local=4096, dst=(5, 0))
    # SLVERR on the second command of port 1: stream completes, AXI_RESP; then b is exact
    ref = mach.copy()
    _, bufs = run_iss(cfg, ref, b)
    m1 = mach.copy()
    rep = run_rtl(cfg, ctx, m1, [a, b], BenchOpts(slverr_at=((1, 1),), seed=1))
    assert rep["codes"] == [ErrorCode.AXI_RESP, ErrorCode.NONE]
    assert np.array_equal(m1.bufs[5], bufs[5])
    # a range completion without data: the unit drains and answers HBM_RANGE (no hang)
    m2 = mach.copy()
    rep = run_rtl(cfg, ctx, m2, [a, b], BenchOpts(range_at=((0, 1),), gap_p=0.2, seed=2))
    assert rep["codes"] == [ErrorCode.HBM_RANGE, ErrorCode.NONE]
    assert np.array_equal(m2.bufs[5], bufs[5])
    # abort in the middle of a, at several points; b afterwards is exact
    for when in (2, 9, 25, 60):
        m3 = mach.copy()
        rep = run_rtl(cfg, ctx, m3, [a, b], BenchOpts(abort_at={0: when}, gap_p=0.3, seed=when))
        assert rep["codes"][1] == ErrorCode.NONE
        assert np.array_equal(m3.bufs[5], bufs[5]), when


def test_long_commands_full_rate_at_nports_equal_beat_words():
    """cmd_words > max_burst: one DMA command per port for the whole stripe (the DMA cuts the
    bursts), so the per-command round trip is paid once and nports = beat words suffices."""
    cfg, rng = C3, random.Random(13)
    ctx = make_ctx(ports=4, max_burst=4)
    mach = Machine.blank(4)
    n, k = 64, 9 * 12
    ins, _ = tlmm_problem(cfg, mach, rng, n, k, port=1, nports=3, local=0)
    rep, _ = check_against_iss(cfg, ctx, mach, [ins], BenchOpts(latency=4, seed=13), cmd_words=1024)
    ideal = cfg.ideal_cycles(n, k)
    span = rep["last_beat"][0] - rep["first_beat"][0] + 1
    assert rep["beats"][0] == ideal and span == ideal, (span, ideal)
    # and with gaps / denials, still exact
    mach2 = Machine.blank(4)
    fill_garbage(mach2, rng)
    ins, _ = tlmm_problem(cfg, mach2, rng, 21, 50, port=0, nports=2, local=0)
    check_against_iss(cfg, ctx, mach2, [ins], BenchOpts(gnt_p=0.3, gap_p=0.4, seed=14),
                      cmd_words=1024, fifo_depth=4)


def test_unit_parameter_checks():
    ctx = make_ctx()
    with pytest.raises(ConfigError, match="channel_bytes"):
        TLMMUnit(ctx, C1, channel_bytes=100)
    with pytest.raises(ConfigError, match="channel_bytes"):
        TLMMUnit(ctx, C1, channel_bytes=1 << 19)       # 4 ports x 512 KiB > 2**20
    with pytest.raises(ConfigError, match="cmd_words"):
        TLMMUnit(ctx, C1, cmd_words=0)
    u = TLMMUnit(ctx, C1)
    assert (u.channel_bytes, u.cmd_words, u.fifo_depth) == (CB, 4, 8)
    u._MustUse__silence = u.engine._MustUse__silence = True
