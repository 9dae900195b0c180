"""float64 references: what a kernel must reproduce (within float32 rounding)."""

from __future__ import annotations

import numpy as np


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def spmm_reference(a, b, bias=None, *, residual=None, relu: bool = False) -> np.ndarray:
    """float64 epilogue(A @ B): + bias per row, + residual, then ReLU."""
    out = a.astype(np.float64) @ np.asarray(b, dtype=np.float64)
    out = np.asarray(out)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[:, None]
    if residual is not None:
        out = out + np.asarray(residual, dtype=np.float64)
    return np.maximum(out, 0.0) if relu else out



def conv2d_reference(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                     residual=None, relu=False) -> np.ndarray:
    """float64 NCHW Conv2d (cross-correlation, as torch.nn.functional.conv2d) + bias + residual,
    then ReLU. Computed tap by tap over the zero-padded input, independently of any im2col order."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    (sy, sx), (py, px), (dy, dx) = _pair(stride), _pair(padding), _pair(dilation)
    nb, _, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    oh = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    ow = (wd + 2 * px - dx * (kw - 1) - 1) // sx + 1
    xp = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    y = np.zeros((nb, c_out, oh, ow))
    og = c_out // groups
    for ky in range(kh):
        for kx in range(kw):
            tap = xp[:, :, ky * dy: ky * dy + sy * (oh - 1) + 1: sy, kx * dx: kx * dx + sx * (ow - 1) + 1: sx]
            for g in range(groups):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "oc,nchw->nohw", w[g * og:(g + 1) * og, :, ky, kx], tap[:, g * cg:(g + 1) * cg])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
    if residual is not None:
        y += np.asarray(residual, dtype=np.float64)
    return np.maximum(y, 0.0) if relu else y
