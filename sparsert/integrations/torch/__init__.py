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

The package, one job a module: tensors.py (backends, dtypes, host conversions, alignment),
select.py (which layers qualify and why), modules.py (SparseLinear, SparseConv2d), report.py
(the report) and sparsify.py (the entry point). This file re-exports their names, private ones
included, so `sparsert.integrations.torch.X` keeps working for every X the single module had.
"""

# ruff: noqa: F401 - this file only re-exports the submodules' names

from __future__ import annotations

from .modules import SparseConv2d, SparseLinear, _int_padding, _SparseModule
from .report import LayerReport, SparsifyReport
from .select import (
    CONV_UNAVAILABLE,
    _Candidate,
    _candidates,
    _conv_compiler,
    _is_plain,
    _select,
    conv_unsupported,
)
from .sparsify import (
    _compile_all,
    _key,
    _on_cuda,
    _progress_callback,
    _run_example,
    sparsify,
)
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

__all__ = ["sparsify", "SparseLinear", "SparseConv2d", "SparsifyReport", "LayerReport",
           "BACKENDS", "CONV_UNAVAILABLE", "conv_unsupported"]
