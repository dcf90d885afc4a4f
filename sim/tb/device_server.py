"""The Verilated overlay as a long-lived "device server" for the ``verilator`` Device backend.

Design (:class:`DeviceBench`): :class:`ternopu.hw.overlay.Overlay` with its AXI ports on a
:class:`ternopu.sim.hbm_model.HbmSystem` (every port reaches every channel, as through the U280's
AXI switch; the global HBM address space of :mod:`ternopu.sw.compiler.layout`), a host port into
that memory (one 32-byte word per cycle, write or read) and a free-running cycle counter. A whole
program run needs no Python per cycle: the HDL HBM model answers the DMAs.

Server (the cocotb test :func:`serve`): connects to the Unix socket named in the parameters
(``TERNOPU_TB_PARAMS``: ``socket``, ``ports``, ``depth``, ``lanes``) and executes the host's requests one
at a time until ``close``; simulated time only advances inside a request. Requests and replies
are frames (:func:`send_msg` / :func:`recv_msg`): a JSON header plus an optional binary payload.

==========  ========================================  ==========================================
op          request                                   reply
==========  ========================================  ==========================================
``ping``    --                                        ``{}``
``write``   ``word`` (flat index ``ch*depth + w``),   ``{}``
            payload = whole 32-byte words
``read``    ``word``, ``n``                           payload = ``n`` words
``run``     ``base``, ``n``, ``watchdog``, ``bound``  ``done``, ``error``, ``busy``, ``code``,
            (cycles)                                  ``pc``, ``cycles``, ``timeout``,
                                                      ``counters`` (cumulative)
``reset``   --  (soft reset + counter clear)           ``{}``
``close``   --                                        ``{}`` then the test returns
==========  ========================================  ==========================================

A request that raises answers ``{"error_text": traceback}`` and the server goes on; a broken
socket ends the test.
"""

from __future__ import annotations

import json
import socket
import struct
import traceback

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ternopu.hw import isa
from ternopu.hw.axi_lite import axi4_lite_signature
from ternopu.hw.csr import COUNTERS, CSR_ADDR_BITS
from ternopu.hw.overlay import Overlay
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.sim.hbm_model import HbmSystem

__all__ = ["DeviceBench", "send_msg", "recv_msg", "counter_names", "CLK_NS", "WORD_BYTES", "HOST_LANES"]

#: Clock period of the bench (ns); only the cycle counts matter.
CLK_NS = 4
#: Bytes per HBM word (host port and AXI data width).
WORD_BYTES = isa.BUS_BYTES
#: Words per cycle of the host port: loading costs one simulated cycle -- and one round of the
#: cocotb scheduler, which dominates -- per ``HOST_LANES`` words.
HOST_LANES = 16


def counter_names(ports: int) -> list[str]:
    """The CSR counters a bench with ``ports`` HBM ports can make non-zero (others stay 0)."""
    names = [n for n, _ in COUNTERS]
    return [n for n in names if not n.startswith("HBM_") or int(n.rsplit("P", 1)[1]) < ports]


class DeviceBench(wiring.Component):
    """Overlay + HbmSystem + host port + cycle counter (module docstring).

    Parameters
    ----------
    ports : int
        HBM ports = channels.
    channel_bytes : int
        Address span of a channel (power of two; the plan's ``geo.channel_bytes``).
    depth : int
        Words backed per channel.
    buf_words : int
        Scratch buffer size (words) of the overlay.
    units : dict, optional
        Unit factories for :class:`Overlay`.
    read_latency, rate : HBM model timing (default 45 cycles = 150 ns at 300 MHz; 1 beat per
        cycle, which is the 256-bit port's limit at 300 MHz, below the channel's 14.4 GB/s).
    overlay_kw : dict
        Further :class:`Overlay` arguments (``queue_depth``, ``fetch_depth``, ``max_burst``,
        ``max_outstanding``).
    """

    def __init__(self, *, ports: int, channel_bytes: int, depth: int, buf_words: int, units=None,
                 read_latency: int = 45, rate=(1, 1), host_lanes: int = HOST_LANES, **overlay_kw):
        self.ports, self.channel_bytes, self.depth, self.host_lanes = ports, channel_bytes, depth, host_lanes
        self.hbm = HbmSystem(ports, channel_bytes, depth, data_width=isa.INSTR_BITS,
                             read_latency=read_latency, rate=tuple(rate), host_lanes=host_lanes)
        self.overlay = Overlay(OverlayConfig(hbm_ports=ports), hbm_bytes=channel_bytes,
                               buf_words=buf_words, units=units, **overlay_kw)
        super().__init__({
            "csr": In(axi4_lite_signature(CSR_ADDR_BITS)),
            "interrupt": Out(1),
            "host_addr": In(range(ports * depth)), "host_wdata": In(isa.INSTR_BITS * host_lanes),
            "host_we": In(host_lanes), "host_rdata": Out(isa.INSTR_BITS * host_lanes),
            "cycle": Out(64),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.overlay = ov = self.overlay
        m.submodules.hbm = hbm = self.hbm
        wiring.connect(m, wiring.flipped(self.csr), ov.s_axi_control)
        for k, name in enumerate(ov.config.port_names):
            wiring.connect(m, getattr(ov, name), hbm.axi[k])
        m.d.comb += [self.interrupt.eq(ov.interrupt),
                     hbm.host.addr.eq(self.host_addr), hbm.host.wdata.eq(self.host_wdata),
                     hbm.host.we.eq(self.host_we), self.host_rdata.eq(hbm.host.rdata)]
        m.d.sync += self.cycle.eq(self.cycle + 1)
        return m


# --------------------------------------------------------------------------------------------
# Framing (both sides)
# --------------------------------------------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def send_msg(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    """Send one frame: 4-byte header length, JSON header, 8-byte payload length, payload."""
    h = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(h)) + h + struct.pack(">Q", len(payload)) + payload)


