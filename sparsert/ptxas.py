"""The ptxas executable: PTX text -> CUBIN, one subprocess per slab (so slabs assemble in parallel).

ptxas comes from the ``nvidia-cuda-nvcc`` wheel (``nvidia/cu13/bin/ptxas``), else PATH, else
SPARSERT_PTXAS. It runs in whole-program mode, exactly like the ptxas inside NVRTC, so register
allocation matches the NVRTC path. (nvJitLink, the in-process alternative, always assembles
relocatable code, and there ptxas gives a big kernel all 255 registers: measured 255 against 141
for the same PTX, which would cut occupancy.)
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

from .errors import CompileError, OptionsError, ToolchainError
from .nvrtc import ARCH_RE, parse_ptxas_log
from .sass import find_tool

__all__ = ["PtxasResult", "assemble", "find_ptxas", "ptxas_version"]

_INSTALL_HINT = "pip install nvidia-cuda-nvcc"
_LOG_HEAD_LINES = 40
_TIMEOUT_S = 3600  # a single slab never takes this long; a hung ptxas should not hang the build


def find_ptxas() -> str | None:
    """SPARSERT_PTXAS, else the pip wheel's ptxas, else PATH; None when there is none."""
    override = os.environ.get("SPARSERT_PTXAS")
    if override:
        return override
    return find_tool("ptxas")


@lru_cache(maxsize=8)
def _version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"cannot run {exe} --version: {exc}") from exc
    m = re.search(r"release\s+[\d.]+,\s*V([\d.]+)", out)
    return f"ptxas {m.group(1) if m else out.strip().splitlines()[-1]}"


def _exe() -> str:
    exe = find_ptxas()
    if exe is None:
        raise ToolchainError(f"`ptxas` not found (neither SPARSERT_PTXAS, the nvidia pip wheels nor PATH); "
                             f"install it with `{_INSTALL_HINT}` or use backend='nvrtc'")
    return exe


def ptxas_version() -> str:
    """'ptxas 13.5.37': part of the cache key of every PTX-backend kernel."""
    return _version(_exe())


@dataclass(frozen=True)
class PtxasResult:
    cubin: bytes
    log: str
    """ptxas -v output (registers, spills, compile time)."""
    registers: int | None
    spill_stores: int | None
    spill_loads: int | None
    seconds: float


def assemble(ptx: str, *, arch: str, name: str = "kernel.ptx", options: tuple[str, ...] = ()) -> PtxasResult:
    """Assemble PTX text to a CUBIN for `arch` ('sm_90', ...): ``ptxas -arch=<arch> -v <options>``.

    Raises OptionsError on a malformed arch, CompileError (log head, `name`) when ptxas rejects
    the PTX, ToolchainError when ptxas is missing or cannot run.
    """
    if not isinstance(arch, str) or not ARCH_RE.match(arch):
        raise OptionsError(f"arch={arch!r}: expected a real CUDA architecture such as 'sm_90'")
    exe = _exe()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsert-ptxas-") as tmp:
        src, out = os.path.join(tmp, "in.ptx"), os.path.join(tmp, "out.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [exe, f"-arch={arch}", "-v", *options, src, "-o", out]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"{name}: ptxas timed out after {_TIMEOUT_S} s") from exc
        except OSError as exc:
            raise ToolchainError(f"{name}: cannot run {exe}: {exc}") from exc
        log = (proc.stdout + proc.stderr).replace(src, name)
        if proc.returncode != 0:
            lines = log.splitlines()
            head = "\n".join(lines[:_LOG_HEAD_LINES])
            more = f"\n... ({len(lines) - _LOG_HEAD_LINES} more log lines)" if len(lines) > _LOG_HEAD_LINES else ""
            raise CompileError(f"{name}: ptxas rejected the PTX for {arch} (exit {proc.returncode})\n{head}{more}")
        with open(out, "rb") as f:
            cubin = f.read()
    registers, stores, loads = parse_ptxas_log(log)
    return PtxasResult(cubin=cubin, log=log, registers=registers, spill_stores=stores,
                       spill_loads=loads, seconds=time.perf_counter() - t0)
