"""The sparse torch modules: `_SparseModule` (input checks, the per-geometry kernel cache, frozen
parameters shared with the dense layer, pickling without kernels), `SparseLinear` (y = x W^T + b as
a sparsert kernel, feature-major output; see the package docstring for the layout) and
`SparseConv2d` (a zero-padded convolution per input shape), each running on the 'cuda', 'cpu' or
'host' backend."""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import nn

from ...api import compile as _compile_kernel
from ...errors import InputError, OptionsError
from .select import _conv_compiler_in_use, conv_unsupported
from .tensors import (
    _CAST,
    _DTYPE_REFUSED,
    BACKENDS,
    DTYPES,
    _aligned,
    _from_host,
    _kernel_name,
    _to_host,
    _weight_sparsity,
)


class _SparseModule(nn.Module):
    """Shared by SparseLinear and SparseConv2d: input checks, the kernel cache, pickling."""

    kind = ""

    def __init__(self, dense: nn.Module, *, backend: str, arch: str | None, name: str,
                 use_cache: bool = True):
        super().__init__()
        if backend not in BACKENDS:
            raise OptionsError(f"backend={backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
        if dense.weight.dtype not in DTYPES:
            raise InputError(f"{name}: weight dtype {dense.weight.dtype}; {_DTYPE_REFUSED}")
        self.dtype = dense.weight.dtype  # the kernels' dtype, and the one input dtype accepted
        # The same Parameters as the dense layer (state_dict keys unchanged), frozen: the values
        # are baked into the kernels, so training them would silently change nothing.
        self.weight = dense.weight
        self.bias = dense.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.backend = backend
        self.target = "cpu" if backend == "cpu" else "cuda"
        self.arch = arch
        self.layer_name = name
        self.use_cache = use_cache
        self._kernels: dict = {}
        self._lock = threading.Lock()
        self._versions = None  # parameter versions the kernels were compiled from

    def _param_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in (self.weight, self.bias) if p is not None)

    # Kernels hold locks and GPU modules: a copy or a pickle starts with none and recompiles on
    # first use (a disk-cache hit, normally).
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_kernels"] = {}
        state["_lock"] = None
        state["_versions"] = None  # copies restart their version counters
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    @property
    def kernels(self) -> dict:
        """The compiled kernels, keyed by input geometry (N for Linear, (batch, H, W) for Conv2d)."""
        return dict(self._kernels)

    def _numpy_params(self) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 weight and bias (exact for float16 / bfloat16 values; bfloat16 has no .numpy());
        the compile takes them to the kernel's dtype itself."""
        w = self.weight.detach().float().cpu().numpy()
        b = None if self.bias is None else self.bias.detach().float().cpu().numpy()
        return w, b

    def kernel_for(self, key, *, jobs: int | None = None):
        """The kernel for this input geometry, compiled (and kept) on first request."""
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:
                kernel = self._kernels.get(key)
                if kernel is None:
                    if not self._kernels:
                        self._versions = self._param_versions()
                    kernel = self._build(key, jobs=jobs)
                    self._kernels[key] = kernel
        return kernel

    def _build(self, key, *, jobs: int | None):
        raise NotImplementedError

    def _check(self, x) -> None:
        what = f"{self.layer_name} ({self.kind})"
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{what}: input is a {type(x).__name__}; expected a torch.Tensor")
        if torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in (self.weight, self.bias) if p is not None)):
            raise InputError(f"{what}: autograd is not supported (sparsert kernels are inference-only); "
                             f"run under torch.no_grad() or torch.inference_mode(), with the "
                             f"parameters frozen")
        if self.weight.dtype != self.dtype:
            raise InputError(f"{what}: the weight was cast to {self.weight.dtype} after it was compiled "
                             f"as {self.dtype}; call sparsert.torch.sparsify() again")
        if x.dtype != self.dtype:
            raise InputError(f"{what}: input dtype {x.dtype}; this layer's kernels are {DTYPES[self.dtype]}, "
                             f"its weight's dtype (cast with {_CAST[self.dtype]})")
        if self.backend == "cpu" and x.device.type != "cpu":
            raise InputError(f"{what}: input is on {x.device} but this layer runs on the CPU "
                             f"(backend='cpu'); pass a CPU tensor, or sparsify with backend='cuda'")
        if self.backend == "cuda" and not x.is_cuda:
            raise InputError(f"{what}: input is a {x.device.type.upper()} tensor but this layer runs "
                             f"on CUDA (backend='cuda'); move the input to the GPU, or sparsify with "
                             f"backend='host' to run the kernels on the CPU")
        if self.backend == "host" and x.device.type != "cpu":
            raise InputError(f"{what}: input is on {x.device} but this layer runs on the CPU "
                             f"(backend='host'); pass a CPU tensor, or sparsify with backend='cuda'")
        if self._kernels and self._param_versions() != self._versions:
            raise InputError(f"{what}: the weight or bias was modified after it was compiled; "
                             f"call sparsert.torch.sparsify() again")


