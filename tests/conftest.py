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
  binutils  needs GNU as and ld (the CPU target's assembler and linker)
  avx2      runs CPU-target kernels natively (an AVX2+FMA CPU)
  avx512    runs AVX-512 CPU-target kernels natively (elsewhere: the x86 simulator checks them)
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


def _data_candidates() -> list[Path]:
    """benchmarks.common.data_candidates (not imported here: it sets CUPY_TF32 for the process):
    SPARSERT_DATA alone when set, else ../shared, /work/shared, the GPU kit's copy (.gpu/data)."""
    from sparsert.config import settings

    chosen = settings().data_dir
    return [chosen] if chosen is not None else [REPO.parent / "shared", Path("/work/shared"), REPO / ".gpu" / "data"]


def data_dir() -> Path | None:
    """The benchmarks' data folder (problems/ and the DLMC layers), a GPU kit's subset included."""
    for candidate in _data_candidates():
        if (candidate / "problems").is_dir() or (candidate / "dlmc").is_dir():
            return candidate
    return None


def shared_dir() -> Path | None:
    """The full data folder (every DLMC pattern): a GPU kit's subset (marked KIT_SUBSET) is not."""
    for candidate in _data_candidates():
        if (candidate / "dlmc").is_dir() and not (candidate / "KIT_SUBSET").exists():
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
def _have_binutils() -> bool:
    from sparsert.toolchain.binutils import available

    return available() is None


def _runs(isa: str):
    def check() -> bool:
        from sparsert.backends.cpu.isa import runnable

        return _have_binutils() and _have_cxx() and runnable(isa)
    return check


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
    "binutils": (_have_binutils, "GNU as / ld not installed (apt-get install binutils)"),
    "avx2": (_runs("avx2"), "needs an AVX2+FMA CPU (and as, ld, a C compiler) to run CPU kernels"),
    "avx512": (_runs("avx512"), "needs an AVX-512F CPU (and OS support) to run AVX-512 kernels natively"),
}


def pytest_configure(config):
    for name, (_, why) in REQUIREMENTS.items():
        config.addinivalue_line("markers", f"{name}: {why} (skipped cleanly without it)")
    config.addinivalue_line("markers", "slow: compiles large kernels (minutes)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name, (available, why) in REQUIREMENTS.items():
            if item.get_closest_marker(name) is not None and not available():  # markers, not ids
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
