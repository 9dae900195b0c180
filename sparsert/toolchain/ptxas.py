"""The ptxas and nvlink executables: PTX text -> relocatable objects -> one CUBIN per slab.

Both come from the ``nvidia-cuda-nvcc`` wheel (``nvidia/cu13/bin``), else PATH; SPARSERT_PTXAS
names another ptxas, and nvlink is then taken from beside it (the same release). Every call is a
subprocess, so objects assemble truly in parallel on threads. Each relocatable object is assembled
under an explicit -maxrregcount: uncapped, relocatable code gets all 255 registers (measured 255
against 141 for the same PTX), which would cut occupancy. nvlink gives a kernel the most
registers any function it calls uses, and drops functions nothing calls.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache

from ..choices import CUDA_ARCH
from ..config import settings
from ..errors import CompileError, OptionsError, ToolchainError
from .locate import find_tool
from .nvrtc import parse_ptxas_log
from .process import ToolResult, log_head, run

__all__ = ["assemble", "find_nvlink", "find_ptxas", "link", "ptxas_version", "nvlink_version"]

_INSTALL_HINT = "pip install nvidia-cuda-nvcc"
_TIMEOUT_S = 3600  # a single slab never takes this long; a hung ptxas should not hang the build


def find_ptxas() -> str | None:
    """SPARSERT_PTXAS, else the pip wheel's ptxas, else PATH; None when there is none."""
    return settings().ptxas or find_tool("ptxas")


@lru_cache(maxsize=8)
def _version(exe: str) -> str:
    done = run([exe, "--version"], name=os.path.basename(exe), what="--version", timeout=60)
    if done.returncode != 0:
        raise ToolchainError(f"cannot run {exe} --version (exit {done.returncode})")
    out = done.stdout
    m = re.search(r"release\s+[\d.]+,\s*V([\d.]+)", out)
    return f"{os.path.basename(exe)} {m.group(1) if m else out.strip().splitlines()[-1]}"


def _require(exe: str | None, tool: str, where: str) -> str:
    if exe is None:
        raise ToolchainError(f"`{tool}` not found (neither {where}, the nvidia pip wheels nor PATH); "
                             f"install it with `{_INSTALL_HINT}` or use backend='nvrtc'")
    return exe


def _exe() -> str:
    return _require(find_ptxas(), "ptxas", "SPARSERT_PTXAS")


def ptxas_version() -> str:
    """'ptxas 13.5.37': part of the cache key of every PTX-backend kernel."""
    return _version(_exe())


def find_nvlink() -> str | None:
    """nvlink beside the ptxas in use (the same release), else the wheel's, else PATH."""
    ptxas = find_ptxas()
    if ptxas:
        beside = os.path.join(os.path.dirname(ptxas), "nvlink")
        if os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside
    return find_tool("nvlink")


def _nvlink() -> str:
    return _require(find_nvlink(), "nvlink", "beside ptxas")


def nvlink_version() -> str:
    """'nvlink 13.5.37': with ptxas_version, part of the cache key of every PTX-backend kernel."""
    return _version(_nvlink())


@lru_cache(maxsize=8)
def _known_archs(exe: str) -> tuple[str, ...]:
    done = run([exe, "--help"], name=os.path.basename(exe), what="--help", timeout=60)
    m = re.search(r"--gpu-name.*?Allowed values for this option:(.*?)(?:\n\s*\n|\n--)", done.stdout, re.S)
    names = set(re.findall(r"'(sm_[0-9]+[a-z]?)'", m.group(1))) if m else set()
    return tuple(sorted(names, key=lambda a: (int(re.sub(r"\D", "", a)), a)))


def unsupported_arch(arch: str) -> str | None:
    """None when the ptxas in use can assemble for `arch` (or cannot tell), else one line saying
    which real architectures it knows (checked before planning, so a typo costs no build)."""
    exe = find_ptxas()
    known = _known_archs(exe) if exe else ()
    if not known or arch in known:
        return None
    return f"arch={arch!r} (--arch): {ptxas_version()} does not know it; it knows {', '.join(known)}"


def _check_arch(arch) -> None:
    if not isinstance(arch, str) or not CUDA_ARCH.match(arch):
        raise OptionsError(f"arch={arch!r}: expected a real CUDA architecture such as 'sm_90'")


def assemble(ptx: str, *, arch: str, name: str = "kernel.ptx", options: tuple[str, ...] = ()) -> ToolResult:
    """Assemble PTX text for `arch` ('sm_90', ...): ``ptxas -arch=<arch> -v <options>``; with
    ``-c`` among the options the result is a relocatable object for link().

    Raises OptionsError on a malformed arch, CompileError (log head, `name`) when ptxas rejects
    the PTX, ToolchainError when ptxas is missing or cannot run.
    """
    _check_arch(arch)
    exe = _exe()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsert-ptxas-") as tmp:
        src, out = os.path.join(tmp, "in.ptx"), os.path.join(tmp, "out.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        proc = run([exe, f"-arch={arch}", "-v", *options, src, "-o", out], name=name, what="ptxas",
                   timeout=_TIMEOUT_S, tmpdir=tmp)
        log = (proc.stdout + proc.stderr).replace(src, name)
        if proc.returncode != 0:
            raise CompileError(f"{name}: ptxas rejected the PTX for {arch} (exit {proc.returncode})\n{log_head(log)}")
        with open(out, "rb") as f:
            cubin = f.read()
    registers, stores, loads = parse_ptxas_log(log)
    return ToolResult(output=cubin, log=log, registers=registers, spill_stores=stores,
                      spill_loads=loads, seconds=time.perf_counter() - t0)


_LINK_REGS = re.compile(r"used (\d+) registers")


def link(objects: Sequence[tuple[str, bytes]], *, arch: str, name: str = "kernel.cubin") -> ToolResult:
    """Link relocatable objects ((file name, bytes), in order) into one CUBIN for `arch`:
    ``nvlink -arch=<arch> -v``. Raises CompileError (log head, `name`) when nvlink refuses them."""
    _check_arch(arch)
    exe = _nvlink()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsert-nvlink-") as tmp:
        paths = []
        for i, (stem, data) in enumerate(objects):
            path = os.path.join(tmp, f"{i:05d}-{os.path.basename(stem)}.o")
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        out = os.path.join(tmp, "out.cubin")
        proc = run([exe, f"-arch={arch}", "-v", "-o", out, *paths], name=name, what="nvlink",
                   timeout=_TIMEOUT_S, tmpdir=tmp)
        log = proc.stdout + proc.stderr
        for path in paths:
            log = log.replace(path, os.path.basename(path))
        if proc.returncode != 0:
            raise CompileError(f"{name}: nvlink refused the objects for {arch} (exit {proc.returncode})\n"
                               f"{log_head(log)}")
        with open(out, "rb") as f:
            cubin = f.read()
    regs = [int(m.group(1)) for m in _LINK_REGS.finditer(log)]
    return ToolResult(output=cubin, log=log, registers=max(regs) if regs else None,
                      seconds=time.perf_counter() - t0)
