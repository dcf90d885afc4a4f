"""Device API: one interface for every backend (golden ISS, Verilated RTL, real board).

A backend implements :class:`Device`:

* ``load(image)``: put an :class:`~ternopu.sw.compiler.image.Image` into device HBM (the
  initialized prefix of every channel; the rest reads as zero);
* ``write(addr, data)`` / ``read(addr, nbytes)``: host access to HBM (global byte addresses);
* ``run(prog_addr, n_instr)``: start the program at ``prog_addr`` (as the CSRs ``PROG_BASE`` /
  ``PROG_LEN`` / ``CTRL.start`` do) and wait until done or error; returns a :class:`RunStatus`
  with the CSR error code and pc;
* ``counters()``: performance counters by name (:data:`ternopu.hw.csr.COUNTERS` names where
  the backend has them, plus backend-specific ones);
* ``close()``.

Backends register a factory with :func:`register_backend`; :func:`open_device` builds one by
name. ``golden`` (:mod:`ternopu.sw.backends.golden_iss`) and ``xrt``
(:mod:`ternopu.sw.backends.xrt`) are registered on import of :mod:`ternopu.sw.backends`; a
Verilator backend registers the same way.

:class:`Session` is the host runtime on top of a device: it generates the program of each step
(:mod:`ternopu.sw.compiler.program`), writes it to the image's instruction slot, runs it, reads
the logits back and does greedy decoding.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ternopu.golden.errors import TernopuError
from ternopu.hw.isa import ErrorCode

__all__ = ["DeviceError", "RunStatus", "Device", "register_backend", "open_device", "backend_names",
           "Session", "GenerateResult"]


class DeviceError(TernopuError, RuntimeError):
    """A backend is unavailable, or a program stopped with an error code."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.NONE, pc: int = -1):
        super().__init__(message)
        self.code = code
        self.pc = pc


@dataclass
class RunStatus:
    """Outcome of :meth:`Device.run` (mirrors the CSR STATUS / ERROR_CODE / ERROR_PC registers)."""

    done: bool
    error: ErrorCode = ErrorCode.NONE
    error_pc: int = -1
    message: str = ""
    counters: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.done and self.error == ErrorCode.NONE

    def raise_for_error(self) -> None:
        if not self.ok:
            raise DeviceError(f"device stopped with {self.error.name} (code {int(self.error)}) at pc "
                              f"{self.error_pc}: {self.message}", self.error, self.error_pc)


