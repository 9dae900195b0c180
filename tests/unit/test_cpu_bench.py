"""Fast checks of the CPU benchmark harness (benchmarks/cpu_baselines.py, benchmarks/cpu.py): the
registry, the interleaving, record fields, the ratio tables on synthetic records, and the
sparsert-cpu method against float64 on a tiny problem. No timing assertions, no long runs."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("scipy")
from benchmarks import cpu as bench  # noqa: E402
from benchmarks import cpu_baselines as cb  # noqa: E402

SMALL = cb.Problem(name="small", M=48, K=72, N=40, sparsity=0.9, family="test")
# cheap, in-process methods (the child-process and DeepSparse ones are checked where marked)
FAST = ("torch_mm", "onednn_packed", "onednn_packed_nt", "mkl_packed_nt", "torch_sparse_csr", "scipy_csr",
        "onnxruntime")


@pytest.fixture(scope="module")
def small():
    A, _ = cb.make_weight(SMALL, seed=3, pattern="random")
    B = cb.make_inputs(SMALL.K, SMALL.N, 2, seed=4)
    bias = np.random.default_rng(5).standard_normal(SMALL.M).astype(np.float32)
    return A, B, bias


def _cpu_target():
    ok, why = bench._sparsert_ok()
    if not ok:
        pytest.skip(f"sparsert CPU target unavailable: {why}")


# ---- registry ---------------------------------------------------------------------------------
def test_registry_has_the_issue_baselines():
    want = {"numpy_dense", "torch_mm", "onednn_packed", "mkl_packed_nt", "torch_sparse_csr", "scipy_csr",
            "onnxruntime", "deepsparse", "deepsparse_nt"}
    assert want <= set(cb.METHODS)
    assert {m for m in bench.DEFAULT_METHODS} <= set(cb.METHODS)
    for name in ("torch_sparse_csr", "scipy_csr", "deepsparse_nt"):
        assert cb.METHODS[name].kind == "sparse"
    for name in ("numpy_dense", "torch_mm", "onednn_packed", "onnxruntime"):
        assert cb.METHODS[name].kind == "dense"


def test_register_sparsert():
    bench.register_sparsert()
    m = cb.METHODS[bench.SPARSERT]
    assert m.kind == "sparse"
    ok, why = m.available()
    assert isinstance(ok, bool) and isinstance(why, str)


def test_deepsparse_missing_without_env(monkeypatch):
    monkeypatch.delenv(cb.DEEPSPARSE_PYTHON_ENV, raising=False)
    try:
        import deepsparse  # noqa: F401
        pytest.skip("deepsparse importable here")
    except ImportError:
        pass
    ok, why = cb.METHODS["deepsparse_nt"].available()
    assert not ok and "missing" in why and cb.DEEPSPARSE_PYTHON_ENV in why


def test_data_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSERT_DATA", str(tmp_path))
    assert cb.data_root() == tmp_path


# ---- methods agree with float64 ---------------------------------------------------------------
@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("epilogue", ["plain", "bias_relu"])
def test_method_matches_float64(name, epilogue, small):
    ok, why = cb.METHODS[name].available()
    if not ok:
        pytest.skip(f"{name} unavailable: {why}")
    A, B, bias = small
    kw = dict(bias=bias, relu=True) if epilogue == "bias_relu" else {}
    fn = cb.make_method(name, A, SMALL.N, 1, **kw)
    for b in B:  # two different inputs: both right
        err = cb.check_outputs({name: fn}, A, b, **kw)[name]
        assert err < 1e-5, f"{name}: max rel err {err}"


@pytest.mark.parametrize("epilogue", ["plain", "bias_relu"])
def test_sparsert_method_matches_float64(epilogue, small):
    _cpu_target()
    bench.register_sparsert()
    A, B, bias = small
    kw = dict(bias=bias, relu=True) if epilogue == "bias_relu" else {}
    for threads in (1, 2):
        fn = cb.make_method(bench.SPARSERT, A, SMALL.N, threads, **kw)
        assert fn.info["kernel"] in ("avx2", "avx512") and fn.info["nnz"] == A.nnz
        assert fn.info["compile_wall_s"] > 0 and fn.info["nnz_per_s"] > 0
        for b in B:
            err = cb.check_outputs({"s": fn}, A, b, **kw)["s"]
            assert err < 1e-5, err


def test_numpy_dense_child_drops_blas_env(monkeypatch, small):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    A, B, _ = small
    fn = cb.make_method("numpy_dense", A, SMALL.N, 1)
    try:
        assert fn.info["child_env"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
        assert cb.check_outputs({"n": fn}, A, B[0])["n"] < 1e-5
        fn.load_inputs(B)
        assert fn.time_once(1) > 0
    finally:
        fn.close()


# ---- timing machinery -------------------------------------------------------------------------
def test_schedule_round_robin():
    names = ["a", "b", "c"]
    sch = cb.schedule(names, rounds=6, n_sets=4)
    for r, rnd in enumerate(sch):
        assert sorted(n for n, _ in rnd) == names           # every method once per round
        assert rnd[0][0] == names[r % 3]                    # start rotates
    flat = [i for rnd in sch for _, i in rnd]
    assert all(x != y for x, y in zip(flat, flat[1:]))      # no two consecutive calls share a B


def test_time_side_by_side_really_interleaves():
    log = []

    def mk(n):
        def f(B):
            log.append((n, int(B[0, 0])))
            return B
        return f
    B_sets = [np.full((2, 2), i, np.float32) for i in range(5)]
    names = ["x", "y", "z", "w"]
    st = cb.time_side_by_side({n: mk(n) for n in names}, B_sets, runs=7, warmup=2)
    assert log == [(n, i) for rnd in cb.schedule(names, 9, 5) for n, i in rnd]
    for n in names:
        s = st[n]
        assert s["n"] == 7 and len(s["samples_us"]) == 7
        assert s["min_us"] <= s["p25_us"] <= s["median_us"] <= s["p75_us"] <= s["max_us"]


def test_stall_stays_with_its_method():
    calls = {"n": 0}

    def slow(B):
        calls["n"] += 1
        if calls["n"] == 5:
            time.sleep(0.05)
        return B

    st = cb.time_side_by_side({"s": slow, "f": lambda B: B}, [np.zeros((1, 1), np.float32)] * 3, runs=8, warmup=1)
    assert st["s"]["max_us"] >= 40_000 and st["s"]["stalls"] >= 1
    assert st["s"]["median_us"] < 20_000 and st["f"]["max_us"] < 20_000


def test_adapt_input_output_hooks(small):
    """Convolution methods take the image a B came from and hand back C's layout."""
    A, B, _ = small
    seen = []

    def fn(x):
        seen.append(x)
        return (A @ B[0]).reshape(1, -1)            # a different layout of the right answer
    fn.adapt_input = lambda b: ("image", id(b))
    fn.adapt_output = lambda C: np.asarray(C).reshape(A.shape[0], -1)
    assert cb.check_outputs({"c": fn}, A, B[0])["c"] < 1e-5
    assert seen == [("image", id(B[0]))]


