"""FP16 / BF16 -> block floating point converter (the PE array's activation aligner).

Format (see :mod:`ternopu.golden.bfp`, which defines every bit)
---------------------------------------------------------------
One input transfer is one BFP block: ``block`` IEEE half-width words, element ``j`` in bits
``[16j, 16j+16)`` of the payload (little-endian element order, the order of a packed FP16 vector in
memory). The output transfer carries

* ``mant[j]``: the symmetric ``mant_bits``-bit signed mantissa of element ``j``,
* ``exp``: the block exponent (weight of the mantissa LSB), ``E_blk - bias - (mant_bits - 2)``,
  signed :data:`BFP_EXP_BITS` bits,
* ``msum``: ``sum_j mant[j]`` (exact), which the PE array needs for the INT4 packing correction
  (``q*m = 8*m - (8-q)*m``) and for the folded zero point (``z * sum(m)``); computing it once per
  block here saves one adder tree per output lane.

Datapath (per element): exponent field ``e`` and significand ``sig`` (implicit one for normals,
denormals/zeros use field 1), block maximum ``E_blk`` of the fields (integer max tree), alignment
shift ``(E_blk - max(e,1)) + (S - (mant_bits-1))`` (``S`` = significand width), round half to even on
the magnitude for right shifts (exact left shift otherwise), saturate at ``2**(mant_bits-1) - 1``,
apply the sign. NaN/Inf inputs are outside the contract (the golden model rejects them at entry);
the converter treats their exponent field like a normal one and raises the sticky ``nonfinite``
output so the error stays visible.

Pipeline: :data:`BFPConverter.LATENCY` = 3 stages (fields + max tree | align + round + saturate |
sum tree), one block per cycle, stalls as a whole under output backpressure.
"""

from __future__ import annotations

import torch
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ternopu.golden.bfp import DEFAULT_BFP, IEEE_FORMATS, BFPFormat
from ternopu.golden.errors import ConfigError

__all__ = [
    "BFP_EXP_BITS",
    "HALF_BITS",
    "rne_shift_right",
    "rne_shift_signed",
    "BFPConverter",
]

BFP_EXP_BITS = 10
"""Signed width of a block exponent (BF16 needs [-138, 115]; FP16 [-26, 3] for 14-bit mantissas)."""
HALF_BITS = 16
"""Width of one FP16 / BF16 element on the input bus."""


def rne_shift_right(m: Module, mag, sh, max_shift: int, name: str):
    """Unsigned ``mag * 2**-sh`` rounded half to even (golden :func:`rne_shift` for ``sh >= 0``).

    ``sh`` is an unsigned value; amounts above ``max_shift`` (which must be ``>= mag.width + 1``, so
    the result is 0 there) are clamped to it. Returns a combinational Signal as wide as ``mag``.
    """
    assert max_shift >= len(mag) + 1
    shc = Signal(range(max_shift + 1), name=f"{name}_sh")
    m.d.comb += shc.eq(Mux(sh > max_shift, max_shift, sh))
    q = Signal(len(mag), name=f"{name}_q")
    m.d.comb += q.eq(mag >> shc)
    back = Signal(len(mag) + max_shift + 1, name=f"{name}_back")
    m.d.comb += back.eq(q << shc)
    rem = Signal(len(mag), name=f"{name}_rem")
    m.d.comb += rem.eq(mag - back)
    half = Signal(len(mag) + max_shift + 1, name=f"{name}_half")
    m.d.comb += half.eq((Const(1, 1) << shc) >> 1)
    up = (shc != 0) & ((rem > half) | ((rem == half) & q[0]))
    out = Signal(len(mag) + 1, name=f"{name}_rne")
    m.d.comb += out.eq(q + up)
    return out


def rne_shift_signed(m: Module, v, sh, max_left: int, max_right: int, name: str):
    """Signed golden ``rne_shift(v, sh)``: ``sh < 0`` exact left shift by ``-sh <= max_left``,
    ``sh > 0`` RNE on the magnitude (clamped at ``max_right >= width(v) + 1``), sign reapplied.

    ``sh`` is a signed value. Returns a signed combinational Signal ``width(v) + max_left + 1`` wide.
    """
    w = len(v)
    mag = Signal(w, name=f"{name}_mag")
    m.d.comb += mag.eq(Mux(v < 0, -v, v))
    right = rne_shift_right(m, mag, Mux(sh > 0, sh, 0).as_unsigned(), max_right, name)
    left_amt = Signal(range(max_left + 1), name=f"{name}_lamt")
    m.d.comb += left_amt.eq(Mux(sh < 0, -sh, 0))
    out_mag = Signal(w + max_left + 1, name=f"{name}_omag")
    m.d.comb += out_mag.eq(Mux(sh < 0, mag << left_amt, right))
    out = Signal(signed(w + max_left + 2), name=f"{name}_out")
    m.d.comb += out.eq(Mux(v < 0, -out_mag, out_mag))
    return out


