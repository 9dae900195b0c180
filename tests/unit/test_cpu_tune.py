"""The CPU autotuner (sparsert/tune/cpu.py): the search picks the fastest candidate that compiles
and computes the right numbers, one stalled timing sample cannot pick a configuration (minimum of
runs), the record is reused without timing, and the chosen options run correctly natively.

The fake timers here are deterministic functions of the candidate's options, to test the search
logic; they are not measurements. The native tests use the real compiler and timer on a tiny
matrix (AVX2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from cpu_check import check, random_csr

import sparsert
from sparsert.backends.cpu.x86 import max_rows
from sparsert.errors import CompileError, OptionsError
from sparsert.frontend.weights import load_weight
from sparsert.options import KernelOptions
from sparsert.tune import cpu as tcpu
from sparsert.tune.measure import Reference

M, K, N = 16, 24, 40
OPTS = KernelOptions(n=N, target="cpu", arch="avx2")


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    return tmp_path


def _weight(seed=0):
    return load_weight(random_csr(M, K, 0.3, seed=seed))


class FakeKernel:
    """Computes A @ B (float32) like a compiled kernel, or wrong numbers when told to."""

    def __init__(self, w, options, bias, wrong=False):
        self.options, self.wrong = options, wrong
        self.a = w.matrix.astype(np.float32)
        self.bias = bias

    def __call__(self, B, *, out=None, residual=None, threads=None):
        c = np.asarray(self.a @ B, np.float32)
        if self.bias is not None:
            c += self.bias[:, None]
        if self.options.relu:
            c = np.maximum(c, 0)
        if self.wrong:
            c[0, 0] += 1.0
        return c


def fields(o: KernelOptions) -> tuple:
    return tuple(getattr(o, f) for f in tcpu.FIELDS)


class Fake:
    """compile_fn and burst: the cost of a candidate is a bowl around `optimum` (rows, vec,
    chunk); `refuse` fails to compile, `wrong` computes wrong numbers; `stall` adds a long
    stall to the sample numbers listed (per candidate, counting that candidate's samples)."""

    def __init__(self, optimum=(9, 2, 16), refuse=(), wrong=(), stall=None):
        self.optimum, self.refuse, self.wrong = optimum, set(refuse), set(wrong)
        self.stall = stall or {}
        self.compiled: list[tuple] = []
        self.bursts = 0
        self.samples: dict[tuple, int] = {}

    def cost_us(self, o: KernelOptions) -> float:
        r, v, c = self.optimum
        chunk = o.chunk or 24  # "auto"
        return 10.0 + (o.rows_per_block - r) ** 2 + 4 * (o.vec - v) ** 2 + abs(chunk - c) / 8

    def compile(self, w, *, options, bias=None):
        key = fields(options)
        self.compiled.append(key)
        if (options.rows_per_block, options.vec) in self.refuse:
            raise CompileError("refused (fake)")
        return FakeKernel(w, options, bias, wrong=(options.rows_per_block, options.vec) in self.wrong)

    def burst(self, kernel, calls: int) -> float:
        self.bursts += 1
        t = self.cost_us(kernel.options) * 1e-6 * calls
        key = (kernel.options.rows_per_block, kernel.options.vec, kernel.options.chunk)
        if calls > 1:  # a sample (calibration bursts are single calls)
            i = self.samples[key] = self.samples.get(key, 0) + 1
            if i in self.stall.get(key, ()):
                t += 0.5 * calls  # half a second per call: a preempted run
        return t

    def timer(self, w, repeats=3):
        ref = Reference.build(w, OPTS, None)
        return tcpu.CpuTimer(ref, threads=1, repeats=repeats, burst_s=1e-3, burst=self.burst)


def _tune(fake, w, *, opts=OPTS, repeats=3, **kw):
    return tcpu.tuned_cpu_options(w, opts, threads=1, compile_fn=fake.compile, timer=fake.timer(w, repeats),
                                  **kw)


def _space(opts=OPTS):
    return tcpu.CpuSpace(m=M, n=N, isa="avx2", opts=opts)


def test_space_obeys_the_register_file_and_starts_at_the_default():
    sp_ = _space()
    pts = sp_.points()
    assert sp_.start() in pts
    start = sp_.options(sp_.start())
    assert fields(start) == (max_rows("avx2", 1), 1, None, None)  # what an untuned compile uses
    seen_v = set()
    for p in pts:
        o = sp_.options(p)
        seen_v.add(o.vec)
        assert 1 <= o.rows_per_block <= min(max_rows("avx2", o.vec), M)
        assert o.chunk is None or o.chunk % (8 * o.vec) == 0
        assert o.bcast is None  # AVX2: one broadcast form
    assert seen_v == {1, 2, 3, 4}
    # pinned fields stay pinned
    pinned = _space(KernelOptions(n=N, target="cpu", arch="avx2", vec=2, chunk=32))
    assert {(pinned.options(p).vec, pinned.options(p).chunk) for p in pinned.points()} == {(2, 32)}
    # AVX-512: both broadcast forms, 'register' one row fewer at most
    z = tcpu.CpuSpace(m=64, n=N, isa="avx512", opts=KernelOptions(n=N, target="cpu", arch="avx512"))
    forms = {}
    for p in z.points():
        o = z.options(p)
        forms.setdefault(o.bcast, set()).add(o.rows_per_block)
    assert set(forms) == {None, "register"}  # None: the default form, 'embedded'
    assert max(forms[None]) == 31 and max(forms["register"]) == 30


def test_search_picks_the_fastest_feasible_candidate(store_dir):
    w = _weight()
    # the bowl's bottom (R=9, V=2) is infeasible (V=2 holds 6 rows); R=6 V=2 fails to compile
    fake = Fake(optimum=(9, 2, 16), refuse={(6, 2)})
    sp_ = _space()
    feasible = [sp_.options(p) for p in sp_.points()]
    expect = min((o for o in feasible if (o.rows_per_block, o.vec) != (6, 2)), key=fake.cost_us)
    got = _tune(fake, w, budget=len(feasible))  # exhaustive
    assert fields(got) == fields(expect)
    assert (6, 2) in {(k[0], k[1]) for k in fake.compiled}  # it was tried, and refused
    # the default budget's coordinate descent reaches the same point on this bowl
    fake2 = Fake(optimum=(9, 2, 16), refuse={(6, 2)})
    assert fields(_tune(fake2, w, force=True)) == fields(expect)
    assert len(fake2.compiled) <= tcpu.DEFAULT_CPU_BUDGET


def test_a_candidate_with_wrong_numbers_is_never_picked(store_dir):
    w = _weight()
    fast_but_wrong = (9, 1)  # the bowl's bottom computes wrong numbers
    fake = Fake(optimum=(9, 1, 24), wrong={fast_but_wrong})
    got = _tune(fake, w, budget=40)
    assert (got.rows_per_block, got.vec) != fast_but_wrong
    assert any(k[:2] == fast_but_wrong for k in fake.compiled)  # it was compiled and checked
    key = tcpu.cpu_tune_key(w.digest(), OPTS, bias=False, threads=1)
    entry = json.loads(tcpu.tune_path(key).read_text())
    wrong = [t for t in entry["trials"] if t["status"] == "wrong"]
    assert wrong and all((t["params"]["rows_per_block"], t["params"]["vec"]) == fast_but_wrong for t in wrong)
    assert all(t["time_us"] is None for t in wrong)  # never timed
    # control: the same bowl with correct numbers there picks it
    fake_ok = Fake(optimum=(9, 1, 24))
    got_ok = _tune(fake_ok, w, budget=40, force=True)
    assert (got_ok.rows_per_block, got_ok.vec) == fast_but_wrong


def test_a_stalled_sample_does_not_change_the_choice(store_dir):
    w = _weight()
    best = (9, 1, None)  # the bowl's bottom, at the launcher's chunk ("auto")
    clean = _tune(Fake(optimum=(9, 1, 24)), w, budget=40)
    assert (clean.rows_per_block, clean.vec, clean.chunk) == best
    # the fastest candidate's first sample in the search, and the first and last of the
    # interleaved playoff, stall for half a second per call
    stalled = Fake(optimum=(9, 1, 24), stall={best: (1, 4, 3 + tcpu.ROUNDS)})
    got = _tune(stalled, w, budget=40, force=True, repeats=3)
    assert stalled.samples[best] == 3 + tcpu.ROUNDS  # the stalls were served
    assert fields(got) == fields(clean)
    # without the minimum over runs (one sample per candidate) the same stall loses the best
    one = Fake(optimum=(9, 1, 24), stall={best: (1,)})
    lost = _tune(one, w, budget=40, force=True, repeats=1)
    assert (lost.rows_per_block, lost.vec, lost.chunk) != best


def test_a_load_that_fades_during_the_search_does_not_rank_the_candidates(store_dir):
    """The machine is busy when the search starts and quiet at its end: timed alone, late
    candidates would look fast; timed against the default in the same seconds, they do not."""
    w = _weight()

    class Fading(Fake):
        def burst(self, kernel, calls):
            t = super().burst(kernel, calls)
            return t * (1 + 9 * max(0.0, 1 - self.bursts / 300))  # 10x slower at first, then 1x

    clean = _tune(Fake(optimum=(9, 1, 24)), w, budget=40)
    got = _tune(Fading(optimum=(9, 1, 24)), w, budget=40, force=True)
    assert fields(got) == fields(clean)


def test_the_default_is_kept_unless_clearly_beaten(store_dir):
    w = _weight()

    class Near(Fake):  # every other candidate 1% faster than the default, or 10%
        def __init__(self, gain):
            super().__init__()
            self.gain = gain

        def cost_us(self, o):
            default = (o.rows_per_block, o.vec, o.chunk) == (max_rows("avx2", 1), 1, None)
            return 100.0 if default else 100.0 * (1 - self.gain)

    assert fields(_tune(Near(0.01), w, budget=6)) == (max_rows("avx2", 1), 1, None, None)
    assert fields(_tune(Near(0.10), w, budget=6, force=True)) != (max_rows("avx2", 1), 1, None, None)

    class Noisy(Near):  # the default's samples alternate 100 / 120 us: the machine's noise is 20%
        def burst(self, kernel, calls):
            t = super().burst(kernel, calls)
            o = kernel.options
            if calls > 1 and (o.rows_per_block, o.vec, o.chunk) == (max_rows("avx2", 1), 1, None):
                t *= 1.2 if self.samples[(o.rows_per_block, o.vec, o.chunk)] % 2 else 1.0
            return t

    noisy = Noisy(0.10)
    assert fields(_tune(noisy, w, budget=6, force=True)) == (max_rows("avx2", 1), 1, None, None)
    key = tcpu.cpu_tune_key(w.digest(), OPTS, bias=False, threads=1)
    entry = json.loads(tcpu.tune_path(key).read_text())
    assert entry["noise"] == pytest.approx(0.2) and entry["margin"] == pytest.approx(0.2)


def test_the_record_is_reused_without_timing(store_dir):
    w = _weight()
    fake = Fake()
    first = _tune(fake, w, budget=12)
    assert fake.bursts > 0
    again = Fake()
    assert fields(_tune(again, w, budget=12)) == fields(first)
    assert again.bursts == 0 and again.compiled == []  # nothing compiled, nothing timed
    # the key holds the threads, the epilogue and pinned fields: those are searched anew
    other = Fake()
    tcpu.tuned_cpu_options(w, OPTS, threads=2, compile_fn=other.compile, timer=other.timer(w), budget=4)
    assert other.bursts > 0
    relu = Fake()
    _tune(relu, w, opts=KernelOptions(n=N, target="cpu", arch="avx2", relu=True), budget=4)
    assert relu.bursts > 0
    # a record that does not fit the caller's pinned field is not returned
    key = tcpu.cpu_tune_key(w.digest(), OPTS, bias=False, threads=1)
    assert tcpu.load_cpu_stored(key, OPTS) is not None
    assert tcpu.load_cpu_stored(key, KernelOptions(n=N, target="cpu", arch="avx2", vec=3)) is None
    # a corrupt record is a miss
    path = tcpu.tune_path(key)
    path.write_text("{not json")
    assert tcpu.load_cpu_stored(key, OPTS) is None


def test_chunk_and_bcast_options_are_validated():
    with pytest.raises(OptionsError, match="chunk"):
        KernelOptions(n=N, chunk=64)  # a CPU option
    with pytest.raises(OptionsError, match="chunk"):
        KernelOptions(n=N, target="cpu", chunk=0)
    with pytest.raises(OptionsError, match="bcast"):
        KernelOptions(n=N, target="cpu", arch="avx2", bcast="register")  # AVX-512 only
    with pytest.raises(OptionsError, match="bcast"):
        KernelOptions(n=N, target="cpu", bcast="memory")
    assert KernelOptions(n=N, target="cpu", chunk=np.int64(16)).chunk == 16


@pytest.mark.binutils
def test_chunk_is_not_in_the_cache_key_and_bcast_is():
    a = random_csr(M, K, 0.3, seed=3)
    plain = sparsert.compile(a, options=KernelOptions(n=N, target="cpu", arch="avx2"))
    chunked = sparsert.compile(a, options=KernelOptions(n=N, target="cpu", arch="avx2", chunk=16))
    assert plain.artifacts[0].path == chunked.artifacts[0].path  # the same code, one entry
    assert chunked.schedule.chunk == 16 and plain.schedule.digest == chunked.schedule.digest
    with pytest.raises(OptionsError, match="multiple of the tile width 16"):
        sparsert.compile(a, options=KernelOptions(n=N, target="cpu", arch="avx2", vec=2, chunk=24))
    emb = sparsert.compile(a, options=KernelOptions(n=N, target="cpu", arch="avx512"))
    reg = sparsert.compile(a, options=KernelOptions(n=N, target="cpu", arch="avx512", bcast="register"))
    assert emb.artifacts[0].path != reg.artifacts[0].path
    assert "{1to16}" in emb.asm and "{1to16}" not in reg.asm and "vbroadcastss" in reg.asm
    assert reg.schedule.rows_per_block == max_rows("avx512", 1, "register")


@pytest.mark.avx2
def test_the_chosen_options_compute_correct_numbers_natively(store_dir, monkeypatch):
    """Real compiles and the real timer (tiny bursts) on a tiny matrix; then the same through
    sparsert.compile(..., tune=True), which reuses the record."""
    monkeypatch.setattr(tcpu, "DEFAULT_CPU_BUDGET", 6)
    monkeypatch.setattr(tcpu, "REPEATS", 2)
    monkeypatch.setattr(tcpu, "BURST_S", 1e-4)
    monkeypatch.setattr(tcpu, "ROUNDS", 2)
    monkeypatch.setenv("SPARSERT_CPU_THREADS", "1")
    a = random_csr(30, 21, 0.3, seed=5)
    bias = np.linspace(-1, 1, 30).astype(np.float32)
    opts = KernelOptions(n=37, target="cpu", arch="avx2", relu=True)
    best = tcpu.tuned_cpu_options(a, opts, bias=bias, compile_fn=sparsert.compile)
    key = tcpu.cpu_tune_key(load_weight(a).digest(), opts, bias=True, threads=1)
    entry = json.loads(tcpu.tune_path(key).read_text())
    assert entry["timer"] == "cpu-min-of-bursts" and len(entry["trials"]) == 6
    assert entry["best_us"] > 0 and entry["default_us"] > 0
    rng = np.random.default_rng(0)
    B = rng.standard_normal((21, 37)).astype(np.float32)
    kernel = sparsert.compile(a, options=best, bias=bias)
    check(a, B, kernel(B, threads=1), bias=bias, relu=True)
    # the API path: the stored record is found (threads = SPARSERT_CPU_THREADS = 1)
    monkeypatch.setattr(tcpu, "CpuTimer", None)  # any timing now would fail
    tuned = sparsert.compile(a, n=37, bias=bias, relu=True, target="cpu", arch="avx2", tune=True)
    assert (tuned.schedule.rows_per_block, tuned.schedule.vec, tuned.schedule.chunk) == (
        best.rows_per_block, best.vec, best.chunk)
    check(a, B, tuned(B, threads=1), bias=bias, relu=True)


@pytest.mark.avx2
def test_cli_tune_target_cpu(store_dir, monkeypatch, tmp_path, capsys):
    from sparsert.cli import main

    monkeypatch.setattr(tcpu, "REPEATS", 2)
    monkeypatch.setattr(tcpu, "BURST_S", 1e-4)
    monkeypatch.setattr(tcpu, "ROUNDS", 2)
    path = tmp_path / "w.npz"
    sp.save_npz(path, random_csr(20, 16, 0.3, seed=7))
    argv = ["tune", str(path), "--n", "19", "--target", "cpu", "--arch", "avx2", "--threads", "1",
            "--budget", "4"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert out.out.startswith("best: --rows-per-block ") and "stored:" in out.err
    monkeypatch.setattr(tcpu, "CpuTimer", None)
    assert main(argv) == 0
    assert "reused (no timing)" in capsys.readouterr().err


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_kernels_tune_natively_in_their_dtype(store_dir, monkeypatch, capsys, tmp_path, dtype):
    """The CPU tuner in half precision: candidates run on operands of the dtype and pass the
    mode's bound (the float32 tolerance would refuse every correct bfloat16 candidate), a wrong
    one is refused, the record is apart from the float32 one, and the CLI tunes it."""
    monkeypatch.setattr(tcpu, "REPEATS", 2)
    monkeypatch.setattr(tcpu, "BURST_S", 1e-4)
    monkeypatch.setattr(tcpu, "ROUNDS", 2)
    a = random_csr(30, 21, 0.3, seed=5)
    opts = KernelOptions(n=37, target="cpu", arch="avx2", relu=True, dtype=dtype)
    seen = []

    def compile_fn(w, options, bias):
        kernel = sparsert.compile(w, options=options, bias=bias)
        seen.append(kernel.schedule.dtype)
        return kernel

    best = tcpu.tuned_cpu_options(a, opts, threads=1, compile_fn=compile_fn, budget=4)
    assert best.dtype == dtype and set(seen) == {dtype}
    key = tcpu.cpu_tune_key(load_weight(a).digest(), opts, bias=False, threads=1)
    entry = json.loads(tcpu.tune_path(key).read_text())
    errs = [t["max_rel_err"] for t in entry["trials"]]
    assert all(t["status"] == "ok" for t in entry["trials"]) and max(errs) > 0  # it really rounded
    if dtype == "bfloat16":
        assert max(errs) > 1e-4  # beyond float32's tolerance, within the bfloat16 bound
    assert key != tcpu.cpu_tune_key(load_weight(a).digest(), KernelOptions(n=37, target="cpu", arch="avx2",
                                                                          relu=True), bias=False, threads=1)
    # a half kernel off by one ulp of the dtype in one output is accepted; one off by 1.0 is not
    ref = Reference.build(load_weight(a), opts, None)
    good = sparsert.compile(a, options=best)
    assert tcpu.verify_native(good, ref, 1) <= ref.tolerance(groups=1)

    class Wrong:
        def __call__(self, B, *, out=None, residual=None, threads=None):
            c = good(B, residual=residual, threads=threads)
            c.view(np.uint16)[0, 0] ^= 0x4000  # a gross error in one output
            return c

    assert tcpu.verify_native(Wrong(), ref, 1) > ref.tolerance(groups=1)
    from sparsert.cli import main

    path = tmp_path / "w.npz"
    sp.save_npz(path, a)
    assert main(["tune", str(path), "--n", "37", "--target", "cpu", "--arch", "avx2", "--threads", "1",
                 "--budget", "3", "--relu", "--dtype", dtype]) == 0
    assert capsys.readouterr().out.startswith("best: --rows-per-block ")
