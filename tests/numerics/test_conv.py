"""Sparse Conv2d: virtual im2col kernels checked on the host (the generated CUDA run on the CPU)
against a float64 reference; geometry, weight layouts, epilogue, CLI hooks, benchmark reporting.
GPU tests (marked `gpu`) compare with torch.nn.functional.conv2d."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.api import compile_conv2d
from sparsert.check import relative_error
from sparsert.check.reference import conv2d_reference
from sparsert.frontend.conv import Conv2dSpec, im2col_to_oihw, load_conv_weight
from sparsert.runtime.conv_kernel import ConvKernel
from sparsert.errors import InputError, OptionsError, WeightError
from sparsert.options import KernelOptions
from sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice
from sparsert.ir.schedule import ConvGeometry
from sparsert.backends.source.render import render

REPO = Path(__file__).resolve().parents[2]
RTOL = 1e-5  # float32 sums of at most a few thousand products; the kernel must be this close
DLMC = "dlmc/rn50/magnitude_pruning"


def _filter(c_out, c_in_g, kh, kw, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, c_in_g, kh, kw)).astype(np.float32)
    return w * (rng.random(w.shape) < density)


def _run_and_check(conv: ConvKernel, w_oihw, *, bias=None, residual=False, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(conv.input_shape).astype(np.float32)
    r = rng.standard_normal(conv.output_shape).astype(np.float32) if residual else None
    got = conv.run_host(x, residual=r)
    s = conv.spec
    ref = conv2d_reference(x, w_oihw, bias, stride=s.stride, padding=s.padding, dilation=s.dilation,
                           groups=s.groups, residual=r, relu=conv.relu)
    assert got.shape == ref.shape == conv.output_shape
    err = relative_error(got, ref)
    assert err < RTOL, f"{s.describe()}: relative error {err:.2e}"
    return got, ref


def _naive_conv(x, w, stride, padding, dilation, groups):
    """Direct definition, pixel by pixel: an independent check of conv2d_reference itself."""
    nb, _, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    (sy, sx), (py, px), (dy, dx) = stride, padding, dilation
    oh = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    ow = (wd + 2 * px - dx * (kw - 1) - 1) // sx + 1
    y = np.zeros((nb, c_out, oh, ow))
    for n in range(nb):
        for o in range(c_out):
            g = o // (c_out // groups)
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0
                    for c in range(cg):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy, ix = oy * sy - py + ky * dy, ox * sx - px + kx * dx
                                if 0 <= iy < h and 0 <= ix < wd:
                                    acc += w[o, c, ky, kx] * x[n, g * cg + c, iy, ix]
                    y[n, o, oy, ox] = acc
    return y


# --------------------------------------------------------------------------- no compiler needed


@pytest.mark.parametrize("case", [
    {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "k": (3, 3), "hw": (5, 6)},
    {"stride": (2, 3), "padding": (0, 2), "dilation": (2, 1), "groups": 2, "k": (3, 5), "hw": (9, 8)},
    {"stride": (2, 2), "padding": (3, 3), "dilation": (1, 1), "groups": 4, "k": (7, 7), "hw": (7, 7)},
])
def test_reference_matches_the_definition(case):
    rng = np.random.default_rng(0)
    g = case["groups"]
    x = rng.standard_normal((2, 2 * g, *case["hw"]))
    w = rng.standard_normal((2 * g, 2, *case["k"]))
    want = _naive_conv(x, w, case["stride"], case["padding"], case["dilation"], g)
    got = conv2d_reference(x, w, stride=case["stride"], padding=case["padding"],
                           dilation=case["dilation"], groups=g)
    assert got.shape == want.shape and np.allclose(got, want, rtol=0, atol=1e-12)
    spec = Conv2dSpec(c_in=2 * g, c_out=2 * g, h=case["hw"][0], w=case["hw"][1], kh=case["k"][0],
                      kw=case["k"][1], stride=case["stride"], padding=case["padding"],
                      dilation=case["dilation"], groups=g, batch=2)
    assert spec.output_shape == want.shape


@pytest.mark.torch
def test_reference_matches_torch_when_installed():
    import torch
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 6, 11, 9)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    got = conv2d_reference(x, w, b, stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=(2, 1),
                                      padding=(1, 1), dilation=(1, 2), groups=2).numpy()
    assert np.allclose(got, want, rtol=0, atol=1e-10)


def test_spec_is_validated():
    with pytest.raises(OptionsError, match="groups=3"):
        Conv2dSpec(c_in=4, c_out=6, h=5, w=5, kh=3, kw=3, groups=3)
    with pytest.raises(OptionsError, match="does not fit"):
        Conv2dSpec(c_in=1, c_out=1, h=2, w=9, kh=3, kw=3)
    with pytest.raises(OptionsError, match="stride"):
        Conv2dSpec(c_in=1, c_out=1, h=5, w=5, kh=3, kw=3, stride=(0, 1))
    with pytest.raises(OptionsError, match="padding"):
        Conv2dSpec(c_in=1, c_out=1, h=5, w=5, kh=3, kw=3, padding=(-1, 0))
    assert Conv2dSpec(c_in=1, c_out=1, h=2, w=9, kh=3, kw=3, padding=(1, 0)).output_shape == (1, 1, 2, 7)


def test_weight_layouts_agree_and_groups_are_block_diagonal(tmp_path):
    w = _filter(6, 2, 3, 3, seed=3)
    a, c_in, kh, kw = load_conv_weight(w, groups=3)
    assert (c_in, kh, kw) == (6, 3, 3) and a.shape == (6, 54)
    dense = a.matrix.toarray()
    for o in range(6):  # row o only touches the taps of its group's 2 input channels
        g = o // 2
        outside = np.delete(dense[o], np.s_[g * 18:(g + 1) * 18])
        assert not outside.any()
        assert np.array_equal(dense[o, g * 18:(g + 1) * 18], w[o].reshape(-1))
    # same filter as an im2col .npy, and as OIHW .npy: same canonical matrix, bit for bit
    np.save(tmp_path / "oihw.npy", w)
    np.save(tmp_path / "im2col.npy", w.reshape(6, 18))
    b, *_ = load_conv_weight(tmp_path / "im2col.npy", kernel_size=3, groups=3)
    c, *_ = load_conv_weight(tmp_path / "oihw.npy", groups=3, layout="oihw")
    assert a.digest() == b.digest() == c.digest()
    assert c.name == "oihw"
    spec = Conv2dSpec(c_in=6, c_out=6, h=4, w=4, kh=3, kw=3, groups=3)
    assert np.array_equal(im2col_to_oihw(a.matrix, spec), w)
    # sparse im2col input (DLMC-style pattern) is accepted too
    d, *_ = load_conv_weight(sp.csr_matrix(w.reshape(6, 18)), kernel_size=(3, 3), groups=3)
    assert d.digest() == a.digest()


def test_weight_errors_name_the_problem(tmp_path):
    with pytest.raises(OptionsError, match="kernel_size: required"):
        load_conv_weight(np.ones((4, 18), np.float32))
    with pytest.raises(WeightError, match="not a multiple of kh\\*kw=9"):
        load_conv_weight(np.ones((4, 20), np.float32), kernel_size=3)
    with pytest.raises(WeightError, match="4-D OIHW"):
        load_conv_weight(np.ones((4, 3, 3), np.float32))
    with pytest.raises(WeightError, match="layout 'oihw' needs a 4-D"):
        load_conv_weight(np.ones((4, 9), np.float32), layout="oihw")
    with pytest.raises(OptionsError, match="layout='hwio'"):
        load_conv_weight(np.ones((4, 1, 3, 3), np.float32), layout="hwio")
    with pytest.raises(OptionsError, match="kernel_size=5"):
        load_conv_weight(np.ones((4, 1, 3, 3), np.float32), kernel_size=5)
    w = np.ones((4, 2, 3, 3), np.float32)
    w[1, 0, 2, 1] = np.nan
    with pytest.raises(WeightError, match=r"nan at index \(1, 0, 2, 1\)"):
        load_conv_weight(w)
    with pytest.raises(OptionsError, match="groups=3: does not divide C_out=4"):
        load_conv_weight(np.ones((4, 2, 3, 3), np.float32), groups=3)
    with pytest.raises(OptionsError, match="input_hw"):
        compile_conv2d(np.ones((4, 2, 3, 3), np.float32), (0, 5))


def test_plain_spmm_source_is_unchanged_by_conv_support():
    a = sp.random(24, 36, density=0.2, random_state=0, format="csr", dtype=np.float32)
    w = sparsert.load_weight(a)
    s = plan(w.matrix, KernelOptions(n=256, vec=4), weight_digest=w.digest(), max_slab_nnz=10**6)
    assert s.conv is None and s.vec == 4
    src = render(s)[0].source
    assert "im2col" not in src and "pix" not in src
    assert "  // Out-of-range threads load a valid column (clamped) and store nothing: no branch in the body.\n" \
           "  const float* __restrict__ Bp = B + blockIdx.z * 0 + min(col, 252);\n" \
           "  float* __restrict__ Cp = C + blockIdx.z * 0 + col;\n" in src
    assert "//   B: 36 x 256 dense, row-major; C: 24 x 256 row-major\n" in src
    assert "#define L(k) { const float4 t_ = *reinterpret_cast<const float4*>(Bp + (k) * 256);" in src


def test_conv_source_masks_only_taps_that_can_hit_the_padding():
    w = sparsert.load_weight(_filter(8, 3, 3, 3, seed=1).reshape(8, 27))
    geo = ConvGeometry(c_in=3, h=7, w=9, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    s = plan(w.matrix, KernelOptions(n=geo.n), weight_digest=w.digest(), max_slab_nnz=10**6,
             batch=2, batch_stride_b=3 * 63, batch_stride_c=8 * 63, conv=geo)
    src = render(s)[0].source
    assert s.vec == 1 and s.params()["conv"]["oh"] == 7
    # centre tap (ky=1, kx=1) is always inside the image: a literal `true`, no flag computed
    assert "const bool ok[9] = {y0 && x0, y0, y0 && x2, x0, true, x2, y2 && x0, y2, y2 && x2};" in src
    assert "y1 =" not in src and "x1 =" not in src
    assert "#define L(k) b0 = ok[(k) % 9] ? Bp[base + (k) / 9 * 63 + (k) % 9 / 3 * 9 + (k) % 3] : 0.f;" in src
    assert render(s)[0].source == src  # deterministic
    unpadded = plan(w.matrix, KernelOptions(n=35), weight_digest=w.digest(), max_slab_nnz=10**6,
                    conv=ConvGeometry(c_in=3, h=7, w=9, kh=3, kw=3, stride=(1, 1), padding=(0, 0),
                                      dilation=(1, 1)))
    src0 = render(unpadded)[0].source
    assert "ok[" not in src0 and "#define L(k) b0 = Bp[base + (k) / 9 * 63" in src0
    assert unpadded.digest != s.digest
    with pytest.raises(OptionsError, match="im2col of 27 x 63 but the weight has K=27 and n=35"):
        plan(w.matrix, KernelOptions(n=35), weight_digest="x", max_slab_nnz=10, conv=geo)
    even = ConvGeometry(c_in=3, h=8, w=9, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    with pytest.raises(OptionsError, match="vec=2: .*use vec=1"):
        plan(w.matrix, KernelOptions(n=72, vec=2), weight_digest="x", max_slab_nnz=10, conv=even)


# --------------------------------------------------------------------------- host runs (NVRTC + g++)


CASES = [
    # (C_in, C_out, H, W, k, stride, padding, dilation, groups, batch)
    (3, 8, 7, 9, 3, 1, 1, 1, 1, 2),  # 3x3 same padding, odd non-square image
    (4, 6, 9, 7, 3, 2, 1, 1, 1, 3),  # 3x3 stride 2 (ResNet downsampling), odd sizes
    (5, 4, 8, 8, 3, 2, 0, 1, 1, 1),  # no padding, stride 2
    (4, 8, 6, 6, 1, 1, 0, 1, 1, 3),  # 1x1: plain SpMM over the image
    (4, 8, 7, 7, 1, 2, 0, 1, 1, 2),  # strided 1x1
    (3, 5, 11, 10, 7, 2, 3, 1, 1, 1),  # 7x7 stride 2 (the stem)
    (4, 6, 9, 9, 5, 2, 2, 2, 2, 1),  # 5x5, dilation 2, grouped
    (6, 6, 8, 5, 3, 1, 1, 1, 6, 2),  # depthwise
    (4, 8, 5, 5, 3, 1, 0, 1, 4, 1),  # grouped, 2 outputs per group
    (2, 3, 1, 1, 3, 1, 1, 1, 1, 2),  # 1x1 image: everything but the centre is padding
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "cin{}_cout{}_{}x{}_k{}_s{}_p{}_d{}_g{}_b{}".format(*c))
def test_host_matches_float64_reference(case):
    c_in, c_out, h, w, k, s, p, d, g, nb = case
    wt = _filter(c_out, c_in // g, k, k, density=0.4, seed=sum(case))
    conv = compile_conv2d(wt, (h, w), stride=s, padding=p, dilation=d, groups=g, batch=nb)
    assert conv.schedule.nnz == np.count_nonzero(wt)
    assert (conv.schedule.conv is None) == (k == 1 and s == 1 and p == 0)
    _run_and_check(conv, wt)


@pytest.mark.parametrize("seed", range(6))
def test_host_random_geometry(seed):
    rng = np.random.default_rng(100 + seed)
    g = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = g * int(rng.integers(1, 5)), g * int(rng.integers(1, 5))
    kh, kw = (int(v) for v in rng.integers(1, 6, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
    h = int(rng.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 16))
    w = int(rng.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 16))
    wt = _filter(c_out, c_in // g, kh, kw, density=float(rng.uniform(0.05, 0.6)), seed=seed)
    conv = compile_conv2d(wt, (h, w), stride=stride, padding=padding, dilation=dilation, groups=g,
                          batch=int(rng.integers(1, 4)), thread_groups=int(rng.integers(1, 3)))
    _run_and_check(conv, wt, seed=seed)


@pytest.mark.parametrize("k,vec", [(3, None), (1, None), (1, 2)])
def test_fused_bias_relu_residual(k, vec):
    wt = _filter(16, 8, k, k, density=0.3, seed=k)
    bias = np.linspace(-1, 1, 16).astype(np.float32)
    conv = compile_conv2d(wt, (16, 12), padding=k // 2, bias=bias, relu=True, residual=True, batch=2,
                          vec=vec)
    if k == 1:
        assert conv.schedule.vec == (vec or 1) and conv.schedule.conv is None  # contiguous: vector loads over the image
    got, _ = _run_and_check(conv, wt, bias=bias, residual=True)
    assert (got == 0).any() and (got >= 0).all()  # the ReLU clipped something
    with pytest.raises(InputError, match="residual"):
        conv.run_host(np.zeros(conv.input_shape, np.float32))


def test_split_k_and_slabs_on_the_conv_path():
    wt = _filter(24, 6, 3, 3, density=0.25, seed=9)
    conv = compile_conv2d(wt, (9, 11), padding=1, batch=2, thread_groups=3, rows_per_block=5,
                          threads_x=16, max_slab_nnz=60, bias=np.ones(24, np.float32))
    assert conv.schedule.groups == 3 and len(conv.units) > 1
    _run_and_check(conv, wt, bias=np.ones(24, np.float32))


def test_one_ffma_immediate_per_nonzero_with_padding():
    wt = _filter(16, 8, 3, 3, density=0.2, seed=4)
    conv = compile_conv2d(wt, (10, 10), padding=1, stride=2, arch="sm_90")
    sass = conv.sass_stats()
    # a first product into a zero accumulator may compile to FMUL (as for plain SpMM)
    assert sass.ffma_imm + sass.fmul_imm == np.count_nonzero(wt) and not sass.spills
    assert sorted(sass.immediate_bits) == sorted(wt[wt != 0].view(np.uint32).tolist())


def test_input_errors_name_the_argument():
    conv = compile_conv2d(_filter(4, 2, 3, 3, seed=2), (5, 5), padding=1, batch=2)
    with pytest.raises(InputError, match=r"x: shape \(1, 2, 5, 5\); this convolution was compiled for x of shape \(2, 2, 5, 5\)"):
        conv.run_host(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(InputError, match="dtype float64"):
        conv.run_host(np.zeros((2, 2, 5, 5)))
    with pytest.raises(OptionsError, match="vec=4: vector loads need a contiguous im2col"):
        compile_conv2d(_filter(4, 2, 3, 3, seed=2), (5, 5), padding=1, vec=4)


def test_dlmc_resnet50_3x3_layer(shared):
    """A real pruned ResNet-50 3x3 layer (im2col pattern, K = C_in*9) at its real 56x56 size."""
    path = shared / DLMC / "0.95" / "bottleneck_2_block_group1_1_1.smtx"
    conv = compile_conv2d(path, (56, 56), padding=1, kernel_size=3, batch=2, relu=True)
    assert (conv.spec.c_in, conv.spec.c_out, conv.n) == (64, 64, 3136)
    _run_and_check(conv, conv.oihw())


def test_dlmc_resnet50_stem_7x7_stride2(shared):
    path = shared / DLMC / "0.9" / "initial_conv.smtx"  # 64 x 147 = 3 channels x 7x7
    conv = compile_conv2d(path, (33, 29), stride=2, padding=3, kernel_size=7, batch=1)
    assert conv.spec.output_shape == (1, 64, 17, 15)
    _run_and_check(conv, conv.oihw())


@pytest.mark.slow
@pytest.mark.parametrize("name,hw,stride", [
    ("bottleneck_2_block_group_projection_block_group2", (56, 56), 2),
    ("bottleneck_2_block_group2_1_1", (28, 28), 1),
    ("bottleneck_2_block_group_projection_block_group3", (28, 28), 2),
    ("bottleneck_2_block_group3_1_1", (14, 14), 1),
])
def test_dlmc_resnet50_3x3_layers_slow(shared, name, hw, stride):
    conv = compile_conv2d(shared / DLMC / "0.95" / f"{name}.smtx", hw, stride=stride, padding=1,
                          kernel_size=3, batch=1)
    _run_and_check(conv, conv.oihw())


# --------------------------------------------------------------------------- CLI hooks


def test_cli_compile_and_check_on_the_host(tmp_path, capsys):
    from sparsert.cli import main

    path = tmp_path / "w.npy"
    np.save(path, _filter(8, 4, 3, 3, seed=5))
    out = tmp_path / "gen"
    rc = main(["compile", str(path), "--conv", "--input-hw", "9", "7", "--stride", "2",
               "--padding", "1", "--batch", "2", "--relu", "--out", str(out)])
    assert rc == 0
    meta = json.loads((out / "w.json").read_text())
    assert meta["conv"]["oh"] == 5 and meta["conv"]["ow"] == 4 and meta["schedule"]["N"] == 20
    rc = main(["check", str(path), "--conv", "--input-hw", "9", "7", "--stride", "2", "--padding", "1",
               "--batch", "2", "--residual", "--host"])
    assert rc == 0 and "PASS" in capsys.readouterr().out
    np.save(path, _filter(8, 4, 3, 3, seed=5).reshape(8, 36))  # im2col layout, needs --kernel-size
    assert main(["check", str(path), "--conv", "--input-hw", "6", "6", "--host"]) == 2
    assert "kernel_size: required" in capsys.readouterr().err
    assert main(["check", str(path), "--conv", "--input-hw", "6", "6", "--kernel-size", "3",
                 "--layout", "im2col", "--padding", "1", "--host"]) == 0
    assert main(["compile", str(path), "--conv", "--kernel-size", "3", "--out", str(out)]) == 2
    assert "--input-hw: required" in capsys.readouterr().err


# --------------------------------------------------------------------------- benchmark harness


@pytest.fixture(scope="module")
def bench():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import conv as module

    return module


def test_bench_problem_sets(bench, shared):
    csv = bench.csv_problems(shared / "problems" / "conv3x3_dl.csv")
    assert len(csv) == 8 and {p.sparsity for p in csv} == {0.9, 0.95}
    assert csv[0].problem == "conv3x3_dl/p1-s90" and csv[-1].problem == "conv3x3_dl/p4-s95"
    assert all(p.kernel == 3 and p.padding == 1 for p in csv)
    w = csv[0].weight_array(seed=0)
    assert w.shape == (64, 64, 3, 3) and np.count_nonzero(w) == round(0.1 * w.size)
    assert np.array_equal(w, csv[0].weight_array(seed=0))  # deterministic
    assert not np.array_equal(w != 0, csv[1].weight_array(seed=0)[:64, :64] != 0)
    dl = bench.dlmc_problems(shared)
    assert len(dl) == 32  # 16 3x3 layers x 2 sparsities
    sizes = dict(line.split(",") for line in (shared / "dlmc" / "rn50_batchsizes.txt").read_text().split())
    for p in dl:
        stem = p.problem.split("/")[-1]
        with open(p.weight) as fh:
            m, k, _ = (int(v) for v in fh.readline().split(","))
        assert (p.C_out, p.C_in * 9) == (m, k)
        spec = Conv2dSpec(c_in=p.C_in, c_out=p.C_out, h=p.H, w=p.W, kh=3, kw=3,
                          stride=(p.stride,) * 2, padding=(1, 1))
        assert spec.oh * spec.ow == int(sizes[stem]), p.problem  # output pixels = DLMC's N
    down = [p for p in dl if p.stride == 2]
    assert sorted({p.H for p in down}) == [14, 28, 56]
    first = dl[0].weight_array(seed=0)  # the DLMC pattern itself, im2col order = OIHW reshape
    assert first.shape == (64, 64, 3, 3) and np.count_nonzero(first) == 3686


def _synthetic_doc(bench):
    """SYNTHETIC numbers, made up to exercise the reporting code; never a measurement."""
    records = []
    for i, (hw, c) in enumerate([(56, 64), (28, 128), (14, 256), (7, 512)]):
        for batch in (1, 8):
            records.append({
                "problem": f"synthetic/{i}", "H": hw, "W": hw, "C_in": c, "C_out": c, "kernel": 3,
                "stride": 1, "padding": 1, "batch": batch, "sparsity": 0.9,
                "sparsert_us": 10.0 * (i + 1) * batch, "cudnn_us": 20.0 * (i + 1) * batch,
                "cudnn_tf32_us": 12.0 * (i + 1) * batch, "max_rel_err": 3e-7})
    return {"schema": bench.SCHEMA, "synthetic": True,
            "device": {"name": "SYNTHETIC (no device)", "capability": "n/a"},
            "versions": {"sparsert": sparsert.__version__}, "records": records}


def test_bench_reporting_from_a_synthetic_results_file(bench, tmp_path):
    doc = _synthetic_doc(bench)
    assert bench.check_results(doc) == []
    src = tmp_path / "synthetic_conv.json"  # tmp only: synthetic numbers are never committed
    src.write_text(json.dumps(doc))
    assert bench.main(["--from-results", str(src)]) == 0
    md = (tmp_path / "synthetic_conv.md").read_text()
    assert md.startswith("> **SYNTHETIC DATA: not a measurement.**")
    assert "on SYNTHETIC (no device)" in md
    assert md.count("| synthetic/") == 8
    assert "| synthetic/0 | 1 | 56x56 | 64 -> 64 | 3/1/1 | 0.90 | 10.0 | 20.0 | 12.0 | 2.00x | 1.20x | 3.0e-07 |" in md
    assert "Batch 1: geometric-mean speedup 2.00x vs cuDNN FP32, 1.20x vs cuDNN TF32 (4 problems)." in md
    png = (tmp_path / "synthetic_conv.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_result_checking_catches_bad_records(bench, tmp_path):
    doc = _synthetic_doc(bench)
    doc["records"][0]["max_rel_err"] = 0.02  # e.g. a wrong kernel
    doc["records"][1]["cudnn_us"] = 0.0
    doc["records"][2]["sparsert_us"] = float("nan")
    del doc["records"][3]["padding"]
    doc["records"][4]["batch"] = "8"
    problems = bench.check_results(doc)
    assert len(problems) == 5
    assert "max_rel_err 0.02 exceeds 0.0001" in problems[0]
    assert any("cudnn_us=0.0, expected a positive time" in p for p in problems)
    assert any("sparsert_us=nan is not finite" in p for p in problems)
    assert any("padding=None, expected int" in p for p in problems)
    assert any("batch='8', expected int" in p for p in problems)
    assert bench.check_results({"records": []})[0].startswith("schema")
    doc["records"][4]["batch"] = 8
    doc["records"][5]["failed"] = {"sparsert": "max relative error 3.1e-02 vs float64 > 0.0001"}
    assert bench.check_results(doc)[-1].endswith("sparsert failed: max relative error 3.1e-02 vs float64 > 0.0001")
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(doc))
    assert bench.main(["--from-results", str(src)]) == 1
    md = (tmp_path / "bad.md").read_text()
    assert "3 record(s) left out (failed or malformed)" in md and md.count("| synthetic/") == 5
    assert math.isclose(bench.DEFAULT_RTOL, 1e-4)
