"""The open-tool checks behind `make lint` and `make synth-estimate`."""

import tempfile
from pathlib import Path

import pytest

from ternopu.fpga_builds import lint, synth_estimate
from ternopu.fpga_builds.aliases import LINT_OFF, mark_alias_wires
from ternopu.fpga_builds import bitstream
from ternopu.fpga_builds.units import (
    DEFAULT_DESIGN,
    UNITS,
    engine_configs,
    make_overlay,
    overlay_slots,
    verilog_for,
)
from ternopu.golden.errors import ConfigError


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_unit_lints_clean(name):
    r = lint.lint_unit(UNITS[name])
    # a unit may only be unclean where its findings are documented as open (RTL the flow does not own)
    assert r["clean"] or UNITS[name].open_findings, "\n".join(r["messages"])


def test_every_registered_unit_constructs():
    # the full set included (construction only: elaborating tlmm_full / pe_default takes minutes)
    for name in UNITS.all_names():
        unit = UNITS[name]
        assert unit.top.endswith("_top") and unit.factory() is not None, name
    assert set(DEFAULT_DESIGN) <= set(UNITS.full_names())
    assert {"overlay", "pe_mid", "pe_default", "dequant", "dma_port", "npe_softmax"} <= set(UNITS.full_names())


def _slot_cfgs(top):
    from ternopu.hw.isa import Unit

    pe = next(u for u in top.slots[Unit.PE].units if type(u).__name__ == "PELinearUnit")
    return top.slots[Unit.TLMM].cfg, pe.cfg


def test_overlay_is_built_by_one_function_at_the_u280_default():
    from ternopu.hw import pe_array, tlmm

    top = make_overlay()
    assert top.config.hbm_ports == 32
    slots = overlay_slots(top)
    assert set(slots) == {"LD", "ST", "TLMM", "PE", "NPE"}
    # the integrated units, not the Overlay's timing stubs
    assert "StubUnit" not in str(slots) and slots["TLMM"] == "TLMMUnit" and slots["NPE"] == "NPEUnit"
    assert "PELinearUnit" in slots["PE"] and "KVAppendUnit" in slots["ST"]
    assert _slot_cfgs(top) == (tlmm.DEFAULT_CONFIG, pe_array.DEFAULT_CONFIG)
    # the bitstream flow builds the same top
    assert bitstream.DEFAULT_TOP == "ternopu.fpga_builds.units:make_overlay"


def test_ci_overlay_has_the_small_engines_of_the_verilator_runs():
    top = UNITS["overlay_ci"].factory()
    assert top.config.hbm_ports == 2 and _slot_cfgs(top) == engine_configs("ci")
    from ternopu.hw.units import SMALL_ENGINES
    from ternopu.sw import demo

    assert engine_configs("ci") == SMALL_ENGINES == demo.OVERLAY_ENGINES


@pytest.mark.parametrize("engines", ["small", None, ("a", "b")])
def test_make_overlay_rejects_unknown_engines(engines):
    with pytest.raises(ConfigError, match="engines"):
        make_overlay(engines=engines)


def test_alias_marking_treats_constant_drivers_as_aliases():
    v = ("module t(input wire [3:0] a, output wire [3:0] y);\n"
         "  wire [1:0] burst;\n  wire [8:0] padded;\n  wire [3:0] computed;\n"
         "  assign burst = 2'h1;\n  assign padded = { 5'h00, a };\n  assign computed = a ^ 4'h3;\n"
         "  assign y = a;\nendmodule\n")
    marked = mark_alias_wires(v)
    assert marked.count(LINT_OFF) == 2  # burst and padded; a computed signal still warns
    r = lint.lint_verilog(marked, "t")
    assert r["by_rule"].get("UNUSEDSIGNAL") == 1 and "'computed'" in r["messages"][0]


def _fake_result(name, lut, budget=0.5):
    res = dict(lut=lut, ff=0, carry8=0, dsp=0, bram36=0, uram=0, muxf=0, lutram=0)
    util = {k: res[k] / getattr(synth_estimate.U280, k) for k in ("lut", "ff", "carry8", "dsp", "bram36", "uram")}
    return {"unit": name, "resources": res, "utilisation": util, "lut_budget": budget,
            "within_budget": util["lut"] <= budget, "lut_levels": 3, "carry_cells_on_path": 0,
            "path_from": "a", "path_to": "b", "verilog_seconds": 0, "yosys_seconds": 0}