class SparseLinear(_SparseModule):
    """nn.Linear whose y = x W^T + b runs as a sparsert kernel (W and b baked in)."""

    kind = "Linear"

    def __init__(self, linear: nn.Linear, *, backend: str = "cuda", arch: str | None = None,
                 name: str = "linear", contiguous_output: bool = False, use_cache: bool = True):
        super().__init__(linear, backend=backend, arch=arch, name=name, use_cache=use_cache)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.contiguous_output = contiguous_output

    def _build(self, n: int, *, jobs: int | None):
        w, b = self._numpy_params()
        return _compile_kernel(w, n=n, bias=b, arch=self.arch, jobs=jobs, use_cache=self.use_cache,
                               name=_kernel_name(self.layer_name), dtype=DTYPES[self.dtype], target=self.target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputError(f"{self.layer_name} (Linear): input shape {tuple(x.shape)}; expected "
                             f"[..., {self.in_features}]")
        lead = tuple(x.shape[:-1])
        tokens = math.prod(lead)
        if tokens == 0:
            return x.new_zeros(*lead, self.out_features)
        kernel = self.kernel_for(tokens)
        # B = x^T [in, T]: free (a view) when x arrives feature-major, e.g. from a sparse Linear.
        b = x.detach().reshape(tokens, self.in_features).t()
        if self.backend == "cuda":
            c = kernel(_aligned(b, b.element_size() * kernel.schedule.vec))
        elif self.backend == "cpu":
            c = kernel(b.contiguous())  # free when x arrives feature-major (from a sparse Linear)
        else:
            c = _from_host(kernel.run_host(_to_host(b)), self.dtype)
        y = c.t().reshape(*lead, self.out_features)  # a view: C is [out, T]
        return y.contiguous() if self.contiguous_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={_weight_sparsity(self.weight):.3f}, "
                f"backend={self.backend!r}, compiled_n={sorted(self._kernels)}")


class SparseConv2d(_SparseModule):
    """nn.Conv2d (zero padding) running as a sparsert kernel per input shape (batch, H, W)."""

    kind = "Conv2d"

    def __init__(self, conv: nn.Conv2d, *, backend: str = "cuda", arch: str | None = None,
                 name: str = "conv", use_cache: bool = True):
        reason = conv_unsupported(conv)
        if reason:
            raise OptionsError(f"{name} (Conv2d): {reason}")
        super().__init__(conv, backend=backend, arch=arch, name=name, use_cache=use_cache)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = _int_padding(conv)
        self.dilation = conv.dilation
        self.groups = conv.groups

    def _build(self, key: tuple[int, int, int], *, jobs: int | None):
        batch, h, w_ = key
        weight, bias = self._numpy_params()
        return _conv_compiler_in_use()(
            weight, (h, w_), stride=self.stride, padding=self.padding, dilation=self.dilation,
            groups=self.groups, bias=bias, batch=batch, arch=self.arch, jobs=jobs,
            use_cache=self.use_cache, name=_kernel_name(self.layer_name), dtype=DTYPES[self.dtype],
            target=self.target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"{self.layer_name} (Conv2d): input shape {tuple(x.shape)}; expected "
                             f"[N, {self.in_channels}, H, W] or [{self.in_channels}, H, W]")
        n, _, h, w_ = x.shape
        if n == 0:
            raise InputError(f"{self.layer_name} (Conv2d): empty batch")
        kernel = self.kernel_for((n, h, w_))
        x = x.detach()
        if self.backend == "cuda":
            y = kernel(_aligned(x))
        elif self.backend == "cpu":
            y = kernel(x.contiguous())
        else:
            y = _from_host(kernel.run_host(_to_host(x)), self.dtype)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, "
                f"sparsity={_weight_sparsity(self.weight):.3f}, backend={self.backend!r}, "
                f"compiled={sorted(self._kernels)}")


def _int_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Symmetric integer padding (torch's 'same' pads the extra pixel on one side only)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)
