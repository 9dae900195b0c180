"""The GPU autotuner in half precision (issue 15), without a GPU: its reference inputs are values
of the kernel's dtype, candidates run in that dtype (on the CPU: run_host) and pass within their
mode's tolerance (check.tolerance, the README's error bound), a wrong kernel is still refused, the
GPU timer's operands are in the dtype, and half and float32 tunings are stored apart. The timers
here are fakes (functions of the schedule), not measurements."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from half_model import error_bound as model_bound

import sparsert
from sparsert import tune
from sparsert.check import (
    DEFAULT_RTOL,
    error_bound,
    relative_error,
    spmm_reference,
    tolerance,
)
from sparsert.check.error import HALF_TINY, UNIT_ROUNDOFF, gamma
from sparsert.errors import ToolchainError
from sparsert.frontend.weights import load_weight
from sparsert.ir.precision import from_half_bits, round_to
from sparsert.options import KernelOptions
from sparsert.tune import operands

ARCH = "sm_90"
MODES = [("float16", None), ("bfloat16", None), ("float16", "float16"), ("bfloat16", "bfloat16")]
MODE_IDS = ["f16-acc32", "bf16-acc32", "f16-packed", "bf16-packed"]


def _weight(m=16, k=32, density=0.3, seed=0):
    a = sp.random(m, k, density=density, random_state=seed, format="csr", dtype=np.float32)
    a.data[:] = np.random.default_rng(seed).standard_normal(a.nnz).astype(np.float32) / 3 + 0.01
    return load_weight(a)


def _bias(m=16):
    return (np.linspace(-1, 1, m) + 0.1).astype(np.float32)  # 0.1 steps: not exact in half


class FakeTimer:
    """Not a measurement: cheaper with more rows per block and wider vectors."""

    name = "fake"

    def __init__(self):
        self.dtypes = []

    def __call__(self, kernel) -> float:
        s = kernel.schedule
        self.dtypes.append(s.dtype)
        return 100.0 / (s.rows_per_block * s.vec) + s.groups + s.threads_x / 64 + s.prefetch / 100


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for the module (the emulator's precompiled shim is built once); every test
    searches with force=True or its own weight, so no record answers another test."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("SPARSERT_CACHE_DIR", str(path))
    yield path
    mp.undo()


# -- the tolerance: the README's bound, in one place ------------------------------------------
def test_unit_roundoffs_are_the_formats():
    assert UNIT_ROUNDOFF == {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
    for dtype, u in UNIT_ROUNDOFF.items():  # u is half the gap above 1: 1 + u ties to 1, 1 + 2u exists
        x = np.array([1 + u, 1 + 2 * u], np.float64).astype(np.float32)  # float32 rounds here itself
        assert round_to(x, dtype).tolist() == [1.0, 1 + 2 * u]
    for dtype in HALF_TINY:  # half the smallest subnormal (bits 0x0001)
        assert HALF_TINY[dtype] == float(from_half_bits(np.array([1], np.uint16), dtype)[0]) / 2


def test_error_bound_is_the_tests_elementwise_bound():
    """Without bias or residual the package's (tol, tiny) is exactly half_model.error_bound (the
    bound test_half_numerics checks the kernels against), with them it lies above it."""
    w = _weight(seed=1)
    rng = np.random.default_rng(0)
    for dtype, acc in MODES:
        for bias in (None, _bias()):
            kernel = sparsert.compile(w, bias=bias, options=KernelOptions(
                n=8, dtype=dtype, accumulate=acc, arch=ARCH, groups=2, residual=bias is not None))
            s = kernel.schedule
            a = s.to_csr()
            bv = round_to(rng.standard_normal((1, 32, 8)).astype(np.float32), dtype).astype(np.float64)
            rv = None if bias is None else round_to(rng.standard_normal((1, 16, 8)), dtype).astype(np.float64)
            b64 = None if bias is None else np.array(s.bias_bits, np.uint32).view(np.float32).astype(np.float64)
            want = model_bound(s, a, bv, b64, rv)
            terms = int(np.diff(a.indptr).max()) + s.groups
            tol, tiny = error_bound(dtype, acc, terms)
            scale = np.einsum("mk,zkn->zmn", np.abs(a.toarray()).astype(np.float64), np.abs(bv))
            if bias is None:
                assert np.allclose(tol * scale + tiny, want, rtol=1e-12, atol=0)
            else:
                scale = scale + np.abs(b64)[None, :, None] + np.abs(rv)
                assert np.all(tol * scale + tiny >= want)


def test_tolerance_values_are_what_the_readme_says():
    # float32 accumulation: about one rounding of the dtype whatever the row length
    for dtype in ("float16", "bfloat16"):
        u = UNIT_ROUNDOFF[dtype]
        tol, _ = error_bound(dtype, None, 100)
        assert u < tol < 1.02 * u  # + gamma_102 over float32: 6e-6
        assert error_bound(dtype, "float32", 100) == (tol, error_bound(dtype, None, 100)[1])
    # packed half: n u of the format, "at 100 nonzeros per row up to 5% (float16) or 39% (bfloat16)"
    # to first order; gamma_n = n u / (1 - n u) exactly, plus the store's rounding
    f16, _ = error_bound("float16", "float16", 100)
    assert 0.0488 < 100 * 2.0**-11 < f16 < 0.0525
    g = 100 * 2.0**-8 / (1 - 100 * 2.0**-8)
    bf16, tiny = error_bound("bfloat16", "bfloat16", 100)
    assert g < bf16 < g + 2 * 2.0**-8 * (1 + g)
    assert tiny > 100 * 2.0**-134  # one subnormal step per operation
    assert error_bound("bfloat16", "bfloat16", 10)[0] < bf16 < error_bound("bfloat16", "bfloat16", 200)[0]
    # where n u >= 1 (bfloat16, 256+ terms) gamma_n is undefined: (1 + u)^n - 1, still a bound
    big, _ = error_bound("bfloat16", "bfloat16", 300)
    assert math.isfinite(big) and big > math.expm1(300 * math.log1p(2.0**-8)) > 1
    assert gamma(300, 2.0**-8) == pytest.approx((1 + 2.0**-8) ** 300 - 1)
    # float32 keeps its fixed acceptance; half: the bound in the normwise measure
    assert tolerance("float32", None, 50, s_max=9.0, c_max=3.0) == DEFAULT_RTOL
    tol, tiny = error_bound("float16", None, 50)
    assert tolerance("float16", None, 50, s_max=9.0, c_max=3.0) == pytest.approx((tol * 9 + tiny) / 3)
    assert tolerance("float16", None, 50, s_max=9.0, c_max=0.0) == pytest.approx(tol * 9 + tiny)


# -- the reference -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_reference_inputs_are_values_of_the_dtype(mode):
    dtype, acc = mode
    w, bias = _weight(seed=2), _bias()
    opts = KernelOptions(n=8, dtype=dtype, accumulate=acc, arch=ARCH, relu=True, residual=True)
    ref = tune.Reference.build(w, opts, bias)
    for x in (ref.b, ref.residual):
        assert x.dtype == np.float32 and np.array_equal(round_to(x, dtype), x)
        assert np.array_equal(operands.host_values(operands.host_array(x, dtype), dtype), x)
    assert len(np.unique(ref.b)) > 50, "drawn, not degenerate"
    want = {"float16": np.float16, "bfloat16": np.uint16}[dtype]
    assert operands.host_array(ref.b, dtype).dtype == want
    # expected: from the weights and bias the compiled kernel really holds
    s = sparsert.compile(w, bias=bias, options=opts).schedule
    held_bias = np.array(s.bias_bits, np.uint32).view(np.float32)
    held = spmm_reference(s.to_csr(), ref.b, held_bias, residual=ref.residual, relu=True)
    assert np.allclose(ref.expected, held, rtol=1e-12, atol=1e-12)
    # ... which differ from the unrounded ones: the rounding is really accounted for
    raw = spmm_reference(w.matrix, ref.b, bias, residual=ref.residual, relu=True)
    assert relative_error(raw, ref.expected) > 1e-6
    assert ref.row_nnz == int(np.diff(s.to_csr().indptr).max())
    assert ref.tolerance(1) < ref.tolerance(4) < 1, "partial sums of split K count in the bound"


# -- verification and the search, on the CPU ---------------------------------------------------
class Corrupted:
    """A kernel whose result is off by `delta` at one element (rounded back into its dtype)."""

    def __init__(self, kernel, delta: float):
        self.kernel, self.schedule, self.delta = kernel, kernel.schedule, delta

    def run_host(self, B, *, residual=None):
        dtype = self.schedule.dtype
        got = operands.host_values(self.kernel.run_host(B, residual=residual), dtype)
        got[3, 5] += self.delta
        return operands.host_array(got.astype(np.float32), dtype)


def _case(mode):
    """One problem per mode for the host runs: the verification and the search share its default
    candidate, so the emulator builds it once (the module's cache)."""
    dtype, acc = mode
    return _weight(seed=3), _bias(), KernelOptions(n=8, dtype=dtype, accumulate=acc, arch=ARCH, residual=True)


@pytest.mark.cxx
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_verification_catches_a_wrong_half_kernel(cache_dir, mode):
    dtype, acc = mode
    w, bias, opts = _case(mode)
    ref = tune.Reference.build(w, opts, bias)
    kernel = sparsert.compile(w, bias=bias, options=opts)
    tol = ref.tolerance(kernel.schedule.groups)
    err = tune.verify_on_host(kernel, ref)
    assert 1e-5 < err <= tol, "a correct half kernel: half rounding seen, within the bound"
    c_max = float(np.abs(ref.expected).max())
    assert tune.verify_on_host(Corrupted(kernel, 3 * tol * c_max), ref) > tol
    assert tune.verify_on_host(Corrupted(kernel, math.nan), ref) == math.inf
    if acc is None:  # float32 accumulation: even one weight missing is far outside the bound
        a = w.matrix.copy()
        a.data[np.argmax(np.abs(a.data))] = 0
        a.eliminate_zeros()
        assert tune.verify_on_host(sparsert.compile(a, bias=bias, options=opts), ref) > tol
        # and the float32 reference of before would have refused a correct bfloat16 kernel
        if dtype == "bfloat16":
            assert err > DEFAULT_RTOL


@pytest.mark.cxx
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_half_tune_runs_end_to_end_on_the_host(cache_dir, mode):
    dtype, acc = mode
    w, bias, opts = _case(mode)
    fake = FakeTimer()
    best = tune.tuned_options(w, opts, bias=bias, timer=fake, budget=2, force=True,
                              compile_fn=sparsert.compile)  # verify: run_host, in the dtype
    assert (best.dtype, best.accumulate) == (dtype, acc)
    assert fake.dtypes and set(fake.dtypes) == {dtype}
    key = tune.tune_key(w.digest(), opts, bias=True)
    assert (key["dtype"], key["accumulate"]) == (dtype, acc or "float32")
    entry = json.loads(tune.tune_path(key).read_text())
    ref = tune.Reference.build(w, opts, bias)
    assert len(entry["trials"]) == 2
    for t in entry["trials"]:
        assert t["status"] == "ok", t
        assert 1e-5 < t["max_rel_err"] <= ref.tolerance(t["params"]["groups"])
        if acc:
            assert t["params"]["vec"] % 2 == 0, "packed half: only even vec is searched"
    assert entry["best"] == {f: getattr(best, f) for f in tune.SCHEDULE_FIELDS}


@pytest.mark.cxx
def test_wrong_half_candidates_are_never_chosen(cache_dir):
    """Through the search: the fastest packed bfloat16 candidates (few rows per block) compute a
    result just past the bound; they are refused, untimed, and the best is a correct one."""
    w, bias, opts = _case(("bfloat16", "bfloat16"))
    tx, vec, groups, rows, prefetch = tune.default_params(16, 32, w.nnz, opts)
    assert rows == 16
    # only rows_per_block searched: 16 (the start, built by the verification test already), 8, 4
    opts = replace(opts, threads_x=tx, vec=vec, groups=groups, prefetch=prefetch)
    ref = tune.Reference.build(w, opts, bias)

    def verify(kernel, r):
        bad = kernel.schedule.rows_per_block <= 4
        delta = 3 * r.tolerance(kernel.schedule.groups) * float(np.abs(r.expected).max())
        return tune.verify_on_host(Corrupted(kernel, delta) if bad else kernel, r)

    best = tune.tuned_options(w, opts, bias=bias, timer=lambda k: float(k.schedule.rows_per_block),
                              verify=verify, budget=3, force=True, compile_fn=sparsert.compile)
    assert best.rows_per_block == 8
    entry = json.loads(tune.tune_path(tune.tune_key(w.digest(), opts, bias=True)).read_text())
    wrong = [t for t in entry["trials"] if t["status"] == "wrong"]
    assert wrong and all(t["time_us"] is None for t in wrong)
    assert all(t["max_rel_err"] > ref.tolerance(t["params"]["groups"]) for t in wrong)


def test_packed_half_searches_even_vec_only():
    """HFMA2 does two columns at once: odd vec would be a wasted compile-error trial each."""
    for dtype, acc in MODES:
        opts = KernelOptions(n=24, dtype=dtype, accumulate=acc, arch=ARCH)
        vecs = {p[1] for p in tune.search_space(64, 64, opts)}
        assert vecs == ({2, 4} if acc else {1, 2, 4})


# -- the GPU timer's operands (a NumPy stand-in for CuPy: no GPU here) ---------------------------
def _fake_cupy(l2: int, free: int):
    class Generator:
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype=np.float32):
            return self.rng.standard_normal(shape).astype(dtype)

    return types.SimpleNamespace(
        float32=np.float32, float16=np.float16, asarray=np.asarray, empty=np.empty,
        asnumpy=np.asarray, random=types.SimpleNamespace(default_rng=Generator),
        cuda=types.SimpleNamespace(
            Device=lambda *a: types.SimpleNamespace(id=0, attributes={"L2CacheSize": l2}),
            runtime=types.SimpleNamespace(memGetInfo=lambda: (free, free))))


