"""Compile-time benchmark (no GPU needed): how long sparsert takes to turn a weight into CUBINs.

    python3 -m benchmarks.compile_time                                # random 256..4096 at 90%
    python3 -m benchmarks.compile_time --sizes 256 512 --repeat 3     # a quick look
    python3 -m benchmarks.compile_time --sizes --dlmc all             # every DLMC layer
    python3 -m benchmarks.compile_time --backend ptx nvrtc --sizes 256 512

Per case, in a fresh subprocess (so peak memory is the case's own): build the weight, plan,
render what sparsert.compile renders (the CUDA units for NVRTC; nothing for the PTX backend,
which renders its PTX while compiling), compile them into an empty kernel cache
(`--backend`: ptx = PTX emitter + ptxas, nvrtc = CUDA C++ through NVRTC), then compile again
from the now warm cache. Recorded: plan/render/compile seconds, nnz per second of render +
compile, source/PTX/CUBIN bytes, peak RSS of the Python process and of the largest compiler
subprocess, and (unless --no-check) the SASS check of every CUBIN: FFMA-with-immediate count ==
nnz x vec and no spills. Timings are the median over --repeat runs (one run for cases above
--repeat-max-nnz nonzeros). Results: benchmarks/results/compile_time.jsonl.gz (JSON Lines, gzip:
see write_doc) and compile_time.md / .png beside it (--out).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import tempfile
import time

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_SIZES = (256, 512, 1024, 2048, 4096)
DEFAULT_N = 256


def shared_dir() -> Path:
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if (candidate / "dlmc").is_dir():
            return candidate
    raise FileNotFoundError(f"shared data folder not found at {REPO.parent / 'shared'} or /work/shared")


# -- cases ----------------------------------------------------------------------------------
def random_cases(sizes, density: float, n: int) -> list[dict]:
    return [{"name": f"random-{s}x{s}-{round((1 - density) * 100)}", "kind": "random", "m": s, "k": s,
             "density": density, "n": n} for s in sizes]


def dlmc_cases(which: str, every: int) -> list[dict]:
    from benchmarks.spmm import read_dlmc

    problems = read_dlmc(shared_dir(), which)[::every]
    return [{"name": f"dlmc/{p.name}", "kind": "dlmc", "source": p.source, "m": p.m, "k": p.k,
             "n": p.n} for p in problems]


def make_weight(case: dict):
    """Random: exactly round(density*M*K) nonzeros, normal values, fixed seed. DLMC: the pattern
    with normal values from seed 0."""
    import scipy.sparse as sp

    from sparsert.frontend.weights import load_weight

    if case["kind"] == "dlmc":
        return load_weight(shared_dir() / case["source"], seed=0)
    m, k = case["m"], case["k"]
    rng = np.random.default_rng(m * 7919 + k)
    nnz = round(case["density"] * m * k)
    flat = rng.choice(m * k, size=nnz, replace=False)
    values = rng.standard_normal(nnz).astype(np.float32)
    values[values == 0] = 1.0
    return load_weight(sp.csr_matrix((values, (flat // k, flat % k)), shape=(m, k), dtype=np.float32))


# -- one run (child process) ----------------------------------------------------------------
def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_case(case: dict, *, backend: str, arch: str, jobs: int | None, max_slab_nnz: int | None,
             check: bool, sample_slabs: int | None = None) -> dict:
    from sparsert.backends import resolve
    from sparsert.config import settings
    from sparsert.options import KernelOptions
    from sparsert.pipeline import compile_units, plan_with

    w = make_weight(case)
    opts = KernelOptions(n=case["n"], arch=arch, max_slab_nnz=max_slab_nnz)
    with tempfile.TemporaryDirectory(prefix="sparsert-bench-cache-") as cache:
        os.environ["SPARSERT_CACHE_DIR"] = cache  # cold: an empty cache of its own
        t0 = time.perf_counter()
        impl = resolve("cuda", backend)  # chosen before planning: its budget cuts the slabs
        kind = impl.name
        s = plan_with(impl, w.matrix, opts, bias=None, weight_digest=w.digest())
        t1 = time.perf_counter()
        # what sparsert.compile does: the CUDA source only where the backend compiles it (NVRTC);
        # the PTX backend renders its PTX inside compile_units (ptx_render_s)
        units = impl.units(s, arch)
        t2 = time.perf_counter()
        all_units = units
        if sample_slabs and sample_slabs < len(units):  # evenly spread sample of the slabs
            step = len(units) / sample_slabs
            units = tuple(units[int(i * step)] for i in range(sample_slabs))
        cpu0 = _cpu_seconds()
        arts = compile_units(units, target="cuda", arch=arch, jobs=jobs, schedule=s, backend=kind)
        t3 = time.perf_counter()
        cpu1 = _cpu_seconds()
        warm = compile_units(units, target="cuda", arch=arch, jobs=jobs, schedule=s, backend=kind)
        t4 = time.perf_counter()
    rec = {
        "backend": kind, "nnz": s.nnz, "m": s.m, "k": s.k,
        "n": s.n, "vec": s.vec, "groups": s.groups, "rows_per_block": s.rows_per_block,
        "threads_x": s.threads_x, "blocks": len(s.blocks), "slabs": len(all_units),
        "max_slab_nnz": max_slab_nnz or impl.slab_budget(), "jobs": jobs or settings().jobs,
        "plan_s": t1 - t0, "render_s": t2 - t1,
        "ptx_render_s": sum(a.info.get("render_seconds", 0.0) for a in arts),  # inside compile_s
        "compile_s": t3 - t2, "compiler_cpu_s": sum(a.info.get("compile_seconds", 0.0) for a in arts),
        "compile_cpu_s": cpu1 - cpu0,  # this process + its ptxas children: robust to a busy machine
        "warm_s": t4 - t3, "warm_cached": sum(a.cached for a in warm),
        "sampled_slabs": len(units) if len(units) < len(all_units) else None,
        "sampled_nnz": sum(u.nnz for u in units),
        "source_bytes": sum(len(u.source.encode()) for u in all_units),  # CUDA source (0: not rendered)
        "ptx_bytes": sum(a.info.get("ptx_bytes", 0) for a in arts),
        "cubin_bytes": sum(len(a.binary) for a in arts),
        "registers": max((a.info.get("registers") or 0) for a in arts),
        # PTX backend: relocatable objects per slab, ptxas processes (objects + refits + entries),
        # and refits: a function that spilled under the first cap, assembled again alone
        "objects": sum(len(a.info.get("objects") or []) for a in arts),
        "ptxas_runs": sum(a.info.get("ptxas_runs") or 1 for a in arts),
        "refits": sum(a.info.get("refits") or 0 for a in arts),
        "refit_functions": sum(len(a.info.get("replaced") or []) for a in arts),
        "spill_bytes": sum((a.info.get("spill_stores") or 0) + (a.info.get("spill_loads") or 0) for a in arts),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_child_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "loadavg_1min": os.getloadavg()[0],  # other work on the machine inflates wall times
    }
    if rec["sampled_slabs"]:  # only some slabs compiled: scale the compile to all of them
        scale = s.nnz / rec["sampled_nnz"]
        rec["sample_scale"] = scale
        for key in ("compile_s", "compile_cpu_s", "compiler_cpu_s", "ptx_render_s", "cubin_bytes", "ptx_bytes"):
            rec[f"{key}_sampled"] = rec[key]
            rec[key] = type(rec[key])(rec[key] * scale)
    rec["total_s"] = rec["plan_s"] + rec["render_s"] + rec["compile_s"]
    rec["nnz_per_s"] = s.nnz / (rec["render_s"] + rec["compile_s"])
    if check:
        from sparsert.backends.cuda.sass import sass_stats

        stats = [sass_stats(a.binary) for a in arts]
        rec["ffma_imm"] = sum(x.ffma_imm for x in stats)
        rec["ffma_imm_ok"] = rec["ffma_imm"] == rec["sampled_nnz"] * s.vec
        rec["sass_spills"] = any(bool(x.spills) for x in stats)
    return rec


def child_main(spec: str) -> int:
    args = json.loads(spec)
    rec = run_case(args["case"], backend=args["backend"], arch=args["arch"], jobs=args["jobs"],
                   max_slab_nnz=args["max_slab_nnz"], check=args["check"], sample_slabs=args.get("sample_slabs"))
    print("RESULT " + json.dumps(rec), flush=True)
    return 0


def run_in_child(case: dict, args, backend: str, check: bool) -> dict:
    spec = json.dumps({"case": case, "backend": backend, "arch": args.arch, "jobs": args.jobs,
                       "max_slab_nnz": args.max_slab_nnz, "check": check, "sample_slabs": args.sample_slabs})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", "--child", spec], cwd=REPO,
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
    return {"error": f"exit {proc.returncode}: {tail}"}


# -- aggregation and report ------------------------------------------------------------------
_TIMED = ("plan_s", "render_s", "ptx_render_s", "compile_s", "compiler_cpu_s", "compile_cpu_s", "warm_s", "total_s",
          "nnz_per_s", "peak_rss_mib", "peak_child_rss_mib", "loadavg_1min")


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"], "runs": len(runs)}
    rec = dict(ok[0])
    for key in _TIMED:
        rec[key] = statistics.median(r[key] for r in ok)
    rec["runs"] = len(ok)
    rec["compile_s_runs"] = [round(r["compile_s"], 3) for r in ok]
    return rec


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def markdown(doc: dict) -> str:
    lines = [
        "# Compile time", "",
        f"Measured {doc['when']} on `{doc['machine']['cpu']}` ({doc['machine']['cores']} cores, no GPU), "
        f"arch {doc['arch']}; jobs (parallel compiles) per row in the JSON (default: the cores).", "",
        "Command:", "", "```bash", doc["command"], "```", "",
        "## Summary", "", summary_markdown(doc),
        "![compile throughput](compile_time.png)", "", "## Every kernel", "",
        "Median over runs (`runs`). `render s`: the CUDA source render, which `sparsert.compile` "
        "needs only for `nvrtc` (a `ptx` row with `source MiB` 0 skipped it, as compile() does; one "
        "with `source MiB` > 0 was measured with the CUDA render included, a few % slower). "
        "`compile s` is the wall time of `compile_units` (for `ptx` it includes rendering the PTX, "
        "`ptx s`). `CPU s`: CPU time of the compile (Python + compiler "
        "subprocesses), the number a busy machine inflates least. nnz/s = nnz / (render + compile). `peak MiB`: peak RSS of the Python process; "
        "`ptxas MiB`: the largest compiler subprocess (up to `jobs` of them run at once). `warm s`: "
        "the same compile again from the warm cache. `ffma ok`: FFMA-immediate count == nnz x vec "
        "over every CUBIN (nvdisasm); `spill B`: ptxas spill bytes. `load`: the machine's 1-minute load "
        "average at the end of the run (2 cores; other jobs shared the machine, inflating wall times). "
        "Rows marked *extrapolated* compiled an evenly spread sample of their slabs (`--sample-slabs`) "
        "and scale compile times by total nnz / sampled nnz: estimates, not measurements of the whole.", "",
        "| case | backend | jobs | M x K | N | nnz | vec/groups/rows | slabs | render s | ptx s | compile s | CPU s "
        "| total s | nnz/s | source MiB | CUBIN MiB | peak MiB | ptxas MiB | regs | spill B | ffma ok "
        "| warm s | runs | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r.get('backend_requested', '')} | | | | | | | | | | | | | | | | "
                         f"| | | | | error: {r['error'].splitlines()[-1][:80]} |")
            continue
        case = r["case"] if not r.get("sampled_slabs") else (
            f"{r['case']} (extrapolated from {r['sampled_slabs']} of {r['slabs']} slabs)")
        lines.append(
            f"| {case} | {r['backend']} | {r['jobs']} | {r['m']} x {r['k']} | {r['n']} | {r['nnz']} "
            f"| {r['vec']}/{r['groups']}/{r['rows_per_block']} | {r['slabs']} | {r['render_s']:.2f} "
            f"| {r['ptx_render_s']:.2f} | {r['compile_s']:.2f} | {r.get('compile_cpu_s', float('nan')):.2f} "
            f"| {r['total_s']:.2f} | {r['nnz_per_s']:.0f} "
            f"| {_mib(r['source_bytes'])} | {_mib(r['cubin_bytes'])} | {r['peak_rss_mib']:.0f} "
            f"| {r['peak_child_rss_mib']:.0f} | {r['registers']} | {r['spill_bytes']} "
            f"| {r.get('ffma_imm_ok', 'n/a')} | {r['warm_s']:.3f} | {r['runs']} "
            f"| {r.get('loadavg_1min', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def _group(r: dict) -> str:
    """Summary group of a record: each random size on its own, DLMC per model and sparsity."""
    parts = r["case"].split("/")
    if parts[0] == "dlmc":
        return f"DLMC {parts[1]} {parts[2]}"
    return r["case"]


def summary_markdown(doc: dict) -> str:
    """Per group: layers, nonzeros, seconds, aggregate and per-kernel nnz/s, the worst case."""
    groups: dict[tuple, list] = {}
    for r in doc["results"]:
        if "error" not in r and not r.get("sampled_slabs"):
            groups.setdefault((_group(r), r["backend"], r["jobs"]), []).append(r)
    lines = [
        "| group | backend | jobs | kernels | nnz | total s | nnz/s (all) | nnz/s min / median | "
        "slowest kernel s | single-slab kernels | peak MiB (python / ptxas) | ffma ok | spill B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, backend, jobs), rs in groups.items():
        nnz, total = sum(r["nnz"] for r in rs), sum(r["total_s"] for r in rs)
        rates = sorted(r["nnz_per_s"] for r in rs)
        lines.append(
            f"| {name} | {backend} | {jobs} | {len(rs)} | {nnz} | {total:.2f} | {nnz / total:.0f} "
            f"| {rates[0]:.0f} / {statistics.median(rates):.0f} | {max(r['total_s'] for r in rs):.2f} "
            f"| {sum(1 for r in rs if r['slabs'] == 1)} "
            f"| {max(r['peak_rss_mib'] for r in rs):.0f} / {max(r['peak_child_rss_mib'] for r in rs):.0f} "
            f"| {all(r.get('ffma_imm_ok', False) for r in rs)} | {sum(r['spill_bytes'] for r in rs)} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> bool:
    """nnz/s against nnz, one point per kernel (log-log), the 20,000 nnz/s target as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list] = {}
    for r in doc["results"]:
        if "error" in r or r.get("sampled_slabs"):
            continue
        label = ("DLMC" if r["case"].startswith("dlmc/") else "random 90%") + f", {r['backend']}, {r['jobs']} job(s)"
        series.setdefault(label, []).append((r["nnz"], r["nnz_per_s"]))
    for label, pts in sorted(series.items()):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, "o" if label.startswith("DLMC") else "s-", ms=3 if label.startswith("DLMC") else 6,
                label=label, alpha=0.7)
    ax.axhline(20000, color="black", lw=1, ls="--", label="20,000 nnz/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nonzeros of the kernel")
    ax.set_ylabel("nnz / s (render + compile, cold cache)")
    ax.set_title(f"sparsert compile throughput, {doc['machine']['cores']} cores, {doc['arch']}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def toolchain() -> dict:
    out = {}
    try:
        from sparsert.toolchain.nvrtc import nvrtc_version

        out["nvrtc"] = "%d.%d" % nvrtc_version()
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        out["nvrtc"] = f"unavailable: {exc}"
    try:
        from sparsert.toolchain.ptxas import find_ptxas, ptxas_version

        out["ptxas"] = ptxas_version()
        out["ptxas_path"] = find_ptxas()
    except Exception as exc:  # noqa: BLE001
        out["ptxas"] = f"unavailable: {exc}"
    return out


# -- results files -----------------------------------------------------------------------------
# A name ending in .jsonl (or .jsonl.gz: gzip-compressed) holds JSON Lines: the first line is
# {"meta": <every key of the document but its rows>, "rows": <the rows' key>}, then one row per
# line. Any other name (a .json piece for --merge) holds the whole document, pretty-printed.
def write_doc(path: Path, doc: dict, *, rows: str = "results", sort_keys: bool = True) -> None:
    """Written to a temp file and renamed; gzip with mtime 0, so the same document gives the same bytes."""
    path = Path(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        head = {"meta": {k: v for k, v in doc.items() if k != rows}, "rows": rows}
        text = "".join(json.dumps(x, sort_keys=sort_keys, separators=(",", ":")) + "\n"
                       for x in (head, *doc[rows]))
    else:
        text = json.dumps(doc, indent=1, sort_keys=sort_keys) + "\n"
    data = gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_doc(path: Path) -> dict:
    """The document write_doc wrote (a .json, .jsonl or .jsonl.gz file)."""
    path = Path(path)
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        return json.loads(text)
    head, *rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return {**head["meta"], head["rows"]: rows}


def beside(path: Path, suffix: str) -> Path:
    """The .md / .png of a results file: compile_time.jsonl.gz -> compile_time.md."""
    return path.with_name(Path(path.name.removesuffix(".gz")).stem + suffix)


def merge(paths: list[Path], out: Path) -> int:
    """One report from runs made in pieces (long cases run separately, in the background)."""
    docs = [read_doc(p) for p in paths]
    doc = dict(docs[0])
    doc["command"] = "\n".join(d["command"] for d in docs)
    doc["when"] = " / ".join(d["when"] for d in docs)
    doc["results"] = [r for d in docs for r in d["results"]]
    write_doc(out, doc)
    beside(out, ".md").write_text(markdown(doc))
    plot(doc, beside(out, ".png"))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES),
                    help="square random matrices (M = K = size); none: skip them")
    ap.add_argument("--density", type=float, default=0.1, help="nonzero fraction of the random matrices")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="N of the random cases")
    ap.add_argument("--dlmc", choices=("none", "rn50", "transformer", "all"), default="none")
    ap.add_argument("--dlmc-every", type=int, default=1, help="every k-th DLMC layer (sorted by path)")
    ap.add_argument("--only", help="regex on case names")
    ap.add_argument("--backend", nargs="+", default=["ptx"], choices=("ptx", "nvrtc", "auto"))
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compiles (default SPARSERT_JOBS / cores)")
    ap.add_argument("--max-slab-nnz", type=int, default=None, help="slab budget (default SPARSERT_MAX_SLAB_NNZ)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--repeat-max-nnz", type=int, default=200_000, help="bigger cases run once")
    ap.add_argument("--no-check", action="store_true", help="skip the SASS check of the CUBINs")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_time.jsonl.gz",
                    help="results file: .jsonl.gz / .jsonl (JSON Lines), or .json (one document)")
    ap.add_argument("--sample-slabs", type=int, default=None,
                    help="compile only this many slabs (evenly spread) and scale the compile time "
                         "by nnz: an extrapolation, marked as such, for cases too long to run whole")
    ap.add_argument("--merge", type=Path, nargs="+", help="combine earlier result files into --out (no runs)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.merge:
        return merge(args.merge, args.out)
    cases = random_cases(args.sizes, args.density, args.n)
    if args.dlmc != "none":
        cases += dlmc_cases(args.dlmc, args.dlmc_every)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c["name"])]
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "toolchain": toolchain(),
        "arch": args.arch, "jobs": args.jobs, "max_slab_nnz": args.max_slab_nnz,
        "command": "python3 -m benchmarks.compile_time " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for backend in args.backend:
            runs = []
            for i in range(args.repeat):
                rec = run_in_child(case, args, backend, check=not args.no_check and i == 0)
                runs.append(rec)
                if "error" in rec or rec["nnz"] > args.repeat_max_nnz:
                    break
            checked = {k: runs[0][k] for k in ("ffma_imm", "ffma_imm_ok", "sass_spills") if k in runs[0]}
            rec = summarise(runs) | checked | {"case": case["name"], "backend_requested": backend}
            doc["results"].append(rec)
            if "error" in rec:
                print(f"{case['name']} [{backend}]: ERROR {rec['error']}", flush=True)
            else:
                print(f"{case['name']} [{rec['backend']}]: nnz {rec['nnz']} slabs {rec['slabs']} "
                      f"render {rec['render_s']:.2f}s compile {rec['compile_s']:.2f}s "
                      f"-> {rec['nnz_per_s']:.0f} nnz/s, peak {rec['peak_rss_mib']:.0f} MiB, "
                      f"regs {rec['registers']}, ffma ok {rec.get('ffma_imm_ok')}, warm {rec['warm_s']:.3f}s",
                      flush=True)
            # rewritten after every case, so a long run leaves usable results when cut short
            write_doc(args.out, doc)
            beside(args.out, ".md").write_text(markdown(doc))
    plot(doc, beside(args.out, ".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
