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

# The main job on the embedded default: the `local` profile (scikit-learn's digits, CPU) of the
# teacher-update study (Fig. 6: the EMA teacher-vs-student curves, and two teachers that collapse)
# on a private Ray on this machine, then its HTML report and table. Its 4 runs fill 2 pairs of
# cores: 10.5 of the demo's 13 minutes on a 2-core machine (2026-12-08). The collapse study
# (Fig. 7) adds 2 more runs (314 s after `make demo`; its `both` point is the EMA run, copied):
#   make demo DEMO_SWEEPS="teacher_update centering_sharpening"
# Finished runs are skipped, so running it again is cheap.
DEMO_SWEEPS ?= teacher_update
demo: $(STAMP)
	@for s in $(DEMO_SWEEPS); do \
	  $(BIN)/dino-ablate sweep sweeps/$$s.yaml --backend ray --profile local --out $(OUT) || exit 1; \
	done
	@for s in $(DEMO_SWEEPS); do \
	  $(BIN)/dino-ablate -q report $(OUT)/$$s/local || exit 1; \
	  $(BIN)/dino-ablate -q table $(OUT)/$$s/local || exit 1; \
	done
	@echo "demo done: open $(foreach s,$(DEMO_SWEEPS),$(OUT)/$(s)/local/analysis/report.html)"
	$(if $(filter centering_sharpening,$(DEMO_SWEEPS)),,@echo "the collapse study (Fig. 7, 2 more runs): make demo DEMO_SWEEPS=\"$(DEMO_SWEEPS) centering_sharpening\"")

# The `local` profile of every ablation sweep (issue 4) on a private Ray on this machine, then
# every sweep file's claims over the run directories, with the pass rates of files 1-5 and 6-9
# (it fails when one of the claims CI asserts does not hold). Done runs are skipped.
REPRO_OUT ?= $(OUT)/reproduce
REPRO_CORE := momentum centering_sharpening teacher_update patch_size batch_size
REPRO_MORE := components teacher_temperature output_dim center_momentum
# $(call local_sweeps,FILES,LABEL): the local profiles of FILES on Ray, then their wall time.
local_sweeps = start=$$(date +%s); \
	for s in $(1); do \
	  $(BIN)/dino-ablate sweep sweeps/$$s.yaml --backend ray --profile local --out $(REPRO_OUT) || exit 1; \
	done; \
	el=$$(( $$(date +%s) - start )); \
	echo "wall time of the local profiles of files $(2) ($(1)): $$((el / 60)) min $$((el % 60)) s"
reproduce-local: $(STAMP)
	@$(call local_sweeps,$(REPRO_CORE),1-5)
	@$(call local_sweeps,$(REPRO_MORE),6-9)
	$(BIN)/python tests/sweep/test_reproduction.py $(REPRO_OUT)

# Lint, type check, then the whole suite inside a loopback-only network namespace under strace:
# any connection to an address outside 127.0.0.0/8 fails the run (scripts/check_loopback.sh).
test: $(STAMP)
	bash scripts/install_system_deps.sh
	$(MAKE) lint
	bash scripts/check_loopback.sh tests --durations=15
	bash scripts/netns_sandbox.sh $(BIN)/python -m pytest -q tests/infra/test_loopback.py

lint: $(STAMP)
	$(BIN)/ruff check dino_ablate analysis tests benchmarks
	$(BIN)/mypy dino_ablate analysis

# Fast tests only (no SLURM, no Ray, no multi-second training runs).
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not slurm and not ray" -q

bench: $(STAMP)
	$(BIN)/dino-ablate bench digits
	$(BIN)/dino-ablate bench vits16_cpu_bench --steps 5
	$(BIN)/python benchmarks/bench_local_step.py

clean:
	rm -rf $(VENV) $(OUT)
