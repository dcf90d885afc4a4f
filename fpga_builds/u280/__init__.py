"""Alveo U280 build flow: Vitis RTL kernel (Vivado IP packaging + ``v++ --link``).

See :mod:`ternopu.fpga_builds.u280.flow` and ``fpga_builds/README.md``.
"""
