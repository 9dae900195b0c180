"""The CPU target's convolutions (virtual im2col gathered chunk by chunk from NCHW) against float64:
kernel sizes, strides, padding, dilation, groups, batch, epilogues, tile widths, threads."""

from __future__ import annotations

import numpy as np
import pytest

import sparsert
from sparsert.check import conv2d_reference
from sparsert.errors import InputError, OptionsError

pytestmark = pytest.mark.avx2

U = 2.0 ** -24


def _bound(x, w, bias, stride, padding, dilation, groups, R):
    """The float32 error bound: gamma_n * (|W| * |x| + |bias| + |R|), n = terms per output."""
    mag = conv2d_reference(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), stride=stride,
                           padding=padding, dilation=dilation, groups=groups,
                           residual=None if R is None else np.abs(R))
    co = w.shape[0]
    n = np.count_nonzero(w.reshape(co, -1), axis=1)[None, :, None, None] + 3
    return n * U / (1 - n * U) * mag


@pytest.mark.parametrize("geom", [
    # c_in, c_out, h, w, k, stride, pad, dil, batch
    (8, 16, 7, 9, 1, 1, 0, 1, 2),   # 1x1: a batched SpMM, no gather
    (5, 6, 9, 8, 1, 2, 0, 1, 1),    # 1x1 strided: gathered
    (4, 8, 10, 9, 3, 1, 1, 1, 2),   # 3x3 pad 1 stride 1
    (4, 8, 11, 10, 3, 2, 1, 1, 2),  # 3x3 pad 1 stride 2
    (3, 5, 13, 12, 5, 1, 2, 2, 2),  # 5x5 dilation 2
    (2, 3, 6, 30, (1, 7), (1, 2), (0, 3), 1, 1),  # non-square everything
], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_against_float64(geom, threads):
    ci, co, h, w, k, s, p, d, batch = geom
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(ci * 100 + h)
    wt = (rng.standard_normal((co, ci, kh, kw)) * (rng.random((co, ci, kh, kw)) < 0.4)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    conv = sparsert.compile_conv2d(wt, (h, w), stride=s, padding=p, dilation=d, bias=bias, relu=True,
                                   residual=True, batch=batch, target="cpu", arch="avx2")
    x = rng.standard_normal((batch, ci, h, w)).astype(np.float32)
    R = rng.standard_normal(conv.output_shape).astype(np.float32)
    y = conv(x, residual=R, threads=threads)
    ref = conv2d_reference(x, wt, bias, stride=s, padding=p, dilation=d, residual=R, relu=True)
    assert y.shape == ref.shape
    assert (np.abs(y - ref) <= _bound(x, wt, bias, s, p, d, 1, R)).all()


def test_grouped_conv():
    rng = np.random.default_rng(3)
    groups, ci, co, k = 2, 6, 4, 3
    wg = rng.standard_normal((co, ci // groups, k, k)).astype(np.float32)
    conv = sparsert.compile_conv2d(wg, (8, 8), padding=1, groups=groups, batch=2, target="cpu", arch="avx2")
    x = rng.standard_normal((2, ci, 8, 8)).astype(np.float32)
    ref = conv2d_reference(x, wg, padding=1, groups=groups)
    assert (np.abs(conv(x) - ref) <= _bound(x, wg, None, 1, 1, 1, groups, None)).all()


def test_conv_input_checks():
    conv = sparsert.compile_conv2d(np.ones((2, 3, 3, 3), np.float32), (5, 5), target="cpu", arch="avx2")
    with pytest.raises(InputError, match="x: shape"):
        conv(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(InputError, match="x: shape"):
        conv(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(OptionsError, match="does not fit"):
        sparsert.compile_conv2d(np.ones((2, 3, 7, 7), np.float32), (5, 5), target="cpu", arch="avx2")


@pytest.mark.parametrize("vec,rows", [(2, 6), (3, 4), (1, 14)], ids=str)
def test_conv_other_tile_widths(vec, rows, monkeypatch):
    """W = 16 / 24 (packing splits rows at tile boundaries; 24 is not a power of two) and, for
    (1, 14), a chunk of 16 columns (runs cut by chunk edges), with padding on every side."""
    from sparsert.backends.cpu import launch

    if vec == 1:
        monkeypatch.setattr(launch, "MIN_TILES", 1)
        monkeypatch.setattr(launch, "PANEL_BYTES", 16 * 4 * 27)  # 16 columns of K = 27 rows
        monkeypatch.setattr(launch, "WHOLE_PANEL_BYTES", 0)  # (not the whole image at once)
    rng = np.random.default_rng(7)
    ci, co, h, w = 3, 10, 9, 13
    wt = (rng.standard_normal((co, ci, 3, 3)) * (rng.random((co, ci, 3, 3)) < 0.5)).astype(np.float32)
    # a 1x1-stride-1 conv would be a plain SpMM: this one needs the gather (vec applies to it too)
    from sparsert.backends import emulator_for, resolve
    from sparsert.backends.cpu.params import parameters_for
    from sparsert.frontend.conv import Conv2dSpec
    from sparsert.ir.plan import plan
    from sparsert.pipeline import Layout, build_kernel_units
    from sparsert.runtime.kernel import SparseKernel
    from sparsert.runtime.stats import make_stats

    spec = Conv2dSpec(c_in=ci, c_out=co, h=h, w=w, kh=3, kw=3, padding=(2, 1), dilation=(2, 1), batch=2)
    opts = sparsert.KernelOptions(n=spec.oh * spec.ow, target="cpu", arch="avx2", rows_per_block=rows)
    a = sparsert.load_weight(wt.reshape(co, -1)).matrix
    geo = spec.geometry()
    params = parameters_for("avx2")

    def with_vec(m, k, nnz, o, *, batch=1):  # plan() keeps vec 1 for an im2col operand: V comes from here
        p = params(m, k, nnz, o, batch=batch)
        return type(p)(p.threads_x, vec, p.groups, p.rows_per_block, p.prefetch)

    layout = Layout(batch=2, batch_stride_b=ci * h * w, batch_stride_c=co * opts.n, conv=geo)
    s = plan(a, opts, parameters=with_vec, weight_digest="t", max_slab_nnz=1 << 62, batch=2,
             batch_stride_b=layout.batch_stride_b, batch_stride_c=layout.batch_stride_c, conv=geo)
    backend = resolve("cpu")
    units = backend.units(s, "avx2")
    arts = build_kernel_units(backend, s, units, "avx2", use_cache=False)
    kernel = SparseKernel(schedule=s, units=units, artifacts=arts, target="cpu", arch="avx2", name="t",
                          stats=make_stats(s, units, arts, plan_s=0, render_s=0, compile_s=0),
                          backend=backend, emulator=emulator_for("cpu"))
    x = rng.standard_normal((2, ci, h, w)).astype(np.float32)
    y = kernel._launch(x, spec.input_shape, spec.output_shape, threads=2)
    ref = conv2d_reference(x, wt, stride=1, padding=(2, 1), dilation=(2, 1))
    assert (np.abs(y - ref) <= _bound(x, wt, None, 1, (2, 1), (2, 1), 1, None)).all()
