"""Launching CUDA kernels: CuPy or PyTorch operands, zero-copy, on the caller's stream; a kernel
of several slabs forks the caller's stream into lanes and joins them back."""

from __future__ import annotations

import threading

import numpy as np

from ...errors import InputError, ToolchainError

# Streams a multi-slab kernel's launches spread over. 8 = CUDA's default number of hardware work
# queues (CUDA_DEVICE_MAX_CONNECTIONS): more streams would share queues and serialise anyway.
SLAB_LANES = 8


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


# What each kernel dtype accepts: torch dtype name, CuPy dtype (None: CuPy has no such type).
_ACCEPTS = {"float32": ("float32", "float32"), "float16": ("float16", "float16"), "bfloat16": ("bfloat16", None)}


def _expected(dtype: str) -> str:
    torch_name, cupy_name = _ACCEPTS[dtype]
    return (f"a {cupy_name} CuPy array or a torch.{torch_name} CUDA tensor" if cupy_name
            else f"a torch.{torch_name} CUDA tensor (CuPy has no bfloat16)")


class CudaLauncher:
    """Runs one compiled kernel's units on CUDA devices (modules loaded once per device)."""

    def __init__(self, kernel):
        self.schedule = kernel.schedule
        self.units = kernel.units
        self.artifacts = kernel.artifacts
        self.arch = kernel.arch
        self._modules: dict[int, list] = {}  # device id -> [cupy Function per unit]
        self._streams: dict[int, tuple] = {}  # device id -> slab lanes and their events
        self._lock = threading.RLock()

    def _functions(self, device_id: int):
        with self._lock:
            fns = self._modules.get(device_id)
            if fns is None:
                import cupy

                from ...runtime.device import device_arch

                dev_arch = device_arch()
                if dev_arch is not None and dev_arch.rstrip("af") != self.arch.rstrip("af"):
                    raise ToolchainError(
                        f"kernel was compiled for {self.arch} but the current GPU is {dev_arch}; "
                        f"recompile with arch={dev_arch!r} (or arch=None for the current device)")
                fns = []
                for u, a in zip(self.units, self.artifacts):
                    module = cupy.cuda.function.Module()
                    module.load(a.binary)
                    fns.append((module, module.get_function(u.kernel_name)))
                self._modules[device_id] = fns
            return [f for _, f in fns]

    def _check_operand(self, x, what: str, shape: tuple[int, ...]):
        """Validate a device operand and return a zero-copy CuPy view of it."""
        import cupy

        if _is_torch(x):
            import torch

            if not x.is_cuda:
                raise InputError(f"{what}: a CPU torch tensor; move it to the GPU (.cuda()) or "
                                 f"use kernel.run_host() for a CPU run")
            dtype = self.schedule.dtype
            if x.dtype != getattr(torch, _ACCEPTS[dtype][0]):
                raise InputError(f"{what}: dtype {x.dtype}; expected torch.{_ACCEPTS[dtype][0]} "
                                 f"(kernel dtype={dtype!r})")
            if x.requires_grad and torch.is_grad_enabled():
                raise InputError(f"{what}: requires grad; sparsert kernels are inference-only "
                                 f"(use torch.no_grad() or .detach())")
            if tuple(x.shape) != shape:
                raise InputError(f"{what}: shape {tuple(x.shape)}; expected {shape}")
            if not x.is_contiguous():
                raise InputError(f"{what}: not C-contiguous; call .contiguous() first")
            t = x.detach()
            view = cupy.asarray(t.view(torch.uint16) if t.dtype == torch.bfloat16 else t)  # bits
        elif isinstance(x, cupy.ndarray):
            dtype = self.schedule.dtype
            if _ACCEPTS[dtype][1] is None or x.dtype != _ACCEPTS[dtype][1]:
                raise InputError(f"{what}: CuPy dtype {x.dtype}; expected {_expected(dtype)} "
                                 f"(kernel dtype={dtype!r})")
            if x.shape != shape:
                raise InputError(f"{what}: shape {x.shape}; expected {shape}")
            if not x.flags.c_contiguous:
                raise InputError(f"{what}: not C-contiguous; use cupy.ascontiguousarray()")
            view = x
        elif isinstance(x, np.ndarray):
            raise InputError(f"{what}: a NumPy (host) array; pass a CuPy array or a CUDA torch tensor, "
                             f"or use kernel.run_host() to run on the CPU")
        else:
            raise InputError(f"{what}: {type(x).__name__}; expected a CuPy array or a CUDA torch tensor")
        align = self.schedule.elem_bytes * self.schedule.vec
        if view.data.ptr % align:
            raise InputError(f"{what}: data pointer not {align}-byte aligned, which this kernel's "
                             f"{self.schedule.vec}-wide vector loads need; pass a fresh contiguous copy")
        return view

    def __call__(self, B, b_shape, c_shape, *, out=None, residual=None):
        """C = epilogue(A @ B) on the caller's current stream (CuPy's, or torch's for tensors)."""
        import cupy

        torch_in = _is_torch(B)
        b = self._check_operand(B, "B", b_shape)
        device_id = b.device.id
        if self.schedule.residual and residual is None:
            raise InputError("residual: this kernel was compiled with residual=True; pass residual=")
        if not self.schedule.residual and residual is not None:
            raise InputError("residual: this kernel was compiled without residual; recompile with residual=True")
        if out is None:
            if torch_in:
                import torch

                out = torch.empty(c_shape, dtype=B.dtype, device=B.device)
            else:
                with cupy.cuda.Device(device_id):
                    out = cupy.empty(c_shape, dtype=B.dtype)
        c = self._check_operand(out, "out", c_shape)
        args = [b, c]
        if residual is not None:
            args.append(self._check_operand(residual, "residual", c_shape))
        for name, arr in (("out", c), ("residual", args[2] if len(args) > 2 else None)):
            if arr is not None and arr.device.id != device_id:
                raise InputError(f"{name}: on GPU {arr.device.id} but B is on GPU {device_id}")
        # B (and R) are read through the non-coherent path while C is written: no aliasing
        for name, arr in (("B", b), ("residual", args[2] if len(args) > 2 else None)):
            if arr is not None and _overlap(c, arr):
                raise InputError(f"out: overlaps {name} in memory; the kernel reads {name} while writing out, "
                                 f"so the result would be wrong; pass a separate output buffer")
        if torch_in:
            import torch

            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(B.device).cuda_stream, device_id)
        else:
            stream = cupy.cuda.get_current_stream()
        with cupy.cuda.Device(device_id):
            self._launch_units(self._functions(device_id), tuple(args), stream, device_id)
        return out

    def _launch_units(self, fns, args: tuple, stream, device_id: int) -> None:
        """One launch per slab. Slabs write disjoint rows of C, so several run side by side: the
        caller's stream forks to up to SLAB_LANES streams (an event each way) and joins back, so
        whatever the caller enqueues next still runs after every slab."""
        if len(fns) == 1:
            u = self.units[0]
            fns[0](u.grid, u.block, args, stream=stream)
            return
        with self._lock:  # the fork/join events are shared by the calls of this kernel
            lanes, fork, joins = self._lanes(device_id, len(fns))
            fork.record(stream)
            for lane in lanes[1:]:
                lane.wait_event(fork)
            all_lanes = (stream, *lanes[1:])
            # biggest slabs first, dealt round-robin, so the lanes finish close together
            order = sorted(range(len(fns)), key=lambda i: -self.units[i].nnz)
            try:
                for j, i in enumerate(order):
                    u = self.units[i]
                    fns[i](u.grid, u.block, args, stream=all_lanes[j % len(all_lanes)])
            finally:  # a failed launch still joins: the caller's stream waits for what was launched
                for lane, done in zip(lanes[1:], joins):
                    done.record(lane)
                    stream.wait_event(done)

    def _lanes(self, device_id: int, slabs: int):
        """(streams, fork event, join events) for this device, made once (lanes[0] stands for the
        caller's stream). Events are reusable: a wait applies to the latest record before it."""
        import cupy

        cached = self._streams.get(device_id)
        if cached is None:
            width = max(1, min(SLAB_LANES, slabs))
            side = [cupy.cuda.Stream(non_blocking=True) for _ in range(width - 1)]
            cached = ((None, *side), cupy.cuda.Event(disable_timing=True),
                      [cupy.cuda.Event(disable_timing=True) for _ in side])
            self._streams[device_id] = cached
        return cached


def _overlap(a, b) -> bool:
    """Whether two CuPy arrays' byte ranges intersect (C-contiguous views, as checked)."""
    a0, b0 = a.data.ptr, b.data.ptr
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes
