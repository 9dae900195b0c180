"""On a GPU: results vs CuPy dense matmul, for CuPy and torch inputs, streams and out=.

Every test here is marked `gpu` and skips cleanly without one (see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.errors import InputError

pytestmark = pytest.mark.gpu

M, K = 96, 80


@pytest.fixture(scope="module")
def weight():
    a = sp.random(M, K, density=0.1, random_state=11, format="csr", dtype=np.float32)
    a.data[:] = np.random.default_rng(0).standard_normal(a.nnz).astype(np.float32)
    return sparsert.load_weight(a)


def _reference(cp, w, b, bias=None, relu=False):
    dense = cp.asarray(w.matrix.toarray())
    c = dense.astype(cp.float64) @ b.astype(cp.float64)
    if bias is not None:
        c += cp.asarray(bias, dtype=cp.float64)[:, None]
    return cp.maximum(c, 0) if relu else c


def _rel(cp, got, ref):
    return float(cp.abs(got - ref).max() / max(float(cp.abs(ref).max()), 1e-30))


@pytest.mark.parametrize("n", [1, 7, 64, 131, 3136])
def test_cupy_matches_dense_matmul(weight, n):
    import cupy as cp

    bias = np.linspace(-0.5, 0.5, M).astype(np.float32)
    kernel = sparsert.compile(weight, n=n, bias=bias, relu=True)
    b = cp.asarray(np.random.default_rng(n).standard_normal((K, n)).astype(np.float32))
    c = kernel(b)
    assert isinstance(c, cp.ndarray) and c.shape == (M, n) and c.dtype == cp.float32
    assert _rel(cp, c, _reference(cp, weight, b, bias, relu=True)) < 1e-5


def test_out_and_non_default_stream(weight):
    import cupy as cp

    kernel = sparsert.compile(weight, n=256)
    b = cp.asarray(np.random.default_rng(1).standard_normal((K, 256)).astype(np.float32))
    out = cp.full((M, 256), cp.nan, dtype=cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        got = kernel(b, out=out)
    stream.synchronize()
    assert got is out
    assert _rel(cp, out, _reference(cp, weight, b)) < 1e-5


def test_slabbed_kernel_equals_one_kernel_bit_for_bit_on_a_side_stream(weight):
    """Slabs (several launches on forked streams) compute exactly what one launch computes."""
    import cupy as cp

    opts = dict(n=512, rows_per_block=8, groups=2)
    one = sparsert.compile(weight, options=sparsert.KernelOptions(**opts, max_slab_nnz=10**9))
    many = sparsert.compile(weight, options=sparsert.KernelOptions(**opts, max_slab_nnz=weight.matrix.nnz // 6))
    assert len(one.units) == 1 and len(many.units) >= 6
    b = cp.asarray(np.random.default_rng(5).standard_normal((K, 512)).astype(np.float32))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        want = one(b)
        for _ in range(3):  # repeated calls reuse the fork/join events
            out = cp.full((M, 512), cp.nan, dtype=cp.float32)
            many(b, out=out)
            after = out * 2  # enqueued after the join: must see every slab's rows
    stream.synchronize()
    assert cp.array_equal(out, want) and cp.array_equal(after, want * 2)
    assert _rel(cp, want, _reference(cp, weight, b)) < 1e-5


@pytest.mark.torch
def test_torch_tensors_zero_copy_on_torch_stream(weight):
    import torch
    import cupy as cp

    kernel = sparsert.compile(weight, n=128)
    b = torch.randn(K, 128, device="cuda", dtype=torch.float32)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s), torch.no_grad():
        c = kernel(b)
        out = torch.empty(M, 128, device="cuda")
        kernel(b, out=out)
    s.synchronize()
    assert isinstance(c, torch.Tensor) and c.is_cuda and c.shape == (M, 128)
    ref = torch.as_tensor(weight.matrix.toarray(), device="cuda").double() @ b.double()
    assert float((c.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    assert torch.equal(c, out)
    assert cp.asarray(c).data.ptr == c.data_ptr()  # the view we launch on is the tensor itself


def test_bad_inputs_are_refused(weight):
    import cupy as cp

    kernel = sparsert.compile(weight, n=64)
    with pytest.raises(InputError, match="shape"):
        kernel(cp.zeros((K + 1, 64), cp.float32))
    with pytest.raises(InputError, match="dtype"):
        kernel(cp.zeros((K, 64), cp.float64))
    with pytest.raises(InputError, match="contiguous"):
        kernel(cp.zeros((64, K), cp.float32).T)
    with pytest.raises(InputError, match="NumPy"):
        kernel(np.zeros((K, 64), np.float32))
    with pytest.raises(InputError, match="out"):
        kernel(cp.zeros((K, 64), cp.float32), out=cp.zeros((M, 63), cp.float32))
