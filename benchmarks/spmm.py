"""SpMM benchmark: sparsert against cuBLAS, cuSPARSE, torch dense and torch CSR, fp32.

    python3 -m benchmarks.spmm                              # the paper's problems at N x 1, 8, 32
    python3 -m benchmarks.spmm --dlmc all --batches 1       # + every DLMC RN50/Transformer pattern
    python3 -m benchmarks.spmm --compile-only --arch sm_90  # fill the kernel cache, no GPU needed

For each problem and batch: compile sparsert's kernel (through the kernel cache), build the dense
masked weight and its CSR, run every method once on the same inputs and check it against cuBLAS
(itself checked against a float64 product on a sample of columns), then time each method that
passed (sparsert.tune.measure_us: CUDA events, warm-up, median, inputs rotated past the L2). A
method that is unavailable (no torch, no cuSPARSE) is recorded as null with the reason; one that
fails its check is recorded as null with its error and never timed. Results go to
benchmarks/results/spmm-<time>-<device>.json (rewritten after every measurement) plus a markdown
table and a plot (benchmarks/report.py).
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
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from benchmarks import common

METHODS = ("sparsert", "cublas", "cusparse", "torch_dense", "torch_csr")
BASELINES = METHODS[1:]
DEFAULT_TOL = 1e-4  # normwise relative error vs cuBLAS; fp32 sums in another order stay ~1e-6
REF_COLUMNS = 256  # columns of cuBLAS's result checked against float64 on the host
TRANSFORMER_TOKENS = 256


# -- problems ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    name: str  # unique: "p3-s90" (CSV) or "rn50/0.9/bottleneck_1_block_group1_1_1" (DLMC)
    suite: str  # "spmm_dl", "dlmc-rn50", "dlmc-transformer"
    use_case: str
    m: int
    k: int
    n: int  # N at batch 1
    sparsity: float
    source: str  # "spmm_dl.csv:<line>" or the .smtx path
    problem_id: str | None = None
    reported_t4: float | None = None  # the paper's T4 speedup over cuBLAS (at batch 1)


def read_problems(path: Path) -> list[Problem]:
    out = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            s = float(row["sparsity"])
            out.append(Problem(
                name=f"p{row['problem']}-s{round(s * 100)}", suite="spmm_dl",
                use_case=row["use_case"], m=int(row["M"]), k=int(row["K"]), n=int(row["N"]),
                sparsity=s, source=f"{path.name}:{line}", problem_id=row["problem"],
                reported_t4=float(row["reported_speedup_vs_cublas_t4"]) if row.get(
                    "reported_speedup_vs_cublas_t4") else None))
    return out


def _smtx_header(path: Path) -> tuple[int, int, int]:
    with open(path) as f:
        m, k, nnz = (int(x) for x in f.readline().replace(",", " ").split())
    return m, k, nnz


def read_dlmc(shared: Path, which: str) -> list[Problem]:
    """Every .smtx of the chosen models. ResNet-50's N comes from rn50_batchsizes.txt (H*W at
    batch 1); Transformer layers run with 256 tokens."""
    root = shared / "dlmc"
    models = ("rn50", "transformer") if which == "all" else (which,)
    batch_n = {}
    with open(root / "rn50_batchsizes.txt") as f:
        for line in f:
            if line.strip():
                layer, n = line.strip().split(",")
                batch_n[layer] = int(n)
    out = []
    for model in models:
        for path in sorted((root / model).glob("*/*/*.smtx")):
            m, k, nnz = _smtx_header(path)
            if model == "rn50":
                if path.stem not in batch_n:
                    raise KeyError(f"{path}: layer {path.stem!r} missing from rn50_batchsizes.txt")
                n = batch_n[path.stem]
            else:
                n = TRANSFORMER_TOKENS
            level = path.parent.name
            out.append(Problem(
                name=f"{model}/{level}/{path.stem}", suite=f"dlmc-{model}",
                use_case="RN50" if model == "rn50" else "NLP", m=m, k=k, n=n,
                sparsity=1.0 - nnz / (m * k), source=str(path.relative_to(shared))))
    return out


def _seed(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{text}\0{seed}".encode()).digest()[:8], "little")


def make_weight(p: Problem, *, shared: Path, seed: int = 0):
    """The problem's weight: DLMC patterns with normal values from `seed`; CSV problems as a
    uniformly random mask with exactly round((1 - sparsity) * M * K) nonzeros. Deterministic."""
    from sparsert.frontend.weights import load_weight

    if p.suite.startswith("dlmc"):
        return load_weight(shared / p.source, seed=seed)
    rng = np.random.default_rng(_seed(p.name, seed))
    nnz = round((1.0 - p.sparsity) * p.m * p.k)
    flat = rng.choice(p.m * p.k, size=nnz, replace=False)
    values = rng.standard_normal(nnz).astype(np.float32)
    values[values == 0] = 1.0  # a drawn exact zero would vanish from the pattern
    a = sp.csr_matrix((values, (flat // p.k, flat % p.k)), shape=(p.m, p.k), dtype=np.float32)
    w = load_weight(a)
    return type(w)(matrix=w.matrix, name=re.sub(r"\W", "_", p.name), source=p.source)


# -- methods: each prepares variants of (launch(i), output(i)) on rotated operands --------------
class Unavailable(Exception):
    """This baseline cannot run here (library missing); recorded as null with the reason."""


@dataclass(eq=False)
class Operands:
    """One measurement's operands on the GPU: A (dense, CSR), B and C rotated over `sets`."""

    weight: object
    n: int
    kernel: object
    sets: int
    a: object = None  # dense masked weight (CuPy, M x K)
    b: list = field(default_factory=list)  # K x N
    c: list = field(default_factory=list)  # M x N

    @classmethod
    def build(cls, weight, n: int, kernel, *, seed: int) -> Operands:
        import cupy

        m, k = weight.shape
        l2, free = common.l2_and_free_bytes()
        sets = common.rotation_count(4 * (k * n + m * n), l2, free // 4)
        rng = cupy.random.default_rng(seed)
        ops = cls(weight=weight, n=n, kernel=kernel, sets=sets)
        ops.a = cupy.asarray(weight.matrix.toarray())
        ops.b = [rng.standard_normal((k, n), dtype=cupy.float32) for _ in range(sets)]
        ops.c = [cupy.zeros((m, n), dtype=cupy.float32) for _ in range(sets)]
        return ops

    def csr(self):
        import cupy

        mat = self.weight.matrix
        return (cupy.asarray(mat.indptr.astype(np.int32)), cupy.asarray(mat.indices.astype(np.int32)),
                cupy.asarray(mat.data))


Variant = tuple[str, Callable[[int], None], Callable[[int], object]]


def prepare_sparsert(ops: Operands) -> list[Variant]:
    s, kernel = ops.sets, ops.kernel
    return [("unrolled", lambda i: kernel(ops.b[i % s], out=ops.c[i % s]), lambda i: ops.c[i % s])]


def prepare_cublas(ops: Operands) -> list[Variant]:
    import cupy

    s = ops.sets
    return [("sgemm", lambda i: cupy.matmul(ops.a, ops.b[i % s], out=ops.c[i % s]),
             lambda i: ops.c[i % s])]


def prepare_cusparse(ops: Operands) -> list[Variant]:
    """cusparseSpMM on row-major B and C (no layout copies), descriptors and workspace made once,
    so a call is the library call alone. Each CSR algorithm is a variant; the fastest counts."""
    try:
        import cupy
        from cupy.cuda import device
        from cupy_backends.cuda.libs import cusparse as cs
        from cupyx import cusparse as cx
        from cupyx.scipy import sparse as csp
    except ImportError as e:
        raise Unavailable(f"cuSPARSE not importable: {e}") from e
    m, k = ops.weight.shape
    n, s = ops.n, ops.sets
    indptr, indices, data = ops.csr()
    a = csp.csr_matrix((data, indices, indptr), shape=(m, k))
    desc_a = cx.SpMatDescriptor.create(a)
    r32f = 0  # CUDA_R_32F

    def dn(arr, rows: int, cols: int):  # row-major dense descriptor (cupyx makes only column-major)
        desc = cs.createDnMat(rows, cols, cols, arr.data.ptr, r32f, cs.CUSPARSE_ORDER_ROW)
        return cx.DnMatDescriptor(desc, cs.dnMatGet, cs.destroyDnMat)

    desc_b = [dn(b, k, n) for b in ops.b]
    desc_c = [dn(c, m, n) for c in ops.c]
    alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)
    handle = device.get_cusparse_handle()
    op = cs.CUSPARSE_OPERATION_NON_TRANSPOSE
    variants, rejected = [], []
    for name in ("CUSPARSE_SPMM_CSR_ALG2", "CUSPARSE_SPMM_CSR_ALG1", "CUSPARSE_SPMM_CSR_ALG3",
                 "CUSPARSE_SPMM_ALG_DEFAULT"):
        alg = getattr(cs, name, None)
        if alg is None:
            continue
        try:
            size = cs.spMM_bufferSize(handle, op, op, alpha.ctypes.data, desc_a.desc, desc_b[0].desc,
                                      beta.ctypes.data, desc_c[0].desc, r32f, alg)
        except Exception as e:  # noqa: BLE001 - an algorithm this shape/version does not support
            rejected.append(f"{name}: {e}")
            continue
        buf = cupy.empty(max(1, size), cupy.int8)

        def launch(i, alg=alg, buf=buf, keep=(desc_a, desc_b, desc_c, a, alpha, beta)):
            cs.spMM(handle, op, op, alpha.ctypes.data, desc_a.desc, desc_b[i % s].desc,
                    beta.ctypes.data, desc_c[i % s].desc, r32f, alg, buf.data.ptr)

        variants.append((name.removeprefix("CUSPARSE_SPMM_").lower(), launch, lambda i: ops.c[i % s]))
    if not variants:
        raise Unavailable(f"no cusparseSpMM algorithm accepted this problem: {'; '.join(rejected)}")
    return variants


