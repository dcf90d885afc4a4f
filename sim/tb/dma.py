"""cocotb testbenches of the burst DMAs (:mod:`ternopu.hw.dma`) in Verilator.

Two designs:

- :class:`ternopu.hw.dma.DmaPort` alone, its AXI port served by cocotbext-axi's ``AxiRam``
  (Python) with random pauses on all five channels and random stalls on the DMA's own streams
  (test ``axiram_random_traffic``). The same command sequence runs with and without pauses; the
  read data, completion codes and final memory must be identical.
- :class:`DmaBench`: a DmaPort + :class:`ternopu.sim.hbm_model.HbmModel` + an HDL pattern source
  (write data), an HDL checksum sink (read data) and cycle counters, all in one Verilated design.
  Python loads memory through the host port, sends one command, waits for the completion edge
  and reads the counters: no Python in the per-cycle loop (test ``hbm_bench``).

Read data check in :class:`DmaBench`: ``checksum = rotl1(checksum) ^ word`` over the words in
order (:func:`checksum_of`); write data: word ``i`` of a command has 32-bit lane ``j`` equal to
``(seed + 16*i + j) mod 2**32`` (:func:`pattern_word`).
"""

from __future__ import annotations

import json
import random

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.hw.axi import cocotb_signal_map, split_bursts
from ternopu.hw.dma import ERR_WIDTH, DmaParams, DmaPort
from ternopu.sim.hbm_model import HbmModel, HostPortSignature

__all__ = ["DmaBench", "checksum_of", "pattern_word"]


def _rotl1(x: int, width: int) -> int:
    return ((x << 1) | (x >> (width - 1))) & ((1 << width) - 1)


def checksum_of(words, width: int) -> int:
    """The checksum :class:`DmaBench` accumulates over read words (see module doc)."""
    cs = 0
    for w in words:
        cs = _rotl1(cs, width) ^ w
    return cs


def pattern_word(seed: int, i: int, width: int) -> int:
    """Word ``i`` of :class:`DmaBench`'s write pattern (32-bit lanes, see module doc)."""
    lanes = width // 32
    return sum(((seed + lanes * i + j) & 0xFFFFFFFF) << (32 * j) for j in range(lanes))


