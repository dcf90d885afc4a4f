"""cocotb testbench modules (imported by the simulator, not by pytest)."""