class Device(ABC):
    """A backend (see the module docstring)."""

    name = "abstract"

    @abstractmethod
    def load(self, image) -> None: ...

    @abstractmethod
    def write(self, addr: int, data: bytes) -> None: ...

    @abstractmethod
    def read(self, addr: int, nbytes: int) -> bytes: ...

    @abstractmethod
    def run(self, prog_addr: int, n_instr: int) -> RunStatus: ...

    @abstractmethod
    def counters(self) -> dict[str, int]: ...

    def close(self) -> None:
        """Release resources (default: nothing)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_BACKENDS: dict[str, Callable[..., Device]] = {}


def register_backend(name: str, factory: Callable[..., Device]) -> None:
    """Make ``open_device(name, **kw)`` call ``factory(**kw)``."""
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    from . import backends  # noqa: F401  (registers the built-in backends)

    return sorted(_BACKENDS)


def open_device(name: str, **kwargs) -> Device:
    """Build the backend registered as ``name``.

    Raises
    ------
    DeviceError
        Unknown backend (the message lists the known ones) or a backend that cannot start.
    """
    from . import backends  # noqa: F401

    if name not in _BACKENDS:
        raise DeviceError(f"unknown backend {name!r}; available: {sorted(_BACKENDS)}")
    return _BACKENDS[name](**kwargs)


# --------------------------------------------------------------------------------------------
# Host runtime
# --------------------------------------------------------------------------------------------
@dataclass
class GenerateResult:
    """Greedy generation: ``tokens`` (generated ids), ``logits`` (float32 [vocab] per generated
    token: the logits it was chosen from) and per-program statistics."""

    tokens: list[int]
    logits: list[torch.Tensor]
    programs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class Session:
    """Run compiled programs of ``image`` on ``device`` (see the module docstring)."""

    def __init__(self, device: Device, image):
        self.device, self.image, self.plan = device, image, image.plan
        device.load(image)
        self.pos = 0
        self.prog_addr = self.plan.addr("io:program")
        self.prog_capacity = self.plan["io:program"].nbytes // 32

    def run_tokens(self, tokens, lm_head: bool = True) -> dict:
        """Feed ``tokens`` at the next positions in one program; returns its statistics
        (``logits`` float32 [vocab] when ``lm_head``).

        Raises
        ------
        DeviceError
            The program stopped with an error code; CompileError for positions past the context.
        """
        from .compiler.program import tokens_program

        prog = tokens_program(self.plan, self.pos, tokens, lm_head)
        if prog.instructions > self.prog_capacity:
            raise DeviceError(f"program of {prog.instructions} instructions exceeds the image's "
                              f"instruction slot ({self.prog_capacity})")
        before = self.device.counters()
        self.device.write(self.prog_addr, prog.code)
        t0 = time.perf_counter()
        status = self.device.run(self.prog_addr, prog.instructions)
        wall = time.perf_counter() - t0
        status.raise_for_error()
        after = self.device.counters()
        self.pos += len(prog.positions)
        stats = {"positions": prog.positions, "instructions": prog.instructions,
                 "unit_instructions": prog.unit_counts, "wall_seconds": wall,
                 "counters": {k: after.get(k, 0) - before.get(k, 0) for k in after}}
        if lm_head:
            vocab = self.plan.cfg.vocab
            raw = self.device.read(self.plan.addr("io:logits"), vocab * 4)
            stats["logits"] = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
        return stats

    def prefill(self, prompt) -> list[dict]:
        """Feed the prompt in programs of ``plan.prefill_chunk`` tokens, LM head after the last.

        Returns the statistics of each program (the last one carries ``logits``)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise DeviceError("prefill: expected at least one prompt token")
        chunk = self.plan.prefill_chunk
        out = []
        for i in range(0, len(prompt), chunk):
            stats = self.run_tokens(prompt[i:i + chunk], lm_head=i + chunk >= len(prompt))
            stats["kind"] = "prefill"
            out.append(stats)
        return out

    def generate(self, prompt, n: int, progress: Callable[[int, int], None] | None = None) -> GenerateResult:
        """Greedy decoding of ``n`` tokens after ``prompt`` (argmax, lowest id on ties)."""
        t0 = time.perf_counter()
        pre = self.prefill(prompt)
        programs = [{k: v for k, v in st.items() if k != "logits"} for st in pre]
        logits = pre[-1]["logits"]
        tokens, all_logits = [], []
        for i in range(n):
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            all_logits.append(logits)
            if progress:
                progress(i + 1, n)
            if i + 1 < n:
                stats = self.run_tokens([tok])
                stats["kind"] = "decode"
                programs.append({k: v for k, v in stats.items() if k != "logits"})
                logits = stats["logits"]
        return GenerateResult(tokens, all_logits, programs, time.perf_counter() - t0)

    def routing_bitmask(self) -> torch.Tensor:
        """Skip bits ``bool [tokens, layers, 2]`` of the tokens processed so far, read back from
        the route history in HBM."""
        kv, cfg = self.plan.kv, self.plan.cfg
        raw = np.frombuffer(self.device.read(kv.route_base, self.pos * kv.route_bytes), dtype=np.uint8)
        bits = np.unpackbits(raw.reshape(self.pos, kv.route_bytes), axis=1, bitorder="little")
        return torch.from_numpy(bits[:, :2 * cfg.layers].reshape(self.pos, cfg.layers, 2).astype(bool))

    def kv_stats(self):
        """:class:`ternopu.golden.model.KVStats` of the tokens so far (from the route history)."""
        from ternopu.golden.config import KV_FP16_BITS
        from ternopu.golden.model import ATTN, KVStats, _kivi_bytes_for, kv_storage_stats

        cfg = self.plan.cfg
        mask = self.routing_bitmask()
        if cfg.kv_bits == KV_FP16_BITS:
            return kv_storage_stats(mask, 2 * cfg.kv_dim * 2)
        base = kv_storage_stats(mask, 0)
        rows = (~mask[:, :, ATTN]).sum(dim=0).tolist()
        stored = sum(cfg.kv_heads * _kivi_bytes_for(cfg, int(t)) for t in rows)
        dense = cfg.layers * cfg.kv_heads * _kivi_bytes_for(cfg, self.pos)
        return KVStats(base.entries_stored, base.entries_dense, stored, dense,
                       base.skipped_attn, base.skipped_ffn, base.blocks)
