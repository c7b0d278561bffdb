# The two set-up commands of README.md. Each installs what it needs (scripts/setup.sh), then runs.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: demo test install bench

install:
	PYTHON=$(PYTHON) bash scripts/setup.sh

demo: install
	$(PYTHON) -m zest_hf demo --out-dir out/demo

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PYTHON) benchmarks/probe_cost.py
