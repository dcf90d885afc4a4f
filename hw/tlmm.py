"""TLMM: the ternary table-lookup matrix-vector engine (BitNet b1.58 projections).

What it computes
----------------
For one token and one ternary weight matrix (``N`` outputs x ``K`` inputs, stored as 5-bit keys,
one per group of 3 weights, see :mod:`ternopu.golden.tlmm`) the engine produces, bit for bit::

    acc[n] = tlmm_matvec(keys, xq)[n]                       (exact integer, acc_width bits)
    y[n]   = rescale(acc, out_scale)[n] = float32(acc[n]) * out_scale     (binary32, RNE)

with ``out_scale`` the golden ``ternopu.golden.bitnet.out_scale(amax, gamma)`` of that token and
tensor (per-tensor weight scale and per-token activation scale folded into one binary32 number by
the compiler / the NPE; the engine applies it once per output).

Block diagram (one beat = ``lanes`` rows x ``tables`` groups per cycle)::

    cmd ──► control FSM (IDLE ─► LOAD ─► RUN) ── row/group tile counters r, c, drain credits
                 │
    act ──► activation buffer (Memory: group tile c = 3*tables INT8 per word)
                 │ read word c when beat (r, c) is accepted                       [stage 1]
                 ▼
            TableBuilder: tables x 14 entries (2 shared sub-sums + 8 adds each)   [stage 2]
                 │ broadcast to every lane
    keys ─► beat register ─► register ─┐                                          [stages 1, 2]
                                       ▼
            Lane x lanes: tables x (16:1 select + conditional negate)             [stage 3]
                          pipelined adder tree over the tables                    [tree stages]
                          accumulator (first/last of the row tile)                [acc stage]
                 │ row tile done: all lanes at once
                 ▼
            drain: hold bank ─► shift bank (out_lanes values per cycle)
                 ▼
            IntToFloat32 x out_lanes (2) ─► Float32Mul x out_lanes (3) ──► out

Table building is a pipelined stage that runs in lock step with the keys: the tables for beat
(r, c) are built from activation word c while the beat's keys wait two register stages, so every
beat finds its tables ready and the key stream never waits for them (no bubbles; the price is two
registers of ``beat_bits`` for the keys).

Streams and protocol (all ``amaranth.lib.stream``, all honour backpressure)
--------------------------------------------------------------------------
* ``cmd``: ``{row_tiles, group_tiles, out_scale (binary32 bits), load_act}`` per projection; see
  :meth:`TLMMConfig.command`. ``row_tiles = ceil(N / lanes)``, ``group_tiles = ceil(ceil(K/3) /
  tables)``. A command with a tile count of 0 or above the configured maximum is dropped and sets
  the sticky ``error`` output.
* ``act``: if ``load_act``, ``group_tiles`` transfers follow the command, transfer ``c`` holding
  ``xq[3*c*tables : 3*(c+1)*tables]`` (element ``j`` in lane ``j`` of the array). Positions past
  ``K`` may hold anything: they only ever meet zero weight digits (keys are zero-padded), so they
  never contribute. With ``load_act = 0`` the previous activations are reused (q/k/v or gate/up
  projections of the same token stream back to back).
* ``keys``: ``row_tiles * group_tiles`` beats of ``beat_bits`` in the golden
  :func:`ternopu.golden.tlmm.pack_keys` order and layout (beat = one little-endian integer).
* ``out``: ``row_tiles * lanes / out_lanes`` transfers per projection, in row order; transfer ``j``
  carries rows ``j*out_lanes .. j*out_lanes + out_lanes - 1`` as binary32 bit patterns ``y`` and the
  exact integer accumulators ``acc``; ``last`` marks the final transfer of the projection. Rows at
  or past ``N`` (row padding) come out as acc 0, y +0.0; the driver drops them.

Backpressure
------------
The key/table/lane pipeline never stalls once a beat is accepted: the key stream is throttled at
its entry only. A beat that completes a row tile is accepted only while a drain bank credit is free
(two banks: hold + shift), so the results always find room. ``out`` backpressure stalls only the
output converter; it reaches the key stream only once both drain banks are full. Without output
stalls the key stream runs at one beat per cycle as long as a row tile takes at least as many
beats as one drain (``group_tiles >= lanes / out_lanes``, about, since two banks overlap).

Default configuration (U280, design clock 300 MHz), see :data:`DEFAULT_CONFIG` and docs/tlmm.md
------------------------------------------------------------------------------------------------
HBM: 32 pseudo-channels x 256 bit at 450 MHz = 460.8 GB/s. Per 300 MHz cycle that is
32 * 256 * 450 / 300 = 12288 bits = 48 AXI words of 256 bit -> ``beat_bits = 12288``, i.e. at most
floor(12288 / 5) = 2457 keys per cycle. ``tables = 19`` x ``lanes = 128`` = 2432 keys = 12160 bits
(98.96 % of the beat; 456 GB/s of keys at 300 MHz). 128 lanes divide every BitNet 2B4T output
dimension (2560, 640, 6912) and 19 tables waste <= 0.6 % of a group tile for K = 2560 / 6912.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.errors import ConfigError
from ternopu.golden.tlmm import (
    ENTRY_BITS,
    GROUP,
    IDX_BITS,
    KEY_BITS,
    MAX_IDX,
    SIGN_SHIFT,
    TABLE_ENTRIES,
    acc_bits,
    acc_bound,
    beat_grid,
    num_groups,
)

from .fp32 import F32_BITS, Float32Mul, IntToFloat32

__all__ = [
    "ACT_BITS",
    "TREE_LEVELS_PER_STAGE",
    "DRAIN_BANKS",
    "HBM_BITS_PER_CLOCK",
    "TLMMConfig",
    "DEFAULT_CONFIG",
    "SMALL_CONFIG",
    "TableBuilder",
    "Lane",
    "TLMM",
    "flatten_tables",
    "table_bits_value",
    "tree_stages",
]

ACT_BITS = 8
"""Activation width (INT8, two's complement)."""
TREE_LEVELS_PER_STAGE = 2
"""Adder-tree levels between pipeline registers in a lane (2 x ~15-bit adds per cycle)."""
DRAIN_BANKS = 2
"""Row-tile result banks between the lanes and the output converter (hold + shift)."""
HBM_BYTES_PER_SECOND = 32 * 256 // 8 * 450e6
"""U280 HBM peak: 32 pseudo-channels x 256-bit AXI ports at 450 MHz = 460.8 GB/s."""
HBM_BITS_PER_CLOCK = {300e6: 12288}
"""HBM bits per design-clock cycle for the clocks we model (32 * 256 * 450 / 300 at 300 MHz)."""
TABLE_SLOTS = 1 << IDX_BITS
"""Slots per table word seen by the lanes: 14 entries + 2 zero slots (idx 14, 15)."""
TABLE_WORD_BITS = TABLE_SLOTS * ENTRY_BITS
"""Bits of one table word on the lanes' broadcast bus (160)."""
F32_MAX_EXACT_INT_BITS = 25
"""``float32(acc)`` is exact for ``|acc| <= 2**24``; acc widths above 25 bits are refused."""


def tree_stages(n_inputs: int) -> int:
    """Register stages of a pipelined binary adder tree summing ``n_inputs`` values.

    ``ceil(log2(n))`` levels, a register after every :data:`TREE_LEVELS_PER_STAGE` levels and after
    the last level; 0 for a single input (no adder).
    """
    levels = math.ceil(math.log2(n_inputs)) if n_inputs > 1 else 0
    return -(-levels // TREE_LEVELS_PER_STAGE)


def _bits_for(value: int) -> int:
    """Unsigned width that holds ``0 .. value``."""
    return max(1, int(value).bit_length())


@dataclass(frozen=True)
class TLMMConfig:
    """Geometry of a TLMM engine and the constants software reads from it.

    Parameters
    ----------
    tables : int
        Activation groups (tables) per beat, ``>= 1``.
    lanes : int
        Output rows per beat (each table is shared by all lanes), ``>= 1``.
    beat_bits : int
        Key-stream width; multiple of 8, ``>= 5 * tables * lanes``.
    max_k : int
        Largest input dimension; sets the accumulator width (:func:`ternopu.golden.tlmm.acc_bits`)
        and the activation buffer depth. ``acc_bound(max_k) <= 2**24`` so ``float32(acc)`` is
        exact.
    max_n : int
        Largest output dimension; sets the row-tile counter width.
    out_lanes : int
        Outputs per ``out`` transfer; divides ``lanes``.
    clock_hz : float
        Design clock used for the modelled figures (the RTL itself has no notion of time).

    Raises
    ------
    ConfigError
        Any parameter out of range (message names it, expected and found).
    """

    tables: int = 19
    lanes: int = 128
    beat_bits: int = 12288
    max_k: int = 16384
    max_n: int = 65536
    out_lanes: int = 8
    clock_hz: float = 300e6

    def __post_init__(self):
        for name in ("tables", "lanes", "beat_bits", "max_k", "max_n", "out_lanes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TLMMConfig.{name}: expected a positive int, got {v!r}")
        need = KEY_BITS * self.tables * self.lanes
        if self.beat_bits % 8 or self.beat_bits < need:
            raise ConfigError(
                f"TLMMConfig.beat_bits: expected a multiple of 8 >= 5*tables*lanes = {need}, "
                f"got {self.beat_bits}")
        if self.lanes % self.out_lanes:
            raise ConfigError(
                f"TLMMConfig.out_lanes: must divide lanes={self.lanes}, got {self.out_lanes}")
        if acc_bits(self.max_k) > F32_MAX_EXACT_INT_BITS:
            raise ConfigError(
                f"TLMMConfig.max_k: accumulators must fit {F32_MAX_EXACT_INT_BITS} bits so "
                f"float32(acc) is exact (max_k <= 131070), got max_k={self.max_k} -> "
                f"{acc_bits(self.max_k)} bits")
        if not self.clock_hz > 0:
            raise ConfigError(f"TLMMConfig.clock_hz: expected > 0, got {self.clock_hz!r}")

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def keys_per_cycle(self) -> int:
        """Keys consumed per beat (= per cycle at full rate): ``tables * lanes``."""
        return self.tables * self.lanes

    @property
    def weights_per_cycle(self) -> int:
        """Ternary weights consumed per beat: ``3 * tables * lanes``."""
        return GROUP * self.keys_per_cycle

    @property
    def key_bits_used(self) -> int:
        """Beat bits that carry keys: ``5 * tables * lanes``."""
        return KEY_BITS * self.keys_per_cycle

    @property
    def beat_efficiency(self) -> float:
        """Fraction of the beat that carries keys."""
        return self.key_bits_used / self.beat_bits

    @property
    def acc_width(self) -> int:
        """Signed accumulator width, :func:`ternopu.golden.tlmm.acc_bits` of ``max_k``."""
        return acc_bits(self.max_k)

    @property
    def acc_bound(self) -> int:
        """Largest ``|acc|`` for any ``K <= max_k``: ``384 * ceil(max_k / 3)``."""
        return acc_bound(self.max_k)

    @property
    def act_lanes(self) -> int:
        """INT8 activations per ``act`` transfer / activation-buffer word: ``3 * tables``."""
        return GROUP * self.tables

    @property
    def max_group_tiles(self) -> int:
        """Group tiles of the largest ``K`` (= activation buffer depth)."""
        return -(-num_groups(self.max_k) // self.tables)

    @property
    def max_row_tiles(self) -> int:
        """Row tiles of the largest ``N``."""
        return -(-self.max_n // self.lanes)

    @property
    def drain_cycles(self) -> int:
        """Cycles the converter needs to emit one row tile: ``lanes / out_lanes``."""
        return self.lanes // self.out_lanes

    # ---- pipeline constants -----------------------------------------------------------------
    @property
    def table_latency(self) -> int:
        """Cycles from beat acceptance to its tables being ready: buffer read 1 + builder 1."""
        return 1 + TableBuilder.LATENCY

    @property
    def lane_latency(self) -> int:
        """Lane pipeline: lookup register, adder tree stages, accumulator register."""
        return Lane.latency_for(self.tables)

    @property
    def result_latency(self) -> int:
        """Cycles from accepting the last beat of a row tile to its first ``out`` word being valid.

        table_latency + lane_latency + hold bank 1 + shift bank 1 + IntToFloat32 + Float32Mul.
        """
        return (self.table_latency + self.lane_latency + DRAIN_BANKS
                + IntToFloat32.LATENCY + Float32Mul.LATENCY)

    # ---- software helpers -------------------------------------------------------------------
    def tiles(self, n: int, k: int) -> tuple[int, int]:
        """``(row_tiles, group_tiles)`` of an ``N x K`` projection (the golden ``beat_grid``)."""
        return beat_grid(n, num_groups(k), self.tables, self.lanes)

    def check_shape(self, n: int, k: int) -> None:
        """Raise :class:`ConfigError` if an ``N x K`` projection exceeds ``max_n`` / ``max_k``."""
        if not 1 <= k <= self.max_k or not 1 <= n <= self.max_n:
            raise ConfigError(
                f"projection N={n} x K={k} exceeds the engine (1 <= N <= {self.max_n}, "
                f"1 <= K <= {self.max_k})")

    def command(self, n: int, k: int, out_scale_bits: int, load_act: bool = True) -> dict:
        """Payload of the ``cmd`` stream for an ``N x K`` projection.

        Parameters
        ----------
        n, k : int
            Projection shape.
        out_scale_bits : int
            binary32 bit pattern of the golden ``out_scale`` for this token and tensor.
        load_act : bool
            Whether ``group_tiles`` activation transfers follow (else the buffer is reused).
        """
        self.check_shape(n, k)
        if not 0 <= out_scale_bits < (1 << F32_BITS):
            raise ConfigError(f"out_scale_bits: expected a 32-bit pattern, got {out_scale_bits!r}")
        rt, ct = self.tiles(n, k)
        return {"row_tiles": rt, "group_tiles": ct, "out_scale": out_scale_bits,
                "load_act": int(bool(load_act))}

    def ideal_cycles(self, n: int, k: int) -> int:
        """Beats of an ``N x K`` projection = cycles at one beat per cycle."""
        rt, ct = self.tiles(n, k)
        return rt * ct

    def out_transfers(self, n: int, k: int) -> int:
        """``out`` transfers of an ``N x K`` projection (padding rows included)."""
        return self.tiles(n, k)[0] * self.drain_cycles

    def hbm_bytes(self, n: int, k: int) -> int:
        """Key bytes the engine reads for an ``N x K`` projection (whole beats, padding included)."""
        return self.ideal_cycles(n, k) * self.beat_bits // 8

    # ---- layouts ----------------------------------------------------------------------------
    def cmd_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "row_tiles": unsigned(_bits_for(self.max_row_tiles)),
            "group_tiles": unsigned(_bits_for(self.max_group_tiles)),
            "out_scale": unsigned(F32_BITS),
            "load_act": unsigned(1),
        })

    def act_layout(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(ACT_BITS), self.act_lanes)

    def out_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "y": data.ArrayLayout(unsigned(F32_BITS), self.out_lanes),
            "acc": data.ArrayLayout(signed(self.acc_width), self.out_lanes),
            "last": unsigned(1),
        })


