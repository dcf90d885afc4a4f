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

The overlay is built by :func:`make_overlay` only: the integrated overlay, its engine slots filled
by the real execution units of :func:`ternopu.hw.units.default_units` (the mapping the Verilator
backend simulates), at the U280 engine geometries (``overlay``, full set) or at the small engines
of the Verilator layer tests (``overlay_ci``, CI set). The bitstream flow
(:data:`ternopu.fpga_builds.bitstream.DEFAULT_TOP`) builds it with the same function.
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

#: Engine geometries :func:`make_overlay` accepts by name (:func:`engine_configs`).
ENGINES = ("default", "ci")


def engine_configs(engines="default"):
    """``(TLMMConfig, PEConfig)`` of the overlay's TLMM and PE engines.

    Parameters
    ----------
    engines : {"default", "ci"} or tuple of (TLMMConfig, PEConfig)
        ``"default"``: the U280 engines (``ternopu.hw.tlmm.DEFAULT_CONFIG``,
        ``ternopu.hw.pe_array.DEFAULT_CONFIG``). ``"ci"``: the small engines with which
        ``tests/sim/test_overlay_layers.py`` runs two decoder layers bit-exact in Verilator
        (TLMM 3 tables x 8 lanes, 768-bit beat; PE 8 x 4 DSPs, group 32; both up to
        ``max_k = 512``, ``max_n = 256``). A pair is used as given.

    Returns
    -------
    tuple of (TLMMConfig, PEConfig)

    Raises
    ------
    ConfigError
        ``engines`` is neither a known name nor a ``(TLMMConfig, PEConfig)`` pair.
    """
    from ternopu.golden.errors import ConfigError
    from ternopu.hw import pe_array, tlmm

    if isinstance(engines, str):
        if engines == "default":
            return tlmm.DEFAULT_CONFIG, pe_array.DEFAULT_CONFIG
        if engines == "ci":
            from ternopu.hw.units import SMALL_ENGINES

            return SMALL_ENGINES
        raise ConfigError(f"make_overlay: unknown engines {engines!r}; expected one of {list(ENGINES)} "
                          f"or a (TLMMConfig, PEConfig) pair")
    if (isinstance(engines, tuple) and len(engines) == 2 and isinstance(engines[0], tlmm.TLMMConfig)
            and isinstance(engines[1], pe_array.PEConfig)):
        return engines
    raise ConfigError(f"make_overlay: engines must be one of {list(ENGINES)} or a (TLMMConfig, PEConfig) "
                      f"pair, got {engines!r}")


def make_overlay(config=None, engines="default"):
    """The integrated overlay top for ``config`` as every flow builds it.

    The one place that decides what fills the overlay's engine slots, for `make lint`,
    `make synth-estimate` and the U280 / V80 build directories (``bitstream.DEFAULT_TOP``): the
    real execution units of :func:`ternopu.hw.units.default_units` (LoadUnit; StoreUnit +
    KV_APPEND + MASK_STORE; TLMMUnit; PE_LINEAR + PE_ATTN + ROUTER; NPEUnit), the same mapping
    the Verilator backend simulates. :func:`overlay_slots` reports what was built.

    Parameters
    ----------
    config : OverlayConfig, optional
        Board-level parameters (default ``OverlayConfig()``: U280, 32 HBM ports).
    engines : {"default", "ci"} or tuple of (TLMMConfig, PEConfig)
        TLMM and PE engine geometries (:func:`engine_configs`); ``"default"`` (the U280 engines)
        unless given.

    Returns
    -------
    ternopu.hw.overlay.Overlay

    Raises
    ------
    ConfigError
        Bad ``engines`` (:func:`engine_configs`) or a configuration the overlay or a unit rejects.
    """
    from ternopu.hw.overlay import Overlay
    from ternopu.hw.overlay_config import OverlayConfig
    from ternopu.hw.units import default_units

    tlmm, pe = engine_configs(engines)
    return Overlay(config if config is not None else OverlayConfig(), units=default_units(tlmm, pe))


