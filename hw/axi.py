"""AXI4 (full) interface signatures and the burst arithmetic every AXI master in ternopu shares.

Channels and fields
-------------------
An AXI4 port has five handshaked channels; each is declared here as a ``wiring.Signature``
seen from the side that *drives* ``valid`` (the channel's source):

=====  ========  ===============================================================================
chan   source    fields (widths)
=====  ========  ===============================================================================
``ar`` master    ``id`` (id_width), ``addr`` (addr_width), ``len`` (8, beats-1), ``size`` (3,
                 log2 bytes per beat), ``burst`` (2; ``BURST_INCR`` = 1 is the only type ternopu
                 issues)
``r``  slave     ``id``, ``data`` (data_width), ``resp`` (2), ``last`` (1)
``aw`` master    as ``ar``
``w``  master    ``data`` (data_width), ``strb`` (data_width/8, bit i enables byte i), ``last``
``b``  slave     ``id``, ``resp`` (2)
=====  ========  ===============================================================================

:class:`AXI4Signature` is the master's view (``ar``/``aw``/``w`` are ``Out``, ``r``/``b`` are
``In``); a slave uses ``AXI4Signature(...).flip()``. :class:`AXI4ReadSignature` and
:class:`AXI4WriteSignature` are the two halves (a read DMA needs only ``ar``/``r``).

Verilog names: Amaranth flattens nested members with double underscores, so ``axi.ar.valid``
becomes the top-level port ``axi__ar__valid``. :func:`cocotb_signal_map` gives the mapping from
cocotbext-axi's names (``arvalid``) to these (``ar__valid``).

Defaults: 256-bit data (the U280 HBM AXI ports), 34-bit byte addresses (8 GiB of HBM), 6-bit ids
(the U280 HBM IP's id width). Data is little-endian: byte ``i`` of a beat is ``data[8i:8i+8]`` and
lives at byte address ``beat_address + i``.

Burst rules (AXI4, IHI0022)
---------------------------
An INCR burst moves ``len + 1`` beats (1..256) of ``2**size`` bytes at consecutive addresses and
must not cross a 4 KiB address boundary. :func:`split_bursts` is the reference for how ternopu's
DMAs cut a transfer into bursts; the hardware in :mod:`ternopu.hw.dma` matches it beat for beat.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError

__all__ = [
    "DATA_WIDTH", "ADDR_WIDTH", "ID_WIDTH", "LEN_WIDTH", "MAX_BURST_BEATS", "BOUNDARY_BYTES",
    "BURST_FIXED", "BURST_INCR", "BURST_WRAP",
    "RESP_OKAY", "RESP_EXOKAY", "RESP_SLVERR", "RESP_DECERR",
    "AddressChannelSignature", "ReadDataChannelSignature", "WriteDataChannelSignature",
    "WriteResponseChannelSignature", "AXI4ReadSignature", "AXI4WriteSignature", "AXI4Signature",
    "check_axi_params", "beat_bytes", "size_code", "split_bursts", "cocotb_signal_map",
]

#: Default data width in bits: the U280 HBM AXI3/AXI4 port width.
DATA_WIDTH = 256
#: Default byte-address width: 2**34 B = 16 GiB covers the U280's 8 GiB of HBM.
ADDR_WIDTH = 34
#: Default id width (the U280 HBM IP's AXI id width).
ID_WIDTH = 6
#: Width of AXI4 ``len`` (beats - 1).
LEN_WIDTH = 8
#: Longest AXI4 INCR burst, in beats.
MAX_BURST_BEATS = 1 << LEN_WIDTH
#: No burst may cross a multiple of this many bytes.
BOUNDARY_BYTES = 4096

BURST_FIXED, BURST_INCR, BURST_WRAP = 0, 1, 2
RESP_OKAY, RESP_EXOKAY, RESP_SLVERR, RESP_DECERR = 0, 1, 2, 3


def check_axi_params(data_width: int, addr_width: int, id_width: int) -> None:
    """Validate AXI4 port parameters; raise :class:`ConfigError` naming the bad one.

    ``data_width``: a power of two in 8..1024 bits (AXI4 allows 8..1024). ``addr_width``: 12..64
    (at least one 4 KiB page). ``id_width``: 1..32.
    """
    for name, v in (("data_width", data_width), ("addr_width", addr_width), ("id_width", id_width)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"AXI {name} must be an int, got {v!r}")
    if not (8 <= data_width <= 1024 and data_width & (data_width - 1) == 0):
        raise ConfigError(f"AXI data_width must be a power of two in [8, 1024], got {data_width}")
    if not 12 <= addr_width <= 64:
        raise ConfigError(f"AXI addr_width must be in [12, 64], got {addr_width}")
    if not 1 <= id_width <= 32:
        raise ConfigError(f"AXI id_width must be in [1, 32], got {id_width}")


def beat_bytes(data_width: int) -> int:
    """Bytes per beat of a ``data_width``-bit bus (``data_width // 8``)."""
    return data_width // 8


def size_code(data_width: int) -> int:
    """AXI ``size`` field for full-width beats: ``log2(data_width // 8)``."""
    return (data_width // 8).bit_length() - 1


class AddressChannelSignature(wiring.Signature):
    """AR or AW channel, master (source) view: ``valid``/``id``/``addr``/``len``/``size``/``burst``
    out, ``ready`` in."""

    def __init__(self, addr_width: int = ADDR_WIDTH, id_width: int = ID_WIDTH):
        super().__init__({
            "valid": Out(1), "ready": In(1),
            "id": Out(id_width), "addr": Out(addr_width), "len": Out(LEN_WIDTH),
            "size": Out(3), "burst": Out(2),
        })


class ReadDataChannelSignature(wiring.Signature):
    """R channel, slave (source) view: ``valid``/``id``/``data``/``resp``/``last`` out, ``ready`` in."""

    def __init__(self, data_width: int = DATA_WIDTH, id_width: int = ID_WIDTH):
        super().__init__({
            "valid": Out(1), "ready": In(1),
            "id": Out(id_width), "data": Out(data_width), "resp": Out(2), "last": Out(1),
        })


class WriteDataChannelSignature(wiring.Signature):
    """W channel, master (source) view: ``valid``/``data``/``strb``/``last`` out, ``ready`` in."""

    def __init__(self, data_width: int = DATA_WIDTH):
        super().__init__({
            "valid": Out(1), "ready": In(1),
            "data": Out(data_width), "strb": Out(data_width // 8), "last": Out(1),
        })


class WriteResponseChannelSignature(wiring.Signature):
    """B channel, slave (source) view: ``valid``/``id``/``resp`` out, ``ready`` in."""

    def __init__(self, id_width: int = ID_WIDTH):
        super().__init__({"valid": Out(1), "ready": In(1), "id": Out(id_width), "resp": Out(2)})


class AXI4ReadSignature(wiring.Signature):
    """Read half of an AXI4 master port: ``ar`` (out) and ``r`` (in)."""

    def __init__(self, data_width: int = DATA_WIDTH, addr_width: int = ADDR_WIDTH,
                 id_width: int = ID_WIDTH):
        check_axi_params(data_width, addr_width, id_width)
        self.data_width, self.addr_width, self.id_width = data_width, addr_width, id_width
        super().__init__({
            "ar": Out(AddressChannelSignature(addr_width, id_width)),
            "r": In(ReadDataChannelSignature(data_width, id_width)),
        })


class AXI4WriteSignature(wiring.Signature):
    """Write half of an AXI4 master port: ``aw`` and ``w`` (out), ``b`` (in)."""

    def __init__(self, data_width: int = DATA_WIDTH, addr_width: int = ADDR_WIDTH,
                 id_width: int = ID_WIDTH):
        check_axi_params(data_width, addr_width, id_width)
        self.data_width, self.addr_width, self.id_width = data_width, addr_width, id_width
        super().__init__({
            "aw": Out(AddressChannelSignature(addr_width, id_width)),
            "w": Out(WriteDataChannelSignature(data_width)),
            "b": In(WriteResponseChannelSignature(id_width)),
        })


class AXI4Signature(wiring.Signature):
    """Full AXI4 master port (all five channels); ``.flip()`` for a slave.

    Parameters
    ----------
    data_width : int
        Data bits per beat (power of two, 8..1024; default 256).
    addr_width : int
        Byte-address bits (12..64; default 34).
    id_width : int
        Transaction id bits (1..32; default 6).
    """

    def __init__(self, data_width: int = DATA_WIDTH, addr_width: int = ADDR_WIDTH,
                 id_width: int = ID_WIDTH):
        check_axi_params(data_width, addr_width, id_width)
        self.data_width, self.addr_width, self.id_width = data_width, addr_width, id_width
        super().__init__({
            "ar": Out(AddressChannelSignature(addr_width, id_width)),
            "r": In(ReadDataChannelSignature(data_width, id_width)),
            "aw": Out(AddressChannelSignature(addr_width, id_width)),
            "w": Out(WriteDataChannelSignature(data_width)),
            "b": In(WriteResponseChannelSignature(id_width)),
        })


def split_bursts(addr: int, nbeats: int, data_width: int = DATA_WIDTH,
                 max_burst: int = MAX_BURST_BEATS) -> list[tuple[int, int]]:
    """Cut a contiguous transfer into AXI4 INCR bursts, exactly as the ternopu DMAs do.

    Each burst is as long as possible subject to (a) ``max_burst`` beats, (b) the beats left and
    (c) not crossing a 4 KiB boundary. Greedy cutting gives the fewest bursts for these rules.

    Parameters
    ----------
    addr : int
        Byte address of the first beat; must be a multiple of ``data_width // 8``.
    nbeats : int
        Beats to move (>= 0).
    data_width : int
        Bus width in bits.
    max_burst : int
        Longest burst the DMA issues (1..256).

    Returns
    -------
    list of (address, beats)
        One entry per burst, in issue order (AXI ``len`` = beats - 1).

    Raises
    ------
    ConfigError
        Misaligned ``addr``, negative ``nbeats`` or ``max_burst`` outside 1..256.
    """
    bb = beat_bytes(data_width)
    if addr % bb:
        raise ConfigError(f"address {addr:#x} is not a multiple of the {bb}-byte beat")
    if nbeats < 0:
        raise ConfigError(f"beat count must be >= 0, got {nbeats}")
    if not 1 <= max_burst <= MAX_BURST_BEATS:
        raise ConfigError(f"max_burst must be in [1, {MAX_BURST_BEATS}], got {max_burst}")
    out = []
    while nbeats:
        to_boundary = (BOUNDARY_BYTES - addr % BOUNDARY_BYTES) // bb
        n = min(nbeats, max_burst, to_boundary)
        out.append((addr, n))
        addr += n * bb
        nbeats -= n
    return out


def cocotb_signal_map(channel: str) -> dict[str, str]:
    """cocotbext-axi signal names of one channel -> Amaranth's flattened member names.

    For ``channel="ar"`` this is ``{"arid": "ar__id", "araddr": "ar__addr", ...,
    "arvalid": "ar__valid", "arready": "ar__ready"}``; prefix the values with ``<port>__``
    (e.g. ``axi__ar__id``) to get the Verilog port names.
    """
    fields = {
        "ar": ("id", "addr", "len", "size", "burst", "valid", "ready"),
        "aw": ("id", "addr", "len", "size", "burst", "valid", "ready"),
        "r": ("id", "data", "resp", "last", "valid", "ready"),
        "w": ("data", "strb", "last", "valid", "ready"),
        "b": ("id", "resp", "valid", "ready"),
    }
    if channel not in fields:
        raise ConfigError(f"AXI channel must be one of {sorted(fields)}, got {channel!r}")
    return {channel + f: f"{channel}__{f}" for f in fields[channel]}
