"""HBM image: build it from a model, write it atomically, read and validate it.

On disk an image is a directory:

* ``manifest.json``: format tag and version, the model / overlay / TLMM / BFP configuration, the
  context, the memory plan (every region), the KV layout, the per-linear TLMM immediates
  (``g127``), the number of initialized bytes per channel and the SHA-256 of ``hbm.bin``.
* ``hbm.bin``: for each channel ``p`` in order, its initialized prefix (``init_bytes[p]`` bytes
  from local offset 0). Everything above it (KV cache, key groups, route history, logits,
  instruction slot) is zero when the image is loaded.

The directory is written under a temporary name next to the target and renamed into place, so
an interrupted compile leaves either the old image or none, never a half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.config import ModelConfig, linear_prefixes, norm_names, router_names
from ternopu.golden.errors import TernopuError
from ternopu.hw import isa
from ternopu.hw.isa import ElemFormat
from ternopu.hw.overlay_config import OverlayConfig
from ternopu.hw.tlmm import TLMMConfig

from .layout import BEAT_BYTES, align_up
from .plan import DEFAULT_PREFILL_CHUNK, CompileError, MemoryPlan, plan_memory

__all__ = ["IMAGE_FORMAT", "IMAGE_VERSION", "MANIFEST", "HBM_FILE", "ImageError", "Image", "build_image",
           "write_image", "read_image", "embed_format"]

IMAGE_FORMAT = "ternopu-hbm-image"
IMAGE_VERSION = 1
MANIFEST = "manifest.json"
HBM_FILE = "hbm.bin"


class ImageError(TernopuError, ValueError):
    """An image directory is missing, truncated, corrupted or inconsistent."""


@dataclass
class Image:
    """A compiled image: the plan and the initialized bytes of every channel."""

    plan: MemoryPlan
    channels: list[np.ndarray]  # uint8, init prefix of each channel
    fmt: BFPFormat = DEFAULT_BFP

    @property
    def cfg(self) -> ModelConfig:
        return self.plan.cfg

    def manifest(self, digest: str = "") -> dict:
        p = self.plan
        return {
            "format": IMAGE_FORMAT, "version": IMAGE_VERSION,
            "isa_version": [isa.ISA_VERSION_MAJOR, isa.ISA_VERSION_MINOR],
            "model": dataclasses.asdict(p.cfg), "overlay": dataclasses.asdict(p.overlay),
            "tlmm": dataclasses.asdict(p.tlmm), "bfp": {"block": self.fmt.block, "mant_bits": self.fmt.mant_bits},
            "context": p.context, "prefill_chunk": p.prefill_chunk, "embed_fmt": int(p.embed_fmt),
            "step_instructions": p.regions["io:program"].nbytes // 32 // p.prefill_chunk,
            "g127": dict(p.g127), "kv_layout": dataclasses.asdict(p.kv),
            "regions": {k: r.to_json() for k, r in p.regions.items()},
            "init_bytes": [int(c.size) for c in self.channels], "hbm_sha256": digest,
            "summary": p.summary(),
        }


def embed_format(emb: torch.Tensor) -> int:
    """Narrowest :class:`ElemFormat` that holds every embedding value exactly (BF16, F16, else F32)."""
    e32 = emb.to(torch.float32)
    for fmt, dt in ((ElemFormat.BF16, torch.bfloat16), (ElemFormat.F16, torch.float16)):
        if torch.equal(e32.to(dt).to(torch.float32), e32):
            return int(fmt)
    return int(ElemFormat.F32)


def _as_bytes(t: torch.Tensor) -> np.ndarray:
    """Little-endian bytes of a tensor (row-major)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    a = t.contiguous().numpy()
    return np.frombuffer(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(), dtype=np.uint8)


