"""Tuning operands in the kernel's dtype: the arrays a kernel's own call (GPU) and run_host (CPU)
take for B and R, made from float32 values the dtype represents exactly, and the float64 values
of what the kernel returns.

What each path accepts (backends/cuda/launch.py _ACCEPTS, backends/emulate/__init__.py):
run_host takes NumPy float32 / float16, and bfloat16 as its uint16 bits; the GPU call takes CuPy
float32 / float16 arrays, but bfloat16 only as a torch CUDA tensor (CuPy has no bfloat16)."""

from __future__ import annotations

import numpy as np

from ..errors import ToolchainError
from ..ir.precision import from_half_bits, half_bits

ELEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# -- host (run_host) --------------------------------------------------------------------------
def host_array(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` (float32, exact in `dtype`) as run_host takes them."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "float32":
        return values
    if dtype == "float16":
        return values.astype(np.float16)
    return half_bits(values, dtype).reshape(values.shape)


def host_values(arr, dtype: str) -> np.ndarray:
    """float64 values of what run_host returned (bfloat16: its uint16 bits, or ml_dtypes)."""
    arr = np.asarray(arr)
    if dtype == "bfloat16":
        bits = arr.view(np.uint16) if arr.dtype.name == "bfloat16" else arr
        return from_half_bits(bits, dtype).reshape(arr.shape).astype(np.float64)
    return arr.astype(np.float64)


# -- device (the kernel's call) ---------------------------------------------------------------
def torch_cuda():
    """torch, where it can hold bfloat16 operands on this GPU; else a one-line ToolchainError."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise ToolchainError("a bfloat16 kernel takes its GPU operands only as torch CUDA tensors (CuPy has "
                             "no bfloat16), and torch with CUDA is not importable here: install PyTorch "
                             "with CUDA to tune or check bfloat16 kernels on this GPU")
    return torch


def _torch_device(torch):
    import cupy

    return torch.device("cuda", cupy.cuda.Device().id)  # the GPU CuPy works on: one device for all


def device_array(values: np.ndarray, dtype: str):
    """`values` on the current GPU as the kernel's call takes them."""
    if dtype == "bfloat16":
        torch = torch_cuda()
        bits = host_array(values, dtype).view(np.int16)  # torch has no uint16 from NumPy everywhere
        return torch.from_numpy(bits).to(_torch_device(torch)).view(torch.bfloat16)
    import cupy

    return cupy.asarray(host_array(values, dtype))


def device_values(arr, dtype: str) -> np.ndarray:
    """float64 values (on the host) of a kernel's GPU output."""
    if dtype == "bfloat16":
        return arr.float().cpu().numpy().astype(np.float64)  # bfloat16 -> float32 is exact
    import cupy

    return cupy.asnumpy(arr).astype(np.float64)


def device_normal(shape: tuple[int, ...], dtype: str, seed: int):
    """A standard-normal GPU array of `dtype` (timing operands: the values need only be ordinary
    numbers, no NaN or subnormal slow paths). bfloat16 is drawn by torch."""
    if dtype == "bfloat16":
        torch = torch_cuda()
        gen = torch.Generator(device=_torch_device(torch))
        gen.manual_seed(seed)
        return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.bfloat16)
    import cupy

    return cupy.random.default_rng(seed).standard_normal(shape, dtype=cupy.float32).astype(dtype)


def device_empty(shape: tuple[int, ...], dtype: str):
    if dtype == "bfloat16":
        torch = torch_cuda()
        return torch.empty(shape, device=_torch_device(torch), dtype=torch.bfloat16)
    import cupy

    return cupy.empty(shape, dtype=dtype)
