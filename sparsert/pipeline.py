"""The pipeline, once for every kind of kernel: resolve the backend -> plan -> units -> build
(cached) -> SparseKernel.

The target's backend is resolved once, before planning: its limits and parameter choice shape
the schedule, and its slab budget cuts it, so nothing plans twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from .backends import emulator_for, resolve
from .config import settings
from .errors import OptionsError
from .ir.plan import plan
from .ir.schedule import ConvGeometry, Schedule
from .options import KernelOptions
from .runtime.build import CachedBuild, Progress, build_all
from .runtime.cache import cache_key, store
from .runtime.device import device_arch
from .runtime.kernel import SparseKernel
from .runtime.stats import make_stats


def resolve_arch(target: str, arch: str | None) -> str:
    """The explicit arch, else the current GPU's (CUDA), else the configured default."""
    if arch:
        return arch
    if target == "cuda":
        return device_arch() or settings().default_arch
    return settings().hip_arch


@dataclass(frozen=True)
class Layout:
    """How B and C are laid out beyond a plain K x N / M x N SpMM (convolutions)."""

    batch: int = 1
    batch_stride_b: int = 0
    batch_stride_c: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    conv: ConvGeometry | None = None


def plan_with(backend, matrix, options: KernelOptions, *, bias: np.ndarray | None, weight_digest: str,
              layout: Layout = Layout()) -> Schedule:
    why = backend.supports(options, layout.conv)
    if why is not None:
        raise OptionsError(f"the {backend.name} backend cannot build this kernel ({why})")
    return plan(matrix, options, parameters=backend.parameters, bias=bias, weight_digest=weight_digest,
                max_slab_nnz=backend.slab_budget(), batch=layout.batch, batch_stride_b=layout.batch_stride_b,
                batch_stride_c=layout.batch_stride_c, extra=layout.extra, conv=layout.conv)


def build_kernel_units(backend, schedule: Schedule, units, arch: str, *, use_cache: bool = True,
                       jobs: int | None = None, progress: Progress | None = None) -> list:
    """Every unit's artifact, through the one cache, built in parallel."""
    cache = store("kernels") if use_cache else None
    cores = max(1, jobs or settings().jobs)
    shared: dict = {}
    builds = [CachedBuild(cache_key(**backend.cache_parts(schedule, u, arch)),
                          lambda u=u: backend.build(schedule, u, arch, **shared), cache, size=u.nnz)
              for u in units]
    return build_all(builds, jobs=cores, progress=progress,
                     before=lambda todo, workers: shared.update(backend.parallel(len(todo), workers, cores)))


def compile_schedule(matrix, options: KernelOptions, *, bias: np.ndarray | None, weight_digest: str,
                     name: str, layout: Layout = Layout(), backend: str | None = None,
                     use_cache: bool = True, jobs: int | None = None,
                     progress: Progress | None = None) -> SparseKernel:
    """The whole pipeline for a canonical float32 CSR `matrix` (options.arch resolved)."""
    impl = resolve(options.target, backend)
    t0 = time.perf_counter()
    schedule = plan_with(impl, matrix, options, bias=bias, weight_digest=weight_digest, layout=layout)
    t1 = time.perf_counter()
    units = impl.units(schedule, options.arch)
    t2 = time.perf_counter()
    artifacts = build_kernel_units(impl, schedule, units, options.arch, use_cache=use_cache, jobs=jobs,
                                   progress=progress)
    t3 = time.perf_counter()
    stats = make_stats(schedule, units, artifacts, plan_s=t1 - t0, render_s=t2 - t1, compile_s=t3 - t2)
    return SparseKernel(schedule=schedule, units=units, artifacts=artifacts, target=options.target,
                        arch=options.arch, name=name, stats=stats, backend=impl,
                        emulator=emulator_for(options.target))


def with_arch(options: KernelOptions) -> KernelOptions:
    return replace(options, arch=resolve_arch(options.target, options.arch))


def compile_units(units, *, target: str, arch: str, schedule: Schedule, backend: str | None = None,
                  use_cache: bool = True, jobs: int | None = None, progress: Progress | None = None) -> list:
    """Build given units of `schedule` with the backend `backend` resolves to for `target`."""
    return build_kernel_units(resolve(target, backend), schedule, units, arch, use_cache=use_cache,
                              jobs=jobs, progress=progress)
