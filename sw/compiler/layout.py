"""HBM address space, striped streams, the KV layout descriptor and the on-chip buffer plan.

Defined once here; the compiler writes with it, the golden ISS and the docs read with it.

HBM address space
-----------------
An HBM byte address (:data:`ternopu.hw.isa.HBM_ADDR_BITS` bits) names pseudo-channel
``addr // channel_bytes`` at local offset ``addr % channel_bytes`` (U280: 32 channels x 256 MiB;
the AXI switch lets any port reach any channel, but the compiler places data so that port ``p``
streams from its own channel ``p``).

Striped streams (TLMM keys, GPTQ words, FP16 LM head)
-----------------------------------------------------
A stream of ``nbytes`` is cut into 32-byte beats (:data:`BEAT_BYTES`, the last one zero padded) and
laid out with :func:`ternopu.hw.dma.stripe_layout` over ``nports`` channels starting at the channel
of its address: logical beat ``i`` lives in channel ``(p0 + i % nports) % hbm_ports`` at local
offset ``base + (i // nports) * 32``, where ``p0 = addr // channel_bytes`` and
``base = addr % channel_bytes``. Every channel of the stripe holds a contiguous run from ``base``.

KV layout descriptor (:class:`KVLayout`)
----------------------------------------
:data:`KV_DESC_WORDS` little-endian uint64 words at ``desc_addr`` (a multiple of 32 bytes),
in the order of :data:`KV_DESC_FIELDS`. It fixes the placement of

* **FP16 KV rows** (``bits == 16``): the whole K/V row of token ``t`` at layer ``l`` (all KV
  heads) lies in one channel, tokens round-robin over ``kv_nports`` channels (as the KV history
  buffer wants): channel ``chan(kv_base) + t % kv_nports`` (mod ports), local offset
  ``local(kv_base) + l * kv_layer_stride + (t // kv_nports) * slot_bytes``. Row content, per KV
  head ``h`` in order: K fp16 ``[head_dim]`` then V fp16 ``[head_dim]``. Slots are indexed by token
  *position*; a token that skipped attention at a layer leaves its slot unused there.
* **KIVI** (``bits`` 2 or 4): the *slot* of token ``t`` (same placement) holds the token's
  quantized value, per head: packed codes (``head_dim / group`` groups of ``ceil(group*bits/32)``
  int32 words, :meth:`ternopu.golden.kivi.KiviTensor.packed_codes`), fp16 scale
  ``[head_dim/group]``, fp16 min ``[head_dim/group]``, contiguous. The FP16 rows of the residual
  window live in a per-layer **ring** of ``ring_rows = residual + group`` rows (same row format as
  the FP16 cache): cache row ``r`` of layer ``l`` (the ``r``-th token that ran attention there) is
  ring entry ``e = r % ring_rows`` in channel ``chan(ring_base) + e % kv_nports``, local
  ``local(ring_base) + l * ring_layer_stride + (e // kv_nports) * ring_bytes``. A row is only
  overwritten after it has been quantized (keys and values), so the ring never loses data.
* **KIVI key groups**: group ``j`` (cache rows ``j*group .. j*group + group - 1`` of the layer) of
  layer ``l``: channel ``chan(kg_base) + j % kv_nports``, local ``local(kg_base) + l *
  kg_layer_stride + (j // kv_nports) * kg_bytes``; per head, contiguous: codes int32
  ``[head_dim, ceil(group*bits/32)]``, fp16 scale ``[head_dim]``, fp16 min ``[head_dim]``.
* **Route history**: record of token ``t`` at ``route_base + t * route_bytes`` (one channel): the
  routing bitmask after the token (bit ``2*l + block``, LSB first, 1 = skipped), written by
  ``MASK_STORE``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from ternopu.golden.errors import FormatError
from ternopu.hw import isa

__all__ = [
    "BEAT_BYTES", "BUF_BYTES", "align_up", "Geometry", "StripedStream",
    "KV_DESC_MAGIC", "KV_DESC_FIELDS", "KV_DESC_WORDS", "KV_DESC_BYTES", "KVLayout",
    "kivi_word_count", "Buf", "BUFFER_IDS",
]

#: Bus beat: HBM addresses, strides and buffer offsets are multiples of it.
BEAT_BYTES = isa.BUS_BYTES
#: Bytes of one on-chip scratch buffer (the ISA's buffer offsets span it).
BUF_BYTES = 1 << isa.BUF_OFFSET_BITS


def align_up(n: int, a: int = BEAT_BYTES) -> int:
    """Smallest multiple of ``a`` that is ``>= n``."""
    return -(-n // a) * a


@dataclass(frozen=True)
class Geometry:
    """HBM geometry of a board: ``ports`` channels of ``channel_bytes`` each."""

    ports: int
    channel_bytes: int

    def addr(self, port: int, local: int) -> int:
        """Global HBM byte address of ``local`` in channel ``port``."""
        return port * self.channel_bytes + local

    def split(self, addr: int) -> tuple[int, int]:
        """``(channel, local offset)`` of a global address."""
        return divmod(addr, self.channel_bytes)

    @property
    def total_bytes(self) -> int:
        return self.ports * self.channel_bytes


@dataclass(frozen=True)
class StripedStream:
    """A striped stream: ``nbytes`` from channel ``port`` at local ``base`` over ``nports`` channels."""

    port: int
    base: int
    nbytes: int
    nports: int

    @property
    def beats(self) -> int:
        return -(-self.nbytes // BEAT_BYTES)

    @property
    def rows(self) -> int:
        """Beats each channel of the stripe holds (the last row may be partly unused)."""
        return -(-self.beats // self.nports)

    def addr(self, geo: Geometry) -> int:
        return geo.addr(self.port, self.base)

    def channels(self, geo: Geometry) -> list[int]:
        return [(self.port + j) % geo.ports for j in range(self.nports)]


# --------------------------------------------------------------------------------------------
# KV layout descriptor
# --------------------------------------------------------------------------------------------
KV_DESC_MAGIC = int.from_bytes(b"TNPUKVD1", "little")
#: Descriptor words, in memory order (uint64 little endian each).
KV_DESC_FIELDS = ("magic", "layers", "kv_heads", "head_dim", "bits", "group", "residual",
                  "max_pos", "kv_base", "kv_nports", "slot_bytes", "kv_layer_stride", "kg_base",
                  "kg_bytes", "kg_layer_stride", "route_base", "route_bytes", "ring_base", "ring_rows",
                  "ring_bytes", "ring_layer_stride")
KV_DESC_WORDS = len(KV_DESC_FIELDS)
KV_DESC_BYTES = align_up(8 * KV_DESC_WORDS)


def kivi_word_count(group: int, bits: int) -> int:
    """int32 words of one packed KIVI group: ``ceil(group * bits / 32)``."""
    return -(-group * bits // 32)


@dataclass(frozen=True)
class KVLayout:
    """Placement of the KV cache, KIVI key groups and route history (module docstring).

    ``bits`` is 16 for an FP16 cache, else the KIVI code width (2 or 4). Addresses are global HBM
    byte addresses.
    """

    layers: int
    kv_heads: int
    head_dim: int
    bits: int
    group: int
    residual: int
    max_pos: int
    kv_base: int
    kv_nports: int
    slot_bytes: int
    kv_layer_stride: int
    kg_base: int
    kg_bytes: int
    kg_layer_stride: int
    route_base: int
    route_bytes: int
    ring_base: int = 0
    ring_rows: int = 0
    ring_bytes: int = 0
    ring_layer_stride: int = 0
    magic: int = KV_DESC_MAGIC

    # -- sizes (independent of placement) -------------------------------------------------------
    @staticmethod
    def sizes(layers: int, kv_heads: int, head_dim: int, bits: int, group: int) -> dict:
        """Byte sizes: ``fp16_row`` (K+V of all heads, 32-byte aligned), ``slot_bytes``,
        ``vq_head`` (one head's quantized value), ``kg_head`` / ``kg_bytes`` (key-group record),
        ``route_bytes``."""
        fp16_row = align_up(kv_heads * 4 * head_dim)
        out = {"fp16_row": fp16_row, "slot_bytes": fp16_row, "vq_head": 0, "kg_head": 0, "kg_bytes": 0,
               "route_bytes": align_up(-(-2 * layers // 8))}
        if bits != 16:
            nw = kivi_word_count(group, bits)
            ng = head_dim // group
            out["vq_head"] = ng * nw * 4 + 4 * ng
            out["slot_bytes"] = align_up(kv_heads * out["vq_head"])
            out["kg_head"] = head_dim * nw * 4 + 4 * head_dim
            out["kg_bytes"] = align_up(kv_heads * out["kg_head"])
        return out

    @property
    def kivi(self) -> bool:
        return self.bits != 16

    # -- addressing -------------------------------------------------------------------------------
    def _rr(self, geo: Geometry, base: int, layer_stride: int, index: int, layer: int, size: int) -> int:
        port0, local0 = geo.split(base)
        port = (port0 + index % self.kv_nports) % geo.ports
        return geo.addr(port, local0 + layer * layer_stride + (index // self.kv_nports) * size)

    def slot_addr(self, geo: Geometry, layer: int, token: int) -> int:
        """Global address of the slot of ``token`` at ``layer`` (FP16 row, or KIVI quantized value)."""
        return self._rr(geo, self.kv_base, self.kv_layer_stride, token, layer, self.slot_bytes)

    def fp16_row_addr(self, geo: Geometry, layer: int, token: int, row: int) -> int:
        """Address of the FP16 K/V row of ``token`` (cache row ``row``) at ``layer``."""
        if not self.kivi:
            return self.slot_addr(geo, layer, token)
        return self._rr(geo, self.ring_base, self.ring_layer_stride, row % self.ring_rows, layer, self.ring_bytes)

    def kgroup_addr(self, geo: Geometry, layer: int, j: int) -> int:
        """Global address of KIVI key group ``j`` of ``layer``."""
        return self._rr(geo, self.kg_base, self.kg_layer_stride, j, layer, self.kg_bytes)

    def route_addr(self, token: int) -> int:
        return self.route_base + token * self.route_bytes

    def layer_addr(self, layer: int) -> int:
        """Address of token 0's slot at ``layer`` (the ``kv_addr`` operand of KV instructions)."""
        return self.kv_base + layer * self.kv_layer_stride

    def _sizes(self) -> dict:
        return self.sizes(self.layers, self.kv_heads, self.head_dim, self.bits, self.group)

    def row_offsets(self, head: int) -> tuple[int, int]:
        """Offsets of head ``head``'s K and V inside an FP16 row."""
        k = head * 4 * self.head_dim
        return k, k + 2 * self.head_dim

    def vq_offsets(self, head: int) -> dict:
        """Offsets of head ``head``'s codes, scale and min inside a KIVI slot."""
        ng = self.head_dim // self.group
        c = head * self._sizes()["vq_head"]
        codes = ng * kivi_word_count(self.group, self.bits) * 4
        return {"codes": c, "scale": c + codes, "mn": c + codes + 2 * ng}

    def kg_offsets(self, head: int) -> dict:
        """Offsets of head ``head``'s codes, scale and min inside a key-group record."""
        c = head * self._sizes()["kg_head"]
        codes = self.head_dim * kivi_word_count(self.group, self.bits) * 4
        return {"codes": c, "scale": c + codes, "mn": c + codes + 2 * self.head_dim}

    # -- descriptor bytes -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        words = [getattr(self, f) for f in KV_DESC_FIELDS]
        raw = struct.pack(f"<{KV_DESC_WORDS}Q", *words)
        return raw + bytes(KV_DESC_BYTES - len(raw))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "KVLayout":
        """Parse a descriptor; :class:`FormatError` on a bad magic or short buffer."""
        if len(raw) < 8 * KV_DESC_WORDS:
            raise FormatError(f"KV descriptor: expected {8 * KV_DESC_WORDS} bytes, got {len(raw)}")
        words = struct.unpack(f"<{KV_DESC_WORDS}Q", bytes(raw[:8 * KV_DESC_WORDS]))
        values = dict(zip(KV_DESC_FIELDS, words))
        if values["magic"] != KV_DESC_MAGIC:
            raise FormatError(f"KV descriptor: bad magic {values['magic']:#x} (expected {KV_DESC_MAGIC:#x})")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# --------------------------------------------------------------------------------------------
# On-chip buffers used by the generated programs
# --------------------------------------------------------------------------------------------
class Buf:
    """Buffer ids of the program generator (one role each; offsets in :mod:`.program`)."""

    X = 0      #: residual stream x (fp32) and its fp16 copy for routers
    H = 1      #: normalized activations h (fp32), their int8 codes + amax, fp16 copy
    QKV = 2    #: q, k, v (fp32) and their fp16 copies
    ATT = 3    #: attention scores / probabilities, one area per query head
    O = 4      #: attention output (fp32), sub-normed copy, codes, fp16 copy
    FFN = 5    #: gate, up, GLU output and its codes / fp16 copy
    OUT = 6    #: logits (fp32)
    TMP = 7    #: block outputs before the residual add


BUFFER_IDS = tuple(range(isa.NUM_BUFFERS))
