"""BankedMemory (request/grant scratch ports) and UnitMux (opcode dispatch) in the Amaranth simulator."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.dma import DmaParams
from ternopu.hw.isa import ErrorCode
from ternopu.hw.overlay import SlotContext
from ternopu.hw.scratchpad import SCRATCH_READ_LATENCY, BankedMemory
from ternopu.hw.unit_mux import UnitMux
from ternopu.hw.unit_port import StubUnit, stub_cycles


def test_banked_memory_random_traffic_matches_model():
    """Random reads/writes from 3 readers and 2 writers over 4 banks: every granted read returns
    the model's word (read-first), grants follow the fixed priority per bank, every bank serves at
    most one read and one write per cycle."""
    banks, bank_words, nr, nw = 4, 8, 3, 2
    dut = BankedMemory(banks, bank_words, nr, nw)
    rng = random.Random(7)
    model = [0] * (banks * bank_words)
    checked = {"reads": 0, "writes": 0}

    async def bench(ctx):
        pending = [None] * nr
        for _ in range(600):
            reqs_r = [(rng.random() < 0.6, rng.randrange(banks * bank_words)) for _ in range(nr)]
            reqs_w = [(rng.random() < 0.5, rng.randrange(banks * bank_words), rng.getrandbits(256))
                      for _ in range(nw)]
            for p, (req, addr) in zip(dut.r, reqs_r):
                ctx.set(p.req, req)
                ctx.set(p.addr, addr)
            for p, (req, addr, data) in zip(dut.w, reqs_w):
                ctx.set(p.req, req)
                ctx.set(p.addr, addr)
                ctx.set(p.data, data)
            # expected grants: fixed priority per bank
            exp_r, taken = [], set()
            for req, addr in reqs_r:
                b = addr // bank_words
                exp_r.append(req and b not in taken)
                if req:
                    taken.add(b)
            exp_w, taken = [], set()
            for req, addr, _ in reqs_w:
                b = addr // bank_words
                exp_w.append(req and b not in taken)
                if req:
                    taken.add(b)
            gr = [ctx.get(p.gnt) for p in dut.r]
            gw = [ctx.get(p.gnt) for p in dut.w]
            assert gr == [int(x) for x in exp_r]
            assert gw == [int(x) for x in exp_w]
            # check the data of last cycle's granted reads
            for i, p in enumerate(dut.r):
                assert ctx.get(p.rvalid) == (pending[i] is not None)
                if pending[i] is not None:
                    assert ctx.get(p.data) == pending[i]
                    checked["reads"] += 1
            # reads see the memory before this cycle's writes
            pending = [model[a] if g else None for g, (_, a) in zip(gr, reqs_r)]
            for g, (_, a, d) in zip(gw, reqs_w):
                if g:
                    model[a] = d
                    checked["writes"] += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert SCRATCH_READ_LATENCY == 1
    assert checked["reads"] > 300 and checked["writes"] > 200


@pytest.mark.parametrize("kw", [dict(banks=0, bank_words=8, n_read=1, n_write=1),
                                dict(banks=2, bank_words=6, n_read=1, n_write=1),
                                dict(banks=2, bank_words=8, n_read=-1, n_write=1)])
def test_banked_memory_rejects_bad_parameters(kw):
    with pytest.raises(ConfigError):
        BankedMemory(**kw)


def _ctx():
    return SlotContext(DmaParams(data_width=256, addr_width=34, mem_bytes=1 << 20), 2, 16)


def _word(name: str) -> int:
    return isa.OPCODE_BY_NAME[name].number   # header.opcode is the low byte; other fields zero


def test_unit_mux_dispatches_by_opcode_and_answers_missing_opcodes():
    """PE slot: PE_LINEAR -> unit 0 (3..3 cycles), ROUTER -> unit 1 (9 cycles, writes the mask);
    PE_ATTN has no unit -> ILLEGAL_OPCODE at once. Completion timing identifies the unit."""
    ctx = _ctx()
    mux = UnitMux(ctx, {"PE_LINEAR": lambda c: StubUnit(3, 1), "ROUTER": lambda c: StubUnit(9, 1, router=True)})
    assert "mask" in mux.signature.members and "rd" not in mux.signature.members
    seq = [("PE_LINEAR", 3, ErrorCode.NONE), ("ROUTER", 9, ErrorCode.NONE), ("PE_ATTN", 1, ErrorCode.ILLEGAL_OPCODE),
           ("PE_LINEAR", 3, ErrorCode.NONE), ("ROUTER", 9, ErrorCode.NONE)]
    got = []

    async def bench(ctx_):
        ctx_.set(mux.ctl.done.ready, 1)
        for pc, (name, _, _) in enumerate(seq):
            ctx_.set(mux.ctl.cmd.payload.instr.as_value(), _word(name))
            ctx_.set(mux.ctl.cmd.payload.pc, pc)
            ctx_.set(mux.ctl.cmd.valid, 1)
            while not ctx_.get(mux.ctl.cmd.ready):
                await ctx_.tick()
            await ctx_.tick()
            ctx_.set(mux.ctl.cmd.valid, 0)
            cycles = 1
            masked = False
            while not ctx_.get(mux.ctl.done.valid):
                masked |= bool(ctx_.get(mux.mask.we))
                await ctx_.tick()
                cycles += 1
            masked |= bool(ctx_.get(mux.mask.we))
            got.append((name, cycles, ErrorCode(ctx_.get(mux.ctl.done.payload)), masked))
            await ctx_.tick()

    sim = Simulator(mux)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [(n, c, e) for n, c, e, _ in got] == [(n, c if n != "PE_ATTN" else 1, e) for n, c, e in seq]
    assert [mk for n, _, _, mk in got] == [n == "ROUTER" for n, _, _ in seq]
    assert stub_cycles(0, 3, 1) == 3


def test_unit_mux_rejects_bad_configuration():
    ctx = _ctx()
    with pytest.raises(ConfigError, match="unknown opcode"):
        UnitMux(ctx, {"FROB": lambda c: StubUnit()})
    with pytest.raises(ConfigError, match="two units"):
        UnitMux(ctx, {("LOAD", "KV_PREFETCH"): lambda c: StubUnit(), "LOAD": lambda c: StubUnit()})
    with pytest.raises(ConfigError, match="at least one"):
        UnitMux(ctx, {})
