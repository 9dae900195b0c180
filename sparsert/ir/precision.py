"""Half precision, bit-exactly: round-to-nearest-even conversions between float32 and the
16-bit formats (IEEE binary16 'float16', bfloat16), and the weights of packed half arithmetic.

Every conversion is deterministic and exact (no double rounding): float32 -> float16 is numpy's
(RNE, subnormals kept, overflow to inf); float32 -> bfloat16 is the integer RNE on the top 16
bits. Packed-half kernels (accumulate='float16'/'bfloat16') bake each weight as this rounded
value; the Schedule keeps its float32 bits (exact: every half value is a float32), so the plan,
`to_csr()` and the references all see the weights the kernel multiplies by.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from ..errors import WeightError

HALF_DTYPES = ("float16", "bfloat16")
FLOAT16_MAX = 65504.0


def half_bits(x, dtype: str) -> np.ndarray:
    """uint16 bits of float32 `x` rounded to `dtype` (nearest even; NaN stays NaN, overflow -> inf)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).view(np.uint16)
    if dtype != "bfloat16":
        raise ValueError(f"dtype={dtype!r}: expected float16 or bfloat16")
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # keep NaN a (quiet) NaN: the rounding carry could make it inf
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def from_half_bits(bits, dtype: str) -> np.ndarray:
    """float32 values of uint16 `bits` of `dtype` (exact)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    if dtype != "bfloat16":
        raise ValueError(f"dtype={dtype!r}: expected float16 or bfloat16")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def round_to(x, dtype: str) -> np.ndarray:
    """float32 `x` rounded (RNE) to `dtype`, as float32; 'float32' returns x unchanged."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    return from_half_bits(half_bits(x, dtype), dtype).reshape(x.shape)


def pack2(bits: np.ndarray, dtype: str) -> np.ndarray:
    """uint32 words holding the half of each float32 weight (bits, uint32) twice: the packed
    HFMA2 immediate (the same value in both 16-bit lanes)."""
    h = half_bits(np.asarray(bits, dtype=np.uint32).view(np.float32), dtype).astype(np.uint32)
    return (h << 16) | h


def round_weights(matrix: sp.csr_matrix, accumulate: str, *, what: str = "weight") -> sp.csr_matrix:
    """The weights a packed-half kernel multiplies by: each rounded (RNE) to `accumulate`.

    Refuses (WeightError naming the first (row, col)) a weight that overflows to inf; warns, naming
    the first (row, col) and the count, about weights that round to zero (their products vanish).
    """
    csr = matrix.tocsr()
    data = np.asarray(csr.data, dtype=np.float32)
    rounded = round_to(data, accumulate)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    over = np.flatnonzero(np.isinf(rounded) & np.isfinite(data))
    if over.size:
        i = over[0]
        limit = FLOAT16_MAX if accumulate == "float16" else float(np.finfo(np.float32).max)
        raise WeightError(f"{what}: value {float(data[i])!r} at (row, col) = ({rows[i]}, {csr.indices[i]}) "
                          f"overflows {accumulate} (largest finite {limit:g}); scale the layer or use "
                          f"accumulate='float32'")
    flushed = np.flatnonzero((rounded == 0) & (data != 0))
    if flushed.size:
        i = flushed[0]
        warnings.warn(f"{what}: {flushed.size} nonzero(s) round to zero in {accumulate}, first "
                      f"{float(data[i])!r} at (row, col) = ({rows[i]}, {csr.indices[i]}); they drop out "
                      f"of the product (accumulate='float32' keeps them)", RuntimeWarning, stacklevel=3)
    out = sp.csr_matrix((rounded, csr.indices.copy(), csr.indptr.copy()), shape=csr.shape)
    out.eliminate_zeros()  # a weight rounded to zero is no FMA at all
    return out


def round_bias(bias: np.ndarray, dtype: str) -> np.ndarray:
    """The bias in the activations' dtype (RNE), as float32; WeightError naming the index on overflow."""
    if dtype == "float32":
        return bias
    rounded = round_to(bias, dtype)
    bad = np.flatnonzero(np.isinf(rounded) & np.isfinite(bias))
    if bad.size:
        raise WeightError(f"bias: value {float(bias[bad[0]])!r} at index {bad[0]} overflows {dtype}")
    return rounded
