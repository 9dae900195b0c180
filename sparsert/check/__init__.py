"""Checking numbers: float64 references, the one error measure every check uses, and its
tolerance per precision mode."""

from .error import DEFAULT_RTOL, error_bound, relative_error, tolerance
from .reference import conv2d_reference, spmm_reference

__all__ = ["DEFAULT_RTOL", "conv2d_reference", "error_bound", "relative_error", "spmm_reference", "tolerance"]
