"""cocotb testbench of the overlay top (:class:`ternopu.hw.overlay.Overlay`) in Verilator.

Design (:class:`OverlayBench`): the Overlay with an HDL HBM model
(:class:`ternopu.sim.hbm_model.HbmModel`) on every AXI port, so a whole run needs no Python per
cycle. The testbench drives the CSRs with cocotbext-axi's ``AxiLiteMaster`` (port ``csr``), loads
programs and data into the HBM models through one host port (``host_sel`` picks the model, one
word per cycle), starts a run and waits for the ``interrupt`` edge (IRQ_ENABLE = done | error)
under a cycle bound (a cocotb ``Timer``), then reads STATUS / ERROR_CODE / ERROR_PC / counters.

Parameters (``TERNOPU_TB_PARAMS``): ``ports``, ``depth`` (words per HBM model), ``read_latency``,
``buf_words``, ``slverr_words`` (the top ``slverr_words`` words of every port answer SLVERR),
``fuzz_programs``, ``fuzz_seed``, ``report`` (JSON file for measured numbers).

Tests: ``normal_program`` (a LOAD/TLMM/ROUTER/SKIP_IF/STORE/NPE/END program runs to done; data
moved through HBM -> scratch -> HBM checked; counters checked), ``illegal_instructions`` (each
decode error class -> its code and pc), ``bad_addresses`` (HBM range, missing port, SLVERR,
buffer range, program outside HBM, misaligned program base), ``reset_mid_run`` (soft reset in
the middle of a long run, then a clean rerun with identical results), ``fuzz`` (random
instruction streams; each must end with done or error within :func:`cycle_bound`).
"""

from __future__ import annotations

import json
import random

from amaranth import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.hw import isa
from ternopu.hw.axi_lite import axi4_lite_signature
from ternopu.hw.csr import CSR_ADDR_BITS
from ternopu.hw.overlay import Overlay
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.sim.hbm_model import HbmModel

__all__ = ["OverlayBench", "cycle_bound", "random_program", "FUZZ_LIMITS"]

#: Cycle time of the testbench clock (ns).
CLK_NS = 4
#: Fuzz programs keep transfers small so that a run's length is bounded (a legal program may
#: move any amount of data): at most this many bursts of at most this many beats per LOAD/STORE.
FUZZ_LIMITS = {"bursts": 4, "burst_len": 8, "len": 16}
#: Watchdog limit used by the fuzz run (cycles).
FUZZ_WATCHDOG = 100


def cycle_bound(n_instr: int, watchdog: int) -> int:
    """Upper bound (cycles) on a fuzz run of ``n_instr`` instructions, from start to interrupt.

    Each instruction can cost at most: fetch (a 16-word chunk, HBM latency + transfer, shared
    with other chunks), a LOAD/STORE of ``4 x 8`` beats one burst at a time (4 x (DMA check 3 +
    latency <= 40 + 8 beats + response 4)) or a stub (< 64 cycles); waits that cannot complete
    end after ``watchdog`` cycles and the drain after at most another ``watchdog``. 400 cycles
    per instruction covers each of these with margin.
    """
    return 2 * watchdog + 400 * (n_instr + 1) + 500


