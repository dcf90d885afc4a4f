"""The overlay top: CSR block, controller, one DMA port per HBM AXI port, and the unit slots.

Structure
---------
::

    s_axi_control --> CSRBlock --(start, soft_reset, prog_*, watchdog)--> Controller
                        ^  counters <-- controller (cycles, busy/stall per unit), AXI monitors
    Controller.fetch ----------------------------> read arbiter of port 0
    Controller.units[LD]   <-> LoadUnit   (rd clients on every port)  --+
    Controller.units[ST]   <-> StoreUnit  (wr clients on every port)  --+--> Scratchpad
    Controller.units[TLMM] <-> slot (StubUnit until the TLMM engine is integrated)
    Controller.units[PE]   <-> slot (StubUnit with the stub ROUTER -> Controller.mask)
    Controller.units[NPE]  <-> slot (StubUnit)
    port k: ReadArbiter(clients) / WriteArbiter(clients) -> DmaPort -> m_axi_hbmKK

Unit slots (how an engine plugs in)
-----------------------------------
``Overlay(config, units={Unit.TLMM: factory, ...})``: ``factory(ctx)`` returns an Amaranth
component; ``ctx`` is the :class:`SlotContext` (DMA parameters, port count, scratch geometry).
The overlay wires its members by name:

* ``ctl: In(UnitPortSignature())`` -- required: the controller's unit port (protocol in
  :mod:`ternopu.hw.unit_port`).
* ``rd: Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports)`` -- optional: a read client on
  every HBM port (the overlay adds it to each port's read arbiter).
* ``wr: Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports)`` -- optional, write clients.
* ``mask: Out(MaskWriteSignature())`` -- optional: routing-bitmask writes (ROUTER).
* ``bitmask: In(512)`` -- optional: the routing bitmask (KV_PREFETCH).
* ``sp_w: Out(ScratchWriteSignature(ctx))`` / ``sp_r: Out(ScratchReadSignature(ctx))`` --
  optional: write / read ports of the on-chip scratchpad (buffers 0..7), a single port or an
  ``.array(n)``; request/grant protocol in :mod:`ternopu.hw.scratchpad`.
* ``hist_w`` / ``hist_r`` -- optional, same signatures sized ``ctx.hist_words``: ports of the KV
  history buffer (KV_PREFETCH writes it, PE_ATTN reads it).

Every slot is reset by the controller's ``unit_reset`` pulse (drain timeout). Arbitration per HBM
port is fixed priority in client order: fetch (port 0 reads only), LD, then TLMM, PE, NPE slots in
that order; a client keeps the port from its command until the DMA's completion (the DMAs run
one command at a time).

Simple LD / ST behaviours (placeholders for the real load/store engines)
------------------------------------------------------------------------
:class:`LoadUnit` executes LOAD: burst ``i`` (``i = 0 .. bursts-1``) is one DMA command of
``burst_len`` beats at ``hbm_addr + i*stride`` on port ``(port + i mod nports) mod 32``, one burst
at a time; its beats are written to the scratchpad contiguously from ``dst_buf``/``dst_off``.
:class:`StoreUnit` is the mirror for STORE. Checks, before any transfer: the buffer range
(``off/32 + bursts*burst_len > buf_words`` -> ``BUF_RANGE``). Per burst: a port not present in
this build, or an address beyond 2**34 -> ``HBM_RANGE``; the DMA's range error -> ``HBM_RANGE``,
SLVERR/DECERR -> ``AXI_RESP`` (the errored burst has still moved all its beats: loads write the
returned (zero) words, stores write their data; later bursts are not issued). KV_PREFETCH and
KV_APPEND complete at once without effect (the KV units replace them). On ``abort`` they stop
after the burst in flight.

Scratchpad
----------
:data:`ternopu.hw.isa.NUM_BUFFERS` buffers of ``buf_words`` 32-byte words, buffer ``b`` word ``w``
at index ``b*buf_words + w``: a :class:`ternopu.hw.scratchpad.BankedMemory` with one bank per
buffer (one read and one write per buffer per cycle, fixed priority in slot order), so units that
work on different buffers never wait for each other. The KV history buffer is a second, one-bank
BankedMemory of ``hist_words`` words.

Performance counters
--------------------
``CYCLES`` / ``<UNIT>_BUSY`` / ``<UNIT>_STALL`` from the controller (definitions in
:mod:`ternopu.hw.controller`); ``HBM_RD_Pk`` / ``HBM_WR_Pk`` add the beat size in bytes for every
R / W handshake on port ``k`` (ports beyond ``hbm_ports`` stay 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from . import isa
from .axi import AXI4Signature
from .axi_lite import axi4_lite_signature
from .controller import FETCH_DEPTH, QUEUE_DEPTH, Controller
from .csr import COUNTERS, CSR_ADDR_BITS, CSRBlock
from .dma import DmaParams, DmaPort, dma_error_code
from .overlay_config import OverlayConfig
from .scratchpad import BankedMemory, ScratchReadSignature, ScratchWriteSignature
from .unit_port import (ENGINE_UNITS, DmaReadClientSignature, DmaWriteClientSignature, StubUnit,
                        UnitPortSignature)

__all__ = ["SlotContext", "ScratchWriteSignature", "ScratchReadSignature", "ReadArbiter",
           "WriteArbiter", "LoadUnit", "StoreUnit", "Overlay", "DEFAULT_STUBS", "BUF_WORDS"]

#: Default scratch buffer size in 32-byte words (per buffer).
BUF_WORDS = 64
#: Words of the STORE unit's read-ahead FIFO (covers the scratch read latency at one beat/cycle).
_STORE_FIFO = 4
#: Default stub timing (lo, span) of the engine slots that are still stubs.
DEFAULT_STUBS = {isa.Unit.TLMM: (8, 8), isa.Unit.PE: (6, 4), isa.Unit.NPE: (4, 4)}


@dataclass(frozen=True)
class SlotContext:
    """What a unit factory gets: DMA parameters, number of HBM ports, scratch geometry."""

    dma: DmaParams
    ports: int
    buf_words: int
    hist_words: int = 0
    #: Bytes of one HBM pseudo-channel: channel ``k`` holds global addresses
    #: ``[k * channel_bytes, (k + 1) * channel_bytes)``.
    channel_bytes: int = 256 << 20

    @property
    def sp_words(self) -> int:
        return isa.NUM_BUFFERS * self.buf_words


class _LockingArbiter(wiring.Component):
    """Fixed-priority arbiter of ``n`` DMA clients onto one DMA, locked per command.

    The lowest-numbered client with a command wins; it owns the DMA (data and completion) from
    the accepted command until the completion is taken. ``reads`` says which way data flows:
    from the DMA to the clients (read DMA) or from the clients to the DMA (write DMA).
    """

    def __init__(self, client_signature, n: int, *, reads: bool):
        self.n = n
        self.reads = reads
        super().__init__({
            "clients": In(client_signature).array(n),
            "dma": Out(client_signature),
        })

    def _connect_data(self, c, locked):
        src, dst = (self.dma, c) if self.reads else (c, self.dma)
        return [dst.data.valid.eq(locked & src.data.valid),
                dst.data.payload.eq(src.data.payload),
                src.data.ready.eq(locked & dst.data.ready)]

    def elaborate(self, platform):
        m = Module()
        n = self.n
        locked = Signal()
        owner = Signal(range(max(n, 2)))
        sel = Signal(range(max(n, 2)))
        for i in reversed(range(n)):
            with m.If(self.clients[i].cmd.valid):
                m.d.comb += sel.eq(i)
        cur = Mux(locked, owner, sel)
        with m.Switch(cur):
            for i in range(n):
                with m.Case(i):
                    c = self.clients[i]
                    m.d.comb += [
                        self.dma.cmd.valid.eq(~locked & c.cmd.valid),
                        self.dma.cmd.payload.eq(c.cmd.payload),
                        c.cmd.ready.eq(~locked & self.dma.cmd.ready),
                        *self._connect_data(c, locked),
                        c.done.valid.eq(locked & self.dma.done.valid),
                        c.done.payload.eq(self.dma.done.payload),
                        self.dma.done.ready.eq(locked & c.done.ready),
                    ]
        with m.If(self.dma.cmd.valid & self.dma.cmd.ready):
            m.d.sync += [locked.eq(1), owner.eq(sel)]
        with m.If(self.dma.done.valid & self.dma.done.ready):
            m.d.sync += locked.eq(0)
        return m


class ReadArbiter(_LockingArbiter):
    """Fixed-priority arbiter of ``n`` read-DMA clients onto one ReadDMA (lock per command)."""

    def __init__(self, p: DmaParams, n: int):
        super().__init__(DmaReadClientSignature(p), n, reads=True)


class WriteArbiter(_LockingArbiter):
    """Fixed-priority arbiter of ``n`` write-DMA clients onto one WriteDMA (lock per command)."""

    def __init__(self, p: DmaParams, n: int):
        super().__init__(DmaWriteClientSignature(p), n, reads=False)


class _Sel:
    """``valid`` / ``payload`` of the stream of port ``index`` among per-port streams (a mux)."""

    def __init__(self, m, index, valids, payloads, width):
        self.valid = Signal(name="sel_valid")
        self.payload = Signal(width, name="sel_payload")
        with m.Switch(index):
            for q, (v, p) in enumerate(zip(valids, payloads)):
                with m.Case(q):
                    m.d.comb += [self.valid.eq(v), self.payload.eq(p)]


class _BurstWalker:
    """Shared LOAD/STORE burst bookkeeping (address, port, buffer pointer), used by both units."""

    def __init__(self, ctx: SlotContext):
        self.ctx = ctx
        self.addr = Signal(isa.HBM_ADDR_BITS + 17, name="burst_addr")   # wide: no wrap
        self.stride = Signal(32, name="burst_stride")
        self.port0 = Signal(5, name="port0")
        self.lane = Signal(6, name="lane")         # i mod nports
        self.nports = Signal(6, name="nports")
        self.left = Signal(16, name="bursts_left")
        self.blen = Signal(9, name="burst_len")
        self.sp = Signal(range(ctx.sp_words + 1), name="sp_ptr")
        self.port = Signal(5, name="port")          # (port0 + lane) mod 32
        self.code = Signal(isa.ErrorCode, name="unit_code")
        self.opcode = Signal(8, name="opcode")

    def latch(self, m, f, buf, off):
        """Latch a LOAD/STORE's fields; returns the buffer-range error condition."""
        ctx = self.ctx
        m.d.sync += [self.addr.eq(f.hbm_addr), self.stride.eq(f.stride), self.port0.eq(f.port),
                     self.lane.eq(0), self.nports.eq(f.nports), self.left.eq(f.bursts),
                     self.blen.eq(f.burst_len), self.sp.eq(buf * ctx.buf_words + (off >> 5)),
                     self.code.eq(isa.ErrorCode.NONE)]
        return (off >> 5) + f.bursts * f.burst_len > ctx.buf_words

    def elab_comb(self, m):
        m.d.comb += self.port.eq(self.port0 + self.lane)

    def out_of_range(self):
        return (self.port >= self.ctx.ports) | (self.addr[isa.HBM_ADDR_BITS:] != 0)

    def issue(self, m, ctl, clients):
        """ISSUE state body: end (abort / no bursts left), HBM_RANGE, or the next burst's DMA
        command on the current port's client (``clients``: the unit's rd or wr array), then DATA."""
        with m.If(ctl.abort | (self.left == 0)):
            m.next = "DONE"
        with m.Elif(self.out_of_range()):
            m.d.sync += self.code.eq(isa.ErrorCode.HBM_RANGE)
            m.next = "DONE"
        with m.Else():
            for q in range(self.ctx.ports):
                with m.If(self.port == q):
                    cmd = clients[q].cmd
                    m.d.comb += [cmd.valid.eq(1), cmd.payload.addr.eq(self.addr),
                                 cmd.payload.beats.eq(self.blen), cmd.payload.rows.eq(1),
                                 cmd.payload.stride.eq(0)]
                    with m.If(cmd.ready):
                        m.d.comb += ctl.progress.eq(1)
                        m.next = "DATA"

    def next_burst(self, m):
        m.d.sync += [self.addr.eq(self.addr + self.stride), self.left.eq(self.left - 1),
                     self.lane.eq(Mux(self.lane + 1 == self.nports, 0, self.lane + 1))]


