"""Compile rendered units to binaries, through the cache (try_load / build / load, Triton-style).

Slabs compile in parallel: NVRTC runs through ctypes, which releases the GIL, and hipcc is a
subprocess, so a thread pool keeps every core busy without pickling sources across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from . import __version__
from .cache import KernelCache, cache_key
from .config import settings
from .render import Unit

NVRTC_OPTIONS = ("--ftz=false", "--prec-div=true", "--fmad=true")  # exact IEEE; FMA contraction on


@dataclass(frozen=True)
class Artifact:
    binary: bytes
    info: dict = field(hash=False)
    cached: bool = False


def compiler_version(target: str) -> str:
    if target == "cuda":
        from .nvrtc import nvrtc_version

        return "nvrtc %d.%d" % nvrtc_version()
    from .hipcc import hipcc_version

    return hipcc_version()


class UnitBuild:
    """One unit's compilation. `load()` is the entry point: cache hit, else build under a lock."""

    def __init__(self, unit: Unit, *, target: str, arch: str, cache: KernelCache | None,
                 options: Sequence[str] = NVRTC_OPTIONS):
        self.unit = unit
        self.target = target
        self.arch = arch
        self.cache = cache
        self.options = tuple(options) if target == "cuda" else ()
        self.key = cache_key(
            source=unit.source.encode(), target=target, arch=arch, options=list(self.options),
            compiler=compiler_version(target), sparsert=__version__,
        )

    def try_load(self) -> Artifact | None:
        if self.cache is None:
            return None
        entry = self.cache.get(self.key)
        if entry is None:
            return None
        return Artifact(binary=entry.payload, info=entry.meta, cached=True)

    def build(self) -> Artifact:
        name = f"{self.unit.kernel_name}{'.cu' if self.target == 'cuda' else '.hip'}"
        if self.target == "cuda":
            from .nvrtc import compile_cuda

            r = compile_cuda(self.unit.source, arch=self.arch, name=name, options=self.options)
            info = {"registers": r.registers, "spill_stores": r.spill_stores,
                    "spill_loads": r.spill_loads, "compile_seconds": r.seconds, "log": r.log}
            return Artifact(binary=r.cubin, info=info)
        from .hipcc import compile_hip

        r = compile_hip(self.unit.source, arch=self.arch, name=name)
        info = {"registers": None, "spill_stores": None, "spill_loads": None,
                "compile_seconds": r.seconds, "log": r.log}
        return Artifact(binary=r.code_object, info=info)

    def load(self) -> Artifact:
        hit = self.try_load()
        if hit is not None:
            return hit
        if self.cache is None:
            return self.build()
        with self.cache.lock(self.key):
            hit = self.try_load()  # another process may have built it while we waited
            if hit is not None:
                return hit
            artifact = self.build()
            self.cache.put(self.key, artifact.binary, artifact.info)
            return artifact


Progress = Callable[[int, int, Artifact], None]


def compile_units(units: Sequence[Unit], *, target: str, arch: str, use_cache: bool = True,
                  jobs: int | None = None, progress: Progress | None = None) -> list[Artifact]:
    """Compile every unit (in parallel), returning artifacts in unit order."""
    s = settings()
    cache = KernelCache(s.cache_dir) if (use_cache and s.cache_enabled) else None
    builds = [UnitBuild(u, target=target, arch=arch, cache=cache) for u in units]
    jobs = max(1, min(jobs or s.jobs, len(builds)))
    results: list[Artifact | None] = [None] * len(builds)
    start = time.perf_counter()
    if jobs == 1:
        for i, b in enumerate(builds):
            results[i] = b.load()
            if progress:
                progress(i + 1, len(builds), results[i])
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(b.load): i for i, b in enumerate(builds)}
            for done, fut in enumerate(as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(done, len(builds), results[futures[fut]])
    del start
    return [r for r in results if r is not None]