class OverlayBench(wiring.Component):
    """Overlay + one HbmModel per port + host loading port + cycle counter."""

    def __init__(self, *, ports: int = 2, depth: int = 1024, read_latency: int = 10,
                 buf_words: int = 16, slverr_words: int = 32, queue_depth: int = 4,
                 fetch_depth: int = 16):
        self.ports, self.depth = ports, depth
        self.read_latency, self.slverr_words = read_latency, slverr_words
        self.overlay = Overlay(OverlayConfig(hbm_ports=ports), hbm_bytes=depth * 32,
                               queue_depth=queue_depth, fetch_depth=fetch_depth,
                               buf_words=buf_words, max_burst=16, max_outstanding=4)
        super().__init__({
            "csr": In(axi4_lite_signature(CSR_ADDR_BITS)),
            "interrupt": Out(1),
            "host_sel": In(range(max(ports, 2))),
            "host_addr": In(range(depth)), "host_wdata": In(256), "host_we": In(1),
            "host_rdata": Out(256),
            "cycle": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.overlay = ov = self.overlay
        wiring.connect(m, wiring.flipped(self.csr), ov.s_axi_control)
        m.d.comb += self.interrupt.eq(ov.interrupt)
        m.d.sync += self.cycle.eq(self.cycle + 1)
        rdata = 0
        bb = 32
        for k, name in enumerate(ov.config.port_names):
            hbm = HbmModel(self.depth, data_width=256, read_latency=self.read_latency, rate=(1, 1),
                           slverr_range=((self.depth - self.slverr_words) * bb, self.depth * bb))
            m.submodules[f"hbm{k:02d}"] = hbm
            _connect_channel(m, getattr(ov, name), hbm.axi, k * self.depth * bb)
            m.d.comb += [hbm.host.addr.eq(self.host_addr), hbm.host.wdata.eq(self.host_wdata),
                         hbm.host.we.eq(self.host_we & (self.host_sel == k))]
            rdata = Mux(self.host_sel == k, hbm.host.rdata, rdata)
        m.d.comb += self.host_rdata.eq(rdata)
        return m


def _connect_channel(m, master, slave, base):
    """Connect an overlay port to the model of its own pseudo-channel at global address ``base``.

    AXI addresses are global (channel ``k`` at ``k * channel_bytes``, as the U280's HBM address
    map); the bench wires port ``k`` to channel ``k`` only (no switch), so an access through port
    ``k`` outside channel ``k`` lands beyond the model's depth and answers DECERR.
    """
    for (path, flow, mv), (_, _, sv) in zip(master.signature.flatten(master), slave.signature.flatten(slave)):
        src, dst = (mv, sv) if flow.flow == wiring.Flow.Out else (sv, mv)
        if path[-1] == "addr" and path[0] in ("ar", "aw"):
            m.d.comb += dst.eq((src - base)[:len(dst)])
        else:
            m.d.comb += dst.eq(src)


# --------------------------------------------------------------------------------------------
# Program generators (also used by the pytest side)
# --------------------------------------------------------------------------------------------

def _legal_fields(op: isa.OpcodeDef, rng: random.Random) -> dict:
    vals = {}
    for f in op.fields:
        v = rng.randint(f.min, f.max)
        v -= v % f.align
        if v < f.min:
            v += f.align
        if f.name == "bursts":
            v = rng.randint(1, FUZZ_LIMITS["bursts"])
        elif f.name == "burst_len":
            v = rng.randint(1, FUZZ_LIMITS["burst_len"])
        elif f.kind == "addr" or f.name == "stride":
            # mostly inside the bench's HBM (32 KiB per port), sometimes anywhere
            v = rng.choice([rng.randrange(0, 1 << 15, 32), v])
        elif f.name in ("port",):
            v = rng.choice([0, 1, 2, v])
        elif f.name == "nports":
            v = rng.choice([1, 2, v])
        elif f.name == "count":
            v = rng.randint(0, 6)
        elif f.name.endswith("_off"):
            v = rng.choice([0, 32 * rng.randint(0, 15), v])
        vals[f.name] = v
    return vals


def random_program(rng: random.Random, n: int) -> list[int]:
    """``n`` random 256-bit words: mostly legal instructions with random wait/release masks
    (never naming their own unit), some random or corrupted words, often an END somewhere."""
    words = []
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            words.append(rng.getrandbits(256))
        elif r < 0.16:
            words.append(isa.encode(isa.Instruction.make("END")))
        else:
            op = rng.choice(isa.OPCODES)
            own = 1 << int(op.unit)
            wait = rng.getrandbits(6) & ~own if rng.random() < 0.4 else 0
            release = rng.getrandbits(6) & ~own if rng.random() < 0.4 else 0
            w = isa.encode(isa.Instruction(op.name, _legal_fields(op, rng), wait, release))
            if rng.random() < 0.1:
                w ^= 1 << rng.randrange(256)   # a single bit flip: often illegal
            words.append(w)
    return words


# --------------------------------------------------------------------------------------------
# cocotb side
# --------------------------------------------------------------------------------------------

try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
except ImportError:  # pragma: no cover
    cocotb = None

if cocotb is not None:
    from cocotbext.axi import AxiLiteMaster

    from ternopu.hw.csr import REGISTER_BY_NAME as R, counter_offset
    from ternopu.sim.runner import tb_params
    from ternopu.sim.tb.csr import axil_bus

    class TB:
        """Clock, reset, CSR access, HBM loading, run helpers."""

        def __init__(self, dut):
            self.dut = dut
            self.p = tb_params()
            cocotb.start_soon(Clock(dut.clk, CLK_NS, unit="ns").start())
            self.axil = AxiLiteMaster(axil_bus(dut, "csr"), dut.clk, dut.rst,
                                      reset_active_level=True)
            self.cache = {}
            self.axil.write_if.log.setLevel("WARNING")
            self.axil.read_if.log.setLevel("WARNING")

        async def reset(self):
            d = self.dut
            d.host_we.value = 0
            d.host_sel.value = 0
            d.rst.value = 1
            await ClockCycles(d.clk, 4)
            d.rst.value = 0
            await ClockCycles(d.clk, 2)
            await self.write("IRQ_ENABLE", 3)

        async def write(self, reg: str, value: int):
            await self.axil.write(R[reg].offset, int(value).to_bytes(4, "little"))

        async def configure(self, reg: str, value: int):
            """Write a configuration register unless it already holds ``value`` (saves bus time)."""
            if self.cache.get(reg) != value:
                await self.write(reg, value)
                self.cache[reg] = value

        async def read(self, reg: str | int) -> int:
            off = R[reg].offset if isinstance(reg, str) else reg
            r = await self.axil.read(off, 4)
            return int.from_bytes(r.data, "little")

        async def counter(self, name: str) -> int:
            lo = await self.read(counter_offset(name))
            hi = await self.read(counter_offset(name) + 4)
            return hi << 32 | lo

        async def load(self, port: int, addr_words: int, words):
            d = self.dut
            d.host_sel.value = port
            d.host_we.value = 1
            for i, w in enumerate(words):
                d.host_addr.value = addr_words + i
                d.host_wdata.value = w
                await RisingEdge(d.clk)
            d.host_we.value = 0

        async def peek(self, port: int, addr_words: int, n: int) -> list[int]:
            d = self.dut
            d.host_sel.value = port
            out = []
            for i in range(n):
                d.host_addr.value = addr_words + i
                await RisingEdge(d.clk)           # the model registers mem[addr] at this edge
                await Timer(1, unit="ns")
                out.append(int(d.host_rdata.value))
            return out

        async def run(self, words, *, base: int = 0, prog_len: int | None = None,
                      watchdog: int = 5000, bound: int = 100000, load: bool = True,
                      clear: bool = True) -> dict:
            """Load (port 0 at ``base``), start, wait for the interrupt; return the status."""
            if load:
                await self.load(0, base // 32, words)
            await self.configure("PROG_BASE_LO", base & 0xFFFFFFFF)
            await self.configure("PROG_BASE_HI", base >> 32)
            await self.configure("PROG_LEN", len(words) if prog_len is None else prog_len)
            await self.configure("WATCHDOG", watchdog)
            if clear:
                await self.write("CTRL", 4)      # clear counters
            t0 = int(self.dut.cycle.value)
            await self.write("CTRL", 1)          # start
            if not self.dut.interrupt.value:
                await First(RisingEdge(self.dut.interrupt), Timer(bound * CLK_NS, unit="ns"))
            cycles = int(self.dut.cycle.value) - t0
            status = await self.read("STATUS")
            res = {"busy": status & 1, "done": status >> 1 & 1, "error": status >> 2 & 1,
                   "code": isa.ErrorCode.NONE, "pc": 0, "cycles": cycles}
            if res["error"]:
                res["code"] = isa.ErrorCode(await self.read("ERROR_CODE"))
                res["pc"] = await self.read("ERROR_PC")
            else:
                assert await self.read("ERROR_CODE") == 0
            return res

    def _asm_words(asm: isa.Assembler) -> list[int]:
        prog = asm.assemble()
        return [int.from_bytes(prog[i:i + 32], "little") for i in range(0, len(prog), 32)]

    def _normal_program(chan: int, n_tiles: int = 2):
        """LOAD 2 bursts x 4 beats striped over ports 0/1 (channels 0/1, ``chan`` bytes each) ->
        buffer 0; TLMM; STORE -> port 1."""
        a = isa.Assembler()
        for t in range(n_tiles):
            # buffer t % 2 is reused by tile t + 2: its LOAD waits for tile t's STORE
            a.emit("LOAD", hbm_addr=0x4000 + 0x100 * t, port=0, nports=2, bursts=2, burst_len=4,
                   stride=chan + 0x80, dst_buf=t % 2, dst_off=0, release="TLMM",
                   wait="ST" if t >= 2 else 0)
            a.emit("TLMM", rows=1, cols=1, g127=isa.f32_bits(1.0), src_buf=t % 2, wait="LD",
                   release="ST")
            a.emit("STORE", hbm_addr=chan + 0x6000 + 0x100 * t, port=1, nports=1, bursts=1, burst_len=8,
                   stride=0, src_buf=t % 2, src_off=0, wait="TLMM",
                   release="LD" if t + 2 < n_tiles else 0)
        a.emit("ROUTER", layer=1, block=isa.Block.ATTN, dim=1, threshold=isa.f32_bits(1.0),
               release="CTRL")
        a.emit("SKIP_IF", layer=1, block=isa.Block.ATTN, sense=1, count="skip", wait="PE")
        a.emit("NPE", subop=isa.NpeOp.SOFTMAX, length=4)   # skipped (stub router says skip)
        a.label("skip")
        a.emit("NPE", subop=isa.NpeOp.RMSNORM, length=4)
        a.emit("END")
        return _asm_words(a)

    async def _check_normal(tb, res, words, n_tiles=2):
        assert res["done"] and not res["error"] and not res["busy"], res
        # data: tile t = 8 words: burst 0 (port 0, 4 words at 0x4000+0x100t), burst 1 (port 1,
        # at +0x80) -> stored contiguously on port 1 at 0x6000 + 0x100t
        for t in range(n_tiles):
            a = (0x4000 + 0x100 * t) // 32
            exp = await tb.peek(0, a, 4) + await tb.peek(1, a + 4, 4)
            got = await tb.peek(1, (0x6000 + 0x100 * t) // 32, 8)
            assert got == exp, f"tile {t}: stored data differs"
        c = {n: await tb.counter(n) for n in
             ("CYCLES", "LD_BUSY", "ST_BUSY", "TLMM_BUSY", "PE_BUSY", "NPE_BUSY", "CTRL_BUSY",
              "LD_STALL", "TLMM_STALL", "ST_STALL", "CTRL_STALL",
              "HBM_RD_P0", "HBM_RD_P1", "HBM_WR_P0", "HBM_WR_P1")}
        assert c["HBM_RD_P0"] == 32 * (len(words) + 4 * n_tiles), c
        assert c["HBM_RD_P1"] == 32 * 4 * n_tiles, c
        assert c["HBM_WR_P1"] == 32 * 8 * n_tiles and c["HBM_WR_P0"] == 0, c
        assert c["CTRL_BUSY"] == len(words), c          # every word passed once (skips too)
        for u in ("LD", "ST", "TLMM", "CTRL"):
            assert c[f"{u}_BUSY"] + c.get(f"{u}_STALL", 0) <= c["CYCLES"], (u, c)
        assert c["TLMM_BUSY"] > 0 and c["PE_BUSY"] > 0 and c["NPE_BUSY"] > 0
        assert abs(c["CYCLES"] - res["cycles"]) < 20, (c["CYCLES"], res["cycles"])
        return c

    async def _fill_data(tb):
        rng = random.Random(5)
        for port in range(tb.p.get("ports", 2)):
            await tb.load(port, 0x4000 // 32, [rng.getrandbits(256) for _ in range(64)])

    @cocotb.test()
    async def normal_program(dut):
        tb = TB(dut)
        await tb.reset()
        await _fill_data(tb)
        words = _normal_program(tb.p["depth"] * 32)
        res = await tb.run(words)
        c = await _check_normal(tb, res, words)
        dut._log.info(f"normal program: {res['cycles']} cycles, counters {c}")
        out = tb.p.get("report")
        if out:
            with open(out, "w") as f:
                json.dump({"normal_program": {"cycles": res["cycles"], "counters": c}}, f, indent=1)

    @cocotb.test()
    async def illegal_instructions(dut):
        tb = TB(dut)
        await tb.reset()
        nop = isa.encode(isa.Instruction.make("NOP"))
        end = isa.encode(isa.Instruction.make("END"))
        good = isa.encode(isa.Instruction.make("LOAD", hbm_addr=0, bursts=1, burst_len=1))
        offs = isa.OPCODE_BY_NAME["LOAD"].offsets()
        bad = {
            isa.ErrorCode.ILLEGAL_OPCODE: 0x7F,
            isa.ErrorCode.RESERVED_BITS: good | 1 << 255,
            isa.ErrorCode.FIELD_RANGE: good | 511 << offs["burst_len"][0],  # burst_len > 256
            isa.ErrorCode.MISALIGNED: good | 1 << (offs["stride"][0] + 3),
            isa.ErrorCode.DEPENDENCY: good | 1 << (offs["release"][0] + int(isa.Unit.LD)),
        }
        for code, w in bad.items():
            assert isa.check_word(w) == code, code
            res = await tb.run([nop, nop, w, end])
            assert res["error"] and not res["done"] and not res["busy"], (code, res)
            assert (res["code"], res["pc"]) == (code, 2), (code, res)
        # zeroed memory after the program: PC runs into opcode 0
        res = await tb.run([nop, 0], prog_len=2)
        assert (res["code"], res["pc"]) == (isa.ErrorCode.ILLEGAL_OPCODE, 1), res
        res = await tb.run([nop, nop])
        assert (res["code"], res["pc"]) == (isa.ErrorCode.PC_RANGE, 2), res

    @cocotb.test()
    async def bad_addresses(dut):
        tb = TB(dut)
        await tb.reset()
        p = tb.p
        hbm_bytes = p["depth"] * 32            # one channel; channel k at k * hbm_bytes
        total = hbm_bytes * p["ports"]
        end = isa.encode(isa.Instruction.make("END"))
        nop = isa.encode(isa.Instruction.make("NOP"))

        def one(op, **kw):
            base = dict(hbm_addr=0, bursts=1, burst_len=1)
            base.update(kw)
            return [nop, isa.encode(isa.Instruction.make(op, **base)), end]

        cases = [
            (one("LOAD", hbm_addr=total), isa.ErrorCode.HBM_RANGE, 1),
            (one("LOAD", hbm_addr=total - 64, port=p["ports"] - 1, burst_len=3), isa.ErrorCode.HBM_RANGE, 1),
            (one("STORE", hbm_addr=0x100, port=p["ports"]), isa.ErrorCode.HBM_RANGE, 1),
            (one("LOAD", hbm_addr=0x100, nports=2, bursts=3, stride=hbm_bytes), isa.ErrorCode.HBM_RANGE, 1),
            (one("LOAD", hbm_addr=hbm_bytes - 32), isa.ErrorCode.AXI_RESP, 1),          # SLVERR
            (one("STORE", hbm_addr=2 * hbm_bytes - 64, port=1), isa.ErrorCode.AXI_RESP, 1),
            (one("LOAD", hbm_addr=hbm_bytes, port=0), isa.ErrorCode.AXI_RESP, 1),       # not on port 0
            (one("LOAD", dst_off=32 * p["buf_words"]), isa.ErrorCode.BUF_RANGE, 1),
            (one("STORE", burst_len=p["buf_words"] + 1), isa.ErrorCode.BUF_RANGE, 1),
        ]
        for words, code, pc in cases:
            res = await tb.run(words)
            assert res["error"] and (res["code"], res["pc"]) == (code, pc), (code, res)
        # program outside HBM (its first chunk ends beyond the model) and misaligned base
        res = await tb.run([nop, end], base=total - 32, prog_len=20, load=False)
        assert (res["code"], res["pc"]) == (isa.ErrorCode.HBM_RANGE, 0), res
        res = await tb.run([end], base=16, load=False)
        assert (res["code"], res["pc"]) == (isa.ErrorCode.PROG_ALIGN, 0), res
        res = await tb.run([end], base=1 << 33, load=False)
        assert (res["code"], res["pc"]) == (isa.ErrorCode.HBM_RANGE, 0), res
        # the machine still works
        await _fill_data(tb)
        words = _normal_program(tb.p["depth"] * 32)
        await _check_normal(tb, await tb.run(words), words)

    @cocotb.test()
    async def reset_mid_run(dut):
        tb = TB(dut)
        await tb.reset()
        await _fill_data(tb)
        words = _normal_program(tb.p["depth"] * 32, n_tiles=6)
        first = await tb.run(words)
        ref = await _check_normal(tb, first, words, n_tiles=6)
        # start again and soft-reset in the middle of the layer
        await tb.write("CTRL", 4)
        await tb.write("CTRL", 1)
        await ClockCycles(dut.clk, first["cycles"] // 2)
        assert (await tb.read("STATUS")) & 1, "should be busy mid-run"
        await tb.write("CTRL", 2)                      # soft reset
        for _ in range(200):
            if not (await tb.read("STATUS")) & 1:
                break
        status = await tb.read("STATUS")
        assert status == 0, f"after soft reset STATUS = {status:#x} (busy/done/error)"
        # clean rerun: same results, same cycle count, same counters
        again = await tb.run(words, load=False)
        c = await _check_normal(tb, again, words, n_tiles=6)
        assert again["cycles"] == first["cycles"] or abs(again["cycles"] - first["cycles"]) < 8
        assert {k: c[k] for k in c if k != "CYCLES"} == {k: ref[k] for k in ref if k != "CYCLES"}

    @cocotb.test()
    async def fuzz(dut):
        tb = TB(dut)
        await tb.reset()
        p = tb.p
        rng = random.Random(p.get("fuzz_seed", 1))
        n_prog = p.get("fuzz_programs", 200)
        stats = {"done": 0, "error": {}, "max_cycles": 0, "max_ratio": 0.0}
        for k in range(n_prog):
            n = rng.randint(1, FUZZ_LIMITS["len"])
            words = random_program(rng, n)
            bound = cycle_bound(n, FUZZ_WATCHDOG)
            res = await tb.run(words, watchdog=FUZZ_WATCHDOG, bound=bound, clear=False)
            assert not res["busy"] and res["done"] + res["error"] == 1, (k, res)
            assert res["cycles"] <= bound, (k, res, bound)
            if res["error"]:
                assert res["code"] != isa.ErrorCode.NONE and res["pc"] <= n, (k, res)
                stats["error"][res["code"].name] = stats["error"].get(res["code"].name, 0) + 1
                first_bad = next((i for i, w in enumerate(words) if isa.check_word(w)), None)
                if res["code"] in isa.DECODE_ERRORS:
                    assert res["pc"] == first_bad or (first_bad is not None and res["pc"] > first_bad), (k, res)
                    assert res["code"] == isa.check_word(words[res["pc"]]), (k, res)
            else:
                assert res["code"] == isa.ErrorCode.NONE
                stats["done"] += 1
            stats["max_cycles"] = max(stats["max_cycles"], res["cycles"])
            stats["max_ratio"] = max(stats["max_ratio"], res["cycles"] / bound)
        dut._log.info(f"fuzz: {json.dumps(stats)}")
        out = p.get("report")
        if out:
            with open(out, "w") as f:
                json.dump({"fuzz": stats}, f, indent=1)