class _Writer:
    def __init__(self, plan: MemoryPlan):
        self.plan, self.geo = plan, plan.geo
        self.ch = [np.zeros(t, dtype=np.uint8) for t in plan.init_top]

    def single(self, name: str, data: np.ndarray) -> None:
        r = self.plan[name]
        if data.size > r.per_port:
            raise CompileError(f"internal: {name} has {data.size} bytes, region holds {r.per_port}")
        self.ch[r.port][r.base:r.base + data.size] = data

    def stream(self, name: str, data: np.ndarray) -> None:
        r = self.plan[name]
        if data.size != r.nbytes:
            raise CompileError(f"internal: {name} has {data.size} bytes, plan says {r.nbytes}")
        rows = r.per_port // BEAT_BYTES
        padded = np.zeros(rows * r.nports * BEAT_BYTES, dtype=np.uint8)
        padded[:data.size] = data
        grid = padded.reshape(rows, r.nports, BEAT_BYTES)
        for j in range(r.nports):
            port = (r.port + j) % self.geo.ports
            self.ch[port][r.base:r.base + rows * BEAT_BYTES] = grid[:, j, :].reshape(-1)

    def rows(self, name: str, data: np.ndarray) -> None:
        """``data``: uint8 [count, row payload bytes] (each row zero padded to row_bytes)."""
        r = self.plan[name]
        per = -(-r.count // r.nports)
        padded = np.zeros((per * r.nports, r.row_bytes), dtype=np.uint8)
        padded[:r.count, :data.shape[1]] = data
        grid = padded.reshape(per, r.nports, r.row_bytes)
        for j in range(r.nports):
            port = (r.port + j) % self.geo.ports
            self.ch[port][r.base:r.base + per * r.row_bytes] = grid[:, j, :].reshape(-1)


def build_image(cfg: ModelConfig, weights: dict, overlay: OverlayConfig | None = None,
                tlmm: TLMMConfig | None = None, context: int | None = None,
                prefill_chunk: int = DEFAULT_PREFILL_CHUNK, progress=None) -> Image:
    """Plan and pack a model into an :class:`Image` (in memory).

    The weights go through :class:`ternopu.golden.model.GoldenModel`'s loader, so the image holds
    exactly the tensors the golden model computes with (ternarized keys, FP16 LM head, ...).

    Raises
    ------
    CompileError
        Does not fit, unsupported shapes or features (act-order INT4 checkpoints).
    ConfigError, FormatError, NonFiniteError
        Missing or malformed tensors (from the golden loader).
    """
    from ternopu.golden.int4 import pack_gptq
    from ternopu.golden.model import GoldenModel
    from ternopu.golden.tlmm import pack_keys

    overlay = overlay or OverlayConfig()
    tlmm = tlmm or TLMMConfig()
    if "model.embed_tokens.weight" not in weights:
        raise CompileError("weights: missing tensor 'model.embed_tokens.weight'")
    efmt = embed_format(weights["model.embed_tokens.weight"])
    plan = plan_memory(cfg, overlay, tlmm, context, prefill_chunk, embed_fmt=efmt)
    gm = GoldenModel.from_config_and_weights(cfg, weights, linear_path="matmul")
    w = _Writer(plan)
    tick = progress or (lambda *_: None)
    w.single("desc:kv", np.frombuffer(plan.kv.to_bytes(), dtype=np.uint8))
    for name in norm_names(cfg):
        w.single(f"norm:{name}", _as_bytes(gm.norms[name].to(torch.float32)))
    row = align_up(cfg.head_dim * 4)
    half = cfg.head_dim // 2
    table = np.zeros((cfg.max_pos, row), dtype=np.uint8)
    table[:, :half * 4] = _as_bytes(gm.cos).reshape(cfg.max_pos, half * 4)
    table[:, half * 4:cfg.head_dim * 4] = _as_bytes(gm.sin).reshape(cfg.max_pos, half * 4)
    w.rows("rope:table", table)
    if cfg.routers:
        for i in range(cfg.layers):
            for b, block in enumerate(("attn", "ffn")):
                w16, bias = gm.routers[(i, b)]
                rec = np.zeros(align_up(cfg.hidden * 2) + BEAT_BYTES, dtype=np.uint8)
                rec[:cfg.hidden * 2] = _as_bytes(w16.reshape(-1))
                off = align_up(cfg.hidden * 2)
                rec[off:off + 4] = _as_bytes(bias.to(torch.float32).reshape(1))
                w.single(f"router:{router_names(i, block)[0]}", rec)
    dt = {ElemFormat.BF16: torch.bfloat16, ElemFormat.F16: torch.float16, ElemFormat.F32: torch.float32}[efmt]
    emb = gm.embed.to(dt)
    w.rows("embed:tokens", _as_bytes(emb).reshape(cfg.vocab, -1))
    tick("embedding")
    for layer, lin, prefix in linear_prefixes(cfg):
        if cfg.family == "bitnet":
            keys, _, gamma, _ = gm.linears[prefix]
            beats = pack_keys(keys, tlmm.tables, tlmm.lanes, tlmm.beat_bits)
            w.stream(f"weights:{prefix}.keys", beats.reshape(-1).numpy())
            g127 = torch.as_tensor(gamma, dtype=torch.float32) / torch.tensor(127.0, dtype=torch.float32)
            plan.g127[prefix] = isa.f32_bits(float(g127))
        else:
            q, zeros, scales, perm = gm.linears[prefix]
            if perm is not None:
                raise CompileError(f"{prefix}: act-order (g_idx) INT4 checkpoints are not supported by "
                                   "the compiler (the PE array reads activations in order)")
            packed = pack_gptq(q, zeros, scales)
            for part in ("qweight", "scales", "qzeros"):
                w.stream(f"weights:{prefix}.{part}", _as_bytes(packed[part]))
        tick(prefix)
    w.stream("lm_head:fp16", _as_bytes(gm.lm_head16))
    tick("lm_head")
    return Image(plan, w.ch, gm.fmt)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def write_image(image: Image, out_dir) -> Path:
    """Write ``image`` to ``out_dir`` atomically (temp directory + rename). Returns the path."""
    out = Path(out_dir)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not (out / MANIFEST).exists():
        raise ImageError(f"{out} exists and is not a ternopu image; refusing to overwrite it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        h = hashlib.sha256()
        with open(tmp / HBM_FILE, "wb") as f:
            for c in image.channels:
                b = c.tobytes()
                h.update(b)
                f.write(b)
        (tmp / MANIFEST).write_text(json.dumps(image.manifest(h.hexdigest()), indent=1))
        old = None
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_image(path) -> Image:
    """Load and validate an image directory.

    Raises
    ------
    ImageError
        Missing files, unparsable manifest, wrong format/version, a plan that does not match the
        recorded regions, a size or checksum mismatch of ``hbm.bin``.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ImageError(f"{path}: not an image directory (no {MANIFEST})")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ImageError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != IMAGE_FORMAT:
        raise ImageError(f"{mpath}: format must be {IMAGE_FORMAT!r}, found {m.get('format') if isinstance(m, dict) else m!r}")
    if m.get("version") != IMAGE_VERSION:
        raise ImageError(f"{mpath}: image version {m.get('version')} is not supported (expected {IMAGE_VERSION})")
    isa_version = m.get("isa_version")
    if not isinstance(isa_version, list) or not isa_version or isa_version[0] != isa.ISA_VERSION_MAJOR:
        raise ImageError(f"{mpath}: compiled for ISA {isa_version}, this overlay runs "
                         f"{isa.ISA_VERSION_MAJOR}.{isa.ISA_VERSION_MINOR}")
    try:
        cfg = ModelConfig(**m["model"])
        overlay = OverlayConfig(**m["overlay"])
        tlmm = TLMMConfig(**m["tlmm"])
        fmt = BFPFormat(**m["bfp"])
        plan = plan_memory(cfg, overlay, tlmm, m["context"], m["prefill_chunk"], m["step_instructions"],
                           m["embed_fmt"])
        plan.g127 = {str(k): int(v) for k, v in m["g127"].items()}
        init = [int(x) for x in m["init_bytes"]]
        regions, kv_layout = m["regions"], m["kv_layout"]
    except (KeyError, TypeError, ValueError) as e:  # includes ConfigError / CompileError
        raise ImageError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    if {k: r.to_json() for k, r in plan.regions.items()} != regions or init != plan.init_top:
        raise ImageError(f"{mpath}: the recorded memory plan does not match the one this compiler "
                         "derives from the manifest's configuration (image from another version?)")
    if dataclasses.asdict(plan.kv) != kv_layout:
        raise ImageError(f"{mpath}: KV layout mismatch")
    hpath = path / HBM_FILE
    if not hpath.is_file():
        raise ImageError(f"{path}: missing {HBM_FILE}")
    raw = hpath.read_bytes()
    if len(raw) != sum(init):
        raise ImageError(f"{hpath}: expected {sum(init)} bytes, found {len(raw)} (truncated or padded)")
    if hashlib.sha256(raw).hexdigest() != m.get("hbm_sha256"):
        raise ImageError(f"{hpath}: SHA-256 mismatch (corrupted image)")
    buf = np.frombuffer(raw, dtype=np.uint8)
    chans, off = [], 0
    for n in init:
        chans.append(buf[off:off + n].copy())
        off += n
    return Image(plan, chans, fmt)
