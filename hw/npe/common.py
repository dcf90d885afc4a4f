"""Shared plumbing of the NPE units: element-wise stream components and golden constants.

Every element-wise NPE unit is a :class:`ElementwiseUnit`: one input stream, one output stream,
a stall-together pipeline built with :class:`ternopu.hw.fpu.Pipe` (one element per cycle, any
backpressure), an ``err`` bit per output element (the hardware's answer to the golden model's
``NonFiniteError`` / ``FormatError``: the element is out of contract, its value is undefined), and
a ``LATENCY`` constant that elaboration checks against the built dataflow.
"""

from __future__ import annotations

import torch
from amaranth import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..fpu import StreamPipeline

__all__ = ["ElementwiseUnit", "f32_table", "f32_const_bits"]


def f32_table(t: torch.Tensor) -> list[int]:
    """Bit patterns of a golden binary32 LUT (ROM contents)."""
    return (t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).tolist()


def f32_const_bits(t) -> int:
    """Bit pattern of a golden binary32 scalar constant (0-dim tensor or Python float)."""
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=torch.float64).to(torch.float32)
    return int(t.reshape(()).view(torch.int32)) & 0xFFFFFFFF


class ElementwiseUnit(wiring.Component):
    """Base of the one-element-per-cycle NPE units.

    Subclasses define ``IN_FIELDS`` / ``OUT_FIELDS`` (``{name: width}``; ``err`` is added to the
    output), ``LATENCY``, and :meth:`dataflow` (input :class:`~ternopu.hw.fpu.Val` per field ->
    output Val per field, ``err`` included). A ``last`` bit travels with each element untouched
    (row framing for the consumer).

    Ports
    -----
    i : In(stream.Signature(StructLayout(IN_FIELDS + last)))
    o : Out(stream.Signature(StructLayout(OUT_FIELDS + err + last)))
    """

    IN_FIELDS: dict = {}
    OUT_FIELDS: dict = {}
    LATENCY: int = 0

    def __init__(self):
        in_layout = data.StructLayout({**self.IN_FIELDS, "last": 1})
        out_layout = data.StructLayout({**self.OUT_FIELDS, "err": 1, "last": 1})
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(out_layout)),
        })

    def dataflow(self, p, ins: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        sp = StreamPipeline(m, self.i, self.o, type(self).__name__.lower())
        ins = {name: sp.p.input(getattr(self.i.payload, name)) for name in self.IN_FIELDS}
        outs = self.dataflow(sp.p, ins)
        outs["last"] = sp.p.input(self.i.payload.last)
        depth = sp.finish(outs)
        if depth != self.LATENCY:
            raise AssertionError(f"{type(self).__name__}: built latency {depth} != LATENCY "
                                 f"{self.LATENCY}")
        return m
