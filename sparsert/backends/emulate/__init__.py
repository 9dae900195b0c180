"""The emulate backend: generated CUDA run on the CPU through g++ and the host shim, so that CI
checks the numbers of the emitted code without a GPU (kernel.run_host). Not a compile target:
it runs what the CUDA backends rendered, unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...config import settings
from ...errors import InputError
from .host import HostKernel, host_compiler_available


class Emulator:
    name = "emulate"
    target = "cuda"

    def available(self) -> str | None:
        return None if host_compiler_available() else "no C++20 host compiler (g++) for the emulator"

    def launcher(self, kernel):
        return HostLauncher(kernel)


class HostLauncher:
    def __init__(self, kernel):
        schedule = kernel.schedule
        self.residual = schedule.residual
        self.units = kernel.units
        self.dtype = schedule.dtype
        elem = _ELEM_CTYPE[schedule.dtype]
        params = [f"const {elem}*", f"{elem}*"] + ([f"const {elem}*"] if schedule.residual else [])
        sources = kernel.source_units()
        # g++ runs as a subprocess per slab: build them side by side
        with ThreadPoolExecutor(max_workers=max(1, min(settings().jobs, len(sources)))) as pool:
            self.kernels = list(pool.map(
                lambda u: HostKernel.build(u.source, u.kernel_name, params, name=u.kernel_name), sources))

    def __call__(self, B, b_shape, c_shape, *, residual=None) -> np.ndarray:
        b = _host_operand(B, "B", b_shape, self.dtype)
        args = [b, np.zeros(c_shape, dtype=b.dtype)]
        if self.residual:
            if residual is None:
                raise InputError("residual: this kernel was compiled with residual=True; pass residual=")
            args.append(_host_operand(residual, "residual", c_shape, self.dtype))
        elif residual is not None:
            raise InputError("residual: this kernel was compiled without residual; recompile with residual=True")
        for hk, u in zip(self.kernels, self.units):
            hk.launch(u.grid, u.block, args)
        if self.dtype == "bfloat16" and getattr(B, "dtype", None) is not None and B.dtype.name == "bfloat16":
            return args[1].view(B.dtype)  # ml_dtypes.bfloat16 in, the same out
        return args[1]


# C type of B, C and R per kernel dtype (the host shim's half types for half precision)
_ELEM_CTYPE = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
_EXPECTED = {"float32": "float32", "float16": "float16",
             "bfloat16": "bfloat16 bits as uint16 (NumPy has no bfloat16; e.g. torch_tensor.view(torch.uint16)"
                         ".numpy()) or an ml_dtypes.bfloat16"}


def _host_operand(x, what: str, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: {type(x).__name__}; run_host expects a NumPy array")
    want = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    if dtype == "bfloat16" and x.dtype.name == "bfloat16" and x.dtype.itemsize == 2:
        x = x.view(np.uint16)  # ml_dtypes.bfloat16: the same bits
    if x.dtype != want:
        raise InputError(f"{what}: dtype {x.dtype}; expected {_EXPECTED[dtype]} (kernel dtype={dtype!r})")
    if x.shape != shape:
        raise InputError(f"{what}: shape {x.shape}; expected {shape}")
    if not x.flags.c_contiguous or x.ctypes.data % 16:  # vector loads need 16-byte alignment
        x = np.array(x, dtype=want, order="C", copy=True)
    return x
