"""The units that `make lint` and `make synth-estimate` check.

A unit is registered with a factory so that importing this module elaborates nothing; the
Verilog of a unit is produced once per run by :func:`verilog_for`.

Two sets:

* the **CI set** (``Unit.ci``; what iterating :data:`UNITS` gives, and what `make lint` / `make
  synth-estimate` run by default): small configurations, a few minutes of Yosys on two cores;
* the **full set** (``Unit.full``; ``FULL=1``, :func:`full_set`): the default configurations, the
  top-level overlay at the U280's 32 HBM ports included. Elaboration and synthesis of the big
  engines (``tlmm_full``, ``pe_default``) take many minutes each.

Every unit can also be named on the command line (``python -m ternopu.fpga_builds.lint pe_mid``).
The units of :data:`DEFAULT_DESIGN` together make the default U280 configuration; their LUT sum
is checked against :data:`DESIGN_LUT_BUDGET` of the U280 when all of them were synthesized.

The overlay is built by :func:`make_overlay` only, so that the engine slots it contains (stubs
today, the integrated units later) are switched in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable

from ternopu.sim.runner import verilog_of

from .aliases import mark_alias_wires

__all__ = ["Unit", "UnitRegistry", "UNITS", "TLMM_CI_LANES", "DEFAULT_DESIGN", "DESIGN_LUT_BUDGET",
           "make_overlay", "overlay_slots", "full_set", "verilog_for"]


@dataclass(frozen=True)
class Unit:
    """One synthesizable unit at a stated configuration."""

    name: str
    top: str
    factory: Callable[[], object]
    description: str
    #: unit must fit within this fraction of the U280's LUTs
    lut_budget: float = 0.5
    #: part of the CI set (small configurations, minutes in total)
    ci: bool = False
    #: part of the full set (``FULL=1``: default configurations)
    full: bool = True
    #: open -Wall findings in files this flow does not own (the lint skips the unit unless it is
    #: named, and says so); empty when the unit lints clean
    open_findings: str = ""
    note: str = ""


# ---- control, memory system -------------------------------------------------------------------

def _stream_sum():
    from ternopu.hw.smoke import StreamSum

    return StreamSum(width=16, max_len=4096)


def _instruction_decoder():
    from ternopu.hw.isa import InstructionDecoder

    return InstructionDecoder()


def _csr_block():
    from ternopu.hw.csr import CSRBlock

    return CSRBlock()


def _controller():
    from ternopu.hw.controller import Controller

    return Controller()


def _dma_port():
    from ternopu.hw.dma import DmaPort

    return DmaPort()


# ---- the overlay ------------------------------------------------------------------------------

def make_overlay(config=None):
    """The top-level overlay for ``config`` (default: U280, 32 HBM ports) as the flows build it.

    The one place that decides which engine units fill the overlay's slots: today
    ``ternopu.hw.overlay.Overlay``'s defaults (LoadUnit, StoreUnit and timing stubs for TLMM, PE
    and NPE); pass the integrated units here once they exist. :func:`overlay_slots` reports what
    was built.
    """
    from ternopu.hw.overlay import Overlay
    from ternopu.hw.overlay_config import OverlayConfig

    return Overlay(config if config is not None else OverlayConfig())


def overlay_slots(top) -> dict[str, str]:
    """``{slot: class name}`` of an overlay's engine slots (for reports)."""
    slots = getattr(top, "slots", None) or {}
    return {getattr(k, "name", str(k)): type(v).__name__ for k, v in slots.items()}


def _overlay_default():
    return make_overlay()


#: HBM ports of the CI overlay: every per-port structure (DMA, arbiters, counters) is present;
#: the 32-port default is ``overlay`` in the full set.
OVERLAY_CI_PORTS = 2


def _overlay_ci():
    from ternopu.hw.overlay_config import OverlayConfig

    return make_overlay(OverlayConfig(hbm_ports=OVERLAY_CI_PORTS))


_OVERLAY_FINDINGS = (
    "hw/overlay.py LoadUnit/StoreUnit leave the DMA command's `stride` field undriven: Yosys "
    "writes the constant as `always @* payload[99:66] = 0;` (ALWNEVER + UNDRIVEN, and an "
    "event-driven simulator never runs that block); fix: drive `stride` (or the whole payload) "
    "in the same comb domain as the other fields")


# ---- TLMM ------------------------------------------------------------------------------------

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


# ---- PE array, dequant -------------------------------------------------------------------------

def _pe(name):
    def make():
        from ternopu.hw import pe_array

        return pe_array.PEArray(getattr(pe_array, name))
    return make


def _dequant(rows, lanes):
    def make():
        from ternopu.hw.dequant import Int4Dequant

        return Int4Dequant(rows, lanes)
    return make


_PE_FINDINGS = (
    "hw/pe_array.py (not owned by the FPGA flow): `packed[31]` of ScaledToFloat32 and Float32Add "
    "is never read (declare `packed = Signal(31)`: the exponent check already catches a carry out "
    "of an all-ones field, as in hw/fp32.py Float32Mul)")


# ---- NPE ---------------------------------------------------------------------------------------

def _npe(cls, *args):
    def make():
        from ternopu.hw import npe

        return getattr(npe, cls)(*args)
    return make


def _fdiv():
    from ternopu.hw.fpu import Float32Div

    return Float32Div()


