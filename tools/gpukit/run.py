"""The runner on the GPU machine (`bash .gpu/run.sh` calls it): the kit's stages in order, each
under its own timeout inside one total budget, each appending to $OUT/log.txt, and after each
stage everything so far re-packed into $OUT (results.tar.gz, summary.json, environment.json), so
a run cut off anywhere returns all that came before the cut.

    python3 -m tools.gpukit run --kit .gpu --out $OUT [--budget 480] [--stages probe spmm_x1] [--plan]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from . import stages as st
from .kit import REPO, load_stages, stage_env, staleness, tool_version, unpack

EXIT_REFUSED = 3  # benchmarks.probe: the driver refused a CUBIN


class Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, text: str) -> None:
        line = f"[gpukit {time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def run_command(argv: list[str], *, env: dict, timeout: float, log_path: Path) -> tuple[int | None, float]:
    """Run one command, output appended to the log; killed with its whole process group at the
    timeout. Returns (exit status or None when killed, seconds)."""
    t0 = time.monotonic()
    with open(log_path, "a") as f:
        try:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as e:
            f.write(f"cannot start {argv[0]}: {e}\n")
            return 127, time.monotonic() - t0
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = None
    return rc, time.monotonic() - t0


def pack(out: Path, results: Path, summary: dict) -> None:
    """Everything so far into $OUT: at most a few files (the device tool returns 8)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    tmp = out / "results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        if results.is_dir():
            tar.add(results, arcname="results")
    os.replace(tmp, out / "results.tar.gz")


