"""Run generated CUDA source on the CPU (no GPU): g++ -std=c++20 plus templates/host_shim.h.

The exact text sparsert hands to NVRTC is compiled by the host C++ compiler into a shared library,
with the shim force-included (`-include host_shim.h`) to declare the CUDA built-ins, and a small
generated launcher that unpacks the arguments and runs the grid (one OS thread per CUDA thread of a
block; blocks one after another). CI uses it to check the numbers of the emitted code without a GPU.

    k = HostKernel.build(source, "spmm_k", ["const float*", "float*"])
    k.launch((grid_x, grid_y, 1), (128, 1, 1), [B, C])   # numpy float32 arrays, ints by value

Compiled libraries live in the one cache (runtime.cache, kind "host": integrity-checked, locked per
key, atomic), keyed by everything that goes
into them (source, launcher, shim, flags, compiler version).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CompileError, InputError, OptionsError, ToolchainError
from ...resources import template_dir
from ...runtime import cache
from ...toolchain.cxx import (
    build_shared,
    compiler_argv,
    compiler_identity,
    host_compiler_available,
)
from ...toolchain.process import run
from ..cuda.limits import MAX_BLOCK, MAX_GRID, MAX_THREADS_PER_BLOCK

__all__ = ["DEFAULT_OPT", "HostKernel", "HostParam", "host_compiler_available", "shim_path"]

DEFAULT_OPT = "-O0"
"""Optimisation level for host builds. -O0, because generated kernels are huge straight-line
functions: g++ -O1 spends its time in RTL passes (combine, register allocation) on them, growing
superlinearly, while the kernels run for milliseconds either way. Measured (g++ 12, compile CPU
seconds / run seconds of a (64,2,1)x(32,1,1) launch) on a generated float4 switch kernel:
  statements    1k        5k        25k        50k        200k
  -O0           1.2/.003  2.1/.009  5.2/.012   8.6/.018   39/0.32
  -O1           1.5/.003  4.1/.003  17.9/.008  41.9/.008  >14 min (killed)
(cc1plus at -O0 peaks at ~0.5 GB for 25k statements, ~3 GB for 200k.) The shim's precompiled
header takes a further ~0.5 s off every build."""

_BASE_FLAGS = (
    "-std=c++20",
    "-shared",
    "-fPIC",
    "-pthread",
    "-w",  # generated code is not written for g++'s warnings
    "-g0",  # no debug info, so no var-tracking (slow on huge functions); `opt` may still add -g
    "-fno-strict-aliasing",  # kernels read float arrays through float4* (reinterpret_cast), as CUDA allows
    "-fvisibility=hidden",  # each library keeps its kernel, blockDim, barrier... to itself
)
_LAUNCH_SYMBOL = "sparsert_host_launch"
_CTYPES = {"const float*": "in", "float*": "out", "int": "int",
           # half precision (the shim's bit-exact types): float16 arrays, bfloat16 as its uint16 bits
           "const __half*": "in_f16", "__half*": "out_f16",
           "const __nv_bfloat16*": "in_bf16", "__nv_bfloat16*": "out_bf16"}
_KIND_CTYPE = {kind: ctype for ctype, kind in _CTYPES.items()}
# numpy dtype of the array passed for each pointer kind
_KIND_DTYPE = {"in": np.float32, "out": np.float32, "in_f16": np.float16, "out_f16": np.float16,
               "in_bf16": np.uint16, "out_bf16": np.uint16}
# CUDA launch limits (all current architectures); a launch the GPU would refuse is refused here too.
_MAX_BLOCK, _MAX_THREADS, _MAX_GRID = MAX_BLOCK, MAX_THREADS_PER_BLOCK, MAX_GRID
_ALIGN = 16  # float4 accesses need it on the GPU; CUDA/CuPy allocations are 256-byte aligned


@dataclass(frozen=True)
class HostParam:
    """One kernel parameter: 'in' (const float*), 'out' (float*) or 'int' (int, by value)."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CTYPE:
            raise OptionsError(f"HostParam kind {self.kind!r}: expected one of {', '.join(map(repr, _KIND_CTYPE))}")

    @property
    def ctype(self) -> str:
        return _KIND_CTYPE[self.kind]

    @classmethod
    def from_ctype(cls, ctype: str) -> HostParam:
        if not isinstance(ctype, str):
            raise OptionsError(f"kernel parameter type {ctype!r}: expected a string such as 'const float*'")
        norm = re.sub(r"\s+", " ", ctype.strip()).replace(" *", "*")
        if norm not in _CTYPES:
            raise OptionsError(
                f"kernel parameter type {ctype!r}: expected one of {', '.join(map(repr, _CTYPES))}"
            )
        return cls(_CTYPES[norm])


