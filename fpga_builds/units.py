"""The units that `make lint` and `make synth-estimate` check, each at its default configuration.

A unit is registered with a factory so that importing this module elaborates nothing; the
Verilog of a unit is produced once per run by :func:`verilog_for`.

:data:`UNITS` iterates over the default set (``Unit.ci``) that `make lint`, `make synth-estimate`
and CI run; the other units are looked up by name, e.g.
``python -m ternopu.fpga_builds.synth_estimate tlmm_full`` (the full 2432-key TLMM engine: minutes
of elaboration and synthesis).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable

from ternopu.sim.runner import verilog_of

from .aliases import mark_alias_wires

__all__ = ["Unit", "UnitRegistry", "UNITS", "TLMM_CI_LANES", "verilog_for"]


@dataclass(frozen=True)
class Unit:
    """One synthesizable unit at a stated configuration."""

    name: str
    top: str
    factory: Callable[[], object]
    description: str
    #: unit must fit within this fraction of the U280's LUTs at its default configuration
    lut_budget: float = 0.5
    #: part of the default set that `make lint` / `make synth-estimate` (and CI) run; units with
    #: ``ci=False`` run only when named (``python -m ternopu.fpga_builds.synth_estimate NAME``),
    #: because they take minutes or still have open lint findings (see ``note``)
    ci: bool = True
    note: str = ""


def _stream_sum():
    from ternopu.hw.smoke import StreamSum

    return StreamSum(width=16, max_len=4096)


def _instruction_decoder():
    from ternopu.hw.isa import InstructionDecoder

    return InstructionDecoder()


def _csr_block():
    from ternopu.hw.csr import CSRBlock

    return CSRBlock()


def _tlmm_default():
    from ternopu.hw.tlmm import DEFAULT_CONFIG, TLMM

    return TLMM(DEFAULT_CONFIG)


#: The TLMM engine with the default's 19 tables but 8 of its 128 lanes (768-bit beat): the table
#: builder, activation buffer, control and converter are those of the default; lane logic scales
#: linearly with ``lanes``, so the full engine is estimated as table part + 16 x lane part (or run
#: ``tlmm_full`` by name).
TLMM_CI_LANES = 8


def _tlmm_ci():
    from ternopu.hw.tlmm import TLMM, TLMMConfig

    lanes = TLMM_CI_LANES
    return TLMM(TLMMConfig(tables=19, lanes=lanes, beat_bits=-(-5 * 19 * lanes // 8) * 8))


_TLMM_FINDINGS = ("open -Wall findings in hw/tlmm.py / hw/fp32.py (unused lane result_valid, "
                  "unused `running`, padding bits of the key pipeline register, fp32 `packed[31]`): "
                  "benign, but real, so not waived")


class UnitRegistry(Mapping):
    """Units by name. Iteration (and ``len``) covers the default set (``ci=True``); every unit,
    default or not, can be looked up by name, so the tools accept it on the command line."""

    def __init__(self, units):
        self._units = {u.name: u for u in units}

    def __getitem__(self, name: str) -> Unit:
        return self._units[name]

    def __contains__(self, name) -> bool:
        return name in self._units

    def __iter__(self) -> Iterator[str]:
        return (n for n, u in self._units.items() if u.ci)

    def __len__(self) -> int:
        return sum(u.ci for u in self._units.values())

    def all_names(self) -> list[str]:
        """Every registered unit, in registration order."""
        return list(self._units)


UNITS: UnitRegistry = UnitRegistry(
    [
        Unit("stream_sum", "stream_sum_top", _stream_sum, "HDL-flow smoke unit, 16-bit, packets <= 4096"),
        Unit("isa_decoder", "isa_decoder_top", _instruction_decoder,
             "instruction decoder (hw/isa.py), 256-bit words, one register stage"),
        Unit("csr", "csr_top", _csr_block, "AXI4-Lite CSR block (hw/csr.py) with its counter array"),
        Unit("tlmm_ci", "tlmm_ci_top", _tlmm_ci,
             f"TLMM engine, 19 tables x {TLMM_CI_LANES} lanes (default geometry, fewer lanes)",
             ci=False, note=_TLMM_FINDINGS),
        Unit("tlmm_full", "tlmm_full_top", _tlmm_default,
             "TLMM engine, DEFAULT_CONFIG: 19 tables x 128 lanes (2432 keys/cycle), max_k 16384",
             ci=False, note="Verilog generation alone takes ~2 min and yosys far longer; " + _TLMM_FINDINGS),
    ]
)


def verilog_for(unit: Unit) -> str:
    """Verilog text of ``unit`` with its top module named ``unit.top``.

    Pure alias wires are marked for the lint (:mod:`ternopu.fpga_builds.aliases`); the marks are
    comments, so synthesis sees the same netlist.
    """
    return mark_alias_wires(verilog_of(unit.factory(), unit.top))
