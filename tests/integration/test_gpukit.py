"""The GPU kit end to end on a tiny kit (3 kernels), without a GPU: build, dry run (100% cache
hits proven by a ptxas that fails on any call but --version), a miss and a stale kit caught, and
the runner's stages, timeouts and $OUT packing (with stand-in stage commands)."""

from __future__ import annotations

import json
import sys
import tarfile
from dataclasses import replace

import pytest

from tools.gpukit import kit as gk
from tools.gpukit import stages as st

pytestmark = pytest.mark.ptxas

TINY = ("import sys, numpy as np, scipy.sparse as sp, sparsert\n"
        "sizes = [int(x) for x in sys.argv[1:]]\n"
        "for i, m in enumerate(sizes):\n"
        "    a = sp.random(m, 48, density=0.2, random_state=np.random.default_rng(i), format='csr', dtype=np.float32)\n"
        "    k = sparsert.compile(a, n=40, arch='sm_90')\n"
        "    print(m, k.backend, k.stats.cached_slabs, 'cached')\n")


def tiny_stages(sizes=("32", "64", "96")):
    return (st.Stage("tiny", "three small kernels", 30, 1, run=(("python3", "-c", "print('ran')"),),
                     compile=(("python3", "-c", TINY, *sizes),)),)


@pytest.fixture(scope="module")
def tiny_kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    data = root / "data-src"
    (data / "problems").mkdir(parents=True)
    (data / "problems" / "spmm_dl.csv").write_text("problem,M,K,N\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSERT_DATA", str(data))
    try:
        manifest = gk.build(root / "kit", work=root / "work", stages=tiny_stages(), compress="none",
                            max_mib=200)  # the toolchain uncompressed: quick to pack
    finally:
        mp.undo()
    return root / "kit", manifest


def test_tiny_kit_has_the_toolchain_the_keys_name_data_and_kernels(tiny_kit):
    kit, manifest = tiny_kit
    assert manifest["cache"]["kernels"] == 3
    assert manifest["toolchain"]["ptxas"].startswith("ptxas ") and manifest["toolchain"]["nvlink"].startswith("nvlink ")
    assert manifest["code_digest"] == gk.code_digest() and manifest["source_digest"] == gk.source_digest()
    with tarfile.open(kit / manifest["toolchain"]["file"]) as t:
        assert sorted(t.getnames()) == ["bin/nvlink", "bin/ptxas"]
    assert (kit / "data" / "problems" / "spmm_dl.csv").is_file() and (kit / "data" / "KIT_SUBSET").is_file()
    assert (kit / "run.sh").read_text().startswith("#!/usr/bin/env bash")


def test_dry_run_proves_every_kernel_comes_from_the_cache(tiny_kit):
    kit, _ = tiny_kit
    rep = gk.dryrun(kit)
    assert rep["ok"], rep["problems"]
    assert rep["misses"] == 0 and rep["new_cache_entries"] == 0 and rep["hit_rate"] == 1.0
    assert rep["stale"]["cache_valid"] and rep["budget"]["worst_case_s"] <= rep["budget"]["total_s"]


def test_dry_run_catches_a_kernel_missing_from_the_kit(tiny_kit, tmp_path):
    kit, manifest = tiny_kit
    other = tmp_path / "kit"
    other.mkdir()
    for f in kit.iterdir():
        if f.is_file():
            (other / f.name).symlink_to(f)
    (other / "data").symlink_to(kit / "data")
    grown = json.loads(json.dumps(manifest))
    grown["stages"][0]["compile"] = [["python3", "-c", TINY, "32", "80"]]  # 80 rows: never compiled
    (other / "manifest.json").unlink()
    (other / "manifest.json").write_text(json.dumps(grown))
    rep = gk.dryrun(other)
    assert not rep["ok"] and rep["misses"] >= 1 and rep["hit_rate"] == 0.0
    assert any("missing from the kit" in p or "failed" in p for p in rep["problems"])


def test_a_stale_kit_and_an_overbooked_budget_are_reported(tiny_kit):
    _, manifest = tiny_kit
    stale = gk.staleness({**manifest, "code_digest": "0" * 16, "source_digest": "1" * 16})
    assert not stale["cache_valid"] and not stale["source_same"]
    assert gk.staleness(manifest)["cache_valid"]
    over = gk.budget_check(tuple(replace(s, min_s=400) for s in st.STAGES[:2]), 480)
    assert over["problems"] and "minimum" in over["problems"][0]
    assert gk.budget_check(st.STAGES, st.TOTAL_BUDGET_S)["problems"] == []


def test_runner_runs_stages_under_timeouts_and_packs_out(tiny_kit, tmp_path):
    """The runner without a GPU: stand-in stage commands (one fast, one that overruns and is
    killed, one skipped for want of time); $OUT holds the log, summary and results after it."""
    from tools.gpukit import run as gr

    kit, manifest = tiny_kit
    work = tmp_path / "kit"
    work.mkdir()
    for f in kit.iterdir():
        (work / f.name).symlink_to(f)
    writes = "import pathlib; pathlib.Path('{results}/a.json').write_text('{{}}')"
    stages = [st.Stage("fast", "writes a result", 5, 1, run=(("python3", "-c", writes),)),
              st.Stage("slow", "overruns", 2, 1, run=(("python3", "-c", "import time; time.sleep(60)"),)),
              st.Stage("late", "no time left", 50, 40, run=(("python3", "-c", "print('never')"),)),
              st.Stage("last", "the rest", 1, 1, run=(("python3", "-c", "print('last ran')"),))]
    (work / "manifest.json").unlink()
    (work / "manifest.json").write_text(json.dumps({**manifest, "budget_s": 12,
                                                     "stages": [json.loads(json.dumps(s.__dict__)) for s in stages]}))
    out = tmp_path / "out"
    assert gr.main(["--kit", str(work), "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    by = {s["stage"]: s for s in summary["stages"]}
    assert by["fast"]["commands"][0]["rc"] == 0
    assert by["slow"]["commands"][0]["timed_out"] and by["slow"]["seconds"] < 10
    assert "skipped" in by["late"] and by["last"]["commands"][0]["rc"] == 0
    with tarfile.open(out / "results.tar.gz") as t:
        assert "results/a.json" in t.getnames()
    log = (out / "log.txt").read_text()
    assert "last ran" in log and "never" not in log and "SKIPPED" in log
    assert json.loads((out / "environment.json").read_text())["kit_ptxas_version"] == manifest["toolchain"]["ptxas"]
    assert len(list(out.iterdir())) <= 8  # what the device tool returns


def test_run_plan_prints_every_stage(tiny_kit, capsys):
    from tools.gpukit import run as gr

    kit, _ = tiny_kit
    assert gr.main(["--kit", str(kit), "--plan"]) == 0
    assert "tiny" in capsys.readouterr().out
    assert sys.executable