class DmaBench(wiring.Component):
    """DmaPort + HbmModel + data source/sink + counters, for throughput runs without Python.

    Parameters
    ----------
    params : DmaParams
        DMA parameters (``data_width`` a multiple of 32).
    depth : int
        Model memory depth in words.
    hbm_kw : dict
        Further :class:`HbmModel` arguments (``read_latency``, ``rate``...).

    Ports
    -----
    rd_cmd, wr_cmd : In(stream of the command layout)
    rd_done, wr_done : Out(stream of unsigned(ERR_WIDTH)) (always taken by the bench; ``valid``
        is a one-cycle pulse, the code stays in ``rd_code`` / ``wr_code``)
    seed : In(32) -- write pattern seed
    host : In(HostPortSignature)
    cycle, rd_beats, rd_first, rd_last, checksum, wr_beats, wr_first, wr_last, ar_first, r_first :
        Out counters (cycle stamps from a free-running 32-bit counter; ``*_first`` / ``*_last``
        are the cycles of the first / last handshake since the last command).
    """

    def __init__(self, params: DmaParams, depth: int, hbm_kw=None):
        self.p, self.depth, self.hbm_kw = params, depth, dict(hbm_kw or {})
        dw = params.data_width
        sig = {
            "rd_cmd": In(stream.Signature(params.command)),
            "wr_cmd": In(stream.Signature(params.command)),
            "rd_done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "wr_done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "rd_code": Out(ERR_WIDTH), "wr_code": Out(ERR_WIDTH),
            "seed": In(32),
            "host": In(HostPortSignature(dw, depth)),
            "checksum": Out(dw),
        }
        for name in ("cycle", "rd_beats", "rd_first", "rd_last", "wr_beats", "wr_first",
                     "wr_last", "ar_first", "r_first"):
            sig[name] = Out(32)
        super().__init__(sig)

    def elaborate(self, platform):
        p = self.p
        dw = p.data_width
        m = Module()
        m.submodules.dma = dma = DmaPort(p)
        m.submodules.hbm = hbm = HbmModel(self.depth, data_width=dw, addr_width=p.addr_width,
                                          id_width=p.id_width, **self.hbm_kw)
        wiring.connect(m, dma.axi, hbm.axi)
        wiring.connect(m, wiring.flipped(self.host), hbm.host)
        wiring.connect(m, wiring.flipped(self.rd_cmd), dma.rd_cmd)
        wiring.connect(m, wiring.flipped(self.wr_cmd), dma.wr_cmd)

        m.d.sync += self.cycle.eq(self.cycle + 1)
        # Completions: always taken, exposed as a pulse plus a held code.
        m.d.comb += [dma.rd_done.ready.eq(1), dma.wr_done.ready.eq(1)]
        m.d.sync += [self.rd_done.valid.eq(dma.rd_done.valid), self.wr_done.valid.eq(dma.wr_done.valid)]
        with m.If(dma.rd_done.valid):
            m.d.sync += self.rd_code.eq(dma.rd_done.payload)
        with m.If(dma.wr_done.valid):
            m.d.sync += self.wr_code.eq(dma.wr_done.payload)

        # Read sink: always ready; checksum and stamps.
        m.d.comb += dma.rd_data.ready.eq(1)
        rd_new = self.rd_cmd.valid & self.rd_cmd.ready
        with m.If(rd_new):
            m.d.sync += [self.checksum.eq(0), self.rd_beats.eq(0), self.ar_first.eq(0),
                         self.r_first.eq(0)]
        with m.Elif(dma.rd_data.valid):
            rot = Cat(self.checksum[-1], self.checksum[:-1])
            m.d.sync += [self.checksum.eq(rot ^ dma.rd_data.payload.data),
                         self.rd_beats.eq(self.rd_beats + 1), self.rd_last.eq(self.cycle)]
            with m.If(self.rd_beats == 0):
                m.d.sync += self.rd_first.eq(self.cycle)
        ar_seen = Signal()
        r_seen = Signal()
        with m.If(rd_new):
            m.d.sync += [ar_seen.eq(0), r_seen.eq(0)]
        with m.Else():
            with m.If(hbm.axi.ar.valid & hbm.axi.ar.ready & ~ar_seen):
                m.d.sync += [ar_seen.eq(1), self.ar_first.eq(self.cycle)]
            with m.If(hbm.axi.r.valid & ~r_seen):
                m.d.sync += [r_seen.eq(1), self.r_first.eq(self.cycle)]

        # Write source: the pattern, one word per cycle whenever the DMA takes it.
        wr_new = self.wr_cmd.valid & self.wr_cmd.ready
        lanes = dw // 32
        index = Signal(32)
        m.d.comb += [
            dma.wr_data.valid.eq(1),
            dma.wr_data.payload.eq(Cat(*[(self.seed + index * lanes + j)[:32] for j in range(lanes)])),
        ]
        with m.If(wr_new):
            m.d.sync += [index.eq(0), self.wr_beats.eq(0)]
        with m.Elif(dma.wr_data.valid & dma.wr_data.ready):
            m.d.sync += [index.eq(index + 1), self.wr_beats.eq(self.wr_beats + 1),
                         self.wr_last.eq(self.cycle)]
            with m.If(self.wr_beats == 0):
                m.d.sync += self.wr_first.eq(self.cycle)
        return m


# ---------------------------------------------------------------------------------------------
# cocotb side (imported only inside the simulator)
# ---------------------------------------------------------------------------------------------

try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, RisingEdge, ReadOnly
    from cocotb.utils import get_sim_time
except ImportError:  # pragma: no cover
    cocotb = None


def _params():
    from ternopu.sim.runner import tb_params
    return tb_params()


def _pack(fields, layout):
    """Pack a dict into an integer following an Amaranth StructLayout (LSB-first fields)."""
    v = 0
    for name, f in layout:
        v |= (int(fields.get(name, 0)) & ((1 << f.width) - 1)) << f.offset
    return v


