"""Half precision numbers without a GPU (issue 15): the PTX backend's half kernels in the PTX
simulator against an exact model of their arithmetic (bit for bit, sm_80 and sm_90), the CUDA
source on the CPU (run_host, the host shim's exact half types) against float64 within the bound
derived in the README ("Half precision"), packed half identical on both paths, and the host
checks of half operands."""

from __future__ import annotations

import numpy as np
import ptx_sim
import pytest
import scipy.sparse as sp
from half_model import error_bound, reference, to_dtype, values
from schedules import conv_schedule, schedule, weight

import sparsert
from sparsert.backends.cuda.ptx_objects import render_ptx
from sparsert.check.reference import conv2d_reference
from sparsert.errors import InputError

MODES = [("float16", None), ("bfloat16", None), ("float16", "float16"), ("bfloat16", "bfloat16")]
MODE_IDS = ["f16-acc32", "bf16-acc32", "f16-packed", "bf16-packed"]


def _run_ptx(s, B, R, arch):
    C = np.full((s.batch, s.m, s.n), 0x7FFF, np.uint16)  # NaN in both formats: every element written
    for u in render_ptx(s, arch):
        ptx_sim.launch(u.source, u.grid, u.block, [B.view(np.uint16), C] + ([R.view(np.uint16)] if R is not None else []))
    return values(C.view(np.float16) if s.dtype == "float16" else C, s.dtype)


SIM_CASES = [
    dict(vec=2, groups=2, rows_per_block=4, threads_x=4, relu=True, residual=True, bias=True, batch=2),
    dict(vec=4, groups=1, rows_per_block=5, threads_x=2, n=20, bias=True),  # N tail
    dict(vec=2, groups=3, rows_per_block=6, threads_x=4, prefetch=2),  # buffers rotate, split K
    dict(vec=4, groups=2, rows_per_block=4, threads_x=2, prefetch=1, residual=True),
]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case", SIM_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ptx_half_kernels_compute_their_model_bit_for_bit(case, mode, arch):
    case = dict(case)
    dtype, accumulate = mode
    w = weight(13, 21, 0.3, seed=len(case))
    bias = (np.linspace(-1, 1, 13).astype(np.float32) / 3) if case.pop("bias", False) else None
    batch = case.pop("batch", 1)
    s = schedule(w, budget=40, bias=bias, batch=batch, dtype=dtype, accumulate=accumulate, **case)
    assert len(s.slabs) > 1
    rng = np.random.default_rng(1)
    B = to_dtype(rng.standard_normal((batch, s.k, s.n)).astype(np.float32), dtype)
    R = to_dtype(rng.standard_normal((batch, s.m, s.n)).astype(np.float32), dtype) if s.residual else None
    Bv, Rv = values(B, dtype), (None if R is None else values(R, dtype))
    got = _run_ptx(s, B, R, arch)
    assert np.array_equal(got, reference(s, Bv, Rv))
    A = s.to_csr()
    exact = np.einsum("mk,zkn->zmn", A.toarray().astype(np.float64), Bv)
    b64 = None if s.bias_bits is None else np.array(s.bias_bits, np.uint32).view(np.float32).astype(np.float64)
    if b64 is not None:
        exact += b64[None, :, None]
    if Rv is not None:
        exact += Rv
    if s.relu:
        exact = np.maximum(exact, 0)
    assert np.all(np.abs(got - exact) <= error_bound(s, A, Bv, b64, Rv))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float16"])
def test_ptx_half_virtual_im2col_bit_for_bit(dtype, arch):
    geo = (2, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1))
    s = conv_schedule(geo, m=6, dtype=dtype, relu=True, residual=True, groups=2, rows_per_block=3, threads_x=8)
    from schedules import im2col

    x = to_dtype(np.random.default_rng(2).standard_normal((1, 2, 7, 6)).astype(np.float32), dtype)
    R = to_dtype(np.random.default_rng(3).standard_normal((1, s.m, s.n)).astype(np.float32), dtype)
    got = _run_ptx(s, x, R, arch)
    assert np.array_equal(got, reference(s, im2col(values(x, dtype).astype(np.float32), s.conv), values(R, dtype)))


# -- the CUDA source on the CPU (host shim) ---------------------------------------------------
def _check_host(kernel, B, R=None, bias=None):
    s = kernel.schedule
    C = kernel.run_host(B, residual=R)
    assert C.dtype == B.dtype
    Bv, Rv = values(B, s.dtype), (None if R is None else values(R, s.dtype))
    A = s.to_csr()
    exact = (A.toarray().astype(np.float64) @ Bv)[None]
    b64 = None if s.bias_bits is None else np.array(s.bias_bits, np.uint32).view(np.float32).astype(np.float64)
    if b64 is not None:
        exact += b64[None, :, None]
    if Rv is not None:
        exact = exact + Rv
    if s.relu:
        exact = np.maximum(exact, 0)
    got = values(C, s.dtype)[None]
    bound = error_bound(s, A, Bv[None], b64, None if Rv is None else Rv[None])
    assert np.all(np.abs(got - exact) <= bound), float(np.max(np.abs(got - exact) - bound))
    return C


HOST_CASES = [  # (m, k, n, density, options)
    (40, 50, 64, 0.2, dict(relu=True, bias=True)),
    (33, 70, 30, 0.1, dict(vec=2, groups=2, residual=True)),
    (17, 90, 48, 0.3, dict(vec=4, rows_per_block=8, max_slab_nnz=200, bias=True)),  # slabs
    (64, 64, 22, 0.05, dict(vec=2, threads_x=8, relu=True, residual=True, bias=True)),
]


