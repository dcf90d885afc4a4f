"""Self-driving benchmark wrapper around :class:`ternopu.hw.tlmm.TLMM` (simulation only).

The benchmark must measure the engine, not the Python testbench: a cocotb coroutine per cycle
costs tens of microseconds, so the stream sources and the sink live in HDL here. After ``start``
the wrapper issues ``jobs`` commands of ``row_tiles x group_tiles`` (the first loads activations,
the others reuse them, as q/k/v or gate/up do), feeds activation words and key beats on every
cycle the engine is ready (contents from a free-running 64-bit LFSR: timing does not depend on
the key values; bit-exactness is the job of the cocotb tests), accepts every output, and counts.
``done`` rises when the last output of the last job has been taken.

Counters (all in cycles since ``start``): ``first_key`` and ``last_key`` (cycles of the first and
last accepted beat), ``beats`` (beats accepted), ``first_out`` and ``last_out`` (cycles of the
first and last output transfer), ``outs`` (output transfers). A cycle counter value ``t`` means
"the transfer happened at the clock edge ending cycle ``t``".
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .tlmm import DEFAULT_CONFIG, TLMM, TLMMConfig

__all__ = ["TLMMBench", "COUNTER_BITS", "LFSR_TAPS"]

COUNTER_BITS = 32
"""Width of the cycle and event counters."""
LFSR_TAPS = (64, 63, 61, 60)
"""Fibonacci LFSR x^64 + x^63 + x^61 + x^60 + 1 (maximal length) for the beat contents."""


class TLMMBench(wiring.Component):
    """TLMM + HDL stream sources / sink + counters.

    Parameters
    ----------
    config : TLMMConfig
        Engine geometry.

    Ports
    -----
    cmd, act, keys, out, error
        The engine's ports (see :class:`ternopu.hw.tlmm.TLMM`), connected straight through while
        no benchmark runs: the wrapper then is the bare engine for the cocotb tests.
    start : In(1)
        One-cycle pulse: clears the counters and begins.
    row_tiles, group_tiles : In
        Tile counts of every job (see :meth:`TLMMConfig.tiles`).
    jobs : In(16)
        Number of back-to-back projections (``>= 1``).
    done : Out(1)
    cycles, first_key, last_key, beats, first_out, last_out, outs : Out(32)
    """

    def __init__(self, config: TLMMConfig = DEFAULT_CONFIG):
        self.config = config
        cl = config.cmd_layout()
        # The engine's own ports first: while no benchmark runs they connect straight through,
        # so one Verilator build serves both the cocotb tests and the benchmark.
        sig = TLMM.ports_of(config)
        sig.update({
            "start": In(1),
            "row_tiles": In(cl["row_tiles"].shape),
            "group_tiles": In(cl["group_tiles"].shape),
            "jobs": In(16),
            "done": Out(1),
        })
        for name in ("cycles", "first_key", "last_key", "beats", "first_out", "last_out", "outs"):
            sig[name] = Out(COUNTER_BITS)
        super().__init__(sig)

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        m.submodules.dut = dut = TLMM(cfg)

        running = Signal()
        lfsr = Signal(64, init=1)
        fb = 0
        for tap in LFSR_TAPS:
            fb ^= lfsr[tap - 1]
        m.d.sync += lfsr.eq(Cat(fb, lfsr[:-1]))

        cmds_sent = Signal(16)
        lasts = Signal(16)
        m.d.comb += self.error.eq(dut.error)
        with m.If(running):
            m.d.comb += [
                dut.cmd.valid.eq(cmds_sent < self.jobs),
                dut.cmd.payload.row_tiles.eq(self.row_tiles),
                dut.cmd.payload.group_tiles.eq(self.group_tiles),
                dut.cmd.payload.out_scale.eq(0x3F800000),  # 1.0
                dut.cmd.payload.load_act.eq(cmds_sent == 0),
                dut.act.valid.eq(1),
                dut.act.payload.eq(Cat(*([lfsr] * (-(-len(dut.act.payload.as_value()) // 64))))),
                dut.keys.valid.eq(1),
                dut.keys.payload.eq(Cat(*([lfsr] * (-(-cfg.beat_bits // 64))))),
                dut.out.ready.eq(1),
            ]
        with m.Else():
            # Pass-through: the wrapper behaves as the bare engine.
            for name in ("cmd", "act", "keys"):
                ext, inner = getattr(self, name), getattr(dut, name)
                m.d.comb += [inner.valid.eq(ext.valid), inner.payload.eq(ext.payload),
                             ext.ready.eq(inner.ready)]
            m.d.comb += [self.out.valid.eq(dut.out.valid), self.out.payload.eq(dut.out.payload),
                         dut.out.ready.eq(self.out.ready)]
        with m.If(dut.cmd.valid & dut.cmd.ready):
            m.d.sync += cmds_sent.eq(cmds_sent + 1)

        key_xfer = dut.keys.valid & dut.keys.ready
        out_xfer = dut.out.valid & dut.out.ready
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(key_xfer):
                m.d.sync += [self.beats.eq(self.beats + 1), self.last_key.eq(self.cycles)]
                with m.If(self.beats == 0):
                    m.d.sync += self.first_key.eq(self.cycles)
            with m.If(out_xfer):
                m.d.sync += [self.outs.eq(self.outs + 1), self.last_out.eq(self.cycles)]
                with m.If(self.outs == 0):
                    m.d.sync += self.first_out.eq(self.cycles)
                with m.If(dut.out.payload.last):
                    m.d.sync += lasts.eq(lasts + 1)
                    with m.If(lasts + 1 == self.jobs):
                        m.d.sync += [running.eq(0), self.done.eq(1)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.done.eq(0), cmds_sent.eq(0), lasts.eq(0)]
            m.d.sync += [s.eq(0) for s in (self.cycles, self.first_key, self.last_key, self.beats,
                                           self.first_out, self.last_out, self.outs)]
        return m
