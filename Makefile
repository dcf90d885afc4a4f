# ternopu: every target creates the project venv first if it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ternopu-installed
# pytest workers: the suite is sized for a 2-core machine.
PYTEST_ARGS ?=

BOARD ?= u280
PLATFORM ?=

.PHONY: help venv test sim demo golden-test lint synth-estimate bench-tlmm bench-pe pe-error-report bitstream fpga-sources clean distclean

help:
	@echo "make demo            compile a small model and run decode (golden model until the overlay exists)"
	@echo "make test            the whole test suite (golden, Amaranth, cocotb/Verilator, software)"
	@echo "make sim             the cycle-accurate cocotb/Verilator suite only"
	@echo "make bench-tlmm      TLMM throughput benchmark (JSON in build/bench/)"
	@echo "make lint            Verilator -Wall lint of every unit's generated Verilog"
	@echo "make synth-estimate  Yosys synth_xilinx (UltraScale+) resource estimates vs the U280"
	@echo "make bench-pe        PE-array benchmark (INT4 linear, cycle-accurate; JSON in build/bench/pe.json)"
	@echo "make pe-error-report PE-array modes vs float reference (JSON in build/reports/pe_error.json)"
	@echo "make bitstream BOARD=u280|v80    vendor build (Vitis/Vivado); stops at once if the tools are missing"
	@echo "make fpga-sources BOARD=u280|v80 write build/fpga/<board>/ (Verilog, kernel.xml, TCL, cfg) without vendor tools"
	@echo "make clean           remove simulator builds and reports (keeps the venv)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	# torch first and pinned: an unpinned resolve would pull the CUDA build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

sim: $(STAMP)
	$(PY) -m pytest -m sim $(PYTEST_ARGS)

golden-test: $(STAMP)
	$(PY) -m pytest tests/golden $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m ternopu.sw.demo

lint: $(STAMP)
	$(PY) -m ternopu.fpga_builds.lint

synth-estimate: $(STAMP)
	$(PY) -m ternopu.fpga_builds.synth_estimate

bench-tlmm: $(STAMP)
	$(PY) -m ternopu.sim.bench_tlmm

bench-pe: $(STAMP)
	$(PY) -m ternopu.sim.bench_pe

pe-error-report: $(STAMP)
	$(PY) -m ternopu.golden.pe_error_report

bitstream: $(STAMP)
	$(PY) -m ternopu.fpga_builds.bitstream --board $(BOARD) $(if $(PLATFORM),--platform $(PLATFORM))

fpga-sources: $(STAMP)
	$(PY) -m ternopu.fpga_builds.bitstream --board $(BOARD) --generate-only $(if $(PLATFORM),--platform $(PLATFORM))

clean:
	rm -rf sim_build build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) *.egg-info
