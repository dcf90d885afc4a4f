"""Versal HBM (Alveo V80, VH1782-class part) build flow: Vivado project with the HBM NoC connectivity.

See :mod:`ternopu.fpga_builds.versal.flow` and ``fpga_builds/README.md``.
"""
