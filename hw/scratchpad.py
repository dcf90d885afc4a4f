"""Banked on-chip memories shared by the execution units: the scratchpad and the KV history buffer.

Ports (request / grant)
-----------------------
A memory of ``banks`` banks of ``bank_words`` words (256 bits) is addressed by a flat word index
``addr = bank * bank_words + word``; the scratchpad's banks are the ISA's
:data:`~ternopu.hw.isa.NUM_BUFFERS` buffers, so ``addr = buf * buf_words + byte_off // 32``.

* Read port (:class:`ScratchReadSignature`, reader's view): ``req``, ``addr`` out; ``gnt``,
  ``rvalid``, ``data`` in. A read is accepted in a cycle with ``req & gnt``; exactly
  :data:`SCRATCH_READ_LATENCY` (1) cycle later ``rvalid`` is high and ``data`` holds the word as
  it was *before* any write accepted in the accept cycle (read-first).
* Write port (:class:`ScratchWriteSignature`, writer's view): ``req``, ``addr``, ``data`` out;
  ``gnt`` in. The word is written in the cycle of ``req & gnt``.

Each bank is a simple dual-port memory (one read and one write per cycle: a BRAM / URAM column
on the FPGA). Clients that address the same bank in the same cycle are served by fixed
priority (client order; the overlay lists them in slot order LD, ST, TLMM, PE, NPE, then port
index). ``gnt`` depends combinationally on the client's own ``req``/``addr`` and on the
requests of higher-priority clients; a client's ``req`` must not depend on its ``gnt``.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from . import isa

__all__ = ["SCRATCH_READ_LATENCY", "WORD_BITS", "ScratchReadSignature", "ScratchWriteSignature",
           "BankedMemory"]

#: Cycles from an accepted read to ``rvalid``.
SCRATCH_READ_LATENCY = 1
#: Width of a scratch word: one 32-byte ISA beat.
WORD_BITS = isa.INSTR_BITS


def _words(ctx_or_words) -> int:
    words = getattr(ctx_or_words, "sp_words", ctx_or_words)
    if not isinstance(words, int) or words < 1:
        raise ConfigError(f"memory size must be a positive number of words, got {words!r}")
    return words


class ScratchReadSignature(wiring.Signature):
    """Read port, reader's view (module docstring). ``ScratchReadSignature(ctx)`` sizes the address
    for the scratchpad (``ctx.sp_words``); an int gives the word count of another memory."""

    def __init__(self, ctx_or_words):
        self.words = _words(ctx_or_words)
        super().__init__({"req": Out(1), "addr": Out(range(self.words)), "gnt": In(1),
                          "rvalid": In(1), "data": In(WORD_BITS)})


class ScratchWriteSignature(wiring.Signature):
    """Write port, writer's view (module docstring)."""

    def __init__(self, ctx_or_words):
        self.words = _words(ctx_or_words)
        super().__init__({"req": Out(1), "addr": Out(range(self.words)), "data": Out(WORD_BITS),
                          "gnt": In(1)})


class BankedMemory(wiring.Component):
    """``banks`` x ``bank_words`` words with ``n_read`` read and ``n_write`` write client ports.

    Parameters
    ----------
    banks : int
        Number of banks (each one read and one write per cycle).
    bank_words : int
        Words per bank; a power of two (the bank is the address's top bits).
    n_read, n_write : int
        Client ports; index order is priority order (0 highest).

    Ports
    -----
    r : In(ScratchReadSignature(banks * bank_words)).array(n_read)
    w : In(ScratchWriteSignature(banks * bank_words)).array(n_write)

    Read latency :data:`SCRATCH_READ_LATENCY`; throughput one read and one write per bank per
    cycle, i.e. up to ``banks`` reads and ``banks`` writes per cycle over all clients.
    """

    def __init__(self, banks: int, bank_words: int, n_read: int, n_write: int):
        if not isinstance(banks, int) or banks < 1:
            raise ConfigError(f"banks must be a positive int, got {banks!r}")
        if not isinstance(bank_words, int) or bank_words < 1 or bank_words & (bank_words - 1):
            raise ConfigError(f"bank_words must be a power of two, got {bank_words!r}")
        for name, n in (("n_read", n_read), ("n_write", n_write)):
            if not isinstance(n, int) or n < 0:
                raise ConfigError(f"{name} must be a non-negative int, got {n!r}")
        self.banks, self.bank_words = banks, bank_words
        self.n_read, self.n_write = n_read, n_write
        words = banks * bank_words
        super().__init__({
            "r": In(ScratchReadSignature(words)).array(n_read),
            "w": In(ScratchWriteSignature(words)).array(n_write),
        })

    def _bank(self, addr):
        lg = self.bank_words.bit_length() - 1
        return addr[lg:] if self.banks > 1 else 0

    def _grants(self, m, ports, kind):
        """Fixed-priority grant per bank; returns per-client (granted, bank) signals."""
        banks = []
        for i, p in enumerate(ports):
            b = Signal(range(max(self.banks, 2)), name=f"{kind}{i}_bank")
            m.d.comb += b.eq(self._bank(p.addr))
            banks.append(b)
        for i, p in enumerate(ports):
            blocked = 0
            for j in range(i):
                blocked = blocked | (ports[j].req & (banks[j] == banks[i]))
            m.d.comb += p.gnt.eq(p.req & ~blocked)
        return banks

    def elaborate(self, platform):
        m = Module()
        lg = self.bank_words.bit_length() - 1
        rbank = self._grants(m, self.r, "r")
        wbank = self._grants(m, self.w, "w")
        rdata = []
        for b in range(self.banks):
            mem = memory.Memory(shape=unsigned(WORD_BITS), depth=self.bank_words, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=())
            # priority mux: the lowest-index granted client of this bank drives the port
            for i in reversed(range(self.n_write)):
                p = self.w[i]
                with m.If(p.gnt & (wbank[i] == b)):
                    m.d.comb += [wp.en.eq(1), wp.addr.eq(p.addr[:lg]), wp.data.eq(p.data)]
            m.d.comb += rp.en.eq(0)
            for i in reversed(range(self.n_read)):
                p = self.r[i]
                with m.If(p.gnt & (rbank[i] == b)):
                    m.d.comb += [rp.en.eq(1), rp.addr.eq(p.addr[:lg])]
            rdata.append(rp.data)
        for i, p in enumerate(self.r):
            sel = Signal.like(rbank[i], name=f"r{i}_bank_q")
            m.d.sync += [p.rvalid.eq(p.gnt), sel.eq(rbank[i])]
            with m.Switch(sel):
                for b in range(self.banks):
                    with m.Case(b):
                        m.d.comb += p.data.eq(rdata[b])
        return m
