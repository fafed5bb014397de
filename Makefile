# Two commands for a fresh machine: `make quickstart` and `make test`.
# Everything they need is installed here; nothing has to be set up by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Headless MuJoCo rendering: EGL on Mesa works on CPU (llvmpipe) and on GPUs; OSMesa is the fallback.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The CPU build of torch (its local version label says so). Where no local wheel provides it, point
# pip at PyTorch's CPU index: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?=

.PHONY: quickstart test lint format test-slow test-interop bench bench-quick bench-peers system-deps install clean

quickstart: install
	$(BIN)/lbm study quick

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

# ruff (format and lint), pyright (basic on src/, strict on the contracts and lbm.stats), import-linter (layers).
lint: install
	$(BIN)/ruff format --check src tests benchmarks client
	$(BIN)/ruff check src tests benchmarks client
	$(BIN)/pyright
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks client
	$(BIN)/ruff check --fix src tests benchmarks client

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-interop: install
	$(BIN)/python -m pytest -q -m interop

bench: install
	$(BIN)/python benchmarks/run_all.py

bench-quick: install
	$(BIN)/python benchmarks/run_all.py --quick

# lbm against LeRobot 0.4.4 on the same data and budget (builds LeRobot's own environment when needed; ~2 h on 2 cores).
bench-peers: install
	$(BIN)/python benchmarks/peers/run.py

install: $(STAMP)

# Offscreen rendering libraries (Mesa EGL + OSMesa) and MONA. Installed only when missing and when we can.
system-deps:
	@if ! ldconfig -p | grep -q 'libOSMesa.so' || ! ldconfig -p | grep -q 'libEGL_mesa.so'; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Mesa offscreen rendering libraries (libosmesa6, libegl-mesa0)"; \
	    (apt-get install -y -q libosmesa6 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q libosmesa6 libegl-mesa0 libgl1-mesa-dri >/dev/null)); \
	  else \
	    echo "warning: Mesa offscreen libraries missing; install libosmesa6 and libegl-mesa0 for camera observations"; \
	  fi; \
	fi
	@# MONA compiles the plan guard's temporal-logic rules to automata (lbm.safety.ltlf).
	@if ! command -v mona >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing MONA (Debian package mona) for the plan guard"; \
	    (apt-get install -y -q mona >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q mona >/dev/null)); \
	  else \
	    echo "warning: MONA missing; install Debian's mona package for plan-level safety rules"; \
	  fi; \
	fi

$(STAMP): pyproject.toml client/pyproject.toml | system-deps
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so that nothing below can pull a CUDA build.
	$(BIN)/pip install -q '$(TORCH_SPEC)' $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	# The thin client (its own distribution in ./client), which lbm depends on, then lbm itself.
	$(BIN)/pip install -q -e ./client
	$(BIN)/pip install -q -e '.[all]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
