"""Build the GPU kit (`.gpu/`) here, without a GPU, and prove it with a dry run.

The kit holds: run.sh (the one command there), manifest.json (what it was built from: the source
digest of this checkout, the CUDA backend's code digest that every cache key holds, the ptxas and
nvlink versions, the stages), toolchain.tar.xz (the very ptxas and nvlink the cache keys name),
cache.tar.xz (every kernel the stages launch, compiled here by the stages' `--compile-only`
commands), data/ (the problem sets; a subset of ../shared, marked KIT_SUBSET).

The dry run unpacks the kit as the GPU machine will, puts stand-ins for ptxas and nvlink first
(they answer `--version` with the kit's binaries and fail any other call, logging it), and runs
every stage's compile command again: a kernel missing from the cache would have to be assembled
and fails loudly, so passing proves 100% cache hits. It also checks the size and the budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import stages as st

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KIT = REPO / ".gpu"
DEFAULT_WORK = REPO / "build" / "gpukit"
MAX_MIB = 60.0
# what the source digest covers: everything that shapes a kernel, its cache key or the run
SOURCE_PARTS = ("sparsert", "templates", "benchmarks", "tools/gpukit", "tests")
SOURCE_SUFFIXES = (".py", ".j2", ".h", ".c", ".s", ".sh", ".cfg", ".toml", ".csv")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(repo: Path = REPO) -> str:
    """sha256 over the source files of the checkout (no git needed: the GPU machine gets a copy
    of the working tree without .git)."""
    h = hashlib.sha256()
    for part in SOURCE_PARTS:
        root = repo / part
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(repo).as_posix()
            if (not path.is_file() or "__pycache__" in path.parts or path.suffix not in SOURCE_SUFFIXES
                    or rel.startswith("benchmarks/results/")):
                continue
            data = path.read_bytes()
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]


def code_digest() -> str:
    """The CUDA backend's code digest: part of every kernel's cache key."""
    from sparsert.backends.base import package_digest

    return package_digest("cuda")


def git_head(repo: Path = REPO) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def tool_paths() -> tuple[str, str]:
    from sparsert.toolchain.ptxas import find_nvlink, find_ptxas

    ptxas, nvlink = find_ptxas(), find_nvlink()
    if not ptxas or not nvlink:
        raise SystemExit("gpukit: ptxas / nvlink not found (pip install nvidia-cuda-nvcc, or SPARSERT_PTXAS)")
    return ptxas, nvlink


def tool_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=60).stdout
    import re

    m = re.search(r"release\s+[\d.]+,\s*V([\d.]+)", out)
    return f"{os.path.basename(exe)} {m.group(1) if m else out.strip().splitlines()[-1]}"


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _pack(src_dir: Path, names: list[str], dest: Path, compress: str) -> None:
    """tar of `names` (relative to src_dir) into dest: xz (multi-threaded where xz is installed)
    or plain (tests)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    list_file = tmp.with_suffix(".list")
    list_file.write_text("\n".join(names) + "\n")
    try:
        if compress == "xz" and shutil.which("xz") and shutil.which("tar"):
            subprocess.run(["tar", "-C", str(src_dir), "-I", "xz -T0 -6", "-cf", str(tmp), "-T", str(list_file)],
                           check=True)
        else:
            with tarfile.open(tmp, "w:xz" if compress == "xz" else "w") as tar:
                for name in names:
                    tar.add(src_dir / name, arcname=name)
        os.replace(tmp, dest)
    finally:
        list_file.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def unpack(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def copy_data(kit: Path) -> Path:
    """The problem sets (and the ResNet-50 layer sizes) into kit/data, marked as a subset."""
    sys.path.insert(0, str(REPO))
    from benchmarks.common import data_candidates

    dest = kit / "data"
    source = next((c for c in data_candidates() if (c / "problems").is_dir()
                   and c.resolve() != dest.resolve() and not (c / "KIT_SUBSET").exists()), None)
    if source is None:
        if (dest / "problems").is_dir():
            return dest  # a kit built before keeps its copy
        raise SystemExit("gpukit: no data folder with problems/ (set SPARSERT_DATA or put shared/ beside the repo)")
    (dest / "problems").mkdir(parents=True, exist_ok=True)
    for f in (source / "problems").glob("*"):
        if f.is_file():
            shutil.copy2(f, dest / "problems" / f.name)
    if (source / "dlmc" / "rn50_batchsizes.txt").is_file():
        (dest / "dlmc").mkdir(exist_ok=True)
        shutil.copy2(source / "dlmc" / "rn50_batchsizes.txt", dest / "dlmc" / "rn50_batchsizes.txt")
    (dest / "KIT_SUBSET").write_text(f"a subset of {source}: problems/ and dlmc/rn50_batchsizes.txt\n")
    return dest


def stage_env(*, cache: Path, data: Path, ptxas: str | None) -> dict:
    env = dict(os.environ)
    env.update(SPARSERT_CACHE_DIR=str(cache), SPARSERT_DATA=str(data), SPARSERT_BACKEND="ptx",
               SPARSERT_ARCH=st.ARCH, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    env.pop("SPARSERT_CACHE", None)
    if ptxas:
        env["SPARSERT_PTXAS"] = ptxas
    return env


def run_compiles(stages, env: dict, log: Path) -> list[dict]:
    """Every stage's compile commands, in order; raises on the first failure (naming it)."""
    done = []
    with open(log, "a") as f:
        for s in stages:
            for cmd in s.compile:
                argv = st.fill(cmd, results=str(log.parent / "results"), budget=0, python=sys.executable)
                f.write(f"\n$ {' '.join(argv)}\n")
                f.flush()
                t0 = time.monotonic()
                rc = subprocess.run(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
                done.append({"stage": s.name, "command": argv[1:], "rc": rc, "seconds": round(time.monotonic() - t0, 1)})
                print(f"  {s.name}: {' '.join(argv[1:])[:100]}: rc {rc}, {done[-1]['seconds']} s", flush=True)
                if rc != 0:
                    raise SystemExit(f"gpukit: stage {s.name}: `{' '.join(argv)}` failed (exit {rc}); see {log}")
    return done


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")
                  if p.is_file() and not p.name.endswith((".lock", ".tmp")))


def build(kit: Path = DEFAULT_KIT, *, work: Path = DEFAULT_WORK, stages=st.STAGES, compress: str = "xz",
          max_mib: float = MAX_MIB, budget_s: float = st.TOTAL_BUDGET_S, fresh: bool = False) -> dict:
    t_start = time.monotonic()
    kit.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if fresh and cache.exists():
        shutil.rmtree(cache)
    ext = "tar.xz" if compress == "xz" else "tar"
    old = json.loads((kit / "manifest.json").read_text()) if (kit / "manifest.json").is_file() else {}
    ptxas, nvlink = tool_paths()
    tools = {"ptxas": tool_version(ptxas), "nvlink": tool_version(nvlink),
             "sha256": {"ptxas": _sha256(Path(ptxas)), "nvlink": _sha256(Path(nvlink))},
             "file": f"toolchain.{ext}", "from": os.path.dirname(ptxas)}
    print(f"gpukit: toolchain {tools['ptxas']} + {tools['nvlink']} from {tools['from']}", flush=True)
    t0 = time.monotonic()
    same = (old.get("toolchain") or {}).get("sha256") == tools["sha256"] and (kit / tools["file"]).is_file()
    if not same:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bin").mkdir()
            for exe in (ptxas, nvlink):
                shutil.copy2(exe, Path(tmp) / "bin" / os.path.basename(exe))
            _pack(Path(tmp), ["bin/ptxas", "bin/nvlink"], kit / tools["file"], compress)
    for stale in kit.glob("toolchain.tar*"):
        if stale.name != tools["file"]:
            stale.unlink()
    tools["pack_s"] = round(time.monotonic() - t0, 1)
    data = copy_data(kit)
    env = stage_env(cache=cache, data=data, ptxas=ptxas)
    log = work / "build.log"
    print(f"gpukit: compiling every kernel of {len(stages)} stage(s) into {cache} (log: {log})", flush=True)
    t0 = time.monotonic()
    compiles = run_compiles(stages, env, log)
    compile_s = time.monotonic() - t0
    entries = cache_entries(cache)
    t0 = time.monotonic()
    cache_file = f"cache.{ext}"
    for stale in kit.glob("cache.tar*"):
        stale.unlink()
    _pack(cache, entries, kit / cache_file, compress)
    pack_s = time.monotonic() - t0
    shutil.copy2(REPO / "tools" / "gpukit" / "run.sh", kit / "run.sh")
    (kit / "run.sh").chmod((kit / "run.sh").stat().st_mode | stat.S_IXUSR)
    manifest = {
        "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_head": git_head(),
        "source_digest": source_digest(), "code_digest": code_digest(), "arch": st.ARCH,
        "toolchain": tools, "cache": {"file": cache_file, "entries": len(entries),
                                      "kernels": sum(e.endswith(".bin") for e in entries),
                                      "raw_mib": round(dir_mib(cache), 2), "pack_s": round(pack_s, 1)},
        "data": "data", "budget_s": budget_s, "max_mib": max_mib,
        "stages": [asdict(s) for s in stages], "compiles": compiles, "compile_s": round(compile_s, 1),
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["kit_mib"] = round(dir_mib(kit), 2)
    manifest["build_s"] = round(time.monotonic() - t_start, 1)
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"gpukit: {manifest['cache']['kernels']} kernels ({manifest['cache']['raw_mib']} MiB raw) in "
          f"{compile_s:.0f} s; kit {manifest['kit_mib']} MiB; built in {manifest['build_s']:.0f} s", flush=True)
    if manifest["kit_mib"] > max_mib:
        raise SystemExit(f"gpukit: the kit is {manifest['kit_mib']} MiB, over {max_mib} MiB")
    return manifest


def load_stages(manifest: dict) -> tuple[st.Stage, ...]:
    return tuple(st.Stage(**{**s, "run": tuple(map(tuple, s["run"])), "compile": tuple(map(tuple, s["compile"]))})
                 for s in manifest["stages"])


def staleness(manifest: dict, repo: Path = REPO) -> dict:
    """How this checkout differs from the one the kit was built from. `cache_valid` is False when
    the CUDA backend's code differs: every kernel then misses (and is compiled where it runs)."""
    src, code = source_digest(repo), code_digest()
    return {"source_same": src == manifest.get("source_digest"), "code_same": code == manifest.get("code_digest"),
            "cache_valid": code == manifest.get("code_digest"), "source_digest": src, "code_digest": code}


_WRAPPER = """#!/bin/sh
# gpukit dry run: answers --version / --help with the kit's binary; any other call is a cache miss
if [ "$#" = 1 ] && {{ [ "$1" = "--version" ] || [ "$1" = "--help" ]; }}; then exec "{real}" "$1"; fi
echo "MISS {name} $*" >> "{log}"
echo "gpukit dry run: {name} called: a kernel is missing from the kit's cache" >&2
exit 97
"""


def dryrun(kit: Path = DEFAULT_KIT, *, keep: Path | None = None) -> dict:
    """Unpack the kit as run.sh does, and rerun every stage's compile command with ptxas and
    nvlink that fail on any call but --version: passing means every kernel came from the cache."""
    manifest = json.loads((kit / "manifest.json").read_text())
    stages = load_stages(manifest)
    report: dict = {"kit": str(kit), "problems": []}
    report["kit_mib"] = round(dir_mib(kit), 2)
    if report["kit_mib"] > manifest.get("max_mib", MAX_MIB):
        report["problems"].append(f"kit is {report['kit_mib']} MiB > {manifest.get('max_mib', MAX_MIB)} MiB")
    report["stale"] = staleness(manifest)
    if not report["stale"]["cache_valid"]:
        report["problems"].append("STALE KIT: the CUDA backend's code differs from the kit's (rebuild: make gpu-kit)")
    report["budget"] = budget_check(stages, manifest.get("budget_s", st.TOTAL_BUDGET_S))
    report["problems"] += report["budget"]["problems"]
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="gpukit-dryrun-"))
    try:
        unpack(kit / manifest["toolchain"]["file"], tmp / "tool")
        unpack(kit / manifest["cache"]["file"], tmp / "cache")
        before = cache_entries(tmp / "cache")
        log = tmp / "misses.log"
        log.touch()
        (tmp / "bin").mkdir(exist_ok=True)
        for name in ("ptxas", "nvlink"):
            real = tmp / "tool" / "bin" / name
            wrapper = tmp / "bin" / name
            wrapper.write_text(_WRAPPER.format(real=real, name=name, log=log))
            wrapper.chmod(0o755)
            got = tool_version(str(wrapper))
            if got != manifest["toolchain"][name]:
                report["problems"].append(f"the kit's {name} says {got!r}, its manifest {manifest['toolchain'][name]!r}")
        env = stage_env(cache=tmp / "cache", data=kit / "data", ptxas=str(tmp / "bin" / "ptxas"))
        t0 = time.monotonic()
        try:
            report["compiles"] = run_compiles(stages, env, tmp / "dryrun.log")
        except SystemExit as e:
            report["problems"].append(str(e))
        report["seconds"] = round(time.monotonic() - t0, 1)
        misses = [line for line in log.read_text().splitlines() if line.strip()]
        after = cache_entries(tmp / "cache")
        report["kernels"] = manifest["cache"]["kernels"]
        report["misses"] = len(misses)
        report["new_cache_entries"] = len(set(after) - set(before))
        if misses or report["new_cache_entries"]:
            report["problems"].append(f"{len(misses)} ptxas/nvlink call(s), {report['new_cache_entries']} new "
                                      f"cache entries: kernels missing from the kit (first: {misses[:1]})")
        report["hit_rate"] = 1.0 if not misses and not report["new_cache_entries"] and "compiles" in report else 0.0
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["ok"] = not report["problems"]
    return report