def _bus(cls, dut, prefix, channel):
    """A cocotbext-axi channel bus whose names are mapped onto Amaranth's ``axi__ar__valid``."""
    names = cocotb_signal_map(channel)
    req = {k: v for k, v in names.items() if k in cls._signals}
    opt = {k: v for k, v in names.items() if k in cls._optional_signals}
    sub = type(cls.__name__ + "Amaranth", (cls,), {"_signals": req, "_optional_signals": opt})
    return sub(dut, prefix, bus_separator="__")


def _axi_bus(dut, prefix="axi"):
    from cocotbext.axi import AxiBus
    from cocotbext.axi.axi_channels import AxiARBus, AxiAWBus, AxiBBus, AxiRBus, AxiWBus
    return AxiBus.from_channels(_bus(AxiAWBus, dut, prefix, "aw"), _bus(AxiWBus, dut, prefix, "w"),
                                _bus(AxiBBus, dut, prefix, "b"), _bus(AxiARBus, dut, prefix, "ar"),
                                _bus(AxiRBus, dut, prefix, "r"))


def _cmd_layout():
    from ternopu.hw.dma import command_layout
    p = _params()
    return command_layout(p["addr_width"], p["beats_width"], p["rows_width"])


async def _reset(dut):
    dut.rst.value = 1
    for name in ("rd_cmd__valid", "wr_cmd__valid", "rd_data__ready", "wr_data__valid",
                 "rd_done__ready", "wr_done__ready"):
        if hasattr(dut, name):
            getattr(dut, name).value = 0
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _send_cmd(dut, prefix, fields):
    getattr(dut, f"{prefix}__payload").value = _pack(fields, _cmd_layout())
    getattr(dut, f"{prefix}__valid").value = 1
    while True:
        await RisingEdge(dut.clk)
        if getattr(dut, f"{prefix}__ready").value:
            break
    getattr(dut, f"{prefix}__valid").value = 0


def _rows(c):
    a, beats, rows, stride = c
    return [(a + r * stride, beats) for r in range(rows)]


class _PortDriver:
    """Drives a DmaPort top: commands, write data with gaps, read sink with stalls, monitors."""

    def __init__(self, dut, rng, gap_p, stall_p):
        self.dut, self.rng, self.gap_p, self.stall_p = dut, rng, gap_p, stall_p
        self.ar, self.aw = [], []
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.axi__ar__valid.value and dut.axi__ar__ready.value:
                self.ar.append((int(dut.axi__ar__addr.value), int(dut.axi__ar__len.value) + 1))
            if dut.axi__aw__valid.value and dut.axi__aw__ready.value:
                self.aw.append((int(dut.axi__aw__addr.value), int(dut.axi__aw__len.value) + 1))

    async def _wait_done(self, prefix):
        dut = self.dut
        getattr(dut, f"{prefix}_done__ready").value = 1
        while True:
            await RisingEdge(dut.clk)
            if getattr(dut, f"{prefix}_done__valid").value:
                code = int(getattr(dut, f"{prefix}_done__payload").value)
                break
        getattr(dut, f"{prefix}_done__ready").value = 0
        return code

    async def write(self, c, words):
        dut = self.dut
        await _send_cmd(dut, "wr_cmd", dict(zip(("addr", "beats", "rows", "stride"), c)))
        done = cocotb.start_soon(self._wait_done("wr"))
        for w in words:
            while self.rng.random() < self.gap_p:
                dut.wr_data__valid.value = 0
                await RisingEdge(dut.clk)
            dut.wr_data__valid.value = 1
            dut.wr_data__payload.value = w
            while True:
                await RisingEdge(dut.clk)
                if dut.wr_data__ready.value:
                    break
        dut.wr_data__valid.value = 0
        return await done

    async def read(self, c, dw):
        """Send a read command; collect words (with random stalls) until its completion."""
        dut = self.dut
        await _send_cmd(dut, "rd_cmd", dict(zip(("addr", "beats", "rows", "stride"), c)))
        got = []
        done = cocotb.start_soon(self._wait_done("rd"))
        while not done.done():
            dut.rd_data__ready.value = int(self.rng.random() >= self.stall_p)
            await RisingEdge(dut.clk)
            if dut.rd_data__valid.value and dut.rd_data__ready.value:
                v = int(dut.rd_data__payload.value)
                got.append((v & ((1 << dw) - 1), v >> dw))
        dut.rd_data__ready.value = 0
        return got, done.result()