class BFPConverter(wiring.Component):
    """One BFP block per cycle from ``block`` FP16 (or BF16) words.

    Parameters
    ----------
    fmt : BFPFormat, default DEFAULT_BFP (32, 14)
    dtype : torch.float16 or torch.bfloat16

    Ports
    -----
    i : In(stream.Signature(unsigned(16 * block)))
    o : Out(stream.Signature(StructLayout{mant: ArrayLayout(signed(mant_bits), block),
        exp: signed(BFP_EXP_BITS), msum: signed(mant_bits + log2(block))}))
    nonfinite : Out(1), sticky: an input word had an all-ones exponent field.

    Raises
    ------
    ConfigError
        Unsupported dtype or a format the datapath does not cover.
    """

    LATENCY = 3

    def __init__(self, fmt: BFPFormat = DEFAULT_BFP, dtype: torch.dtype = torch.float16):
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"BFPConverter: dtype must be float16 or bfloat16, got {dtype}")
        if not isinstance(fmt, BFPFormat):
            raise ConfigError(f"BFPConverter: expected a BFPFormat, got {fmt!r}")
        self.fmt = fmt
        self.dtype = dtype
        self.ieee = IEEE_FORMATS[dtype]
        self.msum_bits = fmt.mant_bits + max(1, (fmt.block - 1).bit_length()) + 1
        self.out_layout = data.StructLayout({
            "mant": data.ArrayLayout(signed(fmt.mant_bits), fmt.block),
            "exp": signed(BFP_EXP_BITS),
            "msum": signed(self.msum_bits),
        })
        super().__init__({
            "i": In(stream.Signature(unsigned(HALF_BITS * fmt.block))),
            "o": Out(stream.Signature(self.out_layout)),
            "nonfinite": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        f, fmt = self.ieee, self.fmt
        n, mb = fmt.block, fmt.mant_bits
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        # ---- stage 1: fields and block max exponent ----------------------------------------
        ebits = f.exp_bits
        s1_sign = Signal(n)
        s1_e = [Signal(ebits, name=f"s1_e{j}") for j in range(n)]
        s1_sig = [Signal(f.sig_bits, name=f"s1_sig{j}") for j in range(n)]
        s1_emax = Signal(ebits)
        s1_valid = Signal()
        e_now, sig_now, inf_now = [], [], []
        for j in range(n):
            word = self.i.payload[HALF_BITS * j:HALF_BITS * (j + 1)]
            e = word[f.frac_bits:f.frac_bits + ebits]
            e_now.append(Mux(e == 0, 1, e))
            sig_now.append(Cat(word[:f.frac_bits], e != 0))
            inf_now.append(e == (1 << ebits) - 1)
        level = e_now
        while len(level) > 1:  # integer max tree
            nxt = []
            for a in range(0, len(level) - 1, 2):
                x, y = level[a], level[a + 1]
                nxt.append(Mux(x > y, x, y))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        with m.If(en):
            m.d.sync += [s1_valid.eq(self.i.valid), s1_emax.eq(level[0])]
            for j in range(n):
                m.d.sync += [s1_sign[j].eq(self.i.payload[HALF_BITS * j + 15]),
                             s1_e[j].eq(e_now[j]), s1_sig[j].eq(sig_now[j])]
        with m.If(self.i.valid & self.i.ready & Cat(*inf_now).any()):
            m.d.sync += self.nonfinite.eq(1)

        # ---- stage 2: align, round half to even, saturate, sign ----------------------------
        base = f.sig_bits - (mb - 1)  # shift for an element at the block max exponent
        s2_mant = [Signal(signed(mb), name=f"s2_mant{j}") for j in range(n)]
        s2_emax = Signal(ebits)
        s2_valid = Signal()
        for j in range(n):
            # rne_shift(sig, d + base) with d = E_blk - e >= 0. For base < 0 it equals
            # rne_shift(sig << -base, d): the same value, so the same rounding, and one unsigned
            # right shifter covers every case (no left-shift path).
            d = Signal(ebits + 1, name=f"d{j}")
            if base <= 0:
                src = Cat(Const(0, -base), s1_sig[j])
                m.d.comb += d.eq(s1_emax - s1_e[j])
            else:
                src = s1_sig[j]
                m.d.comb += d.eq(s1_emax - s1_e[j] + base)
            mag = rne_shift_right(m, src, d, len(src) + 1, f"al{j}")
            sat = Signal(mb + 8, name=f"sat{j}")
            m.d.comb += sat.eq(Mux(mag > fmt.mant_max, fmt.mant_max, mag))
            with m.If(en):
                m.d.sync += s2_mant[j].eq(Mux(s1_sign[j], -sat, sat))
        with m.If(en):
            m.d.sync += [s2_valid.eq(s1_valid), s2_emax.eq(s1_emax)]

        # ---- stage 3: mantissa sum, exponent ------------------------------------------------
        total = s2_mant[0]
        for j in range(1, n):
            total = total + s2_mant[j]
        with m.If(en):
            m.d.sync += [
                self.o.valid.eq(s2_valid),
                self.o.payload.exp.eq(s2_emax - f.bias - (mb - 2)),
                self.o.payload.msum.eq(total),
            ]
            for j in range(n):
                m.d.sync += self.o.payload.mant[j].eq(s2_mant[j])
        return m
