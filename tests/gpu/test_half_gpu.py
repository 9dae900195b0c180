"""Half precision on a GPU (issue 15), against cuBLAS in the same dtype (torch.matmul of the
dense, rounded weight): both modes, float16 and bfloat16, within the bound of the README."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert

pytestmark = [pytest.mark.gpu, pytest.mark.torch]


@pytest.mark.parametrize("dtype, accumulate", [("float16", None), ("float16", "float16"),
                                               ("bfloat16", None), ("bfloat16", "bfloat16")])
def test_half_kernel_matches_cublas(dtype, accumulate):
    import torch

    rng = np.random.default_rng(0)
    a = sp.random(256, 512, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    a.data -= 0.5
    kernel = sparsert.compile(a, n=1024, dtype=dtype, accumulate=accumulate)
    tdt = getattr(torch, dtype)
    B = torch.randn(512, 1024, device="cuda").to(tdt)
    C = kernel(B)
    assert C.dtype == tdt and C.shape == (256, 1024)
    A = torch.tensor(kernel.schedule.to_csr().toarray(), device="cuda")
    exact = (A.double() @ B.double())
    cublas = (A.to(tdt) @ B).double()  # cuBLAS in the same dtype
    S = A.abs().double() @ B.abs().double()
    u = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    nrow = int(np.diff(kernel.schedule.to_csr().indptr).max()) + kernel.schedule.groups
    g = nrow * (u if accumulate else 2.0**-24)
    bound = (g / (1 - g) + u * (1 + g)) * S + 2.0**-24
    assert bool(((C.double() - exact).abs() <= bound).all())
    # and no further from the exact result than cuBLAS's own error allows
    assert float((C.double() - cublas).abs().max()) <= float(2 * bound.max())
