"""`sparsert` command line: compile, inspect, check (and tune, prune where available).

Every expected failure (bad file, bad option, compiler error) exits non-zero with one line on
stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SparsertError

DEFAULT_RTOL = 1e-4


# -- progress ---------------------------------------------------------------------------------
class ProgressLine:
    """'compiling: 3/12 slabs (1 cached)' on one line of stderr, for multi-slab compiles."""

    def __init__(self, what: str = "compiling", stream=sys.stderr):
        self.what, self.stream, self.cached, self.t0 = what, stream, 0, time.perf_counter()

    def __call__(self, done: int, total: int, artifact) -> None:
        self.cached += bool(getattr(artifact, "cached", False))
        if total <= 1:
            return
        end = "\n" if done == total or not self.stream.isatty() else ""
        self.stream.write(f"\r{self.what}: {done}/{total} slabs ({self.cached} cached, "
                          f"{time.perf_counter() - self.t0:.1f} s){end}")
        self.stream.flush()


# -- arguments --------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _weight_arguments(p: argparse.ArgumentParser, *, n_required: bool = True, many: bool = False) -> None:
    if many:
        p.add_argument("weight", nargs="+", help="weight file(s): .npy .npz .mtx .smtx .safetensors")
    else:
        p.add_argument("weight", help="weight file: .npy .npz .mtx .smtx .safetensors")
    p.add_argument("--n", type=_positive_int, required=n_required,
                   help="columns of B (batch x pixels, or tokens) the kernel is specialised to")
    p.add_argument("--tensor", help="tensor name inside a .safetensors / multi-array .npz file")
    p.add_argument("--seed", type=int, default=0, help="seed for values of pattern-only files (.smtx)")
    p.add_argument("--values", choices=("normal", "ones"), default="normal",
                   help="values for pattern-only files")
    p.add_argument("--target", choices=("cuda", "hip"), default="cuda")
    p.add_argument("--arch", help="sm_80, sm_90, ... (CUDA) or gfx90a (HIP); default: the current "
                                  "GPU, else $SPARSERT_ARCH or sm_90")
    p.add_argument("--bias", help="bias file (M values, any weight format), fused as immediates")
    p.add_argument("--relu", action="store_true", help="fuse a ReLU epilogue")
    p.add_argument("--threads-x", type=_positive_int)
    p.add_argument("--vec", type=int, choices=(1, 2, 4))
    p.add_argument("--groups", type=_positive_int, help="Gy: thread groups splitting K")
    p.add_argument("--rows-per-block", type=_positive_int)
    p.add_argument("--max-slab-nnz", type=_positive_int,
                   help="split kernels above this many FFMAs (nonzeros x vec) into slabs, one launch "
                        "each (default $SPARSERT_MAX_SLAB_NNZ, else 262144 for the PTX backend, "
                        "16384 for NVRTC and HIP)")
    p.add_argument("--prefetch", type=_positive_int,
                   help="rows of B each thread loads ahead of use (default 16 / vec)")
    p.add_argument("--jobs", type=_positive_int, help="parallel compiler jobs (default: all cores)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the kernel cache")
    p.add_argument("--tune", action="store_true", help="autotune the schedule on the GPU (persisted)")
    try:
        from .conv import add_conv_arguments
    except ImportError:  # convolution support not installed in this build
        return
    add_conv_arguments(p)


def _compile_from_args(args, target: str | None = None, progress=None):
    if getattr(args, "conv", False):
        from .conv import conv_from_args

        return conv_from_args(args)
    from .api import compile as compile_kernel
    from .options import KernelOptions

    if args.n is None:
        raise SparsertError("--n: required (columns of B)")
    options = KernelOptions(
        n=args.n, target=target or args.target, arch=args.arch, relu=args.relu,
        threads_x=args.threads_x, vec=args.vec, groups=args.groups,
        rows_per_block=args.rows_per_block, max_slab_nnz=args.max_slab_nnz, prefetch=args.prefetch,
    )
    return compile_kernel(
        args.weight, options=options, bias=args.bias, tensor=args.tensor, seed=args.seed,
        values=args.values, use_cache=not args.no_cache, jobs=args.jobs,
        progress=progress or ProgressLine(), tune=args.tune,
    )


# -- summaries --------------------------------------------------------------------------------
def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.1f} s"


def summary_lines(summary: dict, sass=None) -> list[str]:
    s, st = summary["schedule"], summary["stats"]
    sparsity = 1 - s["nnz"] / max(1, s["M"] * s["K"])
    lines = [
        f"sparsert {summary['sparsert']}  {summary['name']}  ({summary['target']}, {summary['arch']})",
        f"  A: {s['M']} x {s['K']}, {s['nnz']} nonzeros ({sparsity:.1%} sparse)   B: {s['K']} x {s['N']}",
        f"  schedule: {s['threads_x']} threads x {s['vec']} cols, {s['groups']} group(s) splitting K, "
        f"<= {s['rows_per_block']} rows/block; grid {tuple(s['grid'])} block {tuple(s['block'])}, "
        f"{s['shared_bytes']} B shared",
        f"  epilogue: bias={'yes' if s['bias'] else 'no'} relu={'yes' if s['relu'] else 'no'} "
        f"residual={'yes' if s['residual'] else 'no'}",
        f"  code: {s['slabs']} slab(s), {summary.get('backend', 'source')} source {st['source_bytes']:,} B, "
        f"binary {st['binary_bytes']:,} B, "
        f"registers {st['registers'] if st['registers'] is not None else 'n/a'}, spills "
        f"{(st['spill_stores'] or 0) + (st['spill_loads'] or 0) if st['spill_stores'] is not None else 'n/a'} B",
        f"  time: plan {_fmt_seconds(st['plan_seconds'])}, render {_fmt_seconds(st['render_seconds'])}, "
        f"compile {_fmt_seconds(st['compile_seconds'])} ({st['cached_slabs']}/{s['slabs']} slab(s) cached)",
    ]
    if sass is not None:
        expected = _expected_imm(summary)
        ok = "OK" if sass.ffma_imm + sass.fmul_imm == expected else "MISMATCH"
        lines.append(
            f"  SASS: {sass.ffma_imm} FFMA with an immediate (+{sass.fmul_imm} FMUL); expected "
            f"nnz x vec = {expected}: {ok}; registers {sass.registers}; "
            f"spills {'yes' if sass.spills else 'no'}; {sass.instructions} instructions")
        if sass.load_use:
            lines.append(f"  SASS: {len(sass.load_use)} loads of B, each issued a median of "
                         f"{sass.load_use_median:.0f} instructions (min {min(sass.load_use)}) before its first use")
    return lines


# -- subcommands ------------------------------------------------------------------------------
def cmd_compile(args) -> int:
    """One kernel per WEIGHT (several: a progress line per layer, names must not collide)."""
    weights = args.weight
    if len(weights) > 1 and args.bias:
        raise SparsertError("--bias: applies to one weight; compile weights with biases one at a time")
    names = [Path(w).stem for w in weights]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SparsertError(f"two weights are named {dup!r}: their outputs in {args.out} would collide")
    out = Path(args.out)
    t0 = time.perf_counter()
    for i, weight in enumerate(weights):
        one = argparse.Namespace(**(vars(args) | {"weight": weight}))
        what = "compiling" if len(weights) == 1 else f"[{i + 1}/{len(weights)}] {names[i]}: compiling"
        kernel = _compile_from_args(one, progress=ProgressLine(what))
        paths = kernel.save(out)
        if len(weights) > 1:
            print(f"[{i + 1}/{len(weights)}] {weight}")
        print("\n".join(summary_lines(kernel.summary())))
        written = [paths["source"].name] + ([paths["ptx"].name] if "ptx" in paths else [])
        print(f"  wrote: {', '.join(written)}{' (+ slabs)' if len(kernel.units) > 1 else ''}, "
              f"{paths['binary'].name}, {paths['json'].name} in {out}")
    if len(weights) > 1:
        print(f"{len(weights)} kernels in {_fmt_seconds(time.perf_counter() - t0)}")
    return 0


def cmd_inspect(args) -> int:
    target = Path(args.weight)
    if target.suffix == ".json":
        summary = _read_summary(target)
        binaries = [target.parent / f["binary"] for f in summary.get("files", [])]
        sass = None
        if summary["target"] == "cuda" and binaries:
            from .sass import merge_stats, sass_stats

            parts = []
            for b in binaries:
                if not b.is_file():
                    raise SparsertError(f"{b}: CUBIN named by {target} is missing")
                parts.append(sass_stats(b.read_bytes()))
            sass = merge_stats(parts)
        print("\n".join(summary_lines(summary, sass)))
        return 0 if sass is None or sass.ffma_imm + sass.fmul_imm == _expected_imm(summary) else 1
    kernel = _compile_from_args(args)
    sass = kernel.sass_stats() if kernel.target == "cuda" else None
    summary = kernel.summary()
    print("\n".join(summary_lines(summary, sass)))
    return 0 if sass is None or sass.ffma_imm + sass.fmul_imm == _expected_imm(summary) else 1


def _expected_imm(summary: dict) -> int:
    s = summary["schedule"]
    return s["nnz"] * s["vec"]


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        raise SparsertError(f"{path}: no such file")
    try:
        summary = json.loads(path.read_text())
        summary["schedule"], summary["stats"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError):
        raise SparsertError(f"{path}: not a sparsert kernel summary (expected the .json written by "
                            f"`sparsert compile`)") from None
    return summary


def cmd_check(args) -> int:
    from .device import gpu_available

    kernel = _compile_from_args(args)
    use_gpu = gpu_available() and not args.host
    rng = np.random.default_rng(args.seed + 1)
    if getattr(args, "conv", False):
        from .conv import check_conv

        where, err = check_conv(kernel, rng=rng, use_gpu=use_gpu)
    else:
        where, err = _check_spmm(kernel, args, rng, use_gpu)
    ok = err <= args.rtol
    print("\n".join(summary_lines(kernel.summary())))
    print(f"  check ({where}): max relative error {err:.3e} vs float64 reference "
          f"(tolerance {args.rtol:g}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _check_spmm(kernel, args, rng, use_gpu: bool) -> tuple[str, float]:
    from .api import as_weight, load_bias

    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    m, k = w.shape
    b = rng.standard_normal((k, kernel.n)).astype(np.float32)
    ref = w.matrix.astype(np.float64) @ b.astype(np.float64)
    bias = load_bias(args.bias, m)
    if bias is not None:
        ref += bias.astype(np.float64)[:, None]
    if args.relu:
        ref = np.maximum(ref, 0.0)
    if use_gpu:
        import cupy

        got = cupy.asnumpy(kernel(cupy.asarray(b)))
        where = "GPU"
    else:
        got = kernel.run_host(b)
        where = "host CPU, no GPU"
    return where, relative_error(got, ref)


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (normwise; robust to outputs near zero)."""
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


# -- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sparsert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile weights into kernels; write source, binary, json")
    _weight_arguments(p, many=True)
    p.add_argument("--out", default="generated", help="output folder (default: generated/)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("inspect", help="summary and SASS facts of a compiled kernel (.json) or a weight")
    _weight_arguments(p, n_required=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="run the kernel (GPU, else the same code on the CPU) vs float64")
    _weight_arguments(p)
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"max relative error accepted (default {DEFAULT_RTOL:g})")
    p.add_argument("--host", action="store_true", help="run on the CPU even if a GPU is present")
    p.set_defaults(func=cmd_check)

    try:
        from .tune import add_tune_arguments, tune_main

        p = sub.add_parser("tune", help="autotune the schedule on the GPU and persist the best")
        add_tune_arguments(p)
        p.set_defaults(func=tune_main)
    except ImportError:
        pass
    try:
        from .prune import add_prune_arguments, prune_main

        p = sub.add_parser("prune", help="magnitude-prune a weight or a model")
        add_prune_arguments(p)
        p.set_defaults(func=prune_main)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparsertError as e:
        print(f"sparsert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
