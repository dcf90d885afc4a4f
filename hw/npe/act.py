"""NPE element-wise activations: SiLU / SwiGLU, ReLU^2 / ReLU^2-GLU and the residual add.

Bit-exact hardware versions of :mod:`ternopu.golden.nonlinear`::

    sigmoid(x) = r            for x >= 0 (incl. -0)   with e = exp_approx(-|x|),
               = e * r        for x < 0                    r = recip_approx(1 + e)
    silu(x)      = x * sigmoid(x)
    swiglu(g, u) = silu(g) * u
    relu2(x)     = max(x, 0)^2            (one binary32 multiply; -0 and negatives give +0)
    relu2_glu(g, u) = relu2(g) * u
    residual_add(a, b) = a + b

:class:`ActUnit` implements one of them per instance (``op`` parameter), one element per cycle.
``err`` = NaN/Inf operand, a non-finite result (binary32 overflow: golden raises FormatError) or,
for relu2 / relu2_glu, ``gate > 2^63`` (the golden domain check).
"""

from __future__ import annotations

from amaranth import Cat, Const, Mux

from ..fpu import fadd, fmul, flt, is_nonfinite, f32_bits
from .common import ElementwiseUnit
from .exp import exp_dataflow
from .recip import recip_dataflow

__all__ = ["ACT_OPS", "ActUnit", "sigmoid_dataflow"]

ACT_OPS = ("silu", "swiglu", "relu2", "relu2_glu", "residual_add")
_LATENCY = {"silu": 68, "swiglu": 71, "relu2": 3, "relu2_glu": 6, "residual_add": 3}
ONE_BITS = f32_bits(1.0)
RELU2_MAX_BITS = f32_bits(2.0 ** 63)


def sigmoid_dataflow(p, x):
    """Golden ``sigmoid_approx`` (no checks)."""
    e = exp_dataflow(p, p.comb(lambda v: Cat(v[:31], Const(1, 1)), x))  # exp(-|x|)
    r = recip_dataflow(p, fadd(p, p.const(ONE_BITS, 32), e))
    er = fmul(p, e, r)
    nonneg = p.comb(lambda v: ~v[31] | (v[:31] == 0), x)
    return p.comb(lambda c, u, v: Mux(c, u, v), nonneg, r, er)


class ActUnit(ElementwiseUnit):
    """Element-wise activation stream unit.

    Parameters
    ----------
    op : str
        One of :data:`ACT_OPS`.

    Ports
    -----
    i.payload : {a: 32, b: 32, last}
        ``a`` = x (silu, relu2), gate (swiglu, relu2_glu) or the first addend; ``b`` = up or the
        second addend (ignored by silu / relu2).
    o.payload : {y: 32, err, last}

    Timing
    ------
    One element per cycle; ``LATENCY`` depends on ``op``: silu 68, swiglu 71, relu2 3,
    relu2_glu 6, residual_add 3 (see :data:`_LATENCY`).
    """

    IN_FIELDS = {"a": 32, "b": 32}
    OUT_FIELDS = {"y": 32}

    def __init__(self, op: str):
        if op not in ACT_OPS:
            raise ValueError(f"op must be one of {ACT_OPS}, got {op!r}")
        self.op = op
        self.LATENCY = _LATENCY[op]
        super().__init__()

    def dataflow(self, p, ins):
        a, b = ins["a"], ins["b"]
        op = self.op
        bad_in = p.comb(lambda u, v: is_nonfinite(u) | (is_nonfinite(v) & (op in (
            "swiglu", "relu2_glu", "residual_add"))), a, b)
        if op in ("silu", "swiglu"):
            y = fmul(p, a, sigmoid_dataflow(p, a))
            if op == "swiglu":
                y = fmul(p, y, b)
        elif op in ("relu2", "relu2_glu"):
            pos = p.comb(lambda v: Mux(v[31], 0, v), a)  # max(x, 0) as +0 for x <= 0
            y = fmul(p, pos, pos)
            too_big = flt(p, p.const(RELU2_MAX_BITS, 32), a)
            bad_in = p.comb(lambda u, v: u | v, bad_in, too_big)
            if op == "relu2_glu":
                y = fmul(p, y, b)
        else:
            y = fadd(p, a, b)
        err = p.comb(lambda u, v: u | is_nonfinite(v), bad_in, y)
        return {"y": y, "err": err}
