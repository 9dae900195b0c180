"""Results JSON -> markdown table and speedup plot (written beside the JSON).

    python3 -m benchmarks.report benchmarks/results/spmm-<time>-<device>.json [--md X] [--png Y]

Speedup of sparsert over a baseline = baseline time / sparsert time (> 1: sparsert is faster),
per record; summaries are geometric means over the records where both were timed. The paper's
T4 speedup (vs cuBLAS, batch 1) stands beside ours for reference only: another GPU, other
library versions. Needs no GPU (matplotlib with the Agg backend).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

BASELINES = (("cublas", "cuBLAS"), ("cusparse", "cuSPARSE"), ("torch_dense", "torch dense"),
             ("torch_csr", "torch CSR"))
MAX_LABELLED_BARS = 48  # above this a panel plots sorted speedups as lines, without labels


def load(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"{path}: not a benchmark results file (no 'records' list)")  # noqa: TRY004
    return data


def speedup(rec: dict, baseline: str) -> float | None:
    """baseline_us / sparsert_us, or None when either was not timed."""
    ours, theirs = rec.get("sparsert_us"), rec.get(f"{baseline}_us")
    if not ours or not theirs or ours <= 0 or theirs <= 0:
        return None
    return theirs / ours


def geomean(values) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def groups(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Records by (suite, batch), in first-seen order."""
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        out[(r.get("suite", "?"), int(r.get("batch", 1)))].append(r)
    return dict(out)


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _us(v: float | None) -> str:
    return "—" if v is None else (f"{v:.1f}" if v >= 100 else f"{v:.2f}")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _err(v: float | None) -> str:
    return "—" if v is None else f"{v:.1e}"


def _status(rec: dict) -> str:
    failed = rec.get("failed") or {}
    if any(k.split(":")[0] == "sparsert" for k in failed):
        return " **FAIL**"
    return ""


def header(data: dict) -> list[str]:
    env, peaks, st = data.get("environment") or {}, data.get("peaks") or {}, data.get("settings") or {}
    lines = [f"# SpMM: sparsert vs cuBLAS, cuSPARSE, torch ({env.get('device') or 'unknown device'})", ""]
    facts = [
        ("device", env.get("device")), ("driver", env.get("driver")),
        ("CUDA runtime", env.get("cuda_runtime")), ("cuBLAS", env.get("cublas")),
        ("cuSPARSE", env.get("cusparse")), ("CuPy", env.get("cupy")), ("torch", env.get("torch")),
        ("NVRTC", env.get("nvrtc")), ("sparsert", env.get("sparsert")),
        ("commit", env.get("git_commit")), ("run", data.get("created")),
    ]
    lines.append(" · ".join(f"{k} {v}" for k, v in facts if v))
    lines.append("")
    if peaks.get("fp32_flops"):
        lines.append(f"FP32 peak {peaks['fp32_flops'] / 1e12:.1f} TFLOP/s ({peaks.get('formula', '')}: "
                     f"{peaks.get('sm_count')} × {peaks.get('sm_clock_mhz')} MHz × "
                     f"{peaks.get('fma_per_clk_per_sm')} × 2)")
    if peaks.get("dram_bytes_per_s"):
        lines.append(f"DRAM {peaks['dram_bytes_per_s'] / 1e9:.0f} GB/s measured "
                     f"({peaks.get('method', 'device copy')})")
    if st:
        lines.append(f"Timing: {st.get('timing', 'CUDA events')}; {st.get('warmup')} warm-up, "
                     f"{st.get('repeat')} samples; every result checked against cuBLAS "
                     f"(tolerance {st.get('tol')}); TF32 off.")
    lines.append("")
    return lines


