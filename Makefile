# Two entry points: `make demo` (the offline quickstart) and `make test` (the suite). Each builds .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := .cache/demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the build this machine kind ships on disk (a CUDA build that runs on CPU)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mevqa.demo --out $(DEMO)

test: $(VENV)/.installed
	$(PY) -m ruff check --output-format concise mevqa tests app.py
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check mevqa tests app.py && $(PY) -m ruff format --check mevqa tests app.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
