"""Shared fixtures and the one place markers and toolchain skips are defined.

Tiers (folders): unit/ (pure Python), codegen/ (toolchains, no device), numerics/ (generated
code run on the CPU), gpu/ (a CUDA device), integration/ (CLI end to end, torch). Shared helpers
live in tests/helpers/ (on sys.path through pyproject's `pythonpath`).

Markers (use them instead of local skipifs; the skip is decided here, once):
  gpu       needs a CUDA GPU
  ptxas     needs ptxas and nvlink (pip install nvidia-cuda-nvcc)
  hipcc     needs hipcc (apt-get install hipcc)
  torch     needs PyTorch
  cxx       needs a host C++ compiler (g++)
  nvdisasm  needs nvdisasm (pip install nvidia-cuda-nvdisasm)
  slow      compiles large kernels (minutes)
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import pytest

from sparsert.runtime.device import gpu_available

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if (candidate / "dlmc").is_dir():
            return candidate
    return None


@functools.cache
def _have_ptxas() -> bool:
    from sparsert.toolchain.ptxas import find_nvlink, find_ptxas

    return find_ptxas() is not None and find_nvlink() is not None


@functools.cache
def _have_hipcc() -> bool:
    from sparsert.toolchain.hipcc import hipcc_available

    return hipcc_available()


@functools.cache
def _have_cxx() -> bool:
    from sparsert.toolchain.cxx import host_compiler_available

    return host_compiler_available()


@functools.cache
def _have_nvdisasm() -> bool:
    from sparsert.toolchain.locate import find_tool

    return find_tool("nvdisasm") is not None


@functools.cache
def _have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


# marker -> (is it available, why it is skipped otherwise)
REQUIREMENTS = {
    "gpu": (gpu_available, "needs a CUDA GPU"),
    "ptxas": (_have_ptxas, "ptxas / nvlink not installed (pip install nvidia-cuda-nvcc)"),
    "hipcc": (_have_hipcc, "hipcc not installed (apt-get install hipcc)"),
    "torch": (_have_torch, "PyTorch not installed"),
    "cxx": (_have_cxx, "no host C++ compiler (g++)"),
    "nvdisasm": (_have_nvdisasm, "nvdisasm not installed (pip install nvidia-cuda-nvdisasm)"),
}


def pytest_configure(config):
    for name, (_, why) in REQUIREMENTS.items():
        config.addinivalue_line("markers", f"{name}: {why} (skipped cleanly without it)")
    config.addinivalue_line("markers", "slow: compiles large kernels (minutes)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name, (available, why) in REQUIREMENTS.items():
            if name in item.keywords and not available():
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Kernels compiled by the tests go to one cache per test session (shared across tests:
    NVRTC is slow, and reuse is itself part of what is tested)."""
    if "SPARSERT_TEST_CACHE_DIR" in os.environ:
        path = Path(os.environ["SPARSERT_TEST_CACHE_DIR"])
    else:
        path = tmp_path_factory.mktemp("sparsert-cache")
    old = os.environ.get("SPARSERT_CACHE_DIR")
    os.environ["SPARSERT_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPARSERT_CACHE_DIR", None)
    else:
        os.environ["SPARSERT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("shared/ data folder (DLMC patterns, problem sets) not found beside the repo")
    return path
