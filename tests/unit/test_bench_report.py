"""Benchmark harness and report, without a GPU: problem sets, weights, floors, result checks, and
tables/plots from a results file. The results files here are synthetic, made inside each test in
a temporary folder (never committed): they test the arithmetic of the report, not any GPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import data_dir

from sparsert.runtime.device import gpu_available

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, report, spmm

ARCH = "sm_90"


def _rec(problem, batch=1, suite="spmm_dl", **times):
    base = {"problem": problem, "suite": suite, "M": 64, "K": 256, "N": 3136 * batch, "batch": batch,
            "sparsity": 0.9, "reported_speedup_t4": 4.3 if batch == 1 else None,
            "max_rel_err": 1e-6, "failed": {}, "skipped": {},
            "floor": {"floor_us": 2.0, "bound": "memory"}}
    base.update({f"{m}_us": times.get(m) for m in spmm.METHODS})
    if times.get("sparsert"):
        base["efficiency"] = {"sparsert": 2.0 / times["sparsert"]}
    return base


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """SYNTHETIC numbers, made up to test the report's arithmetic: not a measurement."""
    data = {
        "format": 1, "kind": "spmm", "created": "synthetic", "environment": {"device": "SYNTHETIC"},
        "peaks": {"fp32_flops": 66.9e12, "dram_bytes_per_s": 3.0e12, "formula": common.PEAK_FORMULA,
                  "sm_count": 132, "sm_clock_mhz": 1980, "fma_per_clk_per_sm": 128},
        "settings": {"warmup": 1, "repeat": 1, "tol": 1e-4},
        "records": [
            _rec("p1-s90", sparsert=10.0, cublas=40.0, cusparse=25.0, torch_dense=50.0, torch_csr=30.0),
            _rec("p2-s90", sparsert=5.0, cublas=45.0, cusparse=None, torch_dense=45.0, torch_csr=20.0),
            _rec("p1-s90", batch=8, sparsert=80.0, cublas=40.0, cusparse=160.0, torch_dense=40.0,
                 torch_csr=None),
            _rec("p3-s90", sparsert=None, cublas=10.0, cusparse=10.0, torch_dense=10.0, torch_csr=10.0),
        ],
    }
    data["records"][1]["skipped"] = {"cusparse": "cuSPARSE not importable"}
    data["records"][3]["failed"] = {"sparsert:unrolled": "max relative error 1.0e-01 vs cuBLAS > 0.0001"}
    path = tmp_path / "spmm-synthetic.json"
    path.write_text(json.dumps(data))
    return path


def _row(md: str, startswith: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(startswith))
    return [c.strip() for c in line.strip("|").split("|")]


# -- report -----------------------------------------------------------------------------------
def test_speedup_and_geomean():
    r = _rec("x", sparsert=10.0, cublas=40.0)
    assert report.speedup(r, "cublas") == pytest.approx(4.0)
    assert report.speedup(r, "cusparse") is None
    assert report.speedup(_rec("y", sparsert=None, cublas=1.0), "cublas") is None
    assert report.geomean([4.0, 9.0, None]) == pytest.approx(6.0)
    assert report.geomean([None]) is None


def test_report_table_speedup_columns(synthetic):
    md_path, _ = report.write_report(synthetic)
    md = md_path.read_text()
    # detail rows: problem | M | K | N | sparsity | sparsert µs | ×cuBLAS | ×cuSPARSE | ×torch dense
    #              | ×torch CSR | T4 paper | floor µs | efficiency | bound | max rel err
    p1 = _row(md, "| p1-s90 | 64 | 256 | 3136 |")
    assert p1[5] == "10.00"
    assert p1[6:10] == ["4.00×", "2.50×", "5.00×", "3.00×"]
    assert p1[10] == "4.30×" and p1[12] == "20.0%"
    p2 = _row(md, "| p2-s90 |")
    assert p2[6:10] == ["9.00×", "—", "9.00×", "4.00×"]
    p1b8 = _row(md, "| p1-s90 | 64 | 256 | 25088 |")
    assert p1b8[6:10] == ["0.50×", "2.00×", "0.50×", "—"] and p1b8[10] == "—"
    assert _row(md, "| p3-s90")[0] == "p3-s90 **FAIL**"
    # summary: geometric means over records where both were timed (p3 failed: excluded)
    s1 = _row(md, "| spmm_dl | 1 |")
    assert s1[2] == "3"
    assert s1[3:7] == ["6.00×", "2.50×", f"{math.sqrt(5 * 9):.2f}×", f"{math.sqrt(12):.2f}×"]
    assert s1[7] == "4.30×"
    assert "cuSPARSE not importable" in md and "max relative error 1.0e-01" in md
    assert "SYNTHETIC" in md