def make_overlay_small_engines(config=None):
    """:func:`make_overlay` with the small (``"ci"``) engines: every slot, port and unit of the
    integrated overlay at ``config``'s port count, small enough to convert to Verilog in minutes
    (the flow checks in CI use it as ``--top ternopu.fpga_builds.units:make_overlay_small_engines``;
    the default engines take far longer to convert and are left to ``make fpga-sources``)."""
    return make_overlay(config, engines="ci")


def overlay_slots(top) -> dict[str, str]:
    """``{slot: class name}`` of an overlay's engine slots (for reports).

    A slot that multiplexes several units (:class:`ternopu.hw.unit_mux.UnitMux`) is shown with
    its units: ``"UnitMux[PELinearUnit, PEAttnUnit, RouterUnit]"``.
    """
    def name(v):
        subs = getattr(v, "units", None)
        if isinstance(subs, list) and subs:
            return f"{type(v).__name__}[{', '.join(type(u).__name__ for u in subs)}]"
        return type(v).__name__

    slots = getattr(top, "slots", None) or {}
    return {getattr(k, "name", str(k)): name(v) for k, v in slots.items()}


def _overlay_default():
    return make_overlay()


#: HBM ports of the CI overlay: every per-port structure (DMA, arbiters, counters) is present;
#: the 32-port default is ``overlay`` in the full set.
OVERLAY_CI_PORTS = 2


def _overlay_ci():
    from ternopu.hw.overlay_config import OverlayConfig

    return make_overlay(OverlayConfig(hbm_ports=OVERLAY_CI_PORTS), engines="ci")


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
#: :data:`DESIGN_LUT_BUDGET` of the U280 (issue #7: at most half, SkipOPU used 98.85%). The
#: integrated ``overlay`` holds every engine (TLMM, PE array, NPE units, router, KV units), so it
#: is the whole design; the engine units of the full set (``tlmm_full``, ``pe_default``, the NPE
#: units) are parts of it, synthesized on their own for per-engine figures, and are not added.
DEFAULT_DESIGN = ("overlay",)
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
             f"integrated overlay (make_overlay), {OVERLAY_CI_PORTS} HBM ports, small engines: TLMM 3 tables "
             f"x 8 lanes, PE 8 x 4 DSPs (those of tests/sim/test_overlay_layers.py)",
             ci=True, full=False),
        Unit("overlay", "overlay_top", _overlay_default,
             "integrated overlay (make_overlay), default U280 OverlayConfig (32 HBM ports), default TLMM "
             "(19 x 128) and PE (16 x 128 DSPs) engines: the whole default design",
             note="elaborates tlmm_full and pe_default inside: Verilog generation alone takes many minutes"),
        Unit("tlmm_ci", "tlmm_ci_top", _tlmm_ci,
             f"TLMM engine, 19 tables x {TLMM_CI_LANES} lanes (default geometry, fewer lanes)", ci=True),
        Unit("tlmm_full", "tlmm_full_top", _tlmm_default,
             "TLMM engine, DEFAULT_CONFIG: 19 tables x 128 lanes (2432 keys/cycle), max_k 16384",
             note="Verilog generation alone takes ~2 min and yosys far longer"),
        Unit("pe_small", "pe_small_top", _pe("SMALL_CONFIG"),
             "PE array SMALL_CONFIG: 8 x 4 DSP columns, 8 lanes", ci=True, full=False),
        Unit("pe_mid", "pe_mid_top", _pe("MID_CONFIG"),
             "PE array MID_CONFIG: 8 x 16 DSPs, 32 lanes, Llama-2-7B shapes"),
        Unit("pe_default", "pe_default_top", _pe("DEFAULT_CONFIG"),
             "PE array DEFAULT_CONFIG: 16 x 128 DSP48E2, 256 lanes, 32 reconstruction units"),
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
