# The two set-up commands: `make demo` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
ARTIFACTS ?= artifacts

.PHONY: demo test lint env bench clean

# torch first, pinned: on machines without a GPU that version resolves to a local CPU wheel; a
# bare `torch` requirement with nothing installed would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(PY) -m data prepare --config configs/data/synthetic_demo.yaml --output $(ARTIFACTS)/data/synthetic_demo
	$(PY) -m data manifest $(ARTIFACTS)/data/synthetic_demo
	$(PY) -m training fit --config configs/train/synthetic_demo.yaml
	$(PY) -m index rebuild --config configs/index/synthetic_demo.yaml
	@echo "evaluation (full corpus, one line per epoch):" && cat $(ARTIFACTS)/runs/synthetic_demo/evaluation.jsonl

test: env
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(if $(SLOW),,-m "not slow and not gpu")

lint: env
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: env
	$(PY) benchmarks/prepare_throughput.py --events 10000000
	$(PY) benchmarks/prepare_throughput.py --events 100000000 --memory

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
