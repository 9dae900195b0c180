"""What the subcommands share: arguments, compiling from them, progress and summary lines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..api import compile as compile_kernel
from ..choices import ACCUMULATE, DTYPES, TARGETS, VALUE_MODES, VECTOR_WIDTHS
from ..errors import InputError, OptionsError
from ..options import KernelOptions
from .conv_args import add_conv_arguments, conv_from_args
from .progress import ProgressLine


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
    p.add_argument("--values", choices=VALUE_MODES, default="normal",
                   help="values for pattern-only files")
    p.add_argument("--target", choices=TARGETS, default="cuda")
    p.add_argument("--arch", help="sm_80, sm_90, ... (CUDA) or gfx90a (HIP); default: the current "
                                  "GPU, else $SPARSERT_ARCH or sm_90")
    p.add_argument("--bias", help="bias file (M values, any weight format), fused as immediates")
    p.add_argument("--relu", action="store_true", help="fuse a ReLU epilogue")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="element type of B, C, bias and residual (default float32)")
    p.add_argument("--accumulate", choices=ACCUMULATE,
                   help="arithmetic: float32 (default: half loads, FFMA, one rounding at the store) or "
                        "packed half (= --dtype: HFMA2, two columns per instruction, less accurate)")
    p.add_argument("--threads-x", type=_positive_int)
    p.add_argument("--vec", type=int, choices=VECTOR_WIDTHS)
    p.add_argument("--groups", type=_positive_int, help="Gy: thread groups splitting K")
    p.add_argument("--rows-per-block", type=_positive_int)
    p.add_argument("--max-slab-nnz", type=_positive_int,
                   help="split kernels above this many FFMAs (nonzeros x vec) into slabs, one launch "
                        "each (default $SPARSERT_MAX_SLAB_NNZ, else 262144 for the PTX backend, "
                        "16384 for NVRTC and HIP)")
    p.add_argument("--prefetch", type=_positive_int,
                   help="rows of B each thread loads ahead of use (default 16 / vec)")
    p.add_argument("--max-nnz", type=_positive_int,
                   help="refuse weights with more nonzeros than this (default $SPARSERT_MAX_NNZ, else "
                        "16777216: about 10 min to build on 2 cores); raise it to compile a bigger one")
    p.add_argument("--jobs", type=_positive_int, help="parallel compiler jobs (default: all cores)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the kernel cache")
    p.add_argument("--tune", action="store_true", help="autotune the schedule on the GPU (persisted)")
    add_conv_arguments(p)


def _compile_from_args(args, target: str | None = None, progress=None):
    if getattr(args, "conv", False):
        return conv_from_args(args)

    if args.n is None:
        raise OptionsError("--n: required (columns of B)")
    options = KernelOptions(
        n=args.n, target=target or args.target, arch=args.arch, relu=args.relu,
        threads_x=args.threads_x, vec=args.vec, groups=args.groups,
        rows_per_block=args.rows_per_block, max_slab_nnz=args.max_slab_nnz, prefetch=args.prefetch,
        dtype=args.dtype, accumulate=args.accumulate, max_nnz=args.max_nnz,
    )
    progress = progress or ProgressLine()
    try:
        return compile_kernel(
            args.weight, options=options, bias=args.bias, tensor=args.tensor, seed=args.seed,
            values=args.values, use_cache=not args.no_cache, jobs=args.jobs, progress=progress, tune=args.tune,
        )
    finally:
        getattr(progress, "close", lambda: None)()


# -- summaries --------------------------------------------------------------------------------
def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.1f} s"


def _schedule_line(summary: dict) -> str:
    s = summary["schedule"]
    if summary["target"] == "cpu":
        return (f"  schedule: register blocks of <= {s['rows_per_block']} rows x {s['vec']} vector(s) of N "
                f"({summary['arch']}), {s['blocks']} blocks; threads at run time")
    return (f"  schedule: {s['threads_x']} threads x {s['vec']} cols, {s['groups']} group(s) splitting K, "
            f"<= {s['rows_per_block']} rows/block; grid {tuple(s['grid'])} block {tuple(s['block'])}, "
            f"{s['shared_bytes']} B shared")


def _precision_line(summary: dict) -> list[str]:
    """Half kernels only (float32 summaries print as before)."""
    s = summary["schedule"]
    if "dtype" not in s:
        return []
    acc = s.get("accumulate", "float32")
    if acc == "float32":
        how = "float32 arithmetic, one rounding at the store"
    elif summary["target"] == "cpu":
        how = "vdpbf16ps: weights rounded to bfloat16, float32 sums"
    else:
        how = f"packed {acc} (HFMA2): weights rounded to {acc}"
    return [f"  precision: {s['dtype']} B, C, bias, residual; {how}"]


def summary_lines(summary: dict, sass=None) -> list[str]:
    s, st = summary["schedule"], summary["stats"]
    sparsity = 1 - s["nnz"] / max(1, s["M"] * s["K"])
    lines = [
        f"sparsert {summary['sparsert']}  {summary['name']}  ({summary['target']}, {summary['arch']})",
        f"  A: {s['M']} x {s['K']}, {s['nnz']} nonzeros ({sparsity:.1%} sparse)   B: {s['K']} x {s['N']}",
        _schedule_line(summary),
        f"  epilogue: bias={'yes' if s['bias'] else 'no'} relu={'yes' if s['relu'] else 'no'} "
        f"residual={'yes' if s['residual'] else 'no'}",
        *_precision_line(summary),
        f"  code: {s['slabs']} slab(s), {summary.get('backend', 'source')} source {st['source_bytes']:,} B, "
        f"binary {st['binary_bytes']:,} B, "
        f"registers {st['registers'] if st['registers'] is not None else 'n/a'}, spills "
        f"{(st['spill_stores'] or 0) + (st['spill_loads'] or 0) if st['spill_stores'] is not None else 'n/a'} B",
        f"  time: plan {_fmt_seconds(st['plan_seconds'])}, render {_fmt_seconds(st['render_seconds'])}, "
        f"compile {_fmt_seconds(st['compile_seconds'])} ({st['cached_slabs']}/{s['slabs']} slab(s) cached)",
    ]
    if sass is not None and summary["schedule"].get("accumulate", "float32") != "float32":
        expected = _expected_imm(summary) // 2
        ok = "OK" if sass.hfma2_imm >= expected and sass.hfma2 == sass.hfma2_imm else "MISMATCH"
        lines.append(
            f"  SASS: {sass.hfma2_imm} HFMA2 with an immediate ({sass.hfma2 - sass.hfma2_imm} with none); "
            f"expected nnz x vec / 2 = {expected}: {ok}; registers {sass.registers}; "
            f"spills {'yes' if sass.spills else 'no'}; {sass.instructions} instructions")
    elif sass is not None:
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


def _expected_imm(summary: dict) -> int:
    s = summary["schedule"]
    return s["nnz"] * s["vec"]


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        summary = json.loads(path.read_text())
        summary["schedule"], summary["stats"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a sparsert kernel summary (expected the .json written by "
                            f"`sparsert compile`)") from None
    return summary
