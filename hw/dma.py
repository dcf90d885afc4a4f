"""Burst DMAs for the overlay's AXI4 master ports (one read and one write DMA per HBM port).

Command format
--------------
A command (:func:`command_layout`) describes a 2-D transfer of ``rows`` rows of ``beats`` bus
words each; row ``r`` starts at byte address ``addr + r * stride``. A 1-D transfer is ``rows=1``
(``stride`` is then ignored). Addresses and the stride must be multiples of the beat size
(``data_width // 8`` bytes). ``beats == 0`` or ``rows == 0`` is a legal empty transfer: no bursts,
no data, a completion with :data:`DMA_OK`.

Bursts
------
Each row is cut into AXI4 INCR bursts exactly as :func:`ternopu.hw.axi.split_bursts` does:
longest possible, at most ``max_burst`` beats, never crossing a 4 KiB boundary. Up to
``max_outstanding`` bursts are in flight (address issued, data/response not finished); with an
HBM read latency of ``L`` cycles, full throughput needs ``max_outstanding * burst_beats >= L * rate``
(see docs/memsys.md). All bursts use one AXI id (``axi_id``), so responses come back in order.

Errors (completion code, :data:`ERR_WIDTH` bits)
------------------------------------------------
- :data:`DMA_ERR_MISALIGNED`: ``addr`` or (``rows > 1``) ``stride`` not beat aligned. Nothing is
  issued, no data moves (a write DMA consumes no input words).
- :data:`DMA_ERR_RANGE`: the last byte ``addr + (rows-1)*stride + beats*bb - 1`` is beyond
  ``mem_bytes``. Nothing is issued.
- :data:`DMA_ERR_SLVERR` / :data:`DMA_ERR_DECERR`: a response said so. The transfer still runs to
  its end (every commanded beat is delivered / consumed, so no consumer or producer hangs); the
  code of the *first* bad response is reported.

The DMA never hangs on its own: every command ends with exactly one completion.

Throughput and latency
----------------------
One command at a time. A command takes 2 cycles to check (misalignment/range, a registered
multiply for the 2-D span), then issues at most one burst address per cycle. Data moves one beat
per cycle when neither side stalls; the read data path is combinational from ``axi.r`` to
``data`` (``r.ready`` = ``data.ready``). Between commands there is the round trip (check +
memory latency); the compiler issues long (2-D) commands to amortise it.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

from .axi import (ADDR_WIDTH, BOUNDARY_BYTES, BURST_INCR, DATA_WIDTH, ID_WIDTH, MAX_BURST_BEATS,
                  RESP_DECERR, RESP_SLVERR, AddressChannelSignature, AXI4ReadSignature,
                  AXI4Signature, AXI4WriteSignature, beat_bytes, check_axi_params, size_code)

__all__ = [
    "DMA_OK", "DMA_ERR_MISALIGNED", "DMA_ERR_RANGE", "DMA_ERR_SLVERR", "DMA_ERR_DECERR",
    "ERR_WIDTH", "BEATS_WIDTH", "ROWS_WIDTH", "MAX_BURST", "MAX_OUTSTANDING",
    "command_layout", "read_data_layout", "DmaParams", "BurstIssuer", "ReadDMA", "WriteDMA",
    "DmaPort", "StripedReader", "stripe_layout", "StripeLayout", "stripe_split", "stripe_merge",
]

#: Completion codes.
DMA_OK, DMA_ERR_MISALIGNED, DMA_ERR_RANGE, DMA_ERR_SLVERR, DMA_ERR_DECERR = 0, 1, 2, 3, 4
#: Width of a completion code.
ERR_WIDTH = 3
#: Default width of the command's ``beats`` field (up to 2**20 - 1 beats per row).
BEATS_WIDTH = 20
#: Default width of the command's ``rows`` field.
ROWS_WIDTH = 12
#: Default longest burst issued (beats); 64 x 32 B = 2 KiB on the 256-bit bus.
MAX_BURST = 64
#: Default number of bursts in flight per DMA.
MAX_OUTSTANDING = 8


def command_layout(addr_width: int = ADDR_WIDTH, beats_width: int = BEATS_WIDTH,
                   rows_width: int = ROWS_WIDTH) -> data.StructLayout:
    """Layout of a DMA command: ``addr`` (bytes), ``beats`` per row, ``rows``, ``stride`` (bytes).

    Fields are packed LSB-first in that order (``addr`` occupies bits ``[0, addr_width)``).
    """
    return data.StructLayout({
        "addr": unsigned(addr_width),
        "beats": unsigned(beats_width),
        "rows": unsigned(rows_width),
        "stride": unsigned(addr_width),
    })


def read_data_layout(data_width: int) -> data.StructLayout:
    """Read-DMA output word: ``data`` (bus word) and ``last`` (final beat of the command)."""
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1)})


class DmaParams:
    """Validated DMA parameters shared by the read and write DMA.

    Parameters
    ----------
    data_width, addr_width, id_width : int
        AXI4 port geometry (see :func:`ternopu.hw.axi.check_axi_params`).
    max_burst : int
        Longest burst in beats, 1..256 (the hardware also stops at every 4 KiB boundary).
    max_outstanding : int
        Bursts in flight, 1..64.
    beats_width, rows_width : int
        Command field widths (1..32).
    mem_bytes : int or None
        Size of the address space the DMA may touch (range check); default ``2**addr_width``.
    axi_id : int
        The id put on every burst.
    """

    def __init__(self, *, data_width=DATA_WIDTH, addr_width=ADDR_WIDTH, id_width=ID_WIDTH,
                 max_burst=MAX_BURST, max_outstanding=MAX_OUTSTANDING, beats_width=BEATS_WIDTH,
                 rows_width=ROWS_WIDTH, mem_bytes=None, axi_id=0):
        check_axi_params(data_width, addr_width, id_width)
        if not isinstance(max_burst, int) or not 1 <= max_burst <= MAX_BURST_BEATS:
            raise ConfigError(f"max_burst must be an int in [1, {MAX_BURST_BEATS}], got {max_burst!r}")
        if not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 64:
            raise ConfigError(f"max_outstanding must be an int in [1, 64], got {max_outstanding!r}")
        for name, v in (("beats_width", beats_width), ("rows_width", rows_width)):
            if not isinstance(v, int) or not 1 <= v <= 32:
                raise ConfigError(f"{name} must be an int in [1, 32], got {v!r}")
        if mem_bytes is None:
            mem_bytes = 1 << addr_width
        if not isinstance(mem_bytes, int) or not 0 < mem_bytes <= 1 << addr_width:
            raise ConfigError(f"mem_bytes must be in (0, 2**addr_width = {1 << addr_width}], "
                              f"got {mem_bytes!r}")
        if mem_bytes % beat_bytes(data_width):
            raise ConfigError(f"mem_bytes ({mem_bytes}) must be a multiple of the "
                              f"{beat_bytes(data_width)}-byte beat")
        if not isinstance(axi_id, int) or not 0 <= axi_id < 1 << id_width:
            raise ConfigError(f"axi_id must fit {id_width} bits, got {axi_id!r}")
        self.data_width, self.addr_width, self.id_width = data_width, addr_width, id_width
        self.max_burst, self.max_outstanding = max_burst, max_outstanding
        self.beats_width, self.rows_width = beats_width, rows_width
        self.mem_bytes, self.axi_id = mem_bytes, axi_id
        self.beat_bytes = beat_bytes(data_width)

    @property
    def command(self) -> data.StructLayout:
        """The command layout for these widths."""
        return command_layout(self.addr_width, self.beats_width, self.rows_width)

    def replace(self, **kw) -> "DmaParams":
        """A copy with some parameters changed."""
        d = dict(data_width=self.data_width, addr_width=self.addr_width, id_width=self.id_width,
                 max_burst=self.max_burst, max_outstanding=self.max_outstanding,
                 beats_width=self.beats_width, rows_width=self.rows_width,
                 mem_bytes=self.mem_bytes, axi_id=self.axi_id)
        d.update(kw)
        return DmaParams(**d)


class BurstIssuer(wiring.Component):
    """Command checking, burst cutting and completion: the part read and write DMAs share.

    Ports
    -----
    cmd : In(stream of :func:`command_layout`)
        Accepted only while idle.
    addr : Out(AddressChannelSignature)
        The AR or AW channel (registered outputs).
    may_issue : In(1)
        The owner allows one more burst (outstanding limit / FIFO space).
    issued : Out(1)
        Pulse: a burst was loaded into ``addr`` this cycle; ``issued_beats`` is its length.
    issued_beats : Out(9)
        Beats of the burst loaded this cycle (1..256); only with ``with_issued_beats``.
    all_issued : Out(1)
        Every burst of the running command has been loaded (high only while running); only with
        ``with_all_issued``.
    drained : In(1)
        The owner has no burst in flight (all data / responses finished).
    resp : In(2), resp_valid : In(1)
        A response code seen by the owner (R beat or B); SLVERR/DECERR are recorded (first wins).
    done : Out(stream of unsigned(ERR_WIDTH))
        One completion per command.
    busy : Out(1)
        A command is being checked or run, or its completion has not been taken.
    running : Out(1)
        Bursts of a checked command are being issued or are in flight.
    """

    # The two DMAs need different progress outputs (a read DMA marks its last beat with
    # ``all_issued``, a write DMA queues ``issued_beats``); an output its owner does not read
    # would stay in the Verilog as computed, unread logic, so each is present only on request.
    def __init__(self, p: DmaParams, *, with_issued_beats: bool = True, with_all_issued: bool = True):
        self.p = p
        sig = {
            "cmd": In(stream.Signature(p.command)),
            "addr": Out(AddressChannelSignature(p.addr_width, p.id_width)),
            "may_issue": In(1),
            "issued": Out(1),
        }
        if with_issued_beats:
            sig["issued_beats"] = Out(9)
        if with_all_issued:
            sig["all_issued"] = Out(1)
        super().__init__({
            **sig,
            "drained": In(1),
            "resp": In(2),
            "resp_valid": In(1),
            "done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "busy": Out(1),
            "running": Out(1),
        })

    def elaborate(self, platform):
        p = self.p
        m = Module()
        sh = p.beat_bytes.bit_length() - 1
        aw = p.addr_width
        wide = aw + p.rows_width + 2  # the 2-D span never wraps in this width

        c_addr = Signal(aw)
        c_beats = Signal(p.beats_width)
        c_rows = Signal(p.rows_width)
        c_stride = Signal(aw)
        span = Signal(wide)          # (rows-1) * stride, registered
        err = Signal(ERR_WIDTH)

        row_base = Signal(aw)        # start of the current row
        cur = Signal(aw)             # next burst address
        rem = Signal(p.beats_width)  # beats of the current row not yet issued
        rows_left = Signal(p.rows_width)
        all_issued = Signal()

        m.d.comb += [
            self.addr.size.eq(size_code(p.data_width)),
            self.addr.burst.eq(BURST_INCR),
            self.addr.id.eq(p.axi_id),
        ]

        # First bad response wins; cleared when a new command is accepted.
        with m.If(self.resp_valid & (err == DMA_OK)):
            with m.If(self.resp == RESP_SLVERR):
                m.d.sync += err.eq(DMA_ERR_SLVERR)
            with m.Elif(self.resp == RESP_DECERR):
                m.d.sync += err.eq(DMA_ERR_DECERR)

        # Burst length: min(rem, max_burst, beats to the next 4 KiB boundary).
        to_boundary = Signal(range(BOUNDARY_BYTES // p.beat_bytes + 1))
        m.d.comb += to_boundary.eq((BOUNDARY_BYTES - cur[:12]) >> sh)
        n = Signal(9)
        lim = Signal(9)
        m.d.comb += lim.eq(Mux(to_boundary < p.max_burst, to_boundary, p.max_burst))
        m.d.comb += n.eq(Mux(rem < lim, rem, lim))

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    pl = self.cmd.payload
                    m.d.sync += [c_addr.eq(pl.addr), c_beats.eq(pl.beats), c_rows.eq(pl.rows),
                                 c_stride.eq(pl.stride), err.eq(DMA_OK)]
                    m.next = "SPAN"
            with m.State("SPAN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += span.eq(Mux(c_rows > 1, (c_rows - 1) * c_stride, 0))
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                end = Signal(wide)
                m.d.comb += end.eq(c_addr + span + (c_beats << sh))
                misaligned = (c_addr[:sh] != 0) | ((c_rows > 1) & (c_stride[:sh] != 0)) if sh else Const(0)
                with m.If((c_beats == 0) | (c_rows == 0)):
                    m.next = "DONE"
                with m.Elif(misaligned):
                    m.d.sync += err.eq(DMA_ERR_MISALIGNED)
                    m.next = "DONE"
                with m.Elif(end > p.mem_bytes):
                    m.d.sync += err.eq(DMA_ERR_RANGE)
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += [row_base.eq(c_addr), cur.eq(c_addr), rem.eq(c_beats),
                                 rows_left.eq(c_rows), all_issued.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.running.eq(1)]
                if "all_issued" in self.signature.members:
                    m.d.comb += self.all_issued.eq(all_issued)
                with m.If(self.addr.valid & self.addr.ready):
                    m.d.sync += self.addr.valid.eq(0)
                load = ~all_issued & self.may_issue & (~self.addr.valid | self.addr.ready)
                with m.If(load):
                    m.d.comb += self.issued.eq(1)
                    if "issued_beats" in self.signature.members:
                        m.d.comb += self.issued_beats.eq(n)
                    m.d.sync += [self.addr.valid.eq(1), self.addr.addr.eq(cur),
                                 self.addr.len.eq(n - 1)]
                    with m.If(rem == n):  # row finished
                        with m.If(rows_left == 1):
                            m.d.sync += all_issued.eq(1)
                        m.d.sync += [rows_left.eq(rows_left - 1), rem.eq(c_beats),
                                     row_base.eq(row_base + c_stride),
                                     cur.eq(row_base + c_stride)]
                    with m.Else():
                        m.d.sync += [rem.eq(rem - n), cur.eq(cur + (n << sh))]
                with m.If(all_issued & ~self.addr.valid & self.drained):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.valid.eq(1), self.done.payload.eq(err)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m


def _dma_signature_common(p: DmaParams) -> dict:
    return {
        "done": Out(stream.Signature(unsigned(ERR_WIDTH))),
        "busy": Out(1),
    }


class ReadDMA(wiring.Component):
    """Read DMA: commands in, AXI4 INCR bursts out, bus words out as a stream.

    Parameters
    ----------
    **params
        See :class:`DmaParams` (``data_width`` default 256, ``max_burst`` 64,
        ``max_outstanding`` 8, ...); or pass ``params=DmaParams(...)``.

    Ports
    -----
    cmd : In(stream of :func:`command_layout`)
    data : Out(stream of :func:`read_data_layout`)
        Words in address order (row by row); ``last`` on the final word of the command.
    done : Out(stream of unsigned(ERR_WIDTH))
        Completion code after the final word has been taken.
    busy : Out(1)
    axi : Out(AXI4ReadSignature)

    Throughput: one word per cycle while ``data.ready`` and ``axi.r.valid`` are high; ``r.ready``
    is ``data.ready`` (combinational). Outstanding bursts: ``MAX_OUTSTANDING`` attribute.
    """

    def __init__(self, params: DmaParams | None = None, **kw):
        p = params if params is not None else DmaParams(**kw)
        self.p = p
        self.MAX_OUTSTANDING = p.max_outstanding
        self.MAX_BURST = p.max_burst
        super().__init__({
            "cmd": In(stream.Signature(p.command)),
            "data": Out(stream.Signature(read_data_layout(p.data_width))),
            **_dma_signature_common(p),
            "axi": Out(AXI4ReadSignature(p.data_width, p.addr_width, p.id_width)),
        })

    def elaborate(self, platform):
        p = self.p
        m = Module()
        m.submodules.issuer = iss = BurstIssuer(p, with_issued_beats=False)
        wiring.connect(m, wiring.flipped(self.cmd), iss.cmd)
        wiring.connect(m, wiring.flipped(self.done), iss.done)
        wiring.connect(m, wiring.flipped(self.axi.ar), iss.addr)

        outstanding = Signal(range(p.max_outstanding + 1))
        r = self.axi.r
        beat = iss.running & r.valid & self.data.ready
        burst_end = beat & r.last
        m.d.comb += [
            self.busy.eq(iss.busy),
            iss.may_issue.eq(outstanding < p.max_outstanding),
            iss.drained.eq(outstanding == 0),
            iss.resp.eq(r.resp),
            iss.resp_valid.eq(beat),
            r.ready.eq(iss.running & self.data.ready),
            self.data.valid.eq(iss.running & r.valid),
            self.data.payload.data.eq(r.data),
            self.data.payload.last.eq(r.last & iss.all_issued & (outstanding == 1)
                                      & ~iss.addr.valid),
        ]
        m.d.sync += outstanding.eq(outstanding + iss.issued - burst_end)
        return m


class WriteDMA(wiring.Component):
    """Write DMA: commands in, bus words in as a stream, AXI4 INCR write bursts out.

    The input must supply exactly ``rows * beats`` words per command (all byte strobes are set).
    A W burst starts only after its AW has been loaded; burst lengths wait in a FIFO of
    ``max_outstanding`` entries.

    Ports
    -----
    cmd : In(stream of :func:`command_layout`)
    data : In(stream of unsigned(data_width))
    done : Out(stream of unsigned(ERR_WIDTH))
        After the write response of the final burst.
    busy : Out(1)
    axi : Out(AXI4WriteSignature)
    """

    def __init__(self, params: DmaParams | None = None, **kw):
        p = params if params is not None else DmaParams(**kw)
        self.p = p
        self.MAX_OUTSTANDING = p.max_outstanding
        self.MAX_BURST = p.max_burst
        super().__init__({
            "cmd": In(stream.Signature(p.command)),
            "data": In(stream.Signature(unsigned(p.data_width))),
            **_dma_signature_common(p),
            "axi": Out(AXI4WriteSignature(p.data_width, p.addr_width, p.id_width)),
        })

    def elaborate(self, platform):
        p = self.p
        m = Module()
        m.submodules.issuer = iss = BurstIssuer(p, with_all_issued=False)
        m.submodules.lens = lens = fifo.SyncFIFOBuffered(width=9, depth=max(2, p.max_outstanding))
        wiring.connect(m, wiring.flipped(self.cmd), iss.cmd)
        wiring.connect(m, wiring.flipped(self.done), iss.done)
        wiring.connect(m, wiring.flipped(self.axi.aw), iss.addr)

        outstanding = Signal(range(p.max_outstanding + 1))
        w, b = self.axi.w, self.axi.b
        m.d.comb += [
            self.busy.eq(iss.busy),
            iss.may_issue.eq((outstanding < p.max_outstanding) & lens.w_rdy),
            lens.w_en.eq(iss.issued),
            lens.w_data.eq(iss.issued_beats),
        ]
        # W engine: one burst from the FIFO head at a time.
        count = Signal(9)
        m.d.comb += [
            w.valid.eq(lens.r_rdy & self.data.valid),
            w.data.eq(self.data.payload),
            w.strb.eq(-1),
            w.last.eq(count == lens.r_data - 1),
            self.data.ready.eq(lens.r_rdy & w.ready),
        ]
        with m.If(w.valid & w.ready):
            with m.If(w.last):
                m.d.comb += lens.r_en.eq(1)
                m.d.sync += count.eq(0)
            with m.Else():
                m.d.sync += count.eq(count + 1)
        # B: every response retires one burst.
        b_done = b.valid & b.ready
        m.d.comb += [
            b.ready.eq(iss.running),
            iss.resp.eq(b.resp),
            iss.resp_valid.eq(b_done),
            iss.drained.eq(outstanding == 0),
        ]
        m.d.sync += outstanding.eq(outstanding + iss.issued - b_done)
        return m


class DmaPort(wiring.Component):
    """One AXI4 master port with a read DMA and a write DMA (independent, concurrent).

    Ports
    -----
    rd_cmd, rd_data, rd_done, rd_busy : the :class:`ReadDMA`'s ``cmd``/``data``/``done``/``busy``
    wr_cmd, wr_data, wr_done, wr_busy : the :class:`WriteDMA`'s
    axi : Out(AXI4Signature)
    """

    def __init__(self, params: DmaParams | None = None, **kw):
        p = params if params is not None else DmaParams(**kw)
        self.p = p
        self.rd = ReadDMA(p)
        self.wr = WriteDMA(p)
        super().__init__({
            "rd_cmd": In(stream.Signature(p.command)),
            "rd_data": Out(stream.Signature(read_data_layout(p.data_width))),
            "rd_done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "rd_busy": Out(1),
            "wr_cmd": In(stream.Signature(p.command)),
            "wr_data": In(stream.Signature(unsigned(p.data_width))),
            "wr_done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "wr_busy": Out(1),
            "axi": Out(AXI4Signature(p.data_width, p.addr_width, p.id_width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rd, m.submodules.wr = rd, wr = self.rd, self.wr
        wiring.connect(m, wiring.flipped(self.rd_cmd), rd.cmd)
        wiring.connect(m, wiring.flipped(self.rd_data), rd.data)
        wiring.connect(m, wiring.flipped(self.rd_done), rd.done)
        wiring.connect(m, wiring.flipped(self.wr_cmd), wr.cmd)
        wiring.connect(m, wiring.flipped(self.wr_data), wr.data)
        wiring.connect(m, wiring.flipped(self.wr_done), wr.done)
        for ch in ("ar", "r"):
            wiring.connect(m, wiring.flipped(getattr(self.axi, ch)), getattr(rd.axi, ch))
        for ch in ("aw", "w", "b"):
            wiring.connect(m, wiring.flipped(getattr(self.axi, ch)), getattr(wr.axi, ch))
        m.d.comb += [self.rd_busy.eq(rd.busy), self.wr_busy.eq(wr.busy)]
        return m


# ---------------------------------------------------------------------------------------------
# Striping: one logical stream over P ports
# ---------------------------------------------------------------------------------------------

class StripeLayout:
    """Where each beat of a striped buffer lives (see :func:`stripe_layout`).

    Attributes
    ----------
    nbytes, ports, beat_bytes, base : int
        The arguments of :func:`stripe_layout`.
    total_beats : int
        ``ceil(nbytes / beat_bytes)``; the last beat is zero padded.
    beats_per_port : list of int
        Port ``p`` holds ``ceil((total_beats - p) / ports)`` beats.
    """

    def __init__(self, nbytes, ports, beat_bytes, base):
        self.nbytes, self.ports, self.beat_bytes, self.base = nbytes, ports, beat_bytes, base
        self.total_beats = -(-nbytes // beat_bytes)
        self.beats_per_port = [max(0, -(-(self.total_beats - q) // ports)) for q in range(ports)]

    def locate(self, beat: int) -> tuple[int, int]:
        """(port, port-local byte address) of logical beat ``beat``."""
        if not 0 <= beat < self.total_beats:
            raise ConfigError(f"beat {beat} outside [0, {self.total_beats})")
        return beat % self.ports, self.base + (beat // self.ports) * self.beat_bytes

    def port_bytes(self, port: int) -> int:
        """Bytes port ``port`` holds (whole beats)."""
        return self.beats_per_port[port] * self.beat_bytes


def stripe_layout(nbytes: int, ports: int, *, beat_bytes: int = DATA_WIDTH // 8,
                  base: int = 0) -> StripeLayout:
    """Round-robin beat interleave of one ``nbytes`` buffer over ``ports`` memory ports.

    The buffer is cut into ``beat_bytes`` beats (the last one zero padded). Logical beat ``i``
    (bytes ``[i*beat_bytes, (i+1)*beat_bytes)``) is stored on port ``i % ports`` at the
    port-local byte address ``base + (i // ports) * beat_bytes``. Every port thus holds a
    contiguous run starting at ``base``; a :class:`StripedReader` command ``(base, total_beats)``
    reads it back as wide words of ``ports`` beats, port ``p``'s beat in bits
    ``[p*8*beat_bytes, (p+1)*8*beat_bytes)``.

    Raises
    ------
    ConfigError
        ``nbytes < 0``, ``ports < 1``, ``beat_bytes`` not a power of two or ``base`` not beat
        aligned.
    """
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ConfigError(f"nbytes must be an int >= 0, got {nbytes!r}")
    if not isinstance(ports, int) or ports < 1:
        raise ConfigError(f"ports must be an int >= 1, got {ports!r}")
    if not isinstance(beat_bytes, int) or beat_bytes < 1 or beat_bytes & (beat_bytes - 1):
        raise ConfigError(f"beat_bytes must be a power of two, got {beat_bytes!r}")
    if not isinstance(base, int) or base < 0 or base % beat_bytes:
        raise ConfigError(f"base must be a non-negative multiple of {beat_bytes}, got {base!r}")
    return StripeLayout(nbytes, ports, beat_bytes, base)


def stripe_split(buf: bytes, layout: StripeLayout) -> list[bytes]:
    """Per-port images (bytes from ``layout.base`` on) of ``buf`` laid out by ``layout``."""
    if len(buf) != layout.nbytes:
        raise ConfigError(f"buffer has {len(buf)} bytes, layout expects {layout.nbytes}")
    bb, P = layout.beat_bytes, layout.ports
    padded = bytes(buf) + bytes(layout.total_beats * bb - len(buf))
    return [b"".join(padded[i * bb:(i + 1) * bb] for i in range(q, layout.total_beats, P))
            for q in range(P)]


def stripe_merge(images: list[bytes], layout: StripeLayout) -> bytes:
    """Inverse of :func:`stripe_split` (drops the padding)."""
    bb, P = layout.beat_bytes, layout.ports
    if len(images) != P:
        raise ConfigError(f"expected {P} port images, got {len(images)}")
    out = bytearray()
    for i in range(layout.total_beats):
        q, j = i % P, i // P
        out += images[q][j * bb:(j + 1) * bb]
    return bytes(out[:layout.nbytes])


def striped_data_layout(data_width: int, ports: int) -> data.StructLayout:
    """StripedReader output word: ``data`` (ports x data_width), ``count`` (valid beats, 1..P,
    lowest lanes first; lanes beyond ``count`` are zero), ``last``."""
    return data.StructLayout({"data": unsigned(data_width * ports),
                              "count": unsigned(ports.bit_length()), "last": unsigned(1)})


def striped_command_layout(addr_width: int, beats_width: int) -> data.StructLayout:
    """StripedReader command: port-local ``addr`` and ``beats`` (total logical beats)."""
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(beats_width)})


class StripedReader(wiring.Component):
    """Read one logical buffer striped over ``ports`` AXI ports (:func:`stripe_layout`).

    A command ``(addr, beats)`` reads logical beats ``0 .. beats-1`` whose port-local layout is
    ``stripe_layout(beats * bb, ports, base=addr)``; port ``p`` reads its run at
    ``port_bases[p] + addr`` with its own :class:`ReadDMA`. The merger emits one wide word per
    ``ports`` logical beats, in order, when every needed port has its beat (ports are stalled
    independently, so per-port latency differences are absorbed by the ports' own outstanding
    bursts). ``done`` follows when all ports completed; its code is the first non-zero port code
    (port order). If a port reports an error before its data ends, the remaining words of every
    port are drained and dropped (no hang), and no further wide words are emitted.

    Parameters
    ----------
    ports : int
        Number of AXI ports, a power of two in 1..32 (the U280 has 32 HBM pseudo-channels).
    port_bases : sequence of int, optional
        Byte offset added to the address on each port (e.g. ``p * 256 MiB`` for pseudo-channel
        ``p`` behind the HBM switch); default all 0.
    params : DmaParams or keyword arguments
        Per-port DMA parameters.

    Ports
    -----
    cmd : In(stream of :func:`striped_command_layout`)
    data : Out(stream of :func:`striped_data_layout`)
    done : Out(stream of unsigned(ERR_WIDTH))
    busy : Out(1)
    axi : Out(AXI4ReadSignature).array(ports)
    """

    def __init__(self, ports: int, port_bases=None, params: DmaParams | None = None, **kw):
        p = params if params is not None else DmaParams(**kw)
        if not isinstance(ports, int) or not 1 <= ports <= 32 or ports & (ports - 1):
            raise ConfigError(f"ports must be a power of two in [1, 32], got {ports!r}")
        if port_bases is None:
            port_bases = [0] * ports
        port_bases = list(port_bases)
        if len(port_bases) != ports:
            raise ConfigError(f"port_bases needs {ports} entries, got {len(port_bases)}")
        for b in port_bases:
            if not isinstance(b, int) or not 0 <= b < 1 << p.addr_width or b % p.beat_bytes:
                raise ConfigError(f"port base {b!r} must be a beat-aligned address")
        self.p, self.ports, self.port_bases = p, ports, port_bases
        self.dmas = [ReadDMA(p) for _ in range(ports)]
        super().__init__({
            "cmd": In(stream.Signature(striped_command_layout(p.addr_width, p.beats_width))),
            "data": Out(stream.Signature(striped_data_layout(p.data_width, ports))),
            "done": Out(stream.Signature(unsigned(ERR_WIDTH))),
            "busy": Out(1),
            "axi": Out(AXI4ReadSignature(p.data_width, p.addr_width, p.id_width)).array(ports),
        })

    def elaborate(self, platform):
        p, P = self.p, self.ports
        lg = P.bit_length() - 1
        m = Module()
        for q, dma in enumerate(self.dmas):
            m.submodules[f"dma{q}"] = dma
            wiring.connect(m, wiring.flipped(self.axi[q]), dma.axi)

        remaining = Signal(p.beats_width)  # logical beats not yet emitted
        flushing = Signal()
        got_done = Signal(P)
        codes = [Signal(ERR_WIDTH, name=f"code{q}") for q in range(P)]
        dispatched = Signal(P)  # per-port command taken
        cmd_addr = Signal(p.addr_width)
        cmd_beats = Signal(p.beats_width)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [remaining.eq(self.cmd.payload.beats), flushing.eq(0),
                                 got_done.eq(0), dispatched.eq(0)]
                    for c in codes:
                        m.d.sync += c.eq(0)
                    m.next = "DISPATCH"
                    m.d.sync += [cmd_addr.eq(self.cmd.payload.addr), cmd_beats.eq(self.cmd.payload.beats)]
            with m.State("DISPATCH"):
                m.d.comb += self.busy.eq(1)
                for q, dma in enumerate(self.dmas):
                    # Port q holds beats q, q+P, ...: floor(B/P) + (q < B mod P).
                    share = (cmd_beats >> lg) + (cmd_beats[:lg] > q if lg else 0)
                    m.d.comb += [
                        dma.cmd.valid.eq(~dispatched[q]),
                        dma.cmd.payload.addr.eq(cmd_addr + self.port_bases[q]),
                        dma.cmd.payload.beats.eq(share),
                        dma.cmd.payload.rows.eq(1),
                        dma.cmd.payload.stride.eq(0),
                    ]
                    with m.If(dma.cmd.ready):
                        m.d.sync += dispatched[q].eq(1)
                with m.If(dispatched.all()):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                lanes = Signal(range(P + 1))
                m.d.comb += lanes.eq(Mux(remaining < P, remaining, P))
                need = [Signal(name=f"need{q}") for q in range(P)]
                for q in range(P):
                    m.d.comb += need[q].eq(lanes > q)
                have = Cat(*[~need[q] | self.dmas[q].data.valid for q in range(P)]).all()
                any_err = Cat(*[got_done[q] & (codes[q] != 0) for q in range(P)]).any()
                with m.If(any_err):
                    m.d.sync += flushing.eq(1)
                emit = ~flushing & ~any_err & (remaining != 0) & have
                m.d.comb += [
                    self.data.valid.eq(emit),
                    self.data.payload.count.eq(lanes),
                    self.data.payload.last.eq(remaining <= P),
                ]
                for q in range(P):
                    d = self.dmas[q].data
                    lane = self.data.payload.data[q * p.data_width:(q + 1) * p.data_width]
                    m.d.comb += lane.eq(Mux(need[q], d.payload.data, 0))
                    m.d.comb += d.ready.eq(Mux(flushing | any_err, 1, emit & self.data.ready & need[q]))
                with m.If(self.data.valid & self.data.ready):
                    m.d.sync += remaining.eq(remaining - lanes)
                for q in range(P):
                    dn = self.dmas[q].done
                    m.d.comb += dn.ready.eq(~got_done[q])
                    with m.If(dn.valid & ~got_done[q]):
                        m.d.sync += [got_done[q].eq(1), codes[q].eq(dn.payload)]
                with m.If(got_done.all()):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.busy.eq(1)
                code = Const(0, ERR_WIDTH)
                for q in reversed(range(P)):
                    code = Mux(codes[q] != 0, codes[q], code)
                m.d.comb += [self.done.valid.eq(1), self.done.payload.eq(code)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        return m


def dma_error_code(code):
    """:class:`ternopu.hw.isa.ErrorCode` of a DMA completion code, the mapping every unit reports:
    0 -> NONE, range -> HBM_RANGE, SLVERR / DECERR -> AXI_RESP, anything else non-zero -> HBM_RANGE."""
    from amaranth import Mux

    from . import isa
    return Mux(code == DMA_ERR_RANGE, isa.ErrorCode.HBM_RANGE,
               Mux((code == DMA_ERR_SLVERR) | (code == DMA_ERR_DECERR), isa.ErrorCode.AXI_RESP,
                   Mux(code != 0, isa.ErrorCode.HBM_RANGE, isa.ErrorCode.NONE)))
