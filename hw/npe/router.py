"""Router unit: score + bias vs threshold -> skip bit in the routing bitmask.

Bit-exact with the golden router decision (:meth:`ternopu.golden.model.GoldenModel._skips`)::

    score = qk_bfp(fp16(x), w_router)[0] + bias       (the dot product runs on the PE array;
                                                     this unit does the binary32 add, RNE)
    skip  = score < threshold                         (IEEE compare; threshold -inf never skips)
    layer 0 attention never skips

Bitmask layout: one bit per (token, layer, block), address ``(token * layers + layer) * 2 +
block`` (block 0 = attention, 1 = FFN), i.e. the golden ``bool [tokens, layers, 2]`` mask in
row-major order. A decision is committed to the bitmask when it leaves the unit (``o``
transfer); the controller reads bits through ``rd_addr`` / ``rd_data`` (1-cycle synchronous
read) to skip a block's instructions or to prefetch reused KV one layer ahead.

``err``: a NaN/Inf score or bias, or a non-finite sum (out of contract; the skip bit is still
the IEEE compare of whatever the sum is).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..fpu import StreamPipeline, fadd, f32_lt, is_nonfinite

__all__ = ["Router", "ATTN", "FFN"]

ATTN, FFN = 0, 1


class Router(wiring.Component):
    """Router decisions and the routing bitmask.

    Parameters
    ----------
    max_tokens : int
        Tokens the bitmask holds (>= 1).
    layers : int
        Decoder layers (>= 1).

    Ports
    -----
    threshold : In(32)
        binary32 ``router_threshold`` (static).
    i : In(stream.Signature(StructLayout(score=32, bias=32, token, layer, block=1)))
    o : Out(stream.Signature(StructLayout(skip=1, err=1, token, layer, block=1)))
    rd_addr : In(range(max_tokens * layers * 2)); rd_data : Out(1)
        Bitmask read port, data valid one cycle after the address.

    Timing
    ------
    ``LATENCY`` = 3 (the binary32 add), one decision per cycle.
    Resources: one binary32 adder, a ``max_tokens * layers * 2``-bit memory.
    """

    LATENCY = 3

    def __init__(self, max_tokens: int, layers: int):
        for name, v in (("max_tokens", max_tokens), ("layers", layers)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.max_tokens, self.layers = max_tokens, layers
        self.depth = max_tokens * layers * 2
        tok, lay = range(max_tokens), range(layers)
        super().__init__({
            "threshold": In(32),
            "i": In(stream.Signature(data.StructLayout(
                {"score": 32, "bias": 32, "token": tok, "layer": lay, "block": 1}))),
            "o": Out(stream.Signature(data.StructLayout(
                {"skip": 1, "err": 1, "token": tok, "layer": lay, "block": 1}))),
            "rd_addr": In(range(self.depth)),
            "rd_data": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mask = mask = Memory(shape=1, depth=self.depth, init=[])
        wr = mask.write_port()
        rd = mask.read_port(domain="sync")
        m.d.comb += [rd.addr.eq(self.rd_addr), rd.en.eq(1), self.rd_data.eq(rd.data)]

        sp = StreamPipeline(m, self.i, self.o, "router")
        p = sp.p
        pl = self.i.payload
        total = fadd(p, p.input(pl.score), p.input(pl.bias))
        never = p.input((pl.layer == 0) & (pl.block == ATTN))
        skip = p.comb(lambda t, thr, nv: f32_lt(t, thr) & ~nv, total, p.input(self.threshold),
                      never)
        err = p.comb(lambda t, b: b | is_nonfinite(t), total,
                     p.input(is_nonfinite(pl.score) | is_nonfinite(pl.bias)))
        lat = sp.finish({"skip": skip, "err": err, "token": p.input(pl.token),
                         "layer": p.input(pl.layer), "block": p.input(pl.block)})
        assert lat == self.LATENCY, lat
        o = self.o.payload
        m.d.comb += [
            wr.addr.eq((o.token * self.layers + o.layer) * 2 + o.block),
            wr.data.eq(o.skip),
            wr.en.eq(self.o.valid & self.o.ready),
        ]
        return m
