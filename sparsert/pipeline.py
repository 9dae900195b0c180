"""The pipeline, once for every kind of kernel: resolve the backend -> plan -> units -> build
(cached) -> SparseKernel.

The target's backend is resolved once, before planning: its limits and parameter choice shape
the schedule, and its slab budget cuts it, so nothing plans twice.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from .backends import emulator_for, resolve
from .backends.cpu.isa import detect_isa
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
    if target == "cpu":
        return detect_isa()
    return settings().hip_arch


@dataclass(frozen=True)
class Layout:
    """How B and C are laid out beyond a plain K x N / M x N SpMM (convolutions)."""

    batch: int = 1
    batch_stride_b: int = 0
    batch_stride_c: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    conv: ConvGeometry | None = None


def check_supported(backend, options: KernelOptions, conv=None) -> None:
    """OptionsError naming why `backend` cannot build a kernel of these options (or nothing)."""
    why = backend.supports(options, conv)
    if why is not None:
        raise OptionsError(f"the {backend.name} backend cannot build this kernel ({why})")


def plan_with(backend, matrix, options: KernelOptions, *, bias: np.ndarray | None, weight_digest: str,
              layout: Layout = Layout()) -> Schedule:
    check_supported(backend, options, layout.conv)
    limit = options.max_nnz or settings().max_nnz
    if matrix.nnz > limit:
        raise OptionsError(
            f"the weight has {matrix.nnz:,} nonzeros, above the limit of {limit:,} (an unrolled kernel that big "
            f"takes {_fmt_estimate(estimate_seconds(backend, matrix.nnz, settings().jobs))} or more to build "
            f"here); raise it with --max-nnz / max_nnz= / SPARSERT_MAX_NNZ to compile it anyway")
    schedule = plan(matrix, options, parameters=backend.parameters, bias=bias, weight_digest=weight_digest,
                    max_slab_nnz=backend.slab_budget(), batch=layout.batch, batch_stride_b=layout.batch_stride_b,
                    batch_stride_c=layout.batch_stride_c, extra=layout.extra, conv=layout.conv)
    check = getattr(backend, "launch_problem", None)  # grid and index limits, before any code exists
    problem = check(schedule) if check is not None else None
    if problem is not None:
        raise OptionsError(problem)
    return schedule


NOTICE_SECONDS = 10.0
"""A build estimated to take longer than this says so first (CLI: a line on stderr and a ticking
progress line; API: a warning unless `progress` has a `notice` method)."""


def estimate_seconds(backend, ffmas: int, cores: int) -> float:
    """Build time from the backend's measured rate (FFMAs per second per core)."""
    rate = getattr(backend, "ffma_per_core_second", 5000)
    return ffmas / (rate * max(1, cores))


def _fmt_estimate(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def _announce(backend, schedule: Schedule, units, todo: list[int], cores: int, progress) -> None:
    ffmas = sum(units[i].nnz for i in todo) * schedule.vec
    seconds = estimate_seconds(backend, ffmas, cores)
    if seconds < NOTICE_SECONDS:
        return
    text = (f"large build: {ffmas:,} FFMAs in {len(todo)} slab(s) to assemble, estimated {_fmt_estimate(seconds)} "
            f"on {cores} core(s) ({backend.name}); Ctrl-C stops it")
    notice = getattr(progress, "notice", None)
    if notice is not None:
        notice(text, seconds)
    else:
        warnings.warn(f"sparsert: {text}", stacklevel=4)


def build_kernel_units(backend, schedule: Schedule, units, arch: str, *, use_cache: bool = True,
                       jobs: int | None = None, progress: Progress | None = None) -> list:
    """Every unit's artifact, through the one cache, built in parallel."""
    cache = store("kernels") if use_cache else None
    cores = max(1, jobs or settings().jobs)
    shared: dict = {}
    builds = [CachedBuild(cache_key(**backend.cache_parts(schedule, u, arch)),
                          lambda u=u: backend.build(schedule, u, arch, **shared), cache, size=u.nnz)
              for u in units]

    def before(todo, workers):
        _announce(backend, schedule, units, todo, cores, progress)
        shared.update(backend.parallel(len(todo), workers, cores))

    return build_all(builds, jobs=cores, progress=progress, before=before)


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
