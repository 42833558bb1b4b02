# The two commands of the README: `make demo` and `make test`. Each creates .venv with pip and
# installs the project first; CI runs exactly `make test` (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out

.PHONY: demo test lint unit bench reproduce-local clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c "import dino_ablate, analysis, torch, timm, ray, submitit"
	touch $(STAMP)

# The main job on the embedded default (scikit-learn's digits), on this CPU.
demo: $(STAMP)
	$(BIN)/dino-ablate train digits --out $(OUT)/digits

# Lint, type check, then the whole suite inside a loopback-only network namespace under strace:
# any connection to an address outside 127.0.0.0/8 fails the run (scripts/check_loopback.sh).
test: $(STAMP)
	bash scripts/install_system_deps.sh
	$(MAKE) lint
	bash scripts/check_loopback.sh tests

lint: $(STAMP)
	$(BIN)/ruff check dino_ablate analysis tests benchmarks
	$(BIN)/mypy dino_ablate analysis

# Fast tests only (no SLURM, no Ray, no multi-second training runs).
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not slurm and not ray" -q

bench: $(STAMP)
	$(BIN)/dino-ablate bench digits
	$(BIN)/dino-ablate bench vits16_cpu_bench --steps 5

clean:
	rm -rf $(VENV) $(OUT)
