"""Issue 13 (reliability), end to end through the `sparsert` command: an interrupt stops a big
build within seconds and leaves nothing behind; every error is one line with its documented exit
code; launch limits and --out are checked before any compile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "rn50_bottleneck1_g1_90.smtx"


def _env(tmp_path: Path) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return dict(os.environ, SPARSERT_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"))


def run(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "sparsert", *map(str, args)], capture_output=True, text=True,
                          env=env or _env(tmp_path), timeout=600, cwd=tmp_path)


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (tools run in sessions of their own, but stay its children)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _mentioning(text: str) -> list[int]:
    """Processes whose command line mentions `text` (a path only this test uses)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# -- 1: SIGINT / SIGTERM stop a big build ------------------------------------------------------
@pytest.mark.ptxas
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see child processes")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_a_big_build_kills_its_tools_and_leaves_nothing(tmp_path, signum, code):
    w = tmp_path / "dense.npy"  # 1024 x 1024 dense: ~40 s of ptxas on 2 cores
    np.save(w, np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32))
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "sparsert", "compile", str(w), "--n", "64", "--out", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid):  # wait until the tools are running
            assert proc.poll() is None and time.monotonic() < deadline, "no tool started"
            time.sleep(0.05)
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert took < 5, f"took {took:.1f} s to stop"
    lines = [line for line in err.splitlines() if line.startswith("sparsert: error:")]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), err
    assert "Traceback" not in err
    time.sleep(0.3)
    assert not _mentioning(str(tmp_path)), "a tool outlived sparsert"
    assert not list((tmp_path / "tmp").iterdir()), "temporary files left behind"
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix in (".bin", ".json", ".tmp")]
    assert not entries, entries
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_compile_above_max_nnz_is_refused_with_the_estimate_and_the_way_to_raise_it(tmp_path):
    proc = run(tmp_path, "compile", EXAMPLE, "--n", 64, "--max-nnz", 1000, "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "1,638 nonzeros" in proc.stderr and "--max-nnz" in proc.stderr
    env = _env(tmp_path) | {"SPARSERT_MAX_NNZ": "1000"}
    proc = run(tmp_path, "compile", EXAMPLE, "--n", 64, "--out", tmp_path / "o", env=env)
    assert proc.returncode == 2 and "SPARSERT_MAX_NNZ" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# -- 5: the error contract: one line, `sparsert: error:`, the documented exit code -------------
def _cases(tmp_path: Path):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    return [
        # (arguments, exit code, text the line must contain)
        ((), 2, "required"),
        (("compile",), 2, "weight"),
        (("bogus",), 2, "invalid choice"),
        (("compile", EXAMPLE, "--n", "abc"), 2, "--n"),
        (("compile", EXAMPLE, "--n", 0), 2, "--n"),
        (("compile", EXAMPLE), 2, "--n"),
        (("compile", tmp_path / "missing.npy", "--n", 8), 2, "missing.npy"),
        (("compile", bad, "--n", 8), 2, "bad.npy"),
        (("compile", EXAMPLE, "--n", 8, "--vec", 3), 2, "--vec"),
        (("compile", EXAMPLE, "--n", 8, "--arch", "sm_9x"), 2, "sm_9x"),
        (("compile", EXAMPLE, "--n", 10**12), 2, "n=1000000000000"),
        (("check", EXAMPLE, "--n", 10**12), 2, "65,535"),
        (("compile", EXAMPLE, "--n", 2097153), 2, "n=2097153"),
        (("compile", EXAMPLE, "--n", 8, "--out", afile), 2, "is a file"),
        (("compile", EXAMPLE, "--n", 8, "--out", afile / "sub"), 2, "below"),
        (("check", EXAMPLE, "--n", 8, "--target", "hip"), 2, "--target hip"),
        (("check", EXAMPLE, "--n", 16, "--host", "--rtol", 0), 1, None),
        (("inspect", tmp_path / "nothere.json"), 2, "nothere.json"),
        (("inspect", bad_json), 2, "bad.json"),
        (("prune", EXAMPLE, "--out", tmp_path / "p.npz"), 2, "--sparsity"),
    ]


def test_every_cli_error_is_one_line_with_its_exit_code(tmp_path):
    failures = []
    for args, code, needle in _cases(tmp_path):
        proc = run(tmp_path, *args)
        errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("\r")]
        ok = proc.returncode == code and "Traceback" not in proc.stderr
        if code == 1:
            ok = ok and "FAIL" in proc.stdout and not errors
        else:
            ok = ok and len(errors) == 1 and errors[0].startswith("sparsert: error: ") and needle in errors[0]
        if not ok:
            failures.append(f"{args}: exit {proc.returncode} (expected {code}), stderr {proc.stderr!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.ptxas
def test_an_arch_ptxas_does_not_know_is_refused_naming_arch(tmp_path):
    proc = run(tmp_path, "compile", EXAMPLE, "--n", 8, "--arch", "sm_999", "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "arch='sm_999' (--arch)" in proc.stderr and ".ptx" not in proc.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.bin"))


# -- 4: --out is checked before compiling --------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="uses /proc/self as an unwritable folder")
def test_an_unwritable_out_is_refused_before_any_compile(tmp_path):
    outs = [Path("/proc/self"), Path("/proc/sparsert-no-such")]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        outs += [ro, ro / "sub"]
    for out in outs:
        t0 = time.perf_counter()
        proc = run(tmp_path, "compile", EXAMPLE, "--n", 64, "--out", out)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--out {out}: cannot" in proc.stderr
        assert not list((tmp_path / "cache").rglob("*.bin")), "compiled before checking --out"
        assert time.perf_counter() - t0 < 30


# -- 2: the host checker's shared objects are verified, locked and rebuilt -----------------------
@pytest.mark.cxx
@pytest.mark.ptxas
def test_corrupt_host_shared_objects_are_rebuilt_and_concurrent_checks_build_once(tmp_path):
    args = ("check", EXAMPLE, "--n", 16, "--arch", "sm_90", "--host", "--rtol", "1e-5")
    env = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "sparsert", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "PASS" in out, out + err
    libs = sorted((tmp_path / "cache" / "host").rglob("*.bin"))
    assert len(libs) == 1, libs  # three concurrent checks, one build (the per-key lock)
    good = libs[0].read_bytes()
    # (1) 16 bytes flipped in the middle of the shared object (was: "Illegal instruction", exit 132)
    mid = len(good) // 2
    libs[0].write_bytes(good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 16]) + good[mid + 16:])
    proc = run(tmp_path, *args)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
    assert libs[0].read_bytes() == good  # rebuilt, bit for bit
    # (2) one bit of one weight constant (was: silently wrong numbers)
    from sparsert.frontend.weights import as_weight

    w = as_weight(str(EXAMPLE), seed=0)
    bits = np.float32(w.matrix.data[0]).tobytes()
    at = good.find(bits)
    assert at >= 0, "the weight constant is not in the shared object"
    libs[0].write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1:])
    proc = run(tmp_path, *args)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
    assert libs[0].read_bytes() == good
