"""Execution units of the overlay's engine slots (one component per instruction family).

Each unit follows the unit-slot contract of :mod:`ternopu.hw.overlay` / :mod:`ternopu.hw.unit_port`;
:class:`ternopu.hw.unit_mux.UnitMux` combines the units of one queue into its slot.
"""

from .slots import SMALL_ENGINES, default_units  # noqa: E402,F401  (imports the units lazily)
