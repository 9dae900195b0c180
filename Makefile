# Two entry points, both doing all setup on a fresh machine (see README):
#   make example   compile, inspect and check the shipped example weight (no GPU needed)
#   make test      the test suite (GPU tests skip cleanly without a GPU)
PYTHON ?= python3
EXAMPLE := examples/rn50_bottleneck1_g1_90.smtx

.PHONY: setup example test

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

test: setup
	$(PYTHON) -m pytest -q
