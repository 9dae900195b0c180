"""NVRTC bound with ctypes: CUDA C++ source -> CUBIN (and optionally PTX) without a GPU or driver.

CuPy's own ``nvrtc.getCUBIN`` wrapper drops the last byte of the CUBIN (nvdisasm then rejects the
ELF), so we call libnvrtc directly. The library is the same one CuPy loads (found with
``cuda.pathfinder``), loaded lazily once under a lock; after that nothing global is mutated, so
``compile_cuda`` may be called from several threads at once (NVRTC programs are independent).
"""

from __future__ import annotations

import ctypes
import re
import threading
import time

from ..choices import CUDA_ARCH
from ..errors import CompileError, OptionsError, ToolchainError
from .process import ToolResult, log_head

__all__ = ["compile_cuda", "nvrtc_version", "parse_ptxas_log"]

_INSTALL_HINT = "pip install nvidia-cuda-nvrtc"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_load_error: str | None = None


def _load() -> ctypes.CDLL:
    """Load libnvrtc once and declare the prototypes used here."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        if _load_error is not None:
            raise ToolchainError(_load_error)
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib

            path = load_nvidia_dynamic_lib("nvrtc").abs_path
            lib = ctypes.CDLL(path)
        except Exception as exc:  # ImportError, DynamicLibNotFoundError, OSError, ...
            _load_error = (
                f"cannot load the NVRTC library (libnvrtc): {type(exc).__name__}: {exc}; "
                f"install it with `{_INSTALL_HINT}`"
            )
            raise ToolchainError(_load_error) from exc
        c_prog = ctypes.c_void_p
        p_prog = ctypes.POINTER(ctypes.c_void_p)
        sz = ctypes.c_size_t
        decl = {
            "nvrtcVersion": ([ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)], ctypes.c_int),
            "nvrtcGetErrorString": ([ctypes.c_int], ctypes.c_char_p),
            "nvrtcCreateProgram": (
                [p_prog, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                 ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
                ctypes.c_int,
            ),
            "nvrtcDestroyProgram": ([p_prog], ctypes.c_int),
            "nvrtcCompileProgram": ([c_prog, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)], ctypes.c_int),
            "nvrtcGetProgramLogSize": ([c_prog, ctypes.POINTER(sz)], ctypes.c_int),
            "nvrtcGetProgramLog": ([c_prog, ctypes.c_char_p], ctypes.c_int),
            "nvrtcGetCUBINSize": ([c_prog, ctypes.POINTER(sz)], ctypes.c_int),
            "nvrtcGetCUBIN": ([c_prog, ctypes.c_char_p], ctypes.c_int),
            "nvrtcGetPTXSize": ([c_prog, ctypes.POINTER(sz)], ctypes.c_int),
            "nvrtcGetPTX": ([c_prog, ctypes.c_char_p], ctypes.c_int),
        }
        try:
            for fname, (argtypes, restype) in decl.items():
                fn = getattr(lib, fname)
                fn.argtypes = argtypes
                fn.restype = restype
        except AttributeError as exc:
            _load_error = f"libnvrtc at {path} lacks {exc}; reinstall with `{_INSTALL_HINT}`"
            raise ToolchainError(_load_error) from exc
        _lib = lib
        return lib


def _err(lib: ctypes.CDLL, code: int) -> str:
    try:
        s = lib.nvrtcGetErrorString(code)
        return s.decode(errors="replace") if s else f"NVRTC error {code}"
    except Exception:
        return f"NVRTC error {code}"


def _check(lib: ctypes.CDLL, code: int, what: str, name: str) -> None:
    if code != 0:
        raise ToolchainError(f"{name}: NVRTC {what} failed: {_err(lib, code)} (code {code})")


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded libnvrtc, e.g. (13, 0)."""
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion", "libnvrtc")
    return (major.value, minor.value)


