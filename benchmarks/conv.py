"""Sparse Conv2d benchmark: sparsert.compile_conv2d against cuDNN (PyTorch), TF32 off and on.

    python3 -m benchmarks.conv                                # everything, batch 1 and 8
    python3 -m benchmarks.conv --suite csv --batches 1        # conv3x3_dl.csv only
    python3 -m benchmarks.conv --compile-only --arch sm_90    # fill the kernel cache, no GPU needed
    python3 -m benchmarks.conv --from-results R.json          # re-check R, redo its table and plot

Problems: ../shared/problems/conv3x3_dl.csv (uniformly random masks at the listed sparsity) and
the DLMC ResNet-50 3x3 layers (bottleneck_2_*: real magnitude-pruned patterns stored as im2col
matrices [C_out, 9*C_in] with the columns tap-major, k = (ky*3 + kx)*C_in + c, as DLMC orders them
(shared/dlmc/ABOUT.md); geometry from rn50_batchsizes.txt), each at batch 1 and 8. Protocol per
(problem, batch): compile (through the kernel cache); run sparsert once into a NaN-filled output
and check it against a float64 convolution (cuDNN in double precision on the GPU); check cuDNN
FP32 the same way (TF32's error is recorded, not held to the tolerance); then time sparsert,
cuDNN FP32 and cuDNN TF32 with sparsert.tune.measure_us (CUDA events, warm-up, median, host
overhead hidden, inputs and outputs rotated past the L2). cuDNN runs with benchmark=True (its
algorithm search happens in the warm-up). A method that fails its check is not timed.

Writes benchmarks/results/conv-<time>-<device>.json (rewritten after every measurement) with
records {problem, H, W, C_in, C_out, kernel, stride, padding, batch, sparsity, sparsert_us,
cudnn_us, cudnn_tf32_us, max_rel_err, ...} plus device and versions, and a .md table and .png plot
beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import csv
import gc
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

SCHEMA = "sparsert.bench.conv/1"
RECORD_FIELDS = {
    "problem": str, "H": int, "W": int, "C_in": int, "C_out": int, "kernel": int, "stride": int,
    "padding": int, "batch": int, "sparsity": float, "sparsert_us": float, "cudnn_us": float,
    "cudnn_tf32_us": float, "max_rel_err": float,
}
DEFAULT_RTOL = 1e-4  # normwise vs float64; fp32 sums over <= C_in*9 terms stay ~1e-6
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    problem: str
    suite: str  # "conv3x3_dl" or "dlmc-rn50"
    H: int
    W: int
    C_in: int
    C_out: int
    kernel: int
    stride: int
    padding: int
    sparsity: float
    weight: str | None = None  # a DLMC .smtx im2col pattern (tap-major columns); None: a random mask

    def weight_array(self, seed: int = 0) -> np.ndarray:
        """OIHW float32 filter. DLMC: the pattern with normal values from `seed`; CSV: a uniformly
        random mask with exactly round((1 - sparsity) * size) nonzeros. Deterministic."""
        shape = (self.C_out, self.C_in, self.kernel, self.kernel)
        if self.weight is not None:
            from sparsert.frontend.weights import load_weight

            # DLMC's columns are tap-major, (ky, kx, c): to OIHW through (O, kh, kw, I)
            dense = load_weight(self.weight, seed=seed).matrix.toarray()
            return dense.reshape(self.C_out, self.kernel, self.kernel, self.C_in).transpose(0, 3, 1, 2).copy()
        rng = np.random.default_rng(
            int.from_bytes(hashlib.sha256(f"{self.problem}\0{seed}".encode()).digest()[:8], "little"))
        size = math.prod(shape)
        keep = round((1 - self.sparsity) * size)
        values = rng.standard_normal(keep).astype(np.float32)
        values[values == 0] = 1.0  # an exact zero would vanish from the pattern
        flat = np.zeros(size, np.float32)
        flat[rng.choice(size, keep, replace=False)] = values
        return flat.reshape(shape)


def csv_problems(path: Path) -> list[Problem]:
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(Problem(
                problem=f"conv3x3_dl/p{row['problem']}-s{round(float(row['sparsity']) * 100)}",
                suite="conv3x3_dl", H=int(row["image_hw"]), W=int(row["image_hw"]),
                C_in=int(row["in_channels"]), C_out=int(row["out_channels"]), kernel=int(row["kernel"]),
                stride=int(row["stride"]), padding=int(row["padding"]), sparsity=float(row["sparsity"])))
    return out


_DLMC_3X3 = re.compile(r"bottleneck_2_block_group(?:(\d)_\d_1|_projection_block_group(\d))$")


def dlmc_problems(shared: Path, sparsities=(0.9, 0.95)) -> list[Problem]:
    """The ResNet-50 3x3 layers, geometry from the matrix shape and rn50_batchsizes.txt.

    N there is the output H*W at batch 1. The 3x3 of a projection block downsamples (stride 2,
    ResNet-50 v1.5) except in group 1, whose input is already 56x56 after the stem's pooling.
    """
    sizes = dict(line.strip().split(",") for line in
                 (shared / "dlmc" / "rn50_batchsizes.txt").read_text().splitlines() if line.strip())
    out = []
    for sparsity in sparsities:
        folder = shared / "dlmc" / "rn50" / "magnitude_pruning" / f"{sparsity:g}"
        for path in sorted(folder.glob("bottleneck_2_*.smtx")):
            match = _DLMC_3X3.match(path.stem)
            if match is None:
                continue
            with open(path) as fh:
                m, k, nnz = (int(v) for v in fh.readline().split(","))
            side = math.isqrt(int(sizes[path.stem]))
            stride = 2 if match.group(2) not in (None, "1") else 1
            out.append(Problem(
                problem=f"rn50/{sparsity:g}/{path.stem}", suite="dlmc-rn50", H=side * stride,
                W=side * stride, C_in=k // 9, C_out=m, kernel=3, stride=stride, padding=1,
                sparsity=round(1 - nnz / (m * k), 6), weight=str(path)))
    return out


# --------------------------------------------------------------------------- measuring (GPU)


def _rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| over torch tensors (inf if anything is not finite)."""
    import torch

    got = got.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    scale = float(ref.abs().max())
    diff = float((got - ref).abs().max())
    return diff / scale if scale > 0 else diff


