"""Conv2d weights and geometry: the pruned filter as its im2col matrix A, block-diagonal over groups.

A is the filter as [C_out, C_in*kh*kw] with column k = c*kh*kw + ky*kw + kx (PyTorch's im2col
order); grouped filters become block-diagonal over the taps of all C_in channels, so one kernel
serves every group. B, the input image, is never materialised: every backend reads it as a
virtual im2col (ir.lower.Im2col). A 1x1, stride 1, unpadded convolution needs no im2col at all:
it is a plain batched SpMM over the image.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from ..errors import OptionsError, WeightError
from ..ir.schedule import ConvGeometry
from .weights import Weight, check_finite, load_array, load_weight

LAYOUTS = ("oihw", "im2col", "im2col_tap_major")
"""Filter layouts: OIHW [C_out, C_in/G, kh, kw]; its im2col matrix with columns in PyTorch's order,
k = c*kh*kw + ky*kw + kx; or tap-major, k = (ky*kw + kx)*C_in/G + c (DLMC's 3x3 patterns)."""


def _int(value, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionsError(f"{name}={value!r}: expected an integer >= {low}")
    return int(value)


def _pair(value, name: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= low."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise OptionsError(f"{name}={value!r}: expected an integer or a (height, width) pair")
        return _int(value[0], name, low), _int(value[1], name, low)
    v = _int(value, name, low)
    return v, v


@dataclass(frozen=True)
class Conv2dSpec:
    """Everything about the convolution except the weight values."""

    c_in: int
    c_out: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("c_in", "c_out", "h", "w", "kh", "kw", "groups", "batch"):
            _int(getattr(self, name), name, 1)
        if self.c_in % self.groups or self.c_out % self.groups:
            raise OptionsError(f"groups={self.groups}: must divide both C_in={self.c_in} and "
                               f"C_out={self.c_out}")
        self.geometry()  # validates stride/padding/dilation and that the output is non-empty

    def geometry(self) -> ConvGeometry:
        return ConvGeometry(c_in=self.c_in, h=self.h, w=self.w, kh=self.kh, kw=self.kw,
                            stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def oh(self) -> int:
        return self.geometry().oh

    @property
    def ow(self) -> int:
        return self.geometry().ow

    @property
    def k(self) -> int:
        """Rows of the (full, all-groups) im2col matrix: C_in * kh * kw."""
        return self.c_in * self.kh * self.kw

    @property
    def contiguous(self) -> bool:
        """1x1, stride 1, no padding: B is the image itself ([C_in, H*W] row-major), no im2col."""
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.c_in, self.h, self.w

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.c_out, self.oh, self.ow

    def describe(self) -> str:
        return (f"C_in={self.c_in} C_out={self.c_out} input {self.h}x{self.w} -> {self.oh}x{self.ow}, "
                f"kernel {self.kh}x{self.kw}, stride {self.stride}, padding {self.padding}, "
                f"dilation {self.dilation}, groups {self.groups}, batch {self.batch}")

    def as_dict(self) -> dict:
        return asdict(self) | {"oh": self.oh, "ow": self.ow}

    def to_oihw(self, matrix) -> np.ndarray:
        """The filter as dense float32 [C_out, C_in/groups, kh, kw] from its im2col matrix."""
        return im2col_to_oihw(matrix, self)


# --------------------------------------------------------------------------- weights


def _expand_groups(a: scipy.sparse.csr_matrix, groups: int, c_out: int) -> scipy.sparse.csr_matrix:
    """[C_out, C_in/g*kh*kw] per-group filter -> block-diagonal [C_out, C_in*kh*kw]."""
    if groups == 1:
        return a
    kg = a.shape[1]
    rows = np.repeat(np.arange(c_out, dtype=np.int64), np.diff(a.indptr))
    indices = a.indices.astype(np.int64) + (rows // (c_out // groups)) * kg  # order within rows kept
    out = scipy.sparse.csr_matrix((a.data, indices, a.indptr), shape=(c_out, kg * groups))
    if max(out.nnz, out.shape[1]) < 2**31:
        out.indices = out.indices.astype(np.int32)
        out.indptr = out.indptr.astype(np.int32)
    out.has_canonical_format = True
    return out


def load_conv_weight(weight, *, layout: str | None = None, kernel_size=None, groups: int = 1,
                     tensor: str | None = None, seed: int = 0,
                     values: str = "normal") -> tuple[Weight, int, int, int]:
    """(im2col Weight [C_out, C_in*kh*kw] block-diagonal over groups, C_in, kh, kw).

    weight: a 4-D OIHW filter [C_out, C_in/groups, kh, kw] (any file format or array), or its
    im2col matrix [C_out, C_in/groups*kh*kw] (2-D; needs kernel_size). layout says which; None
    infers it from the rank.
    """
    groups = _int(groups, "groups", 1)
    if layout is not None and layout not in LAYOUTS:
        raise OptionsError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
    if isinstance(weight, Weight):
        raw, src, name = weight.matrix, weight.source, weight.name
    else:
        raw = load_array(weight, tensor=tensor, seed=seed, values=values)
        if isinstance(weight, (str, os.PathLike)):
            src, name = str(weight), Path(os.fspath(weight)).stem
        else:
            src, name = ("<scipy.sparse>" if scipy.sparse.issparse(weight) else "<numpy array>"), "conv"
    layout = layout or {4: "oihw", 2: "im2col"}.get(raw.ndim)
    if layout is None:
        raise WeightError(f"{src}: a convolution weight must be 4-D OIHW [C_out, C_in/groups, kh, kw] "
                          f"or a 2-D im2col matrix [C_out, C_in/groups*kh*kw]; got shape {raw.shape}")
    if layout == "oihw":
        if raw.ndim != 4:
            raise WeightError(f"{src}: layout 'oihw' needs a 4-D [C_out, C_in/groups, kh, kw] weight, "
                              f"got shape {raw.shape}")
        if kernel_size is not None and _pair(kernel_size, "kernel_size", 1) != raw.shape[2:]:
            raise OptionsError(f"kernel_size={kernel_size!r}: the OIHW weight has {raw.shape[2]}x"
                               f"{raw.shape[3]} taps")
        check_finite(raw, what=src)  # before the reshape: name the OIHW index of a NaN
        c_out, c_in_g, kh, kw = (int(d) for d in raw.shape)
        raw = raw.reshape(c_out, c_in_g * kh * kw)
    else:
        if raw.ndim != 2:
            raise WeightError(f"{src}: layout {layout!r} needs a 2-D [C_out, C_in/groups*kh*kw] weight, "
                              f"got shape {raw.shape}")
        if kernel_size is None:
            raise OptionsError("kernel_size: required for an im2col weight [C_out, C_in*kh*kw] "
                               "(CLI: --kernel-size KH [KW]); e.g. 3 for a 3x3 convolution")
        kh, kw = _pair(kernel_size, "kernel_size", 1)
        c_out, kg = (int(d) for d in raw.shape)
        if kg % (kh * kw):
            raise WeightError(f"{src}: im2col weight has K={kg} columns, not a multiple of "
                              f"kh*kw={kh * kw} (kernel_size {kh}x{kw})")
        c_in_g = kg // (kh * kw)
        if layout == "im2col_tap_major":
            raw = tap_major_to_channel_major(raw, c_in_g, kh * kw)
    if 0 in raw.shape:
        raise WeightError(f"{src}: weight has an empty dimension (shape {raw.shape})")
    if c_out % groups:
        raise OptionsError(f"groups={groups}: does not divide C_out={c_out}")
    w = load_weight(raw)  # canonical float32 CSR, finiteness and float32 overflow checked
    matrix = _expand_groups(w.matrix, groups, c_out)
    return Weight(matrix=matrix, name=_sanitise(name), source=src), c_in_g * groups, kh, kw


def tap_major_to_channel_major(a, c_in: int, taps: int):
    """Columns (tap, c) -> (c, tap): k = t*c_in + c becomes c*taps + t (dense or sparse, 2-D)."""
    k = np.arange(c_in * taps)
    new = (k % c_in) * taps + k // c_in  # where old column k goes
    if scipy.sparse.issparse(a):
        coo = scipy.sparse.coo_matrix(a)
        return scipy.sparse.csr_matrix((coo.data, (coo.row, new[coo.col])), shape=coo.shape)
    out = np.empty_like(np.asarray(a))
    out[:, new] = a
    return out


def _sanitise(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text) or "conv"


def im2col_to_oihw(matrix, spec: Conv2dSpec) -> np.ndarray:
    """Dense float32 OIHW filter [C_out, C_in/groups, kh, kw] from the block-diagonal im2col A."""
    a = matrix.toarray() if scipy.sparse.issparse(matrix) else np.asarray(matrix)
    cg, og, taps = spec.c_in // spec.groups, spec.c_out // spec.groups, spec.kh * spec.kw
    blocks = [a[g * og:(g + 1) * og, g * cg * taps:(g + 1) * cg * taps] for g in range(spec.groups)]
    return np.concatenate(blocks, axis=0).reshape(spec.c_out, cg, spec.kh, spec.kw).astype(np.float32)