_REG_RE = re.compile(r"ptxas\s+info\s*:\s*Used\s+(\d+)\s+registers")
_SPILL_RE = re.compile(r"(\d+)\s+bytes\s+spill\s+stores,\s*(\d+)\s+bytes\s+spill\s+loads")


def parse_ptxas_log(log: str) -> tuple[int | None, int | None, int | None]:
    """(registers, spill_stores, spill_loads) from a ``--ptxas-options=-v`` log.

    Several entry functions: registers is the max, spills are summed.
    """
    regs = [int(m.group(1)) for m in _REG_RE.finditer(log)]
    spills = [(int(m.group(1)), int(m.group(2))) for m in _SPILL_RE.finditer(log)]
    registers = max(regs) if regs else None
    stores = sum(s for s, _ in spills) if spills else None
    loads = sum(l for _, l in spills) if spills else None
    return registers, stores, loads


def _validate_arch(arch: object) -> str:
    if not isinstance(arch, str) or not CUDA_ARCH.match(arch):
        raise OptionsError(
            f"arch={arch!r}: expected a real CUDA architecture 'sm_<major><minor>[a|f]', "
            "e.g. 'sm_80', 'sm_86', 'sm_90', 'sm_90a'"
        )
    return arch


def compile_cuda(
    source: str,
    *,
    arch: str,
    name: str = "kernel.cu",
    options: tuple[str, ...] = (),
    want_ptx: bool = False,
) -> ToolResult:
    """Compile CUDA C++ ``source`` to a CUBIN for ``arch`` (e.g. 'sm_90').

    Always passes ``--gpu-architecture=<arch> -std=c++17 --ptxas-options=-v`` then ``options``.
    Raises OptionsError on a malformed arch, CompileError (with the log head and ``name``) when
    NVRTC rejects the source, ToolchainError when libnvrtc is missing.
    """
    _validate_arch(arch)
    if not isinstance(source, str):
        raise OptionsError(f"source for {name}: expected str, got {type(source).__name__}")
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "--ptxas-options=-v", *options]
    for o in opts:
        if not isinstance(o, str):
            raise OptionsError(f"options for {name}: every option must be a str, got {o!r}")
    lib = _load()

    t0 = time.perf_counter()
    prog = ctypes.c_void_p()
    _check(
        lib,
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
        "nvrtcCreateProgram",
        name,
    )
    try:
        c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), c_opts)

        log_size = ctypes.c_size_t()
        log = ""
        if lib.nvrtcGetProgramLogSize(prog, ctypes.byref(log_size)) == 0 and log_size.value > 1:
            buf = ctypes.create_string_buffer(log_size.value)
            if lib.nvrtcGetProgramLog(prog, buf) == 0:
                log = buf.raw[: log_size.value].rstrip(b"\0").decode(errors="replace")

        if rc != 0:
            raise CompileError(f"{name}: NVRTC compilation for {arch} failed: {_err(lib, rc)}\n{log_head(log)}")

        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize", name)
        if size.value == 0:
            raise ToolchainError(f"{name}: NVRTC produced no CUBIN for {arch}")
        cbuf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cbuf), "nvrtcGetCUBIN", name)
        cubin = cbuf.raw[: size.value]  # .raw keeps every byte (NULs included)

        ptx: str | None = None
        if want_ptx:
            psize = ctypes.c_size_t()
            _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(psize)), "nvrtcGetPTXSize", name)
            pbuf = ctypes.create_string_buffer(max(psize.value, 1))
            _check(lib, lib.nvrtcGetPTX(prog, pbuf), "nvrtcGetPTX", name)
            ptx = pbuf.raw[: psize.value].rstrip(b"\0").decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    seconds = time.perf_counter() - t0

    registers, stores, loads = parse_ptxas_log(log)
    return ToolResult(
        output=cubin,
        text=ptx,
        log=log,
        registers=registers,
        spill_stores=stores,
        spill_loads=loads,
        seconds=seconds,
    )
