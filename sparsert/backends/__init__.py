"""Backends side by side, one folder each, behind the small interface of base.py.

A target ('cuda', 'hip', 'cpu') has one or more backends; `resolve()` picks the one that will build a
compile, once, before planning (its limits and parameter choice shape the schedule). The
emulator is not a target: it runs what the CUDA backends rendered on the CPU (run_host).
"""

from __future__ import annotations

from ..choices import check_target
from . import cpu, cuda, hip
from .emulate import Emulator

_HIP = hip.HipBackend()
_CPU = cpu.CpuBackend()
EMULATOR = Emulator()
_NATIVE = cpu.NativeHost()


def resolve(target: str, backend: str | None = None):
    """The backend that builds `target` (for CUDA: `backend` or SPARSERT_BACKEND, 'auto' taking
    'ptx' where ptxas and nvlink are installed)."""
    target = check_target(target)
    if target == "hip":
        return _HIP
    if target == "cpu":
        return _CPU
    return cuda.choose(backend)


def emulator_for(target: str):
    """What runs a target's kernels on this host (run_host): the emulator of the generated CUDA,
    the CPU kernel itself; None for HIP."""
    return {"cuda": EMULATOR, "cpu": _NATIVE}.get(target)


def all_backends() -> dict:
    return {**cuda.BACKENDS, _HIP.name: _HIP, _CPU.name: _CPU}
