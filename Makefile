# Entry points: `make demo` (the offline quickstart), `make test` (the suite), `make vllm` (vLLM's own
# environment, which `make test` builds too: the real-vLLM tests run against it).
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PY := $(VENV)/bin/python
DEMO := .cache/demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast vllm lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the build this machine kind ships on disk (a CUDA build that runs on CPU)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# vLLM pins its own torch and transformers: it gets a venv of its own (see scripts/vllm-env.sh)
$(VLLM_VENV)/.installed: scripts/vllm-env.sh pyproject.toml
	scripts/vllm-env.sh $(VLLM_VENV)
	touch $@

vllm: $(VLLM_VENV)/.installed

# `make demo FAMILY=qwen3_vl`: the same demo on another tiny base (mevqa/models/families.py)
FAMILY ?= qwen2_5_vl
demo: $(VENV)/.installed
	$(PY) -m mevqa.demo --out $(DEMO) --family $(FAMILY) $(if $(STEPS),--max-steps $(STEPS))

test: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(PY) -m ruff check --output-format concise mevqa tests app.py
	$(PY) -m pytest -q

# the inner loop: the pure tests only (no model, SynthME, process or server), in under a minute;
# tests/conftest.py marks the others slow
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(PY) -m ruff check mevqa tests app.py && $(PY) -m ruff format --check mevqa tests app.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache .pytest_cache
