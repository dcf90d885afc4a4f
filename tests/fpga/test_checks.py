"""The open-tool checks behind `make lint` and `make synth-estimate`."""

import pytest

from ternopu.fpga_builds import lint, synth_estimate
from ternopu.fpga_builds.units import UNITS, verilog_for


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_unit_lints_clean(name):
    r = lint.lint_unit(UNITS[name])
    assert r["clean"], "\n".join(r["messages"])


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
    assert synth_estimate.logic_depth(netlist, "t") == {"lut_levels": 2, "carry_cells_on_path": 0}


def test_units_generate_verilog():
    for unit in UNITS.values():
        assert f"module {unit.top}" in verilog_for(unit)
