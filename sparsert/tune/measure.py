"""Verification and timing of tuning candidates: the float64 reference each must reproduce, and GPU
time per call (CUDA events, host overhead hidden behind a spin kernel, inputs rotated past L2)."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..check import relative_error, spmm_reference, tolerance
from ..ir.precision import round_bias, round_to, round_weights
from ..options import KernelOptions
from .operands import (
    ELEM_BYTES,
    device_array,
    device_empty,
    device_normal,
    device_values,
    host_array,
    host_values,
)


@dataclass(frozen=True, eq=False)
class Reference:
    """Fixed inputs every candidate runs on, and the float64 result it must reproduce.

    B and R are float32 arrays of values the kernel's dtype holds exactly (drawn, then rounded to
    it), so the kernel sees the very numbers the reference multiplies; `expected` uses the weights
    the kernel multiplies by (packed half: rounded to the accumulation format, as the plan does) and
    the bias in the dtype."""

    b: np.ndarray  # K x N float32, exact in dtype
    residual: np.ndarray | None  # M x N float32, exact in dtype
    expected: np.ndarray  # M x N float64
    dtype: str = "float32"
    accumulate: str = "float32"
    magnitude: float = 0.0  # max over elements of S = |A| |B| + |bias| + |R| (the error bound's scale)
    row_nnz: int = 0  # most nonzeros in a row of the weights the kernel multiplies by
    target: str = "cuda"  # where the mode's arithmetic runs (check.arithmetic)

    @classmethod
    def build(cls, weight, opts: KernelOptions, bias: np.ndarray | None, seed: int = 0) -> Reference:
        m, k = weight.shape
        dtype, accumulate = opts.dtype, opts.accumulate or "float32"
        rng = np.random.default_rng(seed)
        b = round_to(rng.standard_normal((k, opts.n)).astype(np.float32), dtype)
        r = round_to(rng.standard_normal((m, opts.n)).astype(np.float32), dtype) if opts.residual else None
        a = weight.matrix
        if accumulate != "float32":
            with warnings.catch_warnings():  # weights rounding to zero: compiling the kernel warns
                warnings.simplefilter("ignore", RuntimeWarning)
                a = round_weights(a, accumulate)
        if bias is not None:
            bias = round_bias(np.asarray(bias, dtype=np.float32), dtype)
        ref = spmm_reference(a, b, bias, residual=r, relu=opts.relu)
        scale = spmm_reference(abs(a), np.abs(b), None if bias is None else np.abs(bias),
                               residual=None if r is None else np.abs(r))
        return cls(b=b, residual=r, expected=ref, dtype=dtype, accumulate=accumulate, target=opts.target,
                   magnitude=float(np.max(scale, initial=0.0)),
                   row_nnz=int(np.diff(a.tocsr().indptr).max(initial=0)))

    def tolerance(self, groups: int) -> float:
        """The largest relative error a correct kernel whose `groups` thread groups split K can
        show on these inputs (check.tolerance: DEFAULT_RTOL in float32, the error bound in half)."""
        return tolerance(self.dtype, self.accumulate, self.row_nnz + groups, s_max=self.magnitude,
                         c_max=float(np.max(np.abs(self.expected), initial=0.0)), target=self.target)


Timer = Callable[..., float]  # (SparseKernel) -> microseconds per call
Verifier = Callable[..., float]  # (SparseKernel, Reference) -> max relative error


def verify_on_gpu(kernel, ref: Reference) -> float:
    """The kernel's own call on this GPU, operands in its dtype (bfloat16: torch CUDA tensors)."""
    r = None if ref.residual is None else device_array(ref.residual, ref.dtype)
    got = kernel(device_array(ref.b, ref.dtype), residual=r)
    return relative_error(device_values(got, ref.dtype), ref.expected)


def verify_on_host(kernel, ref: Reference) -> float:
    """The same generated code on the CPU (kernel.run_host): for tuning with an injected timer."""
    r = None if ref.residual is None else host_array(ref.residual, ref.dtype)
    got = kernel.run_host(host_array(ref.b, ref.dtype), residual=r)
    return relative_error(host_values(got, ref.dtype), ref.expected)


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


def set_bytes(ref: Reference) -> int:
    """Bytes of one rotation set: B, C and (if fused) R, in the kernel's dtype."""
    k, n = ref.b.shape
    m = ref.expected.shape[0]
    return ELEM_BYTES[ref.dtype] * (k * n + m * n * (2 if ref.residual is not None else 1))


class GpuTimer:
    """Times a kernel on the GPU: B (and C, R) in the kernel's dtype, rotated over enough copies
    to defeat L2. bfloat16 operands are torch tensors, launched on torch's current stream, so the
    CUDA events are recorded on that same stream (measure_us times CuPy's current stream)."""

    def __init__(self, ref: Reference, *, warmup: int = 10, repeat: int = 50):
        self.warmup, self.repeat, self.dtype = warmup, repeat, ref.dtype
        k, n = ref.b.shape
        m = ref.expected.shape[0]
        l2, free = l2_and_free_bytes()
        sets = rotation_count(set_bytes(ref), l2, free // 4)
        self.b = [device_normal((k, n), ref.dtype, seed=1 + i) for i in range(sets)]
        self.c = [device_empty((m, n), ref.dtype) for _ in range(sets)]
        self.r = ([device_normal((m, n), ref.dtype, seed=1 + sets + i) for i in range(sets)]
                  if ref.residual is not None else None)
        self.last: Measurement | None = None

    def __call__(self, kernel) -> float:
        s = len(self.b)

        def launch(i: int) -> None:
            kernel(self.b[i % s], out=self.c[i % s],
                   residual=None if self.r is None else self.r[i % s])

        with self._stream():
            self.last = measure_us(launch, warmup=self.warmup, repeat=self.repeat)
        return self.last.median_us

    def _stream(self):
        """CuPy's current stream for the measurement: torch's, where the operands are torch tensors."""
        if self.dtype != "bfloat16":
            return contextlib.nullcontext()
        import cupy
        import torch

        dev = self.b[0].device
        return cupy.cuda.ExternalStream(torch.cuda.current_stream(dev).cuda_stream, dev.index)
