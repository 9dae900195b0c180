"""`sparsert compile WEIGHT [WEIGHT ...] --n N`: kernels written to --out (source, binary, json)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import OptionsError
from ..runtime.files import check_out_dir
from .common import _compile_from_args, _fmt_seconds, summary_lines
from .progress import ProgressLine


def cmd_compile(args) -> int:
    """One kernel per WEIGHT (several: a progress line per layer, names must not collide)."""
    weights = args.weight
    if len(weights) > 1 and args.bias:
        raise OptionsError("--bias: applies to one weight; compile weights with biases one at a time")
    names = [Path(w).stem for w in weights]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise OptionsError(f"two weights are named {dup!r}: their outputs in {args.out} would collide")
    out = check_out_dir(args.out)  # before any compile: a bad --out costs nothing
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
