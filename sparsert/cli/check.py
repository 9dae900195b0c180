"""`sparsert check`: run the kernel (GPU, else the same code on the CPU) against float64."""

from __future__ import annotations

import numpy as np

from ..check import relative_error, tolerance
from ..check.reference import conv2d_reference
from ..errors import OptionsError
from ..frontend.weights import as_weight, load_bias
from ..ir.precision import round_to
from ..options import KernelOptions
from ..runtime.conv_kernel import ConvKernel
from ..runtime.device import gpu_available
from ..tune.measure import Reference
from ..tune.operands import device_array, device_values, host_array, host_values
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
        where, err, rtol = check_conv(kernel, rng=rng, use_gpu=use_gpu)
    else:
        where, err, rtol = _check_spmm(kernel, args, use_gpu)
    rtol = rtol if args.rtol is None else args.rtol
    ok = err <= rtol
    print("\n".join(summary_lines(kernel.summary())))
    print(f"  check ({where}): max relative error {err:.3e} vs float64 reference "
          f"(tolerance {rtol:.3g}{'' if args.rtol is not None else _mode(kernel)}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _mode(kernel) -> str:
    s = kernel.schedule
    return "" if s.dtype == "float32" and not s.packed else f", the bound of {s.dtype} / accumulate={s.accumulate}"


def _run(kernel, use_gpu: bool, b: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """The kernel on float32 values exact in its dtype, passed as that dtype; float64 values back."""
    dtype = kernel.schedule.dtype
    if use_gpu:
        got = kernel(device_array(b, dtype), residual=None if r is None else device_array(r, dtype))
        return device_values(got, dtype)
    got = kernel.run_host(host_array(b, dtype), residual=None if r is None else host_array(r, dtype))
    return host_values(got, dtype)


def _check_spmm(kernel, args, use_gpu: bool) -> tuple[str, float, float]:
    """(where, max relative error, the mode's tolerance) on the tuner's reference inputs: B drawn
    and rounded to the kernel's dtype, the float64 result of the weights and bias it holds."""
    w = as_weight(args.weight, tensor=args.tensor, seed=args.seed, values=args.values)
    s = kernel.schedule
    opts = KernelOptions(n=kernel.n, target=kernel.target, relu=s.relu, dtype=s.dtype, accumulate=s.accumulate)
    ref = Reference.build(w, opts, load_bias(args.bias, w.shape[0]), seed=args.seed + 1)
    got = _run(kernel, use_gpu, ref.b)
    where = "GPU" if use_gpu else _where_on_host(kernel)
    return where, relative_error(got, ref.expected), ref.tolerance(groups=s.groups)


def _where_on_host(kernel) -> str:
    return f"CPU, native {kernel.arch} code" if kernel.target == "cpu" else "host CPU, no GPU"


def check_conv(kernel: ConvKernel, *, rng: np.random.Generator, use_gpu: bool) -> tuple[str, float, float]:
    """Run on random input (and residual), rounded to the kernel's dtype, vs the float64
    reference: (where, max relative error, the mode's tolerance)."""
    s = kernel.schedule
    x = round_to(rng.standard_normal(kernel.input_shape).astype(np.float32), s.dtype)
    r = round_to(rng.standard_normal(kernel.output_shape).astype(np.float32), s.dtype) if kernel.residual else None
    got = _run(kernel, use_gpu, x, r)
    where = "GPU" if use_gpu else _where_on_host(kernel)
    ref = kernel.reference(x, r)
    sp = kernel.spec
    scale = conv2d_reference(np.abs(x), np.abs(kernel.oihw()), None if kernel.bias is None else np.abs(kernel.bias),
                             stride=sp.stride, padding=sp.padding, dilation=sp.dilation, groups=sp.groups,
                             residual=None if r is None else np.abs(r))
    terms = int(np.diff(s.to_csr().indptr).max(initial=0)) + s.groups
    rtol = tolerance(s.dtype, s.accumulate, terms, s_max=float(np.max(scale, initial=0.0)),
                     c_max=float(np.max(np.abs(ref), initial=0.0)), target=kernel.target)
    return where, relative_error(got, ref), rtol