def recv_msg(sock: socket.socket) -> tuple[dict, bytes]:
    """Receive one frame (blocking, honours the socket's timeout)."""
    (hl,) = struct.unpack(">I", _recv_exact(sock, 4))
    header = json.loads(_recv_exact(sock, hl))
    (pl,) = struct.unpack(">Q", _recv_exact(sock, 8))
    return header, _recv_exact(sock, pl) if pl else b""


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

    class _Server:
        def __init__(self, dut, p):
            self.dut, self.p = dut, p
            self.names = counter_names(p["ports"])
            cocotb.start_soon(Clock(dut.clk, CLK_NS, unit="ns").start())
            self.axil = AxiLiteMaster(axil_bus(dut, "csr"), dut.clk, dut.rst, reset_active_level=True)
            self.axil.write_if.log.setLevel("WARNING")
            self.axil.read_if.log.setLevel("WARNING")

        async def reset(self):
            d = self.dut
            d.host_we.value = 0
            d.host_addr.value = 0
            d.rst.value = 1
            await ClockCycles(d.clk, 4)
            d.rst.value = 0
            await ClockCycles(d.clk, 2)
            await self.wreg("IRQ_ENABLE", 3)
            await self.wreg("CTRL", 4)

        async def wreg(self, reg: str, value: int):
            await self.axil.write(R[reg].offset, int(value).to_bytes(4, "little"))

        async def rreg(self, reg) -> int:
            off = R[reg].offset if isinstance(reg, str) else reg
            r = await self.axil.read(off, 4)
            return int.from_bytes(r.data, "little")

        async def counters(self) -> dict:
            out = {}
            for n in self.names:
                lo = await self.rreg(counter_offset(n))
                hi = await self.rreg(counter_offset(n) + 4)
                out[n] = hi << 32 | lo
            return out

        async def write(self, word: int, payload: bytes):
            d, lanes = self.dut, self.p["lanes"]
            n = len(payload) // WORD_BYTES
            step = lanes * WORD_BYTES
            for i in range(0, n, lanes):
                k = min(lanes, n - i)
                d.host_addr.value = word + i
                d.host_wdata.value = int.from_bytes(payload[i * WORD_BYTES:i * WORD_BYTES + step], "little")
                d.host_we.value = (1 << k) - 1
                await RisingEdge(d.clk)
            d.host_we.value = 0

        async def read(self, word: int, n: int) -> bytes:
            d, lanes = self.dut, self.p["lanes"]
            out = bytearray()
            for i in range(0, n, lanes):
                k = min(lanes, n - i)
                d.host_addr.value = word + i
                await RisingEdge(d.clk)      # the memory registers mem[addr + lane] at this edge
                await Timer(1, unit="ns")
                out += int(d.host_rdata.value).to_bytes(lanes * WORD_BYTES, "little")[:k * WORD_BYTES]
            return bytes(out)

        async def run(self, h: dict) -> dict:
            base, n = int(h["base"]), int(h["n"])
            await self.wreg("PROG_BASE_LO", base & 0xFFFFFFFF)
            await self.wreg("PROG_BASE_HI", base >> 32)
            await self.wreg("PROG_LEN", n)
            await self.wreg("WATCHDOG", int(h["watchdog"]))
            t0 = int(self.dut.cycle.value)
            await self.wreg("CTRL", 1)
            timeout = False
            if not self.dut.interrupt.value:
                bound = int(h["bound"])
                await First(RisingEdge(self.dut.interrupt), Timer(bound * CLK_NS, unit="ns"))
                timeout = not self.dut.interrupt.value
            cycles = int(self.dut.cycle.value) - t0
            status = await self.rreg("STATUS")
            out = {"busy": status & 1, "done": status >> 1 & 1, "error": status >> 2 & 1,
                   "code": 0, "pc": -1, "cycles": cycles, "timeout": timeout}
            if out["error"]:
                out["code"] = await self.rreg("ERROR_CODE")
                out["pc"] = await self.rreg("ERROR_PC")
            if timeout:
                out["pc"] = await self.rreg("PC")
                await self.wreg("CTRL", 2)           # soft reset: leave the machine usable
                await ClockCycles(self.dut.clk, 16)
            out["counters"] = await self.counters()
            return out

    @cocotb.test()
    async def serve(dut):
        """Serve the host's requests until ``close`` (module docstring)."""
        p = tb_params()
        srv = _Server(dut, p)
        await srv.reset()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(p["socket"])
        send_msg(sock, {"hello": True, "ports": p["ports"], "depth": p["depth"]})
        try:
            while True:
                try:
                    h, payload = recv_msg(sock)
                except ConnectionError:
                    return
                op = h.get("op")
                try:
                    if op == "close":
                        send_msg(sock, {})
                        return
                    if op == "ping":
                        send_msg(sock, {"cycle": int(dut.cycle.value)})
                    elif op == "write":
                        await srv.write(int(h["word"]), payload)
                        send_msg(sock, {})
                    elif op == "read":
                        send_msg(sock, {}, await srv.read(int(h["word"]), int(h["n"])))
                    elif op == "run":
                        send_msg(sock, await srv.run(h))
                    elif op == "reset":
                        await srv.wreg("CTRL", 2)
                        await ClockCycles(dut.clk, 16)
                        await srv.wreg("CTRL", 4)
                        send_msg(sock, {})
                    else:
                        send_msg(sock, {"error_text": f"unknown request {op!r}"})
                except Exception:  # noqa: BLE001  (reported to the host, which raises DeviceError)
                    send_msg(sock, {"error_text": traceback.format_exc()})
        finally:
            sock.close()
