"""NPE INT8 activation quantization (per token) and binary32 -> binary16 conversion.

:class:`ActQuant` is the bit-exact hardware version of :func:`ternopu.golden.bitnet.int8_act_quant`:

Reduction (port ``obs``, observes the row while it streams past)::

    amax = max_j |x_j|            exact (integer compare of the magnitude bits)
    amax = max(amax, binary32(1e-5))

Division (once per row, :class:`ternopu.hw.fpu.Float32Div`, correctly rounded)::

    inv = binary32(127) / amax

Quantize pass (port ``x``, one element per cycle once ``inv`` is known)::

    xq_j = clamp(round_half_even(x_j * inv), -128, 127)     (one binary32 multiply, f2i)

Every output element carries the row's ``amax`` (the TLMM's ``out_scale`` input), so the
consumer can pick it up with ``last``. ``err`` marks rows with a NaN/Inf (golden: NonFiniteError).

:class:`ToFp16` is the element-wise golden ``to_fp16_sat`` (clamp to +-65504, RNE to binary16).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...golden import bitnet as gb
from ..fpu import Float32Div, StreamPipeline, f2h, f2i, fmul, is_nonfinite, f32_bits
from .common import ElementwiseUnit

__all__ = ["ActQuant", "ToFp16", "SCALE_MIN_BITS", "QRANGE_BITS"]

SCALE_MIN_BITS = int(gb._SCALE_MIN_F32.view(__import__("torch").int32)) & 0xFFFFFFFF
"""binary32(1e-5), the golden amax floor."""
QRANGE_BITS = f32_bits(float(gb.ACT_QRANGE))
"""binary32(127)."""


class ActQuant(wiring.Component):
    """Per-token absmax INT8 quantizer (reduction + one division + quantize pass).

    Ports
    -----
    obs : In(stream.Signature(StructLayout(x=32, last=1)))
        Row observed for ``amax``; ``last`` closes it.
    x : In(stream.Signature(StructLayout(x=32, last=1)))
        Quantize pass (the same row again); accepted once ``inv`` is ready.
    o : Out(stream.Signature(StructLayout(q=signed(8), amax=32, err=1, last=1)))

    Timing
    ------
    ``obs``: one element per cycle, the row's amax is final 1 cycle after its last element;
    then the divider takes ``Float32Div.LATENCY`` = 29 cycles; the quantize pass runs at one
    element per cycle with ``LATENCY`` = 5 (fmul 3 + f2i 2). One result slot: the next row's
    last ``obs`` element waits until the current row's quantize pass has taken its last element.
    """

    LATENCY = 5

    def __init__(self):
        super().__init__({
            "obs": In(stream.Signature(data.StructLayout({"x": 32, "last": 1}))),
            "x": In(stream.Signature(data.StructLayout({"x": 32, "last": 1}))),
            "o": Out(stream.Signature(data.StructLayout(
                {"q": signed(8), "amax": 32, "err": 1, "last": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.div = div = Float32Div()
        busy = Signal()        # a row's amax went to the divider and its quantize pass is not done
        inv_valid = Signal()
        inv = Signal(32)
        inv_err = Signal()
        amax = Signal(32)
        row_amax = Signal(32)  # running max of |x| (magnitude bits), 0 at row start
        row_bad = Signal()
        fin_bad = Signal()
        div_req = Signal()

        mag = Signal(31)
        m.d.comb += mag.eq(self.obs.payload.x[:31])
        new_max = Mux(mag > row_amax, mag, row_amax)
        bad = is_nonfinite(self.obs.payload.x)
        m.d.comb += self.obs.ready.eq(~(self.obs.payload.last & busy))
        with m.If(self.obs.valid & self.obs.ready):
            with m.If(self.obs.payload.last):
                floored = Mux(new_max < SCALE_MIN_BITS, SCALE_MIN_BITS, new_max)
                m.d.sync += [amax.eq(floored), fin_bad.eq(row_bad | bad), row_amax.eq(0),
                             row_bad.eq(0), busy.eq(1), div_req.eq(1)]
            with m.Else():
                m.d.sync += [row_amax.eq(new_max), row_bad.eq(row_bad | bad)]

        m.d.comb += [div.i.valid.eq(div_req), div.i.payload.a.eq(QRANGE_BITS),
                     div.i.payload.b.eq(amax), div.o.ready.eq(1)]
        with m.If(div.i.ready & div_req):
            m.d.sync += div_req.eq(0)
        with m.If(div.o.valid):
            m.d.sync += [inv.eq(div.o.payload.q), inv_valid.eq(1),
                         inv_err.eq(fin_bad | div.o.payload.err)]

        sp = StreamPipeline(m, self.x, self.o, "quant", gate=inv_valid)
        p = sp.p
        xv = p.input(self.x.payload.x)
        q = f2i(p, fmul(p, xv, p.input(inv)), 8, -128, 127)
        err = p.input(inv_err | is_nonfinite(self.x.payload.x))
        lat = sp.finish({"q": q, "amax": p.input(amax), "err": err,
                         "last": p.input(self.x.payload.last)})
        assert lat == self.LATENCY, lat
        with m.If(self.x.valid & self.x.ready & self.x.payload.last):
            m.d.sync += [inv_valid.eq(0), busy.eq(0)]
        return m


class ToFp16(ElementwiseUnit):
    """Element-wise binary32 -> binary16 (golden ``to_fp16_sat``): ``LATENCY`` = 2.

    Ports: ``i.payload = {x: 32, last}``, ``o.payload = {h: 16, err, last}``;
    ``err`` = NaN/Inf input (golden: NonFiniteError).
    """

    IN_FIELDS = {"x": 32}
    OUT_FIELDS = {"h": 16}
    LATENCY = 2

    def dataflow(self, p, ins):
        x = ins["x"]
        return {"h": f2h(p, x), "err": p.comb(is_nonfinite, x)}
