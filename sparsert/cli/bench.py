"""`sparsert bench WEIGHT --n N --target cpu`: the compiled CPU kernel timed beside dense PyTorch
(and NumPy) on the same operands, interleaved, median of many runs: a quick look at what the CPU
target gives on this machine. The full comparison is benchmarks/cpu.py."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..check import DEFAULT_RTOL, relative_error
from ..errors import OptionsError
from ..frontend.weights import as_weight, load_bias
from ..options import KernelOptions
from ..tune.measure import Reference
from ..tune.operands import host_array, host_values
from .common import _compile_from_args, _weight_arguments


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    _weight_arguments(p)
    p.add_argument("--runs", type=int, default=21, help="timed calls per method, interleaved (default 21)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to time (default: 1 and the kernel's default)")


def _interleaved(calls: dict, runs: int) -> dict[str, list[float]]:
    """Seconds per call of each method, round-robin so a slow moment hits every method alike."""
    samples = {name: [] for name in calls}
    for fn in calls.values():  # warm up: pages, caches, thread pools
        fn()
        fn()
    names = list(calls)
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def bench_main(args) -> int:
    if args.target != "cpu":
        raise OptionsError(f"--target {args.target}: `sparsert bench` times the CPU target (use --target cpu); "
                           f"the GPU benchmarks are in benchmarks/ (see benchmarks/README.md)")
    if args.runs < 3:
        raise OptionsError(f"--runs={args.runs}: expected at least 3")
    kernel = _compile_from_args(args)
    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    m, k = w.shape
    n = kernel.n
    s = kernel.schedule
    bias = load_bias(args.bias, m)
    # B in the kernel's dtype (drawn, rounded); the float64 result of what the kernel holds
    ref = Reference.build(w, KernelOptions(n=n, target="cpu", relu=args.relu, dtype=s.dtype,
                                           accumulate=s.accumulate), bias, seed=args.seed + 1)
    b = host_array(ref.b, s.dtype)
    err = relative_error(host_values(kernel(b), s.dtype), ref.expected)
    rtol = ref.tolerance(groups=1)
    dense = w.matrix.toarray()
    flops = 2.0 * w.nnz * n
    from ..backends.cpu.runtime import threads_for

    threads = args.threads or sorted({1, threads_for()})
    print(f"{w.name}: {m} x {k}, {w.nnz} nonzeros ({w.sparsity:.1%} sparse), N = {n}, {kernel.arch}, "
          f"{s.dtype}; max relative error vs float64 {err:.2e}"
          f"{'' if rtol == DEFAULT_RTOL else f' (the {s.dtype} bound here: {rtol:.2e})'}")
    st = kernel.stats
    speed = "from the cache" if st.cached_slabs else f"{w.nnz / max(st.compile_seconds, 1e-9):,.0f} nonzeros/s"
    print(f"  compile {st.compile_seconds:.2f} s ({speed}), code {st.binary_bytes:,} bytes")
    try:
        import torch
    except ImportError:
        torch = None
    for t in threads:
        out = np.empty((m, n), b.dtype)
        calls = {f"sparsert-cpu {s.dtype}": lambda t=t, out=out: kernel(b, out=out, threads=t)}
        # dense torch in the kernel's dtype, and (for half) in float32, what a user may cast to
        for dt in dict.fromkeys([s.dtype, "float32"]) if torch is not None else ():
            tdt = getattr(torch, dt)
            at, bt = torch.from_numpy(dense).to(tdt), torch.from_numpy(ref.b).to(tdt)
            bias_t = None if bias is None else torch.from_numpy(bias)[:, None].to(tdt)

            def dense_torch(at=at, bt=bt, bias_t=bias_t, t=t):
                torch.set_num_threads(t)
                y = torch.mm(at, bt) if bias_t is None else torch.addmm(bias_t, at, bt)
                return torch.relu_(y) if args.relu else y

            calls[f"torch.mm {dt}"] = dense_torch
        samples = _interleaved(calls, args.runs)
        base = float(np.median(samples[f"sparsert-cpu {s.dtype}"]))
        print(f"  {t} thread(s), median of {args.runs} interleaved runs:")
        for name, s in samples.items():
            med = float(np.median(s))
            print(f"    {name:<21} {med * 1e6:10.1f} us  {flops / med / 1e9:7.1f} GFLOP/s (sparse FLOPs)  "
                  f"{med / base:5.2f}x sparsert's time")
    return 0 if err <= rtol else 1
