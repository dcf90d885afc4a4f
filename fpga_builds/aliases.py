"""Mark the pure alias wires of Amaranth-generated Verilog so that `-Wall` lint judges real logic only.

Why: Amaranth keeps every named ``Signal`` in its Verilog. When two names denote the same net
(a register that drives an output port, a submodule port seen from its parent, an
``ArrayLayout`` element view such as ``counter_inc[3]``), Yosys picks one name as the driver and
emits the others as ``assign alias = net;`` copies that nothing reads. Verilator then reports each
copy as UNUSEDSIGNAL although the net itself is used. Such a warning is a property of the Verilog
backend, not of the design.

Constants: Amaranth propagates a constant-driven signal into its readers (a DMA command's fixed
AXI ``burst`` field, a memory read port's ``en`` tied high, the zero padding of a wide shift
operand), so its name is left behind as ``assign name = 2'h1;`` or ``assign name = {5'h00, net};``
with no reader in the Verilog even where the Amaranth design reads it. Such a wire computes
nothing, so it is an alias as well.

What is marked: a wire is marked only if (1) its single assignment is
``assign NAME = RHS;`` with RHS a plain net, a constant bit/part-select of one, a sized literal,
or a concatenation of those (no operators: nothing is computed), and (2) the name occurs nowhere
else in its module besides its declaration and that assignment. The declaration is then wrapped in
``/* verilator lint_off UNUSEDSIGNAL */ ... /* verilator lint_on UNUSEDSIGNAL */``. A named signal
that is *computed* and never read still warns (tests/fpga/test_flows.py checks both cases).
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["mark_alias_wires", "LINT_OFF", "LINT_ON"]

LINT_OFF = "/* verilator lint_off UNUSEDSIGNAL */ // alias wire (fpga_builds/aliases.py)"
LINT_ON = "/* verilator lint_on UNUSEDSIGNAL */"

# An identifier: escaped (backslash up to whitespace) or simple.
_IDENT = r"(?:\\\S+\s|[A-Za-z_][A-Za-z0-9_$]*)"
_SELECT = r"(?:\s*\[\d+(?::\d+)?\])?"
_NET = rf"{_IDENT}{_SELECT}"
# A sized literal (`2'h1`, `5'h00`): a constant drives no logic.
_CONST = r"\d+'[bodhBODH][0-9a-fA-F_]+"
_PART = rf"(?:{_NET}|{_CONST})"
_PLAIN_RHS = re.compile(rf"^\s*(?:{_PART}|\{{\s*{_PART}(?:\s*,\s*{_PART})*\s*\}})\s*$")
_ASSIGN = re.compile(rf"^\s*assign\s+({_IDENT})\s*=\s*(.*?);\s*$")
_WIRE_DECL = re.compile(rf"^\s*wire\s+(?:signed\s+)?(?:\[\d+:\d+\]\s+)?({_IDENT})\s*;\s*$")
_TOKEN = re.compile(r"\\\S+|[A-Za-z_][A-Za-z0-9_$]*")
# `.port(` of a named instance connection: the submodule's port name, not a use of a local wire.
_PORT_REF = re.compile(rf"\.\s*{_IDENT}\s*\(")


def _norm(name: str) -> str:
    return name.strip()


def _mark_module(lines: list[str]) -> list[str]:
    counts = Counter(_norm(t) for ln in lines
                     for t in _TOKEN.findall(_PORT_REF.sub("(", ln.split("//")[0])))
    assigns: dict[str, list[str]] = {}
    for ln in lines:
        m = _ASSIGN.match(ln)
        if m:
            assigns.setdefault(_norm(m.group(1)), []).append(m.group(2))
    out = []
    for ln in lines:
        m = _WIRE_DECL.match(ln)
        name = _norm(m.group(1)) if m else None
        if (name and counts[name] == 2 and len(assigns.get(name, ())) == 1
                and _PLAIN_RHS.match(assigns[name][0] + " ")):
            out += ["  " + LINT_OFF, ln, "  " + LINT_ON]
        else:
            out.append(ln)
    return out


def mark_alias_wires(verilog: str) -> str:
    """Return ``verilog`` with every pure, otherwise unreferenced alias wire marked (see module doc)."""
    out, module = [], None
    for ln in verilog.split("\n"):
        if module is None:
            if re.match(r"^\s*module\b", ln):
                module = [ln]
            else:
                out.append(ln)
        else:
            module.append(ln)
            if re.match(r"^\s*endmodule\b", ln):
                out += _mark_module(module)
                module = None
    if module is not None:
        out += module
    return "\n".join(out)
