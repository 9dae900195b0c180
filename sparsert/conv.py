"""Sparse Conv2d, SparseRT-style: the pruned filter is A, the input image a virtual im2col B.

A is the filter as its im2col matrix [C_out, C_in*kh*kw] (row k of B is the tap
c*kh*kw + ky*kw + kx, PyTorch/DLMC order); grouped filters become block-diagonal over the taps of
all C_in channels, so one kernel serves every group. Columns of B are the output pixels of one
image; blockIdx.z walks the batch. B is never materialised: each thread reads the NCHW input at
compile-time offsets from its output pixel's corner, with zeros where a tap falls in the padding
(see render._conv_setup). A 1x1, stride 1, unpadded convolution needs no im2col at all: it is a
plain batched SpMM over the image (and may use vector loads).

    conv = sparsert.compile_conv2d(w_oihw, input_hw=(56, 56), padding=1, batch=8, relu=True)
    y = conv(x)                 # x: [8, C_in, 56, 56] float32, CuPy or torch CUDA
    y_cpu = conv.run_host(x_np) # the same generated CUDA, run on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from .api import load_bias, plan_for, resolve_arch, units_for
from .compiler import Progress, compile_units
from .errors import InputError, OptionsError, WeightError
from .kernel import SparseKernel, make_stats
from .options import KernelOptions
from .plan import ConvGeometry
from .weights import Weight, check_finite, load_array, load_weight

LAYOUTS = ("oihw", "im2col")


def _int(value, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionsError(f"{name}={value!r}: expected an integer >= {low}")
    return int(value)


def _pair(value, name: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= low."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise OptionsError(f"{name}={value!r}: expected an integer or a (height, width) pair")
        return _int(value[0], name, low), _int(value[1], name, low)
    v = _int(value, name, low)
    return v, v


@dataclass(frozen=True)
class Conv2dSpec:
    """Everything about the convolution except the weight values."""

    c_in: int
    c_out: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("c_in", "c_out", "h", "w", "kh", "kw", "groups", "batch"):
            _int(getattr(self, name), name, 1)
        if self.c_in % self.groups or self.c_out % self.groups:
            raise OptionsError(f"groups={self.groups}: must divide both C_in={self.c_in} and "
                               f"C_out={self.c_out}")
        self.geometry()  # validates stride/padding/dilation and that the output is non-empty

    def geometry(self) -> ConvGeometry:
        return ConvGeometry(c_in=self.c_in, h=self.h, w=self.w, kh=self.kh, kw=self.kw,
                            stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def oh(self) -> int:
        return self.geometry().oh

    @property
    def ow(self) -> int:
        return self.geometry().ow

    @property
    def k(self) -> int:
        """Rows of the (full, all-groups) im2col matrix: C_in * kh * kw."""
        return self.c_in * self.kh * self.kw

    @property
    def contiguous(self) -> bool:
        """1x1, stride 1, no padding: B is the image itself ([C_in, H*W] row-major), no im2col."""
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.c_in, self.h, self.w

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.c_out, self.oh, self.ow

    def describe(self) -> str:
        return (f"C_in={self.c_in} C_out={self.c_out} input {self.h}x{self.w} -> {self.oh}x{self.ow}, "
                f"kernel {self.kh}x{self.kw}, stride {self.stride}, padding {self.padding}, "
                f"dilation {self.dilation}, groups {self.groups}, batch {self.batch}")

    def as_dict(self) -> dict:
        return asdict(self) | {"oh": self.oh, "ow": self.ow}


# --------------------------------------------------------------------------- weights


def _expand_groups(a: scipy.sparse.csr_matrix, groups: int, c_out: int) -> scipy.sparse.csr_matrix:
    """[C_out, C_in/g*kh*kw] per-group filter -> block-diagonal [C_out, C_in*kh*kw]."""
    if groups == 1:
        return a
    kg = a.shape[1]
    rows = np.repeat(np.arange(c_out, dtype=np.int64), np.diff(a.indptr))
    indices = a.indices.astype(np.int64) + (rows // (c_out // groups)) * kg  # order within rows kept
    out = scipy.sparse.csr_matrix((a.data, indices, a.indptr), shape=(c_out, kg * groups))
    if max(out.nnz, out.shape[1]) < 2**31:
        out.indices = out.indices.astype(np.int32)
        out.indptr = out.indptr.astype(np.int32)
    out.has_canonical_format = True
    return out


def load_conv_weight(weight, *, layout: str | None = None, kernel_size=None, groups: int = 1,
                     tensor: str | None = None, seed: int = 0,
                     values: str = "normal") -> tuple[Weight, int, int, int]:
    """(im2col Weight [C_out, C_in*kh*kw] block-diagonal over groups, C_in, kh, kw).

    weight: a 4-D OIHW filter [C_out, C_in/groups, kh, kw] (any file format or array), or its
    im2col matrix [C_out, C_in/groups*kh*kw] (2-D; needs kernel_size). layout says which; None
    infers it from the rank.
    """
    groups = _int(groups, "groups", 1)
    if layout is not None and layout not in LAYOUTS:
        raise OptionsError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
    if isinstance(weight, Weight):
        raw, src, name = weight.matrix, weight.source, weight.name
    else:
        raw = load_array(weight, tensor=tensor, seed=seed, values=values)
        if isinstance(weight, (str, os.PathLike)):
            src, name = str(weight), Path(os.fspath(weight)).stem
        else:
            src, name = ("<scipy.sparse>" if scipy.sparse.issparse(weight) else "<numpy array>"), "conv"
    layout = layout or {4: "oihw", 2: "im2col"}.get(raw.ndim)
    if layout is None:
        raise WeightError(f"{src}: a convolution weight must be 4-D OIHW [C_out, C_in/groups, kh, kw] "
                          f"or a 2-D im2col matrix [C_out, C_in/groups*kh*kw]; got shape {raw.shape}")
    if layout == "oihw":
        if raw.ndim != 4:
            raise WeightError(f"{src}: layout 'oihw' needs a 4-D [C_out, C_in/groups, kh, kw] weight, "
                              f"got shape {raw.shape}")
        if kernel_size is not None and _pair(kernel_size, "kernel_size", 1) != raw.shape[2:]:
            raise OptionsError(f"kernel_size={kernel_size!r}: the OIHW weight has {raw.shape[2]}x"
                               f"{raw.shape[3]} taps")
        check_finite(raw, what=src)  # before the reshape: name the OIHW index of a NaN
        c_out, c_in_g, kh, kw = (int(d) for d in raw.shape)
        raw = raw.reshape(c_out, c_in_g * kh * kw)
    else:
        if raw.ndim != 2:
            raise WeightError(f"{src}: layout 'im2col' needs a 2-D [C_out, C_in/groups*kh*kw] weight, "
                              f"got shape {raw.shape}")
        if kernel_size is None:
            raise OptionsError("kernel_size: required for an im2col weight [C_out, C_in*kh*kw] "
                               "(CLI: --kernel-size KH [KW]); e.g. 3 for a 3x3 convolution")
        kh, kw = _pair(kernel_size, "kernel_size", 1)
        c_out, kg = (int(d) for d in raw.shape)
        if kg % (kh * kw):
            raise WeightError(f"{src}: im2col weight has K={kg} columns, not a multiple of "
                              f"kh*kw={kh * kw} (kernel_size {kh}x{kw})")
        c_in_g = kg // (kh * kw)
    if 0 in raw.shape:
        raise WeightError(f"{src}: weight has an empty dimension (shape {raw.shape})")
    if c_out % groups:
        raise OptionsError(f"groups={groups}: does not divide C_out={c_out}")
    w = load_weight(raw)  # canonical float32 CSR, finiteness and float32 overflow checked
    matrix = _expand_groups(w.matrix, groups, c_out)
    return Weight(matrix=matrix, name=_sanitise(name), source=src), c_in_g * groups, kh, kw


def _sanitise(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text) or "conv"


def im2col_to_oihw(matrix, spec: Conv2dSpec) -> np.ndarray:
    """Dense float32 OIHW filter [C_out, C_in/groups, kh, kw] from the block-diagonal im2col A."""
    a = matrix.toarray() if scipy.sparse.issparse(matrix) else np.asarray(matrix)
    cg, og, taps = spec.c_in // spec.groups, spec.c_out // spec.groups, spec.kh * spec.kw
    blocks = [a[g * og:(g + 1) * og, g * cg * taps:(g + 1) * cg * taps] for g in range(spec.groups)]
    return np.concatenate(blocks, axis=0).reshape(spec.c_out, cg, spec.kh, spec.kw).astype(np.float32)


# --------------------------------------------------------------------------- reference


def conv2d_reference(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                     residual=None, relu=False) -> np.ndarray:
    """float64 NCHW Conv2d (cross-correlation, as torch.nn.functional.conv2d) + bias + residual,
    then ReLU. Computed tap by tap over the zero-padded input, independently of any im2col order."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    (sy, sx), (py, px), (dy, dx) = (_pair(stride, "stride", 1), _pair(padding, "padding", 0),
                                    _pair(dilation, "dilation", 1))
    nb, _, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    oh = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    ow = (wd + 2 * px - dx * (kw - 1) - 1) // sx + 1
    xp = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    y = np.zeros((nb, c_out, oh, ow))
    og = c_out // groups
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, :, ky * dy: ky * dy + sy * (oh - 1) + 1: sy, kx * dx: kx * dx + sx * (ow - 1) + 1: sx]
            for g in range(groups):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "oc,nchw->nohw", w[g * og:(g + 1) * og, :, ky, kx], tap[:, g * cg:(g + 1) * cg])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
    if residual is not None:
        y += np.asarray(residual, dtype=np.float64)
    return np.maximum(y, 0.0) if relu else y


