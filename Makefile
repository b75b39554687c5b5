# Quick start: `make demo`, `make test`. Both set everything up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= captures

.PHONY: setup demo test bench lint typecheck clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) samples/demo.py --out $(OUT)

test: setup lint typecheck
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check probes collector viewer sidecar samples tests bench

# mypy finds gpuscope.probes etc. (package-dir mappings) through this link;
# what it checks is set in pyproject.toml's [tool.mypy].
typecheck: setup
	@mkdir -p build/typecheck && ln -sfn ../.. build/typecheck/gpuscope
	$(VENV)/bin/mypy

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info $(OUT)
