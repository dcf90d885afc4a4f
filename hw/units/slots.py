"""The overlay's engine slots made of the real execution units (one source for every build).

:func:`default_units` returns the ``units`` mapping for :class:`ternopu.hw.overlay.Overlay`:

======  ==========================================================================================
slot    units (:class:`ternopu.hw.unit_mux.UnitMux` by opcode where a queue has several)
======  ==========================================================================================
LD      LOAD: :class:`~ternopu.hw.overlay.LoadUnit` (KV_PREFETCH completes without effect: the
        compiler never emits it and PE_ATTN reads reused rows from HBM; see the module note)
ST      STORE: :class:`~ternopu.hw.overlay.StoreUnit`; KV_APPEND:
        :class:`~ternopu.hw.units.kv_append.KVAppendUnit`; MASK_STORE:
        :class:`~ternopu.hw.units.mask_store.MaskStoreUnit`
TLMM    :class:`~ternopu.hw.units.tlmm_unit.TLMMUnit`
PE      PE_LINEAR with FP16 weights (the LM head): :class:`~ternopu.hw.units.lm_head_unit.LMHeadUnit`;
        PE_LINEAR INT4: :class:`~ternopu.hw.units.pe_linear_unit.PELinearUnit`; PE_ATTN:
        :class:`~ternopu.hw.units.pe_attn_unit.PEAttnUnit`; ROUTER:
        :class:`~ternopu.hw.units.router_unit.RouterUnit`
NPE     :class:`~ternopu.hw.units.npe_unit.NPEUnit`
======  ==========================================================================================

The Verilator backend, the FPGA flows and the benchmarks all build the overlay through this
function, so what is simulated is what is synthesized.
"""

from __future__ import annotations

from ternopu.hw.isa import Unit
from ternopu.hw.pe_array import PEConfig
from ternopu.hw.tlmm import TLMMConfig

__all__ = ["default_units", "SMALL_ENGINES"]

#: Small engine geometries ``(TLMMConfig, PEConfig)`` for Verilator runs of the whole overlay
#: (``make demo``, the layer and end-to-end tests) and the CI-set FPGA checks: TLMM 3 tables x 8
#: lanes (768-bit beat, 3 words per cycle), PE array 8 x 4 DSPs with INT4 group 32, both up to
#: ``max_k = 512``, ``max_n = 256``. The U280 geometries are the engines' ``DEFAULT_CONFIG``.
SMALL_ENGINES = (TLMMConfig(tables=3, lanes=8, beat_bits=768, max_k=512, max_n=256, out_lanes=8),
                 PEConfig(rows=8, cols=4, group=32, out_lanes=1, drain_banks=4, max_k=512, max_n=256))


def default_units(tlmm: TLMMConfig | None = None, pe: PEConfig | None = None) -> dict:
    """``{Unit: factory(ctx)}`` of the integrated overlay for the given engine geometries."""
    from ternopu.hw.overlay import LoadUnit, StoreUnit
    from ternopu.hw.pe_array import DEFAULT_CONFIG as PE_DEFAULT
    from ternopu.hw.unit_mux import UnitMux, When

    from .kv_append import KVAppendUnit
    from .lm_head_unit import LMHeadUnit, is_fp16_linear
    from .mask_store import MaskStoreUnit
    from .npe_unit import NPEUnit
    from .pe_attn_unit import PEAttnUnit
    from .pe_linear_unit import PELinearUnit
    from .router_unit import RouterUnit
    from .tlmm_unit import TLMMUnit

    tlmm = tlmm or TLMMConfig()
    pe = pe or PE_DEFAULT

    def st(ctx):
        return UnitMux(ctx, {
            "STORE": StoreUnit,
            "KV_APPEND": lambda c: KVAppendUnit(c, channel_bytes=c.channel_bytes, global_dma_addr=True),
            "MASK_STORE": lambda c: MaskStoreUnit(c, channel_bytes=c.channel_bytes, global_dma_addr=True),
        })

    def pe_slot(ctx):
        return UnitMux(ctx, {
            When("PE_LINEAR", is_fp16_linear): LMHeadUnit,
            "PE_LINEAR": lambda c: PELinearUnit(c, pe),
            "PE_ATTN": PEAttnUnit,
            "ROUTER": RouterUnit,
        })

    return {
        Unit.LD: LoadUnit,
        Unit.ST: st,
        Unit.TLMM: lambda ctx: TLMMUnit(ctx, tlmm),
        Unit.PE: pe_slot,
        Unit.NPE: NPEUnit,
    }
