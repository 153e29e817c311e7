# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision first, pinned together: qwen-vl-utils imports torchvision at import time,
# and an unpinned torch request can pull a different multi-GB build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
MODEL ?= tiny
STAMP := $(VENV)/.qvl-installed

.PHONY: install demo test bench-startup clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,psa]'
	touch $@

# Describe the bundled image and a generated 8-second video. MODEL=tiny (the default) runs
# offline in seconds with random weights; MODEL=7b uses the real model (qvl download 7b first).
demo: install
	$(BIN)/python examples/make_sample_video.py build/sample.mp4
	$(BIN)/qvl describe examples/house.jpg --model $(MODEL) --max-tokens 48
	$(BIN)/qvl video build/sample.mp4 --model $(MODEL) --frames 8 --max-tokens 48 --json

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench-startup: install
	$(BIN)/python benchmarks/bench_startup.py

clean:
	rm -rf $(VENV) build
