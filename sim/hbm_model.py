"""A deterministic HBM pseudo-channel model written in Amaranth: an AXI4 slave with a memory.

Because the model is HDL, a Verilated design of DMA + model runs without Python in the per-cycle
loop: the testbench loads memory contents, starts, waits for a done edge and checks.

U280 parameters (defaults) and how they are derived
---------------------------------------------------
- One U280 HBM2 pseudo-channel (PC) delivers at most 460 GB/s / 32 = **14.375 GB/s**.
- Its AXI port is 256 bits wide and runs at up to 450 MHz: 32 B x 450e6 = 14.4 GB/s.
- ternopu's design clock is **300 MHz** (:data:`DESIGN_CLOCK_HZ`). A 256-bit port at 300 MHz moves
  at most 32 B x 300e6 = 9.6 GB/s, i.e. it would need 14.375e9 / (32 x 300e6) = 1.497 beats per
  cycle to use the PC; one beat per cycle leaves a third of HBM unused. The overlay therefore
  attaches each PC through a **512-bit port at 300 MHz** (a width/clock converter in front of the
  HBM IP, as Vitis kernels do): 14.375e9 / (64 x 300e6) = 0.7487 beats per design cycle. The model
  rounds this to the rate limit **3 beats per 4 cycles** (:data:`U280_RATE`) = 14.4 GB/s, which is
  exactly the 256-bit/450 MHz AXI port limit (0.17 % above the PC's 14.375 GB/s).
  :func:`port_rate` computes the limit for other widths / clocks.
- Read latency: **150 ns** from the AR handshake to the first R beat, i.e. **45 cycles** at
  300 MHz (:data:`U280_READ_LATENCY`). This is an *assumption* typical of HBM2 behind the U280's
  AXI switch and memory controller (row activation + CAS + controller/switch pipeline); it is a
  parameter, and docs/memsys.md shows how the DMA's outstanding-burst count covers it.

Behaviour
---------
- Memory: ``depth`` words of ``data_width`` bits (``amaranth.lib.memory``), word ``i`` at byte
  address ``i * data_width/8``. Initial contents from ``init`` (elaboration time) or through the
  ``host`` port (one word per cycle; the host write wins over an AXI write in the same cycle).
- Reads: AR requests queue in a FIFO of ``queue_depth``; each is stamped with the cycle it was
  accepted. A burst starts no earlier than ``read_latency`` cycles after its AR handshake
  (first R beat exactly ``read_latency`` cycles after it when nothing else is queued), then its
  beats leave at the rate limit, back to back with the next burst. ``r.ready`` low stalls the
  engine (4-entry R buffer).
- Writes: a W beat is taken only when the head AW is known and the rate limit allows; the write
  is performed at once (byte strobes honoured); B follows the last beat after 1-2 cycles.
- Bandwidth: a shared credit bucket; every cycle adds ``rate[0]`` credits, each read or write
  beat costs ``rate[1]``; a read beat goes first. Credits saturate at ``2 * rate[1] + rate[0]``
  (a short idle gap can be made up, a long one cannot). Long-run limit:
  ``rate[0] / rate[1]`` beats per cycle for reads + writes together, at most one beat per
  channel per cycle.
- Responses: ``DECERR`` for beats beyond ``depth`` words; ``SLVERR`` for beats inside the
  optional ``slverr_range = (start, end)`` byte range, for bursts whose ``size`` is not the full
  width, or whose type is not INCR. An errored read beat returns zero; an errored write beat is not
  written; a write burst's B carries the first error of its beats.
- Random-free: the same traffic gives the same cycle-by-cycle behaviour.
"""

from __future__ import annotations

from fractions import Fraction

from amaranth import Cat, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError
from ternopu.hw.axi import (ADDR_WIDTH, BURST_INCR, ID_WIDTH, LEN_WIDTH, RESP_DECERR, RESP_OKAY,
                            RESP_SLVERR, AXI4Signature, beat_bytes, check_axi_params, size_code)

__all__ = [
    "U280_PORTS", "U280_TOTAL_BYTES_PER_S", "U280_PC_BYTES_PER_S", "U280_AXI_CLOCK_HZ",
    "DESIGN_CLOCK_HZ", "U280_DATA_WIDTH", "U280_RATE", "U280_READ_LATENCY_NS",
    "U280_READ_LATENCY", "MIN_READ_LATENCY", "port_rate", "HostPortSignature", "HbmModel",
    "HbmSystem", "WideHostPortSignature",
]

