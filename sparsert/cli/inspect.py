"""`sparsert inspect`: summary and SASS facts of a compiled kernel (.json) or of a weight."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import _compile_from_args, _expected_imm, _read_summary, summary_lines


def cmd_inspect(args) -> int:
    target = Path(args.weight)
    if target.suffix == ".json":
        summary = _read_summary(target)
        binaries = [target.parent / f["binary"] for f in summary.get("files", [])]
        sass = None
        if summary["target"] == "cuda" and binaries:
            from ..backends.cuda.sass import merge_stats, sass_stats

            parts = []
            for b in binaries:
                if not b.is_file():
                    raise InputError(f"{b}: CUBIN named by {target} is missing")
                parts.append(sass_stats(b.read_bytes()))
            sass = merge_stats(parts)
        print("\n".join(summary_lines(summary, sass)))
        return 0 if sass is None or sass.ffma_imm + sass.fmul_imm == _expected_imm(summary) else 1
    kernel = _compile_from_args(args)
    sass = kernel.sass_stats() if kernel.target == "cuda" else None
    summary = kernel.summary()
    print("\n".join(summary_lines(summary, sass)))
    return 0 if sass is None or sass.ffma_imm + sass.fmul_imm == _expected_imm(summary) else 1
