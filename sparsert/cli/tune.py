"""`sparsert tune WEIGHT --n N [--dtype D [--accumulate A]] [--target cpu]`: search schedules on
the GPU (or this CPU), persist the best."""

from __future__ import annotations

import argparse
import json
import sys

from ..api import compile as compile_kernel
from ..backends.cpu.runtime import threads_for
from ..check import DEFAULT_RTOL
from ..choices import ACCUMULATE, DTYPES, VALUE_MODES
from ..errors import OptionsError
from ..frontend.weights import as_weight
from ..options import KernelOptions
from ..pipeline import resolve_arch
from ..tune import (
    DEFAULT_BUDGET,
    SCHEDULE_FIELDS,
    load_stored,
    tune_key,
    tune_path,
    tuned_options,
)
from ..tune.cpu import (
    DEFAULT_CPU_BUDGET,
    FIELDS,
    cpu_tune_key,
    load_cpu_stored,
    tuned_cpu_options,
)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weight", help="weight file: .npy .npz .mtx .smtx .safetensors")
    p.add_argument("--n", type=int, required=True, help="columns of B the kernel is specialised to")
    p.add_argument("--target", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default): time on the GPU; cpu: R, V, chunk (and the AVX-512 broadcast) "
                        "timed on this CPU")
    p.add_argument("--arch", help="sm_80, sm_90, ... (default: the current GPU); --target cpu: avx2 or "
                                  "avx512 (default: this CPU's best)")
    p.add_argument("--threads", type=int,
                   help="--target cpu: threads the kernel is timed with (part of the stored key; "
                        "default: what a call uses, SPARSERT_CPU_THREADS or the physical cores)")
    p.add_argument("--budget", type=int,
                   help=f"most candidates compiled and timed (default {DEFAULT_BUDGET}; "
                        f"--target cpu: {DEFAULT_CPU_BUDGET})")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="element type of B, C, bias and residual, as compile's --dtype (default float32)")
    p.add_argument("--accumulate", choices=ACCUMULATE,
                   help="arithmetic, as compile's --accumulate: float32 (default) or packed half (= --dtype)")
    p.add_argument("--relu", action="store_true", help="tune the kernel with a fused ReLU")
    p.add_argument("--bias", help="bias file (M values); its presence is part of the tuning key")
    p.add_argument("--tensor", help="tensor name inside a .safetensors / multi-array .npz file")
    p.add_argument("--seed", type=int, default=0, help="seed for values of pattern-only files")
    p.add_argument("--values", choices=VALUE_MODES, default="normal")
    p.add_argument("--rtol", type=float,
                   help=f"max relative error a candidate may show (default: {DEFAULT_RTOL:g} in float32; in "
                        f"half precision the error bound of the --dtype/--accumulate mode, README "
                        f"'Half precision')")
    p.add_argument("--force", action="store_true", help="search again even if a result is stored")


def tune_main(args) -> int:
    if args.n is None or args.n <= 0:
        raise OptionsError(f"--n={args.n}: expected a positive integer")
    if args.budget is not None and args.budget <= 0:
        raise OptionsError(f"--budget={args.budget}: expected a positive integer")
    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    if args.target == "cpu":
        return _tune_cpu(args, w)
    if args.threads is not None:
        raise OptionsError("--threads: a CPU setting (--target cpu)")
    args.budget = args.budget or DEFAULT_BUDGET
    opts = KernelOptions(n=args.n, arch=resolve_arch("cuda", args.arch), relu=args.relu, dtype=args.dtype,
                         accumulate=args.accumulate)
    key = tune_key(w.digest(), opts, bias=args.bias is not None)
    _header(w, opts)
    stored = None if args.force else load_stored(key, opts)
    if stored is not None:
        best, entry = stored
        print(f"stored tuning reused (no timing): {tune_path(key)}", file=sys.stderr)
    else:
        best = tuned_options(w, opts, bias=args.bias, progress=_progress, budget=args.budget,
                             force=True, rtol=args.rtol, compile_fn=compile_kernel)
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


def _header(w, opts: KernelOptions, tail: str = "") -> None:
    m, k = w.shape
    print(f"{w.name}: {m} x {k}, {w.nnz} nonzeros ({100 * w.sparsity:.1f}% sparse), "
          f"n={opts.n}, {opts.arch}{_precision(opts)}{tail}", file=sys.stderr)


def _progress(i: int, total: int, step) -> None:
    """A search's progress callback (TuneStep or CpuTuneStep): one line per candidate."""
    print(f"  [{i}/{total}] {step.line()}", file=sys.stderr, flush=True)


def _precision(opts: KernelOptions) -> str:
    if opts.dtype == "float32" and not opts.packed:
        return ""
    return f", {opts.dtype} ({'packed ' + opts.accumulate if opts.packed else 'float32 accumulation'})"


def _tune_cpu(args, w) -> int:
    threads = threads_for(args.threads)
    opts = KernelOptions(n=args.n, target="cpu", arch=resolve_arch("cpu", args.arch), relu=args.relu,
                         dtype=args.dtype, accumulate=args.accumulate)
    key = cpu_tune_key(w.digest(), opts, bias=args.bias is not None, threads=threads)
    _header(w, opts, f", {threads} thread{'s' * (threads > 1)}")
    stored = None if args.force else load_cpu_stored(key, opts)
    if stored is not None:
        best, entry = stored
        print(f"stored tuning reused (no timing): {tune_path(key)}", file=sys.stderr)
    else:
        best = tuned_cpu_options(w, opts, bias=args.bias, threads=threads, progress=_progress,
                                 budget=args.budget, force=True, compile_fn=compile_kernel,
                                 rtol=args.rtol)
        entry = json.loads(tune_path(key).read_text())
        print(f"stored: {tune_path(key)}", file=sys.stderr)
    line = " ".join(f"--{f.replace('_', '-')} {getattr(best, f)}" for f in FIELDS if getattr(best, f) is not None)
    gain = ""
    if entry.get("best_us") and entry.get("default_us"):
        gain = (f" ({entry['best_us']:.2f} us vs default {entry['default_us']:.2f} us, interleaved, "
                f"min of runs: {entry['default_us'] / entry['best_us']:.2f}x)")
    print(f"best: {line}{gain}")
    return 0
