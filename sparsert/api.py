"""The public entry point: weight -> plan -> render -> compile (cached) -> SparseKernel."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .compiler import Progress, compile_units, preferred_backend, resolve_backend
from .config import settings, slab_budget
from .errors import OptionsError
from .kernel import SparseKernel, make_stats
from .options import KernelOptions
from .plan import plan
from .render import launch_units, render
from .weights import Weight, check_finite, load_array, load_weight


def resolve_arch(target: str, arch: str | None) -> str:
    """The explicit arch, else the current GPU's (CUDA), else the configured default."""
    if arch:
        return arch
    if target == "cuda":
        from .nvrtc import device_arch

        return device_arch() or settings().default_arch
    return settings().hip_arch


def plan_for(matrix, options: KernelOptions, *, backend: str | None = None, **kwargs):
    """(schedule, backend): plan() with the slab budget of the backend that will build it
    (config.slab_budget; options.max_slab_nnz wins). `backend`: as compile_units'. Plans again
    only where the backend expected up front (ptxas installed) cannot take the schedule."""
    guess = preferred_backend(options.target, backend)
    schedule = plan(matrix, options, max_slab_nnz=slab_budget(guess), **kwargs)
    kind = resolve_backend(options.target, backend, schedule=schedule)
    if kind != guess and slab_budget(kind) != slab_budget(guess):
        schedule = plan(matrix, options, max_slab_nnz=slab_budget(kind), **kwargs)
    return schedule, kind


def units_for(schedule, target: str, backend: str | None = None):
    """(units, backend): the PTX backend builds from the schedule itself, so its units carry no
    source (the CUDA source is rendered only if asked for); NVRTC and hipcc compile the source.
    `backend`: as compile_units' (None: SPARSERT_BACKEND)."""
    backend = resolve_backend(target, backend, schedule=schedule)
    units = launch_units(schedule) if backend == "ptx" else render(schedule, target)
    return units, backend


def as_weight(weight, *, tensor: str | None = None, seed: int = 0, values: str = "normal") -> Weight:
    return weight if isinstance(weight, Weight) else load_weight(weight, tensor=tensor, seed=seed, values=values)


def load_bias(bias, m: int) -> np.ndarray | None:
    """Bias from an array, or a file in any weight format (flattened to length M)."""
    if bias is None:
        return None
    arr = bias if isinstance(bias, np.ndarray) else load_array(bias)
    if not isinstance(arr, np.ndarray):
        arr = arr.toarray()
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if arr.shape != (m,):
        raise OptionsError(f"bias: expected {m} values (one per row of the weight), got {arr.size}")
    check_finite(arr.reshape(1, -1), what="bias")
    return arr


def compile(
    weight,
    n: int | None = None,
    *,
    options: KernelOptions | None = None,
    bias=None,
    relu: bool | None = None,
    target: str | None = None,
    arch: str | None = None,
    tensor: str | None = None,
    seed: int = 0,
    values: str = "normal",
    use_cache: bool = True,
    jobs: int | None = None,
    progress: Progress | None = None,
    tune: bool = False,
    name: str | None = None,
) -> SparseKernel:
    """Compile a fixed sparse weight A (M x K) into a kernel computing C = A @ B for B of K x n.

    `weight`: a path (.npy .npz .mtx .smtx .safetensors), a NumPy array, a scipy.sparse matrix,
    or a `Weight`. Keyword arguments override the matching fields of `options`.
    """
    if options is None:
        if n is None:
            raise OptionsError("n: required (columns of B), e.g. compile(w, n=256)")
        options = KernelOptions(n=n)
    elif n is not None and n != options.n:
        options = replace(options, n=n)
    overrides = {k: v for k, v in (("relu", relu), ("target", target), ("arch", arch)) if v is not None}
    if overrides:
        options = replace(options, **overrides)
    w = as_weight(weight, tensor=tensor, seed=seed, values=values)
    arch_ = resolve_arch(options.target, options.arch)
    options = replace(options, arch=arch_)
    if tune:
        from .tune import tuned_options

        options = tuned_options(w, options, bias=bias, progress=progress)
    bias_arr = load_bias(bias, w.shape[0])

    t0 = time.perf_counter()
    schedule, backend = plan_for(w.matrix, options, bias=bias_arr, weight_digest=w.digest())
    t1 = time.perf_counter()
    units, backend = units_for(schedule, options.target, backend)
    t2 = time.perf_counter()
    artifacts = compile_units(units, target=options.target, arch=arch_, use_cache=use_cache,
                              jobs=jobs, progress=progress, schedule=schedule, backend=backend)
    t3 = time.perf_counter()
    stats = make_stats(schedule, units, artifacts, plan_s=t1 - t0, render_s=t2 - t1,
                       compile_s=t3 - t2)
    return SparseKernel(schedule=schedule, units=units, artifacts=artifacts, target=options.target,
                        arch=arch_, name=name or w.name, stats=stats)
