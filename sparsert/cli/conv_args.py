"""The convolution flags of compile / check / inspect (`--conv --input-hw H W ...`)."""

from __future__ import annotations

import argparse

from ..api import compile_conv2d
from ..errors import OptionsError
from ..frontend.conv import LAYOUTS
from ..runtime.conv_kernel import ConvKernel
from .progress import ProgressLine


def _has(parser: argparse.ArgumentParser, flag: str) -> bool:
    return flag in parser._option_string_actions  # argparse keeps no public lookup


def add_conv_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--conv` and its geometry flags to a compile/check/inspect parser.

    Flags the parser already has (--relu, --bias, --vec, ...) are reused, not redefined. --n
    becomes optional: with --conv the columns are the output pixels, derived from the geometry.
    """
    for action in parser._actions:
        if action.dest == "n":
            action.required = False
    g = parser.add_argument_group("convolution (--conv)")
    g.add_argument("--conv", action="store_true",
                   help="the weight is a Conv2d filter: OIHW 4-D, or im2col 2-D with --kernel-size")
    g.add_argument("--input-hw", type=int, nargs=2, metavar=("H", "W"), help="input image size")
    g.add_argument("--stride", type=int, nargs="+", metavar="S", default=[1],
                   help="stride: S, or SH SW (default 1)")
    g.add_argument("--padding", type=int, nargs="+", metavar="P", default=[0],
                   help="zero padding: P, or PH PW (default 0)")
    g.add_argument("--dilation", type=int, nargs="+", metavar="D", default=[1],
                   help="dilation: D, or DH DW (default 1)")
    g.add_argument("--conv-groups", type=int, default=1, metavar="G",
                   help="grouped convolution (G = C_in for depthwise; default 1)")
    g.add_argument("--batch", type=int, default=1, metavar="B", help="images per call (default 1)")
    g.add_argument("--layout", choices=LAYOUTS,
                   help="filter layout: oihw [C_out, C_in/G, kh, kw], im2col [C_out, C_in/G*kh*kw] with "
                        "PyTorch's column order (c, ky, kx), or im2col_tap_major (columns (ky, kx, c), as "
                        "DLMC's 3x3 patterns) (default: by rank; 2-D means im2col)")
    g.add_argument("--kernel-size", type=int, nargs="+", metavar="K",
                   help="kh [kw] of an im2col filter (e.g. 3 for DLMC ResNet-50 3x3 layers)")
    if not _has(parser, "--residual"):
        g.add_argument("--residual", action="store_true",
                       help="fuse a residual add (a tensor shaped like the output) before the ReLU")


def _flag_pair(values, flag: str):
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise OptionsError(f"{flag}: expected 1 or 2 integers, got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)


def conv_from_args(args: argparse.Namespace) -> ConvKernel:
    """compile_conv2d from the parsed CLI arguments (see add_conv_arguments)."""
    if args.input_hw is None:
        raise OptionsError("--input-hw: required with --conv (input image H W)")
    if getattr(args, "tune", False):
        raise OptionsError("--tune: not supported with --conv; set --threads-x/--groups/"
                           "--rows-per-block by hand")
    if getattr(args, "n", None) is not None:
        raise OptionsError("--n: not used with --conv (the columns are the output pixels, "
                           "derived from --input-hw, --stride and --padding); drop --n")
    return compile_conv2d(
        args.weight, tuple(args.input_hw), stride=_flag_pair(args.stride, "--stride"),
        padding=_flag_pair(args.padding, "--padding"), dilation=_flag_pair(args.dilation, "--dilation"),
        groups=args.conv_groups, bias=getattr(args, "bias", None), relu=getattr(args, "relu", False),
        residual=getattr(args, "residual", False), batch=args.batch, layout=args.layout,
        kernel_size=_flag_pair(args.kernel_size, "--kernel-size"),
        target=getattr(args, "target", None) or "cuda", arch=getattr(args, "arch", None),
        threads_x=getattr(args, "threads_x", None), vec=getattr(args, "vec", None),
        thread_groups=getattr(args, "groups", None), rows_per_block=getattr(args, "rows_per_block", None),
        max_slab_nnz=getattr(args, "max_slab_nnz", None), prefetch=getattr(args, "prefetch", None),
        max_nnz=getattr(args, "max_nnz", None),
        dtype=getattr(args, "dtype", None) or "float32", accumulate=getattr(args, "accumulate", None),
        tensor=getattr(args, "tensor", None),
        seed=getattr(args, "seed", 0), values=getattr(args, "values", "normal"),
        use_cache=not getattr(args, "no_cache", False), jobs=getattr(args, "jobs", None),
        progress=ProgressLine())
