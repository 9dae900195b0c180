"""The CPU target's run time: a persistent thread pool (templates/cpu/runtime.c) that runs a
compiled kernel's blocks, built once per machine and kept in the one cache.

The pool is a fixed C file, compiled once per (source, compiler) with the host C compiler and
loaded with ctypes; the unrolled kernels never go through a C compiler. Threads are created on
the first call and park on a futex after a short spin (no thread creation per call). Work items
(image, chunk of N, block) are cut into segments of about equal nonzero cost; entering a chunk,
a thread packs it (for a convolution: gathers the virtual im2col) tile-major into thread-local
scratch that every block's code then sweeps while it is hot in L2.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

from ...config import settings
from ...errors import OptionsError, ToolchainError
from ...resources import template_dir
from ...runtime import cache
from ...toolchain.cxx import build_shared, compiler_argv, compiler_identity


class Job(ctypes.Structure):  # mirrors sprt_job in templates/cpu/runtime.c
    _fields_ = [("fns", ctypes.c_void_p), ("cost", ctypes.c_void_p)] + [
        (n, ctypes.c_long) for n in ("nblocks", "k", "n", "chunk", "width", "tile")] + [
        ("B", ctypes.c_void_p), ("C", ctypes.c_void_p), ("R", ctypes.c_void_p)] + [
        (n, ctypes.c_long) for n in ("batch", "stride_b", "stride_c", "gather", "c_in", "h", "w",
                                     "kh", "kw", "sy", "sx", "py", "px", "dy", "dx", "ow", "elem", "pairs")]


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _source() -> Path:
    return template_dir() / "cpu" / "runtime.c"


def runtime() -> ctypes.CDLL:
    """The pool, loaded once per process (from the cache; built there on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            _lib = _load(_shared_object())
    return _lib


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))  # calls release the GIL
    lib.sprt_run.argtypes = [ctypes.POINTER(Job), ctypes.c_int]
    lib.sprt_run.restype = ctypes.c_int
    lib.sprt_pack.argtypes = [ctypes.POINTER(Job), ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
    lib.sprt_pack.restype = None
    return lib


def _shared_object() -> Path:
    src = _source()
    # Keyed by the source and flags only, so a warm cache needs no C compiler: the pool's
    # behaviour is fixed by its source, whichever compiler built it (recorded in the entry).
    key = hashlib.sha256(src.read_bytes() + b"\0" + " ".join(_FLAGS).encode()).hexdigest()
    store = cache.store("cpu")
    if store is not None:
        path = store.path(key)
        if path is not None:
            return path
        with store.lock(key):
            path = store.path(key)
            if path is None:
                argv = compiler_argv()
                store.put(key, _compile(argv, src).output,
                          {"what": "CPU thread-pool runtime", "compiler": compiler_identity(tuple(argv))})
                path = store.path(key)
        if path is not None:
            return path
    # no cache (SPARSERT_CACHE=0): a private copy for this process
    fd, name = tempfile.mkstemp(prefix="sparsert-cpu-runtime-", suffix=".so")
    with os.fdopen(fd, "wb") as f:
        f.write(_compile(compiler_argv(), src).output)
    return Path(name)


_FLAGS = ("-x", "c", "-std=gnu11", "-O2", "-shared", "-fPIC", "-pthread")


def _compile(argv: list[str], src: Path):
    with tempfile.TemporaryDirectory(prefix="sparsert-cpu-rt-") as tmp:
        out = Path(tmp) / "runtime.so"
        return build_shared(argv, [*_FLAGS, "-o", str(out), str(src)], cwd=Path(tmp), out=out, name="templates/cpu/runtime.c",
                            what="the CPU thread-pool runtime build")


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on; else their count."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def threads_for(threads: int | None = None) -> int:
    """`threads`, else SPARSERT_CPU_THREADS, else the physical cores. Called from torch, the
    default is the same: torch's own intra-op pool is idle while a sparsert kernel runs (the
    call blocks), so the two never compete for cores at once."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise OptionsError(f"threads={threads!r}: expected a positive integer")
        return threads
    return settings().cpu_threads or physical_cores()


def run(job: Job, threads: int) -> None:
    rc = runtime().sprt_run(ctypes.byref(job), threads)
    if rc:
        raise ToolchainError(f"the CPU runtime could not run the kernel (code {rc}: out of memory for "
                             f"its scratch panels, or threads could not be started)")
