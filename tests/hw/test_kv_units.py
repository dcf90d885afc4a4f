"""KV units (MASK_STORE, KV_APPEND) in the Amaranth simulator against the golden ISS.

Python models play the HBM behind every DMA client (random command-accept delays, latencies and
valid/ready gaps) and the scratchpad read port (random grant denials, 1-cycle read latency). Each
test runs the same instructions on :class:`ternopu.sw.backends.golden_iss.GoldenISS` (its
``_execute``: the instruction's semantics and error codes) and compares every HBM byte and the
completion codes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from ternopu.golden.kivi import kivi_quantize_keys, kivi_quantize_values
from ternopu.hw import isa
from ternopu.hw.dma import DmaParams
from ternopu.hw.isa import ErrorCode, KvFormat
from ternopu.hw.overlay import SlotContext
from ternopu.hw.units.kv_append import KVAppendUnit
from ternopu.hw.units.mask_store import MaskStoreUnit
from ternopu.sw.backends.golden_iss import GoldenISS, _Stop
from ternopu.sw.compiler.layout import Geometry, KVLayout, align_up

P = 4                # HBM ports / channels
CB = 1 << 15         # bytes per channel (32 KiB)
BUF_WORDS = 64


def make_ctx(max_burst=8):
    return SlotContext(DmaParams(data_width=256, addr_width=34, mem_bytes=CB, max_burst=max_burst,
                                 max_outstanding=4), P, BUF_WORDS)


# ----------------------------------------------------------------------------------------------
# harness
# ----------------------------------------------------------------------------------------------
class Harness:
    """Runs a unit with Python HBM / scratch models; ``program`` is a list of callables
    ``step(h) -> instruction word or None`` executed in order (they may change the models)."""

    def __init__(self, dut, mem: np.ndarray, scratch: dict, seed: int, *, bitmask: int = 0):
        self.dut, self.mem, self.scratch = dut, mem, scratch
        self.rng = random.Random(seed)
        self.bitmask = bitmask
        self.codes = []
        self.cycles = 0

    # -- HBM behind port q -----------------------------------------------------------------
    def _rd_model(self, q):
        c, rng, mem = self.dut.rd[q], self.rng, self.mem

        async def model(ctx):
            while True:
                addr, beats = await self._accept(ctx, c.cmd)
                assert beats <= self.dut.ctx.dma.max_burst and addr % 32 == 0
                err = 2 if addr + 32 * beats > CB else 0
                for _ in range(rng.randrange(4)):
                    await ctx.tick()
                i = 0
                while i < beats and not err:
                    valid = rng.random() < 0.7
                    a = q * CB + addr + 32 * i
                    ctx.set(c.data.valid, valid)
                    ctx.set(c.data.payload.data, int.from_bytes(mem[a:a + 32].tobytes(), "little"))
                    ctx.set(c.data.payload.last, i == beats - 1)
                    _, _, rdy = await ctx.tick().sample(c.data.ready)
                    if valid and rdy:
                        i += 1
                ctx.set(c.data.valid, 0)
                ctx.set(c.done.valid, 1)
                ctx.set(c.done.payload, err)
                while True:
                    _, _, rdy = await ctx.tick().sample(c.done.ready)
                    if rdy:
                        break
                ctx.set(c.done.valid, 0)
        return model

    def _wr_model(self, q):
        c, rng, mem = self.dut.wr[q], self.rng, self.mem

        async def model(ctx):
            while True:
                addr, beats = await self._accept(ctx, c.cmd)
                assert beats <= self.dut.ctx.dma.max_burst and addr % 32 == 0
                assert addr + 32 * beats <= CB
                i = 0
                while i < beats:
                    rdy = rng.random() < 0.7
                    ctx.set(c.data.ready, rdy)
                    _, _, valid, word = await ctx.tick().sample(c.data.valid, c.data.payload)
                    if valid and rdy:
                        a = q * CB + addr + 32 * i
                        mem[a:a + 32] = np.frombuffer(int(word).to_bytes(32, "little"), dtype=np.uint8)
                        i += 1
                ctx.set(c.data.ready, 0)
                for _ in range(rng.randrange(4)):
                    await ctx.tick()
                ctx.set(c.done.valid, 1)
                ctx.set(c.done.payload, 0)
                while True:
                    _, _, rdy = await ctx.tick().sample(c.done.ready)
                    if rdy:
                        break
                ctx.set(c.done.valid, 0)
        return model

    def _sp_model(self):
        sp, rng = self.dut.sp_r, self.rng

        async def model(ctx):
            while True:
                while not (await ctx.tick().sample(sp.req))[2]:   # held until granted
                    pass
                while True:
                    gnt = rng.random() < 0.6
                    ctx.set(sp.gnt, gnt)
                    _, _, req, addr = await ctx.tick().sample(sp.req, sp.addr)
                    if gnt and req:
                        break
                ctx.set(sp.gnt, 0)
                ctx.set(sp.rvalid, 1)
                ctx.set(sp.data, self.scratch.get(addr, 0))
                await ctx.tick()
                ctx.set(sp.rvalid, 0)
        return model

    async def _accept(self, ctx, cmd):
        """Wait for a command, accept it after a random delay; returns (addr, beats)."""
        while not (await ctx.tick().sample(cmd.valid))[2]:
            pass
        for _ in range(self.rng.randrange(3)):
            await ctx.tick()
        ctx.set(cmd.ready, 1)
        _, _, addr, beats = await ctx.tick().sample(cmd.payload.addr, cmd.payload.beats)
        ctx.set(cmd.ready, 0)
        return addr, beats

    def run(self, program, max_cycles=400_000, vcd=None):
        dut = self.dut
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        members = dut.signature.members
        for q in range(dut.ctx.ports):
            if "rd" in members:
                sim.add_process(self._rd_model(q))
            if "wr" in members:
                sim.add_process(self._wr_model(q))
        if "sp_r" in members:
            sim.add_process(self._sp_model())

        async def driver(ctx):
            if "bitmask" in members:
                ctx.set(dut.bitmask, self.bitmask)
            ctx.set(dut.ctl.done.ready, 1)
            for pc, step in enumerate(program):
                word = step(self)
                if word is None:
                    continue
                ctx.set(dut.ctl.cmd.payload.instr.bits, word)
                ctx.set(dut.ctl.cmd.payload.pc, pc)
                ctx.set(dut.ctl.cmd.valid, 1)
                while True:
                    _, _, rdy = await ctx.tick().sample(dut.ctl.cmd.ready)
                    if rdy:
                        break
                ctx.set(dut.ctl.cmd.valid, 0)
                n = 0
                while True:
                    _, _, v, code = await ctx.tick().sample(dut.ctl.done.valid, dut.ctl.done.payload)
                    n += 1
                    assert n < max_cycles, "no completion"
                    if v:
                        break
                self.codes.append(ErrorCode(code))
                self.cycles += n

        sim.add_testbench(driver)
        if vcd:
            with sim.write_vcd(vcd):
                sim.run()
        else:
            sim.run()
        return self.codes


def iss_for(mem: np.ndarray) -> GoldenISS:
    iss = GoldenISS()
    iss.geo = Geometry(P, CB)
    iss.mem = [mem[q * CB:(q + 1) * CB].copy() for q in range(P)]
    return iss


def iss_exec(iss: GoldenISS, ins: isa.Instruction) -> ErrorCode:
    try:
        iss._execute(ins)
    except _Stop as s:
        return s.code
    return ErrorCode.NONE


def iss_mem(iss: GoldenISS) -> np.ndarray:
    return np.concatenate([m[:CB] for m in iss.mem])


def assert_mem_equal(got: np.ndarray, want: np.ndarray):
    diff = np.nonzero(got != want)[0]
    if diff.size:
        a = int(diff[0])
        raise AssertionError(f"{diff.size} HBM bytes differ; first at global {a:#x} (channel {a // CB}, local "
                             f"{a % CB:#x}): rtl {got[a:a + 16].tobytes().hex()} iss {want[a:a + 16].tobytes().hex()}")


# ----------------------------------------------------------------------------------------------
# MASK_STORE
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_mask_store_matches_iss(seed):
    rng = random.Random(seed)
    bitmask = rng.getrandbits(512)
    mem = np.frombuffer(rng.randbytes(P * CB), dtype=np.uint8).copy()
    cases = [(1, 0), (256, CB - 32), (128, 64), (129, 2 * CB + 96), (rng.randint(1, 256), rng.randrange(0, P * CB, 32)),
             (200, P * CB - 32), (5, P * CB)]
    words = [isa.encode(isa.Instruction.make("MASK_STORE", layers=n, hbm_addr=a)) for n, a in cases]
    h = Harness(MaskStoreUnit(make_ctx()), mem.copy(), {}, seed, bitmask=bitmask)
    got = h.run([lambda h, w=w: w for w in words])
    iss = iss_for(mem)
    iss.bitmask[:] = np.array([(bitmask >> i) & 1 for i in range(512)], dtype=bool).reshape(256, 2)
    want = [iss_exec(iss, isa.decode(w)) for w in words]
    assert got == want
    assert ErrorCode.HBM_RANGE in want
    assert_mem_equal(h.mem, iss_mem(iss))


# ----------------------------------------------------------------------------------------------
# KV_APPEND
# ----------------------------------------------------------------------------------------------
def make_layout(bits, *, layers=2, kv_heads=2, head_dim=48, group=8, residual=4, max_pos=40, kv_nports=3):
    sz = KVLayout.sizes(layers, kv_heads, head_dim, bits, group)
    slot = sz["slot_bytes"]
    kv_stride = align_up(-(-max_pos // kv_nports) * slot)
    ring_rows = residual + group
    ring_bytes = sz["fp16_row"]
    ring_stride = align_up(-(-ring_rows // kv_nports) * ring_bytes)
    kg_bytes = sz["kg_bytes"]
    kg_stride = align_up(-(-(-(-max_pos // group)) // kv_nports) * max(kg_bytes, 32))
    # channel 0: descriptor + route history; KV from channel 1 (wrapping over the 4 channels)
    route_base = 256
    kv_base = 1 * CB + 0x100
    ring_base = 2 * CB + 0x100 + layers * kv_stride
    kg_base = 3 * CB + 0x100 + layers * kv_stride + layers * ring_stride
    kv = KVLayout(layers=layers, kv_heads=kv_heads, head_dim=head_dim, bits=bits, group=group,
                  residual=residual, max_pos=max_pos, kv_base=kv_base, kv_nports=kv_nports,
                  slot_bytes=slot, kv_layer_stride=kv_stride, kg_base=kg_base, kg_bytes=kg_bytes,
                  kg_layer_stride=kg_stride, route_base=route_base, route_bytes=sz["route_bytes"],
                  ring_base=ring_base if bits != 16 else 0, ring_rows=ring_rows if bits != 16 else 0,
                  ring_bytes=ring_bytes if bits != 16 else 0, ring_layer_stride=ring_stride if bits != 16 else 0)
    top = max(kg_base % CB + layers * kg_stride, ring_base % CB + layers * ring_stride + ring_bytes,
              kv_base % CB + layers * kv_stride + slot)
    assert top <= CB and route_base + max_pos * 32 <= CB, "layout does not fit the test HBM"
    return kv


def rand_row(rng: np.random.Generator, d: int, special: bool) -> np.ndarray:
    x = (rng.standard_normal(d) * rng.choice([1e-3, 0.5, 8.0, 3000.0])).astype(np.float16)
    if special:
        k = rng.integers(0, 6)
        idx = rng.integers(0, d, size=max(1, d // 4))
        x[idx] = [np.float16(0.0), np.float16(-0.0), np.float16(6e-8), np.float16(-6e-8),
                  np.float16(65504), np.float16(-65504)][k]
    return x


FMT = {16: KvFormat.FP16, 2: KvFormat.KIVI2, 4: KvFormat.KIVI4}
DESC_ADDR = 0


def kv_program(kv: KVLayout, appends, rows_of, desc_addr=DESC_ADDR, **over):
    """Build (word, k_row, v_row) steps; ``appends`` = [(token, layer, head)]."""
    steps = []
    for token, layer, head in appends:
        k, v = rows_of(token, layer, head)
        fields = dict(layer=layer, kv_head=head, token=token, kv_fmt=FMT[kv.bits], head_dim=kv.head_dim,
                      k_buf=2, k_off=0x20 * (token % 4), v_buf=5, v_off=0x400 + 0x40 * (token % 3),
                      kv_addr=kv.layer_addr(layer) if layer < kv.layers else 0, port=0, desc_addr=desc_addr)
        fields.update(over)
        steps.append((isa.encode(isa.Instruction.make("KV_APPEND", **fields)), k, v))
    return steps


def put_row(scratch: dict, buf: int, off: int, row: np.ndarray):
    raw = row.astype("<f2").tobytes()
    raw += bytes(-len(raw) % 32)
    for i in range(len(raw) // 32):
        scratch[buf * BUF_WORDS + off // 32 + i] = int.from_bytes(raw[32 * i:32 * i + 32], "little")


def run_kv(kv: KVLayout, steps, route: np.ndarray, seed: int, *, mem=None, unit_kw=None, max_burst=8):
    """Run ``steps`` on the unit and on the ISS; return (rtl codes, iss codes, rtl mem, iss mem, cycles)."""
    rng = np.random.default_rng(seed)
    if mem is None:
        mem = rng.integers(0, 256, size=P * CB, dtype=np.uint8)
        # the ring / key groups / slots start as noise: the RMW must keep bytes of other heads
        mem[0:kv.to_bytes().__len__()] = np.frombuffer(kv.to_bytes(), dtype=np.uint8)
        rb = kv.route_bytes
        for t in range(route.shape[0]):
            rec = np.zeros(rb, dtype=np.uint8)
            bits = np.packbits(route[t].reshape(-1).astype(np.uint8), bitorder="little")
            rec[:bits.size] = bits
            mem[kv.route_base + t * rb: kv.route_base + (t + 1) * rb] = rec
    iss = iss_for(mem)
    want = []
    for word, k, v in steps:
        ins = isa.decode(word)
        iss.buffers[ins["k_buf"]][ins["k_off"]:ins["k_off"] + 2 * k.size] = np.frombuffer(k.astype("<f2").tobytes(), np.uint8)
        iss.buffers[ins["v_buf"]][ins["v_off"]:ins["v_off"] + 2 * v.size] = np.frombuffer(v.astype("<f2").tobytes(), np.uint8)
        want.append(iss_exec(iss, ins))
    scratch = {}

    def step_fn(word, k, v):
        def f(h):
            ins = isa.decode(word)
            put_row(scratch, ins["k_buf"], ins["k_off"], k)
            put_row(scratch, ins["v_buf"], ins["v_off"], v)
            return word
        return f

    dut = KVAppendUnit(make_ctx(max_burst), **(unit_kw or dict(max_head_dim=64, max_group=16, max_residual=16)))
    h = Harness(dut, mem.copy(), scratch, seed)
    got = h.run([step_fn(*s) for s in steps])
    return got, want, h.mem, iss_mem(iss), h.cycles


def route_bits(rng, tokens, layers, p_skip):
    r = rng.random((tokens, layers, 2)) < p_skip
    r[:, 0, :] = False
    return r


@pytest.mark.parametrize("seed", [0, 1])
def test_kv_append_fp16(seed):
    rng = np.random.default_rng(seed)
    kv = make_layout(16, head_dim=40 + 8 * seed, max_pos=20)   # 40: rows not 32-byte aligned (RMW)
    route = route_bits(rng, kv.max_pos, kv.layers, 0.3)
    rows = {}

    def rows_of(t, layer, head):
        return rows.setdefault((t, layer, head), (rand_row(rng, kv.head_dim, False), rand_row(rng, kv.head_dim, True)))

    appends = [(t, layer, head) for t in (0, 1, 2, 5, 7, 18, 19) for layer in (0, 1) for head in (1, 0)
               if not route[t, layer, 0]]
    steps = kv_program(kv, appends, rows_of)
    got, want, mem_rtl, mem_iss, cycles = run_kv(kv, steps, route, seed)
    assert got == want and all(c == ErrorCode.NONE for c in want)
    assert_mem_equal(mem_rtl, mem_iss)


def test_kv_append_errors():
    rng = np.random.default_rng(5)
    kv = make_layout(16, head_dim=32, max_pos=8)
    route = route_bits(rng, kv.max_pos, kv.layers, 0.0)
    rows_of = lambda t, layer, head: (rand_row(rng, 32, False), rand_row(rng, 32, False))  # noqa: E731
    bad_magic = 0x40
    steps = (kv_program(kv, [(7, 1, 1)], rows_of)                                     # max_pos - 1: fine
             + kv_program(kv, [(8, 1, 1)], rows_of)                                   # token == max_pos
             + kv_program(kv, [(1, 1, 1)], rows_of, kv_fmt=KvFormat.KIVI2)            # format mismatch
             + kv_program(kv, [(1, 2, 0)], rows_of)                                   # layer >= layers
             + kv_program(kv, [(1, 1, 2)], rows_of)                                   # head >= kv_heads
             + kv_program(kv, [(1, 1, 0)], rows_of, kv_addr=kv.layer_addr(0))         # wrong kv_addr
             + kv_program(kv, [(1, 1, 0)], rows_of, head_dim=30)                      # head_dim mismatch
             + kv_program(kv, [(2, 0, 0)], rows_of, desc_addr=bad_magic)              # bad magic
             + kv_program(kv, [(3, 0, 0)], rows_of, desc_addr=P * CB + 64)            # descriptor beyond HBM
             + kv_program(kv, [(4, 0, 1)], rows_of))                                  # and the cache recovers
    got, want, mem_rtl, mem_iss, _ = run_kv(kv, steps, route, 5)
    assert want == [ErrorCode.NONE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE,
                    ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.SHAPE, ErrorCode.HBM_RANGE, ErrorCode.NONE]
    assert got == want
    assert_mem_equal(mem_rtl, mem_iss)


def test_kv_append_buffer_range():
    """K row running past the scratch buffer of the build (the ISS's buffers are 1 MiB, so this
    is the RTL's own BUF_RANGE at ``buf_words``)."""
    rng = np.random.default_rng(6)
    kv = make_layout(16, head_dim=32, max_pos=8)
    route = route_bits(rng, kv.max_pos, kv.layers, 0.0)
    rows_of = lambda t, layer, head: (rand_row(rng, 32, False), rand_row(rng, 32, False))  # noqa: E731
    steps = kv_program(kv, [(1, 0, 0)], rows_of, k_off=(BUF_WORDS - 1) * 32)
    got, _, _, _, _ = run_kv(kv, steps, route, 6)
    assert got == [ErrorCode.BUF_RANGE]


KIVI_CASES = [
    # bits, group, residual, head_dim, heads, max_pos, seed
    pytest.param(2, 4, 2, 24, (1, 0), 14, 0, id="kivi2-g4-r2-d24", marks=pytest.mark.slow),
    pytest.param(4, 4, 2, 24, (1,), 14, 1, id="kivi4-g4-r2-d24"),
    pytest.param(2, 2, 0, 16, (1,), 8, 2, id="kivi2-g2-r0-d16"),
    pytest.param(4, 8, 4, 48, (1, 0), 26, 3, id="kivi4-g8-r4-d48", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("bits,group,residual,head_dim,heads,max_pos,seed", KIVI_CASES)
def test_kv_append_kivi(bits, group, residual, head_dim, heads, max_pos, seed):
    """A whole sequence of tokens at layer 1: ring rows, value records (per-head records that are
    not 32-byte aligned: read-modify-write), key groups at the group boundaries (rows = residual
    + group, + 2 group), tokens that skipped the layer, the first tokens (fewer rows than a
    group), the last position (max_pos - 1), rows with signed zeros / subnormals / +-65504."""
    rng = np.random.default_rng(seed)
    kv = make_layout(bits, head_dim=head_dim, group=group, residual=residual, max_pos=max_pos)
    route = route_bits(rng, max_pos, kv.layers, 0.2)
    route[max_pos - 1, 1, 0] = False
    rows = {}

    def rows_of(t, layer, head):
        return rows.setdefault((t, layer, head), (rand_row(rng, kv.head_dim, t % 3 == 1),
                                                  rand_row(rng, kv.head_dim, t % 4 == 2)))

    appends = [(t, 1, head) for t in range(max_pos) if not route[t, 1, 0] for head in heads]
    steps = kv_program(kv, appends, rows_of)
    got, want, mem_rtl, mem_iss, cycles = run_kv(kv, steps, route, seed)
    assert want == [ErrorCode.NONE] * len(steps)
    assert got == want
    n_rows = int((~route[:, 1, 0]).sum())
    assert n_rows >= residual + 2 * group, "the sequence must cross at least two key groups"
    assert_mem_equal(mem_rtl, mem_iss)


# Groups of 4 whose min and/or max is a zero of either sign (mixed zeros, all -0, -0 beside
# positives / negatives); the stored mn is +0 and the scale never -0 (golden rule, kivi docstring).
SIGNED_ZERO_GROUPS = np.array([
    [0.0, -0.0, 0.0, -0.0], [-0.0, 0.0, -0.0, 0.0], [-0.0, -0.0, 0.0, 0.0], [0.0, 0.0, -0.0, -0.0],
    [-0.0, -0.0, -0.0, -0.0], [0.0, 0.0, 0.0, 0.0], [-0.0, 1.0, 2.0, 3.0], [1.0, 0.0, -0.0, 2.5],
    [-0.0, -1.0, -2.0, -3.0], [-1.5, 0.0, -0.0, -4.0], [-0.0, 7.0, 0.0, -0.0], [-2.0, -0.0, 0.0, 3.0],
], dtype=np.float16)


@pytest.mark.parametrize("bits,head_dim,residual,seed", [
    pytest.param(2, 128, 0, 11, id="kivi2-d128-r0"),
    pytest.param(4, 48, 1, 12, id="kivi4-d48-r1"),
])
def test_kv_append_kivi_signed_zeros(bits, head_dim, residual, seed):
    """Groups whose minimum (or maximum) is a zero of either sign, keys (channel c of the first
    key group holds pattern ``c % 12`` over its 4 tokens) and values (group j of token t holds
    pattern ``(j + t) % 12``), at two head_dims (the golden's torch reductions picked different
    zeros for these shapes before the +0 rule): bit-exact with the ISS, and every stored key /
    value ``mn`` / ``scale`` of the golden is free of -0."""
    rng = np.random.default_rng(seed)
    group, max_pos = 4, 4 + residual + 1
    kv = make_layout(bits, kv_heads=1, head_dim=head_dim, group=group, residual=residual, max_pos=max_pos)
    route = route_bits(rng, kv.max_pos, kv.layers, 0.0)
    npat = len(SIGNED_ZERO_GROUPS)

    def rows_of(t, layer, head):
        k = SIGNED_ZERO_GROUPS[np.arange(head_dim) % npat, t % group]
        v = SIGNED_ZERO_GROUPS[(np.arange(head_dim // group) + t) % npat].reshape(-1)
        return k.copy(), v.copy()

    steps = kv_program(kv, [(t, 0, 0) for t in range(max_pos)], rows_of)
    got, want, mem_rtl, mem_iss, _ = run_kv(kv, steps, route, seed,
                                           unit_kw=dict(max_head_dim=128, max_group=4, max_residual=4))
    assert got == want == [ErrorCode.NONE] * max_pos
    assert_mem_equal(mem_rtl, mem_iss)
    # the golden side of the rule on exactly these groups
    keys = torch.from_numpy(np.stack([rows_of(t, 0, 0)[0] for t in range(group)]))
    vals = torch.from_numpy(np.stack([rows_of(t, 0, 0)[1] for t in range(max_pos)]))
    for qt in (kivi_quantize_keys(keys, bits, group), kivi_quantize_values(vals, bits, group)):
        for p in (qt.mn, qt.scale):
            assert not (p.view(torch.int16) == -0x8000).any()


def test_kv_append_kivi_nonfinite():
    """A key group containing an infinity: the ISS's golden check ends with SHAPE."""
    rng = np.random.default_rng(9)
    kv = make_layout(2, head_dim=16, group=4, residual=0, max_pos=8)
    route = route_bits(rng, kv.max_pos, kv.layers, 0.0)

    def rows_of(t, layer, head):
        k = rand_row(rng, 16, False)
        if t == 2:
            k[5] = np.float16(np.inf)
        return k, rand_row(rng, 16, False)

    steps = kv_program(kv, [(t, 0, 0) for t in range(4)], rows_of)
    got, want, mem_rtl, mem_iss, _ = run_kv(kv, steps, route, 9)
    assert want[-1] == ErrorCode.SHAPE
    assert got == want
