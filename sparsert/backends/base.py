"""What every backend provides (the `Backend` protocol), and the hash of a backend's own code.

A backend is one way of turning a Schedule into something that runs: it owns its hardware
limits and parameter choice, its emitter, its build and its launcher. The pipeline resolves one
backend per compile, before planning, and then talks to it only through this interface:

    available()            None when its toolchain is here, else one line saying what is missing
    slab_budget()          FMAs per compiled unit (one launch) before a kernel is cut into slabs
    parameters(...)        schedule parameters for this matrix (explicit options win)
    supports(options, conv) None, or why this backend cannot build such a schedule
    units(schedule, arch)  the compiled units' names, launch geometry (and source, if it has one)
    cache_parts(...)       what a unit's cache key holds besides the common parts
    build(...)             one unit -> Artifact (binary + info)
    launcher(kernel)       the callable that runs a compiled kernel

Backends live in sparsert/backends/<name>/ and register in backends/__init__.py.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..ir.plan import Parameters
from ..ir.schedule import Schedule
from ..options import KernelOptions
from ..resources import template_dir
from ..runtime.artifact import Artifact, Unit

_PACKAGE = Path(__file__).resolve().parents[1]  # sparsert/


class Backend(Protocol):
    name: str
    target: str

    def available(self) -> str | None: ...
    def slab_budget(self) -> int: ...
    def parameters(self, m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters: ...
    def supports(self, opts: KernelOptions, conv: Any) -> str | None: ...
    def units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]: ...
    def cache_parts(self, schedule: Schedule, unit: Unit, arch: str) -> dict: ...
    def build(self, schedule: Schedule, unit: Unit, arch: str, **parallel: Any) -> Artifact: ...
    def launcher(self, kernel: Any) -> Any: ...


# The files whose hash is each backend's code identity (Triton-style): its own folder, the IR it
# prints, and its templates. A change to any of them changes every cache key of that backend.
_CODE = {
    "cuda": ("backends/cuda", "backends/source", "ir", "@cuda"),
    "hip": ("backends/hip", "backends/source", "ir", "@cuda"),
    "emulate": ("backends/emulate", "backends/source", "ir", "@cuda", "@emulate"),
    "cpu": ("backends/cpu", "ir", "@cpu"),
}


@lru_cache(maxsize=None)
def package_digest(backend: str) -> str:
    """sha256 (16 hex digits) over the source files of `backend` (see _CODE)."""
    h = hashlib.sha256()
    for part in _CODE[backend]:
        root = template_dir() / part[1:] if part.startswith("@") else _PACKAGE / part
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".j2", ".h", ".c", ".s"))
        for path in files:
            data = path.read_bytes()
            h.update(f"{part}/{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]
