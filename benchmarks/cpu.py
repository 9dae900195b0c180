"""CPU benchmarks (issue 12): sparsert's CPU target side by side with the CPU libraries.

    python3 -m benchmarks.cpu --set spmm|conv|dlmc|models|compile|all --threads 1 2 --runs 15

Every problem runs in this one process, all methods interleaved round-robin (benchmarks/
cpu_baselines.py: each call timed on its own, median / min / p25 / p75 over --runs calls after
warm-up), at each thread count. sparsert-cpu is compiled outside the timed call, into a fresh
cache folder (so the compile seconds are cold; `--cache` keeps the user's cache), and its
compile seconds, nnz/s and ISA go into its record. Writes benchmarks/results/cpu-<set>.jsonl
(one compact JSON line per method x problem x threads), cpu-<set>.md (ratio tables, GFLOP/s on
the sparse FLOPs, % of the measured FMA peak, the targets, the machine) and cpu-<set>.png.

Sets:
  spmm     problems/spmm_dl.csv (31 rows, each at the sparsity it lists), DLMC patterns of the
           same shape and sparsity where they exist
  conv     problems/conv3x3_dl.csv (4 convolutions x 90% / 95%): sparsert.compile_conv2d on the
           NCHW image (its im2col inside the timed call) and torch's dense conv2d on the image;
           the GEMM libraries get the im2col matrix B precomputed (untimed: in their favour)
  dlmc     --dlmc-count patterns spread evenly over the DLMC subset (ResNet-50 at the N of
           rn50_batchsizes.txt, Transformer at N = 256)
  models   MobileNetV2, MiniLM (BERT, 6 layers, 384 hidden), ResNet-50 as benchmarks/models.py
           builds them (random weights where its checkpoint packages are not installed), pruned
           to 90% / 95%, batch 1: sparsert-cpu vs dense PyTorch, ONNX Runtime and DeepSparse on
           the same exported ONNX, outputs compared with the dense float32 model
  compile  compile throughput (nnz/s) of 256^2 .. 4096^2 at 90% (cold cache), warm loads, and
           ResNet-50 at 90% as a whole model (cold, then warm)

DeepSparse is optional: SPARSERT_DEEPSPARSE_PYTHON names a python holding deepsparse==1.8.0
(`make bench-deepsparse-venv`); without it DeepSparse is recorded as missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cpu_baselines as cb  # noqa: E402

SPARSERT = "sparsert"
# the baselines run per problem (the row-major variants of MKL packed and DeepSparse are left out:
# their _nt (native layout, no transposes) twins were faster on every problem tried)
DEFAULT_METHODS = ("numpy_dense", "torch_mm", "onednn_packed", "onednn_packed_nt", "mkl_packed_nt",
                   "torch_sparse_csr", "scipy_csr", "onnxruntime", "deepsparse_nt")
MKL_CSR = "torch_sparse_csr"
DEEPSPARSE = ("deepsparse_nt", "deepsparse")


# ---------------------------------------------------------------------------------------------
# sparsert as a method of the harness
# ---------------------------------------------------------------------------------------------
_KERNELS: dict = {}


def _key(A, N, bias, relu, extra=()):
    import hashlib

    h = hashlib.sha256()
    for a in (A.indptr, A.indices, A.data):
        h.update(np.ascontiguousarray(a).tobytes())
    if bias is not None:
        h.update(np.asarray(bias, np.float32).tobytes())
    return (h.hexdigest(), A.shape, N, bool(relu), extra)


def compile_cpu(A, N, *, bias=None, relu=False):
    """The CPU kernel of A (scipy CSR) for B of K x N, compiled once per process; returns
    (kernel, compile facts)."""
    import sparsert

    key = _key(A, N, bias, relu)
    if key not in _KERNELS:
        t0 = time.perf_counter()
        k = sparsert.compile(A, n=N, target="cpu", bias=bias, relu=relu or None)
        wall = time.perf_counter() - t0
        _KERNELS[key] = (k, _compile_facts(k, A.nnz, wall))
    return _KERNELS[key]


def _compile_facts(k, nnz, wall):
    st = k.stats
    cs = getattr(st, "compile_seconds", None)
    return dict(compile_wall_s=round(wall, 4), compile_seconds=cs, nnz=int(nnz),
                nnz_per_s=round(nnz / wall) if wall > 0 else None,
                source_bytes=getattr(st, "source_bytes", None), binary_bytes=getattr(st, "binary_bytes", None),
                cached=bool(getattr(st, "cached_slabs", 0)), isa=k.arch)


def _sparsert_factory(A, N, threads, *, bias=None, relu=False):
    import sparsert

    k, facts = compile_cpu(A, N, bias=bias, relu=relu)

    def fn(B):
        return k(B, threads=threads)
    fn.info = dict(library="sparsert-cpu (generated x86 assembly, every nonzero baked in)",
                   version=sparsert.__version__, kernel=k.arch, **facts,
                   fused=("bias+relu in the kernel's epilogue" if relu else "bias in the epilogue")
                   if (bias is not None or relu) else "")
    fn.kernel = k
    return fn


def _sparsert_ok():
    try:
        from sparsert.backends.cpu import CpuBackend

        why = CpuBackend().available()
        return (why is None, why or "")
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


def register_sparsert():
    cb.register(SPARSERT, _sparsert_factory, _sparsert_ok, kind="sparse",
                note="sparsert.compile(target='cpu'); compile untimed")


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
def dlmc_problems(count: int, root=None) -> list[cb.Problem]:
    """`count` patterns spread evenly over the sorted DLMC subset (both sparsities)."""
    root = Path(root) if root else cb.data_root()
    d = root / "dlmc"
    files = sorted(d.glob("*/magnitude_pruning/*/*.smtx"))
    ns = {}
    bs = d / "rn50_batchsizes.txt"
    if bs.exists():
        for line in bs.read_text().split():
            name, n = line.split(",")
            ns[name] = int(n)
    step = len(files) / max(1, count)
    picked = [files[int(i * step)] for i in range(min(count, len(files)))]
    out = []
    for f in picked:
        net, sp = f.parts[-4], float(f.parts[-2])
        with open(f) as fh:
            M, K, nnz = (int(x) for x in fh.readline().replace(",", " ").split()[:3])
        N = ns.get(f.stem, 256) if net == "rn50" else 256
        out.append(cb.Problem(name=f"dlmc/{net}/{sp:g}/{f.stem}", M=M, K=K, N=N, sparsity=sp, family=f"dlmc-{net}",
                              problem_id=f.stem, extra={"path": str(f.relative_to(root))}))
    return out


def dlmc_weight(problem: cb.Problem, seed=0, root=None):
    import scipy.sparse as sp

    root = Path(root) if root else cb.data_root()
    M, K, indptr, indices = cb.read_smtx(root / problem.extra["path"])
    data = np.random.default_rng(seed).standard_normal(indices.size).astype(np.float32)
    A = sp.csr_matrix((data, indices.astype(np.int32), indptr.astype(np.int32)), shape=(M, K))
    A.sort_indices()
    return A, problem.extra["path"]


# ---------------------------------------------------------------------------------------------
# one problem: build every method, check, time interleaved
# ---------------------------------------------------------------------------------------------
def run_gemm_problem(problem, methods, threads, *, runs, warmup, peak, facts, weight=None, log=print):
    """cb.run_problem, but with a given weight (DLMC file) when `weight` is set."""
    if weight is None:
        return cb.run_problem(problem, methods, threads, runs=runs, warmup=warmup, peak=peak, base_facts=facts,
                              log=log)
    orig = cb.make_weight
    cb.make_weight = lambda *a, **k: weight
    try:
        return cb.run_problem(problem, methods, threads, runs=runs, warmup=warmup, peak=peak, base_facts=facts,
                              log=log)
    finally:
        cb.make_weight = orig


# ---- convolutions ---------------------------------------------------------------------------
class _ConvInputs:
    """NCHW images and their im2col matrices (channel-major columns, F.unfold's order)."""

    def __init__(self, c_in, hw, n_sets, seed=1):
        import torch
        import torch.nn.functional as F

        rng = np.random.default_rng(seed)
        self.x = [rng.standard_normal((1, c_in, hw, hw), dtype=np.float32) for _ in range(n_sets)]
        self.B = [np.ascontiguousarray(F.unfold(torch.from_numpy(x), 3, padding=1)[0].numpy()) for x in self.x]
        self.by_id = {id(b): x for b, x in zip(self.B, self.x)}

    def image(self, B):
        x = self.by_id.get(id(B))
        if x is None:
            raise KeyError("not one of this problem's inputs")
        return x


def conv_weight(problem, seed=0):
    """OIHW weight from the DLMC 3x3 pattern of this shape (tap-major columns), else random."""
    A, src = cb.make_weight(problem, seed=seed)
    c_out, k9 = A.shape
    c_in = k9 // 9
    w = A.toarray().reshape(c_out, 3, 3, c_in).transpose(0, 3, 1, 2).copy()  # tap-major -> OIHW
    return w, src


def run_conv_problem(problem, methods, threads, *, runs, warmup, peak, facts, log=print):
    import scipy.sparse as sp
    import torch
    import torch.nn.functional as F

    import sparsert

    ex = problem.extra
    hw, c_in, c_out = int(ex["image_hw"]), int(ex["in_channels"]), int(ex["out_channels"])
    w, src = conv_weight(problem)
    A = sp.csr_matrix(w.reshape(c_out, -1))                     # channel-major im2col weight
    A.sort_indices()
    inputs = _ConvInputs(c_in, hw, cb.n_input_sets(A.shape[1], problem.N))

    key = ("conv",) + _key(A, problem.N, None, False)
    if key not in _KERNELS:
        t0 = time.perf_counter()
        k = sparsert.compile_conv2d(w, (hw, hw), stride=1, padding=1, batch=1, target="cpu")
        _KERNELS[key] = (k, _compile_facts(k, A.nnz, time.perf_counter() - t0))
    kern, cfacts = _KERNELS[key]

    def sparsert_conv(x):
        return kern(x, threads=threads)
    sparsert_conv.adapt_input = inputs.image
    sparsert_conv.adapt_output = lambda C: np.asarray(C).reshape(c_out, -1)
    sparsert_conv.info = dict(library="sparsert-cpu compile_conv2d (virtual im2col inside the call)",
                              version=sparsert.__version__, kernel=kern.arch, **cfacts)
    wt = torch.from_numpy(w)

    def torch_conv(x):
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return F.conv2d(torch.from_numpy(x), wt, padding=1).numpy()
    torch_conv.adapt_input = inputs.image
    torch_conv.adapt_output = sparsert_conv.adapt_output
    torch_conv.info = dict(library="torch.nn.functional.conv2d (dense, oneDNN) on the NCHW image",
                           **cb.torch_info())
    extra = {SPARSERT: (sparsert_conv, "sparse"), "torch_conv2d": (torch_conv, "dense")}
    return _run_with(problem, A, src, inputs.B, methods, extra, threads, runs=runs, warmup=warmup, peak=peak,
                     facts=facts, log=log)


def _run_with(problem, A, src, B_sets, methods, extra, threads, *, runs, warmup, peak, facts, log):
    """cb.run_problem's body for a prepared weight, inputs and extra ready-made callables."""
    import datetime as dt

    fns, kinds = {}, {}
    for nm in methods:
        ok, why = cb.METHODS[nm].available()
        if not ok:
            log(f"  skip {nm}: {why}")
            continue
        try:
            fns[nm] = cb.make_method(nm, A, problem.N, threads)
            kinds[nm] = cb.METHODS[nm].kind
        except Exception as e:  # noqa: BLE001
            log(f"  {nm}: setup failed: {e!r}")
    for nm, (fn, kind) in extra.items():
        fns[nm], kinds[nm] = fn, kind
    errs = cb.check_outputs(fns, A, B_sets[0])
    for nm in [n for n, e in errs.items() if not (e < 1e-3)]:
        log(f"  {nm}: max rel err {errs[nm]} -> not timed")
        fns.pop(nm)
    load_before = os.getloadavg()
    stats = cb.time_side_by_side(fns, B_sets, runs=runs, warmup=warmup)
    load_after = os.getloadavg()
    for fn in fns.values():
        if hasattr(fn, "close"):
            fn.close()
    fastest = min(stats, key=lambda n: stats[n]["median_us"])
    ratios = cb.paired_ratios(stats, fastest)
    pk = (peak or {}).get(threads, {}).get("gflops")
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    nnz, N, K = int(A.nnz), problem.N, A.shape[1]
    recs = []
    for nm, s in stats.items():
        flops = 2.0 * nnz * N
        g = flops / (s["median_us"] * 1e3)
        recs.append(dict(problem=problem.name, family=problem.family, problem_id=problem.problem_id, M=problem.M,
                         K=K, N=N, sparsity=problem.sparsity, nnz=nnz, count=problem.count, pattern=src, method=nm,
                         kind=kinds[nm], threads=threads,
                         **{k: s[k] for k in ("median_us", "min_us", "p25_us", "p75_us", "max_us")}, runs=s["n"],
                         stalls=s["stalls"], gflops_sparse=g, gflops_sparse_best=flops / (s["min_us"] * 1e3),
                         gflops_dense_equiv=2.0 * problem.M * K * N / (s["median_us"] * 1e3),
                         pct_peak=(100 * g / pk) if pk else None, peak_gflops=pk, max_rel_err=errs.get(nm),
                         paired_ratio_vs_fastest=ratios.get(nm),
                         info=cb._jsonable(getattr(fns.get(nm), "info", {}) if nm in fns else {}),
                         versions=facts.get("versions"), machine=facts.get("machine"),
                         loadavg_before=[round(x, 2) for x in load_before],
                         loadavg_after=[round(x, 2) for x in load_after], date=date,
                         samples_us=[round(x, 2) for x in s["samples_us"]]))
    return recs


# ---------------------------------------------------------------------------------------------
# analysis: ratios, targets, markdown, plot
# ---------------------------------------------------------------------------------------------
def geomean(xs):
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def group(records):
    """(problem, threads) -> {method: record}."""
    g: dict = {}
    for r in records:
        if "median_us" in r and r.get("method"):
            g.setdefault((r["problem"], r["threads"]), {})[r["method"]] = r
    return g


def ratios(g: dict, ref: str = SPARSERT) -> dict | None:
    """Speedups of `ref` for one problem: vs the fastest dense library, MKL CSR, DeepSparse,
    scipy, each by median (and by min, the least-disturbed run)."""
    if ref not in g:
        return None
    r = g[ref]
    dense = [x for x in g.values() if x.get("kind") == "dense"]
    fd = min(dense, key=lambda x: x["median_us"]) if dense else None
    fdm = min(dense, key=lambda x: x["min_us"]) if dense else None
    ds = next((g[m] for m in DEEPSPARSE if m in g), None)
    out = dict(ref_us=r["median_us"], ref_min_us=r["min_us"], gflops=r["gflops_sparse"], pct_peak=r.get("pct_peak"),
               fastest_dense=fd["method"] if fd else None, fastest_dense_us=fd["median_us"] if fd else None,
               vs_dense=fd["median_us"] / r["median_us"] if fd else None,
               vs_dense_min=fdm["min_us"] / r["min_us"] if fdm else None,
               vs_mkl_csr=g[MKL_CSR]["median_us"] / r["median_us"] if MKL_CSR in g else None,
               vs_deepsparse=ds["median_us"] / r["median_us"] if ds else None,
               vs_scipy=g["scipy_csr"]["median_us"] / r["median_us"] if "scipy_csr" in g else None)
    return out


def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def speedup_table(records, threads) -> str:
    gs = group(records)
    head = ["problem", "M", "K", "N", "sp", "sparsert us (p25-p75)", "GFLOP/s", "% peak", "fastest dense (us)",
            "x dense", "x dense (min)", "x MKL CSR", "x DeepSparse", "x scipy", "compile s", "nnz/s", "load 1m"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (prob, t), g in sorted(gs.items(), key=lambda kv: cb._problem_sort_key(kv[0][0])):
        if t != threads or SPARSERT not in g:
            continue
        r, q = g[SPARSERT], ratios(g)
        info = r.get("info", {})
        lines.append("| " + " | ".join(str(x) for x in [
            prob, r["M"], r["K"], r["N"], f"{r['sparsity']:.2f}",
            f"{r['median_us']:.1f} ({r['p25_us']:.0f}-{r['p75_us']:.0f})", f"{r['gflops_sparse']:.1f}",
            _f(r.get("pct_peak"), "{:.0f}%"), f"{q['fastest_dense']} ({q['fastest_dense_us']:.0f})" if q["fastest_dense"] else "-",
            _f(q["vs_dense"]), _f(q["vs_dense_min"]), _f(q["vs_mkl_csr"]), _f(q["vs_deepsparse"]), _f(q["vs_scipy"]),
            _f(info.get("compile_wall_s")), _f(info.get("nnz_per_s"), "{:,.0f}"),
            _f((r.get("loadavg_before") or [None])[0], "{:.1f}")]) + " |")
    return "\n".join(lines)


def target_summary(records, label="SpMM") -> str:
    """The issue's SpMM targets, per sparsity and thread count, from this run."""
    gs = group(records)
    out = ["| threads | sparsity | problems | geomean x fastest dense (target) | min x dense (>= 3) | "
           "geomean x dense, by min times | geomean x MKL CSR (>= 4) | min x DeepSparse (>= 1.5) | "
           "geomean x DeepSparse | geomean % peak (N >= 196, >= 50%) | best-run % peak (N >= 196) |",
           "|" + "---|" * 11]
    threads = sorted({t for _, t in gs})
    sps = sorted({r["sparsity"] for r in records})
    for t in threads:
        for sp in sps:
            qs, pk, pkb = [], [], []
            for (prob, tt), g in gs.items():
                if tt != t or SPARSERT not in g or abs(g[SPARSERT]["sparsity"] - sp) > 1e-6:
                    continue
                q = ratios(g)
                qs.append(q)
                if g[SPARSERT]["N"] >= 196 and q["pct_peak"] is not None:
                    pk.append(q["pct_peak"])
                    pkb.append(q["pct_peak"] * g[SPARSERT]["median_us"] / g[SPARSERT]["min_us"])
            if not qs:
                continue
            tgt = ">= 6" if sp < 0.925 else ">= 10"
            vd = [q["vs_dense"] for q in qs if q["vs_dense"]]
            vm = [q["vs_mkl_csr"] for q in qs if q["vs_mkl_csr"]]
            vs = [q["vs_deepsparse"] for q in qs if q["vs_deepsparse"]]
            vdm = [q["vs_dense_min"] for q in qs if q["vs_dense_min"]]
            out.append(f"| {t} | {sp:.2f} | {len(qs)} | {_f(geomean(vd))} ({tgt}) | {_f(min(vd) if vd else None)} | "
                       f"{_f(geomean(vdm))} | {_f(geomean(vm))} | {_f(min(vs) if vs else None)} ({len(vs)} run) | "
                       f"{_f(geomean(vs))} | {_f(geomean(pk), '{:.0f}%')} | {_f(geomean(pkb), '{:.0f}%')} |")
    return "\n".join(out)


def scaling_table(records) -> str:
    """2 threads over 1 thread for sparsert, where the 1-thread call takes >= 200 us."""
    gs = group(records)
    rows = []
    for (prob, t), g in gs.items():
        if t != 1 or SPARSERT not in g:
            continue
        g2 = gs.get((prob, 2), {})
        if SPARSERT not in g2:
            continue
        t1, t2 = g[SPARSERT], g2[SPARSERT]
        rows.append((prob, t1["median_us"], t2["median_us"], t1["min_us"], t2["min_us"],
                     (t2.get("loadavg_before") or [0])[0]))
    if not rows:
        return "(no 1- and 2-thread pairs)"
    big = [r for r in rows if r[1] >= 200]
    sc = [r[1] / r[2] for r in big]
    scm = [r[3] / r[4] for r in big]
    lines = [f"Calls >= 200 us at 1 thread: {len(big)} problems; 2-thread speedup by median: geomean "
             f"{_f(geomean(sc))}, min {_f(min(sc) if sc else None)}, max {_f(max(sc) if sc else None)}; by min "
             f"(least disturbed run): geomean {_f(geomean(scm))} (target >= 1.8 each).", "",
             "| problem | 1t median us | 2t median us | x (median) | 1t min | 2t min | x (min) | load 1m (2t) |",
             "|---|---|---|---|---|---|---|---|"]
    for p, a, b, c, d, ld in sorted(big, key=lambda r: cb._problem_sort_key(r[0])):
        lines.append(f"| {p} | {a:.0f} | {b:.0f} | {a/b:.2f} | {c:.0f} | {d:.0f} | {c/d:.2f} | {ld:.1f} |")
    return "\n".join(lines)


def machine_section(facts: dict, loads: dict, extra: dict | None = None) -> str:
    m = facts.get("machine", {})
    v = facts.get("versions", {})
    pk = m.get("fma_peak", {})
    lines = ["## Machine", "",
             f"- CPU: {m.get('cpu_model')} (family {m.get('cpu_family')} model {m.get('cpu_model_id')}), "
             f"{m.get('nproc')} vCPUs, hypervisor: {m.get('hypervisor')}, AVX-512 exposed: {m.get('avx512')}",
             f"- ISA flags: {' '.join(m.get('isa_flags') or [])}",
             f"- sparsert CPU ISA: {m.get('sparsert_isa')}"]
    for t, p in sorted(pk.items()):
        lines.append(f"- FMA peak, {t} thread(s): {p.get('gflops', 0):.1f} GFLOP/s best of {p.get('reps', '?')} "
                     f"(median {p.get('gflops_median', 0):.1f}); clock estimate {p.get('clock_ghz', 0):.2f} GHz "
                     f"(16 dependent adds/iter); measured {p.get('when', '')}; all measurements: "
                     f"{', '.join(f'{x:.1f}' for x in p.get('all', []))}")
    lines.append(f"- load average (1, 5, 15 min) before: {loads.get('before')}, after: {loads.get('after')}")
    lines.append(f"- versions: {json.dumps(v)}")
    if extra:
        for k, val in extra.items():
            lines.append(f"- {k}: {val}")
    return "\n".join(lines)


def library_section(records) -> str:
    seen = {}
    for r in records:
        if r.get("method") and r["method"] not in seen and r.get("info") is not None:
            seen[r["method"]] = r["info"]
    lines = ["## Libraries and kernels", "", "| method | library | kernel / ISA | fused / layout |", "|---|---|---|---|"]
    for m, i in sorted(seen.items()):
        kern = i.get("kernel") or i.get("onednn_isa") or i.get("cpu_capability") or ""
        if m in ("torch_mm", "mkl_packed_nt", "torch_sparse_csr", "onednn_packed", "onednn_packed_nt", "torch_conv2d"):
            kern = f"torch cpu_capability={i.get('cpu_capability')}; MKL: {i.get('mkl_verbose_header', '')}; " \
                   f"oneDNN isa: {i.get('onednn_isa', '')}"
        if m == "numpy_dense":
            kern = f"OpenBLAS {i.get('openblas_version')} kernel {i.get('kernel')} ({i.get('threading_layer')}); " \
                   f"env dropped in the child: {i.get('env_dropped')} (parent had {i.get('parent_env')})"
        lines.append(f"| {m} | {i.get('library', '')} {i.get('version', '')} | {kern} | "
                     f"{i.get('fused', '')} {i.get('layout', '')} |")
    return "\n".join(lines)


def plot(records, path, threads_list, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = group(records)
    fig, axes = plt.subplots(len(threads_list), 1, figsize=(max(9, 0.32 * len(gs) / max(1, len(threads_list))),
                                                           4.2 * len(threads_list)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads_list):
        probs = sorted([p for (p, tt), g in gs.items() if tt == t and SPARSERT in g], key=cb._problem_sort_key)
        qs = [ratios(gs[(p, t)]) for p in probs]
        series = [("fastest dense", "vs_dense"), ("MKL CSR", "vs_mkl_csr"), ("DeepSparse", "vs_deepsparse"),
                  ("scipy CSR", "vs_scipy")]
        w = 0.8 / len(series)
        x = np.arange(len(probs))
        for j, (lab, key) in enumerate(series):
            ax.bar(x + j * w, [q[key] or np.nan for q in qs], w, label=f"sparsert vs {lab}")
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(x + 0.4)
        ax.set_xticklabels([p.replace("spmm_dl/", "").replace("conv3x3_dl/", "") for p in probs], rotation=90,
                           fontsize=6)
        ax.set_ylabel("speedup (median time ratio, log)")
        ax.set_title(f"{title}, {t} thread(s)")
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# machine facts, peak
# ---------------------------------------------------------------------------------------------
def measure_peaks(threads_list, reps=9) -> dict:
    out = {}
    for t in threads_list:
        p = cb.measure_fma_peak(t, reps=reps)
        p.update(reps=reps, all=[round(p["gflops"], 1)], when=time.strftime("%H:%M:%S"),
                 loadavg=os.getloadavg())
        out[t] = p
    return out


def merge_peaks(a: dict, b: dict) -> dict:
    """Best of two peak measurements per thread count (a loaded machine only ever lowers it)."""
    out = {}
    for t in set(a) | set(b):
        x, y = a.get(t), b.get(t)
        best = max([p for p in (x, y) if p], key=lambda p: p["gflops"])
        best = dict(best, all=(x or {}).get("all", []) + (y or {}).get("all", []))
        out[t] = best
    return out


def base_facts(peak) -> dict:
    m = dict(cb.machine_facts(), fma_peak={str(k): v for k, v in peak.items()})
    try:
        from sparsert.backends.cpu.isa import detect_isa

        m["sparsert_isa"] = detect_isa()
    except Exception as e:  # noqa: BLE001
        m["sparsert_isa"] = repr(e)
    v = cb.versions()
    try:
        import sparsert

        v["sparsert"] = sparsert.__version__
    except Exception:  # noqa: BLE001
        pass
    ok, why = cb.METHODS["deepsparse_nt"].available()
    v["deepsparse"] = why if ok else f"missing: {why}"
    return dict(machine=m, versions=v)


# ---------------------------------------------------------------------------------------------
# sets
# ---------------------------------------------------------------------------------------------
def write_jsonl(path, records, mode="w", meta=None):
    """Compact JSON lines. With `meta` (the final write): one first line {"record": "meta", ...}
    holding the machine and versions, which the records then leave out."""
    if meta is not None:  # each method's library facts once (records keep only an info that differs)
        mi = dict(meta.get("method_info") or {})
        for r in records:
            if r.get("method") and r.get("info") and r["method"] != SPARSERT:
                mi.setdefault(r["method"], r["info"])
        meta = dict(meta, method_info=mi)
    with open(path, mode) as f:
        if meta is not None:
            f.write(json.dumps(dict(record="meta", **meta), separators=(",", ":"), default=str) + "\n")
        for r in records:
            if meta is not None:
                r = {k: v for k, v in r.items() if k not in ("machine", "versions")
                     and not (k == "info" and v == meta["method_info"].get(r.get("method")))}
            f.write(json.dumps(r, separators=(",", ":"), default=str) + "\n")


def read_jsonl(path):
    """Records of a cpu-<set>.jsonl, each with the meta line's machine and versions put back."""
    recs, meta = [], {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("record") == "meta":
                    meta = r
                else:
                    if meta:
                        r = dict(r, machine=meta.get("machine"), versions=meta.get("versions"))
                        if "info" not in r:
                            r["info"] = (meta.get("method_info") or {}).get(r.get("method"), {})
                    recs.append(r)
    return recs, meta


def report_only(name, args):
    """Rebuild cpu-<set>.md / .png (and the compact .jsonl) from cpu-<set>.jsonl, no timing."""
    jl = RESULTS / f"cpu-{name}.jsonl"
    recs, meta = read_jsonl(jl)
    ok = [r for r in recs if "median_us" in r]
    first = next((r for r in ok if r.get("machine")), {})
    facts = dict(machine=meta.get("machine") or first.get("machine") or {},
                 versions=meta.get("versions") or first.get("versions") or {})
    loads = meta.get("loadavg") or dict(before=ok[0].get("loadavg_before"), after=ok[-1].get("loadavg_after"))
    args.threads = sorted({r["threads"] for r in ok})
    args.runs = max(r["runs"] for r in ok)
    write_jsonl(jl, recs, meta=dict(facts, loadavg=loads, set=name, argv=meta.get("argv")))
    if name == "models":
        write_models_md(recs, facts, loads, args, 0)
        plot_models(recs, RESULTS / "cpu-models.png", args.threads)
    else:
        write_gemm_md(name, recs, facts, loads, args, 0)
        plot(recs, RESULTS / f"cpu-{name}.png", args.threads, f"sparsert-cpu speedups, {name}")


def run_gemm_set(name, problems, args, weights=None, conv=False):
    register_sparsert()
    methods = [SPARSERT] + [m for m in args.methods if m in cb.METHODS]
    if conv:
        methods = [m for m in methods if m != SPARSERT]        # sparsert runs compile_conv2d there
    peak = measure_peaks(args.threads)
    facts = base_facts(peak)
    load0 = os.getloadavg()
    jl = RESULTS / f"cpu-{name}.jsonl"
    jl.write_text("")
    recs, t_start = [], time.time()
    for p in problems:
        for t in args.threads:
            t0 = time.time()
            try:
                if conv:
                    rs = run_conv_problem(p, methods, t, runs=args.runs, warmup=args.warmup, peak=peak, facts=facts)
                else:
                    rs = run_gemm_problem(p, methods, t, runs=args.runs, warmup=args.warmup, peak=peak, facts=facts,
                                          weight=(weights or {}).get(p.name))
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                rs = [dict(problem=p.name, threads=t, error=repr(e))]
            write_jsonl(jl, rs, "a")
            recs += rs
            ok = [r for r in rs if "median_us" in r]
            q = ratios({r["method"]: r for r in ok})
            print(f"{p.name:40s} t={t} " + (f"sparsert {q['ref_us']:.0f} us {q['gflops']:.1f} GF/s, x dense "
                                            f"{_f(q['vs_dense'])}, x MKL CSR {_f(q['vs_mkl_csr'])}, x DS "
                                            f"{_f(q['vs_deepsparse'])}" if q else "no sparsert record")
                  + f"  load {os.getloadavg()[0]:.1f} ({time.time()-t0:.0f}s)", flush=True)
    peak2 = measure_peaks(args.threads)
    peak_all = merge_peaks(peak, peak2)
    facts = base_facts(peak_all)
    loads = dict(before=[round(x, 2) for x in load0], after=[round(x, 2) for x in os.getloadavg()])
    # % of peak against the best peak seen (before and after the set)
    for r in recs:
        pk = peak_all.get(r.get("threads"), {}).get("gflops")
        if pk and "gflops_sparse" in r:
            r["peak_gflops"], r["pct_peak"] = pk, 100 * r["gflops_sparse"] / pk
    write_jsonl(jl, recs, meta=dict(facts, loadavg=loads, set=name, argv=sys.argv[1:]))
    write_gemm_md(name, recs, facts, loads, args, time.time() - t_start)
    plot(recs, RESULTS / f"cpu-{name}.png", args.threads, f"sparsert-cpu speedups, {name}")
    return recs


def load_verdict(recs) -> str:
    l1 = [r["loadavg_before"][0] for r in recs if r.get("loadavg_before")]
    if not l1:
        return ""
    med = statistics.median(l1)
    nproc = os.cpu_count() or 1
    msg = (f"Load average (1 min) during the timings: median {med:.1f}, max {max(l1):.1f}, on {nproc} vCPUs "
           f"(the machine was shared with other engineers' test suites).")
    if med >= 0.75 * nproc:
        msg += (" **The 2-thread numbers are not meaningful as facts**: with that load a second thread mostly "
                "waits for a core someone else is using; they are kept in the JSON lines and tables as measured, "
                "and the 1-thread ratios (all methods interleaved, same conditions) are the ones to read.")
    return msg


def write_gemm_md(name, recs, facts, loads, args, seconds):
    ok = [r for r in recs if "median_us" in r]
    errs = [r for r in recs if "error" in r]
    lines = [f"# CPU benchmark: {name}", "",
             f"`python3 -m benchmarks.cpu --set {name} --threads {' '.join(map(str, args.threads))} --runs {args.runs}`"
             f"{f' ({seconds/60:.1f} min)' if seconds else ''}. Median of {args.runs} interleaved calls per method (after {args.warmup} "
             f"warm-up rounds); ratios are baseline median / sparsert median (> 1: sparsert faster). GFLOP/s count "
             f"the sparse FLOPs (2 x nnz x N). 'x dense (min)' compares the fastest single calls instead.", "",
             load_verdict(ok), "", "## Targets (this run)", "", target_summary(ok), ""]
    if set(args.threads) >= {1, 2}:
        lines += ["## 2 threads over 1 thread (sparsert)", "", scaling_table(ok), ""]
    for t in args.threads:
        lines += [f"## {t} thread(s)", "", speedup_table(ok, t), ""]
    lines += ["## Every method (median us / sparsert median us)", "", cb.markdown_table(ok, reference=SPARSERT), "",
              "## Spread per family", "", cb.family_summary(ok), ""]
    if errs:
        lines += ["## Errors", ""] + [f"- {r['problem']} t={r['threads']}: {r['error']}" for r in errs] + [""]
    lines += [machine_section(facts, loads), "", library_section(ok), ""]
    (RESULTS / f"cpu-{name}.md").write_text("\n".join(lines))


# ---- compile throughput -----------------------------------------------------------------------
def run_compile_set(args):
    import scipy.sparse as sp

    import sparsert

    recs = []
    jl = RESULTS / "cpu-compile.jsonl"
    sizes = [256, 512, 1024, 2048, 4096]
    with tempfile.TemporaryDirectory(prefix="sparsert-cpu-compile-") as cache:
        os.environ["SPARSERT_CACHE_DIR"] = cache
        for n in sizes:
            rng = np.random.default_rng(n)
            A = sp.random(n, n, density=0.1, format="csr", dtype=np.float32, random_state=rng)
            A.data[:] = rng.standard_normal(A.nnz).astype(np.float32)
            times = []
            for _ in range(2):  # cold (fresh cache), then warm (from the cache)
                t0 = time.perf_counter()
                k = sparsert.compile(A, n=256, target="cpu")
                times.append(time.perf_counter() - t0)
            st = k.stats
            r = dict(kind="matrix", shape=[n, n], sparsity=0.9, nnz=int(A.nnz), N=256, cold_s=round(times[0], 3),
                     warm_s=round(times[1], 4), nnz_per_s=round(A.nnz / times[0]),
                     compile_seconds=st.compile_seconds, compiler_seconds=getattr(st, "compiler_seconds", None),
                     plan_seconds=getattr(st, "plan_seconds", None), source_bytes=st.source_bytes,
                     binary_bytes=st.binary_bytes, isa=k.arch, loadavg=os.getloadavg(), jobs=os.cpu_count())
            recs.append(r)
            print(f"compile {n}x{n} @0.9: {A.nnz} nnz cold {times[0]:.2f} s ({r['nnz_per_s']:,} nnz/s), warm "
                  f"{times[1]*1e3:.1f} ms, source {st.source_bytes/1e6:.1f} MB, binary {st.binary_bytes/1e6:.2f} MB",
                  flush=True)
            write_jsonl(jl, recs)
    for model in args.models_compile:
        for sparsity in (0.9,):
            r = compile_record(model, sparsity)
            recs.append(r)
            write_jsonl(jl, recs)
    write_compile_md(recs, args)
    return recs


def write_compile_md(recs, args):
    lines = ["# CPU compile throughput", "", "`python3 -m benchmarks.cpu --set compile` (fresh cache folder: cold "
             "compile, then the same compile again from the cache: warm load). Target: >= 150,000 nnz/s; warm "
             "load of a whole model < 1 s.", "",
             f"Load average at the end: {os.getloadavg()}; {os.cpu_count()} vCPUs (the assembler runs on every core).",
             "", "| matrix | nnz | cold s | nnz/s | warm ms | source MB | binary MB | compiler s | load 1m |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["kind"] == "matrix":
            lines.append(f"| {r['shape'][0]}x{r['shape'][1]} @ {r['sparsity']} | {r['nnz']:,} | {r['cold_s']:.2f} | "
                         f"{r['nnz_per_s']:,} | {r['warm_s']*1e3:.1f} | {r['source_bytes']/1e6:.1f} | "
                         f"{r['binary_bytes']/1e6:.2f} | {_f(r.get('compiler_seconds'))} | {r['loadavg'][0]:.1f} |")
    ms = [r for r in recs if r["kind"] == "model"]
    if ms:
        lines += ["", "| model | sparsity | layers compiled | nnz | cold s | nnz/s | warm load s | how |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ms:
            lines.append(f"| {r['model']} | {r['sparsity']} | {r['compiled_layers']} | {r['nnz']:,} | {r['cold_s']:.1f} | "
                         f"{r['nnz_per_s']:,} | {r['warm_s']:.2f} | {r['how']} |")
    (RESULTS / "cpu-compile.md").write_text("\n".join(lines) + "\n")


# ---- whole models ---------------------------------------------------------------------------
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)   # all-MiniLM-L6-v2's BertConfig


def build_model(name):
    """(model, how): benchmarks/models.py's loader; where its checkpoint package is missing, the
    same architecture with seeded random weights (timing does not depend on the values)."""
    import torch

    from benchmarks import models as bm

    try:
        return bm.LOADERS[name](False), "benchmarks/models.py loader (checkpoint)" if name != "resnet50" else \
            "benchmarks/models.py loader (transformers ResNetConfig(), seeded random init)"
    except ImportError as e:
        torch.manual_seed(0)
        if name == "mobilenet_v2":
            return bm.MobileNetV2(), f"benchmarks/models.py MobileNetV2, seeded random init ({e.name} not installed)"
        if name == "minilm":
            from transformers import BertConfig, BertModel
            from transformers.utils import logging

            logging.set_verbosity_error()
            return (BertModel(BertConfig(**MINILM), add_pooling_layer=False),
                    f"transformers BertModel with all-MiniLM-L6-v2's config, seeded random init ({e.name} not installed)")
        raise


def recalibrate_bn(model, name, batches=2, batch=2):
    """Pruned random-init convnets lose ~sqrt(1 - sparsity) of their activations' scale per layer
    (the output of MobileNetV2 at 90% underflows to exactly 0, which makes any output comparison
    vacuous): re-estimate every BatchNorm's running statistics on random images, as one does
    after pruning. Changes no weight and no timing; returns the number of BN layers."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    g = torch.Generator().manual_seed(7)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, 224, 224, generator=g))
    model.eval()
    return len(bns)


def model_inputs(name, model, seq):
    """The batch-1 input as a tuple of NumPy arrays (and the ONNX input names)."""
    rng = np.random.default_rng(1)
    if name == "minilm":
        ids = rng.integers(1000, model.config.vocab_size, (1, seq), dtype=np.int64)
        return (ids, np.ones_like(ids)), ["input_ids", "attention_mask"]
    return (rng.standard_normal((1, 3, 224, 224), dtype=np.float32),), ["input"]


class _Out:
    """The model's output tensor (logits / last_hidden_state) for export and comparison."""

    def __init__(self, model, name):
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *xs):
                out = self.m(*xs) if name != "minilm" else self.m(input_ids=xs[0], attention_mask=xs[1])
                for attr in ("logits", "last_hidden_state"):
                    if hasattr(out, attr):
                        return getattr(out, attr)
                return out if isinstance(out, torch.Tensor) else out[0]
        self.module = Wrap(model).eval()


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        got = got.reshape(ref.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def sparsify_cpu(dense_wrapped, example):
    """sparsert.torch.sparsify(backend='cpu') (cold: the set's fresh cache); returns (model, seconds, how)."""
    import sparsert.torch as st

    t0 = time.perf_counter()
    sm = st.sparsify(dense_wrapped, example, 0.5, backend="cpu", progress=False)
    return sm, time.perf_counter() - t0, "sparsert.torch.sparsify(model, example, backend='cpu')"


def _kernels_of(model):
    import sparsert.torch as st

    return [k for m in model.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d)) for k in m.kernels.values()]


def compile_record(name, sparsity):
    """Whole-model compile: cold (a fresh cache), then warm (the same compile from the cache)."""
    import torch

    import sparsert

    dense, how = build_model(name)
    dense = _Out(sparsert.prune(dense, sparsity, scope="layer").eval(), name).module
    x, _ = model_inputs(name, dense.m, 128)
    ex = tuple(torch.from_numpy(a) for a in x)
    old = os.environ.get("SPARSERT_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="sparsert-cpu-model-compile-") as cache:
        os.environ["SPARSERT_CACHE_DIR"] = cache
        try:
            times = []
            for _ in range(2):
                sm, secs, _how = sparsify_cpu(dense, ex)
                times.append(secs)
        finally:
            if old is None:
                os.environ.pop("SPARSERT_CACHE_DIR", None)
            else:
                os.environ["SPARSERT_CACHE_DIR"] = old
    ks = _kernels_of(sm)
    nnz = sum(k.schedule.nnz for k in ks)
    rep = sm.sparsert_report
    r = dict(kind="model", model=name, sparsity=sparsity, how=_how, weights=how,
             compiled_layers=sum(1 for l in rep.layers if l.compiled), layers=len(rep.layers), kernels=len(ks),
             nnz=int(nnz), cold_s=round(times[0], 2), warm_s=round(times[1], 3), nnz_per_s=round(nnz / times[0]),
             loadavg=os.getloadavg())
    print(f"compile {name} @{sparsity}: {len(ks)} kernels, {nnz:,} nnz: cold {times[0]:.1f} s "
          f"({r['nnz_per_s']:,} nnz/s), warm {times[1]:.2f} s", flush=True)
    return r


def per_layer(sm, dense, ex, iters=7):
    """Each compiled layer alone on the input it sees in one forward: sparsert vs the dense layer
    (median of `iters` interleaved calls, the current thread settings). Sorted by sparsert time."""
    import torch

    import sparsert.torch as st

    seen, hooks = {}, []
    for n, m in sm.named_modules():
        if isinstance(m, (st.SparseLinear, st.SparseConv2d)):
            hooks.append(m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0].clone())))
    with torch.inference_mode():
        sm(*ex)
    for h in hooks:
        h.remove()
    rows = []
    with torch.inference_mode():
        for n, xin in seen.items():
            s_mod, d_mod = sm.get_submodule(n), dense.get_submodule(n)
            ts, td = [], []
            for _ in range(iters):
                t0 = time.perf_counter()
                s_mod(xin)
                t1 = time.perf_counter()
                d_mod(xin)
                t2 = time.perf_counter()
                ts.append(t1 - t0)
                td.append(t2 - t1)
            w = s_mod.weight
            rows.append(dict(name=n, kind=s_mod.kind, shape=list(w.shape), groups=getattr(s_mod, "groups", 1),
                             input=list(xin.shape), nnz=int(torch.count_nonzero(w)),
                             sparsert_us=round(statistics.median(ts) * 1e6, 1),
                             dense_us=round(statistics.median(td) * 1e6, 1)))
    return sorted(rows, key=lambda r: -r["sparsert_us"])


def run_models_set(args):
    import torch

    import sparsert

    ok_ort, why_ort = cb._onnxruntime_ok()
    ok_ds, why_ds = cb.METHODS["deepsparse_nt"].available()
    peak = measure_peaks(args.threads, reps=5)
    facts = base_facts(peak)
    load0 = os.getloadavg()
    jl = RESULTS / "cpu-models.jsonl"
    recs = []
    if args.merge and jl.exists():  # keep the other models' records of an earlier run
        recs = [r for r in read_jsonl(jl)[0] if r.get("model") not in args.models]
    write_jsonl(jl, recs)
    t_start = time.time()
    tmpdir = tempfile.mkdtemp(prefix="sparsert-cpu-models-")
    for name in args.models:
        for sparsity in args.sparsities:
            base, how = build_model(name)
            pruned = sparsert.prune(base, sparsity, scope="layer")
            n_bn = recalibrate_bn(pruned, name)
            dense = _Out(pruned.eval(), name).module
            x, in_names = model_inputs(name, dense.m, args.seq)
            ex = tuple(torch.from_numpy(a) for a in x)
            with torch.inference_mode():
                torch.set_num_threads(1)
                ref = dense(*ex).numpy().copy()
            sm, compile_s, sp_how = sparsify_cpu(dense, ex)
            ks = _kernels_of(sm)
            rep = sm.sparsert_report
            nnz = sum(k.schedule.nnz for k in ks)
            # warm load: the same sparsify again, every kernel from the cache
            t0 = time.perf_counter()
            sparsify_cpu(dense, ex)
            warm_s = time.perf_counter() - t0
            onnx_path = os.path.join(tmpdir, f"{name}_{sparsity:g}.onnx")
            export_err = None
            try:
                with torch.inference_mode(False), torch.no_grad():
                    torch.onnx.export(dense, ex, onnx_path, input_names=in_names, output_names=["out"],
                                      opset_version=14 if name == "minilm" else 13, dynamo=False)
            except Exception as e:  # noqa: BLE001
                export_err = repr(e)[:500]
                print(f"  onnx export failed: {export_err}", flush=True)
            for t in args.threads:
                os.environ["SPARSERT_CPU_THREADS"] = str(t)
                fns, infos, errs = {}, {}, {}

                def mk_torch(model, t=t):
                    def fn(xs):
                        if torch.get_num_threads() != t:
                            torch.set_num_threads(t)
                        with torch.inference_mode():
                            return model(*(torch.from_numpy(a) for a in xs)).numpy()
                    return fn
                fns[SPARSERT] = mk_torch(sm)
                infos[SPARSERT] = dict(library=sp_how, isa=ks[0].arch if ks else None, version=sparsert.__version__,
                                       threads_env=t)
                fns["torch_dense"] = mk_torch(dense)
                infos["torch_dense"] = dict(library="the same pruned model, dense PyTorch eager", **cb.torch_info())
                if ok_ort and not export_err:
                    import onnxruntime as ort

                    so = ort.SessionOptions()
                    so.intra_op_num_threads, so.inter_op_num_threads = t, 1
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

                    def ort_fn(xs, sess=sess):
                        return sess.run(None, dict(zip(in_names, xs)))[0]
                    fns["onnxruntime"] = ort_fn
                    infos["onnxruntime"] = dict(library="onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL",
                                                version=ort.__version__, onnx=f"torch.onnx.export (TorchScript exporter) opset {14 if name == 'minilm' else 13}, the dense pruned model")
                if ok_ds and not export_err:
                    try:
                        w = cb._Worker.get("deepsparse", cb.deepsparse_python(), dict(os.environ))
                        rem = cb.Remote(w, dict(kind="deepsparse_onnx", path=onnx_path, threads=t, batch=1))
                        fns["deepsparse"] = rem
                        infos["deepsparse"] = rem.info
                    except Exception as e:  # noqa: BLE001
                        infos["deepsparse"] = dict(error=repr(e)[:500])
                        print(f"  deepsparse failed: {e!r}"[:300], flush=True)
                for nm in list(fns):
                    try:
                        errs[nm] = _rel(fns[nm](x), ref)
                    except Exception as e:  # noqa: BLE001
                        print(f"  {nm} failed: {e!r}"[:300], flush=True)
                        fns.pop(nm)
                        errs[nm] = None
                layers = None
                if t == 1:
                    torch.set_num_threads(1)
                    try:
                        layers = per_layer(sm, dense, ex)
                    except Exception as e:  # noqa: BLE001
                        layers = [dict(error=repr(e)[:300])]
                lb = os.getloadavg()
                stats = cb.time_side_by_side(fns, [x], runs=args.runs, warmup=args.warmup)
                la = os.getloadavg()
                for nm, s in stats.items():
                    recs.append(dict(set="models", model=name, problem=f"{name}@{sparsity:g}", sparsity=sparsity, batch=1,
                                     threads=t, method=nm, kind="sparse" if nm in (SPARSERT, "deepsparse") else "dense",
                                     **{k: round(s[k], 2) for k in ("median_us", "min_us", "p25_us", "p75_us", "max_us")},
                                     runs=s["n"], stalls=s["stalls"], max_rel_err=errs.get(nm),
                                     ok=errs.get(nm) is not None and errs[nm] < 1e-4, info=cb._jsonable(infos.get(nm, {})),
                                     weights=how, compiled_layers=sum(1 for l in rep.layers if l.compiled),
                                     layers=len(rep.layers), kernels=len(ks), nnz=int(nnz),
                                     compile_s=round(compile_s, 2), warm_load_s=round(warm_s, 3),
                                     input=[list(a.shape) for a in x], export_error=export_err,
                                     bn_recalibrated=n_bn, ref_absmax=float(np.abs(ref).max()),
                                     per_layer=layers if nm == SPARSERT else None,
                                     loadavg_before=[round(v, 2) for v in lb], loadavg_after=[round(v, 2) for v in la],
                                     samples_us=[round(v, 1) for v in s["samples_us"]]))
                write_jsonl(jl, recs)
                for fn in fns.values():
                    if hasattr(fn, "close"):
                        fn.close()
                row = {nm: stats[nm]["median_us"] / 1e3 for nm in stats}
                print(f"{name:13s} @{sparsity:g} t={t}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items())
                      + f"; errs " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items() if v is not None)
                      + f"; compile {compile_s:.1f}s warm {warm_s:.2f}s load {la[0]:.1f}", flush=True)
            os.environ.pop("SPARSERT_CPU_THREADS", None)
    facts = base_facts(merge_peaks(peak, measure_peaks(args.threads, reps=5)))
    loads = dict(before=[round(v, 2) for v in load0], after=[round(v, 2) for v in os.getloadavg()])
    write_jsonl(jl, recs, meta=dict(facts, loadavg=loads, set="models", argv=sys.argv[1:]))
    write_models_md(recs, facts, loads, args, time.time() - t_start)
    plot_models(recs, RESULTS / "cpu-models.png", args.threads)
    return recs


def write_models_md(recs, facts, loads, args, seconds):
    gs: dict = {}
    for r in recs:
        gs.setdefault((r["model"], r["sparsity"], r["threads"]), {})[r["method"]] = r
    lines = ["# CPU benchmark: whole models, batch 1", "",
             f"`python3 -m benchmarks.cpu --set models --threads {' '.join(map(str, args.threads))} --runs {args.runs}` "
             f"({seconds/60:.1f} min). Each model is pruned (magnitude, per layer) and then run four ways on the same "
             f"input, interleaved: sparsert-cpu (sparsify(backend='cpu'): every Linear/Conv2d at >= 50% sparsity "
             f"as a CPU kernel, the rest PyTorch), the same pruned model dense in PyTorch, ONNX Runtime on its ONNX "
             f"export, DeepSparse 1.8 on the same ONNX. Errors: max|out - dense fp32| / max|dense fp32|. Targets "
             f"(90%, batch 1): >= 3x over dense PyTorch, >= 1.5x over DeepSparse, outputs within fp32 tolerance.", "",
             load_verdict([r for r in recs]), "",
             "| model | sparsity | threads | sparsert ms | torch dense ms | ORT ms | DeepSparse ms | x torch | x ORT | "
             "x DeepSparse | err sparsert | err ORT | err DS | compiled layers | compile s | warm load s | load 1m |",
             "|" + "---|" * 17]
    for (m, sp, t), g in sorted(gs.items()):
        s = g.get(SPARSERT)
        if not s:
            continue

        def ms(k):
            return g[k]["median_us"] / 1e3 if k in g else None

        def x(k):
            return g[k]["median_us"] / s["median_us"] if k in g else None

        def e(k):
            return _f(g[k]["max_rel_err"], "{:.1e}") if k in g else "-"
        lines.append(f"| {m} | {sp:g} | {t} | {ms(SPARSERT):.1f} | {_f(ms('torch_dense'), '{:.1f}')} | "
                     f"{_f(ms('onnxruntime'), '{:.1f}')} | {_f(ms('deepsparse'), '{:.1f}')} | {_f(x('torch_dense'))} | "
                     f"{_f(x('onnxruntime'))} | {_f(x('deepsparse'))} | {e(SPARSERT)} | {e('onnxruntime')} | "
                     f"{e('deepsparse')} | {s['compiled_layers']}/{s['layers']} | {s['compile_s']} | "
                     f"{s['warm_load_s']} | {s['loadavg_before'][0]:.1f} |")
    lines += ["", "## Where the time goes (1 thread, each compiled layer alone, median of 7; the 8 slowest for "
              "sparsert, with their share of the sum over all compiled layers)", ""]
    for r in recs:
        if r["method"] != SPARSERT or not r.get("per_layer") or "error" in r["per_layer"][0]:
            continue
        pl = r["per_layer"]
        tot_s, tot_d = sum(x["sparsert_us"] for x in pl), sum(x["dense_us"] for x in pl)
        dw = [x for x in pl if x["groups"] > 1]
        lines += [f"**{r['model']} @ {r['sparsity']:g}**: compiled layers alone: sparsert {tot_s/1e3:.1f} ms vs "
                  f"dense {tot_d/1e3:.1f} ms ({tot_d/max(tot_s, 1e-9):.2f}x); grouped/depthwise layers: "
                  f"{len(dw)}, sparsert {sum(x['sparsert_us'] for x in dw)/1e3:.1f} ms vs dense "
                  f"{sum(x['dense_us'] for x in dw)/1e3:.1f} ms", "",
                  "| layer | kind | weight | groups | input | nnz | sparsert us | dense us | x | share |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in pl[:8]:
            lines.append(f"| {x['name']} | {x['kind']} | {x['shape']} | {x['groups']} | {x['input']} | {x['nnz']:,} | "
                         f"{x['sparsert_us']:.0f} | {x['dense_us']:.0f} | {x['dense_us']/max(x['sparsert_us'], 1e-9):.2f} | "
                         f"{100*x['sparsert_us']/max(tot_s, 1e-9):.0f}% |")
        lines.append("")
    weights = sorted({f"{r['model']}: {r['weights']}" for r in recs})
    lines += ["", "Weights: " + "; ".join(weights), "",
              "Convnets: after pruning, every BatchNorm's running statistics were re-estimated on two batches "
              "of random images (without it the 90%-pruned random-init MobileNetV2's output underflows to 0 "
              "and every comparison reads 0 error); weights untouched.", "",
              "Not fused in any of the four: BatchNorm stays a separate op in PyTorch and sparsert (ORT and "
              "DeepSparse fold it into the convolution when they optimise the graph).", "",
              machine_section(facts, loads), "", library_section(recs), ""]
    (RESULTS / "cpu-models.md").write_text("\n".join(lines))


def plot_models(recs, path, threads_list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs: dict = {}
    for r in recs:
        gs.setdefault((r["model"], r["sparsity"], r["threads"]), {})[r["method"]] = r
    fig, axes = plt.subplots(1, len(threads_list), figsize=(6 * len(threads_list), 4), squeeze=False)
    for ax, t in zip(axes[0], threads_list):
        keys = sorted(k for k in gs if k[2] == t and SPARSERT in gs[k])
        xs = np.arange(len(keys))
        for j, nm in enumerate(("torch_dense", "onnxruntime", "deepsparse")):
            ys = [gs[k][nm]["median_us"] / gs[k][SPARSERT]["median_us"] if nm in gs[k] else np.nan for k in keys]
            ax.bar(xs + j * 0.27, ys, 0.27, label=f"sparsert vs {nm}")
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(xs + 0.27)
        ax.set_xticklabels([f"{k[0]}@{k[1]:g}" for k in keys], rotation=45, fontsize=7)
        ax.set_title(f"whole models, batch 1, {t} thread(s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="spmm", choices=["spmm", "conv", "dlmc", "models", "compile", "all"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--problems", nargs="+", default=None, help="keep only these problem names")
    ap.add_argument("--dlmc-count", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "minilm", "resnet50"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    ap.add_argument("--seq", type=int, default=128, help="MiniLM tokens (default 128)")
    ap.add_argument("--models-compile", nargs="*", default=["resnet50"])
    ap.add_argument("--cache", action="store_true", help="use the user's kernel cache (default: a fresh one)")
    ap.add_argument("--merge", action="store_true",
                    help="models: keep the records of models not run now from the existing cpu-models.jsonl")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild cpu-<set>.md/.png from the committed cpu-<set>.jsonl (no timing)")
    args = ap.parse_args(argv)
    if args.report_only:
        for s in (["spmm", "conv", "dlmc", "models"] if args.set == "all" else [args.set]):
            if (RESULTS / f"cpu-{s}.jsonl").exists():
                report_only(s, args)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = None
    if not args.cache and args.set != "compile":
        tmp = tempfile.TemporaryDirectory(prefix="sparsert-cpu-bench-")
        os.environ["SPARSERT_CACHE_DIR"] = tmp.name
    sets = ["spmm", "conv", "dlmc", "models", "compile"] if args.set == "all" else [args.set]
    for s in sets:
        if s == "spmm":
            probs = cb.load_spmm_problems()
        elif s == "conv":
            probs = cb.load_conv3x3_problems()
        elif s == "dlmc":
            probs = dlmc_problems(args.dlmc_count)
        if s in ("spmm", "conv", "dlmc"):
            if args.problems:
                probs = [p for p in probs if p.name in args.problems]
            weights = {p.name: dlmc_weight(p) for p in probs} if s == "dlmc" else None
            run_gemm_set(s, probs, args, weights=weights, conv=(s == "conv"))
        elif s == "models":
            run_models_set(args)
        elif s == "compile":
            run_compile_set(args)
    cb._Worker.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
