"""Running a CPU kernel: its shared object loaded once (from the verified cache file), NumPy arrays
and CPU torch tensors zero-copy, the same operand checks as the CUDA launch, and the pool."""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading

import numpy as np

from ...errors import InputError, ToolchainError
from .isa import cpu_flags, has_avx512_bf16, runnable, supported
from .runtime import Job, run, threads_for
from .x86 import tile_floats

# B chunk (packed panel) per work item: a quarter of a Zen 4 L2 (measured: beats 1/2 and 1/8)...
PANEL_BYTES = 256 * 1024
# ...but at least this many tiles, so each call of a block's code sweeps enough tiles to pay for
# bringing that code in (K = 2048, N = 256: 16 tiles beat the 4 the budget allows by 37%).
MIN_TILES = 16
# Up to this much packed B, one thread packs all of N at once instead: B is then read in whole
# rows, one sequential stream, where chunks read it in short runs per row (the pack of a cold B was
# most of a memory-bound call: `perf` on 64x256x3136 at 90%, pack 36% of samples, the kernels 18%).
# Measured (1 thread, interleaved, B cold): 1.06-1.33x at panels of 0.8-6.4 MB; 0.69x and 0.63x at
# 12.8 and 25 MB, where the L2-sized chunks win. Several threads keep the chunks: they take work
# segments in turn, so with one chunk per thread each would pack (nearly) all of B, and 2-thread
# timings on the shared development machine are not facts (benchmarks/results/cpu-summary.md).
WHOLE_PANEL_BYTES = 6 << 20


def _torch_module(x):
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        return torch
    return None


# Element type codes of the runtime (sprt_job.elem), and the NumPy dtypes taken for each: numpy
# has no bfloat16, so bfloat16 comes as its uint16 bits (as run_host takes it) or as an
# ml_dtypes.bfloat16 array (recognised by name; ml_dtypes is not needed otherwise).
ELEM = {"float32": 0, "float16": 1, "bfloat16": 2}
_NUMPY = {"float32": ("float32",), "float16": ("float16",), "bfloat16": ("uint16", "bfloat16")}
_NUMPY_SAID = {"float32": "float32", "float16": "float16",
               "bfloat16": "uint16 (bfloat16 bits) or ml_dtypes.bfloat16"}


def _address(x, what: str, shape: tuple[int, ...], dtype: str = "float32", *, writable: bool = False):
    """(address, keep-alive) of a C-contiguous CPU array or tensor of `dtype` and exactly `shape`."""
    torch = _torch_module(x)
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise InputError(f"{what}: a {x.device.type.upper()} tensor; this kernel runs on the CPU "
                             f"(target='cpu'): pass a CPU tensor")
        if x.dtype != getattr(torch, dtype):
            raise InputError(f"{what}: dtype {x.dtype}; expected torch.{dtype} (the kernel's dtype)")
        if x.requires_grad and torch.is_grad_enabled():
            raise InputError(f"{what}: requires grad; sparsert kernels are inference-only "
                             f"(use torch.no_grad() or .detach())")
        if tuple(x.shape) != shape:
            raise InputError(f"{what}: shape {tuple(x.shape)}; expected {shape}")
        if not x.is_contiguous():
            raise InputError(f"{what}: not C-contiguous; call .contiguous() first")
        return x.data_ptr(), x
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: {type(x).__name__}; expected a NumPy array or a CPU torch tensor")
    if x.dtype.name not in _NUMPY[dtype] or not x.dtype.isnative:  # '>f4' is named float32 too
        raise InputError(f"{what}: dtype {x.dtype.str if not x.dtype.isnative else x.dtype}; expected "
                         f"{_NUMPY_SAID[dtype]} (the kernel's dtype) in native byte order")
    if x.shape != shape:
        raise InputError(f"{what}: shape {x.shape}; expected {shape}")
    if not x.flags.c_contiguous:
        raise InputError(f"{what}: not C-contiguous; use np.ascontiguousarray()")
    if writable and not x.flags.writeable:
        raise InputError(f"{what}: read-only array")
    return x.ctypes.data, x


def _span(x) -> tuple[int, int]:
    torch = _torch_module(x)
    if torch is not None and isinstance(x, torch.Tensor):
        return x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()
    return x.ctypes.data, x.ctypes.data + x.nbytes


def _overlap(a, b) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


class _Loaded:
    """A kernel's shared object and its exported tables."""

    def __init__(self, path: str, v: int, residual: bool):
        self.lib = ctypes.CDLL(path)
        self.nblocks = ctypes.c_long.in_dll(self.lib, "sparsert_cpu_nblocks").value
        self.fns = (ctypes.c_void_p * self.nblocks).in_dll(self.lib, "sparsert_cpu_blocks")
        nnz = np.ctypeslib.as_array((ctypes.c_long * self.nblocks).in_dll(self.lib, "sparsert_cpu_nnz"))
        rows = np.ctypeslib.as_array((ctypes.c_long * self.nblocks).in_dll(self.lib, "sparsert_cpu_rows"))
        # cost per column: FMAs, plus the epilogue, plus a call (a few dozen instructions)
        self.cost = np.ascontiguousarray(nnz * v + rows * (2 + residual) + 16, dtype=np.int64)
        self.width = ctypes.c_long.in_dll(self.lib, "sparsert_cpu_width").value