_NPE_UNITS = [
    # name, class, args, description, in CI (Yosys seconds on one core, measured)
    ("npe_exp", "ExpUnit", (), "exp_approx, 1 elem/cycle", True),
    ("npe_recip", "RecipUnit", (), "recip_approx, 1 elem/cycle", True),
    ("npe_rsqrt", "RsqrtUnit", (), "rsqrt_approx, 1 elem/cycle", False),
    ("npe_rmsnorm", "RMSNorm", (), "RMSNorm: exact sum of squares + normalize pass", False),
    ("npe_softmax", "OnlineSoftmaxUnit", (), "online softmax (running max, folds, drain, probs)", False),
    ("npe_act_swiglu", "ActUnit", ("swiglu",), "SiLU-gated FFN activation", False),
    ("npe_act_relu2_glu", "ActUnit", ("relu2_glu",), "ReLU^2-gated FFN activation", True),
    ("npe_act_residual_add", "ActUnit", ("residual_add",), "residual add", True),
    ("npe_rope", "RopeUnit", (), "rotate-half RoPE", False),
    ("npe_act_quant", "ActQuant", (), "per-token INT8 activation quantization (with divider)", True),
    ("npe_to_fp16", "ToFp16", (), "binary32 -> binary16", True),
    ("npe_router", "Router", (64, 32), "router score + threshold -> bitmask (64 tokens x 32 layers)", True),
]

#: The units that make up the default U280 configuration; their LUT sum must stay within
#: :data:`DESIGN_LUT_BUDGET` of the U280 (issue #7: at most half, SkipOPU used 98.85%).
DEFAULT_DESIGN = ("overlay", "tlmm_full", "pe_default", "npe_rmsnorm", "npe_softmax",
                  "npe_act_swiglu", "npe_act_relu2_glu", "npe_act_residual_add", "npe_rope",
                  "npe_act_quant", "npe_router")
DESIGN_LUT_BUDGET = 0.5


class UnitRegistry(Mapping):
    """Units by name. Iteration (and ``len``) covers the CI set (``ci=True``); every unit,
    CI or not, can be looked up by name, so the tools accept it on the command line."""

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

    def full_names(self) -> list[str]:
        """The full set (``FULL=1``), in registration order."""
        return [n for n, u in self._units.items() if u.full]


UNITS: UnitRegistry = UnitRegistry(
    [
        Unit("stream_sum", "stream_sum_top", _stream_sum, "HDL-flow smoke unit, 16-bit, packets <= 4096",
             ci=True, full=False),
        Unit("isa_decoder", "isa_decoder_top", _instruction_decoder,
             "instruction decoder (hw/isa.py), 256-bit words, one register stage", ci=True),
        Unit("csr", "csr_top", _csr_block, "AXI4-Lite CSR block (hw/csr.py) with its counter array", ci=True),
        Unit("controller", "controller_top", _controller,
             "controller (hw/controller.py): fetch, decode, unit queues, tokens, skips", ci=True),
        Unit("dma_port", "dma_port_top", _dma_port,
             "one HBM port: read + write DMA, AXI4 256-bit (hw/dma.py DmaPort)", ci=True),
        Unit("overlay_ci", "overlay_ci_top", _overlay_ci,
             f"overlay top, {OVERLAY_CI_PORTS} HBM ports, engine slots as built by make_overlay()",
             ci=True, full=False, open_findings=_OVERLAY_FINDINGS),
        Unit("overlay", "overlay_top", _overlay_default,
             "overlay top, default U280 OverlayConfig (32 HBM ports), engine slots as built by make_overlay()",
             open_findings=_OVERLAY_FINDINGS),
        Unit("tlmm_ci", "tlmm_ci_top", _tlmm_ci,
             f"TLMM engine, 19 tables x {TLMM_CI_LANES} lanes (default geometry, fewer lanes)", ci=True),
        Unit("tlmm_full", "tlmm_full_top", _tlmm_default,
             "TLMM engine, DEFAULT_CONFIG: 19 tables x 128 lanes (2432 keys/cycle), max_k 16384",
             note="Verilog generation alone takes ~2 min and yosys far longer"),
        Unit("pe_small", "pe_small_top", _pe("SMALL_CONFIG"),
             "PE array SMALL_CONFIG: 8 x 4 DSP columns, 8 lanes", ci=True, full=False,
             open_findings=_PE_FINDINGS),
        Unit("pe_mid", "pe_mid_top", _pe("MID_CONFIG"),
             "PE array MID_CONFIG: 8 x 16 DSPs, 32 lanes, Llama-2-7B shapes", open_findings=_PE_FINDINGS),
        Unit("pe_default", "pe_default_top", _pe("DEFAULT_CONFIG"),
             "PE array DEFAULT_CONFIG: 16 x 128 DSP48E2, 256 lanes, 32 reconstruction units",
             open_findings=_PE_FINDINGS),
        Unit("dequant_ci", "dequant_ci_top", _dequant(8, 32), "INT4 GPTQ dequant stream, 8 rows x 32 lanes",
             ci=True, full=False),
        Unit("dequant", "dequant_top", _dequant(16, 256),
             "INT4 GPTQ dequant stream at the PE default geometry, 16 rows x 256 lanes (inside pe_default)"),
        Unit("fdiv", "fdiv_top", _fdiv, "iterative binary32 divider (hw/fpu.py Float32Div)", ci=True, full=False),
        *(Unit(n, f"{n}_top", _npe(cls, *args), f"NPE: {d}", ci=ci) for n, cls, args, d, ci in _NPE_UNITS),
    ]
)


def full_set() -> list[str]:
    """Names of the full set (``FULL=1``)."""
    return UNITS.full_names()


def verilog_for(unit: Unit) -> str:
    """Verilog text of ``unit`` with its top module named ``unit.top``.

    Pure alias wires are marked for the lint (:mod:`ternopu.fpga_builds.aliases`); the marks are
    comments, so synthesis sees the same netlist.
    """
    return mark_alias_wires(verilog_of(unit.factory(), unit.top))
