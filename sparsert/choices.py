"""Every choice list and architecture pattern, defined once: options, the CLI, the loaders and
the backends all read them from here, so they cannot disagree."""

from __future__ import annotations

import re

from .errors import OptionsError

TARGETS = ("cuda", "hip", "cpu")
"""What a kernel is compiled for. A target has one or more backends (backends/)."""
CPU_ISAS = ("avx512", "avx2")
"""The CPU target's `arch`: the x86 vector ISA its code is emitted for (best first)."""
CUDA_BACKENDS = ("ptx", "nvrtc")
"""How a CUDA kernel is built: PTX emitter + ptxas + nvlink, or CUDA C++ through NVRTC."""
BACKEND_CHOICES = ("auto", *CUDA_BACKENDS)
"""SPARSERT_BACKEND / backend=: 'auto' takes 'ptx' where ptxas and nvlink are installed."""
VECTOR_WIDTHS = (1, 2, 4)
"""Consecutive columns of N per GPU thread, loaded as one vector."""
CPU_VECTORS = (1, 2, 3, 4)
"""The CPU target's vec: SIMD vectors of N per register block (8 or 16 columns each)."""
CPU_BROADCASTS = ("embedded", "register")
"""AVX-512 only: how a weight reaches its FMAs: 'embedded' (a memory operand {1to16} per FMA) or
'register' (one vbroadcastss, then register FMAs; one accumulator register fewer)."""
VALUE_MODES = ("normal", "ones")
"""Values drawn for pattern-only weight files (.smtx, pattern .mtx)."""
MAX_PREFETCH = 64
"""Rows of B in flight per thread, at most."""
DTYPES = ("float32", "float16", "bfloat16")
"""Element type of B, C, bias and residual (the activations)."""
ACCUMULATE = ("float32", "float16", "bfloat16")
"""Arithmetic: 'float32' (FFMA, fp32 accumulators; the default) or packed half ('float16' /
'bfloat16': HFMA2, two columns per instruction, weights rounded to that precision); packed half
only for activations of the same dtype."""

# A real (SASS) CUDA architecture: sm_80, sm_86, sm_90, sm_90a, sm_100a, sm_120f ...
CUDA_ARCH = re.compile(r"^sm_[1-9][0-9]{1,2}[af]?$")
# An AMD GPU target, optionally with features: gfx90a, gfx942, gfx1100, gfx90a:xnack-
HIP_ARCH = re.compile(r"^gfx[0-9]{2,4}[0-9a-f]?(?::[a-z0-9+-]+)*$")
CPU_ARCH = re.compile(r"^(%s)$" % "|".join(CPU_ISAS))
_ARCH = {"cuda": (CUDA_ARCH, "sm_80, sm_90, sm_90a"), "hip": (HIP_ARCH, "gfx90a, gfx942, gfx90a:xnack-"),
         "cpu": (CPU_ARCH, ", ".join(CPU_ISAS))}


def check_target(target) -> str:
    if target not in TARGETS:
        raise OptionsError(f"target={target!r}: expected one of {', '.join(TARGETS)}")
    return target


def check_dtype(dtype, accumulate=None) -> tuple[str, str]:
    """(dtype, accumulate) with the default filled in (accumulate None -> 'float32'), or an
    OptionsError naming the argument."""
    if dtype not in DTYPES:
        raise OptionsError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if accumulate is None:
        return dtype, "float32"
    if accumulate not in ACCUMULATE:
        raise OptionsError(f"accumulate={accumulate!r}: expected one of {', '.join(ACCUMULATE)}")
    if accumulate != "float32" and accumulate != dtype:
        raise OptionsError(f"accumulate={accumulate!r}: packed half arithmetic needs dtype={accumulate!r} "
                           f"activations (got dtype={dtype!r}); use accumulate='float32'")
    return dtype, accumulate


def check_arch(target: str, arch) -> str:
    """`arch` if it names an architecture of `target`, else OptionsError naming arch=."""
    pattern, examples = _ARCH[check_target(target)]
    if not isinstance(arch, str) or not pattern.match(arch):
        raise OptionsError(f"arch={arch!r}: not a {target} architecture (e.g. {examples})")
    return arch
