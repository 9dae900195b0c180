"""Shared fixtures: an isolated kernel cache, the shared/ data folder, and GPU detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparsert.device import gpu_available

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if (candidate / "dlmc").is_dir():
            return candidate
    return None




requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip)


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
