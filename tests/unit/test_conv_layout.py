"""Conv weight layouts: OIHW, im2col in PyTorch's column order, and tap-major im2col (DLMC's 3x3
ResNet-50 patterns order their columns (ky, kx, c_in))."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sparsert.errors import WeightError
from sparsert.frontend.conv import LAYOUTS, load_conv_weight, tap_major_to_channel_major


def test_the_three_layouts_give_the_same_filter():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 4, 3, 3)) * (rng.random((6, 4, 3, 3)) < 0.5)).astype(np.float32)
    want = w.reshape(6, -1)
    forms = {"oihw": w, "im2col": w.reshape(6, -1), "im2col_tap_major": w.transpose(0, 2, 3, 1).reshape(6, -1)}
    assert set(forms) == set(LAYOUTS)
    for layout, raw in forms.items():
        for given in (raw, sp.csr_matrix(raw.reshape(6, -1)) if raw.ndim == 2 else raw):
            wt, c_in, kh, kw = load_conv_weight(given, layout=layout, kernel_size=None if layout == "oihw" else 3)
            assert (c_in, kh, kw) == (4, 3, 3)
            assert np.array_equal(wt.matrix.toarray(), want), layout


def test_tap_major_permutation_is_a_bijection_and_not_the_identity():
    a = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)
    b = tap_major_to_channel_major(a, c_in=3, taps=4)
    assert sorted(b[0]) == sorted(a[0]) and not np.array_equal(a, b)
    assert b[0, 1 * 4 + 2] == a[0, 2 * 3 + 1]  # channel 1, tap 2


def test_tap_major_needs_a_2d_weight():
    with pytest.raises(WeightError, match="im2col_tap_major"):
        load_conv_weight(np.ones((2, 3, 3, 3), np.float32), layout="im2col_tap_major", kernel_size=3)


def test_dlmc_3x3_patterns_are_tap_major(shared):
    """The evidence in the data (shared/dlmc/ABOUT.md): read tap-major, the nonzeros per tap show a
    trained 3x3 filter's centre > edges > corners; read channel-major, every tap looks alike."""
    from sparsert.frontend.weights import load_weight

    path = shared / "dlmc" / "rn50" / "magnitude_pruning" / "0.9" / "bottleneck_2_block_group1_1_1.smtx"
    a = load_weight(path).matrix
    c_in = a.shape[1] // 9
    per_tap_major = np.bincount(a.indices // c_in, minlength=9)  # column = tap * c_in + c
    per_tap_channel = np.bincount(a.indices % 9, minlength=9)  # column = c * 9 + tap
    centre, corners, edges = per_tap_major[4], per_tap_major[[0, 2, 6, 8]], per_tap_major[[1, 3, 5, 7]]
    assert centre > edges.max() and edges.min() > corners.max()
    assert per_tap_channel.max() - per_tap_channel.min() < 0.25 * (centre - corners.min())
    wt, c, kh, kw = load_conv_weight(path, layout="im2col_tap_major", kernel_size=3)
    oihw = wt.matrix.toarray().reshape(a.shape[0], c, 3, 3)
    assert np.count_nonzero(oihw[:, :, 1, 1]) == centre  # the centre tap is the OIHW centre