# ---- records and tables -----------------------------------------------------------------------
def test_records_have_required_fields(small):
    _cpu_target()
    bench.register_sparsert()
    recs = cb.run_problem(SMALL, ["scipy_csr", "torch_mm", bench.SPARSERT], 1, runs=3, warmup=1, pattern="random",
                          peak={1: {"gflops": 100.0}}, base_facts={"machine": cb.machine_facts(),
                                                                   "versions": cb.versions()}, log=lambda *a: None)
    assert {r["method"] for r in recs} == {"scipy_csr", "torch_mm", bench.SPARSERT}
    for r in recs:
        missing = [f for f in cb.RECORD_FIELDS if f not in r]
        assert not missing, missing
        assert r["min_us"] <= r["median_us"] and r["max_rel_err"] < 1e-5
        assert r["gflops_sparse"] == pytest.approx(2 * r["nnz"] * r["N"] / (r["median_us"] * 1e3))
        assert len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3
    s = next(r for r in recs if r["method"] == bench.SPARSERT)
    assert s["info"]["kernel"] in ("avx2", "avx512") and s["info"]["nnz_per_s"] > 0


def _rec(problem, method, kind, us, threads=1, sparsity=0.9, N=256, nnz=1000):
    return dict(problem=problem, family="f", problem_id="1", M=64, K=64, N=N, sparsity=sparsity, nnz=nnz, count=1,
                pattern="p", method=method, kind=kind, threads=threads, median_us=us, min_us=us * 0.9,
                p25_us=us * 0.95, p75_us=us * 1.05, max_us=us * 1.2, runs=15, stalls=0,
                gflops_sparse=2 * nnz * N / (us * 1e3), pct_peak=50.0, info={"library": method},
                loadavg_before=[0.5, 0.5, 0.5], loadavg_after=[0.5, 0.5, 0.5])


