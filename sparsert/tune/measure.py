"""Verification and timing of tuning candidates: the float64 reference each must reproduce, and GPU
time per call (CUDA events, host overhead hidden behind a spin kernel, inputs rotated past L2)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..check import relative_error, spmm_reference
from ..options import KernelOptions


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
        r = rng.standard_normal((m, opts.n)).astype(np.float32) if opts.residual else None
        ref = spmm_reference(weight.matrix, b, bias, residual=r, relu=opts.relu)
        return cls(b=b, residual=r, expected=ref)


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
