"""Cycle-accurate simulation: Verilator toolchain wiring, cached cocotb builds, benchmarks."""
