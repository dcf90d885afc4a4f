"""`make lint`: Verilator ``--lint-only -Wall`` on the generated Verilog of every unit.

Waivers live in ``fpga_builds/lint_waivers.vlt``, each with its justification; any other warning
fails the run. The report (per unit: warnings by rule, with the first messages) is printed and
written to ``build/reports/lint.json``.

Usage: ``python -m ternopu.fpga_builds.lint [UNIT ...]``
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("units", nargs="*", help=f"units to lint (default: all of {', '.join(UNITS)})")
    args = ap.parse_args(argv)
    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {unknown}; known: {sorted(UNITS)}")
    results = [lint_unit(UNITS[name]) for name in (args.units or UNITS)]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=2))
    for r in results:
        status = "clean" if r["clean"] else "FAIL " + ", ".join(f"{k} x{v}" for k, v in r["by_rule"].items())
        print(f"lint {r['unit']:<16} {status}")
        for msg in r["messages"][:10]:
            print("    " + msg)
    print(f"report: {REPORT}")
    return 0 if all(r["clean"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
