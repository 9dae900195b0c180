"""hipcc driver: HIP C++ source -> AMD GPU code object (``--genco``), no GPU needed.

Always runs with ``HIP_PLATFORM=amd`` (a machine with nvcc installed would otherwise make hipcc
target CUDA). The output of ``--genco`` is a clang offload bundle (``__CLANG_OFFLOAD_BUNDLE__``)
holding the gfx ELF, which ``hipModuleLoadData`` accepts as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from ..choices import HIP_ARCH
from ..config import settings
from ..errors import CompileError, OptionsError, ToolchainError
from .process import ToolResult, log_tail, run

__all__ = ["compile_hip", "hipcc_available", "hipcc_version"]

_TIMEOUT_S = 600
_INSTALL_HINT = "install it with `apt-get install hipcc` (Debian/Ubuntu) or ROCm, or set SPARSERT_HIPCC"


def _hipcc_path() -> str | None:
    exe = settings().hipcc
    if os.path.sep in exe:
        return exe if os.path.isfile(exe) and os.access(exe, os.X_OK) else None
    return shutil.which(exe)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HIP_PLATFORM"] = "amd"
    return env


def hipcc_available() -> bool:
    """True when the configured hipcc (SPARSERT_HIPCC, default ``hipcc``) is an executable on this machine."""
    return _hipcc_path() is not None


def _require() -> str:
    exe = _hipcc_path()
    if exe is None:
        raise ToolchainError(f"hipcc not found (SPARSERT_HIPCC={settings().hipcc!r}); {_INSTALL_HINT}")
    return exe


def hipcc_version() -> str:
    """First line of ``hipcc --version`` (e.g. 'HIP version: 5.2.21153-0'), followed by the line of
    the clang it drives in parentheses when there is one: 'HIP version: 5.2.21153-0 (Debian clang
    version 15.0.6)'. Suitable for a cache key."""
    exe = _require()
    proc = run([exe, "--version"], name="hipcc", what="--version", timeout=120, env=_env())
    lines = [l.strip() for l in proc.stdout.splitlines() if l.strip()]
    if not lines:
        tail = "\n".join(proc.stderr.splitlines()[-10:])
        raise ToolchainError(f"`{exe} --version` printed nothing (exit {proc.returncode}):\n{tail}")
    first = lines[0]
    clang = next((l for l in lines[1:] if "clang version" in l), None)
    if clang and "clang" not in first:
        return f"{first} ({clang})"
    return first


def _validate_arch(arch: object) -> str:
    if not isinstance(arch, str) or not HIP_ARCH.match(arch):
        raise OptionsError(
            f"arch={arch!r}: expected an AMD GPU target like 'gfx90a', 'gfx942', 'gfx1100' "
            "(optionally with features, e.g. 'gfx90a:xnack-')"
        )
    return arch


def compile_hip(source: str, *, arch: str | None = None, name: str = "kernel.hip") -> ToolResult:
    """Compile HIP ``source`` to a code object for ``arch`` (default: settings().hip_arch, gfx90a).

    Runs ``HIP_PLATFORM=amd hipcc --offload-arch=<arch> --genco -O3`` in a temporary directory.
    Raises ToolchainError when hipcc is missing, CompileError (stderr tail, ``name``) when it fails.
    """
    if arch is None:
        arch = settings().hip_arch
    _validate_arch(arch)
    if not isinstance(source, str):
        raise OptionsError(f"source for {name}: expected str, got {type(source).__name__}")
    exe = _require()
    base = os.path.basename(name) or "kernel.hip"
    if not base.endswith((".hip", ".cpp", ".cc", ".cu")):
        base += ".hip"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsert-hip-") as tmp:
        src = os.path.join(tmp, base)
        out = os.path.join(tmp, "kernel.co")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [exe, f"--offload-arch={arch}", "--genco", "-O3", src, "-o", out]
        proc = run(cmd, name=name, what=f"hipcc for {arch}", timeout=_TIMEOUT_S, env=_env(), cwd=tmp, tmpdir=tmp)
        log = (proc.stdout + proc.stderr).replace(src, name)
        if proc.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
            raise CompileError(f"{name}: hipcc for {arch} failed (exit {proc.returncode}):\n{log_tail(log)}")
        with open(out, "rb") as f:
            code = f.read()
    return ToolResult(output=code, log=log, seconds=time.perf_counter() - t0)