def shim_path() -> Path:
    """templates/emulate/host_shim.h (found like every template: resources.template_dir)."""
    path = template_dir() / "emulate" / "host_shim.h"
    if not path.is_file():
        raise ToolchainError(f"host shim not found: expected {path}")
    return path


def _precompiled_shim(argv: list[str], flags: list[str], shim: Path, shim_text: str, identity: str, cache_dir: Path) -> Path:
    """The shim header to -include: a copy beside its precompiled form (.gch) in the cache when one
    can be made, saving ~0.5 s of <thread>/<barrier> parsing per build; else the shim itself.

    g++ uses header.gch only when it was built with compatible flags and silently reads the header
    text otherwise, so a stale or unusable .gch never changes the result, only the speed."""
    digest = hashlib.sha256("\0".join([shim_text, "\n".join(flags), identity]).encode()).hexdigest()
    folder = cache_dir / f"pch-{digest[:24]}"
    header = folder / "host_shim.h"
    if (folder / "host_shim.h.gch").is_file():
        return header
    try:
        tmp = Path(tempfile.mkdtemp(prefix="build-pch-", dir=cache_dir))
    except OSError:
        return shim
    try:
        (tmp / "host_shim.h").write_text(shim_text)
        pch_flags = [f for f in flags if f != "-shared"]
        proc = run([*argv, *pch_flags, "-x", "c++-header", "host_shim.h", "-o", "host_shim.h.gch"],
                   name="host shim", what="precompiled header", timeout=600, cwd=str(tmp), tmpdir=str(tmp))
        if proc.returncode != 0 or not (tmp / "host_shim.h.gch").is_file():
            return shim
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.rename(tmp, folder)  # atomic publish of the complete folder
        except OSError:
            pass  # another process published it first (or cannot): use theirs, or the plain shim
        return header if (folder / "host_shim.h.gch").is_file() else shim
    except OSError:
        return shim
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _launcher_source(kernel_name: str, params: Sequence[HostParam], block_sync: bool) -> str:
    unpack, call = [], []
    for i, p in enumerate(params):
        if p.kind == "int":
            unpack.append(f"  const int a{i} = *static_cast<const int*>(args[{i}]);")
        else:
            unpack.append(f"  {p.ctype} a{i} = static_cast<{p.ctype}>(args[{i}]);")
        call.append(f"a{i}")
    why = (
        "the source uses __syncthreads/__shared__: blocks are separated by barriers"
        if block_sync
        else "no __syncthreads/__shared__ in the source: threads run their blocks independently"
    )
    sync = "true" if block_sync else "false"
    return "\n".join(
        [
            "// Generated by sparsert.host: CPU launcher for the kernel in kernel.cu.",
            "// args[i] is the array pointer for a pointer parameter, a pointer to the value for an int.",
            f"// Block sync: {why}.",
            '#include "kernel.cu"',
            "",
            f'extern "C" __attribute__((visibility("default"))) int {_LAUNCH_SYMBOL}(',
            "    void** args, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {",
            *unpack,
            f"  auto body = [&]() {{ {kernel_name}({', '.join(call)}); }};",
            f"  return sparsert_host::run_grid<{sync}>(dim3(gx, gy, gz), dim3(bx, by, bz), body);",
            "}",
            "",
        ]
    )


def _load_checked(path: Path, kernel_name: str):
    try:
        return _load(path)
    except (OSError, AttributeError) as exc:
        raise ToolchainError(f"host build of {kernel_name!r} compiled but does not load: {exc}") from None


def _load(path: Path):
    """(library, launch function) or raises OSError/AttributeError."""
    lib = ctypes.CDLL(str(path))
    fn = getattr(lib, _LAUNCH_SYMBOL)
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p)] + [ctypes.c_uint] * 6
    return lib, fn


