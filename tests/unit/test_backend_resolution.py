"""Which backend builds a compile: chosen once, before planning, from the target, the request
and the installed tools (no schedule involved). (Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import pytest

import sparsert.backends.cuda as cuda_backends
from sparsert.backends import all_backends, resolve
from sparsert.backends.cuda import BACKENDS
from sparsert.config import settings
from sparsert.errors import OptionsError, ToolchainError
from sparsert.toolchain import ptxas

ARCH = "sm_90"


def test_resolve_backend(monkeypatch):
    """Rewritten: resolve() no longer takes a schedule. The old `resolve_backend("cuda", "auto",
    schedule=None) == "nvrtc"` (nothing to render PTX from) and `resolve_backend("cuda", "ptx",
    schedule=None)` raising are gone by design: the backend is picked before planning, 'auto'
    takes 'ptx' wherever ptxas + nvlink are installed, and 'ptx' asked for is 'ptx'."""
    monkeypatch.delenv("SPARSERT_BACKEND", raising=False)
    assert resolve("hip", "ptx").name == "hipcc"
    assert resolve("cuda", "nvrtc").name == "nvrtc"
    assert resolve("cuda", "ptx").name == "ptx"  # no schedule needed
    want = "ptx" if BACKENDS["ptx"].available() is None else "nvrtc"
    assert resolve("cuda", "auto").name == want
    assert resolve("cuda", None).name == want  # SPARSERT_BACKEND defaults to auto
    with pytest.raises(OptionsError):
        resolve("cuda", "llvm")
    assert set(all_backends()) == {"ptx", "nvrtc", "hipcc", "cpu"}
    assert resolve("cpu").name == resolve("cpu", "ptx").name == "cpu"  # one backend for the CPU target
    monkeypatch.setenv("SPARSERT_BACKEND", "nvrtc")
    assert resolve("cuda", None).name == "nvrtc"
    monkeypatch.setenv("SPARSERT_BACKEND", "fast")
    with pytest.raises(OptionsError):
        settings()


def test_without_nvlink_auto_falls_back_and_ptx_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(ptxas, "find_nvlink", lambda: None)
    monkeypatch.setattr(cuda_backends, "find_nvlink", lambda: None)  # the name the backends imported
    assert resolve("cuda", "auto").name == "nvrtc"
    assert resolve("cuda", "ptx").name == "ptx"  # asked for: the build says why not
    assert "nvlink" in BACKENDS["ptx"].available() and "nvidia-cuda-nvcc" in BACKENDS["ptx"].available()
    with pytest.raises(ToolchainError, match="nvlink.*not found.*nvidia-cuda-nvcc"):
        ptxas.link([], arch=ARCH)