def image_ptxas(kit_bin: Path) -> str | None:
    """The machine's own ptxas (the CUDA toolkit of the image), not the kit's."""
    for cand in (shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if cand and Path(cand).is_file() and Path(cand).resolve().parent != kit_bin.resolve():
            return cand
    return None


def _sh(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(manifest: dict, stale: dict, ptxas: str, other_ptxas: str | None) -> dict:
    return {
        "nvidia_smi": _sh(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total,power.limit",
                           "--format=csv,noheader"]),
        "nvcc": _sh(["nvcc", "--version"]), "kit_ptxas": ptxas, "kit_ptxas_version": _safe_version(ptxas),
        "image_ptxas": other_ptxas, "image_ptxas_version": _safe_version(other_ptxas) if other_ptxas else None,
        "python": sys.version.split()[0], "stale": stale,
        "kit": {k: manifest.get(k) for k in ("created", "git_head", "source_digest", "code_digest", "toolchain", "cache")},
    }


def _safe_version(exe: str | None) -> str | None:
    try:
        return tool_version(exe) if exe else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.gpukit run")
    ap.add_argument("--kit", type=Path, default=REPO / ".gpu")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/gpukit-out"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpukit"))
    ap.add_argument("--budget", type=float, help="total seconds (default: the kit's)")
    ap.add_argument("--started", type=float, help="epoch seconds the run began (run.sh): counted in the budget")
    ap.add_argument("--stages", nargs="+", help="only these stages, in the kit's order")
    ap.add_argument("--plan", action="store_true", help="print the stages and their worst-case timeouts, run nothing")
    args = ap.parse_args(argv)
    manifest = json.loads((args.kit / "manifest.json").read_text())
    stages = load_stages(manifest)
    if args.stages:
        stages = tuple(s for s in stages if s.name in args.stages)
    total = args.budget or manifest.get("budget_s", st.TOTAL_BUDGET_S)
    if args.plan:
        for name, t in st.plan(stages, total):
            print(f"{name:14s} {'skipped' if t is None else f'{t:5.0f} s'}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "log.txt")
    budget = st.Budget(total)
    if args.started:
        budget.spent_s = max(0.0, time.time() - args.started)
    results = args.work / "results"
    results.mkdir(parents=True, exist_ok=True)
    unpack(args.kit / manifest["toolchain"]["file"], args.work / "tool")
    cache = args.work / "cache"
    unpack(args.kit / manifest["cache"]["file"], cache)
    kit_bin = args.work / "tool" / "bin"
    ptxas = str(kit_bin / "ptxas")
    env = stage_env(cache=cache, data=args.kit / "data", ptxas=ptxas)
    env.pop("SPARSERT_ARCH", None)  # the GPU's own arch
    stale = staleness(manifest)
    other = image_ptxas(kit_bin)
    summary: dict = {"budget_s": total, "stages": [], "fallback": None, "stale": stale,
                     "kit": {k: manifest.get(k) for k in ("created", "git_head", "source_digest", "code_digest")}}
    envdoc = environment(manifest, stale, ptxas, other)
    (args.out / "environment.json").write_text(json.dumps(envdoc, indent=1) + "\n")
    log(f"kit built {manifest.get('created')} from {manifest.get('git_head')}; {manifest['cache']['kernels']} kernels; "
        f"toolchain {envdoc['kit_ptxas_version']} (image: {envdoc['image_ptxas_version']}); "
        f"GPU {envdoc['nvidia_smi']}; budget {total:.0f} s, {budget.spent_s:.0f} s spent unpacking")
    if not stale["cache_valid"]:
        log("!!! STALE KIT: this checkout's CUDA backend code differs from the kit's (code digest "
            f"{stale['code_digest']} vs {manifest.get('code_digest')}): every kernel misses the cache and is "
            "compiled here with the kit's ptxas on this machine's cores; later stages may be cut. "
            "Rebuild with `make gpu-kit` before the next run.")
    elif not stale["source_same"]:
        log("note: the checkout differs from the kit's source, but not the CUDA backend's code: the cache is valid")
    if envdoc["kit_ptxas_version"] is None:
        summary["fallback"] = _fallback(env, args.work, other, log, "the kit's ptxas does not run here")
    for i, stage in enumerate(stages):
        allowed = budget.timeout(stage, last=i == len(stages) - 1)
        rec: dict = {"stage": stage.name, "title": stage.title, "allowed_s": allowed, "commands": []}
        if allowed is None:
            rec["skipped"] = f"{budget.left_s:.0f} s left < its minimum {stage.min_s} s"
            log(f"stage {stage.name}: SKIPPED ({rec['skipped']})")
            summary["stages"].append(rec)
            pack(args.out, results, summary)
            continue
        log(f"stage {stage.name}: {stage.title} (up to {allowed:.0f} s)")
        t0 = time.monotonic()
        for cmd in stage.run:
            left = allowed - (time.monotonic() - t0)
            argv = st.fill(cmd, results=str(results), budget=st.benchmark_budget(left), python=sys.executable)
            if stage.name == "ncu" and not shutil.which("ncu"):
                rec["commands"].append({"command": argv, "rc": None, "note": "ncu not installed"})
                continue
            rc, secs = run_command(argv, env=env, timeout=left, log_path=args.out / "log.txt")
            if stage.name == "probe" and rc == EXIT_REFUSED and summary["fallback"] is None:
                summary["fallback"] = _fallback(env, args.work, other, log, "the driver refused the kit's CUBINs")
                left = allowed - (time.monotonic() - t0)
                rc, secs2 = run_command(argv, env=env, timeout=left, log_path=args.out / "log.txt")
                secs += secs2
            rec["commands"].append({"command": argv[1:], "rc": rc, "seconds": round(secs, 1),
                                    "timed_out": rc is None})
            log(f"stage {stage.name}: `{' '.join(argv[1:])[:120]}` -> "
                f"{'TIMED OUT' if rc is None else f'exit {rc}'} in {secs:.0f} s")
            if time.monotonic() - t0 >= allowed:
                break
        used = time.monotonic() - t0
        rec["seconds"] = round(used, 1)
        budget.spend(stage, used, allowed)
        summary["stages"].append(rec)
        pack(args.out, results, summary)
    log(f"done: {budget.spent_s:.0f} s of {total:.0f} s; results in {args.out}")
    pack(args.out, results, summary)
    return 0


def _fallback(env: dict, work: Path, other: str | None, log: Log, why: str) -> dict:
    """Build with the machine's own ptxas (and nvlink beside it) into a cold cache."""
    if other is None:
        log(f"!!! FALLBACK impossible: {why}, and this machine has no ptxas of its own")
        return {"why": why, "ptxas": None}
    env["SPARSERT_PTXAS"] = other
    env["SPARSERT_CACHE_DIR"] = str(work / "cache-cold")
    log(f"!!! FALLBACK: {why}: from here on kernels are built with {other} "
        f"({_safe_version(other)}) into a cold cache (compiled here, not carried)")
    return {"why": why, "ptxas": other, "version": _safe_version(other)}


if __name__ == "__main__":
    sys.exit(main())
