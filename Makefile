# Two entry points, both doing all setup on a fresh machine (see README):
#   make example   compile, inspect and check the shipped example weight (no GPU needed), then run
#                  it on the CPU target and time it beside dense PyTorch
#   make test      the test suite (GPU tests skip cleanly without a GPU)
#   make gpu-kit   build .gpu/ (no GPU needed): what `bash .gpu/run.sh` runs on a GPU machine, then its dry run
PYTHON ?= python3
EXAMPLE := examples/rn50_bottleneck1_g1_90.smtx

.PHONY: setup example test gpu-kit gpu-kit-dryrun bench-deepsparse-venv

# torch is optional for users; the tests of sparsert.torch need it. Installed only where none is:
# a GPU machine keeps its own. Pinned to the release our CI machines carry on disk as a CPU
# build (an unpinned `torch` resolves to the newest CUDA build, several GB).
TORCH_CPU ?= torch==2.13.0

setup:
	$(PYTHON) -m pip install -q -e ".[test,bench]"
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_CPU) (tests of sparsert.torch)"; \
	  $(PYTHON) -m pip install -q "$(TORCH_CPU)"; }
	@command -v hipcc >/dev/null 2>&1 || { \
	  echo "installing hipcc (HIP compile checks)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq hipcc >/dev/null \
	  || echo "warning: hipcc not installed; HIP tests will be skipped"; }
	@command -v g++ >/dev/null 2>&1 || { echo "error: g++ (C++20) is required for host checks" >&2; exit 1; }

example: setup
	sparsert compile $(EXAMPLE) --n 3136 --arch sm_90 --relu --out generated
	sparsert inspect generated/rn50_bottleneck1_g1_90.json
	sparsert check $(EXAMPLE) --n 3136 --arch sm_90 --relu
	sparsert check $(EXAMPLE) --n 3136 --relu --target cpu
	sparsert bench $(EXAMPLE) --n 3136 --relu --target cpu

test: setup
	$(PYTHON) -m pytest -q

# The GPU kit (tools/gpukit, benchmarks/README.md "The GPU run"): ptxas/nvlink, every kernel the
# run launches (compiled here), the problem data and run.sh, in the ignored folder .gpu/ (< 60 MiB).
# Needs the project installed (make setup) and ../shared (or SPARSERT_DATA); not part of `make test`.
gpu-kit:
	$(PYTHON) -m tools.gpukit build
	$(PYTHON) -m tools.gpukit dryrun

gpu-kit-dryrun:
	$(PYTHON) -m tools.gpukit dryrun

# DeepSparse 1.8 for benchmarks/cpu.py (optional, never part of setup: it pins numpy < 2). A venv of
# its own; the benchmark runs it in a child process: SPARSERT_DEEPSPARSE_PYTHON=$(DEEPSPARSE_VENV)/bin/python
DEEPSPARSE_VENV ?= .venv-deepsparse
bench-deepsparse-venv:
	$(PYTHON) -m venv $(DEEPSPARSE_VENV)
	$(DEEPSPARSE_VENV)/bin/python -m pip install -q "deepsparse==1.8.0" onnx
	@echo "export SPARSERT_DEEPSPARSE_PYTHON=$$(pwd)/$(DEEPSPARSE_VENV)/bin/python"
