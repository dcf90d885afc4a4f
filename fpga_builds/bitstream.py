"""`make bitstream BOARD=u280|v80`: generate the board's build directory, then run the vendor tools.

Usage::

    python -m ternopu.fpga_builds.bitstream --board u280|v80 [--out DIR] [--platform NAME]
        [--top MODULE:FACTORY] [--hbm-ports N] [--clock-mhz F] [--generate-only]

Steps
-----
1. Build the :class:`~ternopu.hw.overlay_config.OverlayConfig` (board defaults, overridable) and
   the Amaranth top (default ``ternopu.fpga_builds.units:make_overlay``, called with the config:
   the integrated overlay that `make lint` / `make synth-estimate` check and the Verilator
   backend simulates; any ``module:factory`` with the same port convention works, see
   :mod:`ternopu.fpga_builds.kernel`).
2. Write ``<out>/src/`` (overlay Verilog, ``ternopu_kernel`` wrapper, kernel.xml, ports.json), the
   board's flow files (U280: :mod:`~ternopu.fpga_builds.u280.flow`; V80:
   :mod:`~ternopu.fpga_builds.versal.flow`) and ``manifest.json``. Default ``<out>``:
   ``build/fpga/<board>``.
3. Run ``<out>/build.sh`` with the vendor tools (``v++`` and ``vivado`` for the U280, ``vivado`` for
   the V80), found on ``PATH`` or under ``$XILINX_VITIS/bin`` / ``$XILINX_VIVADO/bin``.

The tools are looked for *first*: when one is missing the command exits at once (before
elaborating the overlay, which takes minutes at full size) with status :data:`EXIT_NO_TOOLS` and a
message naming the tools and versions to install and the ``--generate-only`` command that writes
the files into ``<out>`` without them (status 0, no tools needed).

Exit status: 0 success, 1 the vendor build failed, :data:`EXIT_NO_TOOLS` tools missing,
:data:`EXIT_NO_TOP` the top component could not be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ternopu.golden.errors import ConfigError
from ternopu.hw.overlay_config import BOARDS, OverlayConfig

from . import kernel as K
from .u280 import flow as u280_flow
from .versal import flow as versal_flow

__all__ = ["EXIT_NO_TOOLS", "EXIT_NO_TOP", "DEFAULT_TOP", "TOOLS", "find_tool", "missing_tools",
           "load_top", "generate", "main"]

EXIT_NO_TOOLS = 2
EXIT_NO_TOP = 3
#: The integrated overlay as every flow builds it (:func:`ternopu.fpga_builds.units.make_overlay`:
#: the real execution units at the default engine geometries).
DEFAULT_TOP = "ternopu.fpga_builds.units:make_overlay"
#: Vendor tools each board's flow needs: (executable, environment variable of its install root).
TOOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "u280": (("vivado", "XILINX_VIVADO"), ("v++", "XILINX_VITIS")),
    "v80": (("vivado", "XILINX_VIVADO"),),
}


def install_hint(board: str) -> str:
    """What to install for ``board``'s flow (versions are the flow's stated minimums)."""
    if board == "u280":
        return (f"AMD Vitis + Vivado {u280_flow.VITIS_MIN_VERSION} or later (Vitis installs both) with the "
                f"Alveo U280 platform {BOARDS['u280'].platform} (deployment + development packages) and "
                "XRT; then `source <Vitis>/settings64.sh` so that v++ and vivado are on PATH "
                "(or XILINX_VITIS / XILINX_VIVADO are set)")
    return (f"AMD Vivado {versal_flow.VIVADO_MIN_VERSION} or later with Versal HBM device support "
            f"({BOARDS[board].part}); for a deployable image also the AVED sources for the V80 "
            "(github.com/Xilinx/AVED); then `source <Vivado>/settings64.sh` (or set XILINX_VIVADO)")


def find_tool(exe: str, env_var: str, environ=None) -> str | None:
    """Path of ``exe`` on ``PATH`` or in ``$env_var/bin``; None if absent."""
    environ = os.environ if environ is None else environ
    found = shutil.which(exe, path=environ.get("PATH", ""))
    if found:
        return found
    root = environ.get(env_var)
    if root:
        cand = Path(root) / "bin" / exe
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def missing_tools(board: str, environ=None) -> list[str]:
    """Executables of ``board``'s flow that cannot be found."""
    return [exe for exe, var in TOOLS[board] if find_tool(exe, var, environ) is None]


