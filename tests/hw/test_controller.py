"""Controller tests in the Amaranth simulator: Controller + five StubUnits + an HDL program memory.

One design is elaborated once per module (elaboration dominates the cost); a module fixture runs
every scenario in one simulation, one after another (each with its own program, written into the
program memory by the testbench, and its own ``start``), records what happened and the tests
assert on the records. Per scenario the record holds: end status (done / error, code, pc), the
cycle count, every unit's (pc, issue cycle, completion cycle) and the controller's counters.
"""

from __future__ import annotations

import pytest
from amaranth import Module, ResetInserter, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from ternopu.golden.errors import ConfigError
from ternopu.hw import isa
from ternopu.hw.controller import Controller, fetch_error_code
from ternopu.hw.dma import DMA_ERR_RANGE, DMA_ERR_SLVERR, DmaParams
from ternopu.hw.isa import Assembler, Block, ErrorCode, Unit, f32_bits
from ternopu.hw.unit_port import (ENGINE_UNITS, DmaReadClientSignature, StubUnit, router_stub_bit,
                                  stub_cycles)

PROG_WORDS = 64
LATENCY = 6
#: (lo, span) of each stub, in Unit order LD, ST, TLMM, PE, NPE.
STUBS = {Unit.LD: (3, 8), Unit.ST: (2, 4), Unit.TLMM: (6, 8), Unit.PE: (3, 4), Unit.NPE: (1, 2)}


