# Two entry points, each setting up what it needs on a fresh machine:
#   make main   data -> train -> export -> verify -> bench (CPU; CUDA too when a GPU is present)
#   make test   the test suite
#   make lint   ruff over the code, tests and benchmarks
VENV ?= .venv
PY := $(VENV)/bin/python
TOOLKIT := $(VENV)/bin/toolkit
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: main test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,dev]'
	touch $(STAMP)

main: $(STAMP)
	$(TOOLKIT) data
	$(TOOLKIT) train --overwrite
	$(TOOLKIT) export --format all --precision all --overwrite
	$(TOOLKIT) verify --json exported/verify.json
	$(TOOLKIT) bench --matmul-peak --json exported/bench-cpu.json --markdown exported/bench-cpu.md --plot exported/bench-cpu.png
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(TOOLKIT) bench --device cuda --cuda-graph --json exported/bench-cuda.json --markdown exported/bench-cuda.md --plot exported/bench-cuda.png; \
	else echo "no CUDA device: skipping bench --device cuda"; fi

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check toolkit tests benchmarks

clean:
	rm -rf $(VENV) runs .cache
	find exported -mindepth 1 ! -name README.md -exec rm -rf {} +  # every format's files, triton/ too