#: HBM2 pseudo-channels on the U280.
U280_PORTS = 32
#: Aggregate peak HBM bandwidth of the U280 (bytes/s).
U280_TOTAL_BYTES_PER_S = 460e9
#: Peak per pseudo-channel: 460 GB/s / 32 = 14.375 GB/s.
U280_PC_BYTES_PER_S = U280_TOTAL_BYTES_PER_S / U280_PORTS
#: Highest clock of the U280 HBM AXI ports.
U280_AXI_CLOCK_HZ = 450e6
#: ternopu's design clock for modelled results.
DESIGN_CLOCK_HZ = 300e6
#: Port width the overlay uses per pseudo-channel at the design clock (see module docstring).
U280_DATA_WIDTH = 512
#: Rate limit (beats, cycles) of a 512-bit port at 300 MHz: 3/4 beat per cycle = 14.4 GB/s.
U280_RATE = (3, 4)
#: Assumed HBM read latency (AR handshake to first R beat), nanoseconds.
U280_READ_LATENCY_NS = 150
#: The same in design-clock cycles: 150 ns x 300 MHz = 45.
U280_READ_LATENCY = round(U280_READ_LATENCY_NS * 1e-9 * DESIGN_CLOCK_HZ)
#: Shortest read latency the model's pipeline can produce (cycles).
MIN_READ_LATENCY = 4


def port_rate(data_width: int, clock_hz: float = DESIGN_CLOCK_HZ,
              bytes_per_s: float = U280_PC_BYTES_PER_S, max_cycles: int = 16) -> tuple[int, int]:
    """Beats-per-cycles rate limit of one port: ``bytes_per_s / (data_width/8 * clock_hz)``.

    Returned as the nearest fraction ``(beats, cycles)`` with ``cycles <= max_cycles``; a result
    above 1 beat/cycle means the port width, not HBM, is the limit (the model then moves one beat
    per cycle per channel). ``port_rate(512) == (3, 4)``, ``port_rate(256) == (3, 2)``.
    """
    if data_width <= 0 or clock_hz <= 0 or bytes_per_s <= 0:
        raise ConfigError("port_rate needs positive data_width, clock_hz and bytes_per_s")
    f = Fraction(bytes_per_s / (data_width / 8 * clock_hz)).limit_denominator(max_cycles)
    return f.numerator, f.denominator



def _check_timing(read_latency, rate, queue_depth) -> None:
    if not isinstance(read_latency, int) or not MIN_READ_LATENCY <= read_latency < 1 << 20:
        raise ConfigError(f"read_latency must be an int in [{MIN_READ_LATENCY}, 2**20), "
                          f"got {read_latency!r}")
    if (not isinstance(rate, tuple) or len(rate) != 2
            or not all(isinstance(v, int) and 1 <= v <= 1024 for v in rate)):
        raise ConfigError(f"rate must be (beats, cycles) with ints in [1, 1024], got {rate!r}")
    if not isinstance(queue_depth, int) or not 1 <= queue_depth <= 256:
        raise ConfigError(f"queue_depth must be an int in [1, 256], got {queue_depth!r}")


class HostPortSignature(wiring.Signature):
    """Host-side memory access of the model (driven by a testbench).

    ``addr`` (word index), ``wdata``, ``we`` (write ``wdata`` at ``addr`` this cycle, all bytes),
    ``rdata`` (word at the ``addr`` of the previous cycle).
    """

    def __init__(self, data_width: int, depth: int):
        super().__init__({
            "addr": Out(range(depth)), "wdata": Out(data_width), "we": Out(1), "rdata": In(data_width),
        })


class WideHostPortSignature(wiring.Signature):
    """Host access of ``lanes`` consecutive words per cycle (driven by a testbench).

    ``addr`` (word index of lane 0), ``wdata`` (lane ``i`` in bits ``[i*W, (i+1)*W)``), ``we``
    (one bit per lane: write that lane this cycle), ``rdata`` (the words at the previous cycle's
    ``addr``).
    """

    def __init__(self, data_width: int, depth: int, lanes: int):
        super().__init__({
            "addr": Out(range(depth)), "wdata": Out(data_width * lanes), "we": Out(lanes),
            "rdata": In(data_width * lanes),
        })


