# Quick start: `make demo`, `make test`. Both set everything up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= captures

.PHONY: setup demo test bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) samples/demo.py --out $(OUT)

test: setup lint
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check probes collector viewer sidecar samples tests bench

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info $(OUT)