@pytest.mark.parametrize("residual", [False, True])
def test_gpu_timer_operands_are_in_the_kernel_dtype(monkeypatch, residual):
    w = _weight(m=64, k=96, seed=6)
    refs = {dt: tune.Reference.build(w, KernelOptions(n=32, dtype=dt, residual=residual), None)
            for dt in ("float32", "float16")}
    per16 = 2 * (96 * 32 + 64 * 32 * (2 if residual else 1))
    assert tune.set_bytes(refs["float16"]) == per16 and tune.set_bytes(refs["float32"]) == 2 * per16
    l2 = 40 * per16  # the float32 sets need about half as many copies to sweep past L2
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(l2, 1 << 40))
    calls = []

    def fake_measure(launch, **kw):
        for i in range(5):
            launch(i)
        return tune.Measurement(median_us=1.0, min_us=1.0, samples=5, inner=1, host_bound=False)

    monkeypatch.setattr(tune.measure, "measure_us", fake_measure)
    timers = {dt: tune.GpuTimer(ref) for dt, ref in refs.items()}
    for dt, timer in timers.items():
        sets = tune.rotation_count(tune.set_bytes(refs[dt]), l2, (1 << 40) // 4)
        assert len(timer.b) == len(timer.c) == sets
        assert all(x.dtype == np.dtype(dt) and x.shape == (96, 32) for x in timer.b)
        assert all(x.dtype == np.dtype(dt) and x.shape == (64, 32) for x in timer.c)
        assert (timer.r is not None) == residual
        assert all(x.dtype == np.dtype(dt) for x in timer.r or [])
    assert len(timers["float16"].b) > len(timers["float32"].b)
    kernel = lambda b, out=None, residual=None: calls.append((b, out, residual))
    assert timers["float16"](kernel) == 1.0
    assert [c[0].dtype for c in calls] == [np.float16] * 5
    assert calls[0][0] is not calls[1][0], "each launch takes the next rotation set"


def test_bfloat16_on_the_gpu_without_torch_cuda_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    ref = tune.Reference.build(_weight(seed=7), KernelOptions(n=8, dtype="bfloat16"), None)
    for call in (lambda: tune.GpuTimer(ref), lambda: tune.verify_on_gpu(object(), ref)):
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1 << 20, 1 << 30))
        with pytest.raises(ToolchainError, match="torch CUDA tensors") as err:
            call()
        assert "\n" not in str(err.value)


