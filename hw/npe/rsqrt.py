"""NPE reciprocal square root: bit-exact version of :func:`ternopu.golden.nonlinear.rsqrt_approx`.

Dataflow: ``x = m * 2^e``; parity ``q = e & 1`` (``e`` odd <=> exponent field even);
``y = m * 2^q`` (exponent field ``127 + q``); ``k = (e - q) / 2``; seed
``r = RSQRT_LUT[q*64 + top 6 fraction bits]``; ``h = 0.5 * y``; twice
``r = r * (1.5 - (h*r)*r)``; result ``r * 2^-k`` by exponent addition.
Errors: NaN/Inf, negative, zero or subnormal input.
"""

from __future__ import annotations

from amaranth import Cat, Const

from ...golden import nonlinear as gn
from ..fpu import Val, fmul, fsub, is_nonfinite, rom, scale_pow2
from .common import ElementwiseUnit, f32_const_bits, f32_table

__all__ = ["rsqrt_dataflow", "rsqrt_input_error", "RsqrtUnit"]

RSQRT_LUT_BITS = f32_table(gn.RSQRT_LUT)
HALF_BITS = f32_const_bits(0.5)
THREE_HALVES_BITS = f32_const_bits(1.5)


def rsqrt_dataflow(p, x: Val) -> Val:
    """Golden ``_rsqrt_core`` as a pipelined dataflow (positive normal ``x``; no checks)."""
    parity = p.comb(lambda v: ~v[23], x)  # e = be - 127 is odd exactly when be is even
    y = p.comb(lambda v, q: Cat(v[:23], Const(127, 8) + q, Const(0, 1)), x, parity)
    idx = p.comb(lambda v, q: Cat(v[17:23], q), x, parity)
    r = rom(p, RSQRT_LUT_BITS, 32, idx, "rsqlut")
    # k = (e - q) / 2 exactly; the result exponent moves by -k
    negk = p.comb(lambda v, q: -((Cat(v[23:31], Const(0, 2)).as_signed() - 127 - q) >> 1), x, parity)
    h = fmul(p, y, p.const(HALF_BITS, 32))
    th = p.const(THREE_HALVES_BITS, 32)
    for _ in range(gn.RSQRT_NEWTON_STEPS):
        r = fmul(p, r, fsub(p, th, fmul(p, fmul(p, h, r), r)))
    return scale_pow2(p, r, negk)


def rsqrt_input_error(p, x: Val) -> Val:
    """1 where ``x`` is NaN/Inf, negative (incl. -0), zero or subnormal (comb)."""
    return p.comb(lambda v: is_nonfinite(v) | (v[23:31] == 0) | v[31], x)


class RsqrtUnit(ElementwiseUnit):
    """Stream unit ``y = rsqrt_approx(x)``; ``LATENCY`` = 28, one element per cycle.

    Ports: ``i.payload = {x: 32, last}``, ``o.payload = {y: 32, err, last}``.
    Resources: 7 binary32 multipliers, 2 adders, one 128 x 32 ROM.
    """

    IN_FIELDS = {"x": 32}
    OUT_FIELDS = {"y": 32}
    LATENCY = 28

    def dataflow(self, p, ins):
        x = ins["x"]
        return {"y": rsqrt_dataflow(p, x), "err": rsqrt_input_error(p, x)}
