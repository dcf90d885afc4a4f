"""Runtime backends of the Device API (:mod:`ternopu.sw.device`).

Importing this package registers ``golden`` (instruction-level simulator) and ``xrt`` (real
board through pyxrt; importable without XRT, it fails cleanly when opened without it).
"""

from . import golden_iss, xrt  # noqa: F401  (registration side effects)

__all__ = ["golden_iss", "xrt"]
