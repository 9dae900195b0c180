"""Tensors and dtypes for the sparse torch modules: which backends and torch dtypes a sparse layer
accepts (BACKENDS, DTYPES and the messages that go with them), conversions between torch tensors
and the host emulator's numpy arrays (bfloat16 as its uint16 bits), the alignment the CUDA
kernels' vector loads need, a layer's weight sparsity and the kernel name derived from a layer's
name. Nothing here knows about modules, layer selection or the report."""

from __future__ import annotations

import re

import numpy as np
import torch

BACKENDS = ("auto", "cuda", "cpu", "host")
"""Where sparse layers run: 'cuda' (GPU kernels), 'cpu' (the CPU target: x86 code with the weights
baked in), 'host' (the CUDA kernels' source run on the CPU by the emulator: slow, for checking);
'auto' picks 'cuda' for a model fed CUDA tensors and 'cpu' otherwise."""
# torch dtype of a layer's weight -> the kernel's dtype: a sparse layer runs in its weight's dtype
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_CAST = {torch.float32: ".float()", torch.float16: ".half()", torch.bfloat16: ".bfloat16()"}
_DTYPE_REFUSED = "sparsert kernels are float32, float16 or bfloat16"


def _kernel_name(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", layer) or "layer"


def _weight_sparsity(weight: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight.detach())) / weight.numel()


def _to_host(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as run_host takes it: float32 / float16 arrays, bfloat16 as its uint16 bits."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _from_host(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """run_host's result as a tensor of `dtype` (bfloat16 comes back as its uint16 bits)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _aligned(t: torch.Tensor, align: int = 16) -> torch.Tensor:
    """t itself if contiguous and aligned for the kernel's vector loads, else an aligned copy."""
    if t.is_contiguous() and t.data_ptr() % align == 0:
        return t
    out = t.contiguous()
    return out.clone() if out.data_ptr() % align else out  # a misaligned contiguous view