def budget_check(stages, total_s: float) -> dict:
    """Every stage runs to its limit (the worst case): the run must fit in `total_s`, inside one
    command's limit with time for unpacking, and every stage must get at least its minimum."""
    planned = st.plan(stages, total_s)
    problems = []
    worst = sum(t or 0.0 for _, t in planned)
    if worst > total_s + 1e-6:
        problems.append(f"stages may run {worst:.0f} s > budget {total_s:.0f} s")
    if total_s > st.COMMAND_LIMIT_S - 60:
        problems.append(f"budget {total_s:.0f} s leaves under 60 s of the {st.COMMAND_LIMIT_S} s command limit")
    skipped = [n for n, t in planned if t is None]
    if skipped:
        problems.append(f"stage(s) {', '.join(skipped)} get less than their minimum even when all before run to "
                        "their share")
    return {"total_s": total_s, "worst_case_s": round(worst, 1), "plan": planned, "problems": problems}


def build_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.gpukit build", description="build the GPU kit (no GPU)")
    ap.add_argument("--kit", type=Path, default=DEFAULT_KIT)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the unpacked kernel cache (kept: a rebuild "
                    "compiles only what changed)")
    ap.add_argument("--stages", nargs="+", help="only these stages (default: all)")
    ap.add_argument("--compress", choices=("xz", "none"), default="xz")
    ap.add_argument("--fresh", action="store_true", help="start from an empty cache")
    ap.add_argument("--budget", type=float, default=st.TOTAL_BUDGET_S, help="the run's total seconds")
    args = ap.parse_args(argv)
    stages = st.by_name(args.stages) if args.stages else st.STAGES
    build(args.kit, work=args.work, stages=stages, compress=args.compress, fresh=args.fresh, budget_s=args.budget)
    return 0


def dryrun_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.gpukit dryrun", description="prove the GPU kit here")
    ap.add_argument("--kit", type=Path, default=DEFAULT_KIT)
    args = ap.parse_args(argv)
    if not (args.kit / "manifest.json").is_file():
        print(f"gpukit: no kit at {args.kit} (make gpu-kit)", file=sys.stderr)
        return 2
    rep = dryrun(args.kit)
    (args.kit / "dryrun.json").write_text(json.dumps(rep, indent=1) + "\n")
    print(f"gpukit dry run: {rep.get('kernels')} kernels, {rep.get('misses')} misses "
          f"(hit rate {rep.get('hit_rate', 0):.0%}), {rep.get('seconds')} s; kit {rep['kit_mib']} MiB; "
          f"worst case {rep['budget']['worst_case_s']} s of {rep['budget']['total_s']:.0f} s; "
          f"source {'same' if rep['stale']['source_same'] else 'DIFFERS'}, backend code "
          f"{'same' if rep['stale']['code_same'] else 'DIFFERS'}")
    for p in rep["problems"]:
        print(f"  PROBLEM: {p}", file=sys.stderr)
    return 0 if rep["ok"] else 1
