"""A minimal streaming unit used to prove the HDL flow (Amaranth -> Verilog -> Verilator/cocotb).

:class:`StreamSum` adds the signed elements of each packet of an input stream and emits one sum
per packet. It is deliberately small, but built the way every ternopu unit is: a
``wiring.Component`` with its signature declared up front, ``amaranth.lib.stream`` ports with
backpressure, validated parameters and latency constants.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamSum"]


class StreamSum(wiring.Component):
    """Sum of each packet of a stream of signed integers.

    Parameters
    ----------
    width : int
        Bit width of the signed input elements (2..64).
    max_len : int
        Largest packet length; sets the accumulator width to ``width + ceil(log2(max_len))``.

    Ports
    -----
    i : In(stream.Signature(StructLayout(data=signed(width), last=1)))
        Elements; ``last`` marks the final element of a packet.
    o : Out(stream.Signature(signed(acc_width)))
        One sum per packet.

    Timing
    ------
    Throughput one element per cycle while ``o`` is not stalled. The sum is valid
    ``LATENCY`` cycle(s) after the ``last`` element is accepted.
    """

    LATENCY = 1

    def __init__(self, width: int = 8, max_len: int = 4096):
        if not isinstance(width, int) or not 2 <= width <= 64:
            raise ValueError(f"width must be an int in [2, 64], got {width!r}")
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.width = width
        self.max_len = max_len
        self.acc_width = width + max(1, (max_len - 1).bit_length())
        layout = data.StructLayout({"data": signed(width), "last": unsigned(1)})
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(signed(self.acc_width))),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self.acc_width))
        # The input is stalled only while a finished sum waits for the consumer.
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            total = acc + self.i.payload.data
            with m.If(self.i.payload.last):
                m.d.sync += [self.o.payload.eq(total), self.o.valid.eq(1), acc.eq(0)]
            with m.Else():
                m.d.sync += acc.eq(total)
        return m