async def _traffic(dut, ram, seed, pauses):
    """One run of the fixed command sequence; returns everything observable."""
    p = _params()
    dw, mem_size = p["data_width"], p["mem_bytes"]
    bb = dw // 8
    rng = random.Random(seed)
    init = bytes(random.Random(1).getrandbits(8) for _ in range(mem_size))
    ram.write(0, init)
    if pauses:
        for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                   ram.read_if.ar_channel, ram.read_if.r_channel):
            prng = random.Random(rng.getrandbits(32))
            ch.set_pause_generator(iter(lambda prng=prng: prng.random() < 0.4, None))
    drv = _PortDriver(dut, random.Random(seed + 1), 0.3 if pauses else 0.0,
                      0.3 if pauses else 0.0)
    await _reset(dut)
    t_start = get_sim_time("ns")
    # Fixed sequence (independent of pauses): writes and reads, 4 KiB crossings, 2-D, errors.
    crng = random.Random(7)
    ops = [
        ("w", (4096 - 3 * bb, 21, 1, 0)), ("r", (4096 - 5 * bb, 30, 1, 0)),
        ("w", (8192, 5, 4, 40 * bb)), ("r", (8192, 5, 4, 40 * bb)),
        ("r", (3, 2, 1, 0)), ("w", (mem_size, 1, 1, 0)),
        ("r", (0, 0, 1, 0)),
    ]
    for _ in range(6):
        beats = crng.randint(1, 70)
        rows = crng.randint(1, 3)
        stride = crng.randint(beats, beats + 20) * bb
        addr = crng.randrange(0, (mem_size - rows * stride - beats * bb) // bb) * bb
        ops.append((crng.choice("rw"), (addr, beats, rows, stride)))
    model = bytearray(init)
    results = []
    wrng = random.Random(11)
    for kind, c in ops:
        if kind == "w":
            n = c[1] * c[2]
            words = [wrng.getrandbits(dw) for _ in range(n)] if c[0] % bb == 0 and c[0] < mem_size else []
            code = await drv.write(c, words)
            if code == 0:
                k = 0
                for a, beats in _rows(c):
                    for i in range(beats):
                        model[a + i * bb:a + (i + 1) * bb] = words[k].to_bytes(bb, "little")
                        k += 1
            results.append(("w", c, code))
        else:
            got, code = await drv.read(c, dw)
            exp = [int.from_bytes(model[a + i * bb:a + (i + 1) * bb], "little")
                   for a, beats in _rows(c) for i in range(beats)] if code == 0 else []
            assert [d for d, _ in got] == exp, f"read {c}: data mismatch"
            if got:
                assert [l for _, l in got] == [0] * (len(got) - 1) + [1], f"read {c}: last flags"
            results.append(("r", c, code, got))
    results.append(("sim_time_ns", get_sim_time("ns") - t_start))
    final = ram.read(0, mem_size)
    assert final == bytes(model), "memory differs from the model"
    # Burst cutting matches the reference, and no burst crosses 4 KiB.
    exp_ar = [b for k, c, *rest in results[:-1] if k == "r" and rest[0] == 0
              for a, beats in _rows(c) for b in split_bursts(a, beats, dw, p["max_burst"])]
    exp_aw = [b for k, c, *rest in results[:-1] if k == "w" and rest[0] == 0
              for a, beats in _rows(c) for b in split_bursts(a, beats, dw, p["max_burst"])]
    assert drv.ar == exp_ar and drv.aw == exp_aw, "bursts differ from split_bursts"
    return results[:-1], final, results[-1][1]


if cocotb is not None:

    @cocotb.test()
    async def axiram_random_traffic(dut):
        """Same command sequence with and without random pauses: identical observable results."""
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
        from cocotbext.axi import AxiRam
        p = _params()
        ram = AxiRam(_axi_bus(dut), dut.clk, dut.rst, size=p["mem_bytes"])
        ram.write_if.log.setLevel("WARNING")
        ram.read_if.log.setLevel("WARNING")
        calm, mem_calm, t_calm = await _traffic(dut, ram, p.get("seed", 1), pauses=False)
        busy, mem_busy, t_busy = await _traffic(dut, ram, p.get("seed", 1), pauses=True)
        dut._log.info(f"traffic: {t_calm} ns without pauses, {t_busy} ns with pauses")
        assert calm == busy and mem_calm == mem_busy
        assert t_busy > 1.5 * t_calm, "the pauses did not slow the traffic down?"
        codes = [r[2] for r in calm]
        assert codes[4] == 1 and codes[5] == 2, codes  # misaligned read, out-of-range write

    @cocotb.test()
    async def hbm_bench(dut):
        """Write then read a buffer through the HDL HBM model; Python only at start and end."""
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
        p = _params()
        dw, depth, beats = p["data_width"], p["depth"], p["beats"]
        bb = dw // 8
        dut.rst.value = 1
        for name in ("rd_cmd__valid", "wr_cmd__valid", "host__we", "rd_done__ready",
                     "wr_done__ready"):
            getattr(dut, name).value = 0
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        # Load memory through the host port (one word per cycle).
        rng = random.Random(p.get("seed", 1))
        mem = [rng.getrandbits(dw) for _ in range(depth)]
        dut.host__we.value = 1
        for i, w in enumerate(mem):
            dut.host__addr.value = i
            dut.host__wdata.value = w
            await RisingEdge(dut.clk)
        dut.host__we.value = 0
        report = {}

        async def run(prefix, c):
            t0 = int(dut.cycle.value)
            await _send_cmd(dut, f"{prefix}_cmd", dict(zip(("addr", "beats", "rows", "stride"), c)))
            await RisingEdge(getattr(dut, f"{prefix}_done__valid"))
            return int(dut.cycle.value) - t0, int(getattr(dut, f"{prefix}_code").value)

        # 1) Read the whole buffer.
        cycles, code = await run("rd", (0, beats, 1, 0))
        assert code == 0
        assert int(dut.rd_beats.value) == beats
        assert int(dut.checksum.value) == checksum_of(mem[:beats], dw), "read data checksum"
        first, last = int(dut.rd_first.value), int(dut.rd_last.value)
        report["read"] = {
            "beats": beats, "cycles_cmd_to_done": cycles,
            "sustained_beats_per_cycle": (beats - 1) / (last - first),
            "overall_beats_per_cycle": beats / cycles,
            "latency_ar_to_r": int(dut.r_first.value) - int(dut.ar_first.value),
        }
        # 2) Write a pattern over the second half, then read it back.
        half = beats // 2
        dut.seed.value = 12345
        cycles, code = await run("wr", (half * bb, half, 1, 0))
        assert code == 0 and int(dut.wr_beats.value) == half
        wf, wl = int(dut.wr_first.value), int(dut.wr_last.value)
        report["write"] = {"beats": half, "cycles_cmd_to_done": cycles,
                           "sustained_beats_per_cycle": (half - 1) / (wl - wf),
                           "overall_beats_per_cycle": half / cycles}
        for i in range(half):
            mem[half + i] = pattern_word(12345, i, dw)
        cycles, code = await run("rd", (0, beats, 1, 0))
        assert code == 0 and int(dut.checksum.value) == checksum_of(mem[:beats], dw)
        # 3) A 2-D read: every other 4 KiB page.
        rows = beats * bb // 8192
        page_beats = 4096 // bb
        cycles, code = await run("rd", (0, page_beats, rows, 8192))
        exp = [mem[r * 2 * page_beats + i] for r in range(rows) for i in range(page_beats)]
        assert code == 0 and int(dut.checksum.value) == checksum_of(exp, dw)
        report["read_2d"] = {"beats": len(exp), "cycles_cmd_to_done": cycles,
                             "overall_beats_per_cycle": len(exp) / cycles}
        out = p.get("report")
        if out:
            with open(out, "w") as f:
                json.dump(report, f, indent=1)
        limit = p["rate"][0] / p["rate"][1]
        assert report["read"]["sustained_beats_per_cycle"] >= 0.95 * min(1.0, limit), report
        assert report["read"]["latency_ar_to_r"] == p["read_latency"], report
