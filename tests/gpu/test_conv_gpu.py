"""Sparse conv2d kernels on the GPU against torch.nn.functional.conv2d (cuDNN, float64).
(Moved from tests/test_conv.py; the host numerics stay in tests/numerics/test_conv.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from sparsert.api import compile_conv2d
from sparsert.check import relative_error

RTOL = 1e-5  # float32 sums of at most a few thousand products; the kernel must be this close


def _filter(c_out, c_in_g, kh, kw, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, c_in_g, kh, kw)).astype(np.float32)
    return w * (rng.random(w.shape) < density)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [
    (64, 64, 56, 56, 3, 1, 1, 1), (32, 48, 15, 13, 3, 2, 1, 2), (16, 32, 14, 14, 1, 1, 0, 8),
    (16, 32, 14, 14, 1, 2, 0, 1), (8, 8, 9, 9, 7, 2, 3, 3),
])
@pytest.mark.torch
def test_gpu_matches_torch_conv2d(case):
    import torch
    import cupy

    c_in, c_out, h, w, k, s, p, nb = case
    wt = _filter(c_out, c_in, k, k, density=0.1, seed=7)
    bias = np.linspace(-1, 1, c_out).astype(np.float32)
    conv = compile_conv2d(wt, (h, w), stride=s, padding=p, batch=nb, bias=bias, relu=True, residual=True)
    x = torch.randn(conv.input_shape, device="cuda")
    r = torch.randn(conv.output_shape, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref = torch.relu(torch.nn.functional.conv2d(
            x.double(), torch.from_numpy(wt).cuda().double(), torch.from_numpy(bias).cuda().double(),
            stride=s, padding=p) + r.double())
        y = conv(x, residual=r)
        assert isinstance(y, torch.Tensor) and tuple(y.shape) == conv.output_shape
        assert relative_error(y.cpu().numpy(), ref.cpu().numpy()) < RTOL
        yc = conv(cupy.asarray(x), residual=cupy.asarray(r))  # CuPy in, CuPy out: same numbers
        assert np.array_equal(cupy.asnumpy(yc), y.cpu().numpy())
        host = conv.run_host(x.cpu().numpy(), residual=r.cpu().numpy())
        assert relative_error(host, ref.cpu().numpy()) < RTOL