def test_design_budget_fails_when_exceeded(monkeypatch):
    cap = synth_estimate.U280.lut
    parts = list(DEFAULT_DESIGN)
    under = [_fake_result(p, 0.4 * cap / len(parts)) for p in parts]
    over = [_fake_result(p, 0.6 * cap / len(parts)) for p in parts]
    assert synth_estimate.design_budget(under)["within_budget"]
    assert not synth_estimate.design_budget(over)["within_budget"]
    assert synth_estimate.design_budget(over[1:]) is None  # not every part synthesized
    # the command fails: a design over budget, or one unit over its own budget
    fakes = {r["unit"]: r for r in over}
    monkeypatch.setattr(synth_estimate, "estimate_unit", lambda unit: fakes[unit.name])
    monkeypatch.setattr(synth_estimate, "REPORT", Path(tempfile.mkdtemp()) / "s.json")
    assert synth_estimate.main(parts) == 1
    fakes = {r["unit"]: r for r in under}
    assert synth_estimate.main(parts) == 0
    fakes["overlay"] = _fake_result("overlay", 0.3 * cap, budget=0.2)
    assert synth_estimate.main(parts) == 1


def test_lint_catches_an_unwaived_warning():
    # A named, never-read signal is a real finding: the waivers must not hide it.
    bad = "module t(input wire clk, input wire [3:0] a, output wire [3:0] y);\n" \
          "  wire [3:0] forgotten = a + 4'd1;\n  assign y = a;\nendmodule\n"
    r = lint.lint_verilog(bad, "t")
    assert not r["clean"] and "UNUSEDSIGNAL" in r["by_rule"]


def test_classify_groups_cells_into_budgeted_resources():
    res = synth_estimate.classify({
        "LUT6": 10, "LUT6_2": 2, "LUT3": 5, "FDRE": 7, "FDSE": 1, "CARRY8": 3, "CARRY4": 2,
        "DSP48E2": 4, "RAMB36E2": 2, "RAMB18E2": 3, "URAM288": 1, "RAM64M": 4, "MUXF7": 2,
    })
    assert res["lut"] == 10 + 2 + 5 + 4
    assert res["ff"] == 8 and res["carry8"] == 4 and res["dsp"] == 4
    assert res["bram36"] == 3.5 and res["uram"] == 1 and res["lutram"] == 4


def test_synth_estimate_of_smoke_unit():
    r = synth_estimate.estimate_unit(UNITS["stream_sum"])
    res = r["resources"]
    # 16-bit input, 28-bit accumulator and output register, valid flag: at least the 57 flops.
    assert res["ff"] >= 28 + 28 and res["lut"] > 0 and res["dsp"] == 0
    assert 1 <= r["lut_levels"] <= 10
    assert r["within_budget"]
    table = synth_estimate.format_table([r])
    assert "stream_sum" in table and "U280 capacity" in table


def test_logic_depth_counts_lut_levels():
    # Two LUTs in series between flops, one LUT on a parallel path.
    def lut(i, o):
        return {"type": "LUT2", "port_directions": {"I0": "input", "O": "output"},
                "connections": {"I0": [i], "O": [o]}}
    def ff(d, q):
        return {"type": "FDRE", "port_directions": {"D": "input", "Q": "output"},
                "connections": {"D": [d], "Q": [q]}}
    netlist = {"modules": {"t": {"cells": {
        "f0": ff(9, 2), "l1": lut(2, 3), "l2": lut(3, 4), "f1": ff(4, 5), "l3": lut(5, 6), "f2": ff(6, 9)}}}}
    d = synth_estimate.logic_depth(netlist, "t")
    assert (d["lut_levels"], d["carry_cells_on_path"]) == (2, 0)
    netlist["modules"]["t"]["netnames"] = {"q0": {"bits": [2]}, "mid": {"bits": [3]}, "d1": {"bits": [4]}}
    d = synth_estimate.logic_depth(netlist, "t")
    assert (d["path_from"], d["path_to"]) == ("q0", "d1")


def test_units_generate_verilog():
    for unit in UNITS.values():
        assert f"module {unit.top}" in verilog_for(unit)
