"""Golden instruction-level simulator: executes overlay programs with the golden arithmetic.

State (what the overlay has): HBM (one byte array per pseudo-channel, addressed as in
:mod:`ternopu.sw.compiler.layout`), the eight on-chip scratch buffers
(:data:`~ternopu.sw.compiler.layout.BUF_BYTES` each), the routing bitmask (2 bits per layer,
cleared at every start) and the dependency token counters. Everything an instruction uses comes
from its fields, the buffers and HBM (weights, tables, the KV layout descriptor, the route
history): the simulator never sees the Python model.

Execution model
---------------
The dispatcher decodes words in program order (an illegal word stops the run with the decoder's
error code and its pc) and appends each to its unit's queue; CTRL instructions run in the
dispatcher (SKIP_IF reads the bitmask, SYNC waits for idle queues, END for all). Units execute
their queue heads in order as soon as the wait tokens are there; the simulator runs the units in
a fixed order (LD, ST, TLMM, PE, NPE), each as far as it can, so instructions of different units
run in a different order than the program lists them whenever the tokens allow it. A missing
dependency therefore shows up as a wrong result, and a wait that can never be satisfied as
``WATCHDOG`` (no unit can make progress). A release that finds a counter at
:data:`~ternopu.hw.isa.TOKEN_DEPTH` stops with ``TOKEN_OVERFLOW``.

Unit semantics (golden functions)
---------------------------------
TLMM: keys from the striped stream -> :func:`ternopu.golden.tlmm.unpack_keys` ->
:func:`~ternopu.golden.tlmm.tlmm_matvec` -> ``rescale(acc, amax * g127)``.
PE_LINEAR: GPTQ words -> :func:`ternopu.golden.int4.unpack_gptq` ->
:func:`ternopu.golden.pe.linear_bfp_int4`; FP16 rows -> :func:`ternopu.golden.pe.qk_bfp`.
PE_ATTN: KV rows of the source layers (cross-layer reuse from the route history and the current
bitmask) -> ``pe.qk_bfp`` / ``pe.qk_bfp_kivi`` (scores times ``scale``) or ``pe.pv_bfp`` /
``pe.pv_bfp_kivi`` in the order :mod:`ternopu.golden.model` defines. KV_APPEND: FP16 rows into the
token's slot; KIVI groups quantized (``kivi_quantize_keys`` / ``kivi_quantize_values``) as they
leave the residual window, exactly as :class:`ternopu.golden.kivi.KiviCache`. NPE:
:mod:`ternopu.golden.nonlinear`, ``bitnet.int8_act_quant`` and the saturating fp16 conversion.
Golden-function input errors (shapes, non-finite values) stop the run with ``SHAPE``.

Simulator shortcut: decoded weight streams are cached per (address, shape) and dropped when HBM
under them is written; results are identical to decoding on every use.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from ternopu.golden import nonlinear as nl
from ternopu.golden import pe
from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.bitnet import int8_act_quant, rescale
from ternopu.golden.errors import ConfigError, FormatError
from ternopu.golden.int4 import unpack_gptq
from ternopu.golden.kivi import kivi_quantize_keys, kivi_quantize_values, unpack_kivi_codes
from ternopu.golden.model import kv_source_layers, to_fp16_sat
from ternopu.golden.tlmm import beat_grid, num_groups, tlmm_matvec, unpack_keys
from ternopu.hw import isa
from ternopu.hw.isa import (AttnPhase, Block, ElemFormat, ErrorCode, IllegalInstruction, KvFormat, NpeOp, Unit,
                            WeightFormat)
from ternopu.hw.tlmm import TLMMConfig

from ..compiler.layout import BEAT_BYTES, BUF_BYTES, Geometry, KV_DESC_BYTES, KVLayout, align_up
from ..device import Device, RunStatus, register_backend

__all__ = ["GoldenISS", "EXEC_ORDER"]

#: Order in which the simulator lets the units run their queues.
EXEC_ORDER = (Unit.LD, Unit.ST, Unit.TLMM, Unit.PE, Unit.NPE)
_KV_BITS = {KvFormat.FP16: 16, KvFormat.KIVI2: 2, KvFormat.KIVI4: 4}


class _Stop(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _f32(bits: int) -> torch.Tensor:
    return torch.tensor([isa.bits_f32(bits)], dtype=torch.float32)


class GoldenISS(Device):
    """The ``golden`` backend (module docstring).

    Parameters
    ----------
    tlmm : TLMMConfig, optional
        TLMM geometry of the simulated overlay (default: the image's).
    fmt : BFPFormat, optional
        PE-array BFP format (default: the image's).
    exec_order : sequence of Unit
        Unit order of the scheduler (tests use it to reorder execution).
    """

    name = "golden"

    def __init__(self, tlmm: TLMMConfig | None = None, fmt: BFPFormat | None = None, exec_order=EXEC_ORDER):
        self.tlmm = tlmm
        self.fmt = fmt
        self.exec_order = tuple(exec_order)
        self.geo: Geometry | None = None
        self.mem: list[np.ndarray] = []
        self._cache: dict = {}
        self._counters: dict[str, int] = {}
        self.buffers = [np.zeros(BUF_BYTES, dtype=np.uint8) for _ in range(isa.NUM_BUFFERS)]
        self.bitmask = np.zeros((isa.MAX_LAYERS, 2), dtype=bool)

    @classmethod
    def blank(cls, ports: int, channel_bytes: int, *, tlmm: TLMMConfig | None = None,
              fmt: BFPFormat | None = None, exec_order=EXEC_ORDER) -> "GoldenISS":
        """A simulator with zeroed HBM of ``ports`` channels x ``channel_bytes`` and no image.

        Unit tests and :mod:`ternopu.sim.program_check` fill ``mem`` (or use :meth:`write`) and
        ``buffers`` themselves. TLMM geometry and BFP format default to :class:`TLMMConfig` ()
        and :data:`~ternopu.golden.bfp.DEFAULT_BFP`.
        """
        if not isinstance(ports, int) or not 1 <= ports <= isa.HBM_PORTS:
            raise ConfigError(f"ports must be an int in [1, {isa.HBM_PORTS}], got {ports!r}")
        if not isinstance(channel_bytes, int) or channel_bytes <= 0 or channel_bytes % BEAT_BYTES:
            raise ConfigError(f"channel_bytes must be a positive multiple of {BEAT_BYTES}, got {channel_bytes!r}")
        iss = cls(tlmm or TLMMConfig(), fmt or DEFAULT_BFP, exec_order)
        iss.geo = Geometry(ports, channel_bytes)
        iss.mem = [np.zeros(1, dtype=np.uint8) for _ in range(ports)]  # grows on write
        return iss

    # -- Device API -------------------------------------------------------------------------------
    def load(self, image) -> None:
        plan = image.plan
        self.geo = plan.geo
        self.tlmm = self.tlmm or plan.tlmm
        self.fmt = self.fmt or image.fmt or DEFAULT_BFP
        if (self.tlmm.tables, self.tlmm.lanes, self.tlmm.beat_bits) != (plan.tlmm.tables, plan.tlmm.lanes,
                                                                       plan.tlmm.beat_bits):
            from ..device import DeviceError

            raise DeviceError(f"image packed for TLMM geometry {plan.tlmm}, the simulated overlay has {self.tlmm}")
        self.mem = [np.zeros(max(plan.top[p], 1), dtype=np.uint8) for p in range(self.geo.ports)]
        for p, data in enumerate(image.channels):
            self.mem[p][:data.size] = data
        self._cache.clear()
        self._counters = {}

    def write(self, addr: int, data: bytes) -> None:
        self._mem_write(addr, np.frombuffer(bytes(data), dtype=np.uint8), count=False)

    def read(self, addr: int, nbytes: int) -> bytes:
        return self._mem_read(addr, nbytes, count=False).tobytes()

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    # -- memory -----------------------------------------------------------------------------------
    def _count(self, key: str, n: int) -> None:
        self._counters[key] = self._counters.get(key, 0) + n

    def _spans(self, addr: int, nbytes: int):
        """``(channel, local, length)`` pieces of a linear access; HBM_RANGE past the end."""
        if addr < 0 or addr + nbytes > self.geo.total_bytes:
            raise _Stop(ErrorCode.HBM_RANGE, f"access [{addr:#x}, {addr + nbytes:#x}) runs past the end of "
                                             f"HBM ({self.geo.total_bytes:#x})")
        out = []
        while nbytes > 0:
            ch, local = self.geo.split(addr)
            n = min(nbytes, self.geo.channel_bytes - local)
            out.append((ch, local, n))
            addr, nbytes = addr + n, nbytes - n
        return out

    def _mem_read(self, addr: int, nbytes: int, count: bool = True, port: int | None = None) -> np.ndarray:
        parts = []
        for ch, local, n in self._spans(addr, nbytes):
            m = self.mem[ch]
            piece = np.zeros(n, dtype=np.uint8)
            have = max(0, min(n, m.size - local))
            if have:
                piece[:have] = m[local:local + have]
            parts.append(piece)
            if count:
                self._count(f"HBM_RD_P{ch if port is None else port}", n)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _mem_write(self, addr: int, data: np.ndarray, count: bool = True, port: int | None = None) -> None:
        off = 0
        for ch, local, n in self._spans(addr, data.size):
            m = self.mem[ch]
            if local + n > m.size:
                grown = np.zeros(max(local + n, 2 * m.size), dtype=np.uint8)
                grown[:m.size] = m
                self.mem[ch] = m = grown
            m[local:local + n] = data[off:off + n]
            off += n
            if count:
                self._count(f"HBM_WR_P{ch if port is None else port}", n)
            self._invalidate(ch, local, local + n)

    def _invalidate(self, ch: int, lo: int, hi: int) -> None:
        dead = [k for k, (spans, _) in self._cache.items()
                if any(c == ch and a < hi and lo < b for c, a, b in spans)]
        for k in dead:
            del self._cache[k]

    def _read_stream(self, addr: int, nbytes: int, nports: int, port_field: int) -> tuple[np.ndarray, list]:
        """A striped stream (see :mod:`ternopu.sw.compiler.layout`): bytes and the spans it covers."""
        p0, base = self.geo.split(addr)
        if port_field != p0:
            raise _Stop(ErrorCode.SHAPE, f"stream at {addr:#x} lies in channel {p0} but the port field says {port_field}")
        beats = -(-nbytes // BEAT_BYTES)
        rows = -(-beats // nports)
        grid = np.zeros((rows, nports, BEAT_BYTES), dtype=np.uint8)
        spans = []
        for j in range(nports):
            ch = (p0 + j) % self.geo.ports
            used = len(range(j, beats, nports))
            grid[:, j, :] = self._mem_read(self.geo.addr(ch, base), rows * BEAT_BYTES, count=False).reshape(rows, BEAT_BYTES)
            self._count(f"HBM_RD_P{ch}", used * BEAT_BYTES)
            spans.append((ch, base, base + rows * BEAT_BYTES))
        return grid.reshape(-1)[:nbytes], spans

    def _cached_stream(self, key, addr, nbytes, nports, port_field, decode):
        hit = self._cache.get(key)
        if hit is not None:
            # count the traffic the hardware would make
            p0, _ = self.geo.split(addr)
            beats = -(-nbytes // BEAT_BYTES)
            for j in range(nports):
                self._count(f"HBM_RD_P{(p0 + j) % self.geo.ports}", len(range(j, beats, nports)) * BEAT_BYTES)
            return hit[1]
        raw, spans = self._read_stream(addr, nbytes, nports, port_field)
        value = decode(raw)
        self._cache[key] = (spans, value)
        return value

    # -- buffers ----------------------------------------------------------------------------------
    def _buf(self, buf: int, off: int, nbytes: int) -> np.ndarray:
        if off + nbytes > BUF_BYTES:
            raise _Stop(ErrorCode.BUF_RANGE, f"buffer {buf} access [{off}, {off + nbytes}) runs past {BUF_BYTES} bytes")
        return self.buffers[buf][off:off + nbytes]

    def _get(self, buf: int, off: int, n: int, dtype: str) -> torch.Tensor:
        size = np.dtype(dtype).itemsize
        arr = np.frombuffer(self._buf(buf, off, n * size).tobytes(), dtype=dtype)
        if dtype == "<i2":  # bfloat16 bit patterns
            return torch.from_numpy(arr.astype(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))

    def _put(self, buf: int, off: int, t: torch.Tensor) -> None:
        a = t.contiguous().numpy()
        raw = np.frombuffer(a.astype(a.dtype.newbyteorder("<")).tobytes(), dtype=np.uint8)
        self._buf(buf, off, raw.size)[:] = raw

    # -- run ----------------------------------------------------------------------------------------
    def run(self, prog_addr: int, n_instr: int) -> RunStatus:
        """Execute ``n_instr`` instructions from ``prog_addr`` (module docstring)."""
        if prog_addr % BEAT_BYTES:
            return RunStatus(False, ErrorCode.PROG_ALIGN, 0, f"program base {prog_addr:#x} is not 32-byte aligned")
        self.bitmask[:] = False
        cnt = np.zeros((isa.NUM_UNITS, isa.NUM_UNITS), dtype=np.int64)
        queues = {u: deque() for u in EXEC_ORDER}
        pc = 0
        current = 0
        try:
            while True:
                progressed = False
                # ---- dispatcher ----
                while True:
                    if pc >= n_instr:
                        if all(not q for q in queues.values()):
                            raise _Stop(ErrorCode.PC_RANGE, f"program ended at pc {pc} without END")
                        break
                    current = pc
                    ins = self._fetch(prog_addr, pc)
                    if ins.unit != Unit.CTRL:
                        queues[ins.unit].append((pc, ins))
                        self._count(f"INSTR_{ins.unit.name}", 1)
                        pc += 1
                        progressed = True
                        continue
                    if not self._tokens_ready(cnt, ins):
                        break
                    if ins.opcode == "SYNC" and any(queues[u] for u in EXEC_ORDER if ins["queues"] >> int(u) & 1):
                        break
                    if ins.opcode == "END" and any(queues.values()):
                        break
                    self._take(cnt, ins)
                    self._release(cnt, ins, pc)
                    self._count("INSTR_CTRL", 1)
                    progressed = True
                    if ins.opcode == "END":
                        return RunStatus(True, ErrorCode.NONE, -1, "", self.counters())
                    if ins.opcode == "SKIP_IF" and bool(self.bitmask[ins["layer"], ins["block"]]) == bool(ins["sense"]):
                        self._count("SKIPPED_INSTRUCTIONS", ins["count"])
                        pc += ins["count"]
                    pc += 1
                # ---- units ----
                for u in self.exec_order:
                    q = queues[u]
                    while q and self._tokens_ready(cnt, q[0][1]):
                        ipc, ins = q.popleft()
                        current = ipc
                        self._take(cnt, ins)
                        self._execute(ins)
                        self._release(cnt, ins, ipc)
                        progressed = True
                if not progressed:
                    blocked = min([q[0][0] for q in queues.values() if q] + [pc])
                    raise _Stop(ErrorCode.WATCHDOG, f"deadlock: no queue can proceed (oldest waiting "
                                                    f"instruction at pc {blocked})")
        except _Stop as s:
            where = current
            if s.code == ErrorCode.WATCHDOG:
                where = min([q[0][0] for q in queues.values() if q] + [pc])
            if s.code == ErrorCode.PC_RANGE:
                where = n_instr
            return RunStatus(False, s.code, where, s.message, self.counters())

    def _fetch(self, prog_addr: int, pc: int) -> isa.Instruction:
        word = self._mem_read(prog_addr + pc * isa.INSTR_BYTES, isa.INSTR_BYTES).tobytes()
        try:
            return isa.decode(word)
        except IllegalInstruction as e:
            raise _Stop(e.code, e.reason) from None

    @staticmethod
    def _tokens_ready(cnt, ins) -> bool:
        u = int(ins.unit)
        return all(cnt[p, u] > 0 for p in range(isa.NUM_UNITS) if ins.wait >> p & 1)

    @staticmethod
    def _take(cnt, ins) -> None:
        u = int(ins.unit)
        for p in range(isa.NUM_UNITS):
            if ins.wait >> p & 1:
                cnt[p, u] -= 1

    @staticmethod
    def _release(cnt, ins, pc) -> None:
        u = int(ins.unit)
        for c in range(isa.NUM_UNITS):
            if ins.release >> c & 1:
                if cnt[u, c] >= isa.TOKEN_DEPTH:
                    raise _Stop(ErrorCode.TOKEN_OVERFLOW, f"{ins.opcode} released a token {u}->{c} at depth "
                                                          f"{isa.TOKEN_DEPTH}")
                cnt[u, c] += 1

    # -- execution ----------------------------------------------------------------------------------
    def _execute(self, ins: isa.Instruction) -> None:
        handler = getattr(self, f"_op_{ins.opcode.lower()}", None)
        if handler is None:
            raise _Stop(ErrorCode.ILLEGAL_OPCODE, f"{ins.opcode} is not implemented by the golden ISS")
        try:
            handler(ins)
        except (FormatError, ConfigError) as e:  # golden-function input / parameter checks (e.g. eps)
            raise _Stop(ErrorCode.SHAPE, f"{ins.opcode}: {e}") from None

    # LD / ST ------------------------------------------------------------------------------------------
    def _op_load(self, i) -> None:
        n = i["burst_len"] * BEAT_BYTES
        for b in range(i["bursts"]):
            port = (i["port"] + b % i["nports"]) % isa.HBM_PORTS
            data = self._mem_read(i["hbm_addr"] + b * i["stride"], n, port=port)
            self._buf(i["dst_buf"], i["dst_off"] + b * n, n)[:] = data

    def _op_store(self, i) -> None:
        n = i["burst_len"] * BEAT_BYTES
        for b in range(i["bursts"]):
            port = (i["port"] + b % i["nports"]) % isa.HBM_PORTS
            data = self._buf(i["src_buf"], i["src_off"] + b * n, n).copy()
            self._mem_write(i["hbm_addr"] + b * i["stride"], data, port=port)

    def _op_mask_store(self, i) -> None:
        bits = self.bitmask[:i["layers"]].reshape(-1)
        rec = np.packbits(bits.astype(np.uint8), bitorder="little")
        out = np.zeros(align_up(rec.size), dtype=np.uint8)
        out[:rec.size] = rec
        self._mem_write(i["hbm_addr"], out)

    def _op_kv_prefetch(self, i) -> None:
        raise _Stop(ErrorCode.ILLEGAL_OPCODE, "KV_PREFETCH is not modelled by the golden ISS (PE_ATTN "
                                              "resolves reused rows itself)")

    # KV ---------------------------------------------------------------------------------------------------
    def _desc(self, addr: int) -> KVLayout:
        try:
            return KVLayout.from_bytes(self._mem_read(addr, KV_DESC_BYTES).tobytes())
        except FormatError as e:
            raise _Stop(ErrorCode.SHAPE, str(e)) from None

    def _check_kv(self, i, kv: KVLayout) -> None:
        if _KV_BITS[KvFormat(i["kv_fmt"])] != kv.bits:
            raise _Stop(ErrorCode.SHAPE, f"kv_fmt {KvFormat(i['kv_fmt']).name} does not match the descriptor ({kv.bits} bits)")
        if i["layer"] >= kv.layers or i["kv_head"] >= kv.kv_heads:
            raise _Stop(ErrorCode.SHAPE, f"layer {i['layer']} / kv_head {i['kv_head']} outside the descriptor "
                                         f"({kv.layers} layers, {kv.kv_heads} KV heads)")
        if i["kv_addr"] != kv.layer_addr(i["layer"]):
            raise _Stop(ErrorCode.SHAPE, f"kv_addr {i['kv_addr']:#x} is not layer {i['layer']}'s KV region "
                                         f"({kv.layer_addr(i['layer']):#x})")

    def _history(self, kv: KVLayout, tokens: int) -> np.ndarray:
        """bool [tokens, layers, 2] routing bits of tokens ``0 .. tokens-1`` from the route history."""
        if tokens == 0:
            return np.zeros((0, kv.layers, 2), dtype=bool)
        raw = self._mem_read(kv.route_base, tokens * kv.route_bytes).reshape(tokens, kv.route_bytes)
        bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :2 * kv.layers]
        return bits.reshape(tokens, kv.layers, 2).astype(bool)

    def _fp16_row(self, kv, layer, token, row, off) -> torch.Tensor:
        raw = self._mem_read(kv.fp16_row_addr(self.geo, layer, token, row) + off, 2 * kv.head_dim)
        return torch.from_numpy(np.frombuffer(raw.tobytes(), dtype="<f2").astype(np.float16))

    def _op_kv_append(self, i) -> None:
        kv = self._desc(i["desc_addr"])
        self._check_kv(i, kv)
        layer, head, token, d = i["layer"], i["kv_head"], i["token"], kv.head_dim
        if i["head_dim"] != d or token >= kv.max_pos:
            raise _Stop(ErrorCode.SHAPE, f"KV_APPEND head_dim {i['head_dim']} / token {token} do not match "
                                         f"the descriptor (head_dim {d}, max_pos {kv.max_pos})")
        k_off, v_off = kv.row_offsets(head)
        hist = self._history(kv, token)
        ran = [s for s in range(token) if not hist[s, layer, Block.ATTN]] + [token]
        rows = len(ran)
        row_addr = kv.fp16_row_addr(self.geo, layer, token, rows - 1)
        self._mem_write(row_addr + k_off, self._buf(i["k_buf"], i["k_off"], 2 * d).copy())
        self._mem_write(row_addr + v_off, self._buf(i["v_buf"], i["v_off"], 2 * d).copy())
        if not kv.kivi:
            return
        r, g = kv.residual, kv.group
        if rows > r and (rows - r) % g == 0:  # a full key group leaves the residual window
            j = (rows - r) // g - 1
            keys = torch.stack([self._fp16_row(kv, layer, ran[n], n, k_off) for n in range(j * g, (j + 1) * g)])
            qt = kivi_quantize_keys(keys, kv.bits, g)
            rec = kv.kg_offsets(head)
            base = kv.kgroup_addr(self.geo, layer, j)
            self._mem_write(base + rec["codes"], _bytes(qt.packed_codes()))
            self._mem_write(base + rec["scale"], _bytes(qt.scale))
            self._mem_write(base + rec["mn"], _bytes(qt.mn))
        if rows > r:  # the oldest value of the residual window is quantized per token
            n = rows - r - 1
            qv = kivi_quantize_values(self._fp16_row(kv, layer, ran[n], n, v_off)[None], kv.bits, g)
            rec = kv.vq_offsets(head)
            base = kv.slot_addr(self.geo, layer, ran[n])
            self._mem_write(base + rec["codes"], _bytes(qv.packed_codes()))
            self._mem_write(base + rec["scale"], _bytes(qv.scale))
            self._mem_write(base + rec["mn"], _bytes(qv.mn))

    def _visible(self, i, kv: KVLayout):
        """Source layer of every visible token and the row bookkeeping of each source layer."""
        layer, tokens = i["layer"], i["tokens"]
        pos = tokens - 1
        if tokens > kv.max_pos:
            raise _Stop(ErrorCode.SHAPE, f"tokens {tokens} exceeds the descriptor's max_pos {kv.max_pos}")
        skip = np.zeros((tokens, kv.layers), dtype=bool)
        skip[:pos] = self._history(kv, pos)[:, :, Block.ATTN]
        skip[pos, :layer] = self.bitmask[:layer, Block.ATTN]
        skip[pos, layer:] = False
        skip[:, 0] = False
        src = kv_source_layers(torch.from_numpy(skip[:, :layer + 1]))[:, layer].tolist()
        ran = ~skip  # ran[s, L]; rows of layer L in token order
        row_of = np.cumsum(ran, axis=0) - ran  # rows before token s at each layer
        total = ran[:, :layer + 1].sum(axis=0)
        return src, row_of, total

    def _gather_kivi(self, i, kv: KVLayout, keys: bool):
        src, row_of, total = self._visible(i, kv)
        head, g, r_win = i["kv_head"], kv.group, kv.residual
        k_off, v_off = kv.row_offsets(head)
        q_rows, f_rows, q_tok, f_tok = [], [], [], []
        nw = -(-g * kv.bits // 32)
        for s, lsrc in enumerate(src):
            r = int(row_of[s, lsrc])
            t_l = int(total[lsrc])
            if keys:
                nq = g * max(0, (t_l - r_win) // g)
                if r < nq:
                    j = r // g
                    rec = kv.kg_offsets(head)
                    base = kv.kgroup_addr(self.geo, lsrc, j)
                    words = _i32(self._mem_read(base + rec["codes"], kv.head_dim * nw * 4)).reshape(1, kv.head_dim, nw)
                    codes = unpack_kivi_codes(words, bits=kv.bits, group=g, axis="keys", tokens=g,
                                              channels=kv.head_dim)[r % g]
                    scale = _f16(self._mem_read(base + rec["scale"], 2 * kv.head_dim))
                    mn = _f16(self._mem_read(base + rec["mn"], 2 * kv.head_dim))
                    q_rows.append((codes, scale, mn))
                    q_tok.append(s)
                else:
                    f_rows.append(self._fp16_row(kv, lsrc, s, r, k_off))
                    f_tok.append(s)
            else:
                nq = max(0, t_l - r_win)
                if r < nq:
                    ng = kv.head_dim // g
                    base = kv.slot_addr(self.geo, lsrc, s)
                    rec = kv.vq_offsets(head)
                    words = _i32(self._mem_read(base + rec["codes"], ng * nw * 4)).reshape(1, ng, nw)
                    codes = unpack_kivi_codes(words, bits=kv.bits, group=g, axis="values", tokens=1,
                                              channels=kv.head_dim)[0]
                    scale = _f16(self._mem_read(base + rec["scale"], 2 * ng))
                    mn = _f16(self._mem_read(base + rec["mn"], 2 * ng))
                    q_rows.append((codes, scale, mn))
                    q_tok.append(s)
                else:
                    f_rows.append(self._fp16_row(kv, lsrc, s, r, v_off))
                    f_tok.append(s)
        stack3 = (tuple(torch.stack([row[k] for row in q_rows]) for k in range(3)) if q_rows else None)
        return stack3, (torch.stack(f_rows) if f_rows else None), q_tok, f_tok

    def _op_pe_attn(self, i) -> None:
        kv = self._desc(i["desc_addr"])
        self._check_kv(i, kv)
        d, tokens = kv.head_dim, i["tokens"]
        if kv.kivi and i["resid_tokens"] != kv.residual:
            raise _Stop(ErrorCode.SHAPE, f"resid_tokens {i['resid_tokens']} != descriptor residual {kv.residual}")
        if not kv.kivi:
            src, _, _ = self._visible(i, kv)
            off = kv.row_offsets(i["kv_head"])[0 if i["phase"] == AttnPhase.QK else 1]
            rows = torch.stack([self._fp16_row(kv, lsrc, s, s, off) for s, lsrc in enumerate(src)])
            if i["phase"] == AttnPhase.QK:
                q16 = self._get(i["src_buf"], i["src_off"], d, "<f2")
                out = pe.qk_bfp(q16, rows, self.fmt) * _f32(i["scale"])
            else:
                p = self._get(i["src_buf"], i["src_off"], tokens, "<f4")
                out = pe.pv_bfp(p, rows, self.fmt)
            self._put(i["dst_buf"], i["dst_off"], out)
            return
        if i["phase"] == AttnPhase.QK:
            q16 = self._get(i["src_buf"], i["src_off"], d, "<f2")
            kq, kr, _, _ = self._gather_kivi(i, kv, keys=True)
            parts = []
            if kq is not None:
                parts.append(pe.qk_bfp_kivi(q16, kq[0], kq[1], kq[2], 1, self.fmt))
            if kr is not None:
                parts.append(pe.qk_bfp(q16, kr, self.fmt))
            self._put(i["dst_buf"], i["dst_off"], torch.cat(parts) * _f32(i["scale"]))
            return
        _, _, kq_tok, kr_tok = self._gather_kivi(i, kv, keys=True)
        order = {s: n for n, s in enumerate(kq_tok + kr_tok)}
        vq, vr, vq_tok, vr_tok = self._gather_kivi(i, kv, keys=False)
        p = self._get(i["src_buf"], i["src_off"], tokens, "<f4")
        o = None
        if vq is not None:
            idx = torch.tensor([order[s] for s in vq_tok], dtype=torch.int64)
            o = pe.pv_bfp_kivi(p[idx], vq[0], vq[1], vq[2], kv.group, self.fmt)
        if vr is not None:
            idx = torch.tensor([order[s] for s in vr_tok], dtype=torch.int64)
            o_r = pe.pv_bfp(p[idx], vr, self.fmt)
            o = o_r if o is None else o + o_r
        self._put(i["dst_buf"], i["dst_off"], o)

    # TLMM / PE -----------------------------------------------------------------------------------------------
    def _op_tlmm(self, i) -> None:
        t = self.tlmm
        n, k = i["rows"], i["cols"]
        g = num_groups(k)
        r_tiles, c_tiles = beat_grid(n, g, t.tables, t.lanes)
        beat_bytes = t.beat_bits // 8
        nbytes = r_tiles * c_tiles * beat_bytes

        def decode(raw):
            beats = torch.from_numpy(raw.reshape(r_tiles * c_tiles, beat_bytes).copy())
            return unpack_keys(beats, n, g, t.tables, t.lanes)

        keys = self._cached_stream(("tlmm", i["w_addr"], n, k, i["nports"]), i["w_addr"], nbytes,
                                   i["nports"], i["port"], decode)
        xq = self._get(i["src_buf"], i["src_off"], k, "<i1")
        amax = self._get(i["amax_buf"], i["amax_off"], 1, "<f4")
        acc = tlmm_matvec(keys, xq)
        self._put(i["dst_buf"], i["dst_off"], rescale(acc, amax * _f32(i["g127"])))

    def _op_pe_linear(self, i) -> None:
        n, k = i["rows"], i["cols"]
        x16 = self._get(i["src_buf"], i["src_off"], k, "<f2")
        if i["wfmt"] == WeightFormat.FP16:
            w = self._cached_stream(("fp16", i["w_addr"], n, k), i["w_addr"], n * k * 2, i["nports"], i["port"],
                                    lambda raw: _f16(raw).reshape(n, k))
            self._put(i["dst_buf"], i["dst_off"], pe.qk_bfp(x16, w, self.fmt))
            return
        group = 1 << i["group_log2"]
        if k % group or k % 8 or n % 8:
            raise _Stop(ErrorCode.SHAPE, f"PE_LINEAR K={k}, N={n}, group {group}: K must be a multiple of the "
                                         "group and of 8, N of 8")
        qweight = self._cached_stream(("qw", i["w_addr"], n, k), i["w_addr"], k // 8 * n * 4, i["nports"], i["port"],
                                      lambda raw: _i32(raw).reshape(k // 8, n))
        scales = self._cached_stream(("sc", i["scale_addr"], n, k, group), i["scale_addr"], k // group * n * 2,
                                     i["nports"], self.geo.split(i["scale_addr"])[0],
                                     lambda raw: _f16(raw).reshape(k // group, n))
        qzeros = self._cached_stream(("qz", i["zero_addr"], n, k, group), i["zero_addr"], k // group * n // 8 * 4,
                                     i["nports"], self.geo.split(i["zero_addr"])[0],
                                     lambda raw: _i32(raw).reshape(k // group, n // 8))
        key = ("gptq", i["w_addr"], i["scale_addr"], i["zero_addr"], n, k, group)
        hit = self._cache.get(key)
        if hit is None or hit[1][0] is not qweight or hit[1][1] is not scales or hit[1][2] is not qzeros:
            hit = ([], (qweight, scales, qzeros, unpack_gptq(qweight, qzeros, scales, group=group)))
            self._cache[key] = hit
        q, zeros, sc = hit[1][3]
        self._put(i["dst_buf"], i["dst_off"], pe.linear_bfp_int4(x16, q, zeros, sc, group, self.fmt))

    def _op_router(self, i) -> None:
        dim = i["dim"]
        x16 = self._get(i["src_buf"], i["src_off"], dim, "<f2")
        w16 = _f16(self._mem_read(i["w_addr"], 2 * dim))
        bias = torch.from_numpy(np.frombuffer(self._mem_read(i["w_addr"] + align_up(2 * dim), 4).tobytes(),
                                              dtype="<f4").astype(np.float32))
        score = pe.qk_bfp(x16, w16[None], self.fmt)[0] + bias[0]
        self.bitmask[i["layer"], i["block"]] = bool(score < _f32(i["threshold"])[0])

    # NPE ----------------------------------------------------------------------------------------------------
    def _op_npe(self, i) -> None:
        op, n = NpeOp(i["subop"]), i["length"]
        a = lambda: self._get(i["a_buf"], i["a_off"], n, "<f4")  # noqa: E731
        b = lambda: self._get(i["b_buf"], i["b_off"], n, "<f4")  # noqa: E731
        if op == NpeOp.RMSNORM:
            w = torch.from_numpy(np.frombuffer(self._mem_read(i["param_addr"], 4 * n).tobytes(), dtype="<f4")
                                 .astype(np.float32))
            out = nl.rmsnorm(a(), w, isa.bits_f32(i["eps"]))
        elif op == NpeOp.SOFTMAX:
            out = nl.softmax_online(a())
        elif op == NpeOp.RELU2_GLU:
            out = nl.relu2_glu(a(), b())
        elif op == NpeOp.SWIGLU:
            out = nl.swiglu(a(), b())
        elif op == NpeOp.SILU:
            out = nl.silu(a())
        elif op == NpeOp.RESIDUAL_ADD:
            out = nl.residual_add(a(), b())
        elif op == NpeOp.ROPE:
            hd = i["head_dim"]
            if hd == 0 or n % hd:
                raise _Stop(ErrorCode.SHAPE, f"ROPE length {n} is not a multiple of head_dim {hd}")
            raw = np.frombuffer(self._mem_read(i["param_addr"], hd * 4).tobytes(), dtype="<f4")
            cs = torch.from_numpy(raw.astype(np.float32)).reshape(2, hd // 2)
            out = nl.rope(a().reshape(n // hd, hd), 0, cs[0:1], cs[1:2]).reshape(n)
        elif op == NpeOp.ACT_QUANT_INT8:
            xq, amax = int8_act_quant(a())
            self._put(i["dst_buf"], i["dst_off"], xq)
            self._put(i["dst_buf"], i["dst_off"] + align_up(n), amax.reshape(1))
            return
        elif op == NpeOp.TO_FP16:
            out = to_fp16_sat(a())
        elif op == NpeOp.TO_FP32:
            fmt = ElemFormat(i["fmt"])
            if fmt == ElemFormat.F32:
                out = a()
            elif fmt == ElemFormat.F16:
                out = self._get(i["a_buf"], i["a_off"], n, "<f2").to(torch.float32)
            else:
                out = self._get(i["a_buf"], i["a_off"], n, "<i2").to(torch.float32)
        else:
            raise _Stop(ErrorCode.FIELD_RANGE, f"NPE subop {op.name} is not implemented")
        self._put(i["dst_buf"], i["dst_off"], out)


def _bytes(t: torch.Tensor) -> np.ndarray:
    a = t.contiguous().numpy()
    return np.frombuffer(a.astype(a.dtype.newbyteorder("<")).tobytes(), dtype=np.uint8)


def _f16(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw.tobytes(), dtype="<f2").astype(np.float16))


def _i32(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw.tobytes(), dtype="<i4").astype(np.int32))


register_backend("golden", GoldenISS)
