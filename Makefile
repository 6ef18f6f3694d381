# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# paramserver[torch] wants torch's CPU build: PyPI's default torch brings about 5 GB of CUDA
# libraries. The pinned +cpu wheel comes from TORCH_INDEX (or any index or wheel folder pip is
# configured with); where none serves it, PyPI's torch is the fallback. --retries 0: an index
# that cannot be reached costs seconds, not minutes.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint bench venv clean sysdeps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --retries 0 --timeout 20 --extra-index-url $(TORCH_INDEX) \
		'torch==$(TORCH_VERSION)+cpu' || $(BIN)/python -m pip install --quiet 'torch>=2.1'
	$(BIN)/python -m pip install --quiet -e '.[dev,torch]'
	touch $(STAMP)

venv: $(STAMP)

## demo: L1 logistic regression on 20 Newsgroups: scheduler, 2 servers and 2 workers on this machine
demo: $(STAMP)
	$(BIN)/paramserver run logreg --servers 2 --workers 2 --plot results/logreg_objective.png

## test: the whole test suite (the torch tests included: the venv has paramserver[torch])
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

## bench: benchmarks against a raw pyzmq baseline measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

## sysdeps: Debian packages some tests need (.ci/packages.txt); as root only, elsewhere those tests skip
sysdeps:
	bash .ci/sysdeps

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
