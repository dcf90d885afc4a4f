"""NPE online softmax: running max / folds / exact fixed-point sum beside QK^T, then normalize.

Bit-exact hardware version of :class:`ternopu.golden.nonlinear.OnlineSoftmax` and
:func:`ternopu.golden.nonlinear.softmax_online` with chunk size ``chunk``:

Pass 1 (port ``s``: the score stream of one row, ``last`` closes it), per chunk of ``chunk``
scores (the last one may be shorter)::

    FILL   store the chunk in a chunk buffer, cmax = max(chunk)            (1 score / cycle)
    REF    m_new = max(m, cmax) (first chunk: cmax); r_new = ceil(m_new)     (fceil)
    FOLD   only if r_new > r (not on the first chunk):
           l_old = (l_old + f32(acc) * 2^-36) * exp_approx(r - r_new);  acc = 0
    DRAIN  acc += round_half_even(exp_approx(s_j - r_new) * 2^36) for the buffered chunk
           (54-bit exact integer accumulator; one score per cycle through the exp pipeline)

After the row: ``l = l_old + f32(acc) * 2^-36`` and ``rl = recip_approx(l)``.

Pass 2 (port ``p_in``: the row's scores again): ``p_j = exp_approx(s_j - r) * rl`` at one score
per cycle (``LATENCY`` cycles).

Errors: a NaN/Inf score or ``|s| > 2^120`` anywhere in pass 1 marks every output of the row
(golden: NonFiniteError / FormatError); pass-2 scores are checked as well. Row lengths up to
``SOFTMAX_MAX_T`` (the accumulator width) are the caller's contract.

Throughput: pass 1 costs ``2 * chunk`` cycles per full chunk plus a fixed overhead per chunk
(REF 3 cycles, the drain pipeline's tail ``DRAIN_TAIL`` cycles, ``FOLD_LATENCY`` cycles when the
reference grows); see docs/npe.md. A second chunk buffer (overlapping FILL with DRAIN) is the
obvious next step.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...golden import nonlinear as gn
from ..fpu import (Pipe, StreamPipeline, Val, f2i, f32_bits, f32_lt, fadd, fceil, fmul, fsub,
                   i2f, is_nonfinite)
from .exp import exp_dataflow
from .recip import recip_dataflow

__all__ = ["OnlineSoftmaxUnit", "ACC_BITS"]

ACC_BITS = 54
"""Exact accumulator width: <= 2^17 terms of <= 2^36 (golden SOFTMAX_MAX_T, SOFTMAX_FRAC_BITS)."""
TERM_BITS = gn.SOFTMAX_FRAC_BITS + 2
MAX_ABS_BITS = f32_bits(gn.SOFTMAX_MAX_ABS_SCORE)


class OnlineSoftmaxUnit(wiring.Component):
    """Online softmax over rows of scores (two passes), bit-exact with the golden model.

    Parameters
    ----------
    chunk : int
        Scores per chunk, 1..SOFTMAX_MAX_CHUNK (golden ``softmax_online(scores, chunk)``).

    Ports
    -----
    s : In(stream.Signature(StructLayout(s=32, last=1)))
        Pass 1 scores (binary32), ``last`` on the row's final score.
    p_in : In(stream.Signature(StructLayout(s=32, last=1)))
        Pass 2: the same scores again; accepted once the row's denominator is known.
    o : Out(stream.Signature(StructLayout(p=32, err=1, last=1)))
        Probabilities, one per pass-2 score, ``last`` copied.

    Timing
    ------
    ``LATENCY`` (pass 2) = 49 cycles at one score per cycle; ``DRAIN_LATENCY`` = 45 (sub, exp,
    fixed-point conversion); ``FOLD_LATENCY`` = 45; ``FINAL_LATENCY`` = 25 (the fold pipeline
    computes the fold and the final reciprocal together: 45 cycles either way).
    """

    LATENCY = 45
    DRAIN_LATENCY = 45
    FOLD_LATENCY = 45

    def __init__(self, chunk: int = gn.SOFTMAX_DEFAULT_CHUNK):
        if not isinstance(chunk, int) or not 1 <= chunk <= gn.SOFTMAX_MAX_CHUNK:
            raise ValueError(f"chunk must be an int in [1, {gn.SOFTMAX_MAX_CHUNK}], got {chunk!r}")
        self.chunk = chunk
        layout = data.StructLayout({"s": 32, "last": 1})
        super().__init__({
            "s": In(stream.Signature(layout)),
            "p_in": In(stream.Signature(layout)),
            "o": Out(stream.Signature(data.StructLayout({"p": 32, "err": 1, "last": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.chunk
        m.submodules.buf = buf = Memory(shape=32, depth=max(c, 2), init=[])
        wr = buf.write_port()
        rd = buf.read_port(domain="sync")

        # ---- row state ------------------------------------------------------------------------
        first = Signal(init=1)      # no chunk of this row processed yet
        mx = Signal(32)             # running max m
        r = Signal(32)              # reference ceil(m)
        r_new = Signal(32)
        acc = Signal(ACC_BITS)
        l_old = Signal(32)
        row_err = Signal()
        row_last = Signal()         # the buffered chunk closes the row
        cmax = Signal(32)
        n = Signal(range(c + 1))    # scores in the buffered chunk
        rl = Signal(32)             # 1 / l of the finished row
        r_fin = Signal(32)
        err_fin = Signal()
        pass2 = Signal()            # pass 2 of a finished row may run

        s_in = self.s.payload.s
        s_bad = is_nonfinite(s_in) | (s_in[:31] > MAX_ABS_BITS)

        # ---- REF: ceil of the new running max (free-running 2-stage pipe) ---------------------
        pr = Pipe(m, Const(1, 1), "ref")
        m_new = Signal(32)
        m.d.comb += m_new.eq(Mux(first | f32_lt(mx, cmax), cmax, mx))
        ref_go = Signal()
        ceil_v = fceil(pr, pr.input(m_new))
        ref_done = pr.at(pr.input(ref_go), ceil_v.stage)

        # ---- FOLD / FINAL pipe ------------------------------------------------------------------
        pf = Pipe(m, Const(1, 1), "fold")
        fold_go = Signal()
        big_l = fadd(pf, pf.input(l_old), i2f(pf, pf.input(acc), -gn.SOFTMAX_FRAC_BITS))
        alpha = exp_dataflow(pf, fsub(pf, pf.input(r), pf.input(r_new)))
        folded = fmul(pf, big_l, alpha)
        recip_l = recip_dataflow(pf, big_l)
        fold_depth = max(folded.stage, recip_l.stage)
        assert fold_depth == self.FOLD_LATENCY, fold_depth
        fold_done = pf.at(pf.input(fold_go), fold_depth)
        folded_s, recip_s = pf.at(folded, fold_depth), pf.at(recip_l, fold_depth)

        # ---- DRAIN pipe: buffer -> exp -> fixed point -> accumulator -------------------------
        pd = Pipe(m, Const(1, 1), "drain")
        rd_issue = Signal()
        rd_valid = Signal()
        m.d.sync += rd_valid.eq(rd_issue)
        sv = pd.input(rd.data)
        term = f2i(pd, exp_dataflow(pd, fsub(pd, sv, Val(r_new, None))), TERM_BITS,
                   0, (1 << TERM_BITS - 1) - 1, scale_exp=gn.SOFTMAX_FRAC_BITS)
        assert term.stage + 1 == self.DRAIN_LATENCY, term.stage
        term_valid = pd.at(pd.input(rd_valid), term.stage)
        landed = Signal(range(c + 1))
        rd_addr = Signal(range(c + 1))
        m.d.comb += [rd.addr.eq(rd_addr), rd.en.eq(1)]

        m.d.sync += [ref_go.eq(0), fold_go.eq(0)]
        with m.If(term_valid):
            m.d.sync += [acc.eq(acc + term.sig.as_unsigned()), landed.eq(landed + 1)]

        with m.FSM(name="sm"):
            with m.State("FILL"):
                m.d.comb += [self.s.ready.eq(1), wr.addr.eq(n), wr.data.eq(s_in),
                             wr.en.eq(self.s.valid)]
                with m.If(self.s.valid):
                    m.d.sync += [n.eq(n + 1), row_err.eq(row_err | s_bad),
                                 cmax.eq(Mux((n == 0) | f32_lt(cmax, s_in), s_in, cmax))]
                    with m.If(self.s.payload.last | (n == c - 1)):
                        m.d.sync += [row_last.eq(self.s.payload.last), ref_go.eq(1)]
                        m.next = "REF"
            with m.State("REF"):
                with m.If(ref_done):
                    grew = f32_lt(r, ceil_v.sig)
                    m.d.sync += [mx.eq(m_new), r_new.eq(ceil_v.sig)]
                    with m.If(first):
                        m.d.sync += [acc.eq(0), l_old.eq(0), first.eq(0)]
                        m.next = "DRAIN"
                    with m.Elif(grew):
                        m.d.sync += fold_go.eq(1)
                        m.next = "FOLD"
                    with m.Else():
                        m.next = "DRAIN"
            with m.State("FOLD"):
                with m.If(fold_done):
                    m.d.sync += [l_old.eq(folded_s), acc.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += rd_issue.eq(rd_addr < n)
                with m.If(rd_addr < n):
                    m.d.sync += rd_addr.eq(rd_addr + 1)
                with m.If(landed == n):
                    m.d.sync += [r.eq(r_new), rd_addr.eq(0), landed.eq(0), n.eq(0)]
                    with m.If(row_last):
                        m.d.sync += fold_go.eq(1)
                        m.next = "FINAL"
                    with m.Else():
                        m.next = "FILL"
            with m.State("FINAL"):
                with m.If(fold_done):
                    m.d.sync += [rl.eq(recip_s), r_fin.eq(r), err_fin.eq(row_err), pass2.eq(1),
                                 first.eq(1), row_err.eq(0)]
                    m.next = "WAIT2"
            with m.State("WAIT2"):
                with m.If(~pass2):
                    m.next = "FILL"

        # ---- pass 2 ----------------------------------------------------------------------------
        sp = StreamPipeline(m, self.p_in, self.o, "prob", gate=pass2)
        p = sp.p
        s2 = p.input(self.p_in.payload.s)
        prob = fmul(p, exp_dataflow(p, fsub(p, s2, p.input(r_fin))), p.input(rl))
        s2_in = self.p_in.payload.s
        err = p.input(err_fin | is_nonfinite(s2_in) | (s2_in[:31] > MAX_ABS_BITS))
        lat = sp.finish({"p": prob, "err": err, "last": p.input(self.p_in.payload.last)})
        assert lat == self.LATENCY, lat
        with m.If(self.p_in.valid & self.p_in.ready & self.p_in.payload.last):
            m.d.sync += pass2.eq(0)
        return m
