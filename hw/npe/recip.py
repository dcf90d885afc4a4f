"""NPE reciprocal: bit-exact hardware version of :func:`ternopu.golden.nonlinear.recip_approx`.

Dataflow: ``x = s * m * 2^e`` (m in [1, 2) rebuilt with exponent field 127); seed
``r = RECIP_LUT[top 6 fraction bits]``; twice ``r = r * (2 - m*r)`` (fmul, fsub, fmul);
``y = r * 2^-e`` by exponent addition (+0 below 2^-126) with the sign of ``x`` copied.
Errors: NaN/Inf, zero or subnormal input.
"""

from __future__ import annotations

from amaranth import Cat, Const

from ...golden import nonlinear as gn
from ..fpu import Val, fmul, fsub, is_nonfinite, rom, scale_pow2
from .common import ElementwiseUnit, f32_const_bits, f32_table

__all__ = ["recip_dataflow", "recip_input_error", "RecipUnit"]

RECIP_LUT_BITS = f32_table(gn.RECIP_LUT)
TWO_BITS = f32_const_bits(2.0)


def recip_dataflow(p, x: Val) -> Val:
    """Golden ``_recip_core`` as a pipelined dataflow (normal nonzero ``x``; no checks)."""
    m = p.comb(lambda v: Cat(v[:23], Const(127, 8), Const(0, 1)), x)
    r = rom(p, RECIP_LUT_BITS, 32, p.comb(lambda v: v[17:23], x), "rcplut")
    two = p.const(TWO_BITS, 32)
    for _ in range(gn.RECIP_NEWTON_STEPS):
        r = fmul(p, r, fsub(p, two, fmul(p, m, r)))
    k = p.comb(lambda v: (127 - v[23:31]).as_signed(), x)
    # Only x's sign travels down the pipeline, not the whole word. r is positive for every x
    # (m in [1, 2), LUT entries ~1/m, each Newton factor 2 - m*r near 1), so out's sign bit is 0
    # and XOR-ing it in equals taking x's sign; reading it keeps the r chain's sign logic live.
    sign = p.comb(lambda v: v[31], x)
    out = scale_pow2(p, r, k)
    return p.comb(lambda o, sg: Cat(o[:31], o[31] ^ sg), out, sign)


def recip_input_error(p, x: Val) -> Val:
    """1 where ``x`` is NaN/Inf, zero or subnormal (comb)."""
    return p.comb(lambda v: is_nonfinite(v) | (v[23:31] == 0), x)


class RecipUnit(ElementwiseUnit):
    """Stream unit ``y = recip_approx(x)``; ``LATENCY`` = 20, one element per cycle.

    Ports: ``i.payload = {x: 32, last}``, ``o.payload = {y: 32, err, last}``.
    Resources: 4 binary32 multipliers, 2 adders, one 64 x 32 ROM.
    """

    IN_FIELDS = {"x": 32}
    OUT_FIELDS = {"y": 32}
    LATENCY = 20

    def dataflow(self, p, ins):
        x = ins["x"]
        return {"y": recip_dataflow(p, x), "err": recip_input_error(p, x)}
