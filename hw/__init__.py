"""Amaranth HDL components of the ternopu overlay (one ``wiring.Component`` per unit)."""