def relative_error(got, ref) -> float:
    """max |got - ref| / max |ref| (normwise; robust to outputs near zero)."""
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    return diff / scale if scale > 0 else diff


# --------------------------------------------------------------------------- the kernel


class ConvKernel:
    """y = epilogue(conv2d(x, W)) for the fixed sparse W and input geometry it was compiled for.

    `conv(x)` runs on the GPU (CuPy array or torch CUDA tensor, NCHW float32, contiguous);
    `conv.run_host(x)` runs the same generated source on the CPU.
    """

    def __init__(self, kernel: SparseKernel, spec: Conv2dSpec, weight: Weight,
                 bias: np.ndarray | None):
        self.kernel = kernel
        self.spec = spec
        self.weight = weight
        self.bias = bias

    # delegated inspection
    name = property(lambda self: self.kernel.name)
    target = property(lambda self: self.kernel.target)
    arch = property(lambda self: self.kernel.arch)
    units = property(lambda self: self.kernel.units)
    artifacts = property(lambda self: self.kernel.artifacts)
    stats = property(lambda self: self.kernel.stats)
    schedule = property(lambda self: self.kernel.schedule)
    source = property(lambda self: self.kernel.source)
    sources = property(lambda self: self.kernel.sources)
    backend = property(lambda self: self.kernel.backend)
    ptx = property(lambda self: self.kernel.ptx)
    n = property(lambda self: self.kernel.n)
    relu = property(lambda self: self.kernel.schedule.relu)
    residual = property(lambda self: self.kernel.schedule.residual)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.spec.input_shape

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.spec.output_shape

    def sass_stats(self):
        return self.kernel.sass_stats()

    def summary(self) -> dict:
        return self.kernel.summary() | {"conv": self.spec.as_dict()}

    def save(self, out_dir) -> dict[str, Path]:
        paths = self.kernel.save(out_dir)
        meta = json.loads(paths["json"].read_text())
        meta["conv"] = self.spec.as_dict()
        paths["json"].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return paths

    def oihw(self) -> np.ndarray:
        """The filter as dense float32 [C_out, C_in/groups, kh, kw] (for references)."""
        return im2col_to_oihw(self.weight.matrix, self.spec)

    def reference(self, x, residual=None) -> np.ndarray:
        """float64 result of the same convolution and epilogue (numpy, CPU)."""
        s = self.spec
        return conv2d_reference(x, self.oihw(), self.bias, stride=s.stride, padding=s.padding,
                                dilation=s.dilation, groups=s.groups, residual=residual, relu=self.relu)

    def _shape_check(self, arr, what: str) -> None:
        """A clear message naming the compiled geometry (the launch checks dtype, layout, device)."""
        want = self.input_shape if what == "x" else self.output_shape
        shape = getattr(arr, "shape", None)
        if shape is not None and tuple(shape) != want:
            raise InputError(f"{what}: shape {tuple(shape)}; this convolution was compiled for "
                             f"{what} of shape {want} (N, C, H, W)")

    def __call__(self, x, *, out=None, residual=None):
        """GPU run on the caller's current stream; returns `out` (allocated if None)."""
        self._shape_check(x, "x")
        for what, arr in (("out", out), ("residual", residual)):
            if arr is not None:
                self._shape_check(arr, what)
        return self.kernel._launch(x, self.input_shape, self.output_shape, out=out, residual=residual)

    def run_host(self, x: np.ndarray, *, residual: np.ndarray | None = None) -> np.ndarray:
        """CPU run of the generated source (slow; exact same code path as the GPU's)."""
        self._shape_check(x, "x")
        if residual is not None:
            self._shape_check(residual, "residual")
        return self.kernel._run_host(x, self.input_shape, self.output_shape, residual=residual)


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
    with kernel_size (layout 'oihw' / 'im2col'; default: by rank), as a path (.npy .npz .mtx
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
    arch_ = resolve_arch(target, arch)
    options = KernelOptions(
        n=n, target=target, arch=arch_, relu=bool(relu), residual=bool(residual),
        threads_x=threads_x, vec=vec if spec.contiguous else 1, groups=thread_groups,
        rows_per_block=rows_per_block, max_slab_nnz=max_slab_nnz, prefetch=prefetch)
    bias_arr = load_bias(bias, spec.c_out)

    t0 = time.perf_counter()
    schedule, backend = plan_for(
        wt.matrix, options, bias=bias_arr, weight_digest=wt.digest(), batch=spec.batch,
        batch_stride_b=spec.c_in * h * w_, batch_stride_c=spec.c_out * n,
        extra=(("conv2d", spec.describe()),),
        conv=None if spec.contiguous else spec.geometry(),
    )
    t1 = time.perf_counter()
    # the PTX emitter (virtual im2col included) where ptxas is installed, else NVRTC
    units, backend = units_for(schedule, target, backend)
    t2 = time.perf_counter()
    artifacts = compile_units(units, target=target, arch=arch_, use_cache=use_cache, jobs=jobs,
                              progress=progress, schedule=schedule, backend=backend)
    t3 = time.perf_counter()
    stats = make_stats(schedule, units, artifacts, plan_s=t1 - t0, render_s=t2 - t1, compile_s=t3 - t2)
    kernel = SparseKernel(schedule=schedule, units=units, artifacts=artifacts, target=target,
                          arch=arch_, name=name or wt.name, stats=stats)
    return ConvKernel(kernel, spec, wt, bias_arr)


# --------------------------------------------------------------------------- CLI hooks


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
                   help="filter layout: oihw [C_out, C_in/G, kh, kw] or im2col [C_out, C_in/G*kh*kw] "
                        "(default: by rank)")
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
    progress = None
    try:
        from .cli import ProgressLine

        progress = ProgressLine()
    except ImportError:
        pass
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
        tensor=getattr(args, "tensor", None),
        seed=getattr(args, "seed", 0), values=getattr(args, "values", "normal"),
        use_cache=not getattr(args, "no_cache", False), jobs=getattr(args, "jobs", None),
        progress=progress)


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
        where = "host CPU, no GPU"
    return where, relative_error(got, kernel.reference(x, r))
