"""Autotuner: search (threads_x, vec, groups, rows_per_block, prefetch) on the device, persist the best.

`tuned_options(weight, options)` returns the options with the schedule filled in: from the tune
store when this (weight, N, arch, epilogue) was tuned before - no timing at all - else from a
search. The search is a coordinate descent over the constrained space (hardware limits below),
starting from plan.choose_parameters' default: move one parameter at a time to its best value,
then try adjacent two-parameter moves, until nothing improves or the budget of compiled
candidates is spent. Every candidate is compiled (through the kernel cache, so the final compile
is a hit), its output checked against a float64 reference, and only then timed.

Timing is injectable (`timer=`): the default times the kernel on the GPU with CUDA events
(`measure_us`, also used by the benchmark harness, so the tuner optimises what the harness
reports). An injected timer exists for tests of the search logic; its numbers are not
measurements, and the store records which timer produced an entry.

Store: <cache_dir>/tune/<sha256 of the key>.json, written atomically; an unreadable, corrupt or
mismatching file is ignored (and replaced by the next search).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import __version__
from .config import settings
from .errors import CompileError, OptionsError, SparsertError, ToolchainError
from .options import VECTOR_WIDTHS, KernelOptions
from .plan import MAX_REGISTERS_PER_THREAD, REGISTER_FILE, SHARED_MEMORY_BYTES, choose_parameters, choose_prefetch

FORMAT = 2  # 2: prefetch joined the searched fields
DEFAULT_BUDGET = 24  # compiled candidates per search: compiles of unrolled kernels take seconds
DEFAULT_RTOL = 1e-4  # normwise relative error accepted against the float64 reference

# Hardware limits (all NVIDIA GPUs sparsert targets, sm_70..sm_120):
MAX_THREADS_PER_BLOCK = 1024
REGISTERS_PER_BLOCK = REGISTER_FILE
MAX_ACCUMULATORS = 128  # rows_per_block * vec accumulators per thread: beyond this ptxas spills
# Registers besides the accumulators: vec B values, addresses, indices (a rough, conservative guess;
# the compiled kernel's real count and spills are checked after ptxas).
OVERHEAD_REGISTERS = 24

THREADS_X = (8, 16, 32, 64, 128, 256)
GROUPS = (1, 2, 4, 8)
ROWS_PER_BLOCK = (1, 2, 4, 8, 16, 32, 64, 128)
PREFETCH = (4, 8, 16, 32)  # rows of B in flight per thread (PTX backend's software pipelining)
MAX_PREFETCH_REGISTERS = 32  # prefetch * vec
SCHEDULE_FIELDS = ("threads_x", "vec", "groups", "rows_per_block", "prefetch")

Params = tuple[int, int, int, int, int]  # (threads_x, vec, groups, rows_per_block, prefetch)


# -- the search space -------------------------------------------------------------------------
def estimated_registers(vec: int, rows_per_block: int, prefetch: int = 1) -> int:
    return rows_per_block * vec + prefetch * vec + OVERHEAD_REGISTERS


def violates(p: Params, *, m: int, k: int, n: int) -> str | None:
    """Why a parameter tuple is infeasible for an M x K weight at this N, or None if it fits."""
    tx, vec, groups, rows, prefetch = p
    threads = tx * groups
    if n % vec:
        return f"vec={vec} does not divide n={n}"
    if threads > MAX_THREADS_PER_BLOCK:
        return f"{threads} threads per block > {MAX_THREADS_PER_BLOCK}"
    if rows * vec > MAX_ACCUMULATORS:
        return f"{rows * vec} accumulators per thread > {MAX_ACCUMULATORS}"
    if groups > 1 and groups * rows * tx * vec * 4 > SHARED_MEMORY_BYTES:
        return f"{groups * rows * tx * vec * 4} bytes of shared memory > {SHARED_MEMORY_BYTES}"
    if prefetch * vec > MAX_PREFETCH_REGISTERS:
        return f"{prefetch} rows x vec {vec} of B in flight > {MAX_PREFETCH_REGISTERS} registers"
    regs = estimated_registers(vec, rows, prefetch)
    if regs > MAX_REGISTERS_PER_THREAD or regs * threads > REGISTERS_PER_BLOCK:
        return f"~{regs} registers x {threads} threads > {REGISTERS_PER_BLOCK} per block"
    return None


def _values(pinned: int | None, choices: Sequence[int], useful: Callable[[int], bool]) -> list[int]:
    return [pinned] if pinned is not None else [c for c in choices if useful(c)]


def search_space(m: int, k: int, opts: KernelOptions, include: Sequence[Params] = ()) -> list[Params]:
    """Every feasible (threads_x, vec, groups, rows_per_block, prefetch), pinned fields of `opts` kept,
    plus the feasible tuples of `include` (the planner's default may use e.g. groups=3).

    Beyond the hard limits, values that can only waste work are left out: a tile of N much wider
    than N (idle threads), more rows per block than M has.
    """
    n = opts.n
    vecs = _values(opts.vec, VECTOR_WIDTHS, lambda v: n % v == 0)
    rows = _values(opts.rows_per_block, ROWS_PER_BLOCK, lambda r: r == 1 or r < 2 * m)
    groups = _values(opts.groups, GROUPS, lambda g: g <= k)
    depths = _values(opts.prefetch, PREFETCH, lambda d: True)
    space = []
    for vec in vecs:
        txs = _values(opts.threads_x, THREADS_X,
                      lambda t, v=vec: t == THREADS_X[0] or t * v < 2 * n)  # >= half the lanes busy
        for tx in txs:
            for g in groups:
                for r in rows:
                    for d in depths:
                        p = (tx, vec, g, r, d)
                        if violates(p, m=m, k=k, n=n) is None:
                            space.append(p)
    extra = [tuple(p) for p in include if violates(tuple(p), m=m, k=k, n=n) is None]
    return sorted(set(space) | set(extra))  # type: ignore[arg-type]


def default_params(m: int, k: int, nnz: int, opts: KernelOptions) -> Params | None:
    try:
        tx, vec, groups, rows = choose_parameters(m, k, nnz, opts)
    except OptionsError:
        return None
    return tx, vec, groups, rows, choose_prefetch(vec, opts)


def as_options(opts: KernelOptions, p: Params) -> KernelOptions:
    return replace(opts, **dict(zip(SCHEDULE_FIELDS, p)))


# -- the search (pure: no GPU, no compiler) -----------------------------------------------------
@dataclass(frozen=True)
class Trial:
    params: Params
    status: str  # "ok", or why it was rejected: compile-error, wrong, spills, launch-error, ...
    time_us: float | None = None
    max_rel_err: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.time_us is not None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(zip(SCHEDULE_FIELDS, self.params))
        return d


def _neighbours(p: Params, axes: Sequence[Sequence[int]], two_step: bool) -> list[Params]:
    """One-coordinate moves (to every value, nearest first), or adjacent two-coordinate moves."""
    dims = len(p)
    idx = [axes[a].index(p[a]) for a in range(dims)]
    out: list[Params] = []
    if not two_step:
        # every value of every axis, nearest first across axes, so a small budget sees each axis
        moves = sorted((abs(j - idx[a]), a, j) for a in range(dims) for j in range(len(axes[a]))
                       if j != idx[a])
        for _, a, j in moves:
            q = list(p)
            q[a] = axes[a][j]
            out.append(tuple(q))  # type: ignore[arg-type]
        return out
    for a in range(dims):
        for b in range(a + 1, dims):
            for da in (-1, 1):
                for db in (-1, 1):
                    ja, jb = idx[a] + da, idx[b] + db
                    if 0 <= ja < len(axes[a]) and 0 <= jb < len(axes[b]):
                        q = list(p)
                        q[a], q[b] = axes[a][ja], axes[b][jb]
                        out.append(tuple(q))  # type: ignore[arg-type]
    return out


def search(space: Sequence[Params], evaluate: Callable[[Params], Trial], *, start: Params | None,
           budget: int, on_trial: Callable[[int, Trial, Trial | None], None] | None = None
           ) -> list[Trial]:
    """Coordinate descent over `space` from `start`; at most `budget` evaluations. Deterministic.

    Returns every trial in evaluation order (the caller picks the fastest ok one).
    """
    if not space or budget < 1:
        return []
    feasible = set(space)
    axes = [sorted({p[a] for p in space}) for a in range(len(space[0]))]
    trials: dict[Params, Trial] = {}
    order: list[Trial] = []

    def best() -> Trial | None:
        ok = [t for t in order if t.ok]
        return min(ok, key=lambda t: t.time_us) if ok else None

    def run(p: Params) -> None:
        t = evaluate(p)
        trials[p] = t
        order.append(t)
        if on_trial:
            on_trial(len(order), t, best())

    current = start if start in feasible else space[0]
    run(current)
    while len(order) < budget:
        improved = False
        for two_step in (False, True):
            for q in _neighbours(current, axes, two_step):
                if len(order) >= budget:
                    break
                if q in feasible and q not in trials:
                    run(q)
            b = best()
            if b is not None and b.params != current and (
                    current not in trials or not trials[current].ok
                    or b.time_us < trials[current].time_us):
                current, improved = b.params, True
                break  # descend again from the new best, one coordinate at a time
        if not improved:
            if not trials[current].ok:  # a failing start with no ok neighbour: try the rest
                rest = [p for p in space if p not in trials]
                if not rest:
                    break
                current = rest[0]
                run(current)
                continue
            break
    return order


# -- verification and timing on the device -------------------------------------------------------
def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (normwise: robust to outputs near zero)."""
    if ref.size == 0:
        return 0.0
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return math.inf
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(got - ref)))
    return diff / scale if scale > 0 else diff


