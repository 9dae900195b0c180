"""Autotuner: the search space obeys the hardware limits, the search finds what it should, and the
store is reused without timing. The timers here are fakes - deterministic functions of the
schedule's parameters, used to test the search logic; they are not measurements."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsert
from sparsert import tune
from sparsert.backends.cuda.limits import SHARED_MEMORY_BYTES
from sparsert.backends.cuda.params import choose_parameters, choose_prefetch
from sparsert.errors import ToolchainError
from sparsert.frontend.weights import load_weight
from sparsert.options import KernelOptions
from sparsert.runtime.cache import CacheStore


def _tuned(*args, **kwargs):
    """tune.tuned_options with the compiler passed in (required: the tuner does not import the API)."""
    return tune.tuned_options(*args, compile_fn=sparsert.compile, **kwargs)


ARCH = "sm_90"


def _weight(m=16, k=32, density=0.2, seed=0):
    a = sp.random(m, k, density=density, random_state=seed, format="csr", dtype=np.float32)
    a.data[:] = np.random.default_rng(seed).standard_normal(a.nnz).astype(np.float32)
    return load_weight(a)


class FakeTimer:
    """Not a measurement: a bowl over log2 of the parameters with its bottom at `optimum`."""

    name = "fake"

    def __init__(self, optimum):
        self.optimum = optimum
        self.calls = 0

    def cost(self, p) -> float:
        return 10.0 + sum((math.log2(x) - math.log2(o)) ** 2 for x, o in zip(p, self.optimum))

    def __call__(self, kernel) -> float:
        self.calls += 1
        s = kernel.schedule
        return self.cost((s.threads_x, s.vec, s.groups, s.rows_per_block, s.prefetch))


def no_timer(kernel):
    raise AssertionError("timed although a stored tuning exists")


def ok_verify(kernel, ref):
    return 0.0


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    return tmp_path


# -- search space -----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 600), k=st.integers(1, 600), n=st.integers(1, 5000),
       pin=st.sampled_from([{}, {"vec": 1}, {"groups": 2}, {"threads_x": 32}, {"rows_per_block": 4},
                            {"prefetch": 8}]))
def test_search_space_respects_hardware_limits(m, k, n, pin):
    if "vec" in pin and n % pin["vec"]:
        return
    opts = KernelOptions(n=n, arch=ARCH, **pin)
    space = tune.search_space(m, k, opts)
    assert space, "every problem has at least one feasible schedule"
    assert len(set(space)) == len(space)
    for tx, vec, groups, rows, depth in space:
        assert tx * groups <= 1024
        assert rows * vec <= tune.MAX_ACCUMULATORS
        assert groups == 1 or groups * rows * tx * vec * 4 <= SHARED_MEMORY_BYTES
        assert n % vec == 0 and depth * vec <= tune.MAX_PREFETCH_REGISTERS
        regs = tune.estimated_registers(vec, rows, depth)
        assert regs <= 255 and regs * tx * groups <= 65536
        for f, v in pin.items():
            assert {"threads_x": tx, "vec": vec, "groups": groups, "rows_per_block": rows,
                    "prefetch": depth}[f] == v
        # the planner accepts every candidate as explicit options
        cand = tune.as_options(opts, (tx, vec, groups, rows, depth))
        assert choose_parameters(m, k, 0, cand) == (tx, vec, groups, rows)
        assert choose_prefetch(vec, cand) == depth


def test_violates_names_the_limit():
    assert "threads" in tune.violates((256, 1, 8, 1, 16), m=64, k=64, n=256)
    assert "accumulators" in tune.violates((32, 4, 1, 64, 4), m=64, k=64, n=256)
    assert "shared memory" in tune.violates((128, 4, 8, 4, 4), m=64, k=64, n=512)
    assert "divide" in tune.violates((32, 4, 1, 1, 4), m=64, k=64, n=30)
    assert tune.violates((32, 2, 2, 8, 8), m=64, k=64, n=256) is None
    assert "in flight" in tune.violates((32, 4, 1, 8, 16), m=64, k=64, n=256)


def test_default_schedule_is_in_the_space():
    for m, k, n in [(64, 256, 3136), (2048, 512, 49), (512, 512, 256), (1000, 2048, 1)]:
        opts = KernelOptions(n=n, arch=ARCH)
        start = tune.default_params(m, k, int(0.1 * m * k), opts)
        assert start in tune.search_space(m, k, opts, include=[start])


# -- the search (no compiler) -----------------------------------------------------------------
def test_search_finds_the_optimum_of_a_bowl_within_budget():
    opts = KernelOptions(n=784, arch=ARCH)
    space = tune.search_space(512, 128, opts)
    optimum = (64, 2, 2, 8, 8)
    assert optimum in space
    fake = FakeTimer(optimum)
    seen = []

    def evaluate(p):
        seen.append(p)
        return tune.Trial(p, "ok", time_us=fake.cost(p))

    budget = 60
    trials = tune.search(space, evaluate, start=(32, 4, 1, 16, 4), budget=budget)
    assert len(trials) <= budget < len(space)
    assert len(set(seen)) == len(seen), "no candidate is compiled twice"
    assert all(p in space for p in seen)
    assert trials[0].params == (32, 4, 1, 16, 4), "the default is measured first"
    assert min(trials, key=lambda t: t.time_us).params == optimum
    # deterministic
    assert [t.params for t in tune.search(space, evaluate, start=(32, 4, 1, 16, 4), budget=budget)] == [
        t.params for t in trials]


def test_search_skips_failing_candidates_and_stops_at_the_budget():
    space = tune.search_space(64, 64, KernelOptions(n=256, arch=ARCH))
    bad = {p for p in space if p[1] == 4}

    def evaluate(p):
        if p in bad:
            return tune.Trial(p, "wrong", max_rel_err=1.0)
        return tune.Trial(p, "ok", time_us=FakeTimer((8, 4, 1, 2, 4)).cost(p))

    trials = tune.search(space, evaluate, start=(32, 4, 1, 8, 4), budget=5)
    assert len(trials) == 5
    best = min((t for t in trials if t.ok), key=lambda t: t.time_us)
    assert best.params not in bad


# -- tuned_options: compile, verify, time, store ------------------------------------------------
def test_tune_persists_and_is_reused_without_timing(store_dir):
    w = _weight()
    opts = KernelOptions(n=32, arch=ARCH)
    fake = FakeTimer((8, 2, 1, 4, 8))
    steps = []
    best = _tuned(w, opts, timer=fake, verify=ok_verify, budget=6,
                              progress=lambda i, total, step: steps.append((i, total, step)))
    assert 1 <= fake.calls <= 6
    assert [i for i, _, _ in steps] == list(range(1, len(steps) + 1))
    path = tune.tune_path(tune.tune_key(w.digest(), opts, bias=False))
    # one entry of the cache store: <cache>/tune/<key[:2]>/<key>.bin (JSON)
    assert path.parent.parent == store_dir / "tune" and path.parent.name == path.stem[:2]
    assert path.suffix == ".bin" and path.with_suffix(".json").is_file()
    entry = json.loads(path.read_text())
    assert entry["timer"] == "fake" and len(entry["trials"]) == fake.calls
    ok = [t for t in entry["trials"] if t["status"] == "ok"]
    fastest = min(ok, key=lambda t: t["time_us"])
    assert fastest["params"] == entry["best"] == {f: getattr(best, f) for f in tune.SCHEDULE_FIELDS}
    assert not list((store_dir / "tune").rglob("*.tmp")), "written atomically, no temp files left"

    # reused: no timing at all, same answer
    again = _tuned(w, opts, timer=no_timer, verify=ok_verify)
    assert again == best
    # and by compile(tune=True), which on this GPU-less machine could not time anything
    kernel = sparsert.compile(w, n=32, arch=ARCH, tune=True)
    s = kernel.schedule
    assert {f: getattr(s, f) for f in tune.SCHEDULE_FIELDS} == entry["best"]


def test_key_separates_n_arch_relu_bias_and_pins(store_dir):
    w = _weight()
    base = KernelOptions(n=32, arch=ARCH)
    keys = {
        json.dumps(tune.tune_key(w.digest(), o, bias=b), sort_keys=True)
        for o, b in [(base, False), (base, True), (KernelOptions(n=64, arch=ARCH), False),
                     (KernelOptions(n=32, arch="sm_80"), False),
                     (KernelOptions(n=32, arch=ARCH, relu=True), False),
                     (KernelOptions(n=32, arch=ARCH, vec=2), False)]
    }
    assert len(keys) == 6
    _tuned(w, base, timer=FakeTimer((8, 1, 1, 4, 16)), verify=ok_verify, budget=2)
    fake = FakeTimer((8, 1, 1, 4, 16))
    _tuned(w, KernelOptions(n=32, arch=ARCH, relu=True), timer=fake, verify=ok_verify,
                       budget=2)
    assert fake.calls > 0, "a different epilogue is tuned anew"


@pytest.mark.parametrize("garbage", [
    "{not json",
    json.dumps({"format": 1, "best": {"threads_x": 8}}),  # no key, incomplete
    "KEY:" + json.dumps({"threads_x": 8, "vec": 3, "groups": 1, "rows_per_block": 4}),  # vec=3
    "KEY:" + json.dumps({"threads_x": 8, "vec": 1, "groups": 1, "rows_per_block": "4"}),
])
def test_corrupt_tune_file_is_ignored_and_replaced(store_dir, garbage):
    w = _weight(seed=3)
    opts = KernelOptions(n=32, arch=ARCH)
    key = tune.tune_key(w.digest(), opts, bias=False)
    path = tune.tune_path(key)
    if garbage.startswith("KEY:"):
        garbage = json.dumps({"format": 1, "key": key, "best": json.loads(garbage[4:])})
    # a whole store entry (its integrity checks out): the record itself must be refused
    CacheStore(store_dir, "tune").put(path.stem, garbage.encode(), {})
    assert path.read_text() == garbage
    assert tune.load_stored(key, opts) is None
    # and a bare payload file with no metadata beside it
    path.with_suffix(".json").unlink()
    path.write_text(garbage)
    assert tune.load_stored(key, opts) is None
    fake = FakeTimer((8, 1, 1, 2, 16))
    best = _tuned(w, opts, timer=fake, verify=ok_verify, budget=3)
    assert fake.calls > 0
    assert tune.load_stored(key, opts)[0] == best


def test_wrong_candidates_are_never_chosen(store_dir):
    w = _weight(seed=5)
    opts = KernelOptions(n=32, arch=ARCH)
    fake = FakeTimer((8, 1, 1, 1, 16))

    def verify(kernel, ref):  # pretend the fastest candidates compute garbage
        return 1.0 if kernel.schedule.rows_per_block <= 2 else 0.0

    best = _tuned(w, opts, timer=fake, verify=verify, budget=16)
    assert best.rows_per_block > 2
    entry = json.loads(tune.tune_path(tune.tune_key(w.digest(), opts, bias=False)).read_text())
    wrong = [t for t in entry["trials"] if t["status"] == "wrong"]
    assert wrong and all(t["time_us"] is None for t in wrong), "wrong kernels are not timed"


def test_pinned_fields_are_kept(store_dir):
    w = _weight(seed=7)
    opts = KernelOptions(n=32, arch=ARCH, vec=2, groups=1)
    best = _tuned(w, opts, timer=FakeTimer((8, 4, 2, 2, 4)), verify=ok_verify, budget=4)
    assert best.vec == 2 and best.groups == 1


def test_tuning_without_a_gpu_says_so(store_dir, monkeypatch):
    monkeypatch.setattr(tune, "_gpu_arch", lambda: None)
    with pytest.raises(ToolchainError, match="tuning needs a GPU"):
        _tuned(_weight(seed=9), KernelOptions(n=32, arch=ARCH))


def test_cli_tune_reuses_the_store_and_reports_no_gpu(store_dir, monkeypatch, tmp_path, capsys):
    from sparsert.cli import main

    w = _weight(seed=11)
    path = tmp_path / "w.npy"
    np.save(path, w.matrix.toarray())
    monkeypatch.setattr(tune, "_gpu_arch", lambda: None)
    assert main(["tune", str(path), "--n", "32", "--arch", ARCH]) == 3  # no GPU: a toolchain error (exit 3)
    assert "tuning needs a GPU" in capsys.readouterr().err

    best = _tuned(load_weight(path), KernelOptions(n=32, arch=ARCH),
                              timer=FakeTimer((16, 1, 1, 4, 16)), verify=ok_verify, budget=3)
    assert main(["tune", str(path), "--n", "32", "--arch", ARCH]) == 0
    out = capsys.readouterr()
    assert "stored tuning reused" in out.err
    assert f"--threads-x {best.threads_x} --vec {best.vec}" in out.out


def test_reference_applies_bias_residual_relu():
    w = _weight(m=8, k=16, density=0.5, seed=2)
    bias = np.arange(8, dtype=np.float32) - 4
    ref = tune.Reference.build(w, KernelOptions(n=8, relu=True, residual=True), bias)
    dense = w.matrix.toarray().astype(np.float64)
    expect = np.maximum(dense @ ref.b + bias[:, None] + ref.residual, 0)
    assert np.allclose(ref.expected, expect) and (ref.expected >= 0).all()
    assert tune.relative_error(expect.astype(np.float32), ref.expected) < 1e-6
    assert tune.relative_error(expect + 1.0, ref.expected) > 1e-3
    assert tune.relative_error(np.full_like(expect, np.nan), ref.expected) == math.inf


def test_rotation_count_defeats_l2_within_memory():
    l2 = 50 << 20
    assert tune.rotation_count(1 << 20, l2, 1 << 40) == 64  # capped
    n = tune.rotation_count(10 << 20, l2, 1 << 40)
    assert (n - 1) * (10 << 20) >= 2 * l2
    assert tune.rotation_count(400 << 20, l2, 1 << 40) == 2
    assert tune.rotation_count(400 << 20, l2, 500 << 20) == 1  # memory wins


def test_host_verification_of_a_candidate(store_dir):
    pytest.importorskip("sparsert.backends.emulate.host", reason="host runner not in this build")
    w = _weight(seed=13)
    opts = KernelOptions(n=32, arch=ARCH)
    kernel = sparsert.compile(w, options=opts)
    ref = tune.Reference.build(w, opts, None)
    assert tune.verify_on_host(kernel, ref) < 1e-5


class _FakeCupy:
    """A simulated GPU clock (not a measurement): each launch advances it by a known time, so the
    control flow of measure_us (inner loop, chunks, spin, starvation retries) can be checked."""

    def __init__(self, starved: bool):
        self.now_ms, self.starved, self.spins = 0.0, starved, 0
        fake = self

        class Event:
            def record(self, stream=None):
                self.t = fake.now_ms

            def synchronize(self):
                pass

            @property
            def done(self):
                return fake.starved

        class Stream:
            def synchronize(self):
                pass

        def spin_kernel(grid, block, args, stream=None):
            fake.spins += 1
            fake.now_ms += int(args[0]) / 1e6

        self.cuda = types.SimpleNamespace(
            Event=Event, get_current_stream=lambda: Stream(),
            get_elapsed_time=lambda a, b: b.t - a.t)
        self.RawKernel = lambda source, name: spin_kernel


@pytest.mark.parametrize("starved", [False, True])
def test_measure_us_logic_on_a_simulated_clock(monkeypatch, starved):
    fake = _FakeCupy(starved)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    tune._spin_kernel.cache_clear()
    used = []

    def launch(i):  # 2.5 us per call
        used.append(i)
        fake.now_ms += 2.5e-3

    try:
        m = tune.measure_us(launch, warmup=4, repeat=30, target_sample_us=20.0, chunk=10)
    finally:
        tune._spin_kernel.cache_clear()
    assert m.median_us == pytest.approx(2.5) and m.min_us == pytest.approx(2.5)
    assert m.samples == 30 and m.inner == 8  # ceil(20 / 2.5) calls per sample
    assert used == list(range(len(used))), "rotation index advances on every call"
    assert m.host_bound is starved
    assert fake.spins == (9 if starved else 3)  # 3 chunks, each retried twice when starved


# -- on a GPU (skipped without one) -------------------------------------------------------------
@pytest.mark.gpu
def test_tune_on_gpu_times_and_verifies(store_dir):
    w = _weight(m=64, k=128, density=0.1, seed=1)
    opts = KernelOptions(n=256, arch=None)
    best = _tuned(w, opts, budget=3)
    arch = sparsert.pipeline.resolve_arch("cuda", None)
    entry = json.loads(tune.tune_path(tune.tune_key(w.digest(), KernelOptions(n=256, arch=arch),
                                                    bias=False)).read_text())
    assert entry["timer"] == "cuda-events" and entry["best_us"] > 0
    assert all(t["max_rel_err"] is None or t["max_rel_err"] < 1e-4 for t in entry["trials"])
    assert best.vec in (1, 2, 4)


@pytest.mark.gpu
def test_measure_us_times_a_copy():
    import cupy

    a = cupy.ones(1 << 24, dtype=cupy.float32)
    b = cupy.empty_like(a)
    m = tune.measure_us(lambda i: b.__setitem__(slice(None), a), warmup=3, repeat=10)
    assert m.samples == 10 and 0 < m.min_us <= m.median_us < 1e5


def test_tune_records_never_cross_dtypes():
    """A tuning found in float32 is not an answer for float16 or packed-half kernels (the key
    differs), while float32 keys stay what they were (no stored record is orphaned)."""
    f32 = KernelOptions(n=32, arch=ARCH)
    keys = [tune.tune_key("w", o, bias=False) for o in
            (f32, KernelOptions(n=32, arch=ARCH, dtype="float16"),
             KernelOptions(n=32, arch=ARCH, dtype="float16", accumulate="float16"))]
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == 3
    assert "dtype" not in keys[0]
