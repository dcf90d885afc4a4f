"""Dequant unit: GPTQ / AWQ INT4 weight streams (and KIVI code words) unpacked in the datapath.

Nothing here multiplies: the PE array folds the zero point out of the inner product
(``sum (q - z) m = sum q m - z sum m``) and applies the FP16 group scale once per (group, output)
in its float reconstruction, so the dequant unit only has to *route* nibbles, attach the group's
zero points and scales, and never writes dequantized weights anywhere (the W4A16 lesson: the cost
is memory traffic, not arithmetic).

Beat geometry (shared with :class:`ternopu.hw.pe_array.PEConfig`)
------------------------------------------------------------------
The PE array consumes one *beat* per cycle: ``rows`` consecutive input rows ``k0 .. k0+rows-1``
times ``lanes`` consecutive output columns ``n0 .. n0+lanes-1``. A projection is swept tile by
tile: for output tile ``n0`` (``lanes`` columns) all ``K / rows`` beats in ascending ``k``, then the
next tile. Groups of ``group`` rows (default 128) span ``group / rows`` consecutive beats.

Input formats (``qw`` stream, one transfer per beat; words are 32-bit, word ``i`` of a transfer in
bits ``[32i, 32i+32)``, nibble ``j`` of a word in bits ``[4j, 4j+4)``, as in :mod:`ternopu.golden.int4`)

* GPTQ (``qweight [K/8, N]`` packed along K): ``rows/8`` qweight rows x ``lanes`` words; word
  ``i*lanes + n`` is ``qweight[k0/8 + i, n0 + n]`` (i.e. ``rows/8`` strided chunks of ``lanes``
  contiguous words). Nibble ``j`` -> ``q[k0 + 8i + j, n0 + n]``. Needs ``rows % 8 == 0``.
* AWQ (``qweight [K, N/8]`` packed along N, interleaved): ``rows`` qweight rows x ``lanes/8`` words;
  word ``r*lanes/8 + b`` is ``qweight[k0 + r, n0/8 + b]``, nibble ``i`` -> column
  ``8b + AWQ_PACK_ORDER[i]``. Needs ``lanes % 8 == 0``.

``meta`` stream, one transfer per (tile, group), in tile/group order: ``lanes/8`` qzeros words
(``qzeros[g, n0/8 + b]``, GPTQ nibble order or AWQ interleave like the weights) followed by
``lanes`` FP16 scales (``scales[g, n0 + n]`` in bits ``[32*lanes/8 + 16n, ...)``).
GPTQ legacy checkpoints (``legacy_zero_offset``) store ``z - 1``: the unit adds 1 (4-bit wrap;
stored 15 is outside the contract, the golden loader rejects it).

Output ``o``: ``q[r][n]`` (unsigned 4-bit code of row ``k0+r``, column ``n0+n``), ``z[n]`` and
``s[n]`` (FP16 bits) of the beat's group. Latency :data:`DEQUANT_LATENCY` = 0 (pure routing; the
join of ``qw`` and ``meta`` is a handshake: a group's meta transfer is held in a register for the
group's beats and the next one is accepted while the last beat of a group leaves).

KIVI code words (:class:`KiviCodeUnpack`): ``bits`` in {2, 4, 8} codes LSB-first in 32-bit words
(:func:`ternopu.golden.kivi.pack_lsb_first`), ``words`` words per transfer -> ``32*words/bits``
codes, code ``j`` at bits ``[bits*j, bits*j + bits)`` of the transfer. Again pure routing.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError
from ternopu.golden.int4 import AWQ_PACK_ORDER, INT4_BITS, NIBBLES_PER_WORD

__all__ = [
    "DEQUANT_LATENCY",
    "WORD_BITS",
    "FP16_BITS",
    "INT4_FORMATS",
    "Int4Dequant",
    "KiviCodeUnpack",
    "weight_beat_bits",
    "meta_bits",
]

DEQUANT_LATENCY = 0
"""Cycles from a ``qw`` transfer to its output beat (routing only)."""
WORD_BITS = 32
"""Packed word width of every checkpoint format."""
FP16_BITS = 16
"""Width of one FP16 scale."""
INT4_FORMATS = ("gptq", "awq")
"""Supported INT4 checkpoint layouts."""


def weight_beat_bits(rows: int, lanes: int) -> int:
    """Bits of one ``qw`` transfer: ``rows * lanes`` 4-bit codes (both layouts)."""
    return rows * lanes * INT4_BITS


def meta_bits(lanes: int) -> int:
    """Bits of one ``meta`` transfer: ``lanes`` zero nibbles + ``lanes`` FP16 scales."""
    return lanes * INT4_BITS + lanes * FP16_BITS


class Int4Dequant(wiring.Component):
    """GPTQ / AWQ INT4 stream unpacker with per-group zero and scale attached to every beat.

    Parameters
    ----------
    rows, lanes : int
        Beat geometry (see module docstring).
    group : int
        Rows per quantization group; ``group % rows == 0``.
    fmt : "gptq" or "awq"
    legacy_zero_offset : bool
        GPTQ checkpoints that store ``z - 1``.

    Ports
    -----
    qw : In(stream.Signature(unsigned(rows * lanes * 4)))
    meta : In(stream.Signature(unsigned(lanes * 20)))
    o : Out(stream.Signature(out_layout)) with ``q`` [rows][lanes] 4-bit, ``z`` [lanes] 4-bit,
        ``s`` [lanes] 16-bit.

    Raises
    ------
    ConfigError
        Geometry the layout cannot serve (message names the parameter).
    """

    def __init__(self, rows: int, lanes: int, group: int = 128, fmt: str = "gptq",
                 legacy_zero_offset: bool = False):
        for name, v in (("rows", rows), ("lanes", lanes), ("group", group)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"Int4Dequant.{name}: expected a positive int, got {v!r}")
        if fmt not in INT4_FORMATS:
            raise ConfigError(f"Int4Dequant.fmt: expected one of {INT4_FORMATS}, got {fmt!r}")
        if fmt == "gptq" and rows % NIBBLES_PER_WORD:
            raise ConfigError(f"Int4Dequant: GPTQ packs 8 rows per word, rows must be a multiple of 8, got {rows}")
        if lanes % NIBBLES_PER_WORD:
            raise ConfigError(f"Int4Dequant: qzeros pack 8 columns per word, lanes must be a multiple of 8, got {lanes}")
        if group % rows:
            raise ConfigError(f"Int4Dequant: rows {rows} must divide the group {group}")
        if legacy_zero_offset and fmt != "gptq":
            raise ConfigError("Int4Dequant: legacy_zero_offset exists only for GPTQ checkpoints")
        self.rows, self.lanes, self.group, self.fmt = rows, lanes, group, fmt
        self.legacy_zero_offset = legacy_zero_offset
        self.beats_per_group = group // rows
        self.out_layout = data.StructLayout({
            "q": data.ArrayLayout(data.ArrayLayout(unsigned(INT4_BITS), lanes), rows),
            "z": data.ArrayLayout(unsigned(INT4_BITS), lanes),
            "s": data.ArrayLayout(unsigned(FP16_BITS), lanes),
        })
        super().__init__({
            "qw": In(stream.Signature(unsigned(weight_beat_bits(rows, lanes)))),
            "meta": In(stream.Signature(unsigned(meta_bits(lanes)))),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def nibble_source(self, r: int, n: int) -> int:
        """Bit offset in a ``qw`` transfer of the code for beat row ``r``, lane ``n``."""
        if self.fmt == "gptq":
            word = (r // NIBBLES_PER_WORD) * self.lanes + n
            nib = r % NIBBLES_PER_WORD
        else:
            word = r * (self.lanes // NIBBLES_PER_WORD) + n // NIBBLES_PER_WORD
            nib = AWQ_PACK_ORDER.index(n % NIBBLES_PER_WORD)
        return WORD_BITS * word + INT4_BITS * nib

    def zero_source(self, n: int) -> int:
        """Bit offset in a ``meta`` transfer of the zero nibble of lane ``n``."""
        b, c = divmod(n, NIBBLES_PER_WORD)
        nib = c if self.fmt == "gptq" else AWQ_PACK_ORDER.index(c)
        return WORD_BITS * b + INT4_BITS * nib

    def elaborate(self, platform):
        m = Module()
        lanes, rows = self.lanes, self.rows
        meta_reg = Signal(meta_bits(lanes))
        meta_full = Signal()
        beat = Signal(range(max(2, self.beats_per_group)))
        last = beat == self.beats_per_group - 1
        take = self.o.valid & self.o.ready
        m.d.comb += [
            self.o.valid.eq(self.qw.valid & meta_full),
            self.qw.ready.eq(self.o.ready & meta_full),
            self.meta.ready.eq(~meta_full | (take & last)),
        ]
        with m.If(take):
            m.d.sync += beat.eq(0 if self.beats_per_group == 1 else (beat + 1))
            with m.If(last):
                m.d.sync += [beat.eq(0), meta_full.eq(0)]
        with m.If(self.meta.valid & self.meta.ready):
            m.d.sync += [meta_reg.eq(self.meta.payload), meta_full.eq(1)]
        qw = self.qw.payload
        for r in range(rows):
            for n in range(lanes):
                off = self.nibble_source(r, n)
                m.d.comb += self.o.payload.q[r][n].eq(qw[off:off + INT4_BITS])
        s_base = lanes * INT4_BITS
        for n in range(lanes):
            off = self.zero_source(n)
            z = meta_reg[off:off + INT4_BITS]
            m.d.comb += [
                self.o.payload.z[n].eq(z + 1 if self.legacy_zero_offset else z),
                self.o.payload.s[n].eq(meta_reg[s_base + FP16_BITS * n:s_base + FP16_BITS * (n + 1)]),
            ]
        return m


class KiviCodeUnpack(wiring.Component):
    """KIVI code words (LSB-first, ``bits`` in {2, 4, 8}) to an array of codes, pure routing.

    Ports
    -----
    i : In(stream.Signature(unsigned(32 * words)))
    o : Out(stream.Signature(ArrayLayout(unsigned(bits), 32 * words // bits)))
        ``o.payload[j]`` = code ``j`` = bits ``[bits*j, bits*(j+1))`` of the transfer (golden
        :func:`ternopu.golden.kivi.unpack_lsb_first` of the words). Latency 0.
    """

    def __init__(self, bits: int, words: int):
        if bits not in (2, 4, 8):
            raise ConfigError(f"KiviCodeUnpack.bits: expected 2, 4 or 8, got {bits!r}")
        if isinstance(words, bool) or not isinstance(words, int) or words < 1:
            raise ConfigError(f"KiviCodeUnpack.words: expected a positive int, got {words!r}")
        self.bits, self.words = bits, words
        self.n_codes = WORD_BITS * words // bits
        super().__init__({
            "i": In(stream.Signature(unsigned(WORD_BITS * words))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(bits), self.n_codes))),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready),
            self.o.payload.as_value().eq(self.i.payload),
        ]
        return m
