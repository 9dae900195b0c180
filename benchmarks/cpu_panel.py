"""The CPU runtime's panel rule, A/B: whole panels against the L2-sized chunks it replaced (1 thread).

    python3 -m benchmarks.cpu_panel --threads 1 --rounds 25     # writes results/cpu-panel.{jsonl,md,png}

For every spmm_dl problem (problems/spmm_dl.csv, at the sparsity it lists; uniform random mask,
N(0, 1) values, fixed seed) one kernel is compiled, and called two ways in this one process,
alternating call by call (the order flips every round), each call timed on its own, B cycled
through enough copies (> 64 MB) that every call reads it cold:

  whole  the launcher's rule (CpuLauncher.chunk_for): one thread packs all of N at once when
         that panel is <= WHOLE_PANEL_BYTES, else L2-sized chunks (several threads: chunks)
  chunks the rule before (pinned through KernelOptions.chunk, which changes no code): chunks of
         max(16 tiles, 256 KiB / (4 K)) columns, halved while there are fewer than 4 items

The ratio is chunks' median time / whole's (> 1: the whole panel is faster). Both calls compute
the same numbers (checked bit for bit before timing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sparsert
from benchmarks.cpu_baselines import data_root
from sparsert.backends.cpu.launch import MIN_TILES, PANEL_BYTES, WHOLE_PANEL_BYTES


def old_chunk(k: int, n: int, width: int, blocks: int, threads: int) -> int:
    """The launcher's chunk before the whole-panel rule (commit 1a58c63)."""
    n_pad = -(-n // width) * width
    chunk = min(max(MIN_TILES * width, (PANEL_BYTES // (4 * k)) // width * width), n_pad)
    while chunk > width and blocks * -(-n // chunk) < 4 * threads:
        chunk = max(width, (chunk // 2) // width * width)
    return chunk


def run_problem(row: dict, threads: int, rounds: int, rng) -> dict:
    m, k, n, sparsity = int(row["M"]), int(row["K"]), int(row["N"]), float(row["sparsity"])
    a = sp.random(m, k, density=1 - sparsity, random_state=int(row["problem"]), format="csr", dtype=np.float32)
    a.data = rng.standard_normal(a.nnz).astype(np.float32)
    whole = sparsert.compile(a, options=sparsert.KernelOptions(n=n, target="cpu"))
    probe = rng.standard_normal((k, n)).astype(np.float32)
    reference = whole(probe, threads=threads)
    launcher = whole._launcher
    before = old_chunk(k, n, launcher.width, launcher.lib.nblocks, threads)
    chunks = sparsert.compile(a, options=sparsert.KernelOptions(n=n, target="cpu", chunk=before))
    assert np.array_equal(chunks(probe, threads=threads).view(np.uint32), reference.view(np.uint32))
    sets = max(2, int(64e6 // (4 * k * n)) + 1)
    bs = [rng.standard_normal((k, n)).astype(np.float32) for _ in range(sets)]
    out = np.empty((m, n), np.float32)
    times: dict[str, list[float]] = {"whole": [], "chunks": []}
    kernels = {"whole": whole, "chunks": chunks}
    i = 0
    for r in range(rounds + 2):
        for name in ("whole", "chunks") if r % 2 else ("chunks", "whole"):
            b = bs[i % sets]
            i += 1
            t0 = time.perf_counter_ns()
            kernels[name](b, out=out, threads=threads)
            if r >= 2:  # two warm-up rounds
                times[name].append((time.perf_counter_ns() - t0) / 1e3)
    med = {name: float(np.median(v)) for name, v in times.items()}
    return {"problem": f"{row['problem']}@{sparsity:.2f}", "m": m, "k": k, "n": n, "nnz": int(a.nnz),
            "threads": threads, "chunk_whole": launcher.chunk_for(threads, 1), "chunk_before": before,
            "median_us": med, "p25_us": {n_: float(np.percentile(v, 25)) for n_, v in times.items()},
            "p75_us": {n_: float(np.percentile(v, 75)) for n_, v in times.items()},
            "ratio": med["chunks"] / med["whole"], "loadavg": os.getloadavg()[0]}


def write_md(records: list[dict], path: Path, command: str) -> None:
    lines = ["# CPU panel rule: whole panels vs L2-sized chunks (A/B)", "",
             (f"`{command}`. Same kernel, called both ways alternately (benchmarks/cpu_panel.py docstring); "
              f"ratio = chunks' median / whole's (> 1: the whole panel is faster). WHOLE_PANEL_BYTES = "
              f"{WHOLE_PANEL_BYTES >> 20} MiB. Load average (1 min) per problem in the last column."), ""]
    for threads in sorted({r["threads"] for r in records}):
        rs = [r for r in records if r["threads"] == threads]
        for label, sel in (("all", rs), ("90%", [r for r in rs if r["problem"].endswith("0.90")]),
                           ("95%", [r for r in rs if r["problem"].endswith("0.95")])):
            if sel:
                g = float(np.exp(np.mean(np.log([r["ratio"] for r in sel]))))
                lines.append(f"- {threads} thread(s), {label}: geomean ratio **{g:.2f}** over {len(sel)} problems "
                             f"(min {min(r['ratio'] for r in sel):.2f}, max {max(r['ratio'] for r in sel):.2f})")
        lines += ["", "| problem | M x K x N | chunk before | chunk now | before (us) | now (us) | ratio | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {r['problem']} | {r['m']}x{r['k']}x{r['n']} | {r['chunk_before']} | {r['chunk_whole']} | "
                         f"{r['median_us']['chunks']:.0f} | {r['median_us']['whole']:.0f} | {r['ratio']:.2f} | "
                         f"{r['loadavg']:.1f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4))
    rs = [r for r in records if r["threads"] == min(r_["threads"] for r_ in records)]
    ax.bar(range(len(rs)), [r["ratio"] for r in rs], color=["tab:blue" if r["ratio"] >= 1 else "tab:red" for r in rs])
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(range(len(rs)), [r["problem"] for r in rs], rotation=90, fontsize=7)
    ax.set_ylabel("speedup of whole panels")
    ax.set_title(f"CPU panel rule A/B, {rs[0]['threads']} thread(s): old chunk time / new time (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="sparsert: large build")
    with open(data_root() / "problems" / "spmm_dl.csv") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    records = []
    for threads in args.threads:
        for row in rows:
            rec = run_problem(row, threads, args.rounds, rng)
            records.append(rec)
            print(f"{rec['problem']:>8} {rec['m']}x{rec['k']}x{rec['n']}: chunk {rec['chunk_before']} -> "
                  f"{rec['chunk_whole']}, {rec['median_us']['chunks']:.0f} -> {rec['median_us']['whole']:.0f} us "
                  f"({rec['ratio']:.2f}x)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python3 -m benchmarks.cpu_panel " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(args.out / "cpu-panel.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    write_md(records, args.out / "cpu-panel.md", command.strip())
    plot(records, args.out / "cpu-panel.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
