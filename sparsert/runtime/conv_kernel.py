"""The compiled convolution as a callable over NCHW tensors (a SparseKernel over its virtual
im2col, with the shapes of the images it was compiled for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..check.reference import conv2d_reference
from ..errors import InputError
from .kernel import SparseKernel


class ConvKernel:
    """y = epilogue(conv2d(x, W)) for the fixed sparse W and input geometry it was compiled for.

    `conv(x)` runs on the GPU (CuPy array or torch CUDA tensor, NCHW float32, contiguous);
    `conv.run_host(x)` runs the same generated source on the CPU.
    """

    def __init__(self, kernel: SparseKernel, spec, weight, bias: np.ndarray | None):
        self.kernel = kernel
        self.spec = spec
        self.weight = weight
        self.bias = bias

    def __repr__(self) -> str:
        return (f"<ConvKernel {self.name!r}: input {self.input_shape} -> output {self.output_shape}, "
                f"nnz={self.schedule.nnz}, target={self.target}, arch={self.arch}, slabs={len(self.schedule.slabs)}>")

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
        return self.kernel.save(out_dir, meta={"conv": self.spec.as_dict()})

    def oihw(self) -> np.ndarray:
        """The filter as dense float32 [C_out, C_in/groups, kh, kw] (for references)."""
        return self.spec.to_oihw(self.weight.matrix)

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

    def __call__(self, x, *, out=None, residual=None, threads: int | None = None):
        """Run through the kernel's launcher (CUDA: on the caller's current stream; CPU: on
        `threads` threads); returns `out` (allocated if None)."""
        self._shape_check(x, "x")
        for what, arr in (("out", out), ("residual", residual)):
            if arr is not None:
                self._shape_check(arr, what)
        return self.kernel._launch(x, self.input_shape, self.output_shape, out=out, residual=residual,
                                   threads=threads)

    @property
    def asm(self) -> str:
        return self.kernel.asm

    def run_host(self, x: np.ndarray, *, residual: np.ndarray | None = None) -> np.ndarray:
        """CPU run of the generated source (slow; exact same code path as the GPU's)."""
        self._shape_check(x, "x")
        if residual is not None:
            self._shape_check(residual, "residual")
        return self.kernel._run_host(x, self.input_shape, self.output_shape, residual=residual)
