"""benchmarks/spmm.py --dtype float16 | bfloat16 without a GPU: the arguments, the problem setup
(the weight rounded to the dtype), each method's documented arithmetic and the tolerance derived
from it (README "Half precision"), and that check itself on CPU results of those arithmetics.
The GPU run is tests/unit/test_bench_report.py's end-to-end test's business (marked gpu)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import spmm
from sparsert.ir.precision import round_to

ARCH = "sm_90"
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def test_help_lists_the_dtype_options():
    done = subprocess.run([sys.executable, "-m", "benchmarks.spmm", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--dtype {float32,float16,bfloat16}" in done.stdout and "--accumulate" in done.stdout


def test_dtype_arguments():
    assert (spmm.parse_args([]).dtype, spmm.parse_args([]).accumulate) == ("float32", None)
    args = spmm.parse_args(["--dtype", "bfloat16"])
    assert (args.dtype, args.accumulate) == ("bfloat16", None)
    args = spmm.parse_args(["--dtype", "float16", "--accumulate", "float16"])
    assert (args.dtype, args.accumulate) == ("float16", "float16")
    for bad in (["--dtype", "float16", "--accumulate", "bfloat16"], ["--accumulate", "float16"],
                ["--dtype", "float64"]):
        with pytest.raises(SystemExit):
            spmm.parse_args(bad)


def test_check_bound_follows_the_readme():
    # fp32 accumulation: about one rounding of the dtype whatever the row length
    for dtype in ("float16", "bfloat16"):
        tol, tiny = spmm.check_bound(dtype, "float32", 100)
        assert U[dtype] < tol < 1.001 * U[dtype] + 100 * 2.0**-24 * 1.01
        assert tiny == spmm.HALF_TINY[dtype]
    # packed half: n x u to first order (README: 100 nonzeros, 5% float16), gamma_n exactly
    tol16, tiny16 = spmm.check_bound("float16", "float16", 100)
    assert 100 * U["float16"] < tol16 < 0.06
    g = 100 * U["float16"] / (1 - 100 * U["float16"])
    assert tol16 == pytest.approx(g + U["float16"] * (1 + g), rel=1e-12)
    assert tiny16 == pytest.approx(101 * spmm.HALF_TINY["float16"])
    assert spmm.check_bound("bfloat16", "bfloat16", 256) == (1.0, pytest.approx(257 * 2.0**-134))  # n u >= 1
    assert spmm.check_bound("float16", "float32_tc", 4096)[0] > spmm.check_bound("float16", "float32", 4096)[0]
    tols = [spmm.check_bound("bfloat16", "bfloat16", n)[0] for n in (1, 10, 100, 200)]
    assert tols == sorted(tols) and len(set(tols)) == 4


def test_half_variants_say_what_runs_and_what_is_assumed():
    v16 = spmm.half_variants("float16", "float32", k=512, row_nnz=40, groups=2, acc16=True)
    assert set(v16) == {"sparsert:unrolled", "cublas:tc", "cublas:tc_reduced", "cublas:tc_acc16",
                        "cublas:sgemm_fp32", "cusparse:csr", "torch_dense:matmul"}
    assert {label.split(":")[0] for label in v16} == set(spmm.METHODS) - {"torch_csr"}
    assert [(v16[x]["accumulate"], v16[x]["terms"]) for x in (
        "sparsert:unrolled", "cublas:tc", "cublas:tc_reduced", "cublas:tc_acc16", "cublas:sgemm_fp32",
        "cusparse:csr", "torch_dense:matmul")] == [
        ("float32", 42), ("float32_tc", 512), ("float16", 512), ("float16", 512), ("float32", 512),
        ("float32", 40), ("float16", 512)]
    assert "allow_fp16_reduced_precision_reduction=False" in v16["cublas:tc"]["runs"]
    assert "CUBLAS_COMPUTE_32F" in v16["cublas:tc"]["runs"] and "CUDA_R_16F" in v16["cublas:tc"]["runs"]
    assert "tensor cores off" in v16["cublas:sgemm_fp32"]["runs"]
    assert "CUBLAS_COMPUTE_16F" in v16["cublas:tc_acc16"]["runs"]
    for spec in v16.values():
        assert (spec["tol"], spec["tiny"]) == spmm.check_bound("float16", spec["accumulate"], spec["terms"])
    bf = spmm.half_variants("bfloat16", "bfloat16", k=512, row_nnz=40, groups=2, acc16=True)
    assert "cublas:tc_acc16" not in bf  # fp16 accumulation only
    assert bf["sparsert:unrolled"]["accumulate"] == "bfloat16" and "CUDA_R_16BF" in bf["cusparse:csr"]["runs"]
    assert "allow_bf16_reduced_precision_reduction=True" in bf["torch_dense:matmul"]["runs"]
    with pytest.raises(spmm.Unavailable, match="not run twice"):
        spmm.prepare_torch_csr_half(None)


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(24, 96, density=0.3, random_state=seed, format="csr", dtype=np.float32,
                  data_rvs=rng.standard_normal)
    a.data = round_to(a.data, dtype)
    b = round_to(rng.standard_normal((96, 40)).astype(np.float32), dtype)
    return a, b


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_check_passes_each_arithmetic_and_catches_a_wrong_result(dtype):
    torch = pytest.importorskip("torch")
    a, b = _problem(dtype)
    k = a.shape[1]
    a64, b64 = torch.from_numpy(a.toarray()).double(), torch.from_numpy(b).double()
    exact, s_abs = a64 @ b64, a64.abs() @ b64.abs()
    specs = spmm.half_variants(dtype, "float32", k=k, row_nnz=int(np.diff(a.indptr).max()), groups=1)
    t = getattr(torch, dtype)
    fp32 = (torch.from_numpy(a.toarray()) @ torch.from_numpy(b)).to(t)  # fp32 sums, one rounding
    for label in ("sparsert:unrolled", "cublas:tc", "cublas:sgemm_fp32", "cusparse:csr", "torch_dense:matmul"):
        spec = specs[label]
        assert spmm.s_relative_error(fp32, exact, s_abs, spec["tiny"]) <= spec["tol"], label
    half_sum = torch.zeros(exact.shape, dtype=t)  # every addition in the dtype, in K order
    for j in range(k):
        half_sum = (half_sum.double() + a64[:, j:j + 1] * b64[j]).to(t)
    spec = specs["torch_dense:matmul"]
    assert spmm.s_relative_error(half_sum, exact, s_abs, spec["tiny"]) <= spec["tol"]
    # one product left out of one element (its largest): far outside every fp32-accumulation bound
    i = int(np.argmax(np.diff(a.indptr)))
    cols, vals = a.indices[a.indptr[i]:a.indptr[i + 1]], a.data[a.indptr[i]:a.indptr[i + 1]]
    j = int(np.argmax(np.abs(vals * b[cols, 0])))
    wrong = fp32.clone()
    wrong[i, 0] = (exact[i, 0] - float(vals[j]) * float(b[cols[j], 0])).to(t)
    spec = specs["cublas:sgemm_fp32"]
    assert spmm.s_relative_error(wrong, exact, s_abs, spec["tiny"]) > spec["tol"]
    nan = fp32.clone()
    nan[3, 3] = math.nan
    assert spmm.s_relative_error(nan, exact, s_abs, 0.0) == math.inf
    assert spmm.s_relative_error(fp32[:-1], exact, s_abs, 0.0) == math.inf
    s0 = s_abs.clone()
    s0[0, 0] = 0  # an element with no products must be exact (up to tiny)
    off = exact.clone()
    off[0, 0] += 1e-3
    assert spmm.s_relative_error(off, exact, s0, 1e-2) == 0.0
    assert spmm.s_relative_error(off, exact, s0, 1e-4) == math.inf


def test_the_weight_is_rounded_to_the_dtype(shared):
    p = next(p for p in spmm.read_problems(shared / "problems" / "spmm_dl.csv") if p.name == "p3-s95")
    w = spmm.make_weight(p, shared=shared)
    for dtype in ("float16", "bfloat16"):
        h = spmm.weight_in_dtype(w, dtype)
        assert h.shape == w.shape and h.name == w.name and h.nnz == w.nnz  # normal values: none vanish
        assert np.array_equal(round_to(h.matrix.data, dtype), h.matrix.data)
        assert not np.array_equal(h.matrix.data, w.matrix.data)
        assert np.abs(h.matrix.toarray() - w.matrix.toarray()).max() <= U[dtype] * np.abs(w.matrix.data).max()


def test_compile_only_in_half_precision(shared, capsys, monkeypatch):
    import sparsert

    built = []
    compile_ = sparsert.compile

    def spy(w, **kw):
        kernel = compile_(w, **kw)
        built.append((kernel.schedule.dtype, kernel.schedule.accumulate,
                      np.array_equal(round_to(w.matrix.data, "bfloat16"), w.matrix.data)))
        return kernel

    monkeypatch.setattr(sparsert, "compile", spy)
    argv = ["--compile-only", "--arch", ARCH, "--only", "^p12-s90$", "--batches", "1", "--dtype", "bfloat16"]
    assert spmm.main(argv) == 0
    assert built == [("bfloat16", "float32", True)]  # the kernel measure_half compiles
    assert "p12-s90" in capsys.readouterr().out
    assert spmm.main(argv) == 0  # the same kernel: a cache hit
    assert "1 slab(s), 1 cached" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_benchmark_end_to_end_on_gpu(shared, tmp_path, dtype):
    import json

    rc = spmm.main(["--only", "^p12-s90$", "--batches", "1", "--repeat", "5", "--warmup", "2",
                    "--dtype", dtype, "--out", str(tmp_path), "--no-report"])
    assert rc == 0
    (path,) = tmp_path.glob("spmm-*.json")
    data = json.loads(path.read_text())
    assert (data["settings"]["dtype"], data["settings"]["accumulate"]) == (dtype, "float32")
    (rec,) = data["records"]
    assert (rec["dtype"], rec["accumulate"]) == (dtype, "float32")
    assert rec["sparsert_us"] > 0 and rec["cublas_us"] > 0 and rec["torch_dense_us"] > 0
    assert rec["rel_err"]["sparsert:unrolled"] <= rec["variant_notes"]["sparsert:unrolled"]["tol"]
    assert {"cublas:tc", "cublas:tc_reduced", "cublas:sgemm_fp32"} <= set(rec["timing"])
    assert rec["cusparse_us"] or rec["skipped"]["cusparse"].startswith("unsupported:")
    assert "not run twice" in rec["skipped"]["torch_csr"]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_half_method_variant_has_its_check_and_passes_it_on_the_cpu(dtype, monkeypatch):
    """The baselines' code on CPU tensors (torch stands in for the GPU): each variant a prepare
    function returns has its documented arithmetic in half_variants, writes its output, and that
    output passes its check against float64 (the sparsert column runs the kernel on the host)."""
    torch = pytest.importorskip("torch")
    import sparsert
    from sparsert.frontend.weights import load_weight

    monkeypatch.setattr(spmm, "_torch", lambda: torch)
    flags = torch.backends.cuda.matmul
    for name in ("allow_tf32", "allow_fp16_reduced_precision_reduction",
                 "allow_bf16_reduced_precision_reduction", "allow_fp16_accumulation"):
        if hasattr(flags, name):  # the variants set them: put back what was there
            monkeypatch.setattr(flags, name, getattr(flags, name))
    a, b = _problem(dtype, seed=1)
    weight = load_weight(a)
    t = getattr(torch, dtype)
    kernel = sparsert.compile(weight, n=b.shape[1], dtype=dtype)

    class HostKernel:  # the sparsert column through the emulator: B and C as host arrays
        def __call__(self, bt, out):
            bits = bt.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else bt.numpy()
            c = kernel.run_host(bits)
            out.copy_(torch.from_numpy(c.view(np.int16)).view(t) if dtype == "bfloat16" else torch.from_numpy(c))

    ops = spmm.HalfOperands(weight=weight, n=b.shape[1], kernel=HostKernel(), sets=2, dtype=dtype)
    ops.a = torch.from_numpy(a.toarray()).to(t)
    ops.b = [torch.from_numpy(b).to(t), torch.from_numpy(b[::-1].copy()).to(t)]
    ops.c = [torch.zeros(a.shape[0], b.shape[1], dtype=t) for _ in range(2)]
    a64, b64 = ops.a.double(), ops.b[0].double()
    exact, s_abs = a64 @ b64, a64.abs() @ b64.abs()
    specs = spmm.half_variants(dtype, "float32", k=a.shape[1], row_nnz=int(np.diff(a.indptr).max()),
                               groups=kernel.schedule.groups,
                               acc16=hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"))
    ran = set()
    for meth, prepare in spmm.PREPARE_HALF.items():
        try:
            variants = prepare(ops)
        except spmm.Unavailable as e:
            assert meth in ("torch_csr", "cusparse"), e
            assert meth == "torch_csr" or str(e).startswith("unsupported:")
            continue
        for vname, launch, output in variants:
            label = f"{meth}:{vname}"
            spec = specs[label]
            for c in ops.c:
                c.fill_(math.nan)
            launch(0)
            assert spmm.s_relative_error(output(0), exact, s_abs, spec["tiny"]) <= spec["tol"], label
            ran.add(label)
    assert {"sparsert:unrolled", "cublas:tc", "cublas:tc_reduced", "cublas:sgemm_fp32",
            "torch_dense:matmul"} <= ran
    assert getattr(flags, spmm._reduction_flag(dtype)) is True  # torch_dense left torch's default
