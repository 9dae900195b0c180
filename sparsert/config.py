"""Every setting sparsert reads from the environment, typed, in one place.

Read once per call of `settings()` (cheap), so tests can monkeypatch the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .choices import BACKEND_CHOICES, CPU_ISAS
from .errors import OptionsError

DEFAULT_ARCH = "sm_90"  # used when no GPU is present and no --arch is given (H100/H200)
DEFAULT_HIP_ARCH = "gfx90a"
DEFAULT_MAX_NNZ = 2**24  # 16,777,216 nonzeros: ~10 min (PTX backend) to 2+ h (NVRTC) on 2 cores


def _int(name: str, default: int | None, minimum: int = 1) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OptionsError(f"environment variable {name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise OptionsError(f"environment variable {name}={value}: expected an integer >= {minimum}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise OptionsError(f"environment variable {name}={raw!r}: expected 0/1/true/false")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name) or default
    if raw not in choices:
        raise OptionsError(f"environment variable {name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    """SPARSERT_CACHE_DIR: compiled-kernel cache (default ~/.cache/sparsert)."""
    cache_enabled: bool
    """SPARSERT_CACHE: 0 disables reading and writing the cache."""
    default_arch: str
    """SPARSERT_ARCH: CUDA arch used when no GPU is present and none is given (default sm_90)."""
    hip_arch: str
    """SPARSERT_HIP_ARCH: AMD target for HIP code objects (default gfx90a)."""
    jobs: int
    """SPARSERT_JOBS: parallel compiler processes (default: the machine's cores)."""
    max_slab_nnz: int | None
    """SPARSERT_MAX_SLAB_NNZ: FFMAs (nonzeros x vec) per slab (one launched kernel) above which a
    kernel is split; None (unset): the backend's default (Backend.slab_budget)."""
    max_nnz: int
    """SPARSERT_MAX_NNZ: the most nonzeros a weight may have before a compile is refused (default
    16,777,216; KernelOptions.max_nnz / --max-nnz raise it for one compile)."""
    backend: str
    """SPARSERT_BACKEND: CUDA code path, 'ptx' (PTX emitter + ptxas), 'nvrtc' (CUDA C++ through
    NVRTC) or 'auto' (default: ptx where ptxas and nvlink are installed, else nvrtc)."""
    hipcc: str
    """SPARSERT_HIPCC: the hipcc executable."""
    cxx: str
    """SPARSERT_CXX: the host C++20 compiler used by the emulator (generated CUDA on the CPU)."""
    cpu_isa: str | None
    """SPARSERT_CPU_ISA: the CPU target's ISA ('avx512' or 'avx2'; default: the best this CPU runs)."""
    cpu_threads: int | None
    """SPARSERT_CPU_THREADS: threads a CPU kernel runs on (default: the physical cores)."""
    ptxas: str | None
    """SPARSERT_PTXAS: the ptxas executable (nvlink is taken from beside it); default: the
    nvidia-cuda-nvcc wheel's, else PATH."""
    data_dir: Path | None = None
    """SPARSERT_DATA: the benchmarks' and GPU tests' data folder (problems/, dlmc/); None (unset):
    looked up beside the repository (benchmarks.common.data_dir)."""


def settings() -> Settings:
    cache = os.environ.get("SPARSERT_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsert"
    )
    return Settings(
        cache_dir=Path(cache).expanduser(),
        cache_enabled=_bool("SPARSERT_CACHE", True),
        default_arch=os.environ.get("SPARSERT_ARCH") or DEFAULT_ARCH,
        hip_arch=os.environ.get("SPARSERT_HIP_ARCH") or DEFAULT_HIP_ARCH,
        jobs=_int("SPARSERT_JOBS", os.cpu_count() or 1),
        max_slab_nnz=_int("SPARSERT_MAX_SLAB_NNZ", None),
        max_nnz=_int("SPARSERT_MAX_NNZ", DEFAULT_MAX_NNZ),
        backend=_choice("SPARSERT_BACKEND", "auto", BACKEND_CHOICES),
        hipcc=os.environ.get("SPARSERT_HIPCC") or "hipcc",
        cxx=os.environ.get("SPARSERT_CXX") or "g++",
        cpu_isa=_choice("SPARSERT_CPU_ISA", "", ("",) + CPU_ISAS) or None,
        cpu_threads=_int("SPARSERT_CPU_THREADS", None),
        ptxas=os.environ.get("SPARSERT_PTXAS") or None,
        data_dir=Path(os.environ["SPARSERT_DATA"]).expanduser() if os.environ.get("SPARSERT_DATA") else None,
    )