DEFAULT_CONFIG = TLMMConfig()
"""U280 at 300 MHz: 19 tables x 128 lanes = 2432 keys/cycle from a 12288-bit (48 x 256) beat."""
SMALL_CONFIG = TLMMConfig(tables=2, lanes=4, beat_bits=40, max_k=256, max_n=256, out_lanes=2)
"""A small engine for fast tests (2 tables x 4 lanes)."""


def flatten_tables(entries) -> "Value":
    """Table words for :class:`Lane` from a :class:`TableBuilder` ``entries`` view (HDL value)."""
    words = []
    for t in range(len(entries)):
        words += [entries[t][j] for j in range(TABLE_ENTRIES)]
        words += [Const(0, ENTRY_BITS)] * (TABLE_SLOTS - TABLE_ENTRIES)
    return Cat(*words)


def table_bits_value(tables) -> int:
    """Integer value of the lanes' table bus for golden tables ``[tables][14]`` (tests, models)."""
    value = 0
    mask = (1 << ENTRY_BITS) - 1
    for t, row in enumerate(tables):
        if len(row) != TABLE_ENTRIES:
            raise ValueError(f"table {t}: expected {TABLE_ENTRIES} entries, got {len(row)}")
        for j, e in enumerate(row):
            value |= (int(e) & mask) << (TABLE_WORD_BITS * t + ENTRY_BITS * j)
    return value