def _torch():
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch not importable: {e}") from e
    if not torch.cuda.is_available():
        raise Unavailable("torch sees no CUDA device")
    return torch


def prepare_torch_dense(ops: Operands) -> list[Variant]:
    torch = _torch()
    s = ops.sets
    at = torch.from_dlpack(ops.a)
    bt = [torch.from_dlpack(b) for b in ops.b]
    ct = [torch.from_dlpack(c) for c in ops.c]
    return [("matmul", lambda i: torch.matmul(at, bt[i % s], out=ct[i % s]), lambda i: ct[i % s])]


def prepare_torch_csr(ops: Operands) -> list[Variant]:
    torch = _torch()
    s = ops.sets
    indptr, indices, data = (torch.from_dlpack(x) for x in ops.csr())
    at = torch.sparse_csr_tensor(indptr, indices, data, size=ops.weight.shape)
    bt = [torch.from_dlpack(b) for b in ops.b]
    ct = [torch.from_dlpack(c) for c in ops.c]
    try:
        torch.mm(at, bt[0], out=ct[0])
    except (RuntimeError, TypeError):  # no out= for sparse @ dense in this torch: allocate
        last: dict[int, object] = {}

        def launch(i):
            last[i % s] = torch.mm(at, bt[i % s])

        return [("mm", launch, lambda i: last[i % s])]
    return [("mm", lambda i: torch.mm(at, bt[i % s], out=ct[i % s]), lambda i: ct[i % s])]


