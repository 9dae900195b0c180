"""Checking numbers: float64 references and the one error measure every check uses."""

from .error import DEFAULT_RTOL, relative_error
from .reference import conv2d_reference, spmm_reference

__all__ = ["DEFAULT_RTOL", "relative_error", "conv2d_reference", "spmm_reference"]
