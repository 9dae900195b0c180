"""The host C++ compiler (g++ by default, SPARSERT_CXX): where it is, who it is, and one build of
a shared library. Used by the emulator, never on the CPU target's unrolled code."""

from __future__ import annotations

import functools
import shlex
import shutil
import time
from pathlib import Path

from ..config import settings
from ..errors import CompileError, OptionsError, ToolchainError
from .process import ToolResult, log_head, run

__all__ = ["compiler_argv", "compiler_identity", "host_compiler_available", "build_shared"]


def compiler_argv() -> list[str]:
    cxx = settings().cxx
    argv = shlex.split(cxx)
    if not argv:
        raise OptionsError("SPARSERT_CXX is empty: expected a C++20 compiler such as g++")
    exe = shutil.which(argv[0])
    if exe is None:
        raise ToolchainError(
            f"host C++ compiler {argv[0]!r} not found (SPARSERT_CXX={cxx!r}); the no-GPU host runner "
            "needs g++ >= 11 with C++20: install it with `apt-get install g++` or point SPARSERT_CXX at one"
        )
    return [exe, *argv[1:]]


@functools.cache
def compiler_identity(argv: tuple[str, ...]) -> str:
    """First line of `<cxx> --version` (part of the cache key)."""
    proc = run([*argv, "--version"], name=f"host C++ compiler {argv[0]!r}", what="--version", timeout=60)
    if proc.returncode != 0:
        raise ToolchainError(f"`{argv[0]} --version` failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else argv[0]


def host_compiler_available() -> bool:
    """True when the host C++ compiler (settings().cxx) exists and runs."""
    try:
        compiler_identity(tuple(compiler_argv()))
    except (ToolchainError, OptionsError):
        return False
    return True




def build_shared(argv: list[str], args: list[str], *, cwd: Path, out: Path, name: str, what: str,
                 timeout: float = 3600) -> ToolResult:
    """`argv args` in `cwd`, expected to write the shared library `out`."""
    t0 = time.perf_counter()
    proc = run([*argv, *args], name=name, what=what, timeout=timeout, cwd=str(cwd), tmpdir=str(cwd))
    log = proc.stderr or proc.stdout
    if proc.returncode != 0 or not out.is_file():
        raise CompileError(f"{name}: {what} failed (exit {proc.returncode}):\n{log_head(log, 30)}")
    return ToolResult(output=out.read_bytes(), log=log, seconds=time.perf_counter() - t0)
