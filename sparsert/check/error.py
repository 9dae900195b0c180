"""The one error measure: normwise relative error against a float64 reference."""

from __future__ import annotations

import math

import numpy as np

DEFAULT_RTOL = 1e-4
"""Accepted max relative error of a float32 kernel against float64 (CLI check, tuner)."""


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
