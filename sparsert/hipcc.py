"""hipcc driver: HIP C++ source -> AMD GPU code object (``--genco``), no GPU needed.

Always runs with ``HIP_PLATFORM=amd`` (a machine with nvcc installed would otherwise make hipcc
target CUDA). The output of ``--genco`` is a clang offload bundle (``__CLANG_OFFLOAD_BUNDLE__``)
holding the gfx ELF, which ``hipModuleLoadData`` accepts as is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .config import settings
from .errors import CompileError, OptionsError, ToolchainError

__all__ = ["HipResult", "compile_hip", "hipcc_available", "hipcc_version"]

_TIMEOUT_S = 600
_INSTALL_HINT = "install it with `apt-get install hipcc` (Debian/Ubuntu) or ROCm, or set SPARSERT_HIPCC"
_STDERR_TAIL_LINES = 40


@dataclass(frozen=True)
class HipResult:
    code_object: bytes
    log: str
    """hipcc's stdout + stderr (warnings)."""
    seconds: float


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
    try:
        proc = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=120, env=_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"cannot run `{exe} --version`: {exc}") from exc
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
    import re

    if not isinstance(arch, str) or not re.match(r"^gfx[0-9]{2,4}[0-9a-f]?(?::[a-z0-9+-]+)*$", arch):
        raise OptionsError(
            f"arch={arch!r}: expected an AMD GPU target like 'gfx90a', 'gfx942', 'gfx1100' "
            "(optionally with features, e.g. 'gfx90a:xnack-')"
        )
    return arch


def compile_hip(source: str, *, arch: str | None = None, name: str = "kernel.hip") -> HipResult:
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
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=_env(), cwd=tmp, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise CompileError(f"{name}: hipcc for {arch} timed out after {_TIMEOUT_S} s") from exc
        except OSError as exc:
            raise ToolchainError(f"cannot run {exe}: {exc}; {_INSTALL_HINT}") from exc
        log = (proc.stdout + proc.stderr).replace(src, name)
        if proc.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
            lines = log.splitlines()
            tail = "\n".join(lines[-_STDERR_TAIL_LINES:])
            raise CompileError(f"{name}: hipcc for {arch} failed (exit {proc.returncode}):\n{tail}")
        with open(out, "rb") as f:
            code = f.read()
    return HipResult(code_object=code, log=log, seconds=time.perf_counter() - t0)
