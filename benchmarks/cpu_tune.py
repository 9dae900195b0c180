"""CPU autotuner on spmm_dl-like problems: tune (sparsert.tune.cpu), then the tuned kernel against
the default one, interleaved (round robin, one burst each per round), minimum of runs; the default
is also timed against a second copy of itself, the noise floor of the machine.

    python -m benchmarks.cpu_tune [--threads 1] [--rounds 15] [--json out.json]

Weights are random (seeded) at the given sparsity; the tune store and kernel cache are whatever
SPARSERT_CACHE_DIR points at (use a fresh one to include the compiles in the tuning time).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.sparse as sp

import sparsert
from sparsert.frontend.weights import load_weight
from sparsert.options import KernelOptions
from sparsert.tune import cpu as tcpu
from sparsert.tune.measure import Reference

PROBLEMS = [  # (M, K, N, sparsity)
    (512, 512, 784, 0.90),
    (2048, 512, 256, 0.95),
    (64, 256, 3136, 0.90),
]


def weight(m: int, k: int, sparsity: float, seed: int = 0):
    a = sp.random(m, k, density=1 - sparsity, random_state=seed, format="csr", dtype=np.float32)
    a.data[:] = np.random.default_rng(seed).standard_normal(a.nnz).astype(np.float32)
    return load_weight(a)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for m, k, n, s in PROBLEMS:
        w = weight(m, k, s)
        opts = KernelOptions(n=n, target="cpu")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        best = tcpu.tuned_cpu_options(w, opts, threads=args.threads, compile_fn=sparsert.compile,
                                      force=True, budget=args.budget)
        tune_s = time.perf_counter() - t0
        default_k = sparsert.compile(w, options=opts)
        again_k = sparsert.compile(w, options=opts)  # the same code again: the noise floor
        best_k = sparsert.compile(w, options=best)
        ref = Reference.build(w, opts, None)
        timer = tcpu.CpuTimer(ref, threads=args.threads)
        us = tcpu.interleaved(timer, {"default": default_k, "best": best_k, "again": again_k}, rounds=args.rounds)
        flops = 2 * w.nnz * n
        row = {"problem": f"{m}x{k}x{n} {100 * s:.0f}%", "nnz": w.nnz, "threads": args.threads,
               "best": {f: getattr(best, f) for f in tcpu.FIELDS}, "default_us": us["default"],
               "best_us": us["best"], "default_gflops": flops / us["default"] / 1e3,
               "best_gflops": flops / us["best"] / 1e3, "speedup": us["default"] / us["best"],
               "noise": max(us["default"], us["again"]) / min(us["default"], us["again"]),
               "tune_seconds": tune_s, "loadavg_1min_before": load0, "loadavg_1min_after": os.getloadavg()[0]}
        rows.append(row)
        print(f"{row['problem']:>22}: default {row['default_gflops']:.1f} GF/s, tuned {row['best_gflops']:.1f} "
              f"GF/s ({row['speedup']:.2f}x; default vs itself {row['noise']:.2f}x) with {row['best']}, "
              f"tuning {tune_s:.1f} s "
              f"(load {load0:.1f} -> {row['loadavg_1min_after']:.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