def _dims(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise InputError(f"{what} {value!r}: expected a tuple of 1 to 3 positive integers") from None
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise InputError(f"{what} {value!r}: expected a tuple of 1 to 3 positive integers")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if min(dims) < 1:
        raise InputError(f"{what} {dims}: every dimension must be >= 1")
    return dims  # type: ignore[return-value]


class HostKernel:
    """A CUDA kernel compiled for and run on the CPU; see the module docstring."""

    def __init__(self, *, name, kernel_name, params, opt, library_path, library, fn, compile_seconds, cache_hit):
        self.name: str = name
        self.kernel_name: str = kernel_name
        self.params: tuple[HostParam, ...] = params
        self.opt: str = opt
        self.library_path: Path = library_path
        self._lib = library  # kept alive: the library is never unloaded
        self._fn = fn
        self.compile_seconds: float = compile_seconds
        """Seconds spent in the compiler for this build; 0.0 when the library came from the cache."""
        self.cache_hit: bool = cache_hit

    def __repr__(self) -> str:
        params = ", ".join(p.ctype for p in self.params)
        return f"HostKernel({self.kernel_name}({params}), {self.opt}, {self.library_path})"

    @classmethod
    def build(
        cls,
        source: str,
        kernel_name: str,
        params: Sequence[str],
        *,
        opt: str = DEFAULT_OPT,
        name: str = "kernel",
    ) -> HostKernel:
        """Compile `source` (NVRTC-ready CUDA text, unchanged) and its launcher into a shared library.

        params: the C types of the kernel's parameters in order: "const float*", "float*" or "int".
        opt: optimisation flags for g++ (split like a shell would), DEFAULT_OPT unless measured otherwise.
        """
        if not isinstance(source, str):
            raise OptionsError(f"source: expected CUDA source text (str), got {type(source).__name__}")
        if not isinstance(kernel_name, str) or not re.fullmatch(r"[A-Za-z_][\w:]*(<[\w\s,:+\-*()]*>)?", kernel_name):
            raise OptionsError(f"kernel_name {kernel_name!r}: expected a C++ function name such as 'spmm_k'")
        if isinstance(params, str):
            raise OptionsError(f"params {params!r}: expected a sequence of C types, e.g. ['const float*', 'float*']")
        hparams = tuple(HostParam.from_ctype(p) for p in params)
        try:
            opt_flags = shlex.split(opt)
        except (ValueError, AttributeError):
            raise OptionsError(f"opt {opt!r}: expected compiler flags such as '-O0'") from None
        if any(not f.startswith("-") for f in opt_flags):
            raise OptionsError(f"opt {opt!r}: expected compiler flags (each starting with '-') such as '-O0'")
        safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:64] or "kernel"

        argv = compiler_argv()
        identity = compiler_identity(tuple(argv))
        shim = shim_path()
        block_sync = "__syncthreads" in source or "__shared__" in source
        launcher = _launcher_source(kernel_name, hparams, block_sync)
        flags = [*_BASE_FLAGS, *opt_flags]
        shim_text = shim.read_text()
        digest = hashlib.sha256()
        for part in (source, launcher, shim_text, "\n".join(flags), identity):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        key = digest.hexdigest()

        store = cache.store("host")
        if store is not None:
            hit = cls._from_store(store, key, safe_name, kernel_name, hparams, opt, cache_hit=True)
            if hit is not None:
                return hit
            with store.lock(key):  # one build per key across processes
                hit = cls._from_store(store, key, safe_name, kernel_name, hparams, opt, cache_hit=True)
                if hit is not None:
                    return hit
                result = cls._compile(argv, flags, source, launcher, shim, shim_text, identity, safe_name,
                                      kernel_name, pch_dir=store.root)
                store.put(key, result.output, {"kernel": kernel_name, "compiler": identity,
                                               "compile_seconds": result.seconds})
                built = cls._from_store(store, key, safe_name, kernel_name, hparams, opt, cache_hit=False,
                                        seconds=result.seconds)
                if built is None:
                    raise ToolchainError(f"host build of {kernel_name!r}: the cache did not keep the "
                                         f"shared object it was given ({store.root})")
                return built
        with tempfile.TemporaryDirectory(prefix=f"sparsert-host-{safe_name}-") as tmp:
            result = cls._compile(argv, flags, source, launcher, shim, shim_text, identity, safe_name,
                                  kernel_name, pch_dir=None)
            path = Path(tmp) / f"{safe_name}.so"
            path.write_bytes(result.output)
            lib, fn = _load_checked(path, kernel_name)
            return cls(name=safe_name, kernel_name=kernel_name, params=hparams, opt=opt, library_path=path,
                       library=lib, fn=fn, compile_seconds=result.seconds, cache_hit=False)

    @classmethod
    def _from_store(cls, store, key, safe_name, kernel_name, hparams, opt, *, cache_hit: bool,
                    seconds: float = 0.0):
        """The cached library, integrity-checked (a corrupt entry is removed: a miss), or None."""
        path = store.path(key)
        if path is None:
            return None
        try:
            lib, fn = _load(path)
        except (OSError, AttributeError):
            store.remove(key)  # checks out but does not load (foreign or stale): rebuild
            return None
        return cls(name=safe_name, kernel_name=kernel_name, params=hparams, opt=opt, library_path=path,
                   library=lib, fn=fn, compile_seconds=seconds, cache_hit=cache_hit)

    @staticmethod
    def _compile(argv, flags, source, launcher, shim, shim_text, identity, safe_name, kernel_name, *,
                 pch_dir: Path | None):
        with tempfile.TemporaryDirectory(prefix=f"sparsert-host-{safe_name}-") as tmp_str:
            tmp = Path(tmp_str)
            (tmp / "kernel.cu").write_text(source)
            (tmp / "launcher.cpp").write_text(launcher)
            out = tmp / f"{safe_name}.so"
            include = shim
            if pch_dir is not None:
                include = _precompiled_shim(argv, flags, shim, shim_text, identity, pch_dir)
            try:
                return build_shared(argv, [*flags, "-include", str(include), "-o", str(out), "launcher.cpp"],
                                    cwd=tmp, out=out, name=f"kernel {kernel_name!r} ({safe_name})",
                                    what="g++ host build (kernel.cu is the CUDA source as given, "
                                         "launcher.cpp the generated launcher)")
            except CompileError as exc:
                raise CompileError(f"g++ rejected host build of {str(exc)}") from None

    def launch(self, grid, block, args: Sequence[np.ndarray | int]) -> None:
        """Run the kernel over `grid` blocks of `block` threads (tuples of up to 3 ints).

        args follow the parameter list: float32 C-contiguous numpy arrays for pointers (16-byte
        aligned, writeable for 'out'), Python/numpy ints for 'int'. Returns when the grid is done.
        """
        g = _dims(grid, "grid")
        b = _dims(block, "block")
        if any(d > m for d, m in zip(b, _MAX_BLOCK)) or b[0] * b[1] * b[2] > _MAX_THREADS:
            raise InputError(f"block {b}: CUDA allows at most {_MAX_BLOCK} and {_MAX_THREADS} threads per block")
        if any(d > m for d, m in zip(g, _MAX_GRID)):
            raise InputError(f"grid {g}: CUDA allows at most {_MAX_GRID}")
        if isinstance(args, (np.ndarray, str)) or len(args) != len(self.params):
            raise InputError(
                f"{self.kernel_name}: expected {len(self.params)} arguments "
                f"({', '.join(p.ctype for p in self.params)}), got "
                f"{len(args) if not isinstance(args, (np.ndarray, str)) else 'a single ' + type(args).__name__}"
            )
        ptrs = (ctypes.c_void_p * max(1, len(self.params)))()
        keep = []
        for i, (p, a) in enumerate(zip(self.params, args)):
            where = f"{self.kernel_name} argument {i} ({p.ctype})"
            if p.kind == "int":
                if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
                    raise InputError(f"{where}: expected an int, got {type(a).__name__}")
                if not -(2**31) <= int(a) < 2**31:
                    raise InputError(f"{where}: {int(a)} does not fit a 32-bit int")
                value = ctypes.c_int(int(a))
                keep.append(value)
                ptrs[i] = ctypes.addressof(value)
                continue
            want = np.dtype(_KIND_DTYPE[p.kind])
            if not isinstance(a, np.ndarray):
                raise InputError(f"{where}: expected a numpy {want} array, got {type(a).__name__}")
            if a.dtype != want:
                raise InputError(f"{where}: expected dtype {want}, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise InputError(f"{where}: expected a C-contiguous array (use np.ascontiguousarray)")
            if p.kind.startswith("out") and not a.flags.writeable:
                raise InputError(f"{where}: output array is read-only")
            if a.size and a.ctypes.data % _ALIGN:
                raise InputError(
                    f"{where}: array data is not {_ALIGN}-byte aligned (a view with an offset?); "
                    "CUDA allocations are, and vector loads need it: pass a fresh array"
                )
            ptrs[i] = a.ctypes.data
        rc = self._fn(ptrs, *g, *b)
        if rc != 0:
            raise ToolchainError(
                f"host runner for {self.kernel_name!r}: could not start {b[0] * b[1] * b[2]} threads"
            )