def _entries_layout(tables: int) -> data.ArrayLayout:
    return data.ArrayLayout(data.ArrayLayout(signed(ENTRY_BITS), TABLE_ENTRIES), tables)


class TableBuilder(wiring.Component):
    """Build the 14-entry pattern-sum table of ``tables`` activation groups, one stage.

    Per group ``(a0, a1, a2)`` (INT8) the entries of :func:`ternopu.golden.tlmm.build_tables` use
    the balanced-ternary structure ``T[9 + j] = a0 + T[j]``, ``T[9 - j] = a0 - T[j]`` (j = 0..4) on
    top of the small table ``T[0..4] = 0, a2, a1 - a2, a1, a1 + a2``: 2 shared sub-sums plus
    8 adds/subtracts per table (10 adders instead of the 26 of a direct 3-term evaluation).
    Entries are exact in :data:`ternopu.golden.tlmm.ENTRY_BITS` = 10 bits signed (|T| <= 384).

    Ports
    -----
    act : In(ArrayLayout(signed(8), 3 * tables))
        Activations of the groups, group ``t`` at elements ``3t, 3t+1, 3t+2`` (a0 at the lowest).
    i_valid : In(1)
    entries : Out(ArrayLayout(ArrayLayout(signed(10), 14), tables))
        Registered tables.
    o_valid : Out(1)

    Timing
    ------
    ``LATENCY`` = 1 (two adder levels, then a register); a new set of tables every cycle.
    """

    LATENCY = 1

    def __init__(self, tables: int):
        if not isinstance(tables, int) or tables < 1:
            raise ValueError(f"tables must be a positive int, got {tables!r}")
        self.tables = tables
        super().__init__({
            "act": In(data.ArrayLayout(signed(ACT_BITS), GROUP * tables)),
            "i_valid": In(1),
            "entries": Out(_entries_layout(tables)),
            "o_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        for t in range(self.tables):
            a0, a1, a2 = (self.act[GROUP * t + j] for j in range(GROUP))
            low = [Const(0, signed(ENTRY_BITS)), a2, a1 - a2, a1, a1 + a2]  # T[0..4]
            entry = self.entries[t]
            for j in range(5):
                m.d.sync += entry[j].eq(low[j])
                m.d.sync += entry[9 + j].eq(a0 + low[j])
                if j:
                    m.d.sync += entry[9 - j].eq(a0 - low[j])
        m.d.sync += self.o_valid.eq(self.i_valid)
        return m


class Lane(wiring.Component):
    """One output lane: ``tables`` key lookups per cycle, adder tree, row accumulator.

    Each cycle the lane takes one key per table (``keys`` bits ``[5t, 5t+5)`` for table ``t``:
    bits 3..0 the index, bit 4 the sign, as in :mod:`ternopu.golden.tlmm`), selects entry ``idx``
    (one indexed part-select of the table word; indices 14 and 15 do not exist and read as 0), negates it if the sign is set, sums the
    ``tables`` contributions in a pipelined binary adder tree and accumulates: the beat flagged
    ``first`` starts a new row total, the beat flagged ``last`` delivers it on ``result``.

    Parameters
    ----------
    tables : int
        Keys per cycle.
    acc_width : int
        Signed accumulator width (from :func:`ternopu.golden.tlmm.acc_bits`); the caller
        guarantees the row total fits (two's-complement wrap otherwise, never reached).

    Ports
    -----
    table_bits : In(unsigned(160 * tables))
        Table ``t`` in bits ``[160t, 160t + 160)``: 16 slots of 10-bit signed entries, slot ``j`` at
        bits ``10j`` (entries 0..13 of :func:`ternopu.golden.tlmm.build_tables`, slots 14 and 15
        zero); see :func:`flatten_tables` / :func:`table_bits_value`.
    keys : In(unsigned(5 * tables))
    valid, first, last : In(1)
    result : Out(signed(acc_width))
        Row total, held until the next one.
    result_valid : Out(1)
        One-cycle pulse when ``result`` is new (only with ``with_result_valid``: lanes that run
        in lockstep share one, so the others leave it out).

    Timing
    ------
    ``latency_for(tables)`` = 1 (lookup) + :func:`tree_stages` + 1 (accumulator) cycles from a
    ``last`` beat to ``result_valid``; one beat per cycle, no stalls.
    """

    def __init__(self, tables: int, acc_width: int, *, with_result_valid: bool = True):
        if not isinstance(tables, int) or tables < 1:
            raise ValueError(f"tables must be a positive int, got {tables!r}")
        min_width = ENTRY_BITS + max(0, math.ceil(math.log2(tables)))
        if not isinstance(acc_width, int) or acc_width < min_width:
            raise ValueError(
                f"acc_width must be an int >= {min_width} (one beat's sum), got {acc_width!r}")
        self.tables = tables
        self.acc_width = acc_width
        sig = {
            "table_bits": In(unsigned(TABLE_WORD_BITS * tables)),
            "keys": In(unsigned(KEY_BITS * tables)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "result": Out(signed(acc_width)),
        }
        if with_result_valid:
            sig["result_valid"] = Out(1)
        super().__init__(sig)

    @staticmethod
    def latency_for(tables: int) -> int:
        """Cycles from a beat at the lane inputs to ``result`` for that beat."""
        return 1 + tree_stages(tables) + 1

    @property
    def latency(self) -> int:
        return self.latency_for(self.tables)

    def elaborate(self, platform):
        m = Module()
        # ---- lookup + conditional negate, registered ---------------------------------------
        level = []
        for t in range(self.tables):
            key = self.keys[KEY_BITS * t:KEY_BITS * (t + 1)]
            idx, sign = key[:IDX_BITS], key[SIGN_SHIFT]
            word = self.table_bits[TABLE_WORD_BITS * t:TABLE_WORD_BITS * (t + 1)]
            # 16-way select as one indexed part-select (slots 14 and 15 hold 0).
            entry = Signal(signed(ENTRY_BITS), name=f"entry{t}")
            m.d.comb += entry.eq(word.word_select(idx, ENTRY_BITS))
            contrib = Signal(signed(ENTRY_BITS), name=f"contrib{t}")
            m.d.sync += contrib.eq(Mux(sign, -entry, entry))
            level.append(contrib)
        valid, first, last = Signal(), Signal(), Signal()
        m.d.sync += [valid.eq(self.valid), first.eq(self.first), last.eq(self.last)]

        # ---- pipelined adder tree ----------------------------------------------------------
        depth = 0
        width = ENTRY_BITS
        while len(level) > 1:
            width += 1
            nxt = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            depth += 1
            if depth % TREE_LEVELS_PER_STAGE == 0 or len(nxt) == 1:
                regs = []
                for i, v in enumerate(nxt):
                    r = Signal(signed(width), name=f"tree{depth}_{i}")
                    m.d.sync += r.eq(v)
                    regs.append(r)
                nxt = regs
                dv, df, dl = Signal(), Signal(), Signal()
                m.d.sync += [dv.eq(valid), df.eq(first), dl.eq(last)]
                valid, first, last = dv, df, dl
            level = nxt
        beat_sum = level[0]

        # ---- accumulator -------------------------------------------------------------------
        acc = Signal(signed(self.acc_width))
        total = Signal(signed(self.acc_width))
        m.d.comb += total.eq(Mux(first, 0, acc) + beat_sum)
        with m.If(valid):
            m.d.sync += acc.eq(total)
        with m.If(valid & last):
            m.d.sync += self.result.eq(total)
        if "result_valid" in self.signature.members:
            m.d.sync += self.result_valid.eq(valid & last)
        return m


class TLMM(wiring.Component):
    """The TLMM engine: INT8 activations x 5-bit ternary keys -> binary32 outputs.

    Parameters
    ----------
    config : TLMMConfig
        Geometry; :data:`DEFAULT_CONFIG` is the U280 engine (19 tables x 128 lanes, 12288-bit
        beat, 2432 keys/cycle at 300 MHz).

    Ports
    -----
    cmd : In(stream.Signature(config.cmd_layout()))
    act : In(stream.Signature(config.act_layout()))
    keys : In(stream.Signature(unsigned(config.beat_bits)))
    out : Out(stream.Signature(config.out_layout()))
    error : Out(1)
        Sticky: a command had a tile count of 0 or above the maximum (it was dropped).

    Numerics
    --------
    Integer accumulators of ``config.acc_width`` bits (exact: ``|acc| <= 384 * ceil(max_k/3)``),
    ``float32(acc)`` exact (``acc_width <= 25``), one binary32 RNE multiply by ``out_scale`` per
    output (:class:`ternopu.hw.fp32.Float32Mul` policy) -- equal bit for bit to the golden
    ``rescale(tlmm_matvec(keys, xq), out_scale)``.

    Timing (constants on ``config``)
    --------------------------------
    Throughput: one beat = ``keys_per_cycle`` keys per cycle while the key stream is valid and the
    output is not back-pressured beyond the two drain banks. A projection takes
    ``row_tiles * group_tiles`` cycles of key beats (+ ``group_tiles`` activation transfers if it
    loads activations), and its last output appears ``result_latency + drain_cycles - 1`` cycles
    after its last beat.
    """

    def __init__(self, config: TLMMConfig = DEFAULT_CONFIG):
        if not isinstance(config, TLMMConfig):
            raise ValueError(f"config must be a TLMMConfig, got {type(config).__name__}")
        self.config = config
        super().__init__(self.ports_of(config))

    @staticmethod
    def ports_of(config: TLMMConfig) -> dict:
        """The engine's signature members (also re-exported by wrappers)."""
        return {
            "cmd": In(stream.Signature(config.cmd_layout())),
            "act": In(stream.Signature(config.act_layout())),
            "keys": In(stream.Signature(unsigned(config.beat_bits))),
            "out": Out(stream.Signature(config.out_layout())),
            "error": Out(1),
        }

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        T, L, O = cfg.tables, cfg.lanes, cfg.out_lanes
        acc_w = cfg.acc_width

        # ---- activation buffer -------------------------------------------------------------
        m.submodules.act_buf = act_buf = Memory(
            shape=cfg.act_layout(), depth=cfg.max_group_tiles, init=[])
        wr = act_buf.write_port()
        rd = act_buf.read_port()  # synchronous, not transparent: stage-1 data

        # ---- control -----------------------------------------------------------------------
        row_tiles = Signal.like(self.cmd.payload.row_tiles)
        group_tiles = Signal.like(self.cmd.payload.group_tiles)
        scale = Signal(unsigned(F32_BITS))
        r = Signal.like(row_tiles)
        c = Signal.like(group_tiles)
        credits = Signal(range(DRAIN_BANKS + 1), init=DRAIN_BANKS)
        release = Signal()  # a drain bank becomes free this cycle (set by the drain below)

        accept = Signal()
        last_c = Signal()
        m.d.comb += last_c.eq(c == group_tiles - 1)

        job_end = Signal()  # the final beat of the projection is accepted this cycle
        m.d.comb += job_end.eq(accept & last_c & (r == row_tiles - 1))

        def take_command():
            """Accept a command (in IDLE, or together with the previous job's final beat)."""
            m.d.comb += self.cmd.ready.eq(1)
            p = self.cmd.payload
            with m.If(self.cmd.valid):
                bad = ((p.row_tiles == 0) | (p.row_tiles > cfg.max_row_tiles)
                       | (p.group_tiles == 0) | (p.group_tiles > cfg.max_group_tiles))
                with m.If(bad):
                    m.d.sync += self.error.eq(1)
                with m.Else():
                    m.d.sync += [row_tiles.eq(p.row_tiles), group_tiles.eq(p.group_tiles),
                                 scale.eq(p.out_scale), r.eq(0), c.eq(0)]
                    with m.If(p.load_act):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "RUN"

        with m.FSM():
            with m.State("IDLE"):
                take_command()
            with m.State("LOAD"):
                m.d.comb += [self.act.ready.eq(1), wr.addr.eq(c), wr.data.eq(self.act.payload),
                             wr.en.eq(self.act.valid)]
                with m.If(self.act.valid):
                    m.d.sync += c.eq(c + 1)
                    with m.If(last_c):
                        m.d.sync += c.eq(0)
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [# A row tile's last beat needs a free drain bank.
                             self.keys.ready.eq(~last_c | (credits != 0)),
                             accept.eq(self.keys.valid & self.keys.ready)]
                with m.If(accept):
                    m.d.sync += c.eq(c + 1)
                    with m.If(last_c):
                        m.d.sync += [c.eq(0), r.eq(r + 1)]
                with m.If(job_end):
                    m.next = "IDLE"
                    # Back-to-back projections: the next command is taken with the final beat,
                    # so a projection that reuses the activations starts on the very next cycle.
                    take_command()

        take = accept & last_c
        m.d.sync += credits.eq(credits - take + release)

        # ---- stage 1: beat register, activation read ---------------------------------------
        m.d.comb += rd.addr.eq(c)
        # only the key bits are registered: the beat's padding above them is never read
        k1 = Signal(unsigned(cfg.key_bits_used))
        v1, first1, last1, job1 = Signal(), Signal(), Signal(), Signal()
        scale1 = Signal(unsigned(F32_BITS))
        m.d.sync += [k1.eq(self.keys.payload[:cfg.key_bits_used]), v1.eq(accept), first1.eq(c == 0),
                     last1.eq(last_c), job1.eq(last_c & (r == row_tiles - 1)), scale1.eq(scale)]

        # ---- stage 2: tables, beat register ------------------------------------------------
        m.submodules.tables = tb = TableBuilder(T)
        m.d.comb += [tb.act.eq(rd.data), tb.i_valid.eq(v1)]
        table_bus = Signal(unsigned(TABLE_WORD_BITS * T))  # broadcast to every lane
        m.d.comb += table_bus.eq(flatten_tables(tb.entries))
        k2 = Signal(unsigned(cfg.key_bits_used))
        first2, last2, job2 = Signal(), Signal(), Signal()
        scale2 = Signal(unsigned(F32_BITS))
        m.d.sync += [k2.eq(k1), first2.eq(first1), last2.eq(last1), job2.eq(job1),
                     scale2.eq(scale1)]

        # ---- lanes -------------------------------------------------------------------------
        lanes = []
        for p in range(L):
            lane = Lane(T, acc_w, with_result_valid=p == 0)  # lanes run in lockstep
            m.submodules[f"lane{p}"] = lane
            m.d.comb += [
                lane.table_bits.eq(table_bus),
                lane.keys.eq(k2[KEY_BITS * T * p:KEY_BITS * T * (p + 1)]),
                lane.valid.eq(tb.o_valid),
                lane.first.eq(first2),
                lane.last.eq(last2),
            ]
            lanes.append(lane)
        # Row-tile metadata travels beside the lanes (same delay as their result).
        job_d, scale_d = job2, scale2
        for i in range(cfg.lane_latency):
            nj, ns = Signal(name=f"job_d{i}"), Signal(unsigned(F32_BITS), name=f"scale_d{i}")
            m.d.sync += [nj.eq(job_d), ns.eq(scale_d)]
            job_d, scale_d = nj, ns
        results_valid = lanes[0].result_valid

        # ---- drain: hold bank -> shift bank ------------------------------------------------
        cen = Signal()  # output converter advance
        m.d.comb += cen.eq(~self.out.valid | self.out.ready)
        hold = [Signal(signed(acc_w), name=f"hold{p}") for p in range(L)]
        hold_full, hold_job = Signal(), Signal()
        hold_scale = Signal(unsigned(F32_BITS))
        shift = [Signal(signed(acc_w), name=f"shift{p}") for p in range(L)]
        sh_busy, sh_job = Signal(), Signal()
        sh_scale = Signal(unsigned(F32_BITS))
        sh_cnt = Signal(range(max(2, cfg.drain_cycles)))
        issue = Signal()
        sh_last = Signal()
        m.d.comb += [issue.eq(sh_busy & cen), sh_last.eq(sh_cnt == cfg.drain_cycles - 1),
                     release.eq(issue & sh_last)]
        with m.If(issue):
            m.d.sync += sh_cnt.eq(sh_cnt + 1)
            for p in range(L - O):
                m.d.sync += shift[p].eq(shift[p + O])
            with m.If(sh_last):
                m.d.sync += sh_busy.eq(0)
        with m.If((~sh_busy | release) & hold_full):
            m.d.sync += [sh_busy.eq(1), sh_cnt.eq(0), sh_job.eq(hold_job),
                         sh_scale.eq(hold_scale), hold_full.eq(0)]
            m.d.sync += [shift[p].eq(hold[p]) for p in range(L)]
        with m.If(results_valid):
            # Credits guarantee the hold bank is free (or being emptied this very cycle).
            m.d.sync += [hold_full.eq(1), hold_job.eq(job_d), hold_scale.eq(scale_d)]
            m.d.sync += [hold[p].eq(lanes[p].result) for p in range(L)]

        # ---- output converter: int -> binary32, x out_scale --------------------------------
        conv_latency = IntToFloat32.LATENCY + Float32Mul.LATENCY
        # Scale and job-last flag beside the int->float stages; acc and last beside all stages.
        sc = sh_scale
        for i in range(IntToFloat32.LATENCY):
            ns = Signal(unsigned(F32_BITS), name=f"conv_scale{i}")
            with m.If(cen):
                m.d.sync += ns.eq(sc)
            sc = ns
        lastflag = issue & sh_last & sh_job
        for i in range(conv_latency):
            nl = Signal(name=f"conv_last{i}")
            with m.If(cen):
                m.d.sync += nl.eq(lastflag)
            lastflag = nl
        for j in range(O):
            i2f = IntToFloat32(acc_w)
            mul = Float32Mul()
            m.submodules[f"i2f{j}"] = i2f
            m.submodules[f"mul{j}"] = mul
            m.d.comb += [
                i2f.i.eq(shift[j]), i2f.i_valid.eq(issue), i2f.en.eq(cen),
                mul.a.eq(i2f.o), mul.b.eq(sc), mul.i_valid.eq(i2f.o_valid), mul.en.eq(cen),
                self.out.payload.y[j].eq(mul.o),
            ]
            a = shift[j]
            for i in range(conv_latency):
                na = Signal(signed(acc_w), name=f"conv_acc{j}_{i}")
                with m.If(cen):
                    m.d.sync += na.eq(a)
                a = na
            m.d.comb += self.out.payload.acc[j].eq(a)
            if j == 0:
                m.d.comb += self.out.valid.eq(mul.o_valid)
        m.d.comb += self.out.payload.last.eq(lastflag)

        return m
