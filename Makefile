# Two commands from a fresh clone: `make demo` (the main job) and `make test`.
# Each creates and fills .venv on first use. TORCH is overridable, e.g. TORCH="torch torchvision".
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.14.1 torchvision==0.29.1
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-text demo-digits test test-fast test-gpu bench bench-gpu lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)  # the whole chain from nothing; `ldm-vae demo` alone resumes an interrupted one instead
	rm -rf runs/demo
	$(BIN)/ldm-vae demo --run-dir runs/demo

demo-text: $(STAMP)  # text-to-image on builtin:shapes-text, saved as a stock StableDiffusionPipeline
	rm -rf runs/demo-text
	$(BIN)/ldm-vae demo --text --run-dir runs/demo-text

demo-digits: $(STAMP)  # the class demo on another labelled folder: scikit-learn's bundled handwritten digits
	rm -rf runs/digits runs/demo-digits
	$(BIN)/python benchmarks/digits_folder.py --out runs/digits
	$(BIN)/ldm-vae demo --data runs/digits --run-dir runs/demo-digits

# Two pytest workers, one torch thread each: on 2 cores the suite took 736 s against 1110 s in one worker
# with two threads (2026-12-03; tiny models leave a second thread idle), and one thread each keeps OpenMP
# from spinning against the other worker.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

test: $(STAMP)  # everything, slow tests included (the README's and CI's test command)
	$(PYTEST)

test-fast: $(STAMP)  # everything but the tests marked slow
	$(PYTEST) -m "not slow"

test-gpu: $(STAMP)  # the gpu-marked tests (tests/test_gpu.py); each is skipped, with its reason, without CUDA
	$(BIN)/python -m pytest -q -rs -m gpu

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

bench-gpu: $(STAMP)  # under 8 minutes on one H100/H200; ARGS="--device cpu --tiny" checks it on a CPU
	$(BIN)/python benchmarks/gpu.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache
