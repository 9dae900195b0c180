"""Which layers of a model qualify for sparsert, and why the others do not: the walk that finds
every nn.Linear / nn.Conv2d (a shared layer once, with every place that holds it), the checks on
one layer (`_select`: excluded by name, custom forward, dtype, convolution support, the inputs the
example forward recorded, sparsity) and `conv_unsupported`, the convolution-feature check that
SparseConv2d also applies."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from ...api import compile_conv2d
from .tensors import _DTYPE_REFUSED, DTYPES, _weight_sparsity

if TYPE_CHECKING:
    from .modules import _SparseModule

CONV_UNAVAILABLE = "convolution support not available"


def _conv_compiler():
    """sparsert.compile_conv2d (kept behind a function so tests can take convolutions away)."""
    return compile_conv2d


def _conv_compiler_in_use():
    """What the package's `_conv_compiler` (sparsert.integrations.torch._conv_compiler) returns,
    looked up at each call: tests replace it there to take convolutions away, and this check and
    SparseConv2d must see that."""
    return getattr(sys.modules.get(__package__), "_conv_compiler", _conv_compiler)()


def conv_unsupported(conv: nn.Conv2d) -> str:
    """Why this Conv2d cannot run through sparsert ('' when it can)."""
    if _conv_compiler_in_use() is None:
        return CONV_UNAVAILABLE
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only 'zeros' is supported)"
    if conv.padding == "same":
        odd = [d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(odd):
            return "padding='same' with an even kernel extent pads asymmetrically (not supported)"
    return ""


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
