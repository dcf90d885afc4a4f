"""The ``verilator`` backend: the cycle-accurate overlay RTL, Verilated, behind the Device API.

How it runs
-----------
One simulator process per device. The design (:class:`ternopu.sim.tb.device_server.DeviceBench`:
the :class:`~ternopu.hw.overlay.Overlay`, an HDL HBM system on its AXI ports, a host port into the
HBM memory) is converted and compiled once per configuration and cached by
:mod:`ternopu.sim.runner` (``sim_build/``). The device starts that simulator in a child process
(its own process group) running the cocotb test :func:`ternopu.sim.tb.device_server.serve`,
which connects back over a private Unix socket and executes requests: HBM writes / reads through
the host port, and runs (``PROG_BASE`` / ``PROG_LEN`` / ``WATCHDOG`` through the CSR AXI4-Lite
master, ``CTRL.start``, wait for the interrupt under a cycle bound, then ``STATUS`` /
``ERROR_CODE`` / ``ERROR_PC`` and the counters). Python is not in the per-cycle loop of a run.

Configuration
-------------
Either explicit (``ports``, ``channel_bytes``, ``depth``, ``buf_words``, ``units``: the simulator
starts at construction; :mod:`ternopu.sim.program_check` uses this) or from the image at
:meth:`VerilatorDevice.load`: ports = the plan's channel count, channel span = the plan's
``channel_bytes`` (global addresses as the compiler writes them), backed depth = the plan's
highest fill pointer rounded up to a power of two, ``buf_words`` = what the program generator's
buffer map needs (:func:`plan_buf_words`), engine units from
``ternopu.hw.units.default_units`` (:func:`engine_units`; the Overlay's stub units while that does
not exist -- :attr:`VerilatorDevice.info` says which). A ``load`` into a simulator that has
already been used restarts it (fresh, zeroed HBM), so no stale data survives.

Memory model: every port reaches every channel (the U280's AXI switch); 45-cycle read latency
(150 ns at 300 MHz, an assumption, see :mod:`ternopu.sim.hbm_model`) and one 32-byte beat per
cycle per port (the 256-bit port's limit at 300 MHz: 9.6 GB/s). Words beyond the backed depth
answer DECERR in the RTL (``AXI_RESP``), read as zero from the host, and cannot be written.

Failures: a request that fails in the simulator, a simulator that dies or does not answer within
the timeout, become :class:`~ternopu.sw.device.DeviceError` with the message (and the tail of
the simulator's log); the process group is killed, never waited on forever. A run that reaches
``max_cycles`` without an interrupt returns a not-done :class:`RunStatus` (the overlay is
soft-reset).

Counters: ``counters()`` returns the CSR counters (:data:`ternopu.hw.csr.COUNTERS`: ``CYCLES``,
``<UNIT>_BUSY`` / ``<UNIT>_STALL`` cycles per unit, ``HBM_RD_Pk`` / ``HBM_WR_Pk`` bytes per port),
cumulative since the last load, read after every run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ternopu.hw.isa import ErrorCode

from ..compiler.layout import BEAT_BYTES, BUF_BYTES, Geometry, align_up
from ..device import Device, DeviceError, RunStatus, register_backend

__all__ = ["VerilatorDevice", "engine_units", "plan_buf_words", "FAST_BUILD", "RUN_BUILD", "DECODE_BUILD", "DEFAULT_MAX_CYCLES",
           "DEFAULT_WATCHDOG"]

#: Verilator arguments for short runs (tests, :mod:`ternopu.sim.program_check`): one C++ file
#: compiled without optimisation -- about 1 min to build the 2-port overlay, but ~15x slower per
#: cycle than :data:`RUN_BUILD`.
FAST_BUILD = ("--output-split", "0", "--output-split-cfuncs", "0", "-CFLAGS", "-O0")
#: Verilator arguments for model runs (the default): the per-cycle code at g++ -O1 (the runner's
#: ``OPT_FAST``). Measured on the 2-port overlay with stub units on a loaded 2-core machine:
#: 10 min to build, ~7k cycles/s, against ~0.5k cycles/s for :data:`FAST_BUILD`.
RUN_BUILD = ("--output-split", "0", "--output-split-cfuncs", "0")
#: Verilator arguments for decode runs of small models (``make demo``, the end-to-end and layer
#: tests): Verilator's default C++ split (files of about 20k statements) with the per-cycle code at
#: g++ -O1. Measured on the demo's 2-port integrated overlay on the 2-core machine while a test run
#: shared it: 423 s to build and start, 1,026 simulated cycles/s, against about 250 s and 198
#: cycles/s for :data:`FAST_BUILD` under the same load.
DECODE_BUILD: tuple[str, ...] = ()
#: Default cycle bound of one run (the simulator stops waiting for the interrupt there).
DEFAULT_MAX_CYCLES = 50_000_000
#: Default CSR WATCHDOG (cycles a wait may last).
DEFAULT_WATCHDOG = 1 << 20
#: Seconds allowed for the simulator to start and connect.
START_TIMEOUT_S = 180.0
#: Seconds allowed for one host-port request (per MiB moved, plus a floor).
IO_TIMEOUT_S = 120.0
_REQ_WORDS = 1 << 15  # words per write/read request


def engine_units(tlmm=None):
    """``(units, note)``: unit factories for the overlay's engine slots and what they are.

    Uses ``ternopu.hw.units.default_units(tlmm)`` when the package provides it; otherwise
    ``None`` (the Overlay's stub units, which move no data) and a note saying so.
    """
    try:
        from ternopu.hw.units import default_units
    except ImportError:
        try:
            from ternopu.hw.units.slots import default_units
        except ImportError:
            return None, ("engine units: Overlay defaults (StubUnit for TLMM / PE / NPE, placeholder "
                          "LOAD / STORE): ternopu.hw.units.default_units does not exist yet")
    units = default_units(tlmm) if tlmm is not None else default_units()
    return units, "engine units: ternopu.hw.units.default_units"


def plan_buf_words(plan) -> int:
    """Scratch words per buffer that the plan's programs use (largest buffer end over 32, rounded
    up to a power of two as the Overlay's banks require).

    The ends follow :class:`ternopu.sw.compiler.program.BufferMap` (its ``ends`` attribute when
    present, else the same formulas).
    """
    from ..compiler.program import BufferMap

    cfg = plan.cfg
    bm = BufferMap(cfg, plan.context)
    ends = getattr(bm, "ends", None)
    if ends is None:
        h4, kv4, f4 = align_up(cfg.hidden * 4), align_up(cfg.kv_dim * 4), align_up(cfg.ffn * 4)
        h2, kv2, f2 = align_up(cfg.hidden * 2), align_up(cfg.kv_dim * 2), align_up(cfg.ffn * 2)
        hq, fq = align_up(cfg.hidden) + BEAT_BYTES, align_up(cfg.ffn) + BEAT_BYTES
        ends = {"X": 3 * h4, "H": h4 + hq + h2, "QKV": h4 + 2 * kv4 + h2 + kv2,
                "ATT": max(align_up(plan.context * 4), cfg.heads * bm.score_stride),
                "O": 2 * h4 + hq + h2, "FFN": 4 * f4 + fq + f2, "OUT": align_up(cfg.vocab * 4), "TMP": h4}
    need = max(ends.values())
    # the Overlay's scratch banks are a power of two deep
    return _pow2_at_least(min(BUF_BYTES, align_up(need)) // BEAT_BYTES)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _SimProcess:
    """A running device-server simulator: child process group + connected socket."""

    def __init__(self, sim, params: dict, start_timeout: float):
        from ternopu.sim.tb.device_server import recv_msg

        self.tmp = Path(tempfile.mkdtemp(prefix="ternopu-dev-"))
        self.sock_path = str(self.tmp / "s")
        self.log_path = self.tmp / "sim.log"
        self.run_name = f"dev-{os.getpid()}-{id(self) & 0xFFFFFF:x}"
        self.test_dir = sim.build_dir / self.run_name
        self.proc = None
        self.sock = None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.sock_path)
            listener.listen(1)
            listener.settimeout(0.5)
            args = {"dir": str(sim.build_dir), "top": sim.toplevel, "v": str(sim.verilog_path),
                    "run_name": self.run_name, "params": {**params, "socket": self.sock_path}}
            code = ("import json, sys; from pathlib import Path; from ternopu.sim import runner; "
                    "a = json.loads(sys.argv[1]); "
                    "runner.run(runner.SimBuild(Path(a['dir']), a['top'], Path(a['v'])), "
                    "'ternopu.sim.tb.device_server', testcase='serve', params=a['params'], "
                    "run_name=a['run_name'])")
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], stdout=self._log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
            t_end = time.monotonic() + start_timeout
            while True:
                try:
                    self.sock, _ = listener.accept()
                    break
                except socket.timeout:
                    if self.proc.poll() is not None:
                        raise DeviceError(f"the simulator exited (status {self.proc.returncode}) before "
                                          f"connecting:\n{self.log_tail()}") from None
                    if time.monotonic() > t_end:
                        raise DeviceError(f"the simulator did not connect within {start_timeout:.0f} s:\n"
                                          f"{self.log_tail()}") from None
            self.sock.settimeout(start_timeout)
            try:
                hello, _ = recv_msg(self.sock)
            except (OSError, ConnectionError, ValueError) as e:
                raise DeviceError(f"the simulator connected but did not greet ({e}):\n{self.log_tail()}") from None
            if not hello.get("hello"):
                raise DeviceError(f"unexpected greeting from the simulator: {hello}")
        except BaseException:
            listener.close()
            self.kill()
            raise
        listener.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no simulator log)"
        return "\n".join(text[-lines:])

    def request(self, header: dict, payload: bytes = b"", timeout: float = IO_TIMEOUT_S) -> tuple[dict, bytes]:
        from ternopu.sim.tb.device_server import recv_msg, send_msg

        if self.sock is None:
            raise DeviceError("the simulator is not running (closed or crashed earlier)")
        try:
            self.sock.settimeout(timeout)
            send_msg(self.sock, header, payload)
            h, data = recv_msg(self.sock)
        except (OSError, ConnectionError, ValueError) as e:
            why = "did not answer" if isinstance(e, socket.timeout) else f"connection failed ({e})"
            self.kill()
            raise DeviceError(f"simulator {why} during {header.get('op')!r}; it was stopped. Log tail:\n"
                              f"{self.log_tail()}") from None
        if "error_text" in h:
            raise DeviceError(f"simulator request {header.get('op')!r} failed:\n{h['error_text']}")
        return h, data

    def close(self, timeout: float = 20.0) -> None:
        if self.sock is not None:
            try:
                self.request({"op": "close"}, timeout=timeout)
            except DeviceError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Stop the child's process group (the simulator it started included) and clean up."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self.proc is not None and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.proc is not None:
            # the simulator may still hold the group if the child died first
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.test_dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


class VerilatorDevice(Device):
    """The ``verilator`` backend (module docstring).

    Parameters
    ----------
    ports, channel_bytes, depth, buf_words : int, optional
        Explicit geometry (all four, or none: then it comes from the image at :meth:`load`).
        ``channel_bytes`` is a power of two; ``depth`` is in 32-byte words per channel.
    units : dict, optional
        Unit factories (explicit geometry only; default :func:`engine_units`).
    tlmm : TLMMConfig, optional
        TLMM geometry handed to :func:`engine_units` (default: the image's).
    read_latency : int
        HBM read latency in cycles (default 45).
    watchdog : int
        CSR WATCHDOG of every run.
    max_cycles : int
        Cycle bound of one run.
    timeout_s : float
        Wall-clock limit of one run request.
    build_args : sequence of str
        Extra Verilator arguments (default :data:`RUN_BUILD`; :data:`FAST_BUILD` for short runs).
    overlay_kw : dict, optional
        Further :class:`~ternopu.hw.overlay.Overlay` arguments.
    """

    name = "verilator"

    def __init__(self, *, ports: int | None = None, channel_bytes: int | None = None, depth: int | None = None,
                 buf_words: int | None = None, units=None, tlmm=None, read_latency: int = 45,
                 watchdog: int = DEFAULT_WATCHDOG, max_cycles: int = DEFAULT_MAX_CYCLES,
                 timeout_s: float = 3600.0, build_args=RUN_BUILD, overlay_kw: dict | None = None):
        explicit = [ports, channel_bytes, depth, buf_words]
        if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
            raise DeviceError("verilator: give ports, channel_bytes, depth and buf_words together, or none "
                              "(then they come from the image)")
        self.read_latency, self.watchdog, self.max_cycles = read_latency, watchdog, max_cycles
        self.timeout_s, self.build_args = timeout_s, tuple(build_args)
        self.overlay_kw = dict(overlay_kw or {})
        self.tlmm = tlmm
        self.info: dict = {"backend": "verilator"}
        self._proc: _SimProcess | None = None
        self._config: dict | None = None
        self._units = units
        self._pristine = True
        self._counters: dict[str, int] = {}
        self.geo: Geometry | None = None
        self.depth = 0
        self.last_build_seconds = 0.0
        if ports is not None:
            self._start(dict(ports=ports, channel_bytes=channel_bytes, depth=depth, buf_words=buf_words), units)

    # -- lifecycle ----------------------------------------------------------------------------------
    def _start(self, config: dict, units) -> None:
        from ternopu.sim import runner
        from ternopu.sim.tb.device_server import DeviceBench

        self._stop()
        note = "engine units: given by the caller"
        if units is None:
            units, note = engine_units(self.tlmm)
        t0 = time.perf_counter()
        try:
            bench = DeviceBench(**config, units=units, read_latency=self.read_latency, **self.overlay_kw)
            top = runner.verilog_of(bench, "device_bench")
            tag = f"device-{config['ports']}p"
            sim = runner.build(top, "device_bench", tag=tag, extra_args=self.build_args)
        except DeviceError:
            raise
        except Exception as e:  # noqa: BLE001  (elaboration / Verilator failures)
            raise DeviceError(f"verilator: building the overlay failed: {type(e).__name__}: {e}") from e
        self.last_build_seconds = time.perf_counter() - t0
        self._proc = _SimProcess(sim, {"ports": config["ports"], "depth": config["depth"],
                                       "lanes": bench.host_lanes}, START_TIMEOUT_S)
        self._config = config
        self.geo = Geometry(config["ports"], config["channel_bytes"])
        self.depth = config["depth"]
        self._pristine = True
        self._counters = {}
        self.info = {"backend": "verilator", **config, "read_latency": self.read_latency,
                     "hbm_words_per_cycle_per_port": 1, "units": note, "build_dir": str(sim.build_dir),
                     "build_seconds": round(self.last_build_seconds, 1),
                     "memory_model": f"HbmSystem: every port reaches every channel; {self.read_latency}-cycle "
                                     f"read latency; 1 beat (32 B) per cycle per port"}

    def _stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.close()

    def close(self) -> None:
        """End the simulator (waits a few seconds for it, then kills its process group)."""
        self._stop()

    def __del__(self):  # pragma: no cover - best effort
        try:
            if self._proc is not None:
                self._proc.kill()
        except Exception:  # noqa: BLE001
            pass

    def _need(self) -> _SimProcess:
        if self._proc is None:
            raise DeviceError("verilator: no simulator running (load an image first, or the device was closed)")
        return self._proc

    # -- Device API ---------------------------------------------------------------------------------
    def load(self, image) -> None:
        plan = image.plan
        if self.tlmm is not None and (self.tlmm.tables, self.tlmm.lanes, self.tlmm.beat_bits) != (
                plan.tlmm.tables, plan.tlmm.lanes, plan.tlmm.beat_bits):
            raise DeviceError(f"image packed for TLMM geometry {plan.tlmm}, the device was opened with {self.tlmm}")
        self.tlmm = plan.tlmm
        depth = _pow2_at_least(max(1, -(-max(plan.top) // BEAT_BYTES)))
        config = dict(ports=plan.geo.ports, channel_bytes=plan.geo.channel_bytes,
                      depth=min(depth, plan.geo.channel_bytes // BEAT_BYTES), buf_words=plan_buf_words(plan))
        if self._proc is None or config != self._config or not self._pristine:
            self._start(config, self._units)
        for p, data in enumerate(image.channels):
            self._write_channel(p, 0, np.asarray(data, dtype=np.uint8), skip_zero=True)
        self._pristine = False
        self._need().request({"op": "reset"})
        self._counters = {}

    def write(self, addr: int, data: bytes) -> None:
        data = np.frombuffer(bytes(data), dtype=np.uint8)
        for ch, local, off, n in self._spans(addr, data.size):
            self._write_channel(ch, local, data[off:off + n])
        self._pristine = False

    def read(self, addr: int, nbytes: int) -> bytes:
        out = bytearray()
        for ch, local, _, n in self._spans(addr, nbytes):
            out += self._read_channel(ch, local, n)
        return bytes(out)

    def run(self, prog_addr: int, n_instr: int) -> RunStatus:
        proc = self._need()
        self._pristine = False
        h, _ = proc.request({"op": "run", "base": int(prog_addr), "n": int(n_instr), "watchdog": self.watchdog,
                             "bound": self.max_cycles}, timeout=self.timeout_s)
        self._counters = dict(h["counters"])
        self.last_run_cycles = h["cycles"]
        if h["timeout"]:
            return RunStatus(False, ErrorCode.NONE, int(h["pc"]),
                             f"no interrupt within {self.max_cycles} cycles (simulation bound; the overlay was "
                             f"soft-reset; pc {h['pc']})", self.counters())
        if h["error"]:
            code = int(h["code"])
            try:
                err = ErrorCode(code)
            except ValueError:
                err = ErrorCode.NONE
            return RunStatus(False, err, int(h["pc"]), f"overlay error code {code} after {h['cycles']} cycles",
                             self.counters())
        return RunStatus(bool(h["done"]), ErrorCode.NONE, -1, "" if h["done"] else "interrupt without done",
                         self.counters())

    def counters(self) -> dict[str, int]:
        """CSR counters by name (cumulative since the last load; read after every run)."""
        from ternopu.hw.csr import COUNTERS

        out = {n: 0 for n, _ in COUNTERS}
        out.update(self._counters)
        return out

    # -- host port ------------------------------------------------------------------------------------
    def _spans(self, addr: int, nbytes: int):
        if self.geo is None:
            raise DeviceError("verilator: no HBM configured yet (load an image first)")
        if addr < 0 or nbytes < 0 or addr + nbytes > self.geo.total_bytes:
            raise DeviceError(f"access [{addr:#x}, {addr + nbytes:#x}) outside HBM ({self.geo.total_bytes:#x} bytes)")
        off = 0
        while off < nbytes:
            ch, local = self.geo.split(addr + off)
            n = min(nbytes - off, self.geo.channel_bytes - local)
            yield ch, local, off, n
            off += n

    def _write_channel(self, ch: int, local: int, data: np.ndarray, skip_zero: bool = False) -> None:
        if data.size == 0:
            return
        proc = self._need()
        lo, hi = local // BEAT_BYTES, -(-(local + data.size) // BEAT_BYTES)
        if hi > self.depth:
            raise DeviceError(f"write to channel {ch} bytes [{local:#x}, {local + data.size:#x}) beyond the "
                              f"simulated depth ({self.depth * BEAT_BYTES:#x} bytes per channel)")
        words = np.zeros((hi - lo) * BEAT_BYTES, dtype=np.uint8)
        if local % BEAT_BYTES or (local + data.size) % BEAT_BYTES:   # partial words: read-modify-write
            words[:] = np.frombuffer(self._read_channel(ch, lo * BEAT_BYTES, words.size), dtype=np.uint8)
        words[local - lo * BEAT_BYTES:local - lo * BEAT_BYTES + data.size] = data
        rows = words.reshape(-1, BEAT_BYTES)
        if skip_zero and self._pristine:
            live = np.flatnonzero(rows.any(axis=1))
            runs = np.split(live, np.flatnonzero(np.diff(live) > 8) + 1) if live.size else []
            pieces = [(int(r[0]), int(r[-1]) + 1) for r in runs]
        else:
            pieces = [(0, rows.shape[0])]
        for a, b in pieces:
            for s in range(a, b, _REQ_WORDS):
                e = min(b, s + _REQ_WORDS)
                proc.request({"op": "write", "word": ch * self.depth + lo + s}, rows[s:e].tobytes(),
                             timeout=IO_TIMEOUT_S)

    def _read_channel(self, ch: int, local: int, nbytes: int) -> bytes:
        lo, hi = local // BEAT_BYTES, -(-(local + nbytes) // BEAT_BYTES)
        raw = bytearray()
        have = max(0, min(hi, self.depth) - lo)
        for s in range(0, have, _REQ_WORDS):
            n = min(have - s, _REQ_WORDS)
            _, data = self._need().request({"op": "read", "word": ch * self.depth + lo + s, "n": n},
                                           timeout=IO_TIMEOUT_S)
            raw += data
        raw += bytes((hi - lo - have) * BEAT_BYTES)   # beyond the backed depth: zero
        start = local - lo * BEAT_BYTES
        return bytes(raw[start:start + nbytes])


register_backend("verilator", VerilatorDevice)
