"""`make lint`: Verilator ``--lint-only -Wall`` on the generated Verilog of every unit.

Waivers live in ``fpga_builds/lint_waivers.vlt``, each with its justification; any other warning
fails the run. The report (per unit: warnings by rule, with the first messages) is printed and
written to ``build/reports/lint.json``.

Units registered with ``open_findings`` (findings in RTL outside the FPGA flow's files, stated in
:mod:`ternopu.fpga_builds.units`) are linted and their warnings printed, but they do not fail the
run unless ``--strict`` is given; a unit without that mark fails on any warning.

Usage: ``python -m ternopu.fpga_builds.lint [--full] [--strict] [UNIT ...]`` (default: the CI set;
``--full`` or ``FULL=1``: the full set of default configurations)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ternopu.sim.toolchain import setup_verilator

from .units import UNITS, Unit, verilog_for

WAIVERS = Path(__file__).resolve().parent / "lint_waivers.vlt"
REPORT = Path("build/reports/lint.json")
_WARN = re.compile(r"^%(Warning|Error)-?([A-Z_]*)?: (.*)$")


def lint_verilog(verilog: str, top: str) -> dict:
    """Lint ``verilog`` (top module ``top``) with the project's waivers.

    Returns ``{"clean": bool, "by_rule": {rule: count}, "messages": [str, ...]}``.
    """
    exe = setup_verilator()
    with tempfile.TemporaryDirectory(prefix="ternopu-lint-") as tmp:
        src = Path(tmp) / f"{top}.v"  # file named after the module: no DECLFILENAME noise
        src.write_text(verilog)
        proc = subprocess.run(
            [str(exe), "--lint-only", "-Wall", "--top-module", top, str(WAIVERS), str(src)],
            capture_output=True, text=True, cwd=tmp,
        )
    msgs, rules = [], Counter()
    for line in proc.stderr.splitlines():
        m = _WARN.match(line)
        if m:
            rule = m.group(2) or m.group(1).upper()
            rules[rule] += 1
            msgs.append(line.replace(str(src), f"{top}.v"))
    clean = proc.returncode == 0 and not rules
    return {"clean": clean, "returncode": proc.returncode, "by_rule": dict(rules), "messages": msgs}


def lint_unit(unit: Unit) -> dict:
    """Lint one registered unit."""
    return {"unit": unit.name, "top": unit.top, **lint_verilog(verilog_for(unit), unit.top)}


def selected_units(names: list[str], full: bool) -> list[str]:
    """Units to run: ``names`` if given, else the full set or the CI set."""
    if names:
        return names
    return UNITS.full_names() if full else list(UNITS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("units", nargs="*", help=f"units to lint (default: the CI set {', '.join(UNITS)})")
    ap.add_argument("--full", action="store_true", default=os.environ.get("FULL", "") not in ("", "0"),
                    help="the full set of default configurations (also FULL=1)")
    ap.add_argument("--strict", action="store_true",
                    help="units with known open findings fail the run as well")
    args = ap.parse_args(argv)
    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {unknown}; known: {UNITS.all_names()}")
    results = []
    for name in selected_units(args.units, args.full):
        r = lint_unit(UNITS[name])
        r["open_findings"] = UNITS[name].open_findings
        r["fails_run"] = not r["clean"] and (args.strict or not r["open_findings"])
        results.append(r)
        if r["clean"]:
            status = "clean"
        else:
            status = ("FAIL " if r["fails_run"] else "known open findings: ") + \
                ", ".join(f"{k} x{v}" for k, v in r["by_rule"].items() if k != "ERROR")
        print(f"lint {r['unit']:<22} {status}", flush=True)
        if not r["clean"]:
            if r["open_findings"]:
                print("    known: " + r["open_findings"])
            for msg in r["messages"][:10]:
                print("    " + msg)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=2))
    print(f"report: {REPORT}")
    return 1 if any(r["fails_run"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
