"""The units that `make lint` and `make synth-estimate` check, each at its default configuration.

A unit is registered with a factory so that importing this module elaborates nothing; the
Verilog of a unit is produced once per run by :func:`verilog_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ternopu.sim.runner import verilog_of

__all__ = ["Unit", "UNITS", "verilog_for"]


@dataclass(frozen=True)
class Unit:
    """One synthesizable unit at a stated configuration."""

    name: str
    top: str
    factory: Callable[[], object]
    description: str
    #: unit must fit within this fraction of the U280's LUTs at its default configuration
    lut_budget: float = 0.5


def _stream_sum():
    from ternopu.hw.smoke import StreamSum

    return StreamSum(width=16, max_len=4096)


UNITS: dict[str, Unit] = {
    u.name: u
    for u in [
        Unit("stream_sum", "stream_sum_top", _stream_sum, "HDL-flow smoke unit, 16-bit, packets <= 4096"),
    ]
}


def verilog_for(unit: Unit) -> str:
    """Verilog text of ``unit`` with its top module named ``unit.top``."""
    return verilog_of(unit.factory(), unit.top)
