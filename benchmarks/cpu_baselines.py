"""CPU baselines for sparsert: C = A @ B, A a fixed pruned (M x K) float32 matrix, B dense (K x N).

Everything is prepared once (weights converted / packed outside the timed call) and timed
side by side, interleaved round-robin, many runs, reported as median / min / p25 / p75.

Public API (see the README section of the hand-over):

    register(name, factory, available, *, kind="sparse"|"dense", note="")
    METHODS                                   # name -> Method(name, factory, available, kind, note)
    make_method(name, A_csr, N, threads, *, bias=None, relu=False) -> Prepared (callable B -> C)
    measure_fma_peak(threads=1) -> dict       # GFLOP/s of an AVX2 vfmadd231ps loop + clock estimate
    time_side_by_side(callables, B_sets, runs=15, warmup=3) -> dict[name, stats]
    check_outputs(callables, A_csr, B, bias=None, relu=False) -> dict[name, max rel err]
    data_root(), load_spmm_problems(), load_conv3x3_problems(), read_smtx(), make_weight()
    run_benchmark(problems, methods, threads_list, out_jsonl, ...) -> list[record]
    markdown_table(records, reference="sparsert") -> str
    plot_speedups(records, path, reference="sparsert")

A factory has the signature ``factory(A_csr_float32, N, threads, *, bias=None, relu=False)``
and returns a callable ``fn(B) -> C`` (B: float32 C-contiguous (K, N) numpy array; C: (M, N),
numpy or anything ``np.asarray`` accepts).  It may set ``fn.info`` (dict: library, version,
kernel/isa, fused, layout notes).  Methods that run in a child process return a ``Remote``
object that times itself in the child (see ``_Worker``).

The runner that adds sparsert and writes the committed results is ``benchmarks/cpu.py``
(``python3 -m benchmarks.cpu --set spmm|conv|dlmc|models|compile|all``). This module only knows
the baselines; run as a script it is the child-process worker (``--worker``) or a baselines-only
sweep (``python3 benchmarks/cpu_baselines.py --set spmm --runs 15``).

Data: $SPARSERT_DATA, else ``../shared`` beside the repository (problems/ and dlmc/).
DeepSparse (optional, never in the default install: deepsparse 1.8 pins numpy < 2): the python of
a venv holding deepsparse==1.8.0 in $SPARSERT_DEEPSPARSE_PYTHON (``make bench-deepsparse-venv``
creates one); without it the deepsparse methods are recorded as missing.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import json
import math
import os
import pickle
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BLAS_ENV_TO_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
DEEPSPARSE_PYTHON_ENV = "SPARSERT_DEEPSPARSE_PYTHON"   # python of a venv with deepsparse==1.8.0


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def data_root() -> Path:
    """$SPARSERT_DATA, else ../shared beside the repository (or shared/ inside it) when it holds
    problems/spmm_dl.csv."""
    env = os.environ.get("SPARSERT_DATA")
    if env:
        return Path(env)
    for c in (REPO.parent / "shared", REPO / "shared"):
        if (c / "problems" / "spmm_dl.csv").exists():
            return c
    raise FileNotFoundError("no data root: set SPARSERT_DATA to the folder holding problems/ and dlmc/")


@dataclass
class Problem:
    name: str            # e.g. "spmm_dl/3@0.90"
    M: int
    K: int
    N: int
    sparsity: float
    family: str = ""     # use_case (RN50, NLP, MbNetV1, conv3x3)
    count: int = 1
    problem_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nnz_target(self) -> int:
        return int(round((1.0 - self.sparsity) * self.M * self.K))


def _read_csv(path: Path) -> list[dict]:
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


def load_spmm_problems(root: Path | None = None) -> list[Problem]:
    root = Path(root) if root else data_root()
    out = []
    for r in _read_csv(root / "problems" / "spmm_dl.csv"):
        extra = {k: v for k, v in r.items() if k not in ("problem", "M", "K", "N", "use_case", "count", "sparsity")}
        out.append(Problem(name=f"spmm_dl/{r['problem']}@{float(r['sparsity']):.2f}", M=int(r["M"]), K=int(r["K"]),
                           N=int(r["N"]), sparsity=float(r["sparsity"]), family=r["use_case"],
                           count=int(r["count"]), problem_id=r["problem"], extra=extra))
    return out


def load_conv3x3_problems(root: Path | None = None) -> list[Problem]:
    """3x3 convs as their im2col GEMM: M = C_out, K = 9*C_in, N = H_out*W_out*batch."""
    root = Path(root) if root else data_root()
    out = []
    for r in _read_csv(root / "problems" / "conv3x3_dl.csv"):
        hw, k, p, s = int(r["image_hw"]), int(r["kernel"]), int(r["padding"]), int(r["stride"])
        ho = (hw + 2 * p - k) // s + 1
        out.append(Problem(name=f"conv3x3_dl/{r['problem']}@{float(r['sparsity']):.2f}", M=int(r["out_channels"]),
                           K=int(r["in_channels"]) * k * k, N=ho * ho * int(r["batch"]), sparsity=float(r["sparsity"]),
                           family="conv3x3", problem_id=r["problem"], extra=dict(r)))
    return out


def read_smtx(path) -> tuple[int, int, np.ndarray, np.ndarray]:
    """DLMC .smtx: line 1 'M, K, nnz'; line 2 M+1 row offsets; line 3 nnz column indices."""
    with open(path) as f:
        head = f.readline().replace(",", " ").split()
        M, K, nnz = (int(x) for x in head[:3])
        indptr = np.array(f.readline().split(), dtype=np.int64)
        indices = np.array(f.readline().split(), dtype=np.int64) if nnz else np.zeros(0, np.int64)
    assert indptr.shape == (M + 1,) and indices.shape == (nnz,) and indptr[-1] == nnz, path
    return M, K, indptr, indices


def find_dlmc(M: int, K: int, sparsity: float, root: Path | None = None) -> Path | None:
    """First (sorted by path) DLMC magnitude-pruning matrix with shape (M, K) at this sparsity."""
    root = Path(root) if root else data_root()
    hits = []
    for net in ("rn50", "transformer"):
        d = root / "dlmc" / net / "magnitude_pruning" / f"{sparsity:g}"
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.smtx")):
            with open(p) as f:
                head = f.readline().replace(",", " ").split()
            if int(head[0]) == M and int(head[1]) == K:
                hits.append(p)
    return hits[0] if hits else None


def make_weight(problem: Problem, seed: int = 0, pattern: str = "dlmc", root: Path | None = None):
    """CSR float32 weight. pattern='dlmc': a DLMC pattern of the same shape and sparsity when one
    exists (else uniform random); 'random': exactly nnz_target uniformly placed nonzeros.
    Values ~ N(0, 1) from np.random.default_rng(seed). Returns (csr, pattern_source)."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    src = None
    if pattern == "dlmc":
        src = find_dlmc(problem.M, problem.K, problem.sparsity, root)
    if src is not None:
        M, K, indptr, indices = read_smtx(src)
        data = rng.standard_normal(indices.size).astype(np.float32)
        A = sp.csr_matrix((data, indices.astype(np.int32), indptr.astype(np.int32)), shape=(M, K))
        A.sort_indices()
        return A, str(Path(src).relative_to(Path(root) if root else data_root()))
    nnz = problem.nnz_target
    flat = np.sort(rng.choice(problem.M * problem.K, size=nnz, replace=False))
    rows, cols = np.divmod(flat, problem.K)
    data = rng.standard_normal(nnz).astype(np.float32)
    A = sp.csr_matrix((data, (rows, cols)), shape=(problem.M, problem.K), dtype=np.float32)
    A.sort_indices()
    return A, f"random(seed={seed})"


def make_inputs(K: int, N: int, n_sets: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((K, N), dtype=np.float32) for _ in range(n_sets)]


def n_input_sets(K: int, N: int, target_bytes: int = 48 << 20, lo: int = 3, hi: int = 64) -> int:
    """Enough distinct B's that cycling through them overflows the 32 MiB L3 (within [lo, hi])."""
    return int(min(hi, max(lo, math.ceil(target_bytes / (4 * K * N)))))


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
@dataclass
class Method:
    name: str
    factory: Callable
    available: Callable[[], tuple]
    kind: str = "dense"          # "dense" (multiplies the zeros) or "sparse"
    note: str = ""


METHODS: dict[str, Method] = {}


def register(name: str, factory: Callable, available: Callable[[], tuple] | None = None, *,
             kind: str = "sparse", note: str = "") -> Method:
    """Add a method. factory(A_csr_float32, N, threads, *, bias=None, relu=False) -> fn(B) -> C."""
    m = Method(name, factory, available or (lambda: (True, "")), kind, note)
    METHODS[name] = m
    return m


def make_method(name: str, A, N: int, threads: int, *, bias=None, relu=False):
    return METHODS[name].factory(A, N, threads, bias=bias, relu=relu)


def _try_import(mod: str):
    try:
        m = __import__(mod)
        return True, getattr(m, "__version__", "")
    except Exception as e:  # noqa: BLE001
        return False, f"import {mod} failed: {e!r}"


def _bias_col(bias, M):
    if bias is None:
        return None
    b = np.asarray(bias, dtype=np.float32).reshape(M)
    return b


# ---- torch helpers ---------------------------------------------------------------------------
_TORCH_INFO: dict = {}


def torch_info() -> dict:
    if not _TORCH_INFO:
        import torch
        cfg = torch.__config__.show()
        mkl = next((l.strip(" -") for l in cfg.splitlines() if "Math Kernel Library" in l), "")
        dnn = next((l.strip(" -") for l in cfg.splitlines() if "MKL-DNN" in l or "oneDNN" in l), "")
        _TORCH_INFO.update(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                           mkl=mkl, onednn=dnn)
        _TORCH_INFO.update(probe_backend_isa())
    return dict(_TORCH_INFO)


