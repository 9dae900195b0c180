"""The generated CUDA source computes the right numbers: run on the CPU through the host shim,
against scipy in float64, over random shapes, schedules, epilogues and real DLMC patterns."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.errors import InputError
from sparsert.options import KernelOptions

RTOL = 2e-6  # normwise: max|C - ref| / max|ref|, float32 accumulation vs float64


def _rel(got, ref):
    scale = np.abs(ref).max()
    return float(np.abs(got.astype(np.float64) - ref).max() / (scale if scale > 0 else 1.0))


def _reference(w, b, bias=None, residual=None, relu=False):
    c = w.matrix.astype(np.float64) @ b.astype(np.float64)
    if bias is not None:
        c = c + bias.astype(np.float64)[:, None]
    if residual is not None:
        c = c + residual.astype(np.float64)
    return np.maximum(c, 0.0) if relu else c


CASES = [
    # (M, K, density, options): tails of N, every vector width, split K, slabs, empty rows/cols
    (37, 29, 0.15, dict(n=1)),
    (37, 29, 0.15, dict(n=5, vec=1)),
    (40, 64, 0.10, dict(n=34, vec=2)),
    (64, 48, 0.10, dict(n=100, vec=4, groups=3)),
    (64, 48, 0.30, dict(n=132, vec=4, groups=2, rows_per_block=4, max_slab_nnz=200)),
    (16, 200, 0.05, dict(n=64, groups=4, threads_x=8)),
    (9, 9, 1.0, dict(n=13)),  # fully dense
    (12, 10, 0.0, dict(n=8)),  # all zero: output is the epilogue of 0
]


@pytest.mark.parametrize("m,k,density,opts", CASES)
@pytest.mark.parametrize("epilogue", ["plain", "bias_relu", "residual"])
def test_random_cases_match_scipy(m, k, density, opts, epilogue):
    rng = np.random.default_rng(m * 1000 + k)
    a = sp.random(m, k, density=density, random_state=rng.integers(1 << 30), format="csr",
                  dtype=np.float32)
    a.data[:] = rng.standard_normal(a.nnz).astype(np.float32)
    if a.shape[0] > 3 and a.nnz:
        a = a.tolil()
        a[2, :] = 0  # an empty row among nonempty ones
        a = a.tocsr()
    w = sparsert.load_weight(a)
    bias = rng.standard_normal(m).astype(np.float32) if epilogue == "bias_relu" else None
    options = KernelOptions(arch="sm_80", relu=epilogue == "bias_relu",
                            residual=epilogue == "residual", **opts)
    kernel = sparsert.compile(w, options=options, bias=bias)
    b = rng.standard_normal((k, opts["n"])).astype(np.float32)
    r = rng.standard_normal((m, opts["n"])).astype(np.float32) if epilogue == "residual" else None
    got = kernel.run_host(b, residual=r)
    ref = _reference(w, b, bias, r, relu=epilogue == "bias_relu")
    assert got.shape == (m, opts["n"]) and got.dtype == np.float32
    assert _rel(got, ref) <= RTOL
    if epilogue == "bias_relu":
        assert (got >= 0).all()


@pytest.mark.parametrize("path,n", [
    ("rn50/magnitude_pruning/0.9/bottleneck_1_block_group_projection_block_group1.smtx", 3136),
    ("rn50/magnitude_pruning/0.95/bottleneck_3_block_group1_1_1.smtx", 784),
    ("transformer/magnitude_pruning/0.9/body_decoder_layer_0_encdec_attention_multihead_attention_k_fully_connected.smtx", 64),
])
def test_dlmc_patterns_match_scipy(shared, path, n):
    file = shared / "dlmc" / path
    if not file.exists():
        pytest.skip(f"{path} not in this DLMC subset")
    w = sparsert.load_weight(file, seed=3)
    kernel = sparsert.compile(w, n=n, arch="sm_90")
    b = np.random.default_rng(4).standard_normal((w.shape[1], n)).astype(np.float32)
    assert _rel(kernel.run_host(b), _reference(w, b)) <= 1e-5


def test_host_inputs_are_checked():
    w = sparsert.load_weight(sp.random(8, 6, density=0.5, random_state=0, format="csr", dtype=np.float32))
    kernel = sparsert.compile(w, n=4, arch="sm_80")
    with pytest.raises(InputError, match="shape"):
        kernel.run_host(np.zeros((7, 4), np.float32))
    with pytest.raises(InputError, match="dtype"):
        kernel.run_host(np.zeros((6, 4), np.float64))
    with pytest.raises(InputError, match="residual"):
        kernel.run_host(np.zeros((6, 4), np.float32), residual=np.zeros((8, 4), np.float32))
    # a misaligned view is copied, not refused, and gives the same numbers
    base = np.random.default_rng(0).standard_normal(6 * 4 + 1).astype(np.float32)
    view = base[1:].reshape(6, 4)
    assert np.array_equal(kernel.run_host(view), kernel.run_host(view.copy()))