@pytest.mark.cxx
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case", HOST_CASES, ids=lambda c: str(c[:3]))
def test_host_half_kernels_within_the_derived_bound(case, mode):
    m, k, n, density, opts = case
    opts = dict(opts)
    dtype, accumulate = mode
    rng = np.random.default_rng(m + k)
    a = sp.random(m, k, density=density, random_state=rng, dtype=np.float32, format="csr")
    a.data -= 0.5
    bias = (rng.standard_normal(m).astype(np.float32) if opts.pop("bias", False) else None)
    if accumulate and n % 2:
        pytest.skip("packed half needs an even n")
    kernel = sparsert.compile(a, bias=bias, options=sparsert.KernelOptions(
        n=n, dtype=dtype, accumulate=accumulate, **opts))
    B = to_dtype(rng.standard_normal((k, n)).astype(np.float32), dtype)
    R = to_dtype(rng.standard_normal((m, n)).astype(np.float32), dtype) if kernel.schedule.residual else None
    _check_host(kernel, B, R, bias)


@pytest.mark.cxx
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_host_half_dlmc_patterns(shared, mode):
    files = sorted((shared / "dlmc").rglob("*.smtx"))[:2] if (shared / "dlmc").is_dir() else []
    if not files:
        pytest.skip("no DLMC patterns in shared/")
    dtype, accumulate = mode
    for f in files:
        kernel = sparsert.compile(str(f), n=32, dtype=dtype, accumulate=accumulate)
        B = to_dtype(np.random.default_rng(0).standard_normal((kernel.shape[1], 32)).astype(np.float32), dtype)
        _check_host(kernel, B)


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("geo", [
    dict(input_hw=(9, 8), stride=1, padding=1, kernel=3),
    dict(input_hw=(11, 10), stride=2, padding=3, kernel=7),
    dict(input_hw=(6, 6), stride=1, padding=0, kernel=1),  # contiguous: vector loads
])
def test_host_half_convolutions(dtype, geo):
    rng = np.random.default_rng(4)
    kk = geo["kernel"]
    w = rng.standard_normal((8, 3, kk, kk)).astype(np.float32) * (rng.random((8, 3, kk, kk)) < 0.3)
    bias = rng.standard_normal(8).astype(np.float32)
    conv = sparsert.compile_conv2d(w, geo["input_hw"], stride=geo["stride"], padding=geo["padding"],
                                   bias=bias, relu=True, residual=True, dtype=dtype)
    x = to_dtype(rng.standard_normal(conv.input_shape).astype(np.float32), dtype)
    r = to_dtype(rng.standard_normal(conv.output_shape).astype(np.float32), dtype)
    got = values(conv.run_host(x, residual=r), dtype)
    xv, rv = values(x, dtype), values(r, dtype)
    b64 = np.array(conv.kernel.schedule.bias_bits, np.uint32).view(np.float32).astype(np.float64)
    want = conv2d_reference(xv, w, b64, stride=geo["stride"], padding=geo["padding"], residual=rv, relu=True)
    # im2col magnitudes for the bound: |W| * |x| through the same convolution
    mag = conv2d_reference(np.abs(xv), np.abs(w), np.abs(b64), stride=geo["stride"], padding=geo["padding"],
                           residual=np.abs(rv))
    n = int((w != 0).reshape(8, -1).sum(1).max()) + conv.kernel.schedule.groups
    u = 2.0**-11 if dtype == "float16" else 2.0**-8
    g = (n + 2) * 2.0**-24 / (1 - (n + 2) * 2.0**-24)
    assert np.all(np.abs(got - want) <= (u + g * (1 + u)) * mag + 2.0**-24)


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_packed_source_and_ptx_compute_the_same_bits(dtype):
    """The CUDA source (host shim: exact __hfma2) and the PTX (simulated fma.rn.{f16,bf16}x2) of a
    packed kernel agree bit for bit: both paths run the same HFMA2 sequence."""
    w = weight(13, 21, 0.3, seed=9)
    kernel = sparsert.compile(w, options=sparsert.KernelOptions(
        n=16, dtype=dtype, accumulate=dtype, vec=2, groups=2, rows_per_block=5, threads_x=4, relu=True,
        residual=True), bias=np.linspace(-1, 1, 13).astype(np.float32))
    rng = np.random.default_rng(3)
    B = to_dtype(rng.standard_normal((21, 16)).astype(np.float32), dtype)
    R = to_dtype(rng.standard_normal((13, 16)).astype(np.float32), dtype)
    host = values(kernel.run_host(B, residual=R), dtype)
    s = kernel.schedule
    assert np.array_equal(host[None], _run_ptx(s, B[None], R[None], "sm_90"))


@pytest.mark.cxx
def test_host_half_operand_errors_are_one_line():
    kernel = sparsert.compile(weight(8, 8, 0.5, seed=1), n=8, dtype="bfloat16")
    for bad, want in ((np.zeros((8, 8), np.float32), "B: dtype float32; expected bfloat16 bits as uint16"),
                      (np.zeros((8, 8), np.float16), "B: dtype float16; expected bfloat16"),
                      (np.zeros((8, 9), np.uint16), "B: shape (8, 9); expected (8, 8)")):
        with pytest.raises(InputError) as err:
            kernel.run_host(bad)
        assert want in str(err.value) and "\n" not in str(err.value)
    k16 = sparsert.compile(weight(8, 8, 0.5, seed=1), n=8, dtype="float16")
    with pytest.raises(InputError, match="B: dtype float32; expected float16"):
        k16.run_host(np.zeros((8, 8), np.float32))
