"""`sparsert check`: run the kernel (GPU, else the same code on the CPU) against float64."""

from __future__ import annotations

import numpy as np

from ..check import relative_error, spmm_reference
from ..errors import OptionsError
from ..frontend.weights import as_weight, load_bias
from ..runtime.conv_kernel import ConvKernel
from ..runtime.device import gpu_available
from .common import _compile_from_args, summary_lines


def cmd_check(args) -> int:
    if getattr(args, "target", None) == "hip":  # refused before compiling: nothing here can run it
        raise OptionsError("check --target hip: a HIP kernel runs only on an AMD GPU, which `sparsert check` "
                           "does not drive, and the host emulator runs the CUDA source only; check the same "
                           "schedule's numbers with --target cuda, build HIP with `sparsert compile --target hip`")
    kernel = _compile_from_args(args)
    use_gpu = kernel.target == "cuda" and gpu_available() and not args.host
    rng = np.random.default_rng(args.seed + 1)
    if getattr(args, "conv", False):
        where, err = check_conv(kernel, rng=rng, use_gpu=use_gpu)
    else:
        where, err = _check_spmm(kernel, args, rng, use_gpu)
    ok = err <= args.rtol
    print("\n".join(summary_lines(kernel.summary())))
    print(f"  check ({where}): max relative error {err:.3e} vs float64 reference "
          f"(tolerance {args.rtol:g}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _check_spmm(kernel, args, rng, use_gpu: bool) -> tuple[str, float]:
    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    m, k = w.shape
    b = rng.standard_normal((k, kernel.n)).astype(np.float32)
    ref = spmm_reference(w.matrix, b, load_bias(args.bias, m), relu=args.relu)
    if use_gpu:
        import cupy

        got = cupy.asnumpy(kernel(cupy.asarray(b)))
        where = "GPU"
    else:
        got = kernel.run_host(b)
        where = _where_on_host(kernel)
    return where, relative_error(got, ref)


def _where_on_host(kernel) -> str:
    return f"CPU, native {kernel.arch} code" if kernel.target == "cpu" else "host CPU, no GPU"


def check_conv(kernel: ConvKernel, *, rng: np.random.Generator, use_gpu: bool) -> tuple[str, float]:
    """Run on random input (and residual) vs the float64 reference: (where, max relative error)."""
    x = rng.standard_normal(kernel.input_shape).astype(np.float32)
    r = rng.standard_normal(kernel.output_shape).astype(np.float32) if kernel.residual else None
    if use_gpu:
        import cupy

        got = cupy.asnumpy(kernel(cupy.asarray(x), residual=None if r is None else cupy.asarray(r)))
        where = "GPU"
    else:
        got = kernel.run_host(x, residual=r)
        where = _where_on_host(kernel)
    return where, relative_error(got, kernel.reference(x, r))