def test_report_writes_a_png(synthetic, tmp_path):
    png = tmp_path / "plot.png"
    md, out = report.write_report(synthetic, md=tmp_path / "t.md", png=png)
    assert out == png and md.exists()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_plots_hundreds_of_records(tmp_path):
    recs = [_rec(f"rn50/0.9/l{i}", suite="dlmc-rn50", sparsert=1.0 + i % 7, cublas=5.0)
            for i in range(120)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"records": recs}))
    md, png = report.write_report(path)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert md.read_text().count("| rn50/0.9/l") == 120


def test_report_cli(synthetic, tmp_path, capsys):
    assert report.main([str(synthetic), "--md", str(tmp_path / "a.md"), "--png", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.md").exists() and (tmp_path / "a.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert report.main([str(bad)]) == 2
    assert "not a benchmark results file" in capsys.readouterr().err


# -- harness pieces that need no GPU ----------------------------------------------------------
def test_fp32_peak_formula():
    # H100 SXM: 132 SMs x 1.98 GHz x 128 FMA/clk/SM x 2 FLOP/FMA
    assert common.fp32_peak_flops(132, 1.98e9, 128) == pytest.approx(66.9e12, rel=1e-3)
    assert common.fma_per_clk_per_sm(9, 0) == 128
    assert common.fma_per_clk_per_sm(7, 5) == 64  # T4
    assert common.fma_per_clk_per_sm(8, 0) == 64  # A100


def test_floor_is_the_larger_of_compute_and_memory():
    f = common.spmm_floor(nnz=1000, m=100, k_active=50, n=10, peak_flops=1e12, dram_bps=1e9)
    assert f.compute_us == pytest.approx(2 * 1000 * 10 / 1e12 * 1e6)
    assert f.memory_us == pytest.approx(4 * 10 * (50 + 100) / 1e9 * 1e6)
    assert f.floor_us == f.memory_us and f.bound == "memory"
    g = common.spmm_floor(nnz=10**6, m=10, k_active=10, n=10, peak_flops=1e9, dram_bps=1e12)
    assert g.bound == "compute" and g.floor_us == g.compute_us


def test_max_rel_err_catches_wrong_and_nan():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert spmm.max_rel_err(ref.copy(), ref) == 0.0
    bad = ref.copy()
    bad[1, 2] += 1.1
    assert spmm.max_rel_err(bad, ref) == pytest.approx(0.1)
    bad[0, 0] = np.nan
    assert spmm.max_rel_err(bad, ref) == math.inf
    assert spmm.max_rel_err(ref[:2], ref) == math.inf


def test_problem_sets(shared):
    probs = spmm.read_problems(shared / "problems" / "spmm_dl.csv")
    assert len(probs) == 31 and len({p.name for p in probs}) == 31
    p1 = next(p for p in probs if p.name == "p1-s90")
    assert (p1.m, p1.k, p1.n, p1.sparsity, p1.reported_t4) == (64, 256, 3136, 0.9, 4.3)
    dl = spmm.read_dlmc(shared, "all")
    assert len(dl) == 301 and len({p.name for p in dl}) == 301
    assert {p.n for p in dl if p.suite == "dlmc-transformer"} == {256}
    fc = next(p for p in dl if p.name == "rn50/0.9/final_dense")
    assert (fc.m, fc.k) == (1000, 2048)
    conv = next(p for p in dl if p.name == "rn50/0.9/bottleneck_1_block_group1_1_1")
    assert conv.n == 3136
    assert len(spmm.select(dl, only="^rn50/", sparsity=[0.95], limit=None)) == 54
    assert len(spmm.select(probs, only=None, sparsity=None, limit=5)) == 5


def test_weights_are_deterministic_with_exact_sparsity(shared):
    p = next(p for p in spmm.read_problems(shared / "problems" / "spmm_dl.csv") if p.name == "p3-s95")
    w = spmm.make_weight(p, shared=shared)
    assert w.shape == (128, 512) and w.nnz == round(0.05 * 128 * 512)
    assert spmm.make_weight(p, shared=shared).digest() == w.digest()
    assert spmm.make_weight(p, shared=shared, seed=1).digest() != w.digest()
    d = spmm.read_dlmc(shared, "transformer")[0]
    wd = spmm.make_weight(d, shared=shared)
    assert wd.shape == (d.m, d.k) and 1 - wd.nnz / (d.m * d.k) == pytest.approx(d.sparsity)


def test_cublas_is_always_the_reference():
    args = spmm.parse_args(["--methods", "sparsert", "torch_csr"])
    assert args.methods == ["sparsert", "cublas", "torch_csr"]


def test_compile_only_fills_the_cache(shared, capsys):
    # the smallest problem (64 x 32 at 90%): one fast NVRTC compile, no GPU needed
    argv = ["--compile-only", "--arch", ARCH, "--only", "^p12-s90$", "--batches", "1"]
    assert spmm.main(argv) == 0
    assert "p12-s90" in capsys.readouterr().out
    assert spmm.main(argv) == 0
    assert "1 slab(s), 1 cached" in capsys.readouterr().out


@pytest.mark.skipif(gpu_available(), reason="checks the no-GPU message")
def test_benchmark_without_gpu_says_so(shared, capsys):
    assert spmm.main(["--only", "^p12-s90$", "--batches", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(data_dir() is None, reason="benchmark data not found: set SPARSERT_DATA or build the "
                                               "kit (make gpu-kit); looked in ../shared, /work/shared, .gpu/data")
def test_benchmark_end_to_end_on_gpu(tmp_path):
    rc = spmm.main(["--only", "^p12-s90$", "--batches", "1", "--repeat", "5", "--warmup", "2",
                    "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("spmm-*.json")
    data = json.loads(path.read_text())
    (rec,) = data["records"]
    assert rec["sparsert_us"] > 0 and rec["cublas_us"] > 0
    assert rec["max_rel_err"] < 1e-4
    assert data["peaks"]["fp32_flops"] > 0 and data["peaks"]["dram_bytes_per_s"] > 0
    assert path.with_suffix(".md").exists() and path.with_suffix(".png").exists()


def test_slab_benchmark_variants_and_no_gpu_message(capsys):
    from benchmarks import slabs
    from sparsert.ir.plan import split_slabs

    got = slabs.budgets(100_000, [1, 2, 4])
    assert [b for _, b in got] == [100_000, 50_000, 25_000, slabs.SMALL_SLAB_NNZ]
    assert len(split_slabs([12_500] * 8, got[2][1])) == 4  # k even slabs where blocks allow
    assert slabs.budgets(1000, [1, 2]) == [("1 slab(s)", 1000), ("2 slab(s)", 500)]
    with pytest.raises(SystemExit):
        slabs.parse_args(["--slabs", "0"])
    if not gpu_available():
        assert slabs.main(["--sizes", "64"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_slab_benchmark_end_to_end_on_gpu(tmp_path):
    from benchmarks import slabs

    assert slabs.main(["--sizes", "256", "--slabs", "1", "2", "--repeat", "5", "--warmup", "2",
                       "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("slabs-*.json")
    (rec,) = json.loads(path.read_text())["records"]
    assert [v["slabs"] for v in rec["variants"]] == [1, 2]
    assert all(v["bit_equal_to_first"] and v["us"] > 0 for v in rec["variants"])
