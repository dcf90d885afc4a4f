"""FPGA build flows (U280, Versal) and the checks that run without vendor tools: lint, synthesis estimates."""