def load_top(spec: str, config: OverlayConfig):
    """Instantiate ``module:factory`` with ``config`` (or without arguments if it takes none).

    Whether the factory takes an argument is read from its signature, so a ``TypeError`` raised
    while the top is built is not mistaken for "takes no config" (that would silently build the
    default configuration instead of ``config``).
    """
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"--top must be MODULE:FACTORY, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    try:
        takes_config = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # no introspectable signature: try the documented call
        takes_config = True
    return factory(config) if takes_config else factory()


def generate(config: OverlayConfig, top, out_dir: Path, platform: str | None = None) -> dict:
    """Write everything for ``config.board`` into ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    files = K.generate_kernel(config, top, out_dir / "src")
    if config.board == "u280":
        platform = platform or config.board_info.platform
        flow = u280_flow.write_flow(config, files.ports, out_dir, platform)
    else:
        flow = versal_flow.write_flow(config, files.ports, out_dir)
    manifest = {
        "board": config.board, "part": config.board_info.part, "platform": platform,
        "clock_hz": config.clock_hz, "hbm_ports": config.hbm_ports,
        "axi_data_bits": config.axi_data_bits, "axi_addr_bits": config.axi_addr_bits,
        "kernel": K.KERNEL_NAME, "top": type(top).__module__ + ":" + type(top).__name__,
        "sources": [str(p.relative_to(out_dir)) for p in
                    (files.overlay, files.wrapper, files.kernel_xml, files.ports_json)],
        "flow": [str(p.relative_to(out_dir)) for p in flow],
        "uram_memories": list(files.uram_memories),
        "vendor_tools_run": False,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", required=True, choices=sorted(BOARDS))
    ap.add_argument("--out", type=Path, help="build directory (default build/fpga/<board>)")
    ap.add_argument("--platform", help="Vitis platform (U280; default from OverlayConfig's board)")
    ap.add_argument("--top", default=DEFAULT_TOP, help=f"MODULE:FACTORY of the top (default {DEFAULT_TOP})")
    ap.add_argument("--hbm-ports", type=int, help="HBM AXI ports (default: the board's default config)")
    ap.add_argument("--clock-mhz", type=float, help="kernel clock in MHz (default 300)")
    ap.add_argument("--generate-only", action="store_true", help="write the files, do not run the tools")
    args = ap.parse_args(argv)

    config = OverlayConfig(board=args.board)
    try:
        if args.hbm_ports is not None:
            config = replace(config, hbm_ports=args.hbm_ports)
        if args.clock_mhz is not None:
            config = replace(config, clock_hz=args.clock_mhz * 1e6)
    except ConfigError as e:
        ap.error(str(e))
    out = args.out or Path("build/fpga") / args.board
    # Fail fast: the tools are checked before the (possibly minutes-long) elaboration.
    missing = [] if args.generate_only else missing_tools(args.board)
    if missing:
        print(f"bitstream: cannot build the {args.board} bitstream: {', '.join(missing)} not found on PATH "
              f"or under {' / '.join('$' + v + '/bin' for _, v in TOOLS[args.board])}.\n"
              f"  Install {install_hint(args.board)}.\n"
              f"  Nothing was run. To write the sources and scripts without the tools:\n"
              f"    python -m ternopu.fpga_builds.bitstream --board {args.board}"
              f"{' --out ' + str(args.out) if args.out else ''} --generate-only "
              f"(files go to {out.resolve()}/, then run {out / 'build.sh'} where the tools are).",
              file=sys.stderr)
        return EXIT_NO_TOOLS
    try:
        top = load_top(args.top, config)
    except (ImportError, AttributeError) as e:
        print(f"bitstream: cannot load the overlay top {args.top!r}: {e}\n"
              f"  (pass --top MODULE:FACTORY of a component with the port convention of "
              f"ternopu.fpga_builds.kernel)", file=sys.stderr)
        return EXIT_NO_TOP
    manifest = generate(config, top, out, args.platform)
    print(f"bitstream: generated the {args.board} build directory {out}/: "
          f"{', '.join(manifest['sources'] + manifest['flow'])}")
    if args.generate_only:
        return 0
    env = dict(os.environ)
    for exe, var in TOOLS[args.board]:  # put each tool's directory on PATH for build.sh
        env["PATH"] = str(Path(find_tool(exe, var)).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["bash", str(out / "build.sh")], env=env)
    manifest["vendor_tools_run"] = True
    manifest["vendor_exit_status"] = proc.returncode
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
