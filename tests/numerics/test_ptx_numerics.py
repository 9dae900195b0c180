"""The PTX backend's numbers, checked without a GPU: its PTX runs in tests/helpers/ptx_sim.py
(exact float32 FMA) against a reference model of the CUDA template's arithmetic, bit for bit.
(Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import re

import numpy as np
import ptx_sim  # tests/helpers/ptx_sim.py (pyproject: pythonpath)
import pytest
from schedules import ARCH, im2col, reference, run_ptx, schedule, weight

from sparsert.backends.cuda import plan, ptx, ptx_objects
from sparsert.backends.cuda.params import register_cap
from sparsert.ir.schedule import ConvGeometry
from sparsert.options import KernelOptions

SIM_CASES = [
    dict(vec=4, groups=2, rows_per_block=4, threads_x=4, relu=True, residual=True, bias=True, batch=2),
    dict(vec=1, groups=3, rows_per_block=8, threads_x=8, bias=True),
    dict(vec=2, groups=1, rows_per_block=5, threads_x=4, relu=True),
    dict(vec=4, groups=1, rows_per_block=8, threads_x=2, n=20),  # N tail: clamped loads, masked stores
    dict(vec=1, groups=2, rows_per_block=6, threads_x=4, prefetch=3, bias=True),  # buffers rotate
    dict(vec=2, groups=1, rows_per_block=7, threads_x=4, prefetch=1, relu=True),  # no pipelining
]


@pytest.mark.parametrize("case", SIM_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ptx_computes_the_cuda_arithmetic_bit_for_bit(case):
    case = dict(case)
    w = weight(13, 21, 0.3, seed=len(case))
    bias = np.linspace(-1, 1, 13).astype(np.float32) if case.pop("bias", False) else None
    batch = case.pop("batch", 1)
    s = schedule(w, budget=40, bias=bias, batch=batch, **case)
    assert len(s.slabs) > 1  # several launches, first_block offsets exercised
    rng = np.random.default_rng(1)
    B = rng.standard_normal((batch, s.k, s.n)).astype(np.float32)
    R = rng.standard_normal((batch, s.m, s.n)).astype(np.float32) if s.residual else None
    got = run_ptx(s, B, R)
    want = reference(s, B, R)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    # and the reference is A @ B (+ bias, residual, relu) up to float32 rounding
    dense = np.einsum("mk,zkn->zmn", w.matrix.toarray().astype(np.float64), B.astype(np.float64))
    if bias is not None:
        dense += bias[None, :, None]
    if R is not None:
        dense += R
    if s.relu:
        dense = np.maximum(dense, 0)
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)


CONV_CASES = [  # (c_in, h, w, kh, kw, stride, padding, dilation, batch, options)
    (3, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, dict(groups=2, rows_per_block=4, threads_x=8)),
    (2, 7, 9, 3, 3, (2, 2), (1, 1), (1, 1), 2, dict(relu=True, residual=True, bias=True, prefetch=2)),
    (4, 5, 5, 1, 1, (2, 2), (0, 0), (1, 1), 1, dict(threads_x=4)),  # strided 1x1: virtual too
    (2, 9, 8, 3, 3, (1, 1), (2, 2), (2, 2), 1, dict(prefetch=1, groups=3, rows_per_block=3)),
    (1, 11, 10, 7, 7, (2, 2), (3, 3), (1, 1), 1, dict(rows_per_block=5)),  # a ResNet stem
    (2, 6, 6, 3, 2, (1, 2), (1, 0), (1, 1), 2, dict(threads_x=16, rows_per_block=2, budget=30)),  # slabs
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-s{c[5][0]}{c[5][1]}"
                         f"-p{c[6][0]}{c[6][1]}-d{c[7][0]}-b{c[8]}")
def test_ptx_virtual_im2col_computes_the_cuda_arithmetic_bit_for_bit(case):
    c_in, h, wd, kh, kw, stride, padding, dilation, batch, opts = case
    opts = dict(opts)
    g = ConvGeometry(c_in=c_in, h=h, w=wd, kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation)
    m = 7
    w = weight(m, g.k, 0.4, seed=g.k + g.n)
    bias = np.linspace(-1, 1, m).astype(np.float32) if opts.pop("bias", False) else None
    budget = opts.pop("budget", 10**9)
    o = KernelOptions(n=g.n, **opts)
    s = plan(w.matrix, o, bias=bias, weight_digest=w.digest(), max_slab_nnz=budget, batch=batch,
             batch_stride_b=c_in * h * wd, batch_stride_c=m * g.n, conv=g)
    assert ptx.unsupported(s) is None and (budget > 10**6 or len(s.slabs) > 1)
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((batch, c_in, h, wd)).astype(np.float32)
    R = rng.standard_normal((batch, m, g.n)).astype(np.float32) if s.residual else None
    C = np.full((batch, m, g.n), np.nan, dtype=np.float32)
    for u in ptx_objects.render_ptx(s, ARCH):
        ptx_sim.launch(u.source, u.grid, u.block, [x, C] + ([R] if s.residual else []))
    want = reference(s, im2col(x, g), R)
    assert C.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    units = ptx_objects.render_ptx(s, ARCH)
    masked = sum(len(re.findall(r"and\.b32 \t%b\d+, %b\d+, %m\d+", u.source)) for u in units)
    assert (masked > 0) == any(padding), "only taps that can fall in the padding are masked"
    assert not any(re.search(r"@%p[kxy]\d+ ld", u.source) for u in units)  # loads never predicated


def test_linked_objects_compute_the_same_bits_with_replaced_functions():
    """What the PTX build links: functions split over objects, some re-assembled under a renamed
    copy (the entry calls it; the original stays, uncalled). The simulator links by name, like nvlink."""
    w = weight(24, 30, 0.3, seed=9)
    s = schedule(w, budget=60, vec=2, groups=2, rows_per_block=4, threads_x=4, bias=np.ones(24, np.float32))
    rng = np.random.default_rng(2)
    B = rng.standard_normal((1, s.k, s.n)).astype(np.float32)
    n = [b - a for a, b in s.slabs]
    cap = register_cap(s)
    layouts = [[(cap, (0,)), (cap, tuple(range(1, k)))] if k > 1 else [(cap, (0,))] for k in n]
    replaced = [{k - 1: 255} for k in n]
    got = run_ptx(s, B, None, layouts=layouts, replaced=replaced)
    assert got.view(np.uint32).tolist() == reference(s, B, None).view(np.uint32).tolist()
    # the renamed copy is the one that runs: break the original and the result must not change
    units = ptx_objects.render_ptx(s, ARCH, layouts=layouts, replaced=replaced)
    C = np.full((1, s.m, s.n), np.nan, dtype=np.float32)
    for u, k in zip(units, n):
        broken = u.source.replace(f".visible .func {u.kernel_name}_b{k - 1}(", f".visible .func {u.kernel_name}_dead(")
        assert broken != u.source
        ptx_sim.launch(broken, u.grid, u.block, [B, C])
    assert C.view(np.uint32).tolist() == got.view(np.uint32).tolist()
