# ternopu: every target creates the project venv first if it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ternopu-installed
# pytest workers: the suite is sized for a 2-core machine.
PYTEST_ARGS ?=

.PHONY: help venv test sim demo golden-test lint synth-estimate bench-tlmm clean distclean

help:
	@echo "make demo            compile a small model and run decode (golden model until the overlay exists)"
	@echo "make test            the whole test suite (golden, Amaranth, cocotb/Verilator, software)"
	@echo "make sim             the cycle-accurate cocotb/Verilator suite only"
	@echo "make bench-tlmm      TLMM throughput benchmark (JSON in build/bench/)"
	@echo "make lint            Verilator -Wall lint of every unit's generated Verilog"
	@echo "make synth-estimate  Yosys synth_xilinx (UltraScale+) resource estimates vs the U280"
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

clean:
	rm -rf sim_build build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) *.egg-info