PREPARE = {"sparsert": prepare_sparsert, "cublas": prepare_cublas, "cusparse": prepare_cusparse,
           "torch_dense": prepare_torch_dense, "torch_csr": prepare_torch_csr}


# -- checking ---------------------------------------------------------------------------------
def max_rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| on whichever device both live (NumPy or CuPy arrays)."""
    if got.shape != ref.shape:
        return float("inf")
    diff = float(abs(got - ref).max())
    scale = float(abs(ref).max())
    if math.isnan(diff):  # NaN anywhere (max propagates it)
        return float("inf")
    return diff / scale if scale > 0 else diff


def _as_cupy(x):
    import cupy

    return x if isinstance(x, cupy.ndarray) else cupy.from_dlpack(x)


def cublas_vs_fp64(weight, b, ref, columns: int = REF_COLUMNS) -> float:
    """cuBLAS's result (the reference every method is checked against) against float64 on the
    host, on the first `columns` columns (a full float64 product of the largest problems would
    take minutes on the CPU)."""
    import cupy

    cols = min(columns, b.shape[1])
    exact = weight.matrix.astype(np.float64) @ cupy.asnumpy(b[:, :cols]).astype(np.float64)
    return max_rel_err(cupy.asnumpy(ref[:, :cols]).astype(np.float64), exact)


# -- one measurement --------------------------------------------------------------------------
def measure(p: Problem, weight, batch: int, *, args, peaks: dict, progress=print) -> dict:
    import cupy

    import sparsert

    n = p.n * batch
    m, k = weight.shape
    k_active = int(np.unique(weight.matrix.indices).size)
    rec: dict = {
        "problem": p.name, "suite": p.suite, "use_case": p.use_case, "problem_id": p.problem_id,
        "source": p.source, "M": m, "K": k, "N": n, "base_n": p.n, "batch": batch,
        "nnz": weight.nnz, "k_active": k_active, "sparsity": round(weight.sparsity, 6),
        "reported_speedup_t4": p.reported_t4 if batch == 1 else None,
        **{f"{meth}_us": None for meth in METHODS},
        "max_rel_err": None, "rel_err": {}, "skipped": {}, "failed": {}, "timing": {},
        "variants": {}, "efficiency": {},
    }
    t0 = time.perf_counter()
    try:
        kernel = sparsert.compile(weight, n=n, arch=args.arch, tune=args.tune)
    except sparsert.SparsertError as e:
        rec["failed"]["sparsert"] = f"compile: {e}".splitlines()[0]
        return rec
    st = kernel.stats
    rec["kernel"] = {**kernel.schedule.params(), "registers": st.registers,
                     "spill_stores": st.spill_stores, "compile_s": round(time.perf_counter() - t0, 3),
                     "cached_slabs": st.cached_slabs, "tuned": bool(args.tune), "arch": kernel.arch}
    floor = None
    if peaks.get("fp32_flops") and peaks.get("dram_bytes_per_s"):
        floor = common.spmm_floor(nnz=weight.nnz, m=m, k_active=k_active, n=n,
                                  peak_flops=peaks["fp32_flops"], dram_bps=peaks["dram_bytes_per_s"])
        rec["floor"] = {"compute_us": floor.compute_us, "memory_us": floor.memory_us,
                        "floor_us": floor.floor_us, "bound": floor.bound}

    ops = Operands.build(weight, n, kernel, seed=args.seed)
    stream = cupy.cuda.get_current_stream()
    ref = cupy.matmul(ops.a, ops.b[0])  # cuBLAS: the reference for every method
    rec["cublas_vs_fp64"] = cublas_vs_fp64(weight, ops.b[0], ref)
    ref_ok = rec["cublas_vs_fp64"] <= args.tol
    if not ref_ok:
        rec["failed"]["cublas"] = (f"cuBLAS differs from float64 by {rec['cublas_vs_fp64']:.2e} "
                                   f"> {args.tol:g}: no reference, nothing timed")
    for meth in args.methods:
        if not ref_ok:
            break
        try:
            variants = PREPARE[meth](ops)
        except Unavailable as e:
            rec["skipped"][meth] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - record and go on with the other methods
            rec["failed"][meth] = f"setup: {type(e).__name__}: {e}"
            continue
        times: dict[str, float] = {}
        for vname, launch, output in variants:
            label = f"{meth}:{vname}"
            try:
                for c in ops.c:
                    c.fill(np.nan)  # a method that writes nothing cannot pass on stale output
                launch(0)
                stream.synchronize()
                err = max_rel_err(_as_cupy(output(0)), ref)
                if meth == "cublas":  # the reference's own error is its distance to float64
                    err = max(err, rec["cublas_vs_fp64"])
                rec["rel_err"][label] = err
                if not err <= args.tol:
                    rec["failed"][label] = f"max relative error {err:.2e} vs cuBLAS > {args.tol:g}"
                    continue
                meas = common.measure_us(launch, warmup=args.warmup, repeat=args.repeat)
            except Exception as e:  # noqa: BLE001 - a CUDA/library error in one method
                rec["failed"][label] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                continue
            times[vname] = meas.median_us
            rec["timing"][label] = meas.as_dict()
        if times:
            best = min(times, key=times.get)
            rec[f"{meth}_us"] = times[best]
            if floor is not None:
                rec["efficiency"][meth] = floor.floor_us / times[best]
            if len(variants) > 1:
                rec["variants"][meth] = {"best": best, **times}
    errs = [e for e in rec["rel_err"].values() if e is not None]
    rec["max_rel_err"] = max(errs) if errs else None
    del ops, ref
    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()
    return rec


# -- the run ----------------------------------------------------------------------------------
def select(problems: list[Problem], *, only: str | None, sparsity: list[float] | None,
           limit: int | None) -> list[Problem]:
    out = [p for p in problems if not only or re.search(only, p.name)]
    if sparsity:
        out = [p for p in out if any(abs(p.sparsity - s) < 0.005 for s in sparsity)]
    return out[:limit] if limit else out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.spmm", description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="default",
                    help="problem CSV (default: shared/problems/spmm_dl.csv); 'none' to skip it")
    ap.add_argument("--dlmc", choices=("none", "rn50", "transformer", "all"), default="none",
                    help="also run these DLMC patterns (N from rn50_batchsizes.txt, or 256 tokens)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32],
                    help="N multipliers (default 1 8 32)")
    ap.add_argument("--sparsity", type=float, nargs="+", help="keep only these sparsities (0.9 0.95)")
    ap.add_argument("--only", help="keep problems whose name matches this regex (e.g. '^p1-')")
    ap.add_argument("--limit", type=int, help="at most this many problems (after filtering)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--arch", help="compile for this arch (default: the GPU's; required with "
                                   "--compile-only on a machine without one)")
    ap.add_argument("--tune", action="store_true", help="compile with sparsert's autotuned schedule")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=100, help="timed samples per method (median)")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL,
                    help=f"max relative error vs cuBLAS (default {DEFAULT_TOL:g})")
    ap.add_argument("--seed", type=int, default=0, help="seed of weight values and inputs")
    ap.add_argument("--out", type=Path, default=common.RESULTS, help="results folder")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile every kernel (fills the cache; runs without a GPU)")
    ap.add_argument("--no-report", action="store_true", help="skip the markdown table and plot")
    args = ap.parse_args(argv)
    if any(b <= 0 for b in args.batches):
        ap.error("--batches: positive integers")
    if "cublas" not in args.methods:
        args.methods = ["cublas", *args.methods]  # the reference is always run and checked
    args.methods = [m for m in METHODS if m in args.methods]
    return args


def load_selected(args) -> tuple[list[Problem], Path]:
    shared = common.shared_dir()
    problems: list[Problem] = []
    if args.problems != "none":
        path = shared / "problems" / "spmm_dl.csv" if args.problems == "default" else Path(args.problems)
        problems += read_problems(path)
    if args.dlmc != "none":
        problems += read_dlmc(shared, args.dlmc)
    return select(problems, only=args.only, sparsity=args.sparsity, limit=args.limit), shared


def compile_only(args, problems, shared) -> int:
    import sparsert

    arch = args.arch
    if arch is None:
        from sparsert.runtime.device import device_arch

        arch = device_arch()
        if arch is None:
            print("--compile-only without a GPU needs --arch (e.g. sm_90)", file=sys.stderr)
            return 2
    from tqdm import tqdm

    bar = tqdm(total=len(problems) * len(args.batches), desc="compiling", unit="kernel")
    for p in problems:
        w = make_weight(p, shared=shared, seed=args.seed)
        for batch in args.batches:
            bar.set_postfix_str(f"{p.name} N={p.n * batch}")
            k = sparsert.compile(w, n=p.n * batch, arch=arch)
            bar.write(f"{p.name:48s} N={p.n * batch:<7d} {k.stats.slabs} slab(s), "
                      f"{k.stats.cached_slabs} cached, {k.stats.compile_seconds:.1f} s")
            bar.update()
    bar.close()
    return 0


def run(args) -> int:
    problems, shared = load_selected(args)
    if not problems:
        print("no problems selected", file=sys.stderr)
        return 2
    if args.compile_only:
        return compile_only(args, problems, shared)
    from sparsert.runtime.device import gpu_available

    if not gpu_available():
        print("benchmarks.spmm needs a CUDA GPU (use --compile-only to fill the kernel cache "
              "without one)", file=sys.stderr)
        return 2
    from tqdm import tqdm

    stream = common.shared_stream()
    env = common.environment()
    env["tf32"] = common.disable_tf32()
    with stream:
        peaks = common.device_peaks()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"spmm-{stamp}-{common.slug(env.get('device') or 'gpu')}.json"
    results = {
        "format": 1, "kind": "spmm", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "environment": env, "peaks": peaks,
        "settings": {"warmup": args.warmup, "repeat": args.repeat, "tol": args.tol,
                     "seed": args.seed, "batches": args.batches, "tune": args.tune,
                     "methods": args.methods, "timing": "median of CUDA-event samples (sparsert.tune."
                     "measure_us), B and C rotated over enough sets to exceed 2x L2; A fixed"},
        "records": [],
    }
    failures = 0
    bar = tqdm(total=len(problems) * len(args.batches), desc="spmm", unit="run")
    with stream:
        for p in problems:
            w = make_weight(p, shared=shared, seed=args.seed)
            for batch in args.batches:
                bar.set_postfix_str(f"{p.name} N={p.n * batch}")
                rec = measure(p, w, batch, args=args, peaks=peaks)
                results["records"].append(rec)
                common.write_json_atomic(path, results)
                failures += any(f.split(":")[0] == "sparsert" for f in rec["failed"])
                bar.write(_line(rec))
                bar.update()
    bar.close()
    print(f"results: {path}")
    if not args.no_report:
        from benchmarks.report import write_report

        md, png = write_report(path)
        print(f"table: {md}\nplot: {png}")
    if failures:
        print(f"{failures} measurement(s) where sparsert failed its check or compile", file=sys.stderr)
    return 1 if failures else 0


def _line(rec: dict) -> str:
    s = rec["sparsert_us"]
    parts = [f"{rec['problem']:40s} N={rec['N']:<7d}",
             f"sparsert {s:8.2f} us" if s else "sparsert     FAIL"]
    for b in BASELINES:
        t = rec[f"{b}_us"]
        parts.append(f"{b} {t / s:5.2f}x" if (s and t) else f"{b}   -  ")
    return "  ".join(parts)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