class ProgramMemory(wiring.Component):
    """Answers read-DMA client commands from a word memory (fixed latency, range check, SLVERR).

    A command (addr, beats) whose end lies beyond the memory completes with DMA_ERR_RANGE and no
    data; otherwise ``LATENCY`` cycles later the words stream out (one per cycle when taken),
    then the completion: DMA_ERR_SLVERR if the word index ``slverr_word`` was among them.
    """

    def __init__(self, p: DmaParams, words: int):
        self.words = words
        super().__init__({"client": In(DmaReadClientSignature(p)), "slverr_word": In(32)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(256), depth=self.words, init=[])
        self.mem = mem
        rp = mem.read_port(domain="comb")
        c = self.client
        addr = Signal(32)
        left = Signal(21)
        wait = Signal(8)
        code = Signal(3)
        m.d.comb += rp.addr.eq(addr)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += c.cmd.ready.eq(1)
                with m.If(c.cmd.valid):
                    pl = c.cmd.payload
                    m.d.sync += [addr.eq(pl.addr >> 5), left.eq(pl.beats), wait.eq(LATENCY), code.eq(0)]
                    with m.If((pl.addr >> 5) + pl.beats > self.words):
                        m.d.sync += code.eq(DMA_ERR_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 1):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [c.data.valid.eq(1), c.data.payload.data.eq(rp.data),
                             c.data.payload.last.eq(left == 1)]
                with m.If(c.data.ready):
                    with m.If(addr == self.slverr_word):
                        m.d.sync += code.eq(DMA_ERR_SLVERR)
                    m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [c.done.valid.eq(1), c.done.payload.eq(code)]
                with m.If(c.done.ready):
                    m.next = "IDLE"
        return m


class Bench(wiring.Component):
    def __init__(self):
        p = DmaParams(data_width=256, mem_bytes=PROG_WORDS * 32)
        self.ctrl = Controller(p, queue_depth=4, fetch_depth=8)
        self.pm = ProgramMemory(p, PROG_WORDS)
        self.stubs = {u: StubUnit(*STUBS[u], router=(u == Unit.PE)) for u in ENGINE_UNITS}
        super().__init__({"dummy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.ctrl = ctrl = self.ctrl
        m.submodules.pm = self.pm
        wiring.connect(m, ctrl.fetch, self.pm.client)
        for i, u in enumerate(ENGINE_UNITS):
            s = self.stubs[u]
            m.submodules[f"stub_{u.name.lower()}"] = ResetInserter(ctrl.unit_reset)(s)
            wiring.connect(m, ctrl.units[i], s.ctl)
            if u == Unit.PE:
                wiring.connect(m, s.mask, ctrl.mask)
        return m


# --------------------------------------------------------------------------------------------
# Scenarios: name -> (program words, options)
# --------------------------------------------------------------------------------------------

def _words(asm_or_words):
    if isinstance(asm_or_words, Assembler):
        prog = asm_or_words.assemble()
        return [int.from_bytes(prog[i:i + 32], "little") for i in range(0, len(prog), 32)]
    return list(asm_or_words)


def _overlap_program():
    """Double-buffered pipeline: LD i releases TLMM; TLMM i releases ST and (for i+2) LD."""
    n = 4
    b = Assembler()
    for i in range(n):
        b.emit("LOAD", hbm_addr=0, bursts=1, burst_len=1, wait="TLMM" if i >= 2 else 0,
               release="TLMM")
        b.emit("TLMM", rows=1, cols=1, g127=f32_bits(1.0), wait="LD",
               release="ST|LD" if i + 2 < n else "ST")
        b.emit("STORE", hbm_addr=0, bursts=1, burst_len=1, wait="TLMM")
    b.emit("NPE", subop=isa.NpeOp.SILU, length=1)
    b.emit("END")
    return b


def _skip_program(threshold: float):
    a = Assembler()
    a.emit("ROUTER", layer=3, block=Block.FFN, dim=1, threshold=f32_bits(threshold), release="CTRL")
    a.emit("SKIP_IF", layer=3, block=Block.FFN, sense=1, count="skip_end", wait="PE")
    a.emit("TLMM", rows=1, cols=1, g127=f32_bits(1.0))
    a.emit("NPE", subop=0, length=1)
    a.label("skip_end")
    a.emit("STORE", hbm_addr=0, bursts=1, burst_len=1)
    a.emit("END")
    return a


def _sync_program():
    a = Assembler()
    a.emit("TLMM", rows=1, cols=1, g127=f32_bits(1.0))
    a.emit("LOAD", hbm_addr=0, bursts=1, burst_len=1)
    a.emit("SYNC", queues=(1 << Unit.TLMM) | (1 << Unit.LD))
    a.emit("NPE", subop=0, length=1)
    a.emit("END")
    return a


_LOAD_DEF = isa.OPCODE_BY_NAME["LOAD"]


def _bad_words():
    """One illegal word per decode error class (and the check_word code it must give)."""
    good_load = isa.encode(isa.Instruction.make("LOAD", hbm_addr=0, bursts=1, burst_len=1))
    offs = _LOAD_DEF.offsets()
    res_lsb = offs["reserved"][0]
    out = {
        ErrorCode.ILLEGAL_OPCODE: 0xEE,
        ErrorCode.RESERVED_BITS: good_load | 1 << res_lsb,
        ErrorCode.FIELD_RANGE: good_load & ~(((1 << 16) - 1) << offs["bursts"][0]),  # bursts = 0
        ErrorCode.MISALIGNED: good_load | 8 << offs["hbm_addr"][0],
        ErrorCode.DEPENDENCY: good_load | 1 << (offs["wait"][0] + int(Unit.LD)),
    }
    for code, w in out.items():
        assert isa.check_word(w) == code, code
    return out


def _end():
    return isa.encode(isa.Instruction.make("END"))


def _nop(**kw):
    return isa.encode(isa.Instruction.make("NOP", **kw))


SCENARIOS: dict[str, dict] = {}


def _scenario(name, words, **opts):
    SCENARIOS[name] = {"words": _words(words), **opts}


_scenario("overlap", _overlap_program())
_scenario("skip_taken", _skip_program(1.0))       # 0 < 1.0 -> bit 1 -> skip
_scenario("skip_not_taken", _skip_program(-1.0))  # bit 0 -> run
_scenario("sync", _sync_program())
_scenario("end_waits", [isa.encode(isa.Instruction.make("TLMM", rows=1, cols=1, g127=f32_bits(1.0))),
                        _end()])
for _code, _w in _bad_words().items():
    _scenario(f"decode_{_code.name}", [_nop(), _nop(), _w, _end()])
_scenario("unit_error", _words(_sync_program()), fail=(Unit.TLMM, 0, ErrorCode.SHAPE))
_scenario("unit_error_ld", _words(_sync_program()), fail=(Unit.LD, 1, ErrorCode.HBM_RANGE))
_scenario("pc_range", [_nop(), _nop()])
_scenario("pc_range_zero", [], prog_len=0)
_scenario("pc_range_skip", _words(_skip_program(1.0))[:3])  # SKIP_IF jumps past the end
_scenario("watchdog_tokens", [isa.encode(isa.Instruction.make("NPE", subop=0, length=1, wait="TLMM")),
                              _end()], watchdog=40)
_scenario("watchdog_hang", _words(_sync_program()), hang=(Unit.LD, 1), watchdog=50)
_scenario("drain_timeout", _words(_sync_program()), hang=(Unit.LD, 1), deaf=True, watchdog=30)
_scenario("after_drain_timeout", _words(_sync_program()), rerun_after="drain_timeout")
_scenario("token_overflow", [_nop(release="LD")] * 16 + [_end()])
_scenario("token_max_ok", [_nop(release="LD")] * 15 + [_end()])
_scenario("prog_align", [_end()], base=16)
_scenario("fetch_range", [_nop()] * 6, prog_len=8, base=(PROG_WORDS - 6) * 32)
_scenario("fetch_slverr", [_nop()] * 9 + [_end()], slverr=5)
_scenario("rerun_after_error", _words(_overlap_program()), rerun_after="watchdog_hang")
_scenario("soft_reset_midrun", _words(_overlap_program()), soft_reset_at=30)


def _run_all():
    bench = Bench()
    ctrl = bench.ctrl
    sim = Simulator(bench)
    sim.add_clock(1e-8)
    results: dict[str, dict] = {}
    events: list = []   # (kind, unit, pc, cycle)
    cycle = [0]

    async def monitor(ctx):
        async for _clk, _rst, *vals in ctx.tick().sample(
                *[ctrl.units[i].cmd.valid for i in range(5)], *[ctrl.units[i].cmd.ready for i in range(5)],
                *[ctrl.units[i].cmd.payload.pc for i in range(5)],
                *[ctrl.units[i].done.valid for i in range(5)]):
            cycle[0] += 1
            v, r, pcs, dn = vals[0:5], vals[5:10], vals[10:15], vals[15:20]
            for i in range(5):
                if v[i] and r[i]:
                    events.append(("issue", ENGINE_UNITS[i], pcs[i], cycle[0]))
                if dn[i]:
                    events.append(("done", ENGINE_UNITS[i], None, cycle[0]))

    async def tb(ctx):
        mem = bench.pm.mem
        order = list(SCENARIOS)
        # the rerun scenario goes right after the scenario it follows
        for name in list(order):
            after = SCENARIOS[name].get("rerun_after")
            if after:
                order.remove(name)
                order.insert(order.index(after) + 1, name)
        for name in order:
            sc = SCENARIOS[name]
            words = sc["words"]
            base_words = sc.get("base", 0) // 32
            for i in range(PROG_WORDS):
                ctx.set(mem.data[i], 0)
            for i, w in enumerate(words):
                ctx.set(mem.data[base_words + i], w)
            for s in bench.stubs.values():
                ctx.set(s.fail_en, 0)
                ctx.set(s.hang_en, 0)
                ctx.set(s.deaf, sc.get("deaf", 0))
            if "fail" in sc:
                u, pc, code = sc["fail"]
                ctx.set(bench.stubs[u].fail_en, 1)
                ctx.set(bench.stubs[u].fail_pc, pc)
                ctx.set(bench.stubs[u].fail_code, code)
            if "hang" in sc:
                u, pc = sc["hang"]
                ctx.set(bench.stubs[u].hang_en, 1)
                ctx.set(bench.stubs[u].hang_pc, pc)
            ctx.set(bench.pm.slverr_word, sc.get("slverr", 1 << 31))
            ctx.set(ctrl.prog_base, sc.get("base", 0))
            ctx.set(ctrl.prog_len, sc.get("prog_len", len(words)))
            ctx.set(ctrl.watchdog, sc.get("watchdog", 2000))
            first_event = len(events)
            ctx.set(ctrl.start, 1)
            await ctx.tick()
            ctx.set(ctrl.start, 0)
            t0 = cycle[0]
            rec = {"busy": 0, "stall": [0] * 6, "busy_u": [0] * 6, "done": 0, "error": 0,
                   "pulses": 0}
            n = 0
            while True:
                # values of the cycle that ends with the next edge (what the CSR block sums)
                if ctx.get(ctrl.done) or ctx.get(ctrl.error):
                    rec["pulses"] += 1
                    rec["done"] = ctx.get(ctrl.done)
                    rec["error"] = ctx.get(ctrl.error)
                    rec["code"] = ErrorCode(ctx.get(ctrl.error_code))
                    rec["pc"] = ctx.get(ctrl.error_pc)
                if not ctx.get(ctrl.busy):
                    break
                rec["busy"] += ctx.get(ctrl.cnt_cycles)
                for u in range(6):
                    rec["stall"][u] += ctx.get(ctrl.cnt_stall) >> u & 1
                    rec["busy_u"][u] += ctx.get(ctrl.cnt_busy) >> u & 1
                if n == sc.get("soft_reset_at", -1):
                    ctx.set(ctrl.soft_reset, 1)
                await ctx.tick()
                ctx.set(ctrl.soft_reset, 0)
                n += 1
                assert n < 5000, f"{name}: no end after 5000 cycles"
            rec["cycles"] = cycle[0] - t0
            rec["events"] = events[first_event:]
            rec["pc_end"] = ctx.get(ctrl.pc)
            rec["bitmask"] = ctx.get(ctrl.bitmask)
            for _ in range(3):
                await ctx.tick()
            results[name] = rec

    sim.add_testbench(monitor, background=True)
    sim.add_testbench(tb)
    sim.run()
    return results


@pytest.fixture(scope="module")
def runs():
    return _run_all()


def _intervals(rec):
    """[(unit, pc, issue_cycle, done_cycle)] from the event list (one instruction at a time)."""
    open_, out = {}, []
    for kind, u, pc, cyc in rec["events"]:
        if kind == "issue":
            open_[u] = (pc, cyc)
        else:
            pc0, c0 = open_.pop(u)
            out.append((u, pc0, c0, cyc))
    assert not open_, f"instructions never completed: {open_}"
    return out


def _check_tokens(words, ivals):
    """Every wait is satisfied by a matching earlier release (token counting replay)."""
    instrs = [isa.decode(w) for w in words]
    start = {pc: c for _u, pc, c, _d in ivals}
    done = {pc: d for _u, pc, _c, d in ivals}
    # for each (p, c) pair: k-th wait of c must start after the k-th release of p completed
    for p in Unit:
        for c in Unit:
            if p == c or Unit.CTRL in (p, c):
                continue
            rel = sorted(done[pc] for pc, ins in enumerate(instrs)
                         if ins.unit == p and ins.release >> c & 1 and pc in done)
            waits = sorted(start[pc] for pc, ins in enumerate(instrs)
                           if ins.unit == c and ins.wait >> p & 1 and pc in start)
            for k, w in enumerate(waits):
                assert k < len(rel) and rel[k] < w, (p, c, k, rel, waits)


def test_overlap_obeys_tokens_and_overlaps(runs):
    rec = runs["overlap"]
    assert rec["done"] and not rec["error"] and rec["pulses"] == 1
    ivals = _intervals(rec)
    words = SCENARIOS["overlap"]["words"]
    assert len(ivals) == len(words) - 1  # everything but END ran
    _check_tokens(words, ivals)
    # in-order per unit
    for u in ENGINE_UNITS:
        pcs = [pc for uu, pc, _c, _d in ivals if uu == u]
        assert pcs == sorted(pcs)
    # stub timing: busy exactly stub_cycles
    for u, pc, c0, c1 in ivals:
        assert c1 - c0 == stub_cycles(pc, *STUBS[u]), (u, pc)
    # overlap: some cycle has LD and TLMM (or TLMM and ST) executing at once
    def busy_at(u, t):
        return any(uu == u and c0 < t <= c1 for uu, _pc, c0, c1 in ivals)
    span = range(min(c for *_x, c, _d in ivals), max(d for *_x, d in ivals))
    assert any(busy_at(Unit.LD, t) and busy_at(Unit.TLMM, t) for t in span)
    assert any(busy_at(Unit.TLMM, t) and busy_at(Unit.ST, t) for t in span)
    # counters: busy cycles per unit = sum of stub cycles
    for u in ENGINE_UNITS:
        assert rec["busy_u"][u] == sum(c1 - c0 for uu, _p, c0, c1 in ivals if uu == u)
        assert rec["busy_u"][u] + rec["stall"][u] <= rec["busy"]
    assert rec["busy_u"][Unit.CTRL] == len(words)  # every word passed once
    assert rec["busy_u"][Unit.CTRL] + rec["stall"][Unit.CTRL] <= rec["busy"]
    assert rec["stall"][Unit.TLMM] > 0  # TLMM waited for loads


def test_skip_if_taken(runs):
    rec = runs["skip_taken"]
    assert rec["done"] and not rec["error"]
    ran = {u for u, *_ in _intervals(rec)}
    assert ran == {Unit.PE, Unit.ST}, ran
    assert rec["bitmask"] >> (2 * 3 + Block.FFN) & 1 == router_stub_bit(f32_bits(1.0)) == 1


def test_skip_if_not_taken(runs):
    rec = runs["skip_not_taken"]
    assert rec["done"] and not rec["error"]
    ran = {u for u, *_ in _intervals(rec)}
    assert ran == {Unit.PE, Unit.TLMM, Unit.NPE, Unit.ST}, ran
    assert rec["bitmask"] == 0


def test_sync_waits_for_named_queues(runs):
    rec = runs["sync"]
    assert rec["done"]
    iv = {u: (c0, c1) for u, _pc, c0, c1 in _intervals(rec)}
    assert iv[Unit.NPE][0] >= max(iv[Unit.TLMM][1], iv[Unit.LD][1])


def test_end_waits_for_all_units(runs):
    rec = runs["end_waits"]
    assert rec["done"] and rec["pulses"] == 1
    (_u, _pc, c0, c1), = _intervals(rec)
    assert rec["cycles"] > c1 - c0


@pytest.mark.parametrize("code", [ErrorCode.ILLEGAL_OPCODE, ErrorCode.RESERVED_BITS,
                                  ErrorCode.FIELD_RANGE, ErrorCode.MISALIGNED, ErrorCode.DEPENDENCY])
def test_decode_errors_stop_with_code_and_pc(runs, code):
    rec = runs[f"decode_{code.name}"]
    assert rec["error"] and not rec["done"] and rec["pulses"] == 1
    assert rec["code"] == code and rec["pc"] == 2


def test_unit_error_reports_unit_code_and_pc(runs):
    rec = runs["unit_error"]
    assert rec["error"] and rec["code"] == ErrorCode.SHAPE and rec["pc"] == 0
    rec = runs["unit_error_ld"]
    assert rec["error"] and rec["code"] == ErrorCode.HBM_RANGE and rec["pc"] == 1
    # nothing after the SYNC ran
    assert Unit.NPE not in {u for u, *_ in _intervals(rec)}


def test_pc_range(runs):
    assert (runs["pc_range"]["code"], runs["pc_range"]["pc"]) == (ErrorCode.PC_RANGE, 2)
    assert (runs["pc_range_zero"]["code"], runs["pc_range_zero"]["pc"]) == (ErrorCode.PC_RANGE, 0)
    assert (runs["pc_range_skip"]["code"], runs["pc_range_skip"]["pc"]) == (ErrorCode.PC_RANGE, 3)


def test_watchdog_on_unsatisfiable_wait(runs):
    rec = runs["watchdog_tokens"]
    assert rec["error"] and rec["code"] == ErrorCode.WATCHDOG and rec["pc"] == 0
    assert rec["cycles"] < 40 + 30


def test_watchdog_on_hung_unit_and_abort(runs):
    rec = runs["watchdog_hang"]
    assert rec["error"] and rec["code"] == ErrorCode.WATCHDOG and rec["pc"] == 1
    assert rec["cycles"] < 200


def test_drain_timeout_resets_a_deaf_unit(runs):
    rec = runs["drain_timeout"]
    # watchdog after 30 idle cycles, drain gives up after 30 more, unit slots reset
    assert rec["error"] and rec["code"] == ErrorCode.WATCHDOG and rec["pc"] == 1
    assert rec["cycles"] < 30 + 30 + 40
    nxt = runs["after_drain_timeout"]
    assert nxt["done"] and not nxt["error"]
    assert [(k, u, pc) for k, u, pc, _ in nxt["events"]] == \
        [(k, u, pc) for k, u, pc, _ in runs["sync"]["events"]]


def test_token_overflow(runs):
    rec = runs["token_overflow"]
    assert rec["error"] and rec["code"] == ErrorCode.TOKEN_OVERFLOW and rec["pc"] == 15
    assert runs["token_max_ok"]["done"] and not runs["token_max_ok"]["error"]


def test_prog_align(runs):
    rec = runs["prog_align"]
    assert rec["error"] and rec["code"] == ErrorCode.PROG_ALIGN and rec["pc"] == 0


def test_fetch_errors(runs):
    rec = runs["fetch_range"]
    # chunk 0 (pcs 0..3) is inside the memory and runs; chunk 1 (pcs 4..7) ends beyond it
    assert rec["error"] and rec["code"] == ErrorCode.HBM_RANGE and rec["pc"] == 4
    rec = runs["fetch_slverr"]
    assert rec["error"] and rec["code"] == ErrorCode.AXI_RESP and rec["pc"] == 4
    assert fetch_error_code(DMA_ERR_RANGE) == ErrorCode.HBM_RANGE


def test_clean_rerun_after_error(runs):
    a, b = runs["overlap"], runs["rerun_after_error"]
    assert b["done"] and not b["error"]
    assert [(k, u, pc) for k, u, pc, _ in a["events"]] == [(k, u, pc) for k, u, pc, _ in b["events"]]
    assert a["cycles"] == b["cycles"]


def test_soft_reset_mid_run(runs):
    rec = runs["soft_reset_midrun"]
    assert rec["pulses"] == 0 and rec["cycles"] < runs["overlap"]["cycles"]


def test_config_errors():
    with pytest.raises(ConfigError, match="queue_depth"):
        Controller(queue_depth=1)
    with pytest.raises(ConfigError, match="fetch_depth"):
        Controller(fetch_depth=1)
    with pytest.raises(ConfigError, match="256 bits"):
        Controller(DmaParams(data_width=512))
    with pytest.raises(ConfigError, match="span"):
        StubUnit(1, 3)
    with pytest.raises(ConfigError, match="lo"):
        StubUnit(0, 1)


def test_stub_helpers():
    assert router_stub_bit(f32_bits(0.5)) == 1
    assert router_stub_bit(f32_bits(-0.5)) == 0
    assert router_stub_bit(f32_bits(0.0)) == 0
    assert router_stub_bit(f32_bits(-0.0)) == 0
    assert router_stub_bit(0x7FC00000) == 0   # NaN
    assert router_stub_bit(0x7F800000) == 1   # +inf
    assert all(3 <= stub_cycles(pc, 3, 8) < 11 for pc in range(100))
    assert len({stub_cycles(pc, 3, 8) for pc in range(100)}) == 8


def test_overlay_config_errors():
    from ternopu.hw.overlay import Overlay, StoreUnit
    from ternopu.hw.overlay_config import OverlayConfig

    with pytest.raises(ConfigError, match="256-bit HBM ports"):
        Overlay(OverlayConfig(hbm_ports=2, axi_data_bits=512))
    with pytest.raises(ConfigError, match="buf_words"):
        Overlay(OverlayConfig(hbm_ports=2), buf_words=0)
    with pytest.raises(ConfigError, match="no unit slot"):
        Overlay(OverlayConfig(hbm_ports=2), units={Unit.CTRL: StoreUnit})
    with pytest.raises(ConfigError, match="no 'ctl' unit port"):
        Overlay(OverlayConfig(hbm_ports=2), units={Unit.NPE: lambda ctx: ProgramMemory(ctx.dma, 4)})


def test_overlay_slots_are_drop_in():
    """A factory's component replaces a stub; its optional members decide the wiring."""
    from ternopu.hw.overlay import LoadUnit, Overlay
    from ternopu.hw.overlay_config import OverlayConfig

    ov = Overlay(OverlayConfig(hbm_ports=2), units={Unit.TLMM: lambda ctx: StubUnit(2, 1)})
    assert isinstance(ov.slots[Unit.TLMM], StubUnit) and ov.slots[Unit.TLMM].lo == 2
    assert isinstance(ov.slots[Unit.LD], LoadUnit)
    assert "mask" in ov.slots[Unit.PE].signature.members
    assert set(ov.signature.members) == {"s_axi_control", "interrupt", "m_axi_hbm00", "m_axi_hbm01"}
