"""Runtime backends of the Device API (:mod:`ternopu.sw.device`).

Importing this package registers ``golden`` (instruction-level simulator), ``verilator`` (the
cycle-accurate overlay RTL in Verilator; builds and starts a simulator when opened with a
geometry or when an image is loaded) and ``xrt`` (real board through pyxrt; importable without
XRT, it fails cleanly when opened without it).
"""

from . import golden_iss, verilator, xrt  # noqa: F401  (registration side effects)

__all__ = ["golden_iss", "verilator", "xrt"]