def _synthetic():
    recs = []
    for i, sp in enumerate((0.9, 0.95)):
        p = f"spmm_dl/{i + 1}@{sp:.2f}"
        for t, scale in ((1, 1.0), (2, 0.5)):
            recs += [_rec(p, bench.SPARSERT, "sparse", 100 * scale, t, sp),
                     _rec(p, "onednn_packed", "dense", 800 * scale, t, sp),
                     _rec(p, "numpy_dense", "dense", 600 * scale, t, sp),
                     _rec(p, "torch_sparse_csr", "sparse", 500 * scale, t, sp),
                     _rec(p, "deepsparse_nt", "sparse", 200 * scale, t, sp),
                     _rec(p, "scipy_csr", "sparse", 1000 * scale, t, sp)]
    return recs


def test_ratios_on_synthetic_records():
    g = bench.group(_synthetic())[("spmm_dl/1@0.90", 1)]
    q = bench.ratios(g)
    assert q["fastest_dense"] == "numpy_dense"
    assert q["vs_dense"] == pytest.approx(6.0)
    assert q["vs_mkl_csr"] == pytest.approx(5.0)
    assert q["vs_deepsparse"] == pytest.approx(2.0)
    assert q["vs_scipy"] == pytest.approx(10.0)
    assert bench.ratios({"x": g["numpy_dense"]}) is None
    assert bench.geomean([2, 8]) == pytest.approx(4.0) and math.isnan(bench.geomean([]))


def test_tables_on_synthetic_records():
    recs = _synthetic()
    tab = bench.speedup_table(recs, 1)
    assert "spmm_dl/1@0.90" in tab and "numpy_dense (600)" in tab and "| 6.00 |" in tab
    summ = bench.target_summary(recs)
    assert "| 1 | 0.90 | 1 | 6.00 (>= 6)" in summ and "| 1 | 0.95 | 1 | 6.00 (>= 10)" in summ
    sc = bench.scaling_table([r for r in recs] + [_rec("big@0.90", bench.SPARSERT, "sparse", 400, 1),
                                                  _rec("big@0.90", bench.SPARSERT, "sparse", 210, 2)])
    assert "big@0.90" in sc and "1.90" in sc
    md = cb.markdown_table(recs, reference=bench.SPARSERT)
    assert "numpy_dense/sparsert" in md


def test_load_verdict_flags_a_loaded_machine(monkeypatch):
    recs = [dict(_rec("p", bench.SPARSERT, "sparse", 1.0), loadavg_before=[8.0, 8, 8])]
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert "not meaningful" in bench.load_verdict(recs)
    recs[0]["loadavg_before"] = [0.1, 0.1, 0.1]
    assert "not meaningful" not in bench.load_verdict(recs)


def test_plot_on_synthetic_records(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "x.png"
    bench.plot(_synthetic(), out, [1, 2], "t")
    assert out.stat().st_size > 1000


# ---- data (where present) ---------------------------------------------------------------------
def test_problem_lists_if_data_present():
    try:
        root = cb.data_root()
    except FileNotFoundError:
        pytest.skip("no data root (SPARSERT_DATA)")
    assert len(cb.load_spmm_problems(root)) == 31
    assert len(cb.load_conv3x3_problems(root)) == 8
    picked = bench.dlmc_problems(30, root)
    assert len(picked) == 30 and len({p.name for p in picked}) == 30
    assert {p.sparsity for p in picked} == {0.9, 0.95}
    A, _ = bench.dlmc_weight(picked[0], root=root)
    assert A.shape == (picked[0].M, picked[0].K) and A.dtype == np.float32
    M, K, indptr, indices = cb.read_smtx(root / picked[0].extra["path"])
    assert indptr[-1] == indices.size and indices.max() < K


def test_jsonl_meta_round_trip(tmp_path):
    recs = _synthetic()
    for r in recs:
        r["machine"], r["versions"] = {"cpu_model": "x"}, {"numpy": "2"}
    path = tmp_path / "cpu-x.jsonl"
    bench.write_jsonl(path, recs, meta=dict(machine={"cpu_model": "x"}, versions={"numpy": "2"}, loadavg={}))
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs) + 1 and '"record":"meta"' in lines[0]
    assert '"machine"' not in lines[1] and '"info"' not in lines[2]       # stored once, in the meta line
    back, meta = bench.read_jsonl(path)
    assert meta["method_info"]["numpy_dense"] == {"library": "numpy_dense"}
    assert [r["median_us"] for r in back] == [r["median_us"] for r in recs]
    assert all(r["machine"] == {"cpu_model": "x"} and r["info"] for r in back)