# -- the store and the command line -------------------------------------------------------------
def _record(key) -> dict:
    return json.loads(tune.tune_path(key).read_text())


def test_half_and_float32_records_never_collide(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = _weight(seed=8)
    ok = lambda kernel, ref: 0.0  # search logic only: no run here
    pins = {"n": 8, "arch": ARCH, "threads_x": 8, "vec": 2, "groups": 1, "prefetch": 8}  # rows searched
    f32, f16 = KernelOptions(**pins), KernelOptions(**pins, dtype="float16")
    best32 = tune.tuned_options(w, f32, timer=lambda k: float(k.schedule.rows_per_block), verify=ok,
                                budget=3, compile_fn=sparsert.compile)
    best16 = tune.tuned_options(w, f16, timer=lambda k: 1.0 / k.schedule.rows_per_block, verify=ok,
                                budget=3, compile_fn=sparsert.compile)
    k32, k16 = (tune.tune_key(w.digest(), o, bias=False) for o in (f32, f16))
    assert tune.tune_path(k32) != tune.tune_path(k16)
    assert best32.rows_per_block < best16.rows_per_block, "opposite timers, opposite answers"
    assert tune.load_stored(k32, f32)[0] == best32 and tune.load_stored(k16, f16)[0] == best16
    assert _record(k32)["key"] == k32 and _record(k16)["key"] == k16
    # accumulate=None and 'float32' are one kernel, one record; packed half is another
    same = KernelOptions(**pins, dtype="float16", accumulate="float32")
    assert tune.tune_key(w.digest(), same, bias=False) == k16
    assert tune.load_stored(k16, same)[0] == replace(best16, accumulate="float32")
    packed = KernelOptions(**pins, dtype="float16", accumulate="float16")
    assert tune.load_stored(tune.tune_key(w.digest(), packed, bias=False), packed) is None


def test_cli_tunes_half_and_keeps_it_apart(tmp_path, monkeypatch, capsys):
    from sparsert.cli import main

    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = _weight(seed=9)
    path = tmp_path / "w.npy"
    np.save(path, w.matrix.toarray())
    half = ["--dtype", "bfloat16", "--accumulate", "bfloat16"]
    monkeypatch.setattr(tune, "_gpu_arch", lambda: None)
    assert main(["tune", str(path), "--n", "8", "--arch", ARCH, *half]) == 3
    err = capsys.readouterr().err
    assert "tuning needs a GPU" in err and "bfloat16 (packed bfloat16)" in err
    opts = KernelOptions(n=8, arch=ARCH, dtype="bfloat16", accumulate="bfloat16")
    best = tune.tuned_options(load_weight(path), opts, timer=lambda k: 1.0 / k.schedule.vec,
                              verify=lambda k, r: 0.0, budget=3, compile_fn=sparsert.compile)
    assert main(["tune", str(path), "--n", "8", "--arch", ARCH, *half]) == 0
    out = capsys.readouterr()
    assert "stored tuning reused" in out.err
    assert f"--threads-x {best.threads_x} --vec {best.vec}" in out.out
    # the float32 kernel of the same weight is not answered by the half record
    assert main(["tune", str(path), "--n", "8", "--arch", ARCH]) == 3
    assert "tuning needs a GPU" in capsys.readouterr().err
    # refused combinations: one line, exit 2
    for bad, want in ((["--dtype", "float32", "--accumulate", "float16"], "accumulate='float16'"),
                      (["--target", "cpu", "--dtype", "float16", "--accumulate", "float16"],
                       "no packed float16 arithmetic")):
        assert main(["tune", str(path), "--n", "8", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()  # (the CPU tuner's header line first)
        assert want in err[-1] and err[-1].startswith("sparsert: error:") and len(err) <= 2


# -- on a GPU (skipped without one) -------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_half_tune_on_gpu_times_and_verifies(tmp_path, monkeypatch, mode):
    dtype, acc = mode
    if dtype == "bfloat16":
        pytest.importorskip("torch")
        import torch

        if not torch.cuda.is_available():
            pytest.skip("bfloat16 operands on the GPU are torch CUDA tensors: torch has no CUDA here")
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w, bias = _weight(m=64, k=128, density=0.1, seed=10), _bias(64)
    opts = KernelOptions(n=256, arch=sparsert.pipeline.resolve_arch("cuda", None), dtype=dtype,
                         accumulate=acc, residual=True)
    best = tune.tuned_options(w, opts, bias=bias, budget=3, compile_fn=sparsert.compile)
    entry = _record(tune.tune_key(w.digest(), opts, bias=True))
    assert entry["timer"] == "cuda-events" and entry["best_us"] > 0
    ref = tune.Reference.build(w, opts, bias)
    ok = [t for t in entry["trials"] if t["status"] == "ok"]
    assert ok and all(0 < t["max_rel_err"] <= ref.tolerance(t["params"]["groups"]) for t in ok)
    assert (best.dtype, best.accumulate) == (dtype, acc)
