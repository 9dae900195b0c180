"""Backends side by side, one folder each, behind the small interface of base.py.

A target ('cuda', 'hip') has one or more backends; `resolve()` picks the one that will build a
compile, once, before planning (its limits and parameter choice shape the schedule). The
emulator is not a target: it runs what the CUDA backends rendered on the CPU (run_host).
"""

from __future__ import annotations

from ..choices import check_target
from . import cuda, hip
from .emulate import Emulator

_HIP = hip.HipBackend()
EMULATOR = Emulator()


def resolve(target: str, backend: str | None = None):
    """The backend that builds `target` (for CUDA: `backend` or SPARSERT_BACKEND, 'auto' taking
    'ptx' where ptxas and nvlink are installed)."""
    if check_target(target) == "hip":
        return _HIP
    return cuda.choose(backend)


def emulator_for(target: str):
    """The host emulator of a target's kernels (None where there is none)."""
    return EMULATOR if target == "cuda" else None


def all_backends() -> dict:
    return {**cuda.BACKENDS, _HIP.name: _HIP}
