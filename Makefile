# Two commands from a fresh clone: `make demo` (the main job) and `make test`.
# Each creates and fills .venv on first use. TORCH is overridable, e.g. TORCH="torch torchvision".
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.14.1 torchvision==0.29.1
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  # the whole chain from nothing; `ldm-vae demo` alone resumes an interrupted one instead
	rm -rf runs/demo
	$(BIN)/ldm-vae demo --run-dir runs/demo

test: $(STAMP)  # everything, slow tests included (the README's and CI's test command)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  # everything but the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache
