"""SpMM benchmark: sparsert against cuBLAS, cuSPARSE, torch dense and torch CSR, fp32 or half.

    python3 -m benchmarks.spmm                              # the paper's problems at N x 1, 8, 32
    python3 -m benchmarks.spmm --dlmc all --batches 1       # + every DLMC RN50/Transformer pattern
    python3 -m benchmarks.spmm --compile-only --arch sm_90  # fill the kernel cache, no GPU needed
    python3 -m benchmarks.spmm --dtype float16              # half precision (see "half precision" below)

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
from sparsert.choices import check_dtype
from sparsert.errors import OptionsError

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
    if getattr(args, "dtype", "float32") != "float32":
        return measure_half(p, weight, batch, args=args, peaks=peaks)
    import cupy

    import sparsert

    n = p.n * batch
    m, k = weight.shape
    k_active = int(np.unique(weight.matrix.indices).size)
    rec: dict = {
        "problem": p.name, "suite": p.suite, "use_case": p.use_case, "problem_id": p.problem_id,
        "source": p.source, "M": m, "K": k, "N": n, "base_n": p.n, "batch": batch,
        "nnz": weight.nnz, "k_active": k_active, "sparsity": round(weight.sparsity, 6),
        "dtype": "float32", "accumulate": "float32",
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
    rec["stamp"] = common.stamp(getattr(args, "env", None) or {}, kernel)
    rec["kernel"] = {**kernel.schedule.params(), "registers": st.registers,
                     "spill_stores": st.spill_stores, "compile_s": round(time.perf_counter() - t0, 3),
                     "cached_slabs": st.cached_slabs, "tuned": bool(args.tune), "arch": kernel.arch,
                     "backend": kernel.backend}
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


# -- half precision (--dtype float16 | bfloat16) ----------------------------------------------
# Every method runs in the dtype through torch (CuPy has no bfloat16): A, B and C are torch CUDA
# tensors of the dtype, and the weight's values are rounded to the dtype first, so every method
# multiplies the same numbers. Each method's output is checked, before it is timed, against the
# float64 product of those values (torch float64 on the GPU), elementwise relative to
# S = |A| |B|: |C - C_exact| <= tol S + tiny, with tol the README's bound ("Half precision") for
# the arithmetic the method is documented to do: Higham's gamma_n over its accumulation format (n
# terms, any order) plus one rounding to the dtype at the store. Where n u >= 1 no worst-case
# bound exists and tol is 1 (only gross errors are caught). Each record says, per variant, what
# exactly ran and the arithmetic its check assumed (rec["variant_notes"]).

HALF_DTYPES = ("float16", "bfloat16")
# unit roundoff of each accumulation format; "float32_tc": fp32 accumulation inside tensor cores,
# which truncates (round toward zero: 2u; Fasi, Higham, Mikaitis, Pranesh 2021, "Numerical
# behavior of NVIDIA tensor cores")
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float32_tc": 2.0**-23, "float16": 2.0**-11, "bfloat16": 2.0**-8}
HALF_TINY = {"float16": 2.0**-25, "bfloat16": 2.0**-134}  # half the smallest subnormal


def check_bound(dtype: str, accumulate: str, n: int) -> tuple[float, float]:
    """(tol, tiny) with |C - C_exact| <= tol * S + tiny elementwise, for a sum of n products
    accumulated in `accumulate` (any order) and rounded once to `dtype` (README "Half precision",
    no bias): tol = gamma_n(u_acc) + u_out (1 + gamma_n(u_acc)), 1 where n u_acc >= 1; tiny = the
    store's half subnormal step plus, for half accumulation, one per operation."""
    u_acc, u_out = UNIT_ROUNDOFF[accumulate], UNIT_ROUNDOFF[dtype]
    if n * u_acc >= 1:
        tol = 1.0
    else:
        g = n * u_acc / (1 - n * u_acc)
        tol = g + u_out * (1 + g)
    tiny = HALF_TINY[dtype] + (n * HALF_TINY[accumulate] if accumulate in HALF_TINY else 0.0)
    return tol, tiny


def half_variants(dtype: str, accumulate: str, *, k: int, row_nnz: int, groups: int,
                  acc16: bool = False) -> dict[str, dict]:
    """Every method variant of a half-precision run: what runs, exactly (recorded with the
    results), the accumulation format and number of terms its check assumes, and (tol, tiny)."""
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    cuda_t = {"float16": "CUDA_R_16F", "bfloat16": "CUDA_R_16BF"}[dtype]
    flag = f"torch.backends.cuda.matmul.allow_{short}_reduced_precision_reduction"
    gemm = f"cublasGemmEx ({cuda_t} A, B, C; CUBLAS_COMPUTE_32F; tensor cores)"
    tc = (f"tensor cores on: torch.mm in {dtype} with {flag}=False: {gemm}, split-K partial sums "
          f"reduced in fp32")
    tc_reduced = (f"tensor cores on: torch.mm in {dtype} with {flag}=True (torch's default): {gemm}; "
                  f"cuBLAS may reduce split-K partial sums in {dtype} (checked as if every addition "
                  f"were in {dtype})")
    sgemm = (f"tensor cores off: torch.mm on float32 copies of A and B made before timing, TF32 off "
             f"(torch.backends.cuda.matmul.allow_tf32=False): cuBLAS SGEMM, FFMA; the time is the "
             f"GEMM alone, without the conversions; its float32 C is rounded to {dtype} for the check")
    csr = (f"torch.mm(torch.sparse_csr_tensor in {dtype}, B): torch's cusparseSpMM ({cuda_t}, "
           f"CUDA_R_32F compute)")
    specs = {
        "sparsert:unrolled": (f"sparsert kernel, dtype={dtype}, accumulate={accumulate}",
                              accumulate, row_nnz + groups),
        "cublas:tc": (tc, "float32_tc", k),
        "cublas:tc_reduced": (tc_reduced, dtype, k),
        "cublas:sgemm_fp32": (sgemm, "float32", k),
        "cusparse:csr": (csr, "float32", row_nnz),
        "torch_dense:matmul": (f"torch.matmul in {dtype} with torch's default settings ({flag}=True)",
                               dtype, k),
    }
    if acc16 and dtype == "float16":
        specs["cublas:tc_acc16"] = (
            ("tensor cores on, fp16 accumulation: torch.mm in float16 with torch.backends.cuda."
             "matmul.allow_fp16_accumulation=True: cublasGemmEx with CUBLAS_COMPUTE_16F"), "float16", k)
    out = {}
    for label, (runs, acc, n) in specs.items():
        tol, tiny = check_bound(dtype, acc, n)
        out[label] = {"runs": runs, "accumulate": acc, "terms": n, "tol": tol, "tiny": tiny}
    return out


def s_relative_error(got, exact, s_abs, tiny: float) -> float:
    """max over elements of (|got - exact| - tiny)+ / S (torch tensors, exact and S float64):
    the tol a result needs; inf on a shape mismatch, NaN/inf, or an error where S = 0."""
    import torch

    if tuple(got.shape) != tuple(exact.shape):
        return math.inf
    err = (got.double() - exact).abs()
    if not bool(torch.isfinite(err).all()):
        return math.inf
    excess = (err - tiny).clamp_min(0)
    zero = s_abs == 0
    if bool((excess[zero] > 0).any()):
        return math.inf
    ratio = excess / torch.where(zero, torch.ones_like(s_abs), s_abs)
    return float(ratio.max()) if ratio.numel() else 0.0


def weight_in_dtype(weight, dtype: str):
    """The weight with its values rounded (to nearest even) to `dtype`, zeros dropped: the A that
    every method of a half-precision run multiplies by."""
    from sparsert.frontend.weights import load_weight
    from sparsert.ir.precision import round_to

    mat = weight.matrix.tocsr(copy=True)
    mat.data = round_to(mat.data, dtype)
    mat.eliminate_zeros()
    w = load_weight(mat)
    return type(w)(matrix=w.matrix, name=weight.name, source=weight.source)


@dataclass(eq=False)
class HalfOperands:
    """One half-precision measurement's operands (torch CUDA tensors of the dtype), rotated."""

    weight: object
    n: int
    kernel: object
    sets: int
    dtype: str
    a: object = None  # dense masked weight (M x K)
    b: list = field(default_factory=list)  # K x N
    c: list = field(default_factory=list)  # M x N

    @classmethod
    def build(cls, weight, n: int, kernel, *, dtype: str, seed: int) -> HalfOperands:
        torch = _torch()
        m, k = weight.shape
        l2, free = common.l2_and_free_bytes()
        sets = common.rotation_count(2 * (k * n + m * n), l2, free // 4)
        t = getattr(torch, dtype)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        ops = cls(weight=weight, n=n, kernel=kernel, sets=sets, dtype=dtype)
        ops.a = torch.from_numpy(weight.matrix.toarray()).to("cuda").to(t)  # exact: values are in dtype
        ops.b = [torch.randn((k, n), generator=gen, device="cuda").to(t) for _ in range(sets)]
        ops.c = [torch.zeros((m, n), device="cuda", dtype=t) for _ in range(sets)]
        return ops


def _matmul_flags(**flags) -> None:
    """Set torch.backends.cuda.matmul flags (those this torch has) before a launch."""
    import torch

    mm = torch.backends.cuda.matmul
    for name, value in flags.items():
        if hasattr(mm, name):
            setattr(mm, name, value)


def _reduction_flag(dtype: str) -> str:
    return f"allow_{'fp16' if dtype == 'float16' else 'bf16'}_reduced_precision_reduction"


def prepare_sparsert_half(ops: HalfOperands) -> list[Variant]:
    s, kernel = ops.sets, ops.kernel
    return [("unrolled", lambda i: kernel(ops.b[i % s], out=ops.c[i % s]), lambda i: ops.c[i % s])]


def prepare_cublas_half(ops: HalfOperands) -> list[Variant]:
    torch = _torch()
    s, flag = ops.sets, _reduction_flag(ops.dtype)

    def gemm(**flags):
        def launch(i):
            _matmul_flags(**flags)
            torch.mm(ops.a, ops.b[i % s], out=ops.c[i % s])
        return launch

    def out(i):
        return ops.c[i % s]

    variants = [("tc", gemm(**{flag: False, "allow_fp16_accumulation": False}), out),
                ("tc_reduced", gemm(**{flag: True, "allow_fp16_accumulation": False}), out)]
    if ops.dtype == "float16" and hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"):
        variants.append(("tc_acc16", gemm(**{flag: True, "allow_fp16_accumulation": True}), out))
    a32 = ops.a.float()
    b32 = [b.float() for b in ops.b]
    c32 = [torch.full(c.shape, math.nan, device=c.device) for c in ops.c]  # written by this variant only

    def sgemm(i):
        _matmul_flags(allow_tf32=False)
        torch.mm(a32, b32[i % s], out=c32[i % s])

    variants.append(("sgemm_fp32", sgemm, lambda i: c32[i % s].to(getattr(torch, ops.dtype))))
    return variants


def prepare_cusparse_half(ops: HalfOperands) -> list[Variant]:
    """cuSPARSE through torch's sparse CSR in the dtype; 'unsupported' when torch refuses it."""
    torch = _torch()
    s, t = ops.sets, getattr(torch, ops.dtype)
    mat = ops.weight.matrix
    dev = ops.a.device
    crow = torch.from_numpy(mat.indptr.astype(np.int32)).to(dev)
    col = torch.from_numpy(mat.indices.astype(np.int32)).to(dev)
    val = torch.from_numpy(np.asarray(mat.data, np.float32)).to(dev).to(t)
    try:
        at = torch.sparse_csr_tensor(crow, col, val, size=mat.shape)
        torch.mm(at, ops.b[0])
    except (RuntimeError, NotImplementedError, TypeError) as e:
        raise Unavailable(f"unsupported: torch sparse CSR @ dense in {ops.dtype}: "
                          f"{str(e).splitlines()[0][:200]}") from e
    try:
        torch.mm(at, ops.b[0], out=ops.c[0])
    except (RuntimeError, TypeError):  # no out= for sparse @ dense in this torch: allocate
        last: dict[int, object] = {}

        def launch(i):
            last[i % s] = torch.mm(at, ops.b[i % s])

        return [("csr", launch, lambda i: last[i % s])]
    return [("csr", lambda i: torch.mm(at, ops.b[i % s], out=ops.c[i % s]), lambda i: ops.c[i % s])]


def prepare_torch_dense_half(ops: HalfOperands) -> list[Variant]:
    torch = _torch()
    s, flag = ops.sets, _reduction_flag(ops.dtype)

    def launch(i):
        _matmul_flags(**{flag: True, "allow_fp16_accumulation": False})  # torch's defaults
        torch.matmul(ops.a, ops.b[i % s], out=ops.c[i % s])

    return [("matmul", launch, lambda i: ops.c[i % s])]


def prepare_torch_csr_half(ops: HalfOperands) -> list[Variant]:
    raise Unavailable("in half precision the cusparse column is torch's sparse CSR mm "
                      "(cusparseSpMM); not run twice")


PREPARE_HALF = {"sparsert": prepare_sparsert_half, "cublas": prepare_cublas_half,
                "cusparse": prepare_cusparse_half, "torch_dense": prepare_torch_dense_half,
                "torch_csr": prepare_torch_csr_half}


def measure_half(p: Problem, weight, batch: int, *, args, peaks: dict) -> dict:
    """measure() in float16 / bfloat16: the same record, every method checked against float64
    within its own bound (half_variants) before it is timed."""
    import sparsert

    torch = _torch()
    dtype, accumulate = args.dtype, args.accumulate or "float32"
    weight = weight_in_dtype(weight, dtype)
    n = p.n * batch
    m, k = weight.shape
    k_active = int(np.unique(weight.matrix.indices).size)
    row_nnz = int(np.diff(weight.matrix.indptr).max(initial=0))
    rec: dict = {
        "problem": p.name, "suite": p.suite, "use_case": p.use_case, "problem_id": p.problem_id,
        "source": p.source, "M": m, "K": k, "N": n, "base_n": p.n, "batch": batch,
        "nnz": weight.nnz, "k_active": k_active, "sparsity": round(weight.sparsity, 6),
        "dtype": dtype, "accumulate": accumulate,
        "reported_speedup_t4": p.reported_t4 if batch == 1 else None,
        **{f"{meth}_us": None for meth in METHODS},
        "max_rel_err": None, "rel_err": {}, "skipped": {}, "failed": {}, "timing": {},
        "variants": {}, "efficiency": {}, "variant_notes": {},
        "check": "max over elements of (|C - C_exact| - tiny)+ / (|A| |B|), C_exact the float64 "
                 "product of the same dtype values; passes when <= the variant's tol",
    }
    t0 = time.perf_counter()
    try:
        kernel = sparsert.compile(weight, n=n, arch=args.arch, tune=args.tune, dtype=dtype,
                                  accumulate=args.accumulate)
    except sparsert.SparsertError as e:
        rec["failed"]["sparsert"] = f"compile: {e}".splitlines()[0]
        return rec
    st = kernel.stats
    rec["stamp"] = common.stamp(getattr(args, "env", None) or {}, kernel)
    rec["kernel"] = {**kernel.schedule.params(), "registers": st.registers,
                     "spill_stores": st.spill_stores, "compile_s": round(time.perf_counter() - t0, 3),
                     "cached_slabs": st.cached_slabs, "tuned": bool(args.tune), "arch": kernel.arch,
                     "backend": kernel.backend}
    specs = half_variants(dtype, accumulate, k=k, row_nnz=row_nnz, groups=kernel.schedule.groups,
                          acc16=hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"))
    floor = None
    if peaks.get("fp32_flops") and peaks.get("dram_bytes_per_s"):
        # sparsert's own floor: FFMA at the fp32 peak (HFMA2 does two per instruction when packed),
        # B's touched rows read and C written once in 2-byte elements
        flops = peaks["fp32_flops"] * (2 if accumulate != "float32" else 1)
        floor = common.Floor(compute_us=2.0 * weight.nnz * n / flops * 1e6,
                             memory_us=2.0 * n * (k_active + m) / peaks["dram_bytes_per_s"] * 1e6)
        rec["floor"] = {"compute_us": floor.compute_us, "memory_us": floor.memory_us,
                        "floor_us": floor.floor_us, "bound": floor.bound}

    ops = HalfOperands.build(weight, n, kernel, dtype=dtype, seed=args.seed)
    a64 = ops.a.double()
    b64 = ops.b[0].double()
    exact, s_abs = a64 @ b64, a64.abs() @ b64.abs()
    del a64, b64
    stream = torch.cuda.current_stream()
    for meth in args.methods:
        try:
            variants = PREPARE_HALF[meth](ops)
        except Unavailable as e:
            rec["skipped"][meth] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - record and go on with the other methods
            rec["failed"][meth] = f"setup: {type(e).__name__}: {e}".splitlines()[0][:300]
            continue
        times: dict[str, float] = {}
        for vname, launch, output in variants:
            label = f"{meth}:{vname}"
            spec = specs.get(label)
            if spec is None:
                rec["failed"][label] = "no documented arithmetic to check it against (half_variants)"
                continue
            rec["variant_notes"][label] = spec
            try:
                for c in ops.c:
                    c.fill_(math.nan)  # a method that writes nothing cannot pass on stale output
                launch(0)
                stream.synchronize()
                err = s_relative_error(output(0), exact, s_abs, spec["tiny"])
                rec["rel_err"][label] = err
                if not err <= spec["tol"]:
                    rec["failed"][label] = (f"error {err:.2e} x |A||B| vs float64 > {spec['tol']:.2e} "
                                            f"({spec['accumulate']} accumulation, {spec['terms']} terms)")
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
    _matmul_flags(**{_reduction_flag(dtype): True, "allow_fp16_accumulation": False})  # torch's defaults
    errs = [e for e in rec["rel_err"].values() if e is not None]
    rec["max_rel_err"] = max(errs) if errs else None
    del ops, exact, s_abs
    gc.collect()
    torch.cuda.empty_cache()
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
    ap.add_argument("--dtype", choices=("float32", *HALF_DTYPES), default="float32",
                    help="B and C (and every baseline) in this dtype (default float32); half "
                         "precision runs every method through torch and checks each against float64 "
                         "within its own bound (--tol is for float32)")
    ap.add_argument("--accumulate", choices=("float32", *HALF_DTYPES),
                    help="sparsert's arithmetic in half precision: float32 (default) or the dtype "
                         "(packed HFMA2)")
    ap.add_argument("--backend", choices=("ptx", "nvrtc"), default="ptx",
                    help="CUDA backend that builds sparsert's kernels (default ptx; no fallback)")
    ap.add_argument("--time-budget", type=float, metavar="S",
                    help="start no new measurement after S seconds (the results stay complete)")
    args = ap.parse_args(argv)
    try:
        check_dtype(args.dtype, args.accumulate)
    except OptionsError as e:
        ap.error(str(e))
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
        if args.dtype != "float32":
            w = weight_in_dtype(w, args.dtype)  # the kernel measure_half compiles
        for batch in args.batches:
            bar.set_postfix_str(f"{p.name} N={p.n * batch}")
            k = sparsert.compile(w, n=p.n * batch, arch=arch, dtype=args.dtype, accumulate=args.accumulate)
            bar.write(f"{p.name:48s} N={p.n * batch:<7d} {k.stats.slabs} slab(s), "
                      f"{k.stats.cached_slabs} cached, {k.stats.compile_seconds:.1f} s")
            bar.update()
    bar.close()
    return 0


def run(args) -> int:
    why = common.force_backend(args.backend)
    if why is not None:
        print(f"benchmarks.spmm: error: {why}", file=sys.stderr)
        return 2
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
    if args.dtype != "float32":
        try:
            _torch()
        except Unavailable as e:
            print(f"benchmarks.spmm --dtype {args.dtype} runs every method through torch: {e}",
                  file=sys.stderr)
            return 2
    from tqdm import tqdm

    stream = common.shared_stream()
    env = common.environment(args.backend)
    env["tf32"] = common.disable_tf32()
    args.env = env
    deadline = common.Deadline(args.time_budget)
    with stream:
        peaks = common.device_peaks()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"spmm-{stamp}-{common.slug(env.get('device') or 'gpu')}.json"
    results = {
        "format": 1, "kind": "spmm", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "environment": env, "peaks": peaks,
        "settings": {"warmup": args.warmup, "repeat": args.repeat, "tol": args.tol,
                     "seed": args.seed, "batches": args.batches, "tune": args.tune,
                     "dtype": args.dtype, "accumulate": args.accumulate or "float32",
                     "methods": args.methods, "timing": "median of CUDA-event samples (sparsert.tune."
                     "measure_us), B and C rotated over enough sets to exceed 2x L2; A fixed"},
        "records": [],
    }
    failures = 0
    bar = tqdm(total=len(problems) * len(args.batches), desc="spmm", unit="run")
    with stream:
        for p in problems:
            if deadline.expired():
                results["cut"] = f"--time-budget {args.time_budget:g} s spent before {p.name}"
                common.write_json_atomic(path, results)
                bar.write(results["cut"])
                break
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
