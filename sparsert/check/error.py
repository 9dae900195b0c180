"""The one error measure (normwise relative error against a float64 reference) and what it may be
for a correct kernel in each precision mode."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_RTOL = 1e-4
"""Accepted max relative error of a float32 kernel against float64 (CLI check, tuner)."""

UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
"""u of each format (round to nearest: half the gap above 1)."""
HALF_TINY = {"float16": 2.0**-25, "bfloat16": 2.0**-134}
"""Half the smallest subnormal: the absolute error of one rounding near zero."""
FLUSH_TINY = 2.0**-126
"""The absolute error of one operation that flushes denormals (vdpbf16ps: DAZ and FTZ)."""


def relative_error(got, ref) -> float:
    """max |got - ref| / max |ref| (normwise: robust to outputs near zero). A result of the wrong
    shape or with any NaN/Inf is infinitely wrong (inf), never silently compared."""
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return math.inf
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(got - ref)))
    return diff / scale if scale > 0 else diff


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u), the bound on |prod of n factors (1 + d), |d| <= u| - 1.
    Where n u >= 1 gamma_n is undefined and that product's own bound, (1 + u)^n - 1, is used: it
    holds for every n (no division is involved), and is below gamma_n wherever both exist."""
    if n * u < 1:
        return n * u / (1 - n * u)
    return math.expm1(n * math.log1p(u))


def arithmetic(accumulate: str | None, target: str = "cuda") -> tuple[str, float]:
    """(the format the sums are kept in, the absolute error per term from flushing near zero) of a
    mode on a target. GPUs' packed half keeps them in the half format (one HFMA2 per term); the
    CPU's packed bfloat16 is vdpbf16ps: float32 sums of exact products of the bf16-rounded
    weights, two roundings per instruction, denormals flushed (DAZ, FTZ)."""
    acc = accumulate or "float32"
    if target == "cpu" and acc != "float32":
        return "float32", 2 * FLUSH_TINY
    return acc, HALF_TINY.get(acc, 0.0)


def error_bound(dtype: str = "float32", accumulate: str | None = None, terms: int = 0, *,
                target: str = "cuda") -> tuple[float, float]:
    """(tol, tiny) with |C - C_exact| <= tol * S + tiny for every element of a kernel's output.

    The README's bound ("Half precision"; tests/helpers/half_model.py error_bound, checked
    elementwise by tests/numerics/test_half_numerics.py) with S = sum_k |a_mk| |b_kn| + |bias_m| +
    |R_mn|: C_exact from the weights the kernel multiplies by (rounded to `accumulate` when packed)
    and the operands' values in `dtype`. `terms`: the largest number of nonzeros in a row plus the
    thread groups splitting K (their partial sums are added too). Per element, with g = gamma_terms
    over the accumulation format, g2 = gamma_2 over float32 (the epilogue's bias and residual adds):
    the accumulation errs by g S_AB (+ terms x half a subnormal when packed), the epilogue adds
    g2 (S + g S), and the half store rounds once: u_out (S + that). Gathering every term over one S
    (S_AB <= S) gives tol = p + u_out (1 + p), p = g + g2 (1 + g), exactly the elementwise bound
    where there is no bias or residual and above it otherwise. A float32 store rounds nothing
    (u_out 0). `target`: where the mode runs (arithmetic(): the CPU's packed bfloat16 sums in
    float32, with a flush error per operation)."""
    if dtype not in UNIT_ROUNDOFF or (accumulate or "float32") not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype={dtype!r}, accumulate={accumulate!r}: expected one of {tuple(UNIT_ROUNDOFF)}")
    acc, flush = arithmetic(accumulate, target)
    g = gamma(terms, UNIT_ROUNDOFF[acc])
    g2 = gamma(2, UNIT_ROUNDOFF["float32"])
    u_out = 0.0 if dtype == "float32" else UNIT_ROUNDOFF[dtype]
    p = g + g2 * (1 + g)
    tol = p + u_out * (1 + p)
    tiny_acc = terms * flush  # packed: each operation may flush near zero
    tiny = HALF_TINY.get(dtype, 0.0) + (1 + g2) * (1 + u_out) * tiny_acc
    return tol, tiny


def tolerance(dtype: str = "float32", accumulate: str | None = None, terms: int = 0, *,
              s_max: float, c_max: float, target: str = "cuda") -> float:
    """The largest relative_error a correct kernel of this mode can show on given inputs: float32
    kernels DEFAULT_RTOL (a fixed acceptance, as `sparsert check`); half precision from
    error_bound, in the normwise measure: max |C - C_exact| <= tol max S + tiny, over max |C_exact|
    (`s_max` = max S, `c_max` = max |C_exact|; relative_error divides by nothing when c_max is 0).

    Float16 and bfloat16 with float32 accumulation come out near one rounding of the dtype (2^-11,
    2^-8 times max S / max |C|); packed half grows with the nonzeros per row (`terms` x u of the
    format): where that nears or passes 1 (bfloat16 beyond ~100 nonzeros a row) only gross errors
    (NaN, inf, results far off) can be told from rounding."""
    if dtype == "float32" and accumulate in (None, "float32"):
        return DEFAULT_RTOL
    tol, tiny = error_bound(dtype, accumulate, terms, target=target)
    return (tol * s_max + tiny) / (c_max if c_max > 0 else 1.0)
