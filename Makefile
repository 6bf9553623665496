# The two set-up commands: `make demo` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TRITON_VENV ?= .venv-triton
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
ARTIFACTS ?= artifacts

.PHONY: demo stop test lint env triton-env bench clean

# torch first, pinned: on machines without a GPU that version resolves to a local CPU wheel; a
# bare `torch` requirement with nothing installed would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The explorer's front-end libraries (explorer/web/package.json, pinned by its lock file),
# served from node_modules by the service: nothing is fetched at run time.
explorer/web/node_modules/.installed: explorer/web/package.json explorer/web/package-lock.json
	npm ci --prefix explorer/web --no-audit --no-fund --loglevel=error
	touch $@

env: $(VENV)/.installed explorer/web/node_modules/.installed

# The local Triton server's own environment (serving/triton-requirements.txt says why it is
# separate); serving finds it at $(TRITON_VENV) or TOWERLINE_TRITON_ENV.
$(TRITON_VENV)/.installed: serving/triton-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -r serving/triton-requirements.txt
	touch $@

triton-env: $(TRITON_VENV)/.installed

demo: env triton-env
	$(PY) -m data prepare --config configs/data/synthetic_demo.yaml --output $(ARTIFACTS)/data/synthetic_demo
	$(PY) -m data manifest $(ARTIFACTS)/data/synthetic_demo
	$(PY) -m training fit --config configs/train/synthetic_demo.yaml
	$(PY) -m index rebuild --config configs/index/synthetic_demo.yaml
	$(PY) -m ranking train --config configs/ranking/synthetic_demo.yaml
	@echo "evaluation (full corpus: validation each epoch, then test once on the kept epoch):" && cat $(ARTIFACTS)/runs/synthetic_demo/evaluation.jsonl
	$(PY) -m serving up --config configs/serving/synthetic_demo.yaml --detach
	$(PY) -m serving try --config configs/serving/synthetic_demo.yaml --traffic 500
	@echo "relevance monitor over the answer log the tries left (a breach prints BREACH and is shown, not fatal here):"
	$(PY) -m monitoring run --config configs/monitoring/synthetic_demo.yaml || test $$? -eq 4

# stops the service (and its Triton server) that `make demo` left running
stop: env
	$(PY) -m serving down --config configs/serving/synthetic_demo.yaml

# lint-imports: the house rules of pyproject.toml's [tool.importlinter] (README, "The map").
test: env triton-env
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(if $(SLOW),,-m "not slow and not gpu")

lint: env
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(VENV)/bin/lint-imports

bench: env
	$(PY) benchmarks/prepare_throughput.py --events 10000000
	$(PY) benchmarks/prepare_throughput.py --events 100000000 --memory

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
