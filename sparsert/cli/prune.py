"""`sparsert prune WEIGHT_OR_MODEL --sparsity 0.9 --out FILE`."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import OptionsError
from ..frontend.prune import prune, sparsity_of
from ..frontend.tensor_io import load_tensors, save_tensors


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.9, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] (0.9 = 90% zeros), got {text}")
    return value


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="WEIGHT_OR_MODEL",
                   help="a weight file (.npy .npz .safetensors) or a torch state_dict (.pt .pth)")
    p.add_argument("--sparsity", type=_fraction, help="fraction of weights to zero, e.g. 0.9")
    p.add_argument("--global", dest="global_scope", action="store_true",
                   help="one magnitude threshold over all tensors (default: each tensor to --sparsity)")
    p.add_argument("--nm", metavar="N:M", help="keep N of every M consecutive weights, e.g. 2:4")
    p.add_argument("--out", required=True,
                   help="output file: .npy (one array), .npz, .safetensors or .pt")


def prune_main(args) -> int:
    """`sparsert prune`: prune a file and write it; one line per pruned tensor on stdout."""
    if args.sparsity is None and args.nm is None:
        raise OptionsError("prune: give --sparsity (e.g. 0.9) and/or --nm (e.g. 2:4)")
    tensors, single = load_tensors(args.source)
    if single:  # one matrix: prune it whole, whatever its rank
        (name, value), = tensors.items()
        pruned = {name: prune(value, args.sparsity, nm=args.nm)}
    else:
        pruned = prune(tensors, args.sparsity, scope="global" if args.global_scope else "layer",
                       nm=args.nm)
    save_tensors(pruned, args.out)
    total = zeros = 0
    for name, value in pruned.items():
        if value is tensors[name]:
            continue  # left alone (biases, norms, integer buffers)
        size = int(np.prod(tuple(value.shape)))
        s = sparsity_of(value)
        total, zeros = total + size, zeros + round(s * size)
        print(f"{name}\t{tuple(value.shape)}\tsparsity {s:.4f}")
    print(f"pruned {total} weights to sparsity {zeros / total:.4f}; wrote {args.out}")
    return 0