class LoadUnit(wiring.Component):
    """LD slot behaviour: LOAD through the DMA ports into the scratchpad (module docstring)."""

    def __init__(self, ctx: SlotContext):
        self.ctx = ctx
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "rd": Out(DmaReadClientSignature(ctx.dma)).array(ctx.ports),
            "sp_w": Out(ScratchWriteSignature(ctx)),
        })

    def elaborate(self, platform):
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        w = _BurstWalker(ctx)
        w.elab_comb(m)
        rd = self.rd
        # idle / not addressed clients swallow stray data and completions (after unit_reset)
        in_data = Signal()
        for q in range(ctx.ports):
            # the current port's beats wait for the scratch grant; stray beats are swallowed
            m.d.comb += [rd[q].data.ready.eq(~in_data | (w.port != q) | self.sp_w.gnt),
                         rd[q].done.ready.eq(1)]
        cur_data = _Sel(m, w.port, [rd[q].data.valid for q in range(ctx.ports)],
                        [rd[q].data.payload.data for q in range(ctx.ports)], isa.INSTR_BITS)
        cur_done = _Sel(m, w.port, [rd[q].done.valid for q in range(ctx.ports)],
                        [rd[q].done.payload for q in range(ctx.ports)], 3)
        m.d.comb += [self.sp_w.addr.eq(w.sp), self.sp_w.data.eq(cur_data.payload)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    instr = ctl.cmd.payload.instr
                    m.d.sync += w.opcode.eq(instr.header.opcode)
                    bad_buf = w.latch(m, instr.load, instr.load.dst_buf, instr.load.dst_off)
                    with m.If(instr.header.opcode != isa.OPCODE_BY_NAME["LOAD"].number):
                        m.next = "DONE"   # KV_PREFETCH: no-op placeholder
                    with m.Elif(bad_buf):
                        m.d.sync += w.code.eq(isa.ErrorCode.BUF_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                w.issue(m, ctl, rd)
            with m.State("DATA"):
                m.d.comb += [in_data.eq(1), self.sp_w.req.eq(cur_data.valid)]
                with m.If(self.sp_w.req & self.sp_w.gnt):
                    m.d.comb += ctl.progress.eq(1)
                    m.d.sync += w.sp.eq(w.sp + 1)
                with m.If(cur_done.valid):
                    m.d.comb += ctl.progress.eq(1)
                    with m.If(cur_done.payload != 0):
                        m.d.sync += w.code.eq(dma_error_code(cur_done.payload))
                        m.next = "DONE"
                    with m.Else():
                        w.next_burst(m)
                        m.next = "ISSUE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(w.code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m


class StoreUnit(wiring.Component):
    """ST slot behaviour: STORE from the scratchpad through the DMA ports (module docstring)."""

    def __init__(self, ctx: SlotContext):
        self.ctx = ctx
        super().__init__({
            "ctl": In(UnitPortSignature()),
            "wr": Out(DmaWriteClientSignature(ctx.dma)).array(ctx.ports),
            "sp_r": Out(ScratchReadSignature(ctx)),
        })

    def elaborate(self, platform):
        m = Module()
        ctx, ctl = self.ctx, self.ctl
        w = _BurstWalker(ctx)
        w.elab_comb(m)
        wr = self.wr
        asked = Signal(9)       # scratch reads issued for the current burst
        inflight = Signal()     # a read accepted last cycle (its word arrives now)
        m.submodules.buf = buf = fifo.SyncFIFOBuffered(width=isa.INSTR_BITS, depth=_STORE_FIFO)
        for q in range(ctx.ports):
            m.d.comb += wr[q].done.ready.eq(1)
        cur_done = _Sel(m, w.port, [wr[q].done.valid for q in range(ctx.ports)],
                        [wr[q].done.payload for q in range(ctx.ports)], 3)
        m.d.comb += [self.sp_r.addr.eq(w.sp),
                     buf.w_en.eq(self.sp_r.rvalid), buf.w_data.eq(self.sp_r.data)]
        m.d.sync += inflight.eq(self.sp_r.req & self.sp_r.gnt)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += ctl.cmd.ready.eq(1)
                with m.If(ctl.cmd.valid):
                    instr = ctl.cmd.payload.instr
                    bad_buf = w.latch(m, instr.store, instr.store.src_buf, instr.store.src_off)
                    with m.If(instr.header.opcode != isa.OPCODE_BY_NAME["STORE"].number):
                        m.next = "DONE"   # KV_APPEND: no-op placeholder
                    with m.Elif(bad_buf):
                        m.d.sync += w.code.eq(isa.ErrorCode.BUF_RANGE)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.sync += asked.eq(0)
                w.issue(m, ctl, wr)
            with m.State("DATA"):
                m.d.comb += self.sp_r.req.eq((asked != w.blen) & (buf.level + inflight < _STORE_FIFO))
                with m.If(self.sp_r.req & self.sp_r.gnt):
                    m.d.sync += [asked.eq(asked + 1), w.sp.eq(w.sp + 1)]
                for q in range(ctx.ports):
                    with m.If(w.port == q):
                        m.d.comb += [wr[q].data.valid.eq(buf.r_rdy),
                                     wr[q].data.payload.eq(buf.r_data),
                                     buf.r_en.eq(wr[q].data.ready)]
                        with m.If(wr[q].data.valid & wr[q].data.ready):
                            m.d.comb += ctl.progress.eq(1)
                with m.If(cur_done.valid):
                    m.d.comb += ctl.progress.eq(1)
                    with m.If(cur_done.payload != 0):
                        m.d.sync += w.code.eq(dma_error_code(cur_done.payload))
                        m.next = "DONE"
                    with m.Else():
                        w.next_burst(m)
                        m.next = "ISSUE"
            with m.State("DONE"):
                m.d.comb += [ctl.done.valid.eq(1), ctl.done.payload.eq(w.code)]
                with m.If(ctl.done.ready):
                    m.next = "IDLE"
        return m


def _stub_factory(lo, span, router=False):
    def make(ctx):
        return StubUnit(lo, span, router=router)
    return make


class Overlay(wiring.Component):
    """The overlay top (module docstring).

    Parameters
    ----------
    config : OverlayConfig
        Board-level parameters (``axi_data_bits`` must be 256: one instruction / one 32-byte ISA
        beat per bus word).
    hbm_bytes : int
        Bytes of one HBM pseudo-channel (a power of two; default the board's, 256 MiB on the
        U280). Addresses on every AXI port are *global*: channel ``k`` occupies
        ``[k * hbm_bytes, (k + 1) * hbm_bytes)``, as in the U280's HBM address map and the
        compiler's layout; the DMAs reject accesses beyond the ``hbm_ports`` channels present
        (``HBM_RANGE``). Which channels a port can reach is the platform's business (the U280's
        AXI switch reaches all; the compiler streams channel ``k`` through port ``k``).
    queue_depth, fetch_depth : int
        Controller queue / instruction-FIFO depths.
    buf_words : int
        Scratch buffer size in 32-byte words (a power of two: one memory bank per buffer).
    hist_words : int
        KV history buffer size in 32-byte words (0: none; a unit with ``hist_r`` / ``hist_w``
        ports needs it).
    units : dict[Unit, factory], optional
        Replacement unit slots (see module docstring); defaults: LoadUnit, StoreUnit and stubs
        with :data:`DEFAULT_STUBS` timing (``stubs`` overrides it).
    max_burst, max_outstanding : int
        Per-port DMA parameters.

    Ports
    -----
    s_axi_control : In(axi4_lite_signature(CSR_ADDR_BITS))
    m_axi_hbmNN : Out(AXI4Signature(256, axi_addr_bits)) for NN in 00 .. hbm_ports-1
    interrupt : Out(1)
    """

    def __init__(self, config: OverlayConfig | None = None, *, hbm_bytes: int | None = None,
                 queue_depth: int = QUEUE_DEPTH, fetch_depth: int = FETCH_DEPTH,
                 buf_words: int = BUF_WORDS, hist_words: int = 0, units=None, stubs=None, max_burst: int = 64,
                 max_outstanding: int = 8):
        config = config if config is not None else OverlayConfig()
        if config.axi_data_bits != isa.INSTR_BITS:
            raise ConfigError(f"the overlay needs {isa.INSTR_BITS}-bit HBM ports (one instruction "
                              f"and one {isa.BUS_BYTES}-byte ISA beat per bus word), got "
                              f"{config.axi_data_bits}")
        if hbm_bytes is None:
            hbm_bytes = min(config.board_info.hbm_bytes_per_channel, 1 << config.axi_addr_bits)
        max_words = (1 << isa.BUF_OFFSET_BITS) // isa.BUS_BYTES
        if not isinstance(buf_words, int) or not 1 <= buf_words <= max_words or buf_words & (buf_words - 1):
            raise ConfigError(f"buf_words must be a power of two in [1, {max_words}] (one memory bank "
                              f"per buffer), got {buf_words!r}")
        if not isinstance(hist_words, int) or hist_words < 0 or hist_words & (hist_words - 1) \
                or hist_words > 1 << (isa.HIST_OFFSET_BITS - 5):
            raise ConfigError(f"hist_words must be 0 or a power of two up to {1 << (isa.HIST_OFFSET_BITS - 5)}, "
                              f"got {hist_words!r}")
        self.config = config
        if not isinstance(hbm_bytes, int) or hbm_bytes < isa.BUS_BYTES or hbm_bytes & (hbm_bytes - 1):
            raise ConfigError(f"hbm_bytes (bytes per pseudo-channel) must be a power of two >= "
                              f"{isa.BUS_BYTES}, got {hbm_bytes!r}")
        self.dma = DmaParams(data_width=isa.INSTR_BITS, addr_width=config.axi_addr_bits,
                             mem_bytes=min(hbm_bytes * config.hbm_ports, 1 << config.axi_addr_bits),
                             max_burst=max_burst,
                             max_outstanding=max_outstanding)
        self.ctx = SlotContext(self.dma, config.hbm_ports, buf_words, hist_words, hbm_bytes)
        self.queue_depth, self.fetch_depth = queue_depth, fetch_depth
        stubs = {**DEFAULT_STUBS, **(stubs or {})}
        factories = {
            isa.Unit.LD: LoadUnit, isa.Unit.ST: StoreUnit,
            isa.Unit.TLMM: _stub_factory(*stubs[isa.Unit.TLMM]),
            isa.Unit.PE: _stub_factory(*stubs[isa.Unit.PE], router=True),
            isa.Unit.NPE: _stub_factory(*stubs[isa.Unit.NPE]),
        }
        for u, f in (units or {}).items():
            if u not in factories:
                raise ConfigError(f"no unit slot {u!r}; slots: {[x.name for x in factories]}")
            factories[u] = f
        self.slots = {u: factories[u](self.ctx) for u in ENGINE_UNITS}
        for u, s in self.slots.items():
            if "ctl" not in s.signature.members:
                raise ConfigError(f"unit slot {u.name}: the component has no 'ctl' unit port")
        sig = {"s_axi_control": In(axi4_lite_signature(CSR_ADDR_BITS)), "interrupt": Out(1)}
        for name in config.port_names:
            sig[name] = Out(AXI4Signature(isa.INSTR_BITS, config.axi_addr_bits, self.dma.id_width))
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        cfg, ctx = self.config, self.ctx
        m.submodules.csr = csr = CSRBlock()
        m.submodules.ctrl = ctrl = Controller(self.dma, queue_depth=self.queue_depth,
                                              fetch_depth=self.fetch_depth)
        wiring.connect(m, wiring.flipped(self.s_axi_control), csr.axi)
        m.d.comb += [
            ctrl.start.eq(csr.start), ctrl.soft_reset.eq(csr.soft_reset),
            ctrl.prog_base.eq(csr.prog_base), ctrl.prog_len.eq(csr.prog_len),
            ctrl.watchdog.eq(csr.watchdog),
            csr.busy.eq(ctrl.busy), csr.done.eq(ctrl.done), csr.error.eq(ctrl.error),
            csr.error_code.eq(ctrl.error_code), csr.error_pc.eq(ctrl.error_pc), csr.pc.eq(ctrl.pc),
            self.interrupt.eq(csr.irq),
        ]

        # ---- unit slots
        rd_clients = [[ctrl.fetch] if k == 0 else [] for k in range(cfg.hbm_ports)]
        wr_clients = [[] for _ in range(cfg.hbm_ports)]
        mem_clients = {name: [] for name in ("sp_r", "sp_w", "hist_r", "hist_w")}
        for i, u in enumerate(ENGINE_UNITS):
            slot = self.slots[u]
            m.submodules[f"unit_{u.name.lower()}"] = ResetInserter(ctrl.unit_reset)(slot)
            members = slot.signature.members
            wiring.connect(m, ctrl.units[i], slot.ctl)
            if "rd" in members:
                for k in range(cfg.hbm_ports):
                    rd_clients[k].append(slot.rd[k])
            if "wr" in members:
                for k in range(cfg.hbm_ports):
                    wr_clients[k].append(slot.wr[k])
            if "mask" in members:
                wiring.connect(m, slot.mask, ctrl.mask)
            if "bitmask" in members:
                m.d.comb += slot.bitmask.eq(ctrl.bitmask)
            for name, clients in mem_clients.items():
                if name in members:
                    ports = getattr(slot, name)
                    clients.extend(ports if members[name].dimensions else [ports])

        # ---- on-chip memories: scratchpad (one bank per buffer) and KV history buffer
        self._memory(m, "scratch", isa.NUM_BUFFERS, ctx.buf_words, mem_clients["sp_r"], mem_clients["sp_w"])
        if mem_clients["hist_r"] or mem_clients["hist_w"]:
            if not ctx.hist_words:
                raise ConfigError("a unit uses the KV history buffer (hist_r / hist_w) but the overlay "
                                  "was built with hist_words=0")
            self._memory(m, "kv_history", 1, ctx.hist_words, mem_clients["hist_r"], mem_clients["hist_w"])

        # ---- HBM ports: DMA + arbiters + byte counters
        bb = self.dma.beat_bytes
        names = [n for n, _ in COUNTERS]
        inc = csr.counter_inc
        for k, pname in enumerate(cfg.port_names):
            port = DmaPort(self.dma)
            m.submodules[f"dma{k:02d}"] = port
            wiring.connect(m, port.axi, wiring.flipped(getattr(self, pname)))
            self._attach(m, f"rdarb{k:02d}", ReadArbiter, rd_clients[k], port, "rd")
            self._attach(m, f"wrarb{k:02d}", WriteArbiter, wr_clients[k], port, "wr")
            axi = port.axi
            m.d.comb += [
                inc[names.index(f"HBM_RD_P{k}")].eq(Mux(axi.r.valid & axi.r.ready, bb, 0)),
                inc[names.index(f"HBM_WR_P{k}")].eq(Mux(axi.w.valid & axi.w.ready, bb, 0)),
            ]
        m.d.comb += inc[names.index("CYCLES")].eq(ctrl.cnt_cycles)
        for u in isa.Unit:
            m.d.comb += [inc[names.index(f"{u.name}_BUSY")].eq(ctrl.cnt_busy[int(u)]),
                         inc[names.index(f"{u.name}_STALL")].eq(ctrl.cnt_stall[int(u)])]
        return m

    @staticmethod
    def _memory(m, name, banks, bank_words, readers, writers):
        """Instantiate a :class:`BankedMemory` for the given client ports (priority = list order)."""
        m.submodules[name] = mem = BankedMemory(banks, bank_words, len(readers), len(writers))
        for port, client in zip(mem.r, readers):
            wiring.connect(m, client, port)
        for port, client in zip(mem.w, writers):
            wiring.connect(m, client, port)

    def _attach(self, m, name, arbiter_cls, clients, port, kind):
        """Connect ``clients`` to the port's read or write DMA through an arbiter (or tie off)."""
        cmd, data, done = (getattr(port, f"{kind}_{x}") for x in ("cmd", "data", "done"))
        if not clients:
            m.d.comb += done.ready.eq(1)
            if kind == "rd":
                m.d.comb += data.ready.eq(1)
            return
        m.submodules[name] = arb = arbiter_cls(self.dma, len(clients))
        for i, c in enumerate(clients):
            wiring.connect(m, c, arb.clients[i])
        a = arb.dma
        m.d.comb += [cmd.valid.eq(a.cmd.valid), cmd.payload.eq(a.cmd.payload),
                     a.cmd.ready.eq(cmd.ready), a.done.valid.eq(done.valid),
                     a.done.payload.eq(done.payload), done.ready.eq(a.done.ready)]
        if kind == "rd":
            m.d.comb += [a.data.valid.eq(data.valid), a.data.payload.eq(data.payload),
                         data.ready.eq(a.data.ready)]
        else:
            m.d.comb += [data.valid.eq(a.data.valid), data.payload.eq(a.data.payload),
                         a.data.ready.eq(data.ready)]
