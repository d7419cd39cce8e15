# Every target sets itself up: a fresh machine needs only Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-all bench-train clean

$(BIN)/hemaseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(BIN)/hemaseg

## demo: synthesise smears, train a few minutes on the CPU, print where the results are
demo: install
	$(BIN)/hemaseg demo --out demo

## test: the test suite (slow checks excluded; they run with the benchmarks)
test: install
	$(BIN)/python -m pytest -m "not slow" --doctest-modules src tests

test-all: install
	$(BIN)/python -m pytest --doctest-modules src tests

## bench-train: the training benchmark of docs/benchmarks.md (about 20 min on a 2-core CPU)
BENCH_DATA ?= ../shared/data/wbc-zheng2018/dataset1
bench-train: install
	@nproc; $(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'threads', torch.get_num_threads())"
	rm -rf runs/bench-train
	time $(BIN)/hemaseg train --data $(BENCH_DATA) --out runs/bench-train --no-progress

clean:
	rm -rf $(VENV) demo runs .pytest_cache src/*.egg-info