@dataclass(frozen=True, eq=False)
class Reference:
    """Fixed inputs every candidate runs on, and the float64 result it must reproduce."""

    b: np.ndarray  # K x N float32
    residual: np.ndarray | None  # M x N float32
    expected: np.ndarray  # M x N float64

    @classmethod
    def build(cls, weight, opts: KernelOptions, bias: np.ndarray | None, seed: int = 0) -> Reference:
        m, k = weight.shape
        rng = np.random.default_rng(seed)
        b = rng.standard_normal((k, opts.n)).astype(np.float32)
        ref = weight.matrix.astype(np.float64) @ b.astype(np.float64)
        if bias is not None:
            ref += np.asarray(bias, dtype=np.float64)[:, None]
        r = None
        if opts.residual:
            r = rng.standard_normal((m, opts.n)).astype(np.float32)
            ref += r
        if opts.relu:
            ref = np.maximum(ref, 0.0)
        return cls(b=b, residual=r, expected=np.asarray(ref))


Timer = Callable[..., float]  # (SparseKernel) -> microseconds per call
Verifier = Callable[..., float]  # (SparseKernel, Reference) -> max relative error


def verify_on_gpu(kernel, ref: Reference) -> float:
    import cupy

    r = None if ref.residual is None else cupy.asarray(ref.residual)
    got = cupy.asnumpy(kernel(cupy.asarray(ref.b), residual=r))
    return relative_error(got, ref.expected)


