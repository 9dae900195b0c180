"""The public entry points: compile() and compile_conv2d() -> a callable kernel.

Both load the weight (frontend), settle the options and hand them to the one pipeline
(pipeline.compile_schedule): resolve the backend, plan, emit, build through the cache.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import OptionsError
from .frontend.conv import Conv2dSpec, _int, _pair, load_conv_weight
from .frontend.weights import as_weight, load_bias
from .options import KernelOptions
from .pipeline import Layout, compile_schedule, resolve_arch, with_arch
from .runtime.build import Progress
from .runtime.conv_kernel import ConvKernel
from .runtime.kernel import SparseKernel


def compile(
    weight,
    n: int | None = None,
    *,
    options: KernelOptions | None = None,
    bias=None,
    relu: bool | None = None,
    target: str | None = None,
    arch: str | None = None,
    tensor: str | None = None,
    seed: int = 0,
    values: str = "normal",
    use_cache: bool = True,
    jobs: int | None = None,
    progress: Progress | None = None,
    tune: bool = False,
    name: str | None = None,
    dtype: str | None = None,
    accumulate: str | None = None,
) -> SparseKernel:
    """Compile a fixed sparse weight A (M x K) into a kernel computing C = A @ B for B of K x n.

    `weight`: a path (.npy .npz .mtx .smtx .safetensors), a NumPy array, a scipy.sparse matrix,
    or a `Weight`. Keyword arguments override the matching fields of `options`.
    """
    if options is None:
        if n is None:
            raise OptionsError("n: required (columns of B), e.g. compile(w, n=256)")
        options = KernelOptions(n=n)
    elif n is not None and n != options.n:
        options = replace(options, n=n)
    overrides = {k: v for k, v in (("relu", relu), ("target", target), ("arch", arch), ("dtype", dtype),
                                   ("accumulate", accumulate)) if v is not None}
    if overrides:
        options = replace(options, **overrides)
    w = as_weight(weight, tensor=tensor, seed=seed, values=values)
    options = with_arch(options)
    if tune and options.target == "cpu":  # R, V, chunk and bcast, timed on this CPU
        from .tune.cpu import tuned_cpu_options

        options = tuned_cpu_options(w, options, bias=bias, progress=progress, compile_fn=compile)
    elif tune:
        from .tune import tuned_options

        options = tuned_options(w, options, bias=bias, progress=progress, compile_fn=compile)
    bias_arr = load_bias(bias, w.shape[0])
    return compile_schedule(w.matrix, options, bias=bias_arr, weight_digest=w.digest(), name=name or w.name,
                            use_cache=use_cache, jobs=jobs, progress=progress)


def compile_conv2d(
    weight,
    input_hw,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    bias=None,
    relu: bool = False,
    residual: bool = False,
    batch: int = 1,
    layout: str | None = None,
    kernel_size=None,
    target: str = "cuda",
    arch: str | None = None,
    threads_x: int | None = None,
    vec: int | None = None,
    thread_groups: int | None = None,
    rows_per_block: int | None = None,
    max_slab_nnz: int | None = None,
    prefetch: int | None = None,
    max_nnz: int | None = None,
    dtype: str = "float32",
    accumulate: str | None = None,
    tensor: str | None = None,
    seed: int = 0,
    values: str = "normal",
    use_cache: bool = True,
    jobs: int | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> ConvKernel:
    """Compile a pruned Conv2d filter into a kernel over NCHW float32 inputs of a fixed shape.

    weight: OIHW [C_out, C_in/groups, kh, kw], or its im2col matrix [C_out, C_in/groups*kh*kw]
    with kernel_size (layout 'oihw' / 'im2col' / 'im2col_tap_major' for DLMC's (ky, kx, c)
    column order; default: by rank), as a path (.npy .npz .mtx
    .smtx .safetensors), an array, a scipy.sparse matrix or a Weight. input_hw: (H, W).
    stride/padding/dilation: an int or an (h, w) pair. residual=True fuses `+ R` (same shape as
    the output) before the ReLU. thread_groups is the schedule's Gy (K split inside a block);
    vec > 1 only for 1x1, stride 1, unpadded convolutions (the only contiguous im2col).
    """
    h, w_ = _pair(input_hw, "input_hw", 1)
    wt, c_in, kh, kw = load_conv_weight(weight, layout=layout, kernel_size=kernel_size,
                                        groups=groups, tensor=tensor, seed=seed, values=values)
    spec = Conv2dSpec(c_in=c_in, c_out=wt.shape[0], h=h, w=w_, kh=kh, kw=kw,
                      stride=_pair(stride, "stride", 1), padding=_pair(padding, "padding", 0),
                      dilation=_pair(dilation, "dilation", 1), groups=groups,
                      batch=_int(batch, "batch", 1))
    n = spec.oh * spec.ow
    if vec not in (None, 1) and not spec.contiguous:
        raise OptionsError(f"vec={vec}: vector loads need a contiguous im2col (1x1 kernel, stride 1, "
                           f"padding 0); this {kh}x{kw} convolution reads one pixel per thread (vec=1)")
    options = KernelOptions(
        n=n, target=target, arch=resolve_arch(target, arch), relu=bool(relu), residual=bool(residual),
        threads_x=threads_x, vec=vec if spec.contiguous else 1, groups=thread_groups,
        rows_per_block=rows_per_block, max_slab_nnz=max_slab_nnz, prefetch=prefetch, dtype=dtype,
        accumulate=accumulate, max_nnz=max_nnz)
    bias_arr = load_bias(bias, spec.c_out)

    layout = Layout(batch=spec.batch, batch_stride_b=spec.c_in * h * w_, batch_stride_c=spec.c_out * n,
                    extra=(("conv2d", spec.describe()),), conv=None if spec.contiguous else spec.geometry())
    kernel = compile_schedule(wt.matrix, options, bias=bias_arr, weight_digest=wt.digest(),
                              name=name or wt.name, layout=layout, use_cache=use_cache, jobs=jobs,
                              progress=progress)
    return ConvKernel(kernel, spec, wt, bias_arr)
