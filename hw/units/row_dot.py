"""The BFP x BFP dot product of two fp16 vectors (golden ``qk_bfp`` for one row), block by block.

Shared by the ROUTER unit (one row: the router weight vector) and the LM-head unit (``PE_LINEAR``
with ``wfmt = FP16``: one row per vocabulary entry).

Semantics (golden :func:`ternopu.golden.pe.qk_bfp`, one output per row)::

    per 32-element block b: both operands through the BFP converter (golden ``to_bfp``,
                            14-bit mantissas), I_b = sum_j m_x[j] m_w[j] (exact), e_b = ex_b + ew_b
    e_ref  = max_b e_b - ALIGN_GUARD_BITS
    value  = binary32( sum_b rne_shift(I_b, e_ref - e_b) * 2**e_ref )     (one rounding, RNE)

The alignment needs the largest ``e_b`` of *all* the row's blocks before the first term is
rounded, so the block partials are kept in a memory (``max_blocks`` entries) and aligned in a
second pass once the row's last block is in.

Interface
---------
``i`` (stream): one block per transfer, ``x`` and ``w`` 512 bits each (32 fp16 elements, element
``j`` at bits ``16j``), ``last`` on the row's last block. ``o`` (stream): per row ``value``
(binary32 bits), ``nonfinite`` (an element of x or w had an all-ones exponent: the value is then
meaningless and the golden model raises) and ``range_error`` (the exact sum is outside binary32's
normal range: the value is unspecified, see :class:`ternopu.hw.pe_array.ScaledToFloat32`).
``clear`` drops a partly received row (pulse it when a new instruction starts).

Timing
------
``i`` takes one block per cycle while a row streams in. After the last block:
:data:`TAIL_CYCLES` plus one cycle per block (the alignment pass) until ``o.valid``; ``i`` is not
ready from the last block of a row until its result is taken (rows do not overlap: a row of
``B`` blocks takes ``2B + TAIL_CYCLES`` cycles at one block per cycle).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, BFPFormat
from ternopu.golden.errors import ConfigError
from ternopu.golden.pe import ALIGN_GUARD_BITS, aligned_acc_bits

from ..bfp import BFP_EXP_BITS, BFPConverter, rne_shift_signed
from ..pe_array import ScaledToFloat32

__all__ = ["BfpRowDot", "TAIL_CYCLES", "fp16_nonfinite"]

#: Cycles from the last block's transfer to ``o.valid``, not counting the one-per-block alignment
#: pass: converter + product register + partial write, 2 alignment bookkeeping cycles,
#: reconstruction and the output register.
TAIL_CYCLES = BFPConverter.LATENCY + 2 + 2 + ScaledToFloat32.LATENCY + 1
_FP16_ONE = 0x3C00    # ScaledToFloat32 with scale 1.0 is the plain acc * 2**e reconstruction


def fp16_nonfinite(word, n: int):
    """1 if any of the ``n`` fp16 elements packed in ``word`` has an all-ones exponent field."""
    return Cat(*[word[16 * j + 10:16 * j + 15] == 0x1F for j in range(n)]).any()


class BfpRowDot(wiring.Component):
    """``qk_bfp`` of one row at a time, fed block by block (module docstring).

    Parameters
    ----------
    max_blocks : int
        Most 32-element blocks in a row (sizes the partial memory, ``max_blocks`` words of
        ``qm_bits + BFP_EXP_BITS + 1`` bits, and the accumulator). Longer rows wrap the memory:
        the caller must not send them.
    fmt : BFPFormat
        The golden default (32, 14) the converter implements.

    Ports
    -----
    i : In(stream {x: 512, w: 512, last: 1}); o : Out(stream {value: 32, nonfinite: 1, range_error: 1});
    clear : In(1)
    """

    def __init__(self, max_blocks: int, fmt: BFPFormat = DEFAULT_BFP):
        if fmt != DEFAULT_BFP:
            raise ConfigError(f"BfpRowDot: only the default BFP format {DEFAULT_BFP} is supported, got {fmt}")
        if not isinstance(max_blocks, int) or not 1 <= max_blocks <= 4096:
            raise ConfigError(f"BfpRowDot.max_blocks: an int in [1, 4096], got {max_blocks!r}")
        self.fmt, self.max_blocks = fmt, max_blocks
        self.qm_bits = (fmt.block * fmt.mant_max ** 2).bit_length() + 1
        self.acc_bits = aligned_acc_bits(fmt.block * fmt.mant_max ** 2, max_blocks)
        bits = 16 * fmt.block
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": bits, "w": bits, "last": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"value": 32, "nonfinite": 1, "range_error": 1}))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        fire = Signal()
        m.d.comb += fire.eq(self.i.valid & self.i.ready)

        # ---- block datapath: two converters, the block dot product ------------------------------
        m.submodules.cx = cx = BFPConverter(fmt)
        m.submodules.cw = cw = BFPConverter(fmt)
        m.d.comb += [cx.i.payload.eq(self.i.payload.x), cw.i.payload.eq(self.i.payload.w),
                     cx.i.valid.eq(fire), cw.i.valid.eq(fire), cx.o.ready.eq(1), cw.o.ready.eq(1)]
        prod = [cx.o.payload.mant[j] * cw.o.payload.mant[j] for j in range(fmt.block)]
        while len(prod) > 1:
            prod = [prod[i] + prod[i + 1] for i in range(0, len(prod) - 1, 2)] + (
                [prod[-1]] if len(prod) % 2 else [])
        p_val = Signal()
        p_sum = Signal(signed(self.qm_bits))
        p_exp = Signal(signed(BFP_EXP_BITS + 1))
        m.d.sync += [p_val.eq(cx.o.valid), p_sum.eq(prod[0]),
                     p_exp.eq(cx.o.payload.exp + cw.o.payload.exp)]

        # ---- partial memory (first pass) -----------------------------------------------------------
        m.submodules.parts = parts = Memory(shape=unsigned(self.qm_bits + BFP_EXP_BITS + 1),
                                            depth=self.max_blocks, init=[])
        pw = parts.write_port()
        pr = parts.read_port()
        fired = Signal(range(self.max_blocks + 1))      # blocks of this row taken
        n_written = Signal(range(self.max_blocks + 1))  # partials in memory
        e_max = Signal(signed(BFP_EXP_BITS + 1))
        nonfin = Signal()
        m.d.comb += [pw.en.eq(p_val), pw.addr.eq(n_written), pw.data.eq(Cat(p_sum, p_exp))]
        with m.If(p_val):
            m.d.sync += [n_written.eq(n_written + 1),
                         e_max.eq(Mux((n_written == 0) | (p_exp > e_max), p_exp, e_max))]

        # ---- second pass: alignment and exact sum ----------------------------------------------------
        e_ref = Signal(signed(BFP_EXP_BITS + 2))
        m.d.comb += e_ref.eq(e_max - ALIGN_GUARD_BITS)
        rd_i = Signal(range(self.max_blocks + 2))
        rd_v = Signal()
        acc = Signal(signed(self.acc_bits))
        part_I = pr.data[:self.qm_bits].as_signed()
        part_e = pr.data[self.qm_bits:].as_signed()
        shifted = rne_shift_signed(m, part_I, e_ref - part_e, ALIGN_GUARD_BITS, self.qm_bits + 1, "al")
        m.d.comb += pr.addr.eq(rd_i)
        with m.If(rd_v):
            m.d.sync += acc.eq(acc + shifted)

        # ---- reconstruction -------------------------------------------------------------------------
        m.submodules.recon = recon = ScaledToFloat32(self.acc_bits)
        rec_go = Signal()
        m.d.comb += [recon.acc.eq(acc), recon.scale.eq(_FP16_ONE), recon.exp.eq(e_ref),
                     recon.i_valid.eq(rec_go)]
        value = Signal(32)
        rng = Signal()

        with m.FSM() as fsm:
            with m.State("RUN"):
                m.d.comb += self.i.ready.eq(~self.clear)
                with m.If(fire):
                    m.d.sync += [fired.eq(fired + 1),
                                 nonfin.eq(nonfin | fp16_nonfinite(self.i.payload.x, fmt.block)
                                           | fp16_nonfinite(self.i.payload.w, fmt.block))]
                    with m.If(self.i.payload.last):
                        m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(n_written == fired):
                    m.d.sync += [rd_i.eq(0), acc.eq(0)]
                    m.next = "ALIGN"
            with m.State("ALIGN"):
                m.d.sync += [rd_i.eq(rd_i + 1), rd_v.eq(rd_i < fired)]
                with m.If(rd_i == fired + 1):
                    m.d.sync += rd_v.eq(0)
                    m.d.comb += rec_go.eq(1)
                    m.next = "RECON"
            with m.State("RECON"):
                with m.If(recon.o_valid):
                    m.d.sync += [value.eq(recon.o), rng.eq(recon.range_error)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.value.eq(value),
                             self.o.payload.nonfinite.eq(nonfin), self.o.payload.range_error.eq(rng)]
                with m.If(self.o.ready):
                    m.d.sync += [fired.eq(0), n_written.eq(0), nonfin.eq(0)]
                    m.next = "RUN"
        with m.If(self.clear):
            m.d.sync += [fired.eq(0), n_written.eq(0), nonfin.eq(0), rd_v.eq(0),
                         fsm.state.eq(fsm.encoding["RUN"])]   # drop a partly received row
        return m