def measure(p: Problem, batch: int, *, args) -> dict:
    import torch
    import torch.nn.functional as F

    import sparsert
    from benchmarks import common

    rec: dict = {
        "problem": p.problem, "suite": p.suite, "H": p.H, "W": p.W, "C_in": p.C_in,
        "C_out": p.C_out, "kernel": p.kernel, "stride": p.stride, "padding": p.padding,
        "batch": batch, "sparsity": p.sparsity, "sparsert_us": None, "cudnn_us": None,
        "cudnn_tf32_us": None, "max_rel_err": None, "rel_err": {}, "failed": {}, "timing": {},
    }
    w = p.weight_array(args.seed)
    t0 = time.perf_counter()
    try:
        conv = sparsert.compile_conv2d(w, (p.H, p.W), stride=p.stride, padding=p.padding,
                                       batch=batch, arch=args.arch)
    except sparsert.SparsertError as e:
        rec["failed"]["sparsert"] = f"compile: {e}".splitlines()[0]
        return rec
    st = conv.stats
    rec["nnz"] = st.nnz
    rec["stamp"] = common.stamp(getattr(args, "env", None) or {}, conv)
    rec["kernel_info"] = {**conv.schedule.params(), "registers": st.registers,
                          "spill_stores": st.spill_stores, "cached_slabs": st.cached_slabs,
                          "compile_s": round(time.perf_counter() - t0, 3), "arch": conv.arch,
                          "backend": conv.backend}

    dev = torch.device("cuda")
    in_bytes, out_bytes = 4 * math.prod(conv.input_shape), 4 * math.prod(conv.output_shape)
    l2, free = common.l2_and_free_bytes()
    sets = common.rotation_count(in_bytes + out_bytes, l2, free // 4)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    xs = [torch.randn(conv.input_shape, device=dev, generator=gen) for _ in range(sets)]
    ys = [torch.full(conv.output_shape, math.nan, device=dev) for _ in range(sets)]
    wd = torch.from_numpy(w).to(dev)
    geo = {"stride": p.stride, "padding": p.padding}
    torch.backends.cudnn.benchmark = True
    with torch.no_grad():
        ref = F.conv2d(xs[0].double(), wd.double(), **geo)
        conv(xs[0], out=ys[0])
        torch.cuda.synchronize()
        rec["rel_err"]["sparsert"] = _rel_err(ys[0], ref)
        for tf32, name in ((False, "cudnn"), (True, "cudnn_tf32")):
            torch.backends.cudnn.allow_tf32 = tf32
            rec["rel_err"][name] = _rel_err(F.conv2d(xs[0], wd, **geo), ref)
        torch.backends.cudnn.allow_tf32 = False
        del ref
        rec["max_rel_err"] = rec["rel_err"]["sparsert"]

        launches = {"sparsert": lambda i: conv(xs[i % sets], out=ys[i % sets])}
        for tf32, name in ((False, "cudnn"), (True, "cudnn_tf32")):
            launches[name] = lambda i, tf32=tf32: _cudnn(F, xs[i % sets], wd, geo, tf32)
        for name, launch in launches.items():
            err = rec["rel_err"][name]
            if name != "cudnn_tf32" and not err <= args.rtol:  # TF32 is inexact by design
                rec["failed"][name] = f"max relative error {err:.2e} vs float64 > {args.rtol:g}"
                continue
            try:
                meas = common.measure_us(launch, warmup=args.warmup, repeat=args.repeat)
            except Exception as e:  # noqa: BLE001 - a CUDA/library error in one method
                rec["failed"][name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                continue
            rec[f"{name}_us"] = meas.median_us
            rec["timing"][name] = meas.as_dict()
        torch.backends.cudnn.allow_tf32 = False
    gc.collect()  # drop the rotated operands before the next problem allocates its own
    torch.cuda.empty_cache()
    return rec


def _cudnn(F, x, w, geo, tf32: bool):
    import torch

    torch.backends.cudnn.allow_tf32 = tf32  # a flag read at dispatch: set on every call
    return F.conv2d(x, w, **geo)


# --------------------------------------------------------------------------- checking and reporting


def _malformed(r: dict) -> list[str]:
    """What is wrong with a record's fields (types, finiteness, positive times); [] if nothing."""
    out = []
    for name, kind in RECORD_FIELDS.items():
        value = r.get(name)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            out.append(f"{name}={value!r}, expected {kind.__name__}")
        elif kind is not str and not math.isfinite(value):
            out.append(f"{name}={value!r} is not finite")
        elif name.endswith("_us") and not value > 0:
            out.append(f"{name}={value!r}, expected a positive time")
    return out


def well_formed(doc: dict) -> list[dict]:
    """The records the table and plot can show (the others are reported by check_results)."""
    return [r for r in doc.get("records", []) if not _malformed(r)]


def check_results(doc: dict, rtol: float = DEFAULT_RTOL) -> list[str]:
    """Every problem with a results document: schema, fields, sane timings, errors within rtol."""
    problems = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema: {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("device", "versions", "records"):
        if key not in doc:
            problems.append(f"{key}: missing")
    for i, r in enumerate(doc.get("records", [])):
        where = f"records[{i}] ({r.get('problem', '?')}, batch {r.get('batch', '?')})"
        for method, why in sorted((r.get("failed") or {}).items()):
            problems.append(f"{where}: {method} failed: {why}")
        bad = _malformed(r)
        problems += [f"{where}: {line}" for line in bad]
        if isinstance(r.get("max_rel_err"), (int, float)) and not r["max_rel_err"] <= rtol:
            problems.append(f"{where}: max_rel_err {r['max_rel_err']:.3g} exceeds {rtol:g}")
    return problems


def _geomean(values) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def markdown_table(doc: dict) -> str:
    lines = []
    if doc.get("synthetic"):
        lines += ["> **SYNTHETIC DATA: not a measurement.** Generated to test the reporting code.", ""]
    dev, ver = doc.get("device") or {}, doc.get("versions") or {}
    shown = ", ".join(f"{k} {ver[k]}" for k in ("sparsert", "torch", "torch_cuda", "cudnn", "cupy",
                                                  "nvrtc", "driver") if ver.get(k) is not None)
    lines += [f"# Sparse Conv2d: sparsert vs cuDNN (PyTorch) on {dev.get('name', '?')}", "",
              (f"Versions: {shown or 'n/a'}. Speedup = cuDNN time / sparsert time (> 1: sparsert "
               f"faster). max rel err = max |y - y64| / max |y64| of sparsert's output."), "",
              ("| problem | batch | input | C_in -> C_out | k/s/p | sparsity | sparsert us | cuDNN us "
               "| cuDNN TF32 us | vs cuDNN | vs TF32 | max rel err |"),
              "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    records = sorted(well_formed(doc), key=lambda r: (r["batch"], r["problem"]))
    for r in records:
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['H']}x{r['W']} | {r['C_in']} -> {r['C_out']} | "
            f"{r['kernel']}/{r['stride']}/{r['padding']} | {r['sparsity']:.2f} | {r['sparsert_us']:.1f} | "
            f"{r['cudnn_us']:.1f} | {r['cudnn_tf32_us']:.1f} | {r['cudnn_us'] / r['sparsert_us']:.2f}x | "
            f"{r['cudnn_tf32_us'] / r['sparsert_us']:.2f}x | {r['max_rel_err']:.1e} |")
    left_out = len(doc.get("records", [])) - len(records)
    if left_out:
        lines += ["", f"{left_out} record(s) left out (failed or malformed); see the checker's output."]
    for batch in sorted({r["batch"] for r in records}):
        rs = [r for r in records if r["batch"] == batch]
        lines += ["", (f"Batch {batch}: geometric-mean speedup "
                       f"{_geomean([r['cudnn_us'] / r['sparsert_us'] for r in rs]):.2f}x vs cuDNN FP32, "
                       f"{_geomean([r['cudnn_tf32_us'] / r['sparsert_us'] for r in rs]):.2f}x vs cuDNN TF32 "
                       f"({len(rs)} problems).")]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> Path:
    """Speedup over cuDNN (FP32 and TF32) per problem, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = well_formed(doc)
    batches = sorted({r["batch"] for r in records}) or [1]
    per_panel = max([sum(r["batch"] == b for r in records) for b in batches] + [1])
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(6.0, 0.35 * per_panel + 3), 3.8 * len(batches)),
                             squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rs = sorted((r for r in records if r["batch"] == batch), key=lambda r: r["problem"])
        xs = np.arange(len(rs))
        ax.bar(xs - 0.2, [r["cudnn_us"] / r["sparsert_us"] for r in rs], 0.4, label="vs cuDNN FP32")
        ax.bar(xs + 0.2, [r["cudnn_tf32_us"] / r["sparsert_us"] for r in rs], 0.4, label="vs cuDNN TF32")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["problem"] for r in rs], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("speedup of sparsert")
        ax.set_title(f"batch {batch}")
        if rs:
            ax.legend(fontsize=8)
    title = f"sparsert sparse Conv2d vs cuDNN, {(doc.get('device') or {}).get('name', '?')}"
    if doc.get("synthetic"):
        title = "SYNTHETIC DATA (not a measurement): " + title
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(doc: dict, json_path: Path) -> tuple[Path, Path]:
    md = Path(json_path).with_suffix(".md")
    md.write_text(markdown_table(doc))
    return md, plot(doc, Path(json_path).with_suffix(".png"))


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.conv", description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("csv", "dlmc", "all"), default="all")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95], help="DLMC levels")
    ap.add_argument("--only", help="keep problems whose name matches this regex")
    ap.add_argument("--arch", help="compile for this arch (default: the GPU's; required with "
                                   "--compile-only on a machine without one)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=100, help="timed samples per method (median)")
    ap.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                    help=f"max relative error vs float64 (default {DEFAULT_RTOL:g})")
    ap.add_argument("--seed", type=int, default=0, help="seed of weight values and inputs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile every kernel (fills the cache; runs without a GPU)")
    ap.add_argument("--backend", choices=("ptx", "nvrtc"), default="ptx",
                    help="CUDA backend that builds sparsert's kernels (default ptx; no fallback)")
    ap.add_argument("--time-budget", type=float, metavar="S",
                    help="start no new measurement after S seconds (the results stay complete)")
    ap.add_argument("--from-results", type=Path, help="re-check a results .json, redo its .md and .png")
    args = ap.parse_args(argv)
    if any(b <= 0 for b in args.batches):
        ap.error("--batches: positive integers")
    return args


def select_problems(args, shared: Path) -> list[Problem]:
    problems = []
    if args.suite in ("csv", "all"):
        problems += csv_problems(shared / "problems" / "conv3x3_dl.csv")
    if args.suite in ("dlmc", "all"):
        problems += dlmc_problems(shared, args.sparsity)
    return [p for p in problems if not args.only or re.search(args.only, p.problem)]


def _report(doc: dict, path: Path, rtol: float) -> int:
    md, png = write_reports(doc, path)
    failures = check_results(doc, rtol)
    for line in failures:
        print(f"FAIL: {line}", file=sys.stderr)
    print(f"table: {md}\nplot: {png}")
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return _report(json.loads(args.from_results.read_text()), args.from_results, args.rtol)

    from benchmarks import common

    why = common.force_backend(args.backend)
    if why is not None:
        print(f"benchmarks.conv: error: {why}", file=sys.stderr)
        return 2
    problems = select_problems(args, common.shared_dir())
    if not problems:
        print("no problems selected", file=sys.stderr)
        return 2
    if args.compile_only:
        import sparsert

        for p in problems:
            for batch in args.batches:
                k = sparsert.compile_conv2d(p.weight_array(args.seed), (p.H, p.W), stride=p.stride,
                                            padding=p.padding, batch=batch, arch=args.arch)
                print(f"{p.problem:56s} b{batch}: {k.stats.slabs} slab(s), {k.stats.cached_slabs} "
                      f"cached, {k.stats.compile_seconds:.1f} s", flush=True)
        return 0
    from sparsert.runtime.device import gpu_available

    if not gpu_available():
        print("benchmarks.conv needs a CUDA GPU and PyTorch (use --compile-only to fill the kernel "
              "cache without one)", file=sys.stderr)
        return 2
    import torch

    stream = common.shared_stream()
    env = common.environment(args.backend)
    args.env = env
    deadline = common.Deadline(args.time_budget)
    env["cudnn"] = torch.backends.cudnn.version()
    env["tf32"] = common.disable_tf32()
    gpu = env.get("gpu") or {}
    path = args.out / f"conv-{time.strftime('%Y%m%d-%H%M%S')}-{common.slug(env.get('device') or 'gpu')}.json"
    doc = {
        "schema": SCHEMA, "synthetic": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "device": {"name": env.get("device"), **gpu}, "versions": env,
        "settings": {"warmup": args.warmup, "repeat": args.repeat, "rtol": args.rtol, "seed": args.seed,
                     "batches": args.batches, "suite": args.suite,
                     "timing": "median of CUDA-event samples (sparsert.tune.measure_us), inputs and "
                               "outputs rotated over enough sets to exceed 2x L2",
                     "problems": [asdict(p) for p in problems]},
        "records": [],
    }
    with stream:
        for p in problems:
            if deadline.expired():
                doc["cut"] = f"--time-budget {args.time_budget:g} s spent before {p.problem}"
                common.write_json_atomic(path, doc)
                print(doc["cut"], flush=True)
                break
            for batch in args.batches:
                rec = measure(p, batch, args=args)
                doc["records"].append(rec)
                common.write_json_atomic(path, doc)
                s, c, t = rec["sparsert_us"], rec["cudnn_us"], rec["cudnn_tf32_us"]
                print(f"{p.problem:56s} b{batch}: " + (
                    f"sparsert {s:8.1f} us, cuDNN {c / s if c else math.nan:5.2f}x, TF32 "
                    f"{t / s if t else math.nan:5.2f}x, err {rec['max_rel_err']:.1e}" if s else
                    f"FAILED {rec['failed']}"), flush=True)
    print(f"results: {path}")
    return _report(doc, path, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
