"""CPU half precision side by side: sparsert-cpu in float32 / float16 / bfloat16 against dense GEMM.

    python3 -m benchmarks.cpu_half --threads 1 --runs 15        # the spmm_dl.csv set, 1 thread
    python3 -m benchmarks.cpu_half --threads 1 2 --subset 10    # 10 problems spread evenly, 1 and 2 threads
    python3 -m benchmarks.cpu_half --report-only                # .md and .png again from the .jsonl

What is compared, per problem (the rows of problems/spmm_dl.csv that `benchmarks.cpu --set spmm`
runs, loaded by benchmarks/cpu_baselines.py; the weight is cb.make_weight's: the DLMC pattern of
that shape and sparsity where one exists, else a uniform random mask, values N(0, 1), seed 0):

  sparsert_f32 / _f16 / _bf16   sparsert.compile(A, options=KernelOptions(n=N, target="cpu",
                                dtype=...)), compiled before timing (into a fresh cache folder, so
                                the compile seconds recorded are cold); called as k(B, threads=t)
                                on a CPU torch tensor of the dtype. A stays float32 in the kernel:
                                the runtime widens B to float32 while packing, float32 FMAs, one
                                round-to-nearest-even at the store (README, "Half precision").
  torch_f32 / _f16 / _bf16      torch.mm(A_dense, B) with A_dense and B in that dtype, torch's
                                intra-op threads set to t: the CPU GEMM a torch user gets.
  numpy_f32                     numpy A_dense @ B (OpenBLAS sgemm) in the child process of
                                cpu_baselines (`numpy_dense`), started without OPENBLAS_CORETYPE
                                and OPENBLAS_L2_SIZE, which slow OpenBLAS here; threadpoolctl
                                names its kernel and limits its threads.

Timing: cpu_baselines.time_side_by_side, all seven methods in this one process (numpy in its
child), interleaved round-robin, each call timed on its own (perf_counter_ns around one call),
--warmup rounds, then --runs rounds: median, p25 / p75, min per method. Inputs are converted to
each dtype once, outside the timed call (B float32 -> torch dtype, round to nearest even). The B
sets rotate over enough copies that the half copies alone overflow the 32 MiB L3 (twice what
benchmarks/cpu.py uses for float32).

Checks (before timing, on the first B set): each output against float64, ref = A (float64) @ B
(the values the method received, i.e. B rounded to its dtype, in float64); error = max|C - ref| /
max|ref|. Float32 methods pass at <= 1e-4; half methods at <= 4 u, u the unit roundoff of the
dtype (2^-11 float16, 2^-8 bfloat16). torch's half GEMM multiplies the weight rounded to the
dtype, so its error also carries that rounding (recorded separately against the rounded weight).
Failing methods are timed anyway, and flagged loudly in the log, the .md and the exit status (1).
Also per problem: whether sparsert's half output equals, bit for bit, its float32 kernel's output
on the same (widened) B rounded to the dtype, as README promises.

Writes benchmarks/results/cpu-half.jsonl (a meta line: command, machine, load averages, versions,
kernels; then one record per problem x threads x method), cpu-half.md (times, ratios, geomeans,
errors, a short reading) and cpu-half.png (per problem: sparsert half vs torch dense in the same
dtype, and sparsert half vs sparsert float32). Data: SPARSERT_DATA or ../shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cpu as cpu_bench
from benchmarks import cpu_baselines as cb

DTYPES = ("float32", "float16", "bfloat16")
HALVES = ("float16", "bfloat16")
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
F32_TOL = 1e-4
HALF_UNITS = 4                       # a half method passes at max rel err <= HALF_UNITS * u
REF = "sparsert_f32"
METHODS = ("sparsert_f32", "sparsert_f16", "sparsert_bf16", "torch_f32", "torch_f16", "torch_bf16", "numpy_f32")
OUT_STEM = "cpu-half"


def method_dtype(name: str) -> str:
    return {v: k for k, v in SHORT.items()}[name.rsplit("_", 1)[1]]


def tolerance(dtype: str) -> float:
    return F32_TOL if dtype == "float32" else HALF_UNITS * UNIT_ROUNDOFF[dtype]


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, dtype)


# ---------------------------------------------------------------------------------------------
# problems, inputs, kernels
# ---------------------------------------------------------------------------------------------
def pick_problems(subset: int, names=None) -> list[cb.Problem]:
    probs = cb.load_spmm_problems()
    if names:
        probs = [p for p in probs if p.name in names]
    if subset and subset < len(probs):
        idx = sorted({round(i * (len(probs) - 1) / (subset - 1)) for i in range(subset)}) if subset > 1 else [0]
        probs = [probs[i] for i in idx]
    return probs


class Inputs:
    """The float32 B sets and their copies in each dtype as CPU torch tensors (made once, untimed,
    shared by the methods of that dtype; float32 ones are zero-copy views)."""

    def __init__(self, B_sets):
        self.B = B_sets
        self._conv: dict = {}

    def as_torch(self, B, dtype):
        import torch

        key = (id(B), dtype)
        if key not in self._conv:
            t = torch.from_numpy(B)
            self._conv[key] = t if dtype == "float32" else t.to(torch_dtype(dtype))
        return self._conv[key]

    def as_float64(self, B, dtype) -> np.ndarray:
        import torch

        return self.as_torch(B, dtype).to(torch.float64).numpy()


def compile_kernels(A, N) -> tuple[dict, dict]:
    import sparsert

    kernels, facts = {}, {}
    for dt in DTYPES:
        t0 = time.perf_counter()
        k = sparsert.compile(A, options=sparsert.KernelOptions(n=N, target="cpu", dtype=dt))
        facts[dt] = dict(cpu_bench._compile_facts(k, A.nnz, time.perf_counter() - t0), dtype=dt)
        kernels[dt] = k
    return kernels, facts


def half_bit_equal(kernels, inputs, B) -> dict:
    """sparsert half output == its float32 kernel's output on the same B (widened) rounded to the
    dtype, bit for bit (README's claim for the CPU target)."""
    import torch

    out = {}
    for dt in HALVES:
        Bh = inputs.as_torch(B, dt)
        c32 = kernels["float32"](Bh.float(), threads=1)
        ch = kernels[dt](Bh, threads=1)
        out[dt] = bool(torch.equal(c32.to(torch_dtype(dt)).view(torch.int16), ch.view(torch.int16)))
    return out


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def build_methods(A, N, threads, kernels, cfacts, inputs) -> dict:
    import torch

    import sparsert

    fns = {}
    for dt in DTYPES:
        k = kernels[dt]

        def sp(B, k=k):
            return k(B, threads=threads)
        sp.adapt_input = partial(inputs.as_torch, dtype=dt)
        sp.dtype = dt
        sp.info = dict(library=f"sparsert-cpu, dtype={dt} (float32 weights, FMAs and accumulators)",
                       version=sparsert.__version__, kernel=k.arch, call="k(B_torch, threads=t)", **cfacts[dt])
        fns[f"sparsert_{SHORT[dt]}"] = sp
    Ad = torch.from_numpy(A.toarray())
    for dt in DTYPES:
        Adt = Ad if dt == "float32" else Ad.to(torch_dtype(dt))

        def mm(B, Adt=Adt):
            return torch.mm(Adt, B)
        fn = cb._with_torch_threads(mm, threads)
        fn.adapt_input = partial(inputs.as_torch, dtype=dt)
        fn.dtype = dt
        fn.info = dict(library=f"torch.mm, A and B in {dt}", **cb.torch_info(), half_path=torch_half_probe().get(dt))
        fns[f"torch_{SHORT[dt]}"] = fn
    rem = cb.make_method("numpy_dense", A, N, threads)
    rem.dtype = "float32"
    fns["numpy_f32"] = rem
    return fns


def _to64(C) -> np.ndarray:
    if hasattr(C, "detach"):
        import torch

        return C.detach().to(torch.float64).numpy()
    return np.asarray(C, dtype=np.float64)


def check_methods(fns, A, B, inputs) -> dict:
    """Per method: max|C - ref| / max|ref| with ref = A (float64) @ B rounded to the method's dtype
    (in float64), that error in units of the dtype's unit roundoff, the tolerance, pass/fail;
    torch's half methods also against the weight rounded to the dtype."""
    import scipy.sparse as sp

    refs = {dt: cb.reference(A, inputs.as_float64(B, dt)) for dt in DTYPES}
    out = {}
    for nm, fn in fns.items():
        dt = fn.dtype
        try:
            C = fn(cb._arg(fn, B))
            got = _to64(C)
            err = cb.max_rel_err(got, refs[dt])
            rec = {"max_rel_err": err, "err_units": err / UNIT_ROUNDOFF[dt], "tol": tolerance(dt),
                   "ok": bool(err <= tolerance(dt)), "out_dtype": str(getattr(C, "dtype", ""))}
            if nm.startswith("torch_") and dt in HALVES:
                import torch

                Ar = sp.csr_matrix(A, dtype=np.float64)
                Ar.data = _to64(torch.from_numpy(np.ascontiguousarray(A.data)).to(torch_dtype(dt)))
                ref_r = np.asarray(Ar @ inputs.as_float64(B, dt))
                rec["max_rel_err_vs_rounded_weight"] = cb.max_rel_err(got, ref_r)
        except Exception as e:  # noqa: BLE001
            rec = {"max_rel_err": float("nan"), "err_units": float("nan"), "tol": tolerance(dt), "ok": False,
                   "error": repr(e)[:300]}
        out[nm] = rec
    return out


# ---------------------------------------------------------------------------------------------
# what ran: torch's half GEMM path, OpenBLAS
# ---------------------------------------------------------------------------------------------
_HALF_PROBE: dict = {}


def torch_half_probe() -> dict:
    """torch.mm on 64x64 @ 64x96 in each dtype, in a child with MKL_VERBOSE=1 and
    ONEDNN_VERBOSE=1: which library logged a call (none: ATen's own cpublas gemm)."""
    if _HALF_PROBE:
        return dict(_HALF_PROBE)
    code = ("import torch\n"
            "for dt in ('float32', 'float16', 'bfloat16'):\n"
            "    print('@@', dt, flush=True)\n"
            "    d = getattr(torch, dt)\n"
            "    torch.mm(torch.randn(64, 64).to(d), torch.randn(64, 96).to(d))\n"
            "    print('', flush=True)\n"
            "print('@@ flags', torch.ops.mkldnn._is_mkldnn_bf16_supported(),"
            " torch.ops.mkldnn._is_mkldnn_fp16_supported(), torch.backends.mkldnn.is_available(), flush=True)\n")
    env = dict(os.environ, MKL_VERBOSE="1", ONEDNN_VERBOSE="1")
    try:
        r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
        txt = r.stdout
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
    cur, seen = None, {}
    for line in txt.splitlines():
        if line.startswith("@@ flags"):
            f = line.split()[2:]
            _HALF_PROBE["mkldnn_bf16_supported"], _HALF_PROBE["mkldnn_fp16_supported"] = f[0], f[1]
            _HALF_PROBE["mkldnn_available"] = f[2]
        elif line.startswith("@@"):
            cur = line.split()[1]
            seen[cur] = []
        elif cur and line.startswith("MKL_VERBOSE") and "(" in line and not line.startswith("MKL_VERBOSE oneMKL"):
            seen[cur].append("MKL " + line.split()[1].split("(")[0])
        elif cur and line.startswith("onednn_verbose") and ",exec," in line:
            parts = line.split(",")
            seen[cur].append("oneDNN " + ",".join(parts[3:6]))
    for dt, calls in seen.items():
        _HALF_PROBE[dt] = ("; ".join(sorted(set(calls))) if calls else
                           "no MKL or oneDNN call logged: ATen's own cpublas::gemm (reduced-precision fallback)")
    return dict(_HALF_PROBE)


# ---------------------------------------------------------------------------------------------
# one problem
# ---------------------------------------------------------------------------------------------
def run_problem(p: cb.Problem, threads_list, args, log=print) -> list[dict]:
    A, pattern = cb.make_weight(p, seed=args.seed)
    kernels, cfacts = compile_kernels(A, p.N)
    n_sets = cb.n_input_sets(p.K, p.N, target_bytes=96 << 20)
    B_sets = cb.make_inputs(p.K, p.N, n_sets, seed=args.seed + 1)
    inputs = Inputs(B_sets)
    bits = half_bit_equal(kernels, inputs, B_sets[0])
    recs = []
    for t in threads_list:
        t0 = time.time()
        fns = build_methods(A, p.N, t, kernels, cfacts, inputs)
        checks = check_methods(fns, A, B_sets[0], inputs)
        for nm, c in checks.items():
            if not c["ok"]:
                log(f"  !!! {p.name} t={t} {nm}: max rel err {c['max_rel_err']:.3g} = {c['err_units']:.2f} u "
                    f"> tolerance {c['tol']:.3g} {c.get('error', '')}")
        timed = {nm: fn for nm, fn in fns.items() if math.isfinite(checks[nm]["max_rel_err"])}
        lb = os.getloadavg()
        stats = cb.time_side_by_side(timed, B_sets, runs=args.runs, warmup=args.warmup)
        la = os.getloadavg()
        paired = cb.paired_ratios(stats, REF)
        for fn in fns.values():
            if hasattr(fn, "close"):
                fn.close()
        date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for nm in METHODS:
            if nm not in stats:
                continue
            s, dt = stats[nm], fns[nm].dtype
            info = cb._jsonable(getattr(fns[nm], "info", {}))
            r = dict(problem=p.name, family=p.family, problem_id=p.problem_id, M=p.M, K=p.K, N=p.N,
                     sparsity=p.sparsity, nnz=int(A.nnz), pattern=pattern, method=nm, dtype=dt,
                     kind="sparse" if nm.startswith("sparsert") else "dense", threads=t,
                     **{k: round(s[k], 2) for k in ("median_us", "min_us", "p25_us", "p75_us", "max_us")},
                     runs=s["n"], stalls=s["stalls"], n_input_sets=n_sets,
                     gflops_sparse=round(2.0 * A.nnz * p.N / (s["median_us"] * 1e3), 3),
                     gflops_dense_equiv=round(2.0 * p.M * p.K * p.N / (s["median_us"] * 1e3), 3),
                     paired_ratio_vs_sparsert_f32=paired.get(nm), **checks[nm], info=info,
                     loadavg_before=[round(x, 2) for x in lb], loadavg_after=[round(x, 2) for x in la], date=date,
                     samples_us=[round(x, 2) for x in s["samples_us"]])
            if nm.startswith("sparsert") and dt in HALVES:
                r["bit_equal_to_f32_rounded"] = bits[dt]
            recs.append(r)
        med = {nm: stats[nm]["median_us"] for nm in stats}
        log(f"{p.name:18s} M={p.M:5d} K={p.K:5d} N={p.N:6d} t={t}: "
            + " ".join(f"{SHORT_LOG.get(nm, nm)}={med[nm]:.0f}" for nm in METHODS if nm in med)
            + f"  bits={'/'.join(str(int(bits[d])) for d in HALVES)} load {la[0]:.1f} ({time.time() - t0:.0f}s)")
    return recs


SHORT_LOG = {"sparsert_f32": "sp32", "sparsert_f16": "sp16", "sparsert_bf16": "spbf", "torch_f32": "t32",
             "torch_f16": "t16", "torch_bf16": "tbf", "numpy_f32": "np32"}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _groups(recs) -> dict:
    g: dict = {}
    for r in recs:
        if "median_us" in r:
            g.setdefault((r["problem"], r["threads"]), {})[r["method"]] = r
    return g


def problem_ratios(g: dict) -> dict:
    """Speedups (other median / this median, > 1: the second-named is faster) for one problem."""
    def t(nm):
        return g[nm]["median_us"] if nm in g else None

    def x(a, b):
        return a / b if a and b else None
    dense32 = [nm for nm in ("torch_f32", "numpy_f32") if nm in g]
    fd = min(dense32, key=t) if dense32 else None
    out = {"fastest_f32_dense": fd, "fastest_f32_dense_us": t(fd) if fd else None,
           "f32_vs_dense32": x(t(fd) if fd else None, t(REF))}
    for dt in HALVES:
        s = SHORT[dt]
        me = t(f"sparsert_{s}")
        out[f"{s}_vs_sp32"] = x(t(REF), me)
        out[f"{s}_vs_torch_same"] = x(t(f"torch_{s}"), me)
        out[f"{s}_vs_dense32"] = x(t(fd) if fd else None, me)
        out[f"{s}_vs_sp32_paired"] = (1 / g[f"sparsert_{s}"]["paired_ratio_vs_sparsert_f32"]
                                      if g.get(f"sparsert_{s}", {}).get("paired_ratio_vs_sparsert_f32") else None)
    out["torch_f16_vs_torch_f32"] = x(t("torch_f32"), t("torch_f16"))
    out["torch_bf16_vs_torch_f32"] = x(t("torch_f32"), t("torch_bf16"))
    return out


RATIO_COLS = [("f16_vs_sp32", "sp-f16 vs sp-f32"), ("bf16_vs_sp32", "sp-bf16 vs sp-f32"),
              ("f16_vs_torch_same", "sp-f16 vs torch f16"), ("bf16_vs_torch_same", "sp-bf16 vs torch bf16"),
              ("f16_vs_dense32", "sp-f16 vs fastest f32 dense"), ("bf16_vs_dense32", "sp-bf16 vs fastest f32 dense"),
              ("f32_vs_dense32", "sp-f32 vs fastest f32 dense"), ("torch_f16_vs_torch_f32", "torch f16 vs torch f32"),
              ("torch_bf16_vs_torch_f32", "torch bf16 vs torch f32")]


def _f(x, fmt="{:.2f}"):
    return cpu_bench._f(x, fmt)


def _sorted_keys(gs, t):
    return sorted([k for k in gs if k[1] == t], key=lambda k: cb._problem_sort_key(k[0]))


def geomean_table(gs, threads_list) -> str:
    lines = ["| threads | subset | problems | " + " | ".join(lab for _, lab in RATIO_COLS) + " |",
             "|" + "---|" * (3 + len(RATIO_COLS))]
    for t in threads_list:
        keys = _sorted_keys(gs, t)
        sps = sorted({gs[k][next(iter(gs[k]))]["sparsity"] for k in keys})
        for label, sel in [("all", keys)] + [(f"sparsity {sp:.2f}", [k for k in keys if abs(
                next(iter(gs[k].values()))["sparsity"] - sp) < 1e-6]) for sp in sps]:
            qs = [problem_ratios(gs[k]) for k in sel]
            cells = []
            for key, _ in RATIO_COLS:
                vals = [q[key] for q in qs if q[key]]
                cells.append(f"**{_f(cpu_bench.geomean(vals))}** ({_f(min(vals) if vals else None)}-"
                             f"{_f(max(vals) if vals else None)})" if label == "all" else _f(cpu_bench.geomean(vals)))
            lines.append(f"| {t} | {label} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def times_table(gs, t) -> str:
    head = ["problem", "M", "K", "N", "sparsity", "nnz"] + [f"{m} us (p25-p75)" for m in METHODS] + ["load 1m"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in _sorted_keys(gs, t):
        g = gs[k]
        r0 = g.get(REF) or next(iter(g.values()))
        cells = [f"{g[m]['median_us']:.1f} ({g[m]['p25_us']:.0f}-{g[m]['p75_us']:.0f})" if m in g else "-"
                 for m in METHODS]
        lines.append("| " + " | ".join(str(x) for x in [k[0].replace("spmm_dl/", ""), r0["M"], r0["K"], r0["N"],
                                                          f"{r0['sparsity']:.2f}", r0["nnz"]] + cells +
                                        [_f((r0.get("loadavg_before") or [None])[0], "{:.1f}")]) + " |")
    return "\n".join(lines)


def ratio_table(gs, t) -> str:
    head = ["problem", "fastest f32 dense (us)"] + [lab for _, lab in RATIO_COLS] + \
           ["sp-f16 vs sp-f32 (paired)", "sp-bf16 vs sp-f32 (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in _sorted_keys(gs, t):
        q = problem_ratios(gs[k])
        fd = f"{q['fastest_f32_dense']} ({q['fastest_f32_dense_us']:.0f})" if q["fastest_f32_dense"] else "-"
        lines.append("| " + " | ".join([k[0].replace("spmm_dl/", ""), fd] + [_f(q[c]) for c, _ in RATIO_COLS] +
                                       [_f(q["f16_vs_sp32_paired"]), _f(q["bf16_vs_sp32_paired"])]) + " |")
    return "\n".join(lines)


def error_section(recs) -> tuple[str, list]:
    worst: dict = {}
    bad = []
    for r in recs:
        if "median_us" not in r:
            continue
        w = worst.get(r["method"])
        if w is None or not (r["max_rel_err"] <= w["max_rel_err"]):
            worst[r["method"]] = r
        if not r.get("ok"):
            bad.append(r)
    bits = [r for r in recs if "bit_equal_to_f32_rounded" in r]
    head = ("| method | dtype | worst max rel err | in units of u | u | tolerance | problem | "
            "passed (problems x threads) | worst vs the rounded weight |")
    lines = [head, "|" + "---|" * 9]
    for m in METHODS:
        if m not in worst:
            continue
        w = worst[m]
        rs = [r for r in recs if r.get("method") == m and "median_us" in r]
        vr = [r["max_rel_err_vs_rounded_weight"] for r in rs if "max_rel_err_vs_rounded_weight" in r]
        lines.append(f"| {m} | {w['dtype']} | {w['max_rel_err']:.3g} | {w['err_units']:.2f} | "
                     f"2^{round(math.log2(UNIT_ROUNDOFF[w['dtype']]))} | {w['tol']:.3g} | {w['problem']} | "
                     f"{sum(bool(r['ok']) for r in rs)}/{len(rs)} | {_f(max(vr) if vr else None, '{:.3g}')} |")
    neq = sorted({(r["problem"], r["dtype"]) for r in bits if not r["bit_equal_to_f32_rounded"]})
    lines += ["", f"sparsert half output bit-equal to its float32 kernel's output on the same B rounded to the dtype: "
                  f"{len({(r['problem'], r['dtype']) for r in bits}) - len(neq)} of "
                  f"{len({(r['problem'], r['dtype']) for r in bits})} (problem, dtype) pairs"
              + (f"; **NOT equal: {neq}**" if neq else ".")]
    return "\n".join(lines), bad


def reading(gs, threads_list, probe) -> str:
    """The 'what this shows' paragraph, every number from this run's records."""
    t = threads_list[0]
    keys = _sorted_keys(gs, t)
    qs = [problem_ratios(gs[k]) for k in keys]

    def gm(key):
        return cpu_bench.geomean([q[key] for q in qs if q[key]])

    def count(key, above=1.0):
        vals = [q[key] for q in qs if q[key]]
        return sum(v > above for v in vals), len(vals)

    def gf(method):
        return cpu_bench.geomean([gs[k][method]["gflops_dense_equiv"] for k in keys if method in gs[k]])
    f16_win, n = count("f16_vs_sp32")
    bf16_win, _ = count("bf16_vs_sp32")
    sp = []
    for dt in HALVES:
        s = SHORT[dt]
        by_n: dict = {}
        for k, q in zip(keys, qs):
            if q[f"{s}_vs_sp32"]:
                by_n.setdefault(gs[k][REF]["N"], []).append(q[f"{s}_vs_sp32"])
        sp.append(f"{dt} " + ", ".join(f"{_f(cpu_bench.geomean(v))} at N = {nn} ({len(v)})"
                                       for nn, v in sorted(by_n.items())))
    half_path = probe.get("float16", "?")
    txt = (
        f"At {t} thread(s), over {n} problems: sparsert's float16 kernels are {_f(gm('f16_vs_sp32'))}x and its "
        f"bfloat16 kernels {_f(gm('bf16_vs_sp32'))}x as fast as its float32 kernels (geomean speedup, i.e. "
        f"{_f(1 / gm('f16_vs_sp32'))}x and {_f(1 / gm('bf16_vs_sp32'))}x the time; float16 faster on {f16_win} of "
        f"{n} problems, bfloat16 on {bf16_win} of {n}). Speedup over float32 by N (geomean, problems): "
        f"{'; '.join(sp)}. By construction "
        f"(README) the half kernels run the float32 kernel's FMAs on float32 weights, so what changes is half the "
        f"bytes of B and C against a widening while packing and a rounding at the store; these ratios are that "
        f"trade, measured. Against torch.mm in the same dtype sparsert's half kernels are "
        f"{_f(gm('f16_vs_torch_same'))}x (float16) and {_f(gm('bf16_vs_torch_same'))}x (bfloat16) faster "
        f"(geomean), but that mostly measures torch: its float16 / bfloat16 mm on this CPU runs at a geomean "
        f"{_f(gf('torch_f16'), '{:.1f}')} / {_f(gf('torch_bf16'), '{:.1f}')} dense-equivalent GFLOP/s against "
        f"{_f(gf('torch_f32'), '{:.1f}')} in float32 (the probe: {half_path}). The fairer yardstick for a user "
        f"holding half activations is float32 dense GEMM (the conversion to float32 not counted, in dense's "
        f"favour): against the faster of torch.mm and numpy in float32, sparsert float16 is "
        f"{_f(gm('f16_vs_dense32'))}x and bfloat16 {_f(gm('bf16_vs_dense32'))}x faster (geomean), and sparsert "
        f"float32 {_f(gm('f32_vs_dense32'))}x.")
    if 2 in threads_list and 1 in threads_list:
        txt += " " + scaling_note(gs)
    return txt


def scaling_note(gs) -> str:
    """How each method's median moved from 1 to 2 threads (geomean over problems of t2 / t1)."""
    per: dict = {}
    for (prob, t), g in gs.items():
        if t != 2 or (prob, 1) not in gs:
            continue
        for nm, r in g.items():
            if nm in gs[(prob, 1)]:
                per.setdefault(nm, []).append(r["median_us"] / gs[(prob, 1)][nm]["median_us"])
    parts = ", ".join(f"{nm} {_f(cpu_bench.geomean(v))}" for nm, v in per.items())
    return (f"At 2 threads on this loaded 2-vCPU machine the times mostly did not improve; 2-thread median / "
            f"1-thread median, geomean over problems: {parts} (< 1: faster with 2). The float32 dense libraries "
            f"got slower, not faster (a likely cause, not measured here: a pool thread waiting for a core another "
            f"process holds), which inflates "
            f"every 2-thread ratio against them: read the 1-thread ratios.")


def noise_line(recs) -> str:
    per: dict = {}
    for r in recs:
        if "median_us" in r:
            per.setdefault(r["method"], []).append((r["p75_us"] - r["p25_us"]) / r["median_us"])
    return ("Spread, (p75 - p25) / median, median over problems: " +
            ", ".join(f"{m} {statistics.median(v):.2f}" for m, v in per.items()) + ".")


def write_md(recs, meta, path):
    gs = _groups(recs)
    threads_list = sorted({k[1] for k in gs})
    m, v = meta.get("machine", {}), meta.get("versions", {})
    probe = meta.get("torch_half_probe", {})
    errs, bad = error_section(recs)
    a = meta.get("args", {})
    probs = sorted({r["problem"] for r in recs if "median_us" in r}, key=cb._problem_sort_key)
    lines = [
        "# CPU half precision: sparsert float32 / float16 / bfloat16 vs dense GEMM", "",
        (f"`{meta.get('command')}` ({meta.get('wall_s', 0) / 60:.1f} min wall). {len(probs)} problems "
         f"({meta.get('subset_note')}), threads {threads_list}; median of {a.get('runs')} interleaved calls per "
         f"method after {a.get('warmup')} warm-up rounds (cpu_baselines.time_side_by_side: seven methods "
         f"round-robin, each call timed on its own; input conversions outside the timed call). Ratios are "
         f"speedups: the other method's median time / this one's (> 1: the first-named is faster). Range in "
         f"parentheses: min-max over problems."),
        "",
    ]
    if bad:
        lines += ["**!!! ACCURACY CHECK FAILED** for: " + ", ".join(
            f"{r['method']} on {r['problem']} t={r['threads']} ({r['max_rel_err']:.3g} = {r['err_units']:.1f} u)"
            for r in bad) + " (timed anyway; see Accuracy)", ""]
    verdict = cpu_bench.load_verdict([r for r in recs if "median_us" in r])
    if 2 not in threads_list:                       # its second half is about 2-thread numbers
        verdict = verdict.split(" **The 2-thread")[0]
    lines += [verdict, "",
              "## What this shows", "", reading(gs, threads_list, probe), "",
              "## Geomeans", "", geomean_table(gs, threads_list), "",
              "Paired ratios (median over rounds of the per-round ratio, same machine state) are in the per-problem "
              "tables; " + noise_line(recs), ""]
    for t in threads_list:
        lines += [f"## {t} thread(s): speedups per problem", "", ratio_table(gs, t), "",
                  f"## {t} thread(s): median us per method (p25-p75)", "", times_table(gs, t), ""]
    lines += ["## Accuracy", "",
              ("max |C - ref| / max |ref|, ref = A (float64) @ B rounded to the method's dtype (float64). Pass: "
               f"float32 <= {F32_TOL:g}; half <= {HALF_UNITS} u (u = 2^-11 float16, 2^-8 bfloat16). torch's half "
               "GEMM rounds the weight to the dtype too; its error against that rounded weight is the last column."),
              "",
              errs, "",
              "## Machine", "",
              (f"- CPU: {m.get('cpu_model')} (family {m.get('cpu_family')} model {m.get('cpu_model_id')}), "
               f"{m.get('nproc')} vCPUs, hypervisor: {m.get('hypervisor')}, L3: {m.get('l3')}"),
              (f"- ISA flags: {' '.join(m.get('isa_flags') or [])}; AVX-512: {m.get('avx512')}; "
               f"F16C: {'f16c' in (m.get('isa_flags') or [])}; sparsert CPU ISA: {m.get('sparsert_isa')}"),
              (f"- load average (1, 5, 15 min) before: {meta.get('loadavg', {}).get('before')}, after: "
               f"{meta.get('loadavg', {}).get('after')}; threads: {threads_list}"),
              f"- OpenBLAS env: {meta.get('blas_env_note')}",
              f"- versions: {json.dumps(v)}", "",
              "## Kernels that ran", "",
              "| method | what ran |", "|---|---|"]
    for nm, what in (meta.get("kernels") or {}).items():
        lines.append(f"| {nm} | {what} |")
    Path(path).write_text("\n".join(lines) + "\n")


def plot(recs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    gs = _groups(recs)
    threads_list = sorted({k[1] for k in gs})
    panels = [(t, which) for t in threads_list for which in ("torch", "sp32")]
    n_probs = len({k[0] for k in gs})
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(9, 0.42 * n_probs), 3.6 * len(panels)), squeeze=False)
    for ax, (t, which) in zip(axes[:, 0], panels):
        keys = _sorted_keys(gs, t)
        qs = [problem_ratios(gs[k]) for k in keys]
        x = np.arange(len(keys))
        for j, dt in enumerate(HALVES):
            s = SHORT[dt]
            key = f"{s}_vs_torch_same" if which == "torch" else f"{s}_vs_sp32"
            lab = f"sparsert {s} vs torch.mm {s}" if which == "torch" else f"sparsert {s} vs sparsert f32"
            ax.bar(x + j * 0.4, [q[key] or np.nan for q in qs], 0.4, label=lab)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        vals = [q[f"{SHORT[dt]}_vs_sp32"] for q in qs for dt in HALVES if q[f"{SHORT[dt]}_vs_sp32"]]
        if which == "sp32" and vals:                 # a narrow range: ticks of its own
            lo, hi = min(min(vals), 1.0), max(vals)
            ax.set_yticks([v for v in (0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5)
                           if lo / 1.1 <= v <= hi * 1.1])
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x + 0.2)
        ax.set_xticklabels([k[0].replace("spmm_dl/", "") for k in keys], rotation=90, fontsize=7)
        ax.set_ylabel("speedup (median time ratio, log)")
        ax.set_title(f"{'vs torch dense, same dtype' if which == 'torch' else 'half vs float32 sparsert'}, "
                     f"{t} thread(s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def machine_meta() -> dict:
    m = cb.machine_facts()
    try:
        m["l3"] = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        m["l3"] = None
    try:
        from sparsert.backends.cpu.isa import detect_isa

        m["sparsert_isa"] = detect_isa()
    except Exception as e:  # noqa: BLE001
        m["sparsert_isa"] = repr(e)
    return m


def versions_meta() -> dict:
    v = cb.versions()
    for mod in ("sparsert", "ml_dtypes", "matplotlib"):
        ok, ver = cb._try_import(mod)
        v[mod] = ver if ok else None
    return v


def kernels_meta(recs, probe) -> dict:
    info = {}
    for r in recs:
        if r.get("method") and r["method"] not in info and r.get("info"):
            info[r["method"]] = r["info"]
    out = {}
    for nm in METHODS:
        i = info.get(nm, {})
        if nm.startswith("sparsert"):
            out[nm] = f"{i.get('library')}; ISA {i.get('kernel')}; generated x86 assembly"
        elif nm.startswith("torch"):
            dt = method_dtype(nm)
            out[nm] = (f"torch {i.get('torch')} cpu_capability={i.get('cpu_capability')}; MKL/oneDNN verbose probe "
                       f"of torch.mm in {dt}: {probe.get(dt)}; mkldnn bf16/fp16 supported: "
                       f"{probe.get('mkldnn_bf16_supported')}/{probe.get('mkldnn_fp16_supported')}")
        elif nm == "numpy_f32":
            out[nm] = (f"numpy {i.get('version')} OpenBLAS {i.get('openblas_version')} kernel {i.get('kernel')} "
                       f"({i.get('threading_layer')}, threadpoolctl), child process, env dropped: "
                       f"{i.get('env_dropped')} (parent had {i.get('parent_env')}, child has {i.get('child_env')})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--subset", type=int, default=0, help="about this many problems spread evenly (0: all)")
    ap.add_argument("--problems", nargs="+", default=None, help="keep only these problem names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / OUT_STEM), help="path stem of the .jsonl / .md / .png")
    ap.add_argument("--report-only", action="store_true", help="rebuild the .md / .png from the .jsonl")
    args = ap.parse_args(argv)
    stem = Path(args.out)
    jl, md, png = (stem.with_suffix(s) for s in (".jsonl", ".md", ".png"))
    if args.report_only:
        recs, meta = cpu_bench.read_jsonl(jl)
        write_md(recs, meta, md)
        plot(recs, png)
        return 0 if all(r.get("ok") for r in recs if "median_us" in r) else 1
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="sparsert-cpu-half-")
    os.environ["SPARSERT_CACHE_DIR"] = tmp.name            # cold compiles, the user's cache untouched
    t_start = time.time()
    load0 = os.getloadavg()
    probs = pick_problems(args.subset, args.problems)
    n_all = len(cb.load_spmm_problems())
    if len(probs) == n_all:
        subset_note = f"all {n_all} rows of spmm_dl.csv"
    elif args.subset:
        subset_note = (f"{len(probs)} of the {n_all} rows of spmm_dl.csv, spread evenly"
                       + (" over the named ones" if args.problems else ""))
    else:
        subset_note = f"the {len(probs)} named rows of the {n_all} of spmm_dl.csv"
    probe = torch_half_probe()
    print(f"{subset_note}; torch half path: {probe}", flush=True)
    parent_env = {k: os.environ.get(k) for k in cb.BLAS_ENV_TO_DROP}
    recs = []
    jl.write_text("")
    for p in probs:
        try:
            rs = run_problem(p, args.threads, args)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            rs = [{"problem": p.name, "error": repr(e)[:500]}]
        recs += rs
        cpu_bench.write_jsonl(jl, rs, "a")
    cb._Worker.close_all()
    ok = [r for r in recs if "median_us" in r]
    loads = {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]}
    blas_note = (f"{'/'.join(cb.BLAS_ENV_TO_DROP)} dropped from the environment of numpy's child process (this "
                 f"process had {parent_env}); torch and sparsert run in this process")
    meta = {"set": "cpu-half", "command": "python3 -m benchmarks.cpu_half " + " ".join(sys.argv[1:] if argv is None
                                                                                        else argv),
            "args": vars(args), "wall_s": round(time.time() - t_start, 1), "subset_note": subset_note,
            "problems": [p.name for p in probs], "machine": machine_meta(), "versions": versions_meta(),
            "loadavg": loads, "blas_env_note": blas_note, "torch_half_probe": probe,
            "kernels": kernels_meta(ok, probe),
            "checks": {"f32_tol": F32_TOL, "half_units": HALF_UNITS, "unit_roundoff": UNIT_ROUNDOFF},
            "errors": [r for r in recs if "error" in r and "median_us" not in r]}
    cpu_bench.write_jsonl(jl, recs, meta=meta)
    write_md(ok, meta, md)
    plot(ok, png)
    bad = [r for r in ok if not r.get("ok")]
    print(f"wrote {jl}, {md}, {png} ({meta['wall_s'] / 60:.1f} min)")
    if bad:
        print("!!! ACCURACY CHECK FAILED: " + ", ".join(f"{r['method']} {r['problem']} t={r['threads']} "
                                                        f"{r['max_rel_err']:.3g}" for r in bad), flush=True)
    return 1 if bad or meta["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