def probe_backend_isa() -> dict:
    """Run tiny torch ops in a child with MKL_VERBOSE=1 ONEDNN_VERBOSE=1 and parse what ran."""
    code = r"""
import torch
a=torch.randn(64,64); b=torch.randn(64,64)
torch.mm(a,b)
w=torch.ops.mkldnn._reorder_linear_weight(a,64); torch.ops.mkldnn._linear_pointwise(b,w,None,'none',[],'')
w2=torch.ops.mkl._mkl_reorder_linear_weight(a,64); torch.ops.mkl._mkl_linear(b,w2,a,None,64)
s=a.relu().to_sparse_csr(); s@b
"""
    env = dict(os.environ, MKL_VERBOSE="1", ONEDNN_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        txt = out.stdout + out.stderr
    except Exception as e:  # noqa: BLE001
        return {"probe_error": repr(e)}
    res = {}
    for line in txt.splitlines():
        if line.startswith("MKL_VERBOSE oneMKL") or line.startswith("MKL_VERBOSE Intel(R) MKL"):
            res.setdefault("mkl_verbose_header", line[len("MKL_VERBOSE "):].strip())
        elif line.startswith("onednn_verbose") and ",isa:" in line:
            res.setdefault("onednn_isa", line.split(",isa:")[1].strip())
        elif line.startswith("onednn_verbose") and (",inner_product," in line or ",matmul," in line):
            parts = line.split(",")
            res.setdefault("onednn_impl", parts[6] if len(parts) > 6 else line)
        elif line.startswith("MKL_VERBOSE") and "SGEMM" in line:
            res.setdefault("mkl_calls", [])
            name = line.split()[1].split("(")[0]
            if name not in res["mkl_calls"]:
                res["mkl_calls"].append(name)
        elif line.startswith("MKL_VERBOSE") and "mkl_sparse" in line.lower():
            res.setdefault("mkl_sparse_calls", []).append(line.split()[1].split("(")[0])
    return res


class _TorchThreads:
    """Set torch's intra-op threads for the duration of a call (restored afterwards)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import torch
        self.old = torch.get_num_threads()
        if self.old != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *a):
        import torch
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)


def _with_torch_threads(fn, threads):
    import torch

    def call(B):
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return fn(B)
    call.info = getattr(fn, "info", {})
    call.native_layout = getattr(fn, "native_layout", False)
    return call


# ---- torch_mm ---------------------------------------------------------------------------------
def _torch_mm(A, N, threads, *, bias=None, relu=False):
    import torch
    Ad = torch.from_numpy(A.toarray())
    b = None if bias is None else torch.from_numpy(_bias_col(bias, A.shape[0])).reshape(-1, 1)

    def fn(B):
        Bt = torch.from_numpy(B)
        C = torch.mm(Ad, Bt) if b is None else torch.addmm(b, Ad, Bt)
        if relu:
            C.relu_()
        return C.numpy()
    fn.info = dict(library="torch (MKL sgemm via at::mm)", **torch_info(),
                   fused="bias in addmm (beta=1 epilogue); relu separate in-place" if bias is not None or relu else "")
    return _with_torch_threads(fn, threads)


# ---- torch sparse CSR (MKL sparse) -----------------------------------------------------------
def _torch_sparse_csr(A, N, threads, *, bias=None, relu=False):
    import torch
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        As = torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                     torch.from_numpy(A.indices.astype(np.int64)),
                                     torch.from_numpy(A.data.astype(np.float32)), size=A.shape)
    b = None if bias is None else torch.from_numpy(_bias_col(bias, A.shape[0])).reshape(-1, 1)

    def fn(B):
        Bt = torch.from_numpy(B)
        C = (As @ Bt) if b is None else torch.addmm(b, As, Bt)
        if relu:
            C.relu_()
        return C.numpy()
    fn.info = dict(library="torch sparse CSR @ dense (MKL sparse, int64 indices)", **torch_info(),
                   fused="bias in addmm; relu separate in-place" if bias is not None or relu else "")
    return _with_torch_threads(fn, threads)


# ---- oneDNN / MKL prepacked linear ------------------------------------------------------------
def _packed_linear(A, N, threads, *, bias=None, relu=False, lib="onednn", native=False):
    """y = x W^T with W = A (M, K) prepacked, x = B^T (N, K), y = C^T (N, M).

    native=False: the timed call takes row-major B (K, N), makes x = B^T contiguous, and returns
    C (M, N) contiguous -> both transposes are counted.  native=True: the timed call takes
    B^T (N, K) (given pre-transposed, untimed) and returns C^T; the checker/timer hand it B^T."""
    import torch
    M = A.shape[0]
    W = torch.from_numpy(A.toarray())
    b = None if bias is None else torch.from_numpy(_bias_col(bias, M))
    if lib == "onednn":
        Wp = torch.ops.mkldnn._reorder_linear_weight(W, N)       # oneDNN blocked layout (AB16b64a)
        attr = "relu" if relu else "none"

        def lin(x):
            return torch.ops.mkldnn._linear_pointwise(x, Wp, b, attr, [], "")
        fused = ("bias+relu as oneDNN post-op" if relu else "bias in inner_product") if (bias is not None or relu) else ""
        libname = "oneDNN inner_product, weight pre-reordered (torch.ops.mkldnn._reorder_linear_weight)"
    else:
        Wp = torch.ops.mkl._mkl_reorder_linear_weight(W, N)      # cblas_sgemm_pack
        def lin(x):
            y = torch.ops.mkl._mkl_linear(x, Wp, W, b, N)
            return y.relu_() if relu else y
        fused = ("bias in _mkl_linear; relu separate in-place" if relu else "bias in _mkl_linear") if (bias is not None or relu) else ""
        libname = "MKL packed sgemm (sgemm_pack + sgemm_compute, torch.ops.mkl._mkl_linear)"

    if native:
        def fn(Bt):                                              # Bt: (N, K) = B^T, returns C^T (N, M)
            return lin(torch.from_numpy(Bt)).numpy()
        fn.native_layout = True
        layout = "native: input B^T (N,K) row-major given, output C^T (N,M); no transposes timed"
    else:
        def fn(B):
            x = torch.from_numpy(B).t().contiguous()
            return lin(x).t().contiguous().numpy()
        layout = "row-major contract: B->B^T copy and C^T->C copy are inside the timed call"
    fn.info = dict(library=libname, **torch_info(), fused=fused, layout=layout)
    return _with_torch_threads(fn, threads)


def _torch_ok():
    ok, v = _try_import("torch")
    return (ok, "" if ok else v)


def _onednn_ok():
    ok, why = _torch_ok()
    if not ok:
        return ok, why
    import torch
    if not torch.backends.mkldnn.is_available():
        return False, "torch built without oneDNN"
    try:
        torch.ops.mkldnn._reorder_linear_weight
        return True, ""
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


def _mkl_ok():
    ok, why = _torch_ok()
    if not ok:
        return ok, why
    import torch
    if not torch.backends.mkl.is_available():
        return False, "torch built without MKL"
    return True, ""


# ---- scipy -----------------------------------------------------------------------------------
def _scipy_csr(A, N, threads, *, bias=None, relu=False):
    import scipy
    A = A.tocsr().astype(np.float32)
    b = None if bias is None else _bias_col(bias, A.shape[0]).reshape(-1, 1)

    def fn(B):
        C = A @ B
        if b is not None:
            C += b
        if relu:
            np.maximum(C, 0, out=C)
        return C
    fn.info = dict(library="scipy.sparse csr_matrix @ ndarray (csr_matvecs, single-threaded C++)",
                   version=scipy.__version__, threads_effective=1,
                   fused="bias/relu applied after with numpy in-place" if bias is not None or relu else "")
    return fn


# ---- onnxruntime -----------------------------------------------------------------------------
def _onnx_model(A_dense: np.ndarray, N: int, bias=None, relu=False, transposed=False, ir_version=None, opset=13):
    """One-node graph. transposed=False: MatMul(A_init, B[K,N]) or Gemm(A_init, B, bias[M,1]) (+Relu).
    transposed=True (DeepSparse): x[N,K] -> Gemm(x, A_init, bias[M], transB=1) -> y[N,M] (+Relu)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    M, K = A_dense.shape
    inits = [numpy_helper.from_array(A_dense.astype(np.float32), "A")]
    nodes = []
    out = "C_pre" if relu else "C"
    if transposed:
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [N, K])
        y = helper.make_tensor_value_info("C", TensorProto.FLOAT, [N, M])
        ins = ["X", "A"]
        if bias is not None:
            inits.append(numpy_helper.from_array(_bias_col(bias, M), "bias"))
            ins.append("bias")
        nodes.append(helper.make_node("Gemm", ins, [out], transB=1))
    else:
        x = helper.make_tensor_value_info("B", TensorProto.FLOAT, [K, N])
        y = helper.make_tensor_value_info("C", TensorProto.FLOAT, [M, N])
        if bias is None:
            nodes.append(helper.make_node("MatMul", ["A", "B"], [out]))
        else:
            inits.append(numpy_helper.from_array(_bias_col(bias, M).reshape(M, 1), "bias"))
            nodes.append(helper.make_node("Gemm", ["A", "B", "bias"], [out]))
    if relu:
        nodes.append(helper.make_node("Relu", ["C_pre"], ["C"]))
    g = helper.make_graph(nodes, "sparsert_baseline", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version:
        m.ir_version = ir_version
    return m


def _onnxruntime(A, N, threads, *, bias=None, relu=False):
    import onnxruntime as ort
    M, K = A.shape
    model = _onnx_model(A.toarray(), N, bias, relu)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = np.empty((M, N), np.float32)
    io = sess.io_binding()
    io.bind_output("C", "cpu", 0, np.float32, out.shape, out.ctypes.data)

    def fn(B):
        io.bind_cpu_input("B", B)
        sess.run_with_iobinding(io)
        return out.copy() if fn.copy_out else out
    fn.copy_out = False
    fn.info = dict(library="onnxruntime CPUExecutionProvider (MLAS sgemm)", version=ort.__version__,
                   kernel="MLAS picks its kernel by cpuid: AVX2+FMA3 here (no AVX-512 exposed)",
                   fused=("Gemm bias in-graph; Relu fused by ORT GemmActivationFusion (ORT_ENABLE_ALL)"
                          if relu else ("Gemm bias in-graph" if bias is not None else "")),
                   io="IOBinding, preallocated output (reused buffer)",
                   spinning="default intra-op spinning")
    return fn


def _onnxruntime_ok():
    a, v = _try_import("onnxruntime")
    b, w = _try_import("onnx")
    if not a:
        return False, v
    if not b:
        return False, w
    return True, ""


# ----------------------------------------------------------------------------------------------
# child-process workers: numpy_dense (OpenBLAS without the env overrides) and deepsparse (venv)
# ----------------------------------------------------------------------------------------------
def _send(f, obj):
    data = pickle.dumps(obj, protocol=4)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def _recv(f):
    h = f.read(8)
    if len(h) < 8:
        raise EOFError("worker closed the pipe")
    (n,) = struct.unpack("<Q", h)
    return pickle.loads(f.read(n))


class _Worker:
    """A persistent child: `python cpu_baselines.py --worker`, length-prefixed pickles over
    stdin/stdout.  Requests: ('setup', spec) -> (handle, info); ('inputs', handle, [B]) ;
    ('time', handle, i) -> seconds of ONE call on B_sets[i], timed in the child with
    perf_counter_ns; ('output', handle, i) -> C; ('free', handle); ('quit',)."""

    _pool: dict = {}

    def __init__(self, python: str, env: dict):
        # -P: the script's folder (benchmarks/, with common.py, models.py ...) must not shadow
        # modules of the child's libraries
        self.proc = subprocess.Popen([python, "-P", "-u", str(Path(__file__).resolve()), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     cwd=tempfile.gettempdir())
        self.lock = threading.Lock()

    def call(self, *req):
        with self.lock:
            _send(self.proc.stdin, req)
            ok, val = _recv(self.proc.stdout)
        if not ok:
            raise RuntimeError(f"worker error: {val}")
        return val

    @classmethod
    def get(cls, key: str, python: str, env: dict) -> "_Worker":
        w = cls._pool.get(key)
        if w is None or w.proc.poll() is not None:
            w = cls._pool[key] = _Worker(python, env)
        return w

    @classmethod
    def close_all(cls):
        for w in cls._pool.values():
            try:
                _send(w.proc.stdin, ("quit",))
                w.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                w.proc.kill()
        cls._pool.clear()


import atexit  # noqa: E402
atexit.register(_Worker.close_all)


class Remote:
    """Proxy for a method living in a worker. Calling it ships B and C over the pipe (used only
    for the correctness check); time_side_by_side uses load_inputs() + time_once(i)."""

    def __init__(self, worker: _Worker, spec: dict):
        self.worker = worker
        self.handle, self.info = worker.call("setup", spec)
        self.native_layout = bool(self.info.get("native_layout"))

    def __call__(self, B):
        B = tuple(np.ascontiguousarray(x) for x in B) if isinstance(B, (tuple, list)) else np.ascontiguousarray(B)
        return self.worker.call("call", self.handle, B)

    def load_inputs(self, B_sets):
        def c(b):
            return tuple(np.ascontiguousarray(x) for x in b) if isinstance(b, (tuple, list)) else np.ascontiguousarray(b)
        self.worker.call("inputs", self.handle, [c(b) for b in B_sets])

    def time_once(self, i: int) -> float:
        return self.worker.call("time", self.handle, i)

    def close(self):
        try:
            self.worker.call("free", self.handle)
        except Exception:  # noqa: BLE001
            pass


def _csr_payload(A):
    return dict(shape=A.shape, indptr=np.asarray(A.indptr), indices=np.asarray(A.indices),
                data=np.asarray(A.data, dtype=np.float32))


def _numpy_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV_TO_DROP}
    return env


def _numpy_dense(A, N, threads, *, bias=None, relu=False):
    w = _Worker.get("numpy", sys.executable, _numpy_env())
    spec = dict(kind="numpy_dense", A=_csr_payload(A), N=N, threads=threads, bias=bias, relu=relu,
                parent_env={k: os.environ.get(k) for k in BLAS_ENV_TO_DROP})
    return Remote(w, spec)


def deepsparse_python() -> str | None:
    p = os.environ.get(DEEPSPARSE_PYTHON_ENV)
    if p:
        return p
    try:
        import deepsparse  # noqa: F401
        return sys.executable
    except Exception:  # noqa: BLE001
        return None


_DS_OK: dict = {}


def _deepsparse_ok():
    py = deepsparse_python()
    if not py:
        return False, (f"missing: deepsparse is not importable and {DEEPSPARSE_PYTHON_ENV} is not set "
                       f"(make bench-deepsparse-venv, then {DEEPSPARSE_PYTHON_ENV}=.venv-deepsparse/bin/python; "
                       f"deepsparse 1.8 pins numpy<2, so it is kept out of the main environment)")
    try:
        if py in _DS_OK:
            return _DS_OK[py]
        r = subprocess.run([py, "-c", "import deepsparse,sys;print(deepsparse.__version__)"], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            return False, "deepsparse import failed: " + r.stderr.strip().splitlines()[-1]
        _DS_OK[py] = (True, f"deepsparse {r.stdout.strip()} via {py}")
        return _DS_OK[py]
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


def _deepsparse_factory(native):
    def make(A, N, threads, *, bias=None, relu=False):
        py = deepsparse_python()
        w = _Worker.get("deepsparse", py, dict(os.environ))
        spec = dict(kind="deepsparse", A=_csr_payload(A), N=N, threads=threads, bias=bias, relu=relu, native=native,
                    analysis=os.environ.get("SPARSERT_DS_ANALYSIS", "1") != "0")
        return Remote(w, spec)
    return make


# ---- worker side ------------------------------------------------------------------------------
def _w_dense(A):
    d = A["data"]
    M, K = A["shape"]
    out = np.zeros((M, K), np.float32)
    for r in range(M):
        s, e = A["indptr"][r], A["indptr"][r + 1]
        out[r, A["indices"][s:e]] = d[s:e]
    return out


_W_STATE: dict = {}


def _w_setup(spec):
    kind = spec["kind"]
    if kind == "deepsparse_onnx":        # a whole model: its ONNX file, inputs as a tuple of arrays
        import deepsparse
        eng = deepsparse.compile_model(spec["path"], batch_size=spec.get("batch", 1), num_cores=spec["threads"])
        info = dict(library="DeepSparse Engine (whole ONNX model)", version=deepsparse.__version__,
                    kernel=f"cpu_avx_type={getattr(eng, 'cpu_avx_type', '?')} vnni={getattr(eng, 'cpu_vnni', '?')}",
                    num_cores=getattr(eng, "num_cores", None),
                    fraction_of_supported_ops=getattr(eng, "fraction_of_supported_ops", None))

        def fn(xs):
            return eng.run(list(xs))[spec.get("output", 0)]
        fn._keep = eng
        return fn, info
    spec["A"] = dict(spec["A"], data=_w_fix(spec["A"]["data"]), indptr=np.asarray(spec["A"]["indptr"]).astype(np.int64),
                     indices=np.asarray(spec["A"]["indices"]).astype(np.int64))
    M, K = spec["A"]["shape"]
    N, threads, relu = spec["N"], spec["threads"], spec["relu"]
    bias = None if spec["bias"] is None else np.asarray(spec["bias"], np.float32).reshape(M, 1)
    Ad = _w_dense(spec["A"])
    if kind == "numpy_dense":
        import threadpoolctl
        tpc = threadpoolctl.ThreadpoolController()
        info = dict(library="numpy ndarray @ (OpenBLAS sgemm)", version=np.__version__,
                    env_dropped=list(BLAS_ENV_TO_DROP), parent_env=spec.get("parent_env"),
                    child_env={k: os.environ.get(k) for k in BLAS_ENV_TO_DROP},
                    fused="bias/relu applied after with numpy in-place" if bias is not None or relu else "")
        blas = [d for d in threadpoolctl.threadpool_info() if d.get("user_api") == "blas"]
        if blas:
            info.update(openblas_version=blas[0].get("version"), kernel=blas[0].get("architecture"),
                        internal_api=blas[0].get("internal_api"), threading_layer=blas[0].get("threading_layer"))
        limiter = tpc.select(user_api="blas")
        state = _W_STATE

        def fn(B):
            if state.get("blas_threads") != threads:     # set once per change, not per call
                limiter.limit(limits=threads)
                state["blas_threads"] = threads
            C = Ad @ B
            if bias is not None:
                C += bias
            if relu:
                np.maximum(C, 0, out=C)
            return C
        info["threads_set"] = threads
        return fn, info
    if kind == "deepsparse":
        import deepsparse
        import onnx
        model = _onnx_model(Ad, N, None if bias is None else bias.ravel(), relu, transposed=True, ir_version=8)
        path = tempfile.mktemp(suffix=".onnx", prefix="ds_")
        onnx.save(model, path)
        eng = deepsparse.compile_model(path, batch_size=N, num_cores=threads)
        info = dict(library="DeepSparse Engine (Gemm x A^T, batch = N)", version=deepsparse.__version__,
                    kernel=f"cpu_avx_type={getattr(eng, 'cpu_avx_type', '?')} vnni={getattr(eng, 'cpu_vnni', '?')}",
                    num_cores=getattr(eng, "num_cores", None),
                    fraction_of_supported_ops=getattr(eng, "fraction_of_supported_ops", None),
                    fused=("bias+relu in the graph (Gemm+Relu), engine-fused" if relu or bias is not None else ""))
        try:   # does the engine's own analysis see the weight sparsity?
            from deepsparse.engine import DebugAnalysisEngine
            if not spec.get("analysis", True):
                raise RuntimeError("analysis skipped (spec analysis=False)")
            dbg = DebugAnalysisEngine(path, batch_size=N, num_cores=threads, num_iterations=3, num_warmup_iterations=1)
            rep = dbg.analyze([np.zeros((N, K), np.float32) + 1.0])
            layers = [l for l in rep.get("layer_info", []) if l.get("required_flops", 0) > 0 and l.get("canonical_name") not in ("<none>",)]
            info["analysis_layers"] = [dict(name=l["name"], kernel_sparsity=l.get("kernel_sparsity"),
                                            required_flops=l.get("required_flops")) for l in layers]
            del dbg
        except Exception as e:  # noqa: BLE001
            info["analysis_error"] = repr(e)[:300]
        if spec.get("native"):
            def fn(Bt):  # noqa: F811  (N, K) -> (N, M)
                return eng.run([Bt])[0]
            info["native_layout"] = True
            info["layout"] = "native: input B^T (N,K), output C^T (N,M); no transposes timed"
        else:
            def fn(B):
                return np.ascontiguousarray(eng.run([np.ascontiguousarray(B.T)])[0].T)
            info["layout"] = "row-major contract: B^T and C^T->C copies inside the timed call"
        fn._keep = (eng, path)
        return fn, info
    raise ValueError(kind)


def _w_fix(a):
    """Arrays pickled by a numpy-2 parent and unpickled by numpy 1.x (the deepsparse venv) carry a
    dtype object DeepSparse rejects; rebuild them from raw bytes (tuples and lists: each item)."""
    if isinstance(a, (tuple, list)):
        return tuple(_w_fix(x) for x in a)
    a = np.asarray(a)
    return np.frombuffer(a.tobytes(), dtype=np.dtype(a.dtype.str)).reshape(a.shape).copy()


def worker_main():
    fin, fout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr          # stray prints must not corrupt the protocol
    handles, inputs = {}, {}
    nxt = 0
    while True:
        try:
            req = _recv(fin)
        except EOFError:
            return
        try:
            op = req[0]
            if op == "quit":
                _send(fout, (True, None))
                return
            if op == "setup":
                fn, info = _w_setup(req[1])
                nxt += 1
                handles[nxt] = fn
                res = (nxt, info)
            elif op == "inputs":
                inputs[req[1]] = [_w_fix(b) for b in req[2]]
                res = None
            elif op == "call":
                res = np.array(handles[req[1]](_w_fix(req[2])), dtype=np.float32)
            elif op == "time":
                fn, B = handles[req[1]], inputs[req[1]][req[2]]
                t0 = time.perf_counter_ns()
                fn(B)
                res = (time.perf_counter_ns() - t0) * 1e-9
            elif op == "free":
                handles.pop(req[1], None)
                inputs.pop(req[1], None)
                res = None
            else:
                raise ValueError(op)
            _send(fout, (True, res))
        except Exception as e:  # noqa: BLE001
            import traceback
            _send(fout, (False, f"{e!r}\n{traceback.format_exc()[-2000:]}"))


def _numpy_ok():
    return True, "runs in a child process without " + "/".join(BLAS_ENV_TO_DROP)


# ---- default registry -------------------------------------------------------------------------
register("numpy_dense", _numpy_dense, _numpy_ok, kind="dense", note="OpenBLAS sgemm, child process")
register("torch_mm", _torch_mm, _torch_ok, kind="dense", note="torch.mm / addmm (MKL)")
register("onednn_packed", lambda A, N, t, **k: _packed_linear(A, N, t, lib="onednn", **k), _onednn_ok,
         kind="dense", note="oneDNN prepacked weight; B^T and C transposes timed")
register("onednn_packed_nt", lambda A, N, t, **k: _packed_linear(A, N, t, lib="onednn", native=True, **k),
         _onednn_ok, kind="dense", note="oneDNN prepacked weight; native layout B^T in, C^T out (no transposes)")
register("mkl_packed", lambda A, N, t, **k: _packed_linear(A, N, t, lib="mkl", **k), _mkl_ok,
         kind="dense", note="MKL sgemm_pack'ed weight; transposes timed")
register("mkl_packed_nt", lambda A, N, t, **k: _packed_linear(A, N, t, lib="mkl", native=True, **k), _mkl_ok,
         kind="dense", note="MKL sgemm_pack'ed weight; native layout B^T in, C^T out")
register("torch_sparse_csr", _torch_sparse_csr, _torch_ok, kind="sparse", note="MKL sparse CSR x dense")
register("scipy_csr", _scipy_csr, lambda: (_try_import("scipy")[0], ""), kind="sparse", note="single-threaded")
register("onnxruntime", _onnxruntime, _onnxruntime_ok, kind="dense", note="MatMul/Gemm with A initializer")
register("deepsparse", _deepsparse_factory(False), _deepsparse_ok, kind="sparse",
         note="DeepSparse 1.8 (venv child); B^T and C transposes timed")
register("deepsparse_nt", _deepsparse_factory(True), _deepsparse_ok, kind="sparse",
         note="DeepSparse 1.8 (venv child); native layout B^T in, C^T out")


def available_methods() -> dict[str, tuple]:
    return {n: m.available() for n, m in METHODS.items()}


# ----------------------------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------------------------
def reference(A, B, bias=None, relu=False) -> np.ndarray:
    C = A.astype(np.float64) @ B.astype(np.float64)
    C = np.asarray(C)
    if bias is not None:
        C = C + np.asarray(bias, np.float64).reshape(-1, 1)
    if relu:
        C = np.maximum(C, 0)
    return C


def max_rel_err(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    den = np.abs(ref).max()
    return float(np.abs(got - ref).max() / (den if den > 0 else 1.0))


def _native(fn) -> bool:
    return bool(getattr(fn, "native_layout", False))


def _arg(fn, B):
    """The input a method takes for B: B itself, B^T (native layout), or what its adapt_input
    makes of B (e.g. the NCHW image whose im2col B is, for a convolution)."""
    if hasattr(fn, "adapt_input"):
        return fn.adapt_input(B)
    return np.ascontiguousarray(B.T) if _native(fn) else B


def check_outputs(callables: dict, A, B, bias=None, relu=False) -> dict[str, float]:
    """max|got-ref|/max|ref| against a float64 reference, per method (native-layout methods get
    B^T and their C^T is transposed back for the comparison)."""
    ref = reference(A, B, bias, relu)
    errs = {}
    for name, fn in callables.items():
        try:
            C = np.asarray(fn(_arg(fn, B)))
            if _native(fn):
                C = C.T
            if hasattr(fn, "adapt_output"):
                C = fn.adapt_output(C)
            errs[name] = max_rel_err(C, ref)
        except Exception as e:  # noqa: BLE001
            errs[name] = float("nan")
            print(f"[check] {name} failed: {e!r}", file=sys.stderr)
    return errs


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def schedule(names: list[str], rounds: int, n_sets: int) -> list[list[tuple[str, int]]]:
    """Round r calls every method once, starting at method r % n (the order rotates so no method
    always follows the same one); call j of round r gets input set (r*n + j) % n_sets, so
    consecutive calls never reuse the B the previous call just touched (when n_sets > 1)."""
    n = len(names)
    out = []
    for r in range(rounds):
        order = [names[(r + j) % n] for j in range(n)]
        out.append([(nm, (r * n + j) % n_sets) for j, nm in enumerate(order)])
    return out


def _pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    f, c = math.floor(k), math.ceil(k)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def time_side_by_side(callables: dict, B_sets: list, runs: int = 15, warmup: int = 3,
                      stall_factor: float = 5.0) -> dict[str, dict]:
    """Interleaved timing. Every call is timed on its own (perf_counter_ns around ONE call; remote
    methods time the call inside their child), so a stall only ever lands in the sample of the
    method it hit; samples > stall_factor x that method's median are counted as stalls (kept in
    the median/percentiles, reported). Returns name -> {median_us, min_us, p25_us, p75_us,
    max_us, n, stalls, samples_us}. Also adds paired per-round ratios via paired_ratios()."""
    names = list(callables)
    n_sets = len(B_sets)
    prepared = {nm: [_arg(callables[nm], B) for B in B_sets] for nm in names}
    for nm in names:
        fn = callables[nm]
        if hasattr(fn, "load_inputs"):
            fn.load_inputs(prepared[nm])
    samples = {nm: [] for nm in names}
    for r, rnd in enumerate(schedule(names, warmup + runs, n_sets)):
        for nm, i in rnd:
            fn = callables[nm]
            if hasattr(fn, "time_once"):
                dt = fn.time_once(i)
            else:
                B = prepared[nm][i]
                t0 = time.perf_counter_ns()
                fn(B)
                dt = (time.perf_counter_ns() - t0) * 1e-9
            if r >= warmup:
                samples[nm].append(dt * 1e6)
    res = {}
    for nm, xs in samples.items():
        med = statistics.median(xs)
        res[nm] = dict(median_us=med, min_us=min(xs), p25_us=_pct(xs, 0.25), p75_us=_pct(xs, 0.75),
                       max_us=max(xs), n=len(xs), stalls=sum(x > stall_factor * med for x in xs),
                       samples_us=xs)
    return res


def paired_ratios(stats: dict, ref: str) -> dict[str, float]:
    """median over rounds of t_method[r] / t_ref[r] (same round => same machine state)."""
    out = {}
    if ref not in stats:
        return out
    rs = stats[ref]["samples_us"]
    for nm, s in stats.items():
        xs = s["samples_us"]
        out[nm] = statistics.median(a / b for a, b in zip(xs, rs))
    return out


# ----------------------------------------------------------------------------------------------
# FMA peak
# ----------------------------------------------------------------------------------------------
_FMA_LIB = None


def _fma_lib():
    global _FMA_LIB
    if _FMA_LIB is None:
        src = HERE / "fma_peak_x86_64.s"
        build = Path(tempfile.gettempdir()) / f"sparsert_fma_{os.getuid()}"
        build.mkdir(exist_ok=True)
        so = build / "fma_peak.so"
        if not so.exists() or so.stat().st_mtime < src.stat().st_mtime:
            obj = build / "fma_peak.o"
            subprocess.run(["as", str(src), "-o", str(obj)], check=True)
            subprocess.run(["ld", "-shared", str(obj), "-o", str(so)], check=True)
        lib = ctypes.CDLL(str(so))
        for f in (lib.fma_peak, lib.fma_chain):
            f.argtypes, f.restype = [ctypes.c_long], None
        lib.add_chain.argtypes, lib.add_chain.restype = [ctypes.c_long], ctypes.c_long
        _FMA_LIB = lib
    return _FMA_LIB


def measure_fma_peak(threads: int = 1, iters: int = 20_000_000, reps: int = 7) -> dict:
    """Float32 FMA peak: `threads` OS threads each run 12 independent chains of AVX2
    vfmadd231ps ymm (192 flop/iteration; ctypes drops the GIL). Clock: a chain of 16 dependent
    1-cycle `add` per iteration; the FMA latency (cycles) follows from a dependent vfmadd chain.
    Best (max) of `reps` repetitions."""
    lib = _fma_lib()

    def t1(f, n):
        t0 = time.perf_counter()
        f(n)
        return time.perf_counter() - t0

    ta = min(t1(lib.add_chain, iters) for _ in range(reps))
    ghz = 16 * iters / ta / 1e9
    tl = min(t1(lib.fma_chain, iters // 2) for _ in range(reps))
    lat = tl * ghz * 1e9 / (8 * (iters // 2))
    best = 0.0
    per = []
    for _ in range(reps):
        ts = [0.0] * threads

        def work(k):
            ts[k] = t1(lib.fma_peak, iters)
        th = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for x in th:
            x.start()
        for x in th:
            x.join()
        wall = time.perf_counter() - t0
        g = threads * 192 * iters / wall / 1e9
        per.append(g)
        best = max(best, g)
    return dict(threads=threads, gflops=best, gflops_median=statistics.median(per), clock_ghz=ghz,
                fma_latency_cycles=lat, flop_per_cycle_per_core=best / threads / ghz,
                method="AVX2 ymm vfmadd231ps x12 independent chains; clock from 16 dependent adds/iter")


# ----------------------------------------------------------------------------------------------
# machine facts
# ----------------------------------------------------------------------------------------------
def machine_facts() -> dict:
    facts = dict(hostname=platform.node(), python=platform.python_version(), machine=platform.machine(),
                 nproc=os.cpu_count())
    try:
        txt = Path("/proc/cpuinfo").read_text()
        first = txt.split("\n\n")[0]
        kv = dict((l.split(":", 1)[0].strip(), l.split(":", 1)[1].strip()) for l in first.splitlines() if ":" in l)
        flags = set(kv.get("flags", "").split())
        facts.update(cpu_model=kv.get("model name"), cpu_family=kv.get("cpu family"), cpu_model_id=kv.get("model"),
                     cpu_mhz=kv.get("cpu MHz"), hypervisor="hypervisor" in flags,
                     isa_flags=sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "amx", "f16c"))),
                     avx512="avx512f" in flags)
    except Exception:  # noqa: BLE001
        pass
    facts["blas_env"] = {k: os.environ.get(k) for k in BLAS_ENV_TO_DROP}
    return facts


def versions() -> dict:
    v = {"numpy": np.__version__}
    for mod in ("scipy", "torch", "onnxruntime", "onnx", "threadpoolctl"):
        ok, ver = _try_import(mod)
        v[mod] = ver if ok else None
    return v


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
RECORD_FIELDS = ("problem", "family", "problem_id", "M", "K", "N", "sparsity", "nnz", "count", "pattern",
                 "method", "kind", "threads", "median_us", "min_us", "p25_us", "p75_us", "max_us", "runs",
                 "stalls", "gflops_sparse", "gflops_sparse_best", "gflops_dense_equiv", "pct_peak",
                 "peak_gflops", "max_rel_err", "paired_ratio_vs_fastest", "info", "versions", "machine",
                 "loadavg_before", "loadavg_after", "date")


def run_problem(problem: Problem, methods: list[str], threads: int, *, runs=15, warmup=3, seed=0,
                pattern="dlmc", bias=None, relu=False, peak: dict | None = None, root=None,
                base_facts: dict | None = None, log=print) -> list[dict]:
    A, pat = make_weight(problem, seed=seed, pattern=pattern, root=root)
    nnz = int(A.nnz)
    K, N = problem.K, problem.N
    B_sets = make_inputs(K, N, n_input_sets(K, N), seed=seed + 1)
    fns, infos = {}, {}
    for nm in methods:
        ok, why = METHODS[nm].available()
        if not ok:
            log(f"  skip {nm}: {why}")
            continue
        try:
            fns[nm] = make_method(nm, A, N, threads, bias=bias, relu=relu)
            infos[nm] = getattr(fns[nm], "info", {})
        except Exception as e:  # noqa: BLE001
            log(f"  {nm}: setup failed: {e!r}")
    errs = check_outputs(fns, A, B_sets[0], bias, relu)
    bad = [nm for nm, e in errs.items() if not (e < 1e-3)]
    for nm in bad:
        log(f"  {nm}: max rel err {errs[nm]} -> not timed")
        fns.pop(nm)
    load_before = os.getloadavg()
    stats = time_side_by_side(fns, B_sets, runs=runs, warmup=warmup)
    load_after = os.getloadavg()
    fastest = min(stats, key=lambda n: stats[n]["median_us"]) if stats else None
    ratios = paired_ratios(stats, fastest) if fastest else {}
    for fn in fns.values():
        if hasattr(fn, "close"):
            fn.close()
    pk = (peak or {}).get(threads, {}).get("gflops")
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    recs = []
    for nm, s in stats.items():
        flops = 2.0 * nnz * N
        g = flops / (s["median_us"] * 1e3)
        recs.append(dict(problem=problem.name, family=problem.family, problem_id=problem.problem_id, M=problem.M, K=K,
                         N=N, sparsity=problem.sparsity, nnz=nnz, count=problem.count, pattern=pat, method=nm,
                         kind=METHODS[nm].kind, threads=threads,
                         **{k: s[k] for k in ("median_us", "min_us", "p25_us", "p75_us", "max_us")}, runs=s["n"],
                         stalls=s["stalls"], gflops_sparse=g, gflops_sparse_best=flops / (s["min_us"] * 1e3),
                         gflops_dense_equiv=2.0 * problem.M * K * N / (s["median_us"] * 1e3),
                         pct_peak=(100 * g / pk) if pk else None, peak_gflops=pk, max_rel_err=errs.get(nm),
                         paired_ratio_vs_fastest=ratios.get(nm), info=_jsonable(infos.get(nm, {})),
                         versions=(base_facts or {}).get("versions"), machine=(base_facts or {}).get("machine"),
                         loadavg_before=[round(x, 2) for x in load_before],
                         loadavg_after=[round(x, 2) for x in load_after],
                         date=date, samples_us=[round(x, 2) for x in s["samples_us"]]))
    return recs


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def run_benchmark(problems: list[Problem], methods: list[str] | None = None, threads_list=(1, 2), *,
                  out_jsonl: Path | None = None, runs=15, warmup=3, seed=0, pattern="dlmc", bias=None,
                  relu=False, peak=None, log=print) -> list[dict]:
    methods = methods or list(METHODS)
    if peak is None:
        peak = {t: measure_fma_peak(t) for t in threads_list}
    facts = dict(machine=dict(machine_facts(), fma_peak={str(k): v for k, v in peak.items()}), versions=versions())
    allrecs = []
    fout = open(out_jsonl, "a") if out_jsonl else None
    try:
        for p in problems:
            for t in threads_list:
                t0 = time.time()
                recs = run_problem(p, methods, t, runs=runs, warmup=warmup, seed=seed, pattern=pattern, bias=bias,
                                   relu=relu, peak=peak, base_facts=facts, log=log)
                allrecs += recs
                if fout:
                    for r in recs:
                        fout.write(json.dumps(r, default=str) + "\n")
                    fout.flush()
                best = min(recs, key=lambda r: r["median_us"]) if recs else None
                log(f"{p.name:18s} M={p.M:5d} K={p.K:5d} N={p.N:6d} t={t}: " +
                    " ".join(f"{r['method']}={r['median_us']:.0f}" for r in sorted(recs, key=lambda r: r["median_us"]))
                    + f"  ({time.time()-t0:.1f}s)")
    finally:
        if fout:
            fout.close()
    return allrecs


def load_records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def markdown_table(records: list[dict], reference: str = "sparsert", threads: int | None = None) -> str:
    """One row per (problem, threads): reference median, then baseline_time / reference_time for
    every method, the fastest dense library and the fastest method overall. Without a
    `reference` method in the records the reference is the fastest baseline (ratios >= 1)."""
    key = lambda r: (r["problem"], r["threads"])  # noqa: E731
    groups: dict = {}
    for r in records:
        if threads is None or r["threads"] == threads:
            groups.setdefault(key(r), {})[r["method"]] = r
    methods = sorted({r["method"] for r in records if r["method"] != reference})
    has_ref = any(reference in g for g in groups.values())
    ref_label = reference if has_ref else "fastest baseline"
    head = ["problem", "family", "M", "K", "N", "sparsity", "threads", f"{ref_label} median us"] + \
           [f"{m}/{ref_label}" for m in methods] + ["fastest dense (us)", "fastest overall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(groups, key=lambda k: (k[1], _problem_sort_key(k[0])))
    for k in order:
        g = groups[k]
        any_r = next(iter(g.values()))
        if has_ref and reference in g:
            ref_t = g[reference]["median_us"]
        else:
            ref_t = min(r["median_us"] for r in g.values())
        dense = [r for r in g.values() if r.get("kind") == "dense"]
        fd = min(dense, key=lambda r: r["median_us"]) if dense else None
        fo = min(g.values(), key=lambda r: r["median_us"])
        row = [k[0], any_r["family"], any_r["M"], any_r["K"], any_r["N"], f"{any_r['sparsity']:.2f}", k[1],
               f"{ref_t:.1f}"]
        row += [f"{g[m]['median_us']/ref_t:.2f}" if m in g else "-" for m in methods]
        row += [f"{fd['method']} ({fd['median_us']:.0f})" if fd else "-", fo["method"]]
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines)


def family_summary(records: list[dict]) -> str:
    """Per (family, sparsity, threads): which dense library is fastest how often (by median), and
    the spread seen: median over problems and methods of (p75-p25)/median and of max/median,
    plus the number of stalled samples (> 5x the method's median)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["family"], r["sparsity"], r["threads"]), {}).setdefault(r["problem"], []).append(r)
    lines = ["| family | sparsity | threads | problems | fastest dense (wins) | fastest overall (wins) | "
             "IQR/median (median, max) | max/median (median) | stalled samples |", "|" + "---|" * 9]
    for (fam, sp, t), probs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        dwin, owin, iqr, mx, stalls = {}, {}, [], [], 0
        for recs in probs.values():
            dense = [r for r in recs if r.get("kind") == "dense"]
            if dense:
                d = min(dense, key=lambda r: r["median_us"])["method"]
                dwin[d] = dwin.get(d, 0) + 1
            o = min(recs, key=lambda r: r["median_us"])["method"]
            owin[o] = owin.get(o, 0) + 1
            for r in recs:
                iqr.append((r["p75_us"] - r["p25_us"]) / r["median_us"])
                mx.append(r["max_us"] / r["median_us"])
                stalls += r.get("stalls", 0)
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
        lines.append(f"| {fam} | {sp:.2f} | {t} | {len(probs)} | {fmt(dwin)} | {fmt(owin)} | "
                     f"{statistics.median(iqr):.2f}, {max(iqr):.2f} | {statistics.median(mx):.2f} | {stalls} |")
    return "\n".join(lines)


def _problem_sort_key(name):
    try:
        fam, rest = name.split("/")
        pid, sp = rest.split("@")
        return (fam, float(sp), int(pid))
    except Exception:  # noqa: BLE001
        return (name, 0, 0)


def plot_speedups(records: list[dict], path, reference: str = "sparsert", threads: int = 1, methods=None):
    """Log-scale bar plot per problem of baseline_time / reference_time (reference = `reference`
    method if present, else the fastest baseline of that problem)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups: dict = {}
    for r in records:
        if r["threads"] == threads:
            groups.setdefault(r["problem"], {})[r["method"]] = r
    probs = sorted(groups, key=_problem_sort_key)
    methods = methods or sorted({r["method"] for r in records if r["method"] != reference})
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(probs)), 5))
    w = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        ys = []
        for p in probs:
            g = groups[p]
            ref_t = g[reference]["median_us"] if reference in g else min(x["median_us"] for x in g.values())
            ys.append(g[m]["median_us"] / ref_t if m in g else np.nan)
        ax.bar(np.arange(len(probs)) + j * w, ys, w, label=m)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(probs)) + 0.4)
    ax.set_xticklabels(probs, rotation=90, fontsize=7)
    has_ref = any(reference in g for g in groups.values())
    ax.set_ylabel(f"time / {'%s time' % reference if has_ref else 'fastest baseline time'} (log)")
    ax.set_title(f"CPU baselines, {threads} thread(s)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--set", default="spmm", choices=["spmm", "conv3x3", "all"])
    ap.add_argument("--problems", nargs="+", default=None, help="problem names to keep, e.g. spmm_dl/3@0.90")
    ap.add_argument("--pattern", default="dlmc", choices=["dlmc", "random"])
    ap.add_argument("--out", default=str(HERE / "results" / "baselines"))
    ap.add_argument("--tag", default="")
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main()
    probs = []
    if a.set in ("spmm", "all"):
        probs += load_spmm_problems()
    if a.set in ("conv3x3", "all"):
        probs += load_conv3x3_problems()
    if a.problems:
        probs = [p for p in probs if p.name in a.problems]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S") + (f"_{a.tag}" if a.tag else "")
    print("available:", json.dumps(available_methods(), indent=1))
    peak = {t: measure_fma_peak(t) for t in a.threads}
    print("peak:", json.dumps(peak, indent=1))
    jl = out / f"baselines_{stamp}.jsonl"
    recs = run_benchmark(probs, a.methods, a.threads, out_jsonl=jl, runs=a.runs, warmup=a.warmup,
                         pattern=a.pattern, peak=peak)
    md = out / f"baselines_{stamp}.md"
    with open(md, "w") as f:
        f.write("## Summary per family\n\n" + family_summary(recs) + "\n\n")
        for t in a.threads:
            f.write(f"## {t} thread(s)\n\n" + markdown_table(recs, threads=t) + "\n\n")
    for t in a.threads:
        plot_speedups(recs, out / f"baselines_{stamp}_t{t}.png", threads=t)
    print("wrote", jl, md)


if __name__ == "__main__":
    sys.exit(main())
