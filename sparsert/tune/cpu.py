"""The CPU autotuner: register-block rows R, vectors per tile V, the run-time chunk of N and (on an
AVX-512 CPU) the broadcast form, searched per layer on this CPU and persisted like the GPU tuner's.

`tuned_cpu_options(weight, options, compile_fn=sparsert.compile)` returns the options with R
(rows_per_block), V (vec), chunk and bcast set: from the tune store when this (weight, N, ISA,
epilogue, pinned fields, threads) was tuned before - no timing at all - else from a search.

Search space (coordinates of search.search, the GPU tuner's coordinate descent):
  * rows: R counted down from the most that fit (min(max_rows(isa, V, bcast), M)); counting down
    keeps a move of V at that V's own maximum, the best R of every V measured so far, instead of
    an infeasible point. A pinned rows_per_block is the only value.
  * V = 1..4 (a V whose last vector would be wholly past N is left out).
  * chunk: tiles of N per work item (chunk = tiles x V x lanes columns), 0 = the launcher's own
    choice (CpuLauncher.chunk_for), the default. A pinned chunk is the only value.
  * bcast: 'embedded' and 'register' where the ISA is AVX-512 (else the one form AVX2 has).
The default options are the start, so the default is always measured.

Every candidate is compiled through the cache (a chunk change is a cache hit: the code is the
same), run natively on the reference inputs and checked against float64 (relative_error within
rtol, float32's tolerance) and only then timed. Time = the MINIMUM over `repeats` bursts of calls
(each burst long enough to dwarf the clock), so one stalled burst - a preempted thread on a shared
machine - can only raise a sample that the minimum then ignores, never pick a configuration. Once
the default has been timed, each candidate's bursts alternate with the default's, and its time is
the ratio of the two minima times the default's time (CpuTimer.__call__): a load that changes
between candidates then does not rank them.
After the search the few fastest candidates and the default are timed again, interleaved (round
robin, one burst each per round, minimum per candidate), and the winner of that round is stored:
all are then measured under the same load. The default runs twice in every round; the spread of
its two minima is the machine's noise, and the default is kept unless beaten by more than that
(and by at least MARGIN, 3%): a "gain" inside the noise is not worth a different configuration.
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..backends.cpu import CpuBackend
from ..backends.cpu.isa import runnable, supported
from ..backends.cpu.limits import LANES
from ..backends.cpu.params import DEFAULT_BCAST, DEFAULT_V
from ..backends.cpu.runtime import threads_for
from ..backends.cpu.x86 import max_rows
from ..check import relative_error
from ..choices import CPU_BROADCASTS, CPU_VECTORS
from ..errors import CompileError, OptionsError, ToolchainError
from ..frontend.weights import as_weight, load_bias
from ..options import KernelOptions
from ..pipeline import check_supported, resolve_arch
from ..version import __version__
from .measure import Reference
from .operands import host_array, host_values
from .search import Trial, search, verified_trial
from .store import load_record, store, tune_path

FIELDS = ("rows_per_block", "vec", "chunk", "bcast")
"""The options a CPU tuning sets (and the fields of the record's "best")."""
CPU_FORMAT = 1  # of the key: bump when the meaning of a stored CPU tuning changes
DEFAULT_CPU_BUDGET = 32  # candidates per search (a chunk move recompiles nothing)
CHUNK_TILES = (4, 8, 16, 32, 64, 128, 256)  # tiles per work item tried, besides the default
AUTO = 0  # chunk coordinate: the launcher's own choice
PLAYOFF = 4  # fastest candidates of the search timed again, interleaved with the default
ROUNDS = 15  # rounds of that playoff
REPEATS = 15  # bursts per candidate in the search (its time: the fastest)
BURST_S = 0.002  # seconds per burst: short bursts, many of them, so some run undisturbed
MARGIN = 0.03  # the default is kept unless a finalist beats it by more than this in the playoff

CpuParams = tuple[int, int, int, str]  # (rows below the most that fit, V, chunk tiles or AUTO, bcast)
_AGAIN = ("default", "again")  # the playoff's second handle on the default kernel


# -- the space ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuSpace:
    """The feasible coordinates for one problem, and their options."""

    m: int
    n: int
    isa: str
    opts: KernelOptions  # the caller's: pinned fields are kept

    @property
    def lanes(self) -> int:
        return LANES[self.isa]

    def top_rows(self, v: int, bcast: str) -> int:
        return min(max_rows(self.isa, v, bcast), self.m)

    def rows(self, p: CpuParams) -> int:
        below, v, _, bcast = p
        return self.opts.rows_per_block or self.top_rows(v, bcast) - below

    def points(self) -> list[CpuParams]:
        o, lanes = self.opts, self.lanes
        vecs = [o.vec] if o.vec else [v for v in CPU_VECTORS if v == 1 or (v - 1) * lanes < self.n]
        if o.bcast:
            forms = [o.bcast]
        else:
            forms = list(CPU_BROADCASTS) if self.isa == "avx512" else [DEFAULT_BCAST]
        out = []
        for v in vecs:
            width = v * lanes
            if o.chunk is not None:
                if o.chunk % width:
                    continue
                chunks = [AUTO]  # stands for the pinned chunk
            else:
                tiles = -(-self.n // width)
                chunks = sorted({AUTO} | {min(t, tiles) for t in CHUNK_TILES})
            for bcast in forms:
                top = self.top_rows(v, bcast)
                if o.rows_per_block:
                    if o.rows_per_block > max_rows(self.isa, v, bcast):
                        continue
                    belows = [0]
                else:
                    belows = list(range(top))
                out += [(d, v, c, bcast) for d in belows for c in chunks]
        return sorted(out)

    def start(self) -> CpuParams:
        """The defaults: what compiling the caller's options without tuning gives."""
        return (0, self.opts.vec or DEFAULT_V, AUTO, self.opts.bcast or DEFAULT_BCAST)

    def options(self, p: CpuParams) -> KernelOptions:
        _, v, tiles, bcast = p
        o = self.opts
        chunk = o.chunk if o.chunk is not None else (None if tiles == AUTO else tiles * v * self.lanes)
        if o.bcast is None and (self.isa != "avx512" or bcast == DEFAULT_BCAST):
            bcast = None  # the default form: the same code (and cache entry) as an untuned compile
        return replace(o, rows_per_block=self.rows(p), vec=v, chunk=chunk, bcast=bcast)

    def describe(self, p: CpuParams) -> dict:
        o = self.options(p)
        return {f: getattr(o, f) for f in FIELDS}


def cpu_tune_key(weight_digest: str, opts: KernelOptions, *, bias: bool, threads: int) -> dict:
    """What a stored CPU tuning is valid for. Pinned fields are part of it (a tuning with V free
    is not an answer for a caller who fixed vec=2), and so are the threads it was timed with."""
    return {
        "format": CPU_FORMAT, "tuner": "cpu", "weight": weight_digest, "n": opts.n, "target": "cpu",
        "isa": opts.arch, "relu": opts.relu, "bias": bool(bias), "residual": opts.residual,
        "pinned": {f: getattr(opts, f) for f in FIELDS if getattr(opts, f) is not None},
        "threads": threads,
    } | ({} if opts.dtype == "float32" and not opts.packed else  # float32 keys as they were
         {"dtype": opts.dtype, "accumulate": opts.accumulate or "float32"})


def load_cpu_stored(key: dict, opts: KernelOptions) -> tuple[KernelOptions, dict] | None:
    """The stored best options for `key`, or None when absent, unreadable, corrupt or stale."""
    entry = load_record(key)
    if entry is None:
        return None
    try:
        best = entry["best"]
        if not isinstance(best, dict) or set(best) != set(FIELDS):
            return None
        tuned = replace(opts, **best)  # validates (KernelOptions raises OptionsError)
        if any(getattr(opts, f) is not None and getattr(opts, f) != getattr(tuned, f) for f in FIELDS):
            return None
        return tuned, entry
    except (ValueError, KeyError, TypeError, OptionsError):
        return None


# -- measurement -------------------------------------------------------------------------------
Burst = Callable[[object, int], float]  # (kernel, calls) -> seconds for that many calls


class CpuTimer:
    """Microseconds per call of a CPU kernel at `threads`: the minimum over `repeats` bursts.

    A burst is `calls` back-to-back calls (as many as fill ~burst_s, from a timed first call), so
    the clock's resolution and the call's fixed cost are spread; the minimum over bursts is the
    run least disturbed by the rest of the machine (a stall only ever adds time). `burst` is
    injectable (tests: a fake clock); its default runs the kernel on the reference inputs.
    """

    name = "cpu-min-of-bursts"

    def __init__(self, ref: Reference, *, threads: int, repeats: int = REPEATS, burst_s: float = BURST_S,
                 max_calls: int = 10000, burst: Burst | None = None):
        self.ref, self.threads = ref, threads
        self.repeats, self.burst_s, self.max_calls = max(1, repeats), burst_s, max_calls
        # the operands as the kernel takes them (half: float16 / bfloat16 bits, exact values of ref's)
        self.b = host_array(ref.b, ref.dtype)
        self.r = None if ref.residual is None else host_array(ref.residual, ref.dtype)
        self.out = np.empty(ref.expected.shape, self.b.dtype)
        self.burst = burst or self._burst
        self.calls: dict[int, int] = {}  # per kernel (id): calls per burst, from its calibration
        self.anchor, self.anchor_us = None, None

    def set_anchor(self, kernel, us: float) -> None:
        """Time later kernels against this one (the default), interleaved: see __call__."""
        self.anchor, self.anchor_us = kernel, us

    def _burst(self, kernel, calls: int) -> float:
        b, r, out, threads = self.b, self.r, self.out, self.threads
        t0 = time.perf_counter()
        for _ in range(calls):
            kernel(b, out=out, residual=r, threads=threads)
        return time.perf_counter() - t0

    def calibrate(self, kernel) -> int:
        n = self.calls.get(id(kernel))
        if n is None:
            self.burst(kernel, 1)  # warm: the pool's threads, the job, code and panel in cache
            one = max(self.burst(kernel, 1), 1e-7)
            n = self.calls[id(kernel)] = int(min(self.max_calls, max(1, math.ceil(self.burst_s / one))))
        return n

    def sample(self, kernel) -> float:
        """One burst: microseconds per call."""
        calls = self.calibrate(kernel)
        return self.burst(kernel, calls) * 1e6 / calls

    def __call__(self, kernel) -> float:
        """The minimum over `repeats` bursts. With an anchor, the bursts alternate with the
        anchor's, and the time is min(kernel) / min(anchor) x the anchor's own time: both are
        measured in the same seconds, so a load that comes and goes between candidates (a search
        takes minutes on a shared machine) does not rank them."""
        if self.anchor is None or kernel is self.anchor:
            return min(self.sample(kernel) for _ in range(self.repeats))
        a = c = math.inf
        for _ in range(self.repeats):
            a = min(a, self.sample(self.anchor))
            c = min(c, self.sample(kernel))
        return c / a * self.anchor_us


def interleaved(timer: CpuTimer, kernels: dict, rounds: int = ROUNDS) -> dict:
    """{key: minimum us per call} over `rounds` rounds, each one burst of every kernel in turn
    (so each is measured under the same load as the others)."""
    best = {key: math.inf for key in kernels}
    for _ in range(max(1, rounds)):
        for key, kernel in kernels.items():
            best[key] = min(best[key], timer.sample(kernel))
    return best


def verify_native(kernel, ref: Reference, threads: int) -> float:
    r = None if ref.residual is None else host_array(ref.residual, ref.dtype)
    got = kernel(host_array(ref.b, ref.dtype), residual=r, threads=threads)
    return relative_error(host_values(got, ref.dtype), ref.expected)


# -- the search --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuTuneStep:
    """What a progress callback receives as its third argument while tuning."""

    trial: Trial
    best: Trial | None
    fields: dict
    cached: bool = False  # compile progress callbacks read this; nothing is cached here

    def line(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        got = (f"{self.trial.time_us:.2f} us" if self.trial.ok
               else f"{self.trial.status} {self.trial.detail}".strip())
        best = f" (best {self.best.time_us:.2f} us)" if self.best else ""
        return f"{what}: {got}{best}"


def _trial_dict(space: CpuSpace, t: Trial) -> dict:
    return {"params": space.describe(t.params), "status": t.status, "time_us": t.time_us,
            "max_rel_err": t.max_rel_err, "detail": t.detail}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tuned_cpu_options(weight, options: KernelOptions, *, bias=None, threads: int | None = None,
                      progress: Callable[[int, int, CpuTuneStep], None] | None = None,
                      budget: int | None = None, force: bool = False, rtol: float | None = None,
                      compile_fn=None, timer: CpuTimer | None = None, playoff: int | None = None,
                      rounds: int | None = None) -> KernelOptions:
    """`options` (target='cpu') with rows_per_block, vec, chunk and bcast set to the fastest
    verified candidate at `threads` (default: what a call uses, threads_for(None)).

    A stored result for the same key is returned without timing (unless force=True). `compile_fn`:
    how a candidate is compiled (sparsert.compile; passed in, so the tuner does not import the API
    above it). `timer`: a CpuTimer (tests inject one with a fake burst). `rtol`: the largest
    relative error a candidate may show (None: DEFAULT_RTOL in float32, the mode's error bound on
    the reference inputs in half precision, check.tolerance).
    """
    if compile_fn is None:
        raise OptionsError("tuned_cpu_options: compile_fn is required (sparsert.compile)")
    if options.target != "cpu":
        raise OptionsError(f"tuned_cpu_options: target={options.target!r}; this tuner times CPU kernels")
    w = as_weight(weight)
    if options.arch is None:
        options = replace(options, arch=resolve_arch("cpu", None))
    check_supported(CpuBackend(), options)  # before any search: every candidate would fail alike
    threads = threads_for(threads)
    key = cpu_tune_key(w.digest(), options, bias=bias is not None, threads=threads)
    if not force:
        hit = load_cpu_stored(key, options)
        if hit is not None:
            return hit[0]
    if timer is None and not runnable(options.arch):
        raise ToolchainError(f"tuning arch={options.arch!r} times its kernels on this CPU, which runs "
                             f"{', '.join(supported()) or 'neither avx2 nor avx512'}; tune on an "
                             f"{options.arch} machine (the result is stored and reused) or compile "
                             f"without tune=True")

    m = w.shape[0]
    bias_arr = load_bias(bias, m)
    ref = Reference.build(w, options, bias_arr)
    if rtol is None:
        rtol = ref.tolerance(groups=1)  # a CPU register block never splits K
    if timer is None:
        timer = CpuTimer(ref, threads=threads, repeats=REPEATS, burst_s=BURST_S)
    playoff = PLAYOFF if playoff is None else playoff
    rounds = ROUNDS if rounds is None else rounds
    space = CpuSpace(m=m, n=options.n, isa=options.arch, opts=options)
    points = space.points()
    if not points:
        raise OptionsError(f"no feasible CPU schedule for M={m}, n={options.n}, {options.arch} with the "
                           f"pinned fields {key['pinned']}")
    start = space.start()
    budget = budget or DEFAULT_CPU_BUDGET
    total = min(budget, len(points))
    kernels: dict[CpuParams, object] = {}

    def evaluate(p: CpuParams) -> Trial:
        try:
            with warnings.catch_warnings():  # wide candidates are big builds, and expected here
                warnings.filterwarnings("ignore", message="sparsert: large build")
                kernel = compile_fn(w, options=space.options(p), bias=bias_arr)
        except (CompileError, OptionsError) as e:
            return Trial(p, "compile-error", detail=str(e).splitlines()[0][:200])
        trial = verified_trial(p, kernel, lambda k: verify_native(k, ref, threads), timer, rtol, failed="run-error")
        if not trial.ok:
            return trial
        kernels[p] = kernel
        if p == start and getattr(timer, "anchor", True) is None:
            timer.set_anchor(kernel, trial.time_us)  # every later candidate is timed beside the default
        return trial

    def on_trial(i: int, t: Trial, best: Trial | None) -> None:
        if progress:
            progress(i, total, CpuTuneStep(t, best, space.describe(t.params)))

    t0 = time.perf_counter()
    trials = search(points, evaluate, start=start, budget=budget, on_trial=on_trial)
    ok = sorted((t for t in trials if t.ok), key=lambda t: t.time_us)
    if not ok:
        first = trials[0] if trials else None
        why = f"{first.status}: {first.detail}" if first else "no candidate"
        raise ToolchainError(f"tuning found no working CPU schedule among {len(trials)} candidates "
                             f"(first: {why})")
    # The finalists and the default again, interleaved: the choice is made under one load.
    finalists = [t.params for t in ok[:max(1, playoff)]]
    if start in kernels and start not in finalists:
        finalists.append(start)
    noise = 0.0
    if len(finalists) > 1:
        # The default runs twice per round: how far apart one kernel's two minima land is the
        # noise of this machine now, and a finalist must beat the default by more than that.
        final = interleaved(timer, {**{p: kernels[p] for p in finalists},
                                    **({_AGAIN: kernels[start]} if start in kernels else {})}, rounds)
        if start in kernels:
            again = final.pop(_AGAIN)
            noise = max(final[start], again) / min(final[start], again) - 1
            final[start] = min(final[start], again)
    else:
        final = {finalists[0]: ok[0].time_us}
    best = min(finalists, key=lambda p: (final[p], finalists.index(p)))
    margin = max(MARGIN, noise)
    if start in final and final[best] > final[start] * (1 - margin):
        best = start  # within the noise of the default: keep what an untuned compile does
    store(key, {
        "best": space.describe(best), "best_us": final[best],
        "default": space.describe(start), "default_us": final.get(start),
        "playoff": [{"params": space.describe(p), "time_us": final[p]} for p in finalists],
        "noise": noise, "margin": margin,
        "timer": timer.name, "repeats": timer.repeats, "rounds": rounds, "threads": threads,
        "cpu": _cpu_model(), "trials": [_trial_dict(space, t) for t in trials], "space": len(points),
        "budget": budget, "seconds": round(time.perf_counter() - t0, 3), "sparsert": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return space.options(best)


__all__ = ["AUTO", "CHUNK_TILES", "CPU_FORMAT", "DEFAULT_CPU_BUDGET", "FIELDS", "CpuParams", "CpuSpace",
           "CpuTimer", "CpuTuneStep", "cpu_tune_key", "interleaved", "load_cpu_stored", "tune_path",
           "tuned_cpu_options", "verify_native"]
