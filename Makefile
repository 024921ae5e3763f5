# Every target is one line; `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WB := $(VENV)/bin/workbench
CONFIG ?= configs/demo.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
LIB := carvana folds oof zoo stacking workbench

.PHONY: setup setup-gpu lint fix test test-fast demo folds fold-train stack tune submit blend dashboard tensorboard bench bench-robust bench-scale bench-import bench-pseudo bench-calibrate bench-regime bench-guard bench-monotone bench-temperature bench-stacker-band clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[all,test]' && touch $@

setup-gpu: setup
	$(PY) -m pip uninstall -q -y tensorflow-cpu && $(PY) -m pip install -q -e '.[gpu]'

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check $(LIB) && $(PY) -m mypy $(LIB)

fix: setup
	$(PY) -m ruff check --fix . && $(PY) -m ruff format $(LIB)  # what make lint checks, fixed where ruff can

test: setup
	$(PY) -m pytest -q -n auto --dist loadfile  # one worker per core; a file's tests share a worker (and its fixtures)

test-fast: setup
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

demo: setup
	$(WB) demo --config $(CONFIG)

folds: setup
	$(WB) folds --config $(CONFIG)

fold-train: setup
	$(WB) fold-train --config $(CONFIG)

stack: setup
	$(WB) stack --config $(CONFIG)

tune: setup
	$(WB) tune --config $(CONFIG)

submit: setup
	$(WB) submit --config $(CONFIG)

blend: setup
	$(WB) blend $(RUN)/submissions/*.csv.gz --config $(CONFIG) --out $(RUN)/blend.csv.gz

dashboard: setup
	$(WB) dashboard --config $(CONFIG)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir $(RUN)/tensorboard --port $(or $(PORT),6006)

bench: setup
	$(PY) -m bench.run

bench-robust: setup
	$(PY) -m bench.robust

bench-import: setup
	$(PY) -m bench.import_speed

bench-pseudo: setup
	$(PY) -m bench.pseudo_round

bench-calibrate: setup  # bench.calibrated's comparable members against the published spread, on 3 car sets
	$(PY) -m bench.calibrate

bench-regime: setup  # then where LightGBM's gain comes from on its runs (bench.stacker_gain, seconds)
	$(PY) -m bench.regime && $(PY) -m bench.stacker_gain

bench-guard: setup  # after bench-robust: re-stacks its runs with stack.guard off and on
	$(PY) -m bench.stack_option --option guard

bench-monotone: setup  # after bench-robust: re-stacks its runs with stack.monotone off and on
	$(PY) -m bench.stack_option --option monotone

bench-temperature: setup  # after bench-robust and bench-regime: blends with per-member temperatures
	$(PY) -m bench.temperature

bench-stacker-band: setup  # after bench-robust and bench-regime: the pixel stackers' band, sample and threshold
	$(PY) -m bench.stacker_band --jobs 2

bench-scale: setup
	$(PY) -m bench.scale --fraction $(or $(FRACTION),0.05) --out bench/_scratch/scale

clean-demo:
	rm -rf data/synthetic runs/demo
