"""NPE ``exp``: bit-exact hardware version of :func:`ternopu.golden.nonlinear.exp_approx`.

Dataflow (every float op a binary32 RNE operator of :mod:`ternopu.hw.fpu`, in the golden order)::

    xc = max(x, -104)                          fmax            (result flushes below anyway)
    t  = xc * (64/ln2)                         fmul
    n  = round_half_even(t)  (int, |n| <= 9603)  f2i ; nf = float(n) (exact; -0 if t rounds to -0)
    d  = xc - nf*HI ;  r = d - nf*LO           fmul, fsub x2   (HI has 10 bits: nf*HI exact)
    q  = ((C3*r + C2)*r + C1)*r + C0           3 x (fmul, fadd)
    v  = EXP_LUT[n & 63] * q                   ROM + fmul
    y  = v * 2^(n >> 6)                        exponent add, +0 below 2^-126

Errors: ``err`` = NaN/Inf input or ``x > 88`` (golden ``exp_approx`` raises there).
"""

from __future__ import annotations

from amaranth import Cat, Mux

from ...golden import nonlinear as gn
from ..fpu import (Val, f2i, fadd, fmax, fmul, fsub, i2f, is_nonfinite, rom, scale_pow2, flt,
                   F32_EXP_MAX)
from .common import ElementwiseUnit, f32_const_bits, f32_table

__all__ = ["exp_dataflow", "ExpUnit", "EXP_DATAFLOW_LATENCY"]

_C = f32_const_bits
EXP_LUT_BITS = f32_table(gn.EXP_LUT)
CLAMP_BITS = _C(gn._EXP_CLAMP)
INV_STEP_BITS = _C(gn._EXP_INV_STEP)
STEP_HI_BITS = _C(gn._EXP_STEP_HI)
STEP_LO_BITS = _C(gn._EXP_STEP_LO)
POLY_BITS = tuple(_C(c) for c in gn._EXP_POLY)
MAX_INPUT_BITS = _C(gn.EXP_MAX_INPUT)
N_WIDTH = 16
"""Signed width of the integer ``n`` (|n| <= 9603 after the clamp)."""


def exp_dataflow(p, x: Val) -> Val:
    """Golden ``_exp_core`` as a pipelined dataflow on binary32 bit patterns (no checks)."""
    xc = fmax(p, x, p.const(CLAMP_BITS, 32))
    t = fmul(p, xc, p.const(INV_STEP_BITS, 32))
    n = f2i(p, t, N_WIDTH, -(1 << (N_WIDTH - 1)), (1 << (N_WIDTH - 1)) - 1)
    nf_abs = i2f(p, n)
    # torch.round keeps the sign of zero (round(-0.3) = -0.0): copy t's sign onto a zero n
    # (only t's sign bit is delayed to this stage)
    t_sign = p.comb(lambda v: v[31], t)
    nf = p.comb(lambda v, sg: Mux(v == 0, Cat(v[:31], sg), v), nf_abs, t_sign)
    hi = fmul(p, nf, p.const(STEP_HI_BITS, 32))
    lo = fmul(p, nf, p.const(STEP_LO_BITS, 32))
    d = fsub(p, xc, hi)
    r = fsub(p, d, lo)
    c3, c2, c1, c0 = (p.const(b, 32) for b in POLY_BITS)
    q = fadd(p, fmul(p, c3, r), c2)
    q = fadd(p, fmul(p, q, r), c1)
    q = fadd(p, fmul(p, q, r), c0)
    lut = rom(p, EXP_LUT_BITS, 32, p.comb(lambda v: v[:6], n), "explut")
    v = fmul(p, lut, q)
    k = p.comb(lambda v: v.as_signed() >> 6, n)
    return scale_pow2(p, v, k)


def exp_input_error(p, x: Val) -> Val:
    """1 where ``x`` is NaN/Inf or above ``EXP_MAX_INPUT`` (comb)."""
    big = flt(p, p.const(MAX_INPUT_BITS, 32), x)
    return p.comb(lambda v, b: is_nonfinite(v) | b, x, big)


class ExpUnit(ElementwiseUnit):
    """Stream unit ``y = exp_approx(x)`` (binary32 in/out), bit-exact with the golden model.

    Ports: ``i.payload = {x: 32, last}``, ``o.payload = {y: 32, err, last}``.
    Throughput one element per cycle; ``LATENCY`` = 39 cycles; stalls as a whole under
    backpressure. ``err`` = NaN/Inf input or ``x > 88``.
    Resources (per instance): 9 binary32 multipliers (24x24 products, 2 DSP48E2 each), 5 adders,
    one 64 x 32-bit ROM.
    """

    IN_FIELDS = {"x": 32}
    OUT_FIELDS = {"y": 32}
    LATENCY = 39

    def dataflow(self, p, ins):
        x = ins["x"]
        return {"y": exp_dataflow(p, x), "err": exp_input_error(p, x)}