class HbmModel(wiring.Component):
    """AXI4 slave modelling one HBM pseudo-channel (latency + bandwidth limit); see module doc.

    Parameters
    ----------
    depth : int
        Memory size in words (>= 1).
    data_width, addr_width, id_width : int
        AXI geometry; default 512 / 34 / 6.
    read_latency : int
        Cycles from AR handshake to the first R beat (>= ``MIN_READ_LATENCY``); default 45.
    rate : (int, int)
        ``(beats, cycles)`` bandwidth limit; default ``U280_RATE`` = (3, 4).
    queue_depth : int
        AR and AW requests the model accepts ahead (default 32).
    init : sequence of int, optional
        Initial words (shorter than ``depth`` is zero padded).
    slverr_range : (int, int), optional
        Byte range ``[start, end)`` answered with SLVERR.

    Ports
    -----
    axi : In(AXI4Signature) -- the slave side.
    host : In(HostPortSignature)
    """

    def __init__(self, depth: int, *, data_width: int = U280_DATA_WIDTH,
                 addr_width: int = ADDR_WIDTH, id_width: int = ID_WIDTH,
                 read_latency: int = U280_READ_LATENCY, rate: tuple[int, int] = U280_RATE,
                 queue_depth: int = 32, init=None, slverr_range=None):
        check_axi_params(data_width, addr_width, id_width)
        bb = beat_bytes(data_width)
        if not isinstance(depth, int) or depth < 1 or depth * bb > 1 << addr_width:
            raise ConfigError(f"depth must be an int in [1, 2**addr_width / {bb}], got {depth!r}")
        _check_timing(read_latency, rate, queue_depth)
        init = list(init or [])
        if len(init) > depth:
            raise ConfigError(f"init has {len(init)} words, memory depth is {depth}")
        if any(not isinstance(v, int) or not 0 <= v < 1 << data_width for v in init):
            raise ConfigError(f"init words must be ints in [0, 2**{data_width})")
        if slverr_range is not None:
            s, e = slverr_range
            if not 0 <= s <= e <= 1 << addr_width:
                raise ConfigError(f"slverr_range must be 0 <= start <= end <= 2**addr_width, got {slverr_range!r}")
        self.depth, self.data_width, self.addr_width, self.id_width = depth, data_width, addr_width, id_width
        self.read_latency, self.rate, self.queue_depth = read_latency, rate, queue_depth
        self.init, self.slverr_range = init, slverr_range
        self.beat_bytes = bb
        super().__init__({
            "axi": In(AXI4Signature(data_width, addr_width, id_width)),
            "host": In(HostPortSignature(data_width, depth)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self.data_width), depth=self.depth,
                                               init=self.init)
        wp = mem.write_port(granularity=8)
        rp = mem.read_port()
        hp = mem.read_port()
        m.d.comb += [hp.addr.eq(self.host.addr), self.host.rdata.eq(hp.data)]
        sh = self.beat_bytes.bit_length() - 1
        limit = self.depth * self.beat_bytes

        def word_of(addr):
            return addr[sh:], addr >= limit

        host_write = _HostWrite(self.host.we, self.host.addr, self.host.wdata)
        m.submodules.engine = _AxiEngine(self, self.axi, rp, wp, word_of, host_write, self.slverr_range)
        return m

    #: Cycles the read pipeline adds after a burst is started (memory read + R buffer).
    _READ_PIPE = 3


class _HostWrite:
    """The host's write request as an engine sees it: AXI writes pause while ``we`` is high;
    ``shares_port``: the engine's memory write port also carries the host write."""

    def __init__(self, we, addr=None, wdata=None, shares_port=True):
        self.we, self.addr, self.wdata, self.shares_port = we, addr, wdata, shares_port


class _AxiEngine(Elaboratable):
    """The AXI4 slave logic of one port (reads, writes, credits) on given memory ports.

    ``word_of(addr) -> (word index, decode error)`` maps a byte address onto the memory; ``p``
    carries the timing / geometry parameters (an :class:`HbmModel` or :class:`HbmSystem`).
    """

    def __init__(self, p, axi, rp, wp, word_of, host: _HostWrite, slverr_range=None):
        self.p, self.axi, self.rp, self.wp, self.word_of, self.host = p, axi, rp, wp, word_of, host
        self.slverr_range = slverr_range

    def _beat_resp(self, addr, bad_burst):
        """Response code of a beat at byte address ``addr`` (combinational)."""
        resp = Mux(self.word_of(addr)[1], RESP_DECERR, RESP_OKAY)
        if self.slverr_range is not None:
            s, e = self.slverr_range
            resp = Mux((addr >= s) & (addr < e), RESP_SLVERR, resp)
        return Mux(bad_burst, RESP_SLVERR, resp)

    def elaborate(self, platform):
        m = Module()
        p = self.p
        dw, aw, iw, bb = p.data_width, p.addr_width, p.id_width, p.beat_bytes
        sh = bb.bit_length() - 1
        num, den = p.rate
        axi, rp, wp, host = self.axi, self.rp, self.wp, self.host

        now = Signal(32)
        m.d.sync += now.eq(now + 1)

        # ---- bandwidth credits, shared by reads and writes --------------------------------
        cap = 2 * den + num
        credit = Signal(range(cap + 1), init=cap)
        rd_go = Signal()
        wr_go = Signal()
        rd_ok = credit >= den
        wr_ok = Mux(rd_go, credit >= 2 * den, credit >= den)
        spent = Signal(range(2 * den + 1))
        m.d.comb += spent.eq(Mux(rd_go, den, 0) + Mux(wr_go, den, 0))
        nxt = Signal(range(cap + num + 1))
        m.d.comb += nxt.eq(credit + num - spent)
        m.d.sync += credit.eq(Mux(nxt > cap, cap, nxt))

        req = data.StructLayout({"addr": unsigned(aw), "len": unsigned(LEN_WIDTH),
                                 "id": unsigned(iw), "bad": unsigned(1), "ts": unsigned(32)})

        def bad_burst(ch):
            return (ch.size != size_code(dw)) | (ch.burst != BURST_INCR)

        # ---- read path ------------------------------------------------------------------
        m.submodules.arq = arq = fifo.SyncFIFO(width=req.size, depth=p.queue_depth)
        m.d.comb += [
            axi.ar.ready.eq(arq.w_rdy),
            arq.w_en.eq(axi.ar.valid),
            arq.w_data.eq(Cat(axi.ar.addr, axi.ar.len, axi.ar.id, bad_burst(axi.ar), now)),
        ]
        head = data.View(req, arq.r_data)
        rbuf_depth = 4
        rbeat = data.StructLayout({"data": unsigned(dw), "id": unsigned(iw), "resp": unsigned(2),
                                   "last": unsigned(1)})
        m.submodules.rq = rq = fifo.SyncFIFO(width=rbeat.size, depth=rbuf_depth)

        active = Signal()
        r_addr = Signal(aw)
        r_left = Signal(LEN_WIDTH)  # beats after the current one
        r_id = Signal(iw)
        r_bad = Signal()
        inflight = Signal()          # a memory read was issued last cycle
        infl_id = Signal(iw)
        infl_resp = Signal(2)
        infl_last = Signal()

        # The head burst may start when its latency has elapsed; the pipeline below adds
        # _READ_PIPE cycles (memory read, R buffer), so the start condition subtracts them.
        wait = p.read_latency - HbmModel._READ_PIPE
        head_due = arq.r_rdy & ((now - head.ts)[:32] >= wait)
        space = (rq.level + inflight) < rbuf_depth
        m.d.comb += rd_go.eq(active & space & rd_ok)
        finishing = rd_go & (r_left == 0)
        load = head_due & (~active | finishing)
        with m.If(load):
            m.d.comb += arq.r_en.eq(1)
            m.d.sync += [active.eq(1), r_addr.eq(head.addr), r_left.eq(head.len),
                         r_id.eq(head.id), r_bad.eq(head.bad)]
        with m.Elif(finishing):
            m.d.sync += active.eq(0)
        with m.If(rd_go & (r_left != 0)):
            m.d.sync += [r_addr.eq(r_addr + bb), r_left.eq(r_left - 1)]

        resp_now = self._beat_resp(r_addr, r_bad)
        m.d.comb += rp.addr.eq(self.word_of(r_addr)[0])
        m.d.sync += [inflight.eq(rd_go), infl_id.eq(r_id), infl_resp.eq(resp_now),
                     infl_last.eq(r_left == 0)]
        rbeat_in = data.View(rbeat, rq.w_data)
        m.d.comb += [
            rq.w_en.eq(inflight),
            rbeat_in.data.eq(Mux(infl_resp == RESP_OKAY, rp.data, 0)),
            rbeat_in.id.eq(infl_id), rbeat_in.resp.eq(infl_resp), rbeat_in.last.eq(infl_last),
        ]
        rbeat_out = data.View(rbeat, rq.r_data)
        m.d.comb += [
            axi.r.valid.eq(rq.r_rdy),
            axi.r.data.eq(rbeat_out.data), axi.r.id.eq(rbeat_out.id),
            axi.r.resp.eq(rbeat_out.resp), axi.r.last.eq(rbeat_out.last),
            rq.r_en.eq(axi.r.ready),
        ]

        # ---- write path -----------------------------------------------------------------
        m.submodules.awq = awq = fifo.SyncFIFO(width=req.size, depth=p.queue_depth)
        m.d.comb += [
            axi.aw.ready.eq(awq.w_rdy),
            awq.w_en.eq(axi.aw.valid),
            awq.w_data.eq(Cat(axi.aw.addr, axi.aw.len, axi.aw.id, bad_burst(axi.aw), now)),
        ]
        whead = data.View(req, awq.r_data)
        bl = data.StructLayout({"id": unsigned(iw), "resp": unsigned(2)})
        m.submodules.bq = bq = fifo.SyncFIFO(width=bl.size, depth=4)
        w_index = Signal(LEN_WIDTH)  # beat number inside the head AW burst
        w_err = Signal(2)            # first error of the burst so far
        w_addr = whead.addr + (w_index << sh)
        w_resp = self._beat_resp(w_addr, whead.bad)
        m.d.comb += [
            wr_go.eq(awq.r_rdy & axi.w.valid & bq.w_rdy & wr_ok & ~host.we),
            axi.w.ready.eq(awq.r_rdy & bq.w_rdy & wr_ok & ~host.we),
        ]
        if host.shares_port:
            with m.If(host.we):
                m.d.comb += [wp.addr.eq(host.addr), wp.data.eq(host.wdata), wp.en.eq(-1)]
            with m.Else():
                m.d.comb += [wp.addr.eq(self.word_of(w_addr)[0]), wp.data.eq(axi.w.data),
                             wp.en.eq(Mux(wr_go & (w_resp == RESP_OKAY), axi.w.strb, 0))]
        else:
            m.d.comb += [wp.addr.eq(self.word_of(w_addr)[0]), wp.data.eq(axi.w.data),
                         wp.en.eq(Mux(wr_go & (w_resp == RESP_OKAY), axi.w.strb, 0))]
        first_err = Mux(w_err != RESP_OKAY, w_err, w_resp)
        with m.If(wr_go):
            # The burst ends at its AW length (the W ``last`` flag is trusted to agree).
            with m.If(w_index == whead.len):
                m.d.comb += [awq.r_en.eq(1), bq.w_en.eq(1)]
                m.d.sync += [w_index.eq(0), w_err.eq(RESP_OKAY)]
            with m.Else():
                m.d.sync += [w_index.eq(w_index + 1), w_err.eq(first_err)]
        bin_ = data.View(bl, bq.w_data)
        bout = data.View(bl, bq.r_data)
        m.d.comb += [
            bin_.id.eq(whead.id), bin_.resp.eq(first_err),
            axi.b.valid.eq(bq.r_rdy), axi.b.id.eq(bout.id), axi.b.resp.eq(bout.resp),
            bq.r_en.eq(axi.b.ready),
        ]
        return m


class HbmSystem(wiring.Component):
    """Several HBM pseudo-channels behind an all-to-all switch, as the U280's AXI switch is used.

    Every AXI port reaches every channel: byte address ``a`` is channel ``a // channel_bytes``,
    local offset ``a % channel_bytes`` (the global HBM address space of
    :mod:`ternopu.sw.compiler.layout`), so a program fetch or a parameter read through port 0 finds
    data the compiler placed in any channel. One memory holds the first ``depth`` words of every
    channel (word ``ch * depth + local // beat``); a beat beyond them, or in a channel ``>=
    channels``, answers DECERR.

    Timing: each port has its own :class:`HbmModel` engine (read latency, request queues, rate
    credits); the rate limit is per *port*, not per channel -- exact when port ``p`` only touches
    channel ``p`` (how the compiler places streams), optimistic when several ports hit one channel
    in the same cycles.

    Parameters
    ----------
    channels : int
        AXI ports and channels (1..32).
    channel_bytes : int
        Address span of one channel, a power of two (U280: 256 MiB).
    depth : int
        Words backed per channel (``depth * beat <= channel_bytes``).
    data_width, addr_width, id_width, read_latency, rate, queue_depth
        As :class:`HbmModel`.
    host_lanes : int
        Words the host port moves per cycle (a testbench's per-cycle cost dominates loading).

    Ports
    -----
    axi : In(AXI4Signature).array(channels)
    host : In(WideHostPortSignature(data_width, channels * depth, host_lanes)) -- lane ``i`` is
        word ``addr + i`` (word ``ch * depth + w`` is channel ``ch``'s word ``w``); a host write
        pauses AXI writes for that cycle.
    """

    def __init__(self, channels: int, channel_bytes: int, depth: int, *,
                 data_width: int = 256, addr_width: int = ADDR_WIDTH, id_width: int = ID_WIDTH,
                 read_latency: int = U280_READ_LATENCY, rate: tuple[int, int] = (1, 1),
                 queue_depth: int = 32, host_lanes: int = 1):
        check_axi_params(data_width, addr_width, id_width)
        bb = beat_bytes(data_width)
        if not isinstance(channels, int) or not 1 <= channels <= U280_PORTS:
            raise ConfigError(f"channels must be an int in [1, {U280_PORTS}], got {channels!r}")
        if (not isinstance(channel_bytes, int) or channel_bytes < bb
                or channel_bytes & (channel_bytes - 1) or channels * channel_bytes > 1 << addr_width):
            raise ConfigError(f"channel_bytes must be a power of two >= {bb} with channels * "
                              f"channel_bytes <= 2**addr_width, got {channel_bytes!r}")
        if not isinstance(depth, int) or not 1 <= depth <= channel_bytes // bb:
            raise ConfigError(f"depth must be an int in [1, channel_bytes / {bb} = {channel_bytes // bb}], "
                              f"got {depth!r}")
        _check_timing(read_latency, rate, queue_depth)
        if not isinstance(host_lanes, int) or not 1 <= host_lanes <= 64:
            raise ConfigError(f"host_lanes must be an int in [1, 64], got {host_lanes!r}")
        self.host_lanes = host_lanes
        self.channels, self.channel_bytes, self.depth = channels, channel_bytes, depth
        self.data_width, self.addr_width, self.id_width = data_width, addr_width, id_width
        self.read_latency, self.rate, self.queue_depth = read_latency, rate, queue_depth
        self.beat_bytes = bb
        super().__init__({
            "axi": In(AXI4Signature(data_width, addr_width, id_width)).array(channels),
            "host": In(WideHostPortSignature(data_width, channels * depth, host_lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        n, depth, bb, lanes = self.channels, self.depth, self.beat_bytes, self.host_lanes
        total = n * depth
        m.submodules.mem = mem = memory.Memory(shape=unsigned(self.data_width), depth=total, init=[])
        rdata = []
        for i in range(lanes):
            hp = mem.read_port()
            hw = mem.write_port()
            a = self.host.addr + i
            m.d.comb += [hp.addr.eq(a), hw.addr.eq(a),
                         hw.data.eq(self.host.wdata[i * self.data_width:(i + 1) * self.data_width]),
                         hw.en.eq(self.host.we[i] & (a < total))]
            rdata.append(hp.data)
        m.d.comb += self.host.rdata.eq(Cat(*rdata))
        host_busy = self.host.we.any()
        sh = bb.bit_length() - 1
        csh = self.channel_bytes.bit_length() - 1

        def word_of(addr):
            ch = addr[csh:]
            local = addr[sh:csh]
            return ch * depth + local, (ch >= n) | (local >= depth)

        for k in range(n):
            rp = mem.read_port()
            wp = mem.write_port(granularity=8)
            m.submodules[f"port{k:02d}"] = _AxiEngine(self, self.axi[k], rp, wp, word_of,
                                                      _HostWrite(host_busy, shares_port=False))
        return m
