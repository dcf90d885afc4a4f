"""IEEE 754 binary32 arithmetic units for the overlay's output stages.

Format
------
A binary32 word is ``sign (bit 31) | exponent (bits 30..23, bias 127) | fraction (bits 22..0)``,
carried on ``unsigned(32)`` signals as the raw bit pattern (the same pattern as
``torch.float32`` tensors viewed as ``int32``).

Units
-----
:class:`IntToFloat32`
    Exact conversion of a signed integer of at most :data:`INT_TO_F32_MAX_WIDTH` = 25 bits to
    binary32. Every such integer has magnitude ``<= 2**24`` and is therefore exactly representable:
    no rounding happens. (This is the ``float32(acc)`` step of the golden
    :func:`ternopu.golden.bitnet.rescale`, which requires ``|acc| < 2**24``.)
:class:`Float32Mul`
    Pipelined binary32 multiplier, round to nearest, ties to even, bit-exact with
    ``torch.float32`` element-wise multiplication on CPU under the following policy:

    * normal and zero operands: exact IEEE result, including
    * results that underflow: gradual underflow to a subnormal (or zero), correctly rounded;
    * results that overflow: +-infinity (what round-to-nearest gives);
    * sign of a zero result: XOR of the operand signs (as IEEE);
    * subnormal operands: treated as zero of the same sign (DAZ). torch would not flush them; the
      TLMM never feeds one (the golden ``out_scale`` is ``>= 1e-5 * 1e-5 / 127 ~ 7.9e-13`` and an
      integer accumulator converts to a normal or zero), see the tests for the stated limit;
    * infinite or NaN operands: outside the contract (the golden model rejects non-finite values at
      entry); the unit returns the canonical quiet NaN ``0x7FC00000`` so the error stays visible.

Both units are fully pipelined (one operation per cycle), advance only while their ``en`` input is
high (so a whole output stage can stall under backpressure) and carry a ``valid`` bit alongside.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "F32_BITS",
    "F32_EXP_BITS",
    "F32_FRAC_BITS",
    "F32_BIAS",
    "F32_QNAN",
    "INT_TO_F32_MAX_WIDTH",
    "IntToFloat32",
    "Float32Mul",
]

F32_BITS = 32
"""Width of a binary32 word."""
F32_EXP_BITS = 8
"""Exponent field width."""
F32_FRAC_BITS = 23
"""Fraction field width (the significand has 24 bits with the hidden one)."""
F32_BIAS = 127
"""Exponent bias."""
F32_EXP_MAX = (1 << F32_EXP_BITS) - 1
"""Exponent field of infinities and NaNs (255)."""
F32_QNAN = 0x7FC00000
"""Canonical quiet NaN returned for operands outside the contract."""
INT_TO_F32_MAX_WIDTH = 25
"""Widest signed input of :class:`IntToFloat32`: every 25-bit integer has ``|x| <= 2**24``."""


class IntToFloat32(wiring.Component):
    """Exact signed-integer to binary32 conversion, 2-stage pipeline.

    Parameters
    ----------
    width : int
        Signed input width, 2..25. All inputs convert exactly (``|x| <= 2**24``); there is no
        rounding and no saturation.

    Ports
    -----
    i : In(signed(width))
        Integer to convert.
    i_valid : In(1)
        Marks ``i`` as a real operand; travels with it to ``o_valid``.
    en : In(1), init 1
        Pipeline advance; while low every stage holds.
    o : Out(unsigned(32))
        binary32 bit pattern of ``i`` (``+0.0`` for 0).
    o_valid : Out(1)

    Timing
    ------
    ``LATENCY`` = 2 enabled cycles from ``i`` to ``o``; throughput one conversion per enabled cycle.
    Stage 1 registers sign and magnitude, stage 2 finds the leading one, normalizes and packs.
    """

    LATENCY = 2

    def __init__(self, width: int):
        if not isinstance(width, int) or not 2 <= width <= INT_TO_F32_MAX_WIDTH:
            raise ValueError(
                f"width must be an int in [2, {INT_TO_F32_MAX_WIDTH}] so the conversion is exact, "
                f"got {width!r}")
        self.width = width
        super().__init__({
            "i": In(signed(width)),
            "i_valid": In(1),
            "en": In(1, init=1),
            "o": Out(unsigned(F32_BITS)),
            "o_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.width
        sign = Signal()
        mag = Signal(unsigned(w))  # |x| <= 2**(w-1) fits w unsigned bits
        v1 = Signal()
        with m.If(self.en):
            m.d.sync += [
                sign.eq(self.i < 0),
                mag.eq(Mux(self.i < 0, -self.i, self.i)),
                v1.eq(self.i_valid),
            ]
        # Position of the leading one (later assignments win, so the highest set bit is kept).
        msb = Signal(range(w))
        for b in range(w):
            with m.If(mag[b]):
                m.d.comb += msb.eq(b)
        # Normalize so the leading one sits at bit 23 (the hidden bit); w <= 25 so the shift is
        # left for msb < 23 and right by at most 1 (exact: only for 2**24, whose low bit is 0).
        lshift = Signal(range(24))
        rshift = Signal(range(2))
        with m.If(msb <= 23):
            m.d.comb += lshift.eq(23 - msb)
        with m.Else():
            m.d.comb += rshift.eq(msb - 23)
        norm = Signal(unsigned(24))
        m.d.comb += norm.eq((mag << lshift) >> rshift)
        exp = Signal(unsigned(F32_EXP_BITS))
        m.d.comb += exp.eq(F32_BIAS + msb)
        with m.If(self.en):
            m.d.sync += [
                self.o.eq(Mux(mag == 0, 0, Cat(norm[:F32_FRAC_BITS], exp, sign))),
                self.o_valid.eq(v1),
            ]
        return m


class Float32Mul(wiring.Component):
    """Pipelined binary32 multiplier, round to nearest even (policy in the module docstring).

    Ports
    -----
    a, b : In(unsigned(32))
        Operand bit patterns.
    i_valid : In(1)
        Travels with the operands to ``o_valid``.
    en : In(1), init 1
        Pipeline advance; while low every stage holds.
    o : Out(unsigned(32))
        Bit pattern of ``a * b`` rounded to nearest even.
    o_valid : Out(1)

    Timing
    ------
    ``LATENCY`` = 3 enabled cycles, one product per enabled cycle.
    Stage 1: unpack, 24x24 significand product (48 bits), exponent sum, special cases.
    Stage 2: normalize the product to [2**47, 2**48); for a subnormal result shift right by
    ``1 - e`` keeping a sticky bit; select the 24 kept bits, guard and sticky.
    Stage 3: round half to even (the carry of the rounding increment ripples into the exponent
    field, which also produces the subnormal-to-normal and the overflow-to-infinity cases) and pack.
    """

    LATENCY = 3

    def __init__(self):
        super().__init__({
            "a": In(unsigned(F32_BITS)),
            "b": In(unsigned(F32_BITS)),
            "i_valid": In(1),
            "en": In(1, init=1),
            "o": Out(unsigned(F32_BITS)),
            "o_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        fb = F32_FRAC_BITS

        def fields(x):
            return x[fb:fb + F32_EXP_BITS], x[:fb], x[31]

        ea, fa, sa = fields(self.a)
        eb, fbits, sb = fields(self.b)

        # ---- stage 1 -----------------------------------------------------------------------
        s1_sign, s1_zero, s1_nan, s1_valid = Signal(), Signal(), Signal(), Signal()
        s1_esum = Signal(unsigned(9))  # ea + eb, 2..508 for normal operands
        s1_prod = Signal(unsigned(48))
        with m.If(self.en):
            m.d.sync += [
                s1_sign.eq(sa ^ sb),
                # DAZ: a zero exponent field (zero or subnormal) makes the product a signed zero.
                s1_zero.eq((ea == 0) | (eb == 0)),
                s1_nan.eq((ea == F32_EXP_MAX) | (eb == F32_EXP_MAX)),
                s1_esum.eq(ea + eb),
                s1_prod.eq(Cat(fa, Const(1, 1)) * Cat(fbits, Const(1, 1))),
                s1_valid.eq(self.i_valid),
            ]

        # ---- stage 2 -----------------------------------------------------------------------
        # Product of two significands in [1, 2) lies in [1, 4): bit 47 or bit 46 leads.
        top = s1_prod[47]
        norm = Signal(unsigned(48))
        m.d.comb += norm.eq(Mux(top, s1_prod, s1_prod << 1))
        # Biased exponent of the normalized result: ea + eb - 127 (+1 if bit 47 led).
        exp = Signal(signed(11))
        m.d.comb += exp.eq(s1_esum - F32_BIAS + top)  # unsigned - int widens to signed
        # Subnormal result: shift right by 1 - exp (capped: beyond 26 everything is sticky).
        shift = Signal(range(64))
        m.d.comb += shift.eq(Mux(exp >= 1, 0, Mux(1 - exp > 26, 26, 1 - exp)))
        shifted = Signal(unsigned(48))
        m.d.comb += shifted.eq(norm >> shift)
        lost = Signal()
        m.d.comb += lost.eq((shifted << shift)[:48] != norm)
        s2_keep = Signal(unsigned(F32_FRAC_BITS))  # fraction only: the leading one is in s2_exp
        s2_guard, s2_sticky = Signal(), Signal()
        s2_exp = Signal(unsigned(10))  # exponent field before rounding; >= 255 means overflow
        s2_sign, s2_zero, s2_nan, s2_valid = Signal(), Signal(), Signal(), Signal()
        with m.If(self.en):
            m.d.sync += [
                s2_keep.eq(shifted[24:24 + F32_FRAC_BITS]),
                s2_guard.eq(shifted[23]),
                s2_sticky.eq((shifted[:23] != 0) | lost),
                s2_exp.eq(Mux(exp >= 1, exp[:10], 0)),
                s2_sign.eq(s1_sign),
                s2_zero.eq(s1_zero),
                s2_nan.eq(s1_nan),
                s2_valid.eq(s1_valid),
            ]

        # ---- stage 3 -----------------------------------------------------------------------
        round_up = s2_guard & (s2_sticky | s2_keep[0])
        # Exponent field and fraction side by side: a carry out of the fraction bumps the
        # exponent (subnormal -> normal, 1.111.. -> 10.0, largest finite -> infinity).
        # 31 bits: a carry out of an all-ones exponent field is caught by ``s2_exp >= 255``
        packed = Signal(unsigned(31))
        m.d.comb += packed.eq(Cat(s2_keep[:fb], s2_exp[:8]) + round_up)
        overflow = (s2_exp >= F32_EXP_MAX) | (packed[fb:fb + 8] == F32_EXP_MAX)
        magnitude = Mux(overflow, F32_EXP_MAX << fb, packed)
        with m.If(self.en):
            m.d.sync += [
                self.o.eq(Mux(s2_nan, F32_QNAN,
                              Mux(s2_zero, s2_sign << 31, Cat(magnitude[:31], s2_sign)))),
                self.o_valid.eq(s2_valid),
            ]
        return m