def verify_on_host(kernel, ref: Reference) -> float:
    """The same generated code on the CPU (kernel.run_host): for tuning with an injected timer."""
    return relative_error(kernel.run_host(ref.b, residual=ref.residual), ref.expected)


@dataclass(frozen=True)
class Measurement:
    median_us: float
    min_us: float
    samples: int
    inner: int  # launches per sample (each on the next rotation set); times are per launch
    host_bound: bool  # the GPU may have waited for the host in some samples (times too high)

    def as_dict(self) -> dict:
        return asdict(self)


_SPIN_SOURCE = r"""
extern "C" __global__ void sparsert_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"""


@lru_cache(maxsize=1)
def _spin_kernel():
    import cupy

    return cupy.RawKernel(_SPIN_SOURCE, "sparsert_spin")


def _spin(stream, seconds: float) -> None:
    """Hold the stream for `seconds` (one thread polling the global nanosecond timer)."""
    _spin_kernel()((1,), (1,), (np.uint64(int(seconds * 1e9)),), stream=stream)


def measure_us(launch: Callable[[int], None], *, warmup: int = 10, repeat: int = 50,
               target_sample_us: float = 20.0, max_inner: int = 16, chunk: int = 50) -> Measurement:
    """GPU time per `launch(i)` in microseconds: the median over `repeat` samples.

    `launch(i)` enqueues one call on CuPy's current stream (torch work must run on that same
    stream), using rotation set i (the caller picks i % sets, so no call finds its inputs left in
    L2 by the previous one). A sample is `inner` consecutive calls between two CUDA events, with
    inner chosen from the warm-up so a sample lasts >= target_sample_us (event resolution is
    ~0.5 us). Host overhead (Python, descriptor set-up) must not count: each chunk of samples is
    queued behind a spin kernel that holds the GPU until the host has enqueued the whole chunk,
    so the events see back-to-back GPU work. If the spin ended before the host finished (the GPU
    may have idled), the chunk is redone with a longer spin, and flagged if that keeps happening.
    """
    import cupy

    stream = cupy.cuda.get_current_stream()
    Event = cupy.cuda.Event
    idx = 0
    for _ in range(max(1, warmup)):
        launch(idx)
        idx += 1
    stream.synchronize()
    e0, e1 = Event(), Event()
    h0 = time.perf_counter()
    e0.record(stream)
    probe = max(1, warmup)
    for _ in range(probe):
        launch(idx)
        idx += 1
    e1.record(stream)
    host_s = (time.perf_counter() - h0) / probe
    e1.synchronize()
    est_us = max(1e-3, cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / probe)
    inner = int(min(max_inner, max(1, math.ceil(target_sample_us / est_us))))

    samples: list[float] = []
    host_bound = False
    remaining = repeat
    while remaining > 0:
        # few enough queued commands that the host never blocks on a full launch queue
        count = min(chunk, remaining, max(1, 400 // (inner + 2)))
        # enqueue cost: the launches plus two event records per sample (~5 us each, generously)
        spin_s = min(0.5, max(2e-3, 2.0 * count * (inner * host_s + 10e-6)))
        for attempt in range(3):
            events = [(Event(), Event()) for _ in range(count)]
            _spin(stream, spin_s)
            spin_done = Event()
            spin_done.record(stream)
            for a, b in events:
                a.record(stream)
                for _ in range(inner):
                    launch(idx)
                    idx += 1
                b.record(stream)
            starved = spin_done.done  # the spin finished while we were still enqueuing
            events[-1][1].synchronize()
            if not starved or attempt == 2:
                host_bound |= starved
                samples += [cupy.cuda.get_elapsed_time(a, b) * 1e3 / inner for a, b in events]
                break
            spin_s = min(2.0, spin_s * 4)
        remaining -= count
    return Measurement(median_us=float(np.median(samples)), min_us=float(np.min(samples)),
                       samples=len(samples), inner=inner, host_bound=host_bound)


def rotation_count(bytes_per_set: int, l2_bytes: int, budget_bytes: int, *, most: int = 64) -> int:
    """Input sets to rotate through so that, between two uses of one set, more than twice the L2
    has been touched (no call is timed with its operands still cached)."""
    need = max(2, math.ceil(2 * l2_bytes / max(1, bytes_per_set)) + 1)
    fit = max(1, budget_bytes // max(1, bytes_per_set))
    return int(max(1, min(need, most, fit)))


def l2_and_free_bytes() -> tuple[int, int]:
    import cupy

    dev = cupy.cuda.Device()
    l2 = int(dev.attributes.get("L2CacheSize", 64 << 20))
    free, _total = cupy.cuda.runtime.memGetInfo()
    return l2, int(free)


class GpuTimer:
    """Times a kernel on the GPU: B (and C, R) rotated over enough copies to defeat L2."""

    def __init__(self, ref: Reference, *, warmup: int = 10, repeat: int = 50):
        import cupy

        self.warmup, self.repeat = warmup, repeat
        k, n = ref.b.shape
        m = ref.expected.shape[0]
        per_set = 4 * (k * n + m * n * (2 if ref.residual is not None else 1))
        l2, free = l2_and_free_bytes()
        sets = rotation_count(per_set, l2, free // 4)
        rng = cupy.random.default_rng(1)
        self.b = [rng.standard_normal((k, n), dtype=cupy.float32) for _ in range(sets)]
        self.c = [cupy.empty((m, n), dtype=cupy.float32) for _ in range(sets)]
        self.r = ([rng.standard_normal((m, n), dtype=cupy.float32) for _ in range(sets)]
                  if ref.residual is not None else None)
        self.last: Measurement | None = None

    def __call__(self, kernel) -> float:
        s = len(self.b)

        def launch(i: int) -> None:
            kernel(self.b[i % s], out=self.c[i % s],
                   residual=None if self.r is None else self.r[i % s])

        self.last = measure_us(launch, warmup=self.warmup, repeat=self.repeat)
        return self.last.median_us


# -- persistence ------------------------------------------------------------------------------
def tune_key(weight_digest: str, opts: KernelOptions, *, bias: bool) -> dict:
    """What a stored tuning is valid for. Pinned schedule fields are part of it: a tuning found
    with vec free is not an answer for a caller who fixed vec=2."""
    return {
        "format": FORMAT, "weight": weight_digest, "n": opts.n, "arch": opts.arch,
        "target": opts.target, "relu": opts.relu, "bias": bool(bias), "residual": opts.residual,
        "pinned": {f: getattr(opts, f) for f in SCHEDULE_FIELDS if getattr(opts, f) is not None},
    }


def tune_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return settings().cache_dir / "tune" / f"{digest}.json"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_stored(key: dict, opts: KernelOptions) -> tuple[KernelOptions, dict] | None:
    """The stored best options for `key`, or None when absent, unreadable, corrupt or stale."""
    path = tune_path(key)
    try:
        entry = json.loads(path.read_text())
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
            return None
        best = entry["best"]
        params = tuple(best[f] for f in SCHEDULE_FIELDS)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in params):
            return None
        tuned = as_options(opts, params)  # validates (KernelOptions raises OptionsError)
        if any(getattr(opts, f) is not None and getattr(opts, f) != getattr(tuned, f)
               for f in SCHEDULE_FIELDS):
            return None
        return tuned, entry
    except (OSError, ValueError, KeyError, TypeError, OptionsError):
        return None


def store(key: dict, entry: dict) -> Path:
    path = tune_path(key)
    _atomic_write_text(path, json.dumps({"format": FORMAT, "key": key, **entry}, indent=2,
                                        sort_keys=True) + "\n")
    return path


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
    from .nvrtc import device_arch

    return device_arch()


def _evaluate(weight, opts: KernelOptions, bias: np.ndarray | None, ref: Reference,
              timer: Timer, verify: Verifier, rtol: float, p: Params) -> Trial:
    from .api import compile as compile_kernel

    try:
        kernel = compile_kernel(weight, options=as_options(opts, p), bias=bias)
    except (CompileError, OptionsError) as e:
        return Trial(p, "compile-error", detail=str(e).splitlines()[0][:200])
    st = kernel.stats
    if st.spill_stores:
        return Trial(p, "spills", detail=f"{st.spill_stores} bytes of spill stores")
    if st.registers and st.registers * p[0] * p[2] > REGISTERS_PER_BLOCK:
        return Trial(p, "registers", detail=f"{st.registers} registers x {p[0] * p[2]} threads")
    try:
        err = verify(kernel, ref)
    except SparsertError as e:
        return Trial(p, "run-error", detail=str(e)[:200])
    if not err <= rtol:  # also catches NaN
        return Trial(p, "wrong", max_rel_err=err, detail=f"max relative error {err:.2e} > {rtol:g}")
    try:
        t = float(timer(kernel))
    except SparsertError as e:
        return Trial(p, "launch-error", max_rel_err=err, detail=str(e)[:200])
    if not (t > 0 and math.isfinite(t)):
        return Trial(p, "launch-error", max_rel_err=err, detail=f"timer returned {t!r}")
    return Trial(p, "ok", time_us=t, max_rel_err=err)


def tuned_options(weight, options: KernelOptions, *, bias=None, progress: TuneProgress | None = None,
                  timer: Timer | None = None, verify: Verifier | None = None,
                  budget: int | None = None, force: bool = False,
                  rtol: float = DEFAULT_RTOL) -> KernelOptions:
    """`options` with its free schedule fields set to the fastest verified candidate.

    A stored result for the same (weight digest, N, arch, relu, bias present, ...) is returned
    without timing (unless force=True). Otherwise the search needs a GPU, or an injected `timer`
    (with `verify`, default: run the same code on the host CPU).
    """
    from .api import as_weight, load_bias, resolve_arch

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
    trials = search(space, lambda p: _evaluate(w, options, bias_arr, ref, timer, verify, rtol, p),
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


# -- CLI: `sparsert tune WEIGHT --n N` ----------------------------------------------------------
def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weight", help="weight file: .npy .npz .mtx .smtx .safetensors")
    p.add_argument("--n", type=int, required=True, help="columns of B the kernel is specialised to")
    p.add_argument("--arch", help="sm_80, sm_90, ... (default: the current GPU)")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help=f"most candidates compiled and timed (default {DEFAULT_BUDGET})")
    p.add_argument("--relu", action="store_true", help="tune the kernel with a fused ReLU")
    p.add_argument("--bias", help="bias file (M values); its presence is part of the tuning key")
    p.add_argument("--tensor", help="tensor name inside a .safetensors / multi-array .npz file")
    p.add_argument("--seed", type=int, default=0, help="seed for values of pattern-only files")
    p.add_argument("--values", choices=("normal", "ones"), default="normal")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"max relative error a candidate may show (default {DEFAULT_RTOL:g})")
    p.add_argument("--force", action="store_true", help="search again even if a result is stored")


def tune_main(args) -> int:
    from .api import as_weight, resolve_arch

    if args.n is None or args.n <= 0:
        raise OptionsError(f"--n={args.n}: expected a positive integer")
    if args.budget <= 0:
        raise OptionsError(f"--budget={args.budget}: expected a positive integer")
    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    opts = KernelOptions(n=args.n, arch=resolve_arch("cuda", args.arch), relu=args.relu)
    key = tune_key(w.digest(), opts, bias=args.bias is not None)
    m, k = w.shape
    print(f"{w.name}: {m} x {k}, {w.nnz} nonzeros ({100 * w.sparsity:.1f}% sparse), "
          f"n={opts.n}, {opts.arch}", file=sys.stderr)
    stored = None if args.force else load_stored(key, opts)
    if stored is not None:
        best, entry = stored
        print(f"stored tuning reused (no timing): {tune_path(key)}", file=sys.stderr)
    else:
        def progress(i: int, total: int, step: TuneStep) -> None:
            print(f"  [{i}/{total}] {step.line()}", file=sys.stderr, flush=True)

        best = tuned_options(w, opts, bias=args.bias, progress=progress, budget=args.budget,
                             force=True, rtol=args.rtol)
        entry = json.loads(tune_path(key).read_text())
        print(f"stored: {tune_path(key)}", file=sys.stderr)
    params = {f: getattr(best, f) for f in SCHEDULE_FIELDS}
    line = " ".join(f"--{f.replace('_', '-')} {v}" for f, v in params.items())
    gain = ""
    if entry.get("best_us") and entry.get("default_us"):
        gain = (f" ({entry['best_us']:.2f} us vs default {entry['default_us']:.2f} us, "
                f"{entry['default_us'] / entry['best_us']:.2f}x)")
    print(f"best: {line}{gain}")
    return 0
