"""NPE RMSNorm: the exact sum of squares beside a stream, then the normalize pass.

Bit-exact hardware version of :func:`ternopu.golden.nonlinear.rmsnorm` with the reduction of
:class:`ternopu.golden.nonlinear.SumSquares`:

Reduction (port ``sq``, observes the row while a neighbouring unit streams it)::

    sq_j  = x_j * x_j                          binary32 RNE (fmul, subnormal results kept)
    fx_j  = floor(sq_j / 2^-62)                exact fixed point (shift), < 2^111
    acc  += fx_j                               128-bit integer: exact, order independent

Finalize (once per row, ``FINALIZE_LATENCY`` cycles after the row's last square lands)::

    S = binary32(acc * 2^-62)  (one RNE)   mean = S * inv_d   v = mean + eps   r = rsqrt_approx(v)

Normalize pass (port ``x``, one element per cycle once ``r`` is known)::

    y_j = (x_j * r) * w_j                      two binary32 multiplies

``inv_d`` = binary32(1/D) and ``eps`` = binary32(eps) are configuration inputs (the compiler
computes them offline exactly like the golden model: ``_c(1/D)``, ``_c(eps)``); they must be
stable while a row is finalized.

Errors: ``o.payload.err`` is set on every output element of a row in which the reduction saw a
NaN/Inf or ``|x| > 2^24`` (golden: NonFiniteError / FormatError), and on elements whose ``x`` or
``w`` is non-finite or whose result overflows binary32.

Sequencing: one result slot. The reduction may run ahead by one row: the last element of row
``k+1`` is held at the accumulator until the normalize pass of row ``k`` has taken its last
element. Row length is framed by ``last`` on both streams (``D <= RMS_MAX_D`` is the caller's
contract, as in the golden model).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...golden import nonlinear as gn
from ..fpu import Pipe, StreamPipeline, Val, fadd, fmul, i2f, is_nonfinite, f32_bits
from .rsqrt import rsqrt_dataflow

__all__ = ["RMSNorm", "SS_ACC_BITS"]

SS_ACC_BITS = gn.SS_LIMB_BITS * gn.SS_NUM_LIMBS
"""Width of the exact sum-of-squares accumulator (128, LSB 2^SS_LSB_EXP)."""
MAX_ABS_BITS = f32_bits(gn.RMS_MAX_ABS_INPUT)


def square_to_fixed(sq: Signal) -> Signal:
    """Comb: ``floor(sq / 2^SS_LSB_EXP)`` of a non-negative binary32 pattern, 128 bits."""
    be = sq[23:31]
    mant = Cat(sq[:23], be != 0)
    # value / 2^-62 = mant * 2^(be - 88) (normal; subnormal squares are < 2^-126 and truncate
    # to 0). Shift left by be - 64 >= 0 and drop 24 bits: this covers the right shifts of up to
    # 24 places too (be < 64 gives 0 anyway).
    amount = Mux(be > 64, be - 64, 0)
    amount_c = Mux(amount > 127, 127, amount)
    wide = mant << amount_c[:7]
    return Mux(be >= 64, wide[24:24 + SS_ACC_BITS], 0)


class RMSNorm(wiring.Component):
    """RMSNorm unit (reduction + finalize + normalize pass), bit-exact with the golden model.

    Ports
    -----
    inv_d, eps : In(32)
        binary32 configuration (see the module docstring).
    sq : In(stream.Signature(StructLayout(x=32, last=1)))
        Elements observed for the sum of squares; ``last`` closes a row. One per cycle.
    x : In(stream.Signature(StructLayout(x=32, w=32, last=1)))
        Normalize pass: the same row again with the weights; accepted once ``r`` is ready.
    o : Out(stream.Signature(StructLayout(y=32, err=1, last=1)))

    Timing
    ------
    ``SQ_LATENCY`` = 4 (square + fixed-point shift) before an element lands in the accumulator;
    ``FINALIZE_LATENCY`` = 36 from the row's last accumulation to ``r`` (i2f 2, fmul 3, fadd 3,
    rsqrt 28); ``LATENCY`` = 6 for the normalize pass (two multiplies). One element per cycle on
    both streams. Resources: 1 + 7 + 2 + 1 binary32 multipliers, a 128-bit accumulator, a
    128-bit normalizing shifter (finalize).
    """

    SQ_LATENCY = 4
    FINALIZE_LATENCY = 36
    LATENCY = 6

    def __init__(self):
        super().__init__({
            "inv_d": In(32),
            "eps": In(32),
            "sq": In(stream.Signature(data.StructLayout({"x": 32, "last": 1}))),
            "x": In(stream.Signature(data.StructLayout({"x": 32, "w": 32, "last": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"y": 32, "err": 1, "last": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        slot_busy = Signal()    # a row has been finalized (or is being) and not yet normalized
        r_valid = Signal()
        r_val = Signal(32)
        r_err = Signal()

        # ---- reduction pipeline (stalls only when a row end cannot start its finalize) -------
        en_sq = Signal()
        ps = Pipe(m, en_sq, "ss")
        x = ps.input(self.sq.payload.x)
        sqv = fmul(ps, x, x)
        fixed = ps.reg(square_to_fixed(ps.at(sqv, sqv.stage)), sqv.stage, "fx")
        bad = ps.input(is_nonfinite(self.sq.payload.x) | (self.sq.payload.x[:31] > MAX_ABS_BITS))
        depth = fixed.stage
        assert depth == self.SQ_LATENCY
        v_tail = ps.at(ps.input(self.sq.valid), depth)
        last_tail = ps.at(ps.input(self.sq.payload.last), depth)
        bad_tail = ps.at(bad, depth)
        fx_tail = fixed.sig
        blocked = v_tail & last_tail & slot_busy
        m.d.comb += [en_sq.eq(~blocked), self.sq.ready.eq(en_sq)]

        acc = Signal(SS_ACC_BITS)
        row_bad = Signal()
        fin_acc = Signal(SS_ACC_BITS)
        fin_bad = Signal()
        fin_go = Signal()
        m.d.sync += fin_go.eq(0)
        with m.If(en_sq & v_tail):
            with m.If(last_tail):
                m.d.sync += [fin_acc.eq(acc + fx_tail), fin_bad.eq(row_bad | bad_tail),
                             fin_go.eq(1), acc.eq(0), row_bad.eq(0), slot_busy.eq(1)]
            with m.Else():
                m.d.sync += [acc.eq(acc + fx_tail), row_bad.eq(row_bad | bad_tail)]

        # ---- finalize pipeline (free running; one token per row) -----------------------------
        pf = Pipe(m, Const(1, 1), "fin")
        s32 = i2f(pf, pf.input(fin_acc), gn.SS_LSB_EXP)
        mean = fmul(pf, s32, Val(self.inv_d, None))
        v = fadd(pf, mean, Val(self.eps, None))
        r = rsqrt_dataflow(pf, v)
        assert r.stage == self.FINALIZE_LATENCY, r.stage
        done = pf.at(pf.input(fin_go), r.stage)
        bad_v = pf.at(pf.input(fin_bad), r.stage)
        # v must be a positive normal number for rsqrt (eps >= 2^-30 guarantees it)
        v_bad = pf.at(pf.comb(lambda t: (t[23:31] == 0) | is_nonfinite(t) | t[31], v), r.stage)
        with m.If(done):
            m.d.sync += [r_val.eq(r.sig), r_err.eq(bad_v | v_bad), r_valid.eq(1)]

        # ---- normalize pass ------------------------------------------------------------------
        sp = StreamPipeline(m, self.x, self.o, "norm", gate=r_valid)
        p = sp.p
        xv, wv = p.input(self.x.payload.x), p.input(self.x.payload.w)
        y = fmul(p, fmul(p, xv, p.input(r_val)), wv)
        err_in = p.input(r_err | is_nonfinite(self.x.payload.x) | is_nonfinite(self.x.payload.w))
        err = p.comb(lambda e, t: e | is_nonfinite(t), err_in, y)
        lat = sp.finish({"y": y, "err": err, "last": p.input(self.x.payload.last)})
        assert lat == self.LATENCY, lat
        with m.If(self.x.valid & self.x.ready & self.x.payload.last):
            m.d.sync += [r_valid.eq(0), slot_busy.eq(0)]
        return m
