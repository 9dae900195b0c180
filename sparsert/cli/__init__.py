"""`sparsert` command line: compile, inspect, check, tune, prune (one module per command).

Every expected failure (bad file, bad option, compiler error) exits non-zero with one line on
stderr, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..check import DEFAULT_RTOL
from ..errors import SparsertError
from ..version import __version__
from .check import cmd_check
from .common import _weight_arguments
from .compile import cmd_compile
from .inspect import cmd_inspect
from .prune import add_prune_arguments, prune_main
from .tune import add_tune_arguments, tune_main


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

    p = sub.add_parser("tune", help="autotune the schedule on the GPU and persist the best")
    add_tune_arguments(p)
    p.set_defaults(func=tune_main)

    p = sub.add_parser("prune", help="magnitude-prune a weight or a model")
    add_prune_arguments(p)
    p.set_defaults(func=prune_main)
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
