"""Autotuner: search (threads_x, vec, groups, rows_per_block, prefetch) on the device, persist the best.

`tuned_options(weight, options, compile_fn=sparsert.compile)` returns the options with the schedule filled in: from the tune
store when this (weight, N, arch, epilogue) was tuned before - no timing at all - else from a
search. The search is a coordinate descent over the constrained space (hardware limits below),
starting from plan.choose_parameters' default: move one parameter at a time to its best value,
then try adjacent two-parameter moves, until nothing improves or the budget of compiled
candidates is spent. Every candidate is compiled (through the kernel cache, so the final compile
is a hit), its output checked against a float64 reference, and only then timed. In every dtype:
the reference's inputs are values of the kernel's dtype, passed in that dtype, and a candidate
passes within its mode's tolerance (check.tolerance: float32's DEFAULT_RTOL, or the half
precision error bound for those inputs and that candidate's split of K).

Timing is injectable (`timer=`): the default times the kernel on the GPU with CUDA events
(`measure_us`, also used by the benchmark harness, so the tuner optimises what the harness
reports). An injected timer exists for tests of the search logic; its numbers are not
measurements, and the store records which timer produced an entry.

Store: the one cache, kind "tune" (tune/store.py), keyed by the sha256 of what a result is valid
for; an unreadable, corrupt or mismatching record is ignored (and replaced by the next search).

Modules: space (the feasible parameters), search (coordinate descent, pure), measure (reference,
verification, GPU timing), operands (B, C, R in the kernel's dtype on the host and the GPU), store
(persistence); this one runs a search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..check import DEFAULT_RTOL, relative_error
from ..errors import CompileError, OptionsError, ToolchainError
from ..frontend.weights import as_weight, load_bias
from ..options import KernelOptions
from ..pipeline import resolve_arch
from ..runtime.device import device_arch
from ..version import __version__
from .measure import (
    GpuTimer,
    Measurement,
    Reference,
    Timer,
    Verifier,
    _spin_kernel,
    l2_and_free_bytes,
    measure_us,
    rotation_count,
    set_bytes,
    verify_on_gpu,
    verify_on_host,
)
from .search import Trial, search, verified_trial
from .space import (
    GROUPS,
    MAX_ACCUMULATORS,
    MAX_PREFETCH_REGISTERS,
    PREFETCH,
    REGISTERS_PER_BLOCK,
    ROWS_PER_BLOCK,
    SCHEDULE_FIELDS,
    THREADS_X,
    Params,
    as_options,
    default_params,
    estimated_registers,
    search_space,
    violates,
)
from .store import FORMAT, load_stored, store, tune_key, tune_path

__all__ = [  # the tuner's pieces, one namespace for callers and tests
    "DEFAULT_BUDGET", "DEFAULT_RTOL", "FORMAT", "GROUPS", "MAX_ACCUMULATORS", "MAX_PREFETCH_REGISTERS",
    "PREFETCH", "REGISTERS_PER_BLOCK", "ROWS_PER_BLOCK", "SCHEDULE_FIELDS", "THREADS_X", "GpuTimer",
    "Measurement", "Params", "Reference", "Trial", "TuneStep", "_spin_kernel", "as_options", "default_params",
    "estimated_registers", "l2_and_free_bytes", "load_stored", "measure_us", "relative_error",
    "rotation_count", "search", "search_space", "set_bytes", "store", "tune_key", "tune_path",
    "tuned_options", "verify_on_gpu", "verify_on_host", "violates",
]

DEFAULT_BUDGET = 24  # compiled candidates per search: compiles of unrolled kernels take seconds


# -- the entry point --------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneStep:
    """What a progress callback receives as its third argument while tuning."""

    trial: Trial
    best: Trial | None
    cached: bool = False  # compile progress callbacks read this; nothing is cached here

    def line(self) -> str:
        p = dict(zip(SCHEDULE_FIELDS, self.trial.params))
        what = ", ".join(f"{k}={v}" for k, v in p.items())
        got = (f"{self.trial.time_us:.2f} us" if self.trial.ok
               else f"{self.trial.status} {self.trial.detail}".strip())
        best = f" (best {self.best.time_us:.2f} us)" if self.best else ""
        return f"{what}: {got}{best}"


TuneProgress = Callable[[int, int, TuneStep], None]


def _gpu_arch() -> str | None:
    return device_arch()


def _evaluate(weight, opts: KernelOptions, bias: np.ndarray | None, ref: Reference,
              timer: Timer, verify: Verifier, rtol: float | None, compile_kernel, p: Params) -> Trial:
    try:
        kernel = compile_kernel(weight, options=as_options(opts, p), bias=bias)
    except (CompileError, OptionsError) as e:
        return Trial(p, "compile-error", detail=str(e).splitlines()[0][:200])
    st = kernel.stats
    if st.spill_stores:
        return Trial(p, "spills", detail=f"{st.spill_stores} bytes of spill stores")
    if st.registers and st.registers * p[0] * p[2] > REGISTERS_PER_BLOCK:
        return Trial(p, "registers", detail=f"{st.registers} registers x {p[0] * p[2]} threads")
    # the bound counts the partial sums of the thread groups: the tolerance is the candidate's own
    tol = rtol if rtol is not None else ref.tolerance(kernel.schedule.groups)
    return verified_trial(p, kernel, lambda k: verify(k, ref), timer, tol)


def tuned_options(weight, options: KernelOptions, *, bias=None, progress: TuneProgress | None = None,
                  timer: Timer | None = None, verify: Verifier | None = None,
                  budget: int | None = None, force: bool = False,
                  rtol: float | None = None, compile_fn=None) -> KernelOptions:
    """`options` with its free schedule fields set to the fastest verified candidate.

    A stored result for the same (weight digest, N, arch, relu, bias present, ...) is returned
    without timing (unless force=True). Otherwise the search needs a GPU, or an injected `timer`
    (with `verify`, default: run the same code on the host CPU). `compile_fn`: how a candidate
    is compiled (sparsert.compile; passed in, so the tuner does not import the API above it).
    `rtol`: the relative error a candidate may show (None: its mode's, Reference.tolerance).
    """
    if compile_fn is None:
        raise OptionsError("tuned_options: compile_fn is required (sparsert.compile)")
    w = as_weight(weight)
    if options.arch is None:
        options = replace(options, arch=resolve_arch(options.target, None))
    key = tune_key(w.digest(), options, bias=bias is not None)
    if not force:
        hit = load_stored(key, options)
        if hit is not None:
            return hit[0]

    if timer is None:
        if options.target != "cuda":
            raise ToolchainError("tuning times kernels on an NVIDIA GPU; target='hip' cannot be "
                                 "tuned here (pass explicit schedule options instead)")
        dev = _gpu_arch()
        if dev is None:
            raise ToolchainError(
                "tuning needs a GPU: no CUDA device is visible, and a search must run each "
                "candidate on one. Run `sparsert tune` on the target machine (its result is "
                "stored and reused by later compiles), or compile without tune=True")
        if dev.rstrip("af") != options.arch.rstrip("af"):
            raise ToolchainError(f"tuning for arch={options.arch} but the GPU here is {dev}; tune "
                                 f"on a {options.arch} GPU or pass arch={dev!r}")
    m, k = w.shape
    bias_arr = load_bias(bias, m)
    ref = Reference.build(w, options, bias_arr)
    if timer is None:
        timer_name = "cuda-events"
        timer = GpuTimer(ref)
        verify = verify or verify_on_gpu
    else:
        timer_name = getattr(timer, "name", "injected")
        verify = verify or verify_on_host

    start = default_params(m, k, w.nnz, options)
    space = search_space(m, k, options, include=[start] if start else [])
    if not space:
        raise OptionsError(f"no feasible schedule for M={m}, K={k}, n={options.n} with the pinned "
                           f"fields {key['pinned']}")
    budget = budget or DEFAULT_BUDGET
    total = min(budget, len(space))

    def on_trial(i: int, t: Trial, best: Trial | None) -> None:
        if progress:
            progress(i, total, TuneStep(t, best))

    t0 = time.perf_counter()
    trials = search(space, lambda p: _evaluate(w, options, bias_arr, ref, timer, verify, rtol, compile_fn, p),
                    start=start, budget=budget, on_trial=on_trial)
    ok = [t for t in trials if t.ok]
    if not ok:
        first = trials[0] if trials else None
        why = f"{first.status}: {first.detail}" if first else "no candidate"
        raise ToolchainError(f"tuning found no working schedule among {len(trials)} candidates "
                             f"(first: {why})")
    best = min(ok, key=lambda t: t.time_us)
    default = next((t for t in trials if t.params == start), None)
    store(key, {
        "best": dict(zip(SCHEDULE_FIELDS, best.params)), "best_us": best.time_us,
        "default": dict(zip(SCHEDULE_FIELDS, start)) if start else None,
        "default_us": default.time_us if default and default.ok else None,
        "timer": timer_name, "device": _device_name() if timer_name == "cuda-events" else None,
        "trials": [t.as_dict() for t in trials], "space": len(space), "budget": budget,
        "seconds": round(time.perf_counter() - t0, 3), "sparsert": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return as_options(options, best.params)


def _device_name() -> str | None:
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - informational only
        return None
