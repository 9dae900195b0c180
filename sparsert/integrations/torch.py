"""PyTorch integration: run the pruned nn.Linear / nn.Conv2d layers of a model through sparsert.

    import sparsert.torch
    fast = sparsert.torch.sparsify(model, example_input, min_sparsity=0.5)   # compiles, cached
    print(fast.sparsert_report)           # each layer: shape, sparsity, compiled or skipped, why
    with torch.inference_mode():
        y = fast(x)                       # sparse layers run sparsert kernels on torch's stream

`sparsert/__init__.py` does not import this module, so the core works without PyTorch.

Layout of a Linear (y = x W^T + b, x of shape [..., in]). The kernel computes C = A @ B with
A = W [out, in] and B = x^T [in, T] (T = tokens, the product of the leading dimensions), so
the input is read feature-major and the output C [out, T] is feature-major too. The module
returns C.t() reshaped to [..., out]: a zero-copy view with the token dimension innermost in
memory. Elementwise ops (GELU, ReLU, dropout, bias adds) keep that layout, so when the next
sparse Linear receives it, x^T is already contiguous and no transpose is done at all: a chain
of sparse Linears with pointwise ops between them transposes once on the way in and once where
a layer that needs token-major data (LayerNorm, softmax over features) copies. Splitting the
feature dimension (`.view(b, s, heads, d)`) and merging leading dimensions still work as views;
code that `.view()`s across the feature dimension and the tokens (rare) needs
`contiguous_output=True`, which makes every sparse Linear return a token-major copy.

Kernels are specialised to N (tokens for a Linear; batch and H x W for a Conv2d), so each
sparse module compiles lazily per distinct input shape it sees and keeps the kernels; the
example input fixes the first ones, which `sparsify` compiles up front, in parallel.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..api import compile as _compile_kernel
from ..api import compile_conv2d
from ..config import settings
from ..errors import InputError, OptionsError, SparsertError

BACKENDS = ("auto", "cuda", "cpu", "host")
"""Where sparse layers run: 'cuda' (GPU kernels), 'cpu' (the CPU target: x86 code with the weights
baked in), 'host' (the CUDA kernels' source run on the CPU by the emulator: slow, for checking);
'auto' picks 'cuda' for a model fed CUDA tensors and 'cpu' otherwise."""
CONV_UNAVAILABLE = "convolution support not available"
# torch dtype of a layer's weight -> the kernel's dtype: a sparse layer runs in its weight's dtype
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_CAST = {torch.float32: ".float()", torch.float16: ".half()", torch.bfloat16: ".bfloat16()"}
_DTYPE_REFUSED = "sparsert kernels are float32, float16 or bfloat16"


def _conv_compiler():
    """sparsert.compile_conv2d (kept behind a function so tests can take convolutions away)."""
    return compile_conv2d


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


# --------------------------------------------------------------------------- sparse modules


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


def _aligned(t: torch.Tensor, align: int = 16) -> torch.Tensor:
    """t itself if contiguous and aligned for the kernel's vector loads, else an aligned copy."""
    if t.is_contiguous() and t.data_ptr() % align == 0:
        return t
    out = t.contiguous()
    return out.clone() if out.data_ptr() % align else out  # a misaligned contiguous view


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
        return _conv_compiler()(
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


def conv_unsupported(conv: nn.Conv2d) -> str:
    """Why this Conv2d cannot run through sparsert ('' when it can)."""
    if _conv_compiler() is None:
        return CONV_UNAVAILABLE
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only 'zeros' is supported)"
    if conv.padding == "same":
        odd = [d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(odd):
            return "padding='same' with an even kernel extent pads asymmetrically (not supported)"
    return ""


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str  # "Linear" or "Conv2d"
    shape: tuple[int, ...]  # the weight's shape
    sparsity: float
    compiled: bool
    reason: str = ""  # why it was skipped; "" when compiled
    inputs: tuple[tuple[int, ...], ...] = ()  # input shapes seen by the example forward
    kernels: int = 0  # kernels compiled for those inputs
    compile_seconds: float = 0.0
    dtype: str = ""  # the weight's dtype ("float32", "float16", "bfloat16", ...): the kernels' when compiled

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SparsifyReport:
    backend: str
    min_sparsity: float
    layers: tuple[LayerReport, ...]

    @property
    def compiled(self) -> tuple[LayerReport, ...]:
        return tuple(r for r in self.layers if r.compiled)

    @property
    def skipped(self) -> tuple[LayerReport, ...]:
        return tuple(r for r in self.layers if not r.compiled)

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "min_sparsity": self.min_sparsity,
                "layers": [r.as_dict() for r in self.layers]}

    def __str__(self) -> str:
        rows = [("layer", "type", "weight", "dtype", "sparsity", "status")]
        for r in self.layers:
            status = (f"compiled ({r.kernels} kernel{'s' * (r.kernels != 1)}, {r.compile_seconds:.1f} s)"
                      if r.compiled else f"skipped: {r.reason}")
            rows.append((r.name, r.kind, "x".join(map(str, r.shape)), r.dtype, f"{r.sparsity:.3f}", status))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
        lines.append(f"{len(self.compiled)} of {len(self.layers)} layers compiled "
                     f"(backend {self.backend!r}, min_sparsity {self.min_sparsity:g})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- sparsify


@dataclass
class _Candidate:
    name: str
    module: nn.Module
    refs: list  # (parent module, attribute name) holding it; a shared layer has several
    inputs: list  # distinct input shapes seen during the example forward
    bad_input: str = ""
    reason: str = ""
    sparse: _SparseModule | None = None
    seconds: float = 0.0


def _is_plain(module: nn.Module, base: type) -> bool:
    """An nn.Linear/nn.Conv2d (or a subclass keeping its forward: a custom forward is skipped)."""
    return isinstance(module, base) and type(module).forward is base.forward


def _candidates(model: nn.Module) -> list[_Candidate]:
    found: dict[int, _Candidate] = {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():  # named_children() hides repeats
            if not isinstance(child, (nn.Linear, nn.Conv2d)):
                continue
            cand = found.get(id(child))
            if cand is None:
                name = f"{parent_name}.{attr}" if parent_name else attr
                cand = found[id(child)] = _Candidate(name=name, module=child, refs=[], inputs=[])
            if (parent, attr) not in [(p, a) for p, a in cand.refs]:
                cand.refs.append((parent, attr))
    return list(found.values())


def _run_example(model: nn.Module, example_input, cands: list[_Candidate]) -> None:
    """One forward of the example (no grad, eval mode, then restored) recording layer inputs."""
    def hook_for(cand):
        def hook(_module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                cand.bad_input = f"input is a {type(x).__name__}, not a tensor"
            elif x.dtype != _module.weight.dtype:
                cand.bad_input = (f"input dtype {x.dtype}; the weight is {_module.weight.dtype} "
                                  f"(a sparse layer runs in its weight's dtype)")
            elif tuple(x.shape) not in cand.inputs:
                cand.inputs.append(tuple(x.shape))
        return hook

    handles = [c.module.register_forward_pre_hook(hook_for(c)) for c in cands]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()  # batch-norm statistics must not move, dropout need not run
        with torch.no_grad():
            if isinstance(example_input, Mapping):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag


def _select(cand: _Candidate, min_sparsity: float, exclude, backend: str = "cuda") -> str:
    """Why this layer is skipped, or '' to compile it."""
    m = cand.module
    if any(fnmatch.fnmatchcase(cand.name, pattern) for pattern in exclude):
        return "excluded by name"
    base = nn.Linear if isinstance(m, nn.Linear) else nn.Conv2d
    if not _is_plain(m, base):
        return f"{type(m).__name__} overrides {base.__name__}.forward"
    if m.weight.dtype not in DTYPES:
        return f"weight dtype {m.weight.dtype}; {_DTYPE_REFUSED}"
    if isinstance(m, nn.Conv2d):
        reason = conv_unsupported(m)
        if reason:
            return reason
        if backend == "cpu" and m.groups > 1 and m.groups == m.in_channels:
            # measured (benchmarks/results/cpu-models.md): MobileNetV2's depthwise layers took
            # 3-8.5 ms through the CPU target's im2col gather against 0.45-1.9 ms dense
            return "depthwise convolution: slower through the CPU target than dense (left dense)"
    if cand.bad_input:
        return cand.bad_input
    if not cand.inputs:
        return "not called by the example forward"
    s = _weight_sparsity(m.weight)
    if s < min_sparsity:
        return f"sparsity {s:.3f} < min_sparsity {min_sparsity:g}"
    return ""


def _key(module: _SparseModule, shape: tuple[int, ...]):
    if isinstance(module, SparseLinear):
        return math.prod(shape[:-1])
    n, _, h, w_ = (1, *shape) if len(shape) == 3 else shape
    return n, h, w_


def _progress_callback(progress, total: int):
    """(update(name), close()) for progress=True (tqdm, else one stderr line), False or a callable."""
    if callable(progress):
        done = [0]

        def update(name):
            done[0] += 1
            progress(done[0], total, name)
        return update, lambda: None
    if not progress or total == 0:
        return (lambda name: None), (lambda: None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        done = [0]

        def update(name):
            done[0] += 1
            sys.stderr.write(f"\rsparsert: compiled {done[0]}/{total} kernels ({name})"
                             + ("\n" if done[0] == total else ""))
            sys.stderr.flush()
        return update, lambda: None
    bar = tqdm(total=total, desc="sparsert compile", unit="kernel")

    def update(name):
        bar.set_postfix_str(name, refresh=False)
        bar.update(1)
    return update, bar.close


def _on_cuda(example_input) -> bool:
    """Is the first tensor of the example input on a CUDA device?"""
    values = (example_input.values() if isinstance(example_input, Mapping) else
              example_input if isinstance(example_input, (tuple, list)) else (example_input,))
    return any(isinstance(v, torch.Tensor) and v.is_cuda for v in values)


def sparsify(model: nn.Module, example_input, min_sparsity: float = 0.5, *, backend: str = "auto",
             arch: str | None = None, jobs: int | None = None, progress=True, exclude=(),
             contiguous_output: bool = False, use_cache: bool = True) -> nn.Module:
    """A deep copy of `model` whose nn.Linear / nn.Conv2d layers with weight sparsity >=
    min_sparsity run as sparsert kernels; every other layer is untouched.

    example_input: what `model` is called with (a tensor, a tuple of positional arguments or a
    dict of keyword arguments); one forward of it records each layer's input shape, and those
    kernels are compiled now (in parallel, through the disk cache); other shapes compile lazily.
    backend: "cuda" (kernels on the GPU, zero-copy, on torch's current stream), "cpu" (the CPU
    target: x86 code with the weights baked in, on the CPU's cores), "host" (the CUDA kernels run
    on the CPU by the emulator: slow; to check numbers without a GPU), or "auto" (default: "cuda"
    for a model fed CUDA tensors, else "cpu"). progress: True (a
    bar), False, or a callable(done, total, layer_name). exclude: layer-name globs to leave dense.
    Each layer keeps its dtype: float32, float16 and bfloat16 weights compile kernels of that
    dtype (half: fp32 accumulation, README "Half precision"), which take inputs of that dtype
    only; a model may mix them. The result's `sparsert_report` lists every Linear/Conv2d layer,
    its dtype, compiled or skipped and why.
    """
    if not isinstance(model, nn.Module):
        raise OptionsError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise OptionsError(f"backend={backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        backend = "cuda" if _on_cuda(example_input) else "cpu"
    if (isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float))
            or not 0.0 <= min_sparsity <= 1.0):
        raise OptionsError(f"min_sparsity={min_sparsity!r}: expected a fraction in [0, 1]")
    if isinstance(exclude, str):
        exclude = (exclude,)
    model = copy.deepcopy(model)
    cands = _candidates(model)
    _run_example(model, example_input, cands)

    tasks = []
    for cand in cands:
        cand.reason = _select(cand, min_sparsity, exclude, backend)
        if cand.reason:
            continue
        kind = SparseLinear if isinstance(cand.module, nn.Linear) else SparseConv2d
        extra = {"contiguous_output": contiguous_output} if kind is SparseLinear else {}
        try:
            cand.sparse = kind(cand.module, backend=backend, arch=arch, name=cand.name,
                               use_cache=use_cache, **extra)
        except SparsertError as e:
            cand.reason = str(e)
            continue
        keys = dict.fromkeys(_key(cand.sparse, shape) for shape in cand.inputs)  # [2,3,in] ~ [6,in]
        tasks += [(cand, key) for key in keys]
    _compile_all(tasks, jobs, progress)

    for cand in cands:
        if cand.sparse is not None and not cand.reason:
            for parent, attr in cand.refs:
                setattr(parent, attr, cand.sparse)
    report = SparsifyReport(backend=backend, min_sparsity=float(min_sparsity), layers=tuple(
        LayerReport(name=c.name, kind="Linear" if isinstance(c.module, nn.Linear) else "Conv2d",
                    shape=tuple(c.module.weight.shape), sparsity=_weight_sparsity(c.module.weight),
                    compiled=not c.reason, reason=c.reason, inputs=tuple(c.inputs),
                    kernels=len(c.sparse.kernels) if c.sparse is not None and not c.reason else 0,
                    compile_seconds=round(c.seconds, 3),
                    dtype=str(c.module.weight.dtype).removeprefix("torch."))
        for c in cands))
    model.sparsert_report = report
    return model


def _compile_all(tasks: list, jobs: int | None, progress) -> None:
    """Compile every (candidate, key) in parallel; a failure skips that layer with its message."""
    if not tasks:
        return
    jobs = max(1, min(jobs or settings().jobs, len(tasks)))
    inner = jobs if len(tasks) == 1 else 1  # one big layer: parallel slabs instead
    update, close = _progress_callback(progress, len(tasks))

    def build(cand, key):
        t0 = time.perf_counter()
        cand.sparse.kernel_for(key, jobs=inner)
        return time.perf_counter() - t0

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build, c, k): c for c, k in tasks}
            for fut in as_completed(futures):
                cand = futures[fut]
                try:
                    cand.seconds += fut.result()
                except SparsertError as e:
                    cand.reason = f"compile failed: {str(e).splitlines()[0]}"
                update(cand.name)
    finally:
        close()


__all__ = ["sparsify", "SparseLinear", "SparseConv2d", "SparsifyReport", "LayerReport",
           "BACKENDS", "CONV_UNAVAILABLE", "conv_unsupported"]