def summary_table(data: dict) -> list[str]:
    lines = ["## Summary: geometric-mean speedup of sparsert", "",
             "| suite | batch | problems | " + " | ".join(f"vs {lab}" for _, lab in BASELINES)
             + " | paper T4 vs cuBLAS | median efficiency |",
             "|---|---:|---:|" + "---:|" * len(BASELINES) + "---:|---:|"]
    for (suite, batch), recs in groups(data["records"]).items():
        effs = sorted(r["efficiency"]["sparsert"] for r in recs
                      if (r.get("efficiency") or {}).get("sparsert"))
        med = effs[len(effs) // 2] if effs else None
        paper = geomean(r.get("reported_speedup_t4") for r in recs)
        cells = [_x(geomean(speedup(r, b) for r in recs)) for b, _ in BASELINES]
        lines.append(f"| {suite} | {batch} | {len(recs)} | " + " | ".join(cells)
                     + f" | {_x(paper)} | {_pct(med)} |")
    lines.append("")
    return lines


def detail_table(suite: str, batch: int, recs: list[dict]) -> list[str]:
    lines = [f"## {suite}, batch {batch}", "",
             "| problem | M | K | N | sparsity | sparsert µs | "
             + " | ".join(f"×{lab}" for _, lab in BASELINES)
             + " | T4 paper ×cuBLAS | floor µs | efficiency | bound | max rel err |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(BASELINES) + "---:|---:|---:|---|---:|"]
    for r in recs:
        floor = r.get("floor") or {}
        cells = [_x(speedup(r, b)) for b, _ in BASELINES]
        lines.append(
            f"| {r['problem']}{_status(r)} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.3f} | "
            f"{_us(r.get('sparsert_us'))} | " + " | ".join(cells) + " | "
            f"{_x(r.get('reported_speedup_t4'))} | {_us(floor.get('floor_us'))} | "
            f"{_pct((r.get('efficiency') or {}).get('sparsert'))} | {floor.get('bound', '—')} | "
            f"{_err(r.get('max_rel_err'))} |")
    lines.append("")
    return lines


def problems_section(records: list[dict]) -> list[str]:
    rows = []
    for r in records:
        for what, reasons in (("failed", r.get("failed") or {}), ("skipped", r.get("skipped") or {})):
            for method, why in reasons.items():
                rows.append(f"| {r['problem']} | {r['N']} | {method} | {what} | {why} |")
    if not rows:
        return []
    return ["## Failed and skipped measurements", "", "| problem | N | method | | why |",
            "|---|---:|---|---|---|", *rows, ""]


def markdown(data: dict) -> str:
    lines = header(data) + summary_table(data)
    for (suite, batch), recs in groups(data["records"]).items():
        lines += detail_table(suite, batch, recs)
    lines += problems_section(data["records"])
    lines += [("Columns: ×X = X's time / sparsert's time (higher: sparsert faster); floor = "
               "max(2·nnz·N FLOPs at the FP32 peak, bytes of B rows used + C at the measured DRAM "
               "bandwidth); efficiency = floor / sparsert time; max rel err = max |C - C_cuBLAS| / "
               "max |C_cuBLAS| over all methods (cuBLAS: against float64)."), ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(groups(data["records"]).items())
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(14, 3.6 * max(1, len(panels))),
                             squeeze=False)
    for ax, ((suite, batch), recs) in zip(axes[:, 0], panels):
        names = [r["problem"] for r in recs]
        series = {lab: [speedup(r, b) for r in recs] for b, lab in BASELINES}
        series = {k: v for k, v in series.items() if any(x is not None for x in v)}
        if len(recs) <= MAX_LABELLED_BARS:
            width = 0.8 / max(1, len(series))
            for i, (lab, vals) in enumerate(series.items()):
                xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(recs))]
                ax.bar(xs, [v if v is not None else 0 for v in vals], width, label=f"vs {lab}")
            paper = [r.get("reported_speedup_t4") for r in recs]
            if any(p is not None for p in paper):
                ax.scatter([j for j, p in enumerate(paper) if p is not None],
                           [p for p in paper if p is not None], marker="_", s=200, color="black",
                           zorder=3, label="paper, T4 vs cuBLAS")
            ax.set_xticks(range(len(recs)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        else:  # hundreds of DLMC layers: each baseline's speedups, sorted
            for lab, vals in series.items():
                ax.plot(sorted(v for v in vals if v is not None), label=f"vs {lab}")
            ax.set_xlabel("problems, sorted by speedup")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel("speedup of sparsert")
        ax.set_title(f"{suite}, batch {batch} ({(data.get('environment') or {}).get('device') or ''})")
        if series:
            ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(json_path: Path, md: Path | None = None, png: Path | None = None) -> tuple[Path, Path]:
    json_path = Path(json_path)
    data = load(json_path)
    md = Path(md) if md else json_path.with_suffix(".md")
    png = Path(png) if png else json_path.with_suffix(".png")
    md.write_text(markdown(data))
    plot(data, png)
    return md, png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a results JSON written by benchmarks.spmm")
    ap.add_argument("--md", type=Path, help="markdown output (default: beside the JSON)")
    ap.add_argument("--png", type=Path, help="plot output (default: beside the JSON)")
    args = ap.parse_args(argv)
    try:
        md, png = write_report(args.results, args.md, args.png)
    except (OSError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"{md}\n{png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
