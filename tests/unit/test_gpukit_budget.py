"""The GPU kit's stage budget and runner pieces (tools/gpukit), without a GPU or a toolchain."""

from __future__ import annotations

import sys
import time

import pytest

from tools.gpukit import stages as st
from tools.gpukit.run import run_command


def _stage(name, budget, minimum=1):
    return st.Stage(name, name, budget, minimum, run=(("true",),))


def test_the_kit_plan_fits_the_budget_and_one_command():
    planned = st.plan(st.STAGES, st.TOTAL_BUDGET_S)
    assert [n for n, _ in planned] == [s.name for s in st.STAGES]
    assert all(t is not None and t >= s.min_s for (_, t), s in zip(planned, st.STAGES))  # nothing starved
    assert sum(t for _, t in planned) <= st.TOTAL_BUDGET_S <= st.COMMAND_LIMIT_S - 60
    assert [s.name for s in st.STAGES[:3]] == ["probe", "pytest_gpu", "spmm_x1"]  # order of value


def test_unused_time_passes_on_and_the_total_is_never_exceeded():
    stages = (_stage("a", 100), _stage("b", 100), _stage("c", 50, minimum=40), _stage("d", 10))
    b = st.Budget(300)
    assert b.timeout(stages[0]) == 100
    b.spend(stages[0], 30, 100)  # a finished early: its 70 s go to b
    assert b.timeout(stages[1]) == 170
    b.spend(stages[1], 170, 170)  # b ran to its limit (killed)
    assert b.left_s == 100 and b.timeout(stages[2]) == 50
    b.spend(stages[2], 95, 50)  # c overran its limit (a slow kill): charged, d gets what is left
    assert b.left_s == 5 and b.timeout(stages[3], last=True) == 5
    b.spend(stages[3], 5, 5)
    assert b.spent_s == 300 and b.left_s == 0


def test_a_stage_is_skipped_below_its_minimum_and_the_last_takes_the_rest():
    b = st.Budget(100)
    b.spend(_stage("x", 90), 90, 90)
    assert b.timeout(_stage("y", 50, minimum=20)) is None
    assert b.timeout(_stage("z", 1, minimum=5), last=True) == 10
    assert st.plan((_stage("a", 60), _stage("b", 60, minimum=50)), 100) == [("a", 60.0), ("b", None)]


def test_benchmarks_stop_before_their_stage_is_killed():
    for timeout in (20, 60, 110, 400):
        assert 1 <= st.benchmark_budget(timeout) <= timeout - st.WRAP_UP_S
    cmd = st.fill(("python3", "-m", "x", "--out", "{results}/a.json", "--time-budget", "{budget}"),
                  results="/r", budget=42, python="/py")
    assert cmd == ["/py", "-m", "x", "--out", "/r/a.json", "--time-budget", "42"]


def test_every_benchmark_stage_fills_the_kit_cache():
    for s in st.STAGES:
        if s.name in ("pytest_gpu", "ncu", "resnet50", "spmm_half"):  # tests compile their own; ncu
            continue  # reuses spmm_x1's kernels; ResNet-50 (its weights depend on the torch version)
            # and the half kernels (the kit's 64 MiB carry) compile there
        assert s.compile and all("--compile-only" in c for c in s.compile), s.name
        run_args = {a for c in s.run for a in c}
        for c in s.compile:
            assert c[:3] == s.run[0][:3] or c[:2] == s.run[0][:2]  # the same benchmark
            if "--batches" in c:  # ... at the batches it runs
                i = c.index("--batches")
                assert set(c[i + 1:i + 3]) & run_args
    with pytest.raises(KeyError, match="unknown stage"):
        st.by_name(["probe", "nope"])


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    log = tmp_path / "log.txt"
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "print('started', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    rc, secs = run_command([sys.executable, "-c", script], env=None, timeout=2, log_path=log)
    assert rc is None and secs < 15 and time.monotonic() - t0 < 15
    assert "started" in log.read_text()
    rc, _ = run_command([sys.executable, "-c", "raise SystemExit(3)"], env=None, timeout=30, log_path=log)
    assert rc == 3


def test_benchmark_deadline():
    from benchmarks.common import Deadline

    assert not Deadline(None).expired() and not Deadline(60).expired() and Deadline(0).expired()