def _library_path(artifact) -> str:
    """The shared object's file: the verified cache file when it still holds these bytes, else a
    private copy (cache off, or the file changed since it was checked)."""
    path = artifact.path
    if path is not None:
        try:
            if path.stat().st_size == len(artifact.binary) and path.read_bytes() == artifact.binary:
                return str(path)
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix="sparsert-cpu-kernel-", suffix=".so")
    with os.fdopen(fd, "wb") as f:
        f.write(artifact.binary)
    return name


class CpuLauncher:
    """Runs one compiled CPU kernel: C = epilogue(A @ B), or its convolution over NCHW images."""

    def __init__(self, kernel):
        s = kernel.schedule
        self.schedule = s
        self.isa = kernel.arch
        if s.packed and not has_avx512_bf16():
            also = "" if runnable("avx512") else f" and arch={(supported() or ('avx2',))[0]!r}"
            raise ToolchainError(f"this kernel multiplies with vdpbf16ps (accumulate='bfloat16'), which needs "
                                 f"AVX512-BF16; this CPU lacks it: compile with accumulate='float32'{also}")
        if not runnable(self.isa):
            raise ToolchainError(f"this kernel was compiled for {self.isa}, which this CPU does not run; "
                                 f"compile it with arch='avx2' (or SPARSERT_CPU_ISA=avx2)")
        if s.dtype == "float16" and "f16c" not in cpu_flags():
            raise ToolchainError("dtype='float16' on the CPU needs F16C conversions, which this CPU lacks; "
                                 "use float32 or bfloat16")
        (artifact,) = kernel.artifacts
        self.v = s.vec
        self.lib = _Loaded(_library_path(artifact), self.v, s.residual)
        self.width = self.lib.width
        self.tile = tile_floats(s.k, self.width)
        self.jobs: dict[tuple[int, int], Job] = {}
        self.lock = threading.Lock()  # the cached jobs are shared state

    def chunk_for(self, threads: int, units: int) -> int:
        s, w = self.schedule, self.width
        if s.chunk is not None:  # the caller's (KernelOptions.chunk, a multiple of w): as given
            return min(-(-s.chunk // w) * w, -(-s.n // w) * w)
        n_pad = -(-s.n // w) * w
        if threads == 1 and 4 * s.k * n_pad <= WHOLE_PANEL_BYTES:
            chunk = n_pad
        else:
            chunk = max(MIN_TILES * w, (PANEL_BYTES // (4 * max(1, s.k))) // w * w)
        chunk = min(chunk, n_pad)
        # few blocks: cut N finer so every thread gets work (~4 items per thread)
        while threads > 1 and chunk > w and self.lib.nblocks * units * -(-s.n // chunk) < 4 * threads:
            chunk = max(w, (chunk // 2) // w * w)
        return chunk

    def _job(self, threads: int, batch: int) -> Job:
        """Built once per (threads, batch); then only the operands change (filling a ctypes
        struct costs ~10 us, most of a small call's overhead)."""
        job = self.jobs.get((threads, batch))
        if job is None:
            s, lo = self.schedule, self.lib
            job = Job()
            job.fns = ctypes.cast(lo.fns, ctypes.c_void_p)
            job.cost = lo.cost.ctypes.data
            job.nblocks, job.k, job.n = lo.nblocks, s.k, s.n
            job.chunk = self.chunk_for(threads, batch)
            job.width, job.tile = self.width, self.tile
            job.batch, job.stride_b, job.stride_c = batch, s.batch_stride_b, s.batch_stride_c
            job.elem = ELEM[s.dtype]
            job.pairs = int(s.packed)
            g = s.conv
            if g is not None:  # the runtime gathers the virtual im2col per chunk
                job.gather, job.c_in, job.h, job.w, job.kh, job.kw = 1, g.c_in, g.h, g.w, g.kh, g.kw
                (job.sy, job.sx), (job.py, job.px), (job.dy, job.dx) = g.stride, g.padding, g.dilation
                job.ow = g.ow
            self.jobs[(threads, batch)] = job
        return job

    def __call__(self, B, b_shape, c_shape, *, out=None, residual=None, threads: int | None = None):
        s = self.schedule
        threads = threads_for(threads)
        b_addr, b_keep = _address(B, "B" if len(b_shape) == 2 else "x", b_shape, s.dtype)
        if s.residual and residual is None:
            raise InputError("residual: this kernel was compiled with residual=True; pass residual=")
        if not s.residual and residual is not None:
            raise InputError("residual: this kernel was compiled without residual; recompile with residual=True")
        r_addr, r_keep = (None, None) if residual is None else _address(residual, "residual", c_shape, s.dtype)
        if out is None:  # the kind of B: a tensor for a tensor; for NumPy, B's own dtype
            torch = _torch_module(B)
            out = (torch.empty(c_shape, dtype=getattr(torch, s.dtype)) if torch is not None
                   else np.empty(c_shape, dtype=B.dtype))
        c_addr, _ = _address(out, "out", c_shape, s.dtype, writable=True)
        if _overlap(out, B) or (residual is not None and _overlap(out, residual)):
            raise InputError("out: overlaps the input or the residual, which are read while out is written; "
                             "pass a separate buffer")
        batch = s.batch
        with self.lock:
            job = self._job(threads, batch)
            job.B, job.C, job.R = b_addr, c_addr, r_addr
            run(job, threads)
        del b_keep, r_keep
        return out
