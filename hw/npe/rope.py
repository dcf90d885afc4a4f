"""NPE RoPE: rotate-half rotary embedding (HF Llama convention), bit-exact with
:func:`ternopu.golden.nonlinear.rope`.

For head dimension ``Dh`` the unit rotates one pair ``(x1, x2) = (x[i], x[i + Dh/2])`` per cycle
with ``c = cos[pos, i]``, ``s = sin[pos, i]`` from the compiler's offline tables
(:func:`ternopu.golden.nonlinear.rope_tables`, streamed beside the activations by the
controller)::

    y1 = (x1 * c) - (x2 * s)        y2 = (x2 * c) + (x1 * s)

four binary32 multiplies and one subtract / one add (RNE, no FMA), exactly the golden order.
``err``: a NaN/Inf operand or a non-finite result (golden: NonFiniteError / FormatError).
"""

from __future__ import annotations

from ..fpu import fadd, fmul, fsub, is_nonfinite
from .common import ElementwiseUnit

__all__ = ["RopeUnit"]


class RopeUnit(ElementwiseUnit):
    """Stream unit rotating one (x1, x2) pair per cycle; ``LATENCY`` = 6.

    Ports: ``i.payload = {x1, x2, c, s: 32 each, last}``,
    ``o.payload = {y1, y2: 32 each, err, last}``. For a ``[H, Dh]`` token the controller sends
    ``H * Dh / 2`` pairs (head-major, ``i`` inner) and writes ``y1`` to ``i``, ``y2`` to
    ``i + Dh/2``. Resources: 4 binary32 multipliers, 2 adders.
    """

    IN_FIELDS = {"x1": 32, "x2": 32, "c": 32, "s": 32}
    OUT_FIELDS = {"y1": 32, "y2": 32}
    LATENCY = 6

    def dataflow(self, p, ins):
        x1, x2, c, s = ins["x1"], ins["x2"], ins["c"], ins["s"]
        y1 = fsub(p, fmul(p, x1, c), fmul(p, x2, s))
        y2 = fadd(p, fmul(p, x2, c), fmul(p, x1, s))
        bad = p.comb(lambda a, b, cc, ss: is_nonfinite(a) | is_nonfinite(b) | is_nonfinite(cc)
                     | is_nonfinite(ss), x1, x2, c, s)
        err = p.comb(lambda e, u, v: e | is_nonfinite(u) | is_nonfinite(v), bad, y1, y2)
        return {"y1": y1, "y2": y2, "err": err}
