"""Shared pieces of the benchmarks: environment capture, device peaks, timing, rotated operands.

Timing is sparsert.tune.measure_us (CUDA events, warm-up, median of many samples, host overhead
hidden behind a spin kernel; see its docstring), the same primitive the autotuner uses, so the
tuner optimises exactly what these benchmarks report. Everything that touches the GPU imports
CuPy / torch lazily: this module imports on a machine without either.
"""

from __future__ import annotations

import os

# CuPy reads CUPY_TF32 once, at import: fp32 GEMMs must be true fp32 (no TF32) to compare with
# sparsert's fp32 FFMAs. Set before anything imports CuPy; disable_tf32() enforces it again.
os.environ["CUPY_TF32"] = "0"

import contextlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsert.tune import (  # noqa: F401 - re-exported for the harness
    Measurement,
    l2_and_free_bytes,
    measure_us,
    relative_error,
    rotation_count,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


KIT_DATA = REPO / ".gpu" / "data"  # the GPU kit's copy (tools/gpukit), carried to a GPU machine


def data_candidates() -> list[Path]:
    """Where the data folder (problems/, dlmc/) is looked for, in order: SPARSERT_DATA alone when
    set; else beside the repository (../shared), /work/shared, then the GPU kit's copy (.gpu/data,
    a subset: the problems and the DLMC layers the kit's run needs)."""
    from sparsert.config import settings

    chosen = settings().data_dir
    if chosen is not None:
        return [chosen]
    return [REPO.parent / "shared", Path("/work/shared"), KIT_DATA]


def data_dir() -> Path:
    """The data folder (see data_candidates); FileNotFoundError naming every place looked at."""
    places = data_candidates()
    for candidate in places:
        if (candidate / "problems").is_dir() or (candidate / "dlmc").is_dir():
            return candidate
    raise FileNotFoundError("benchmark data (problems/, dlmc/) not found in "
                            + ", ".join(map(str, places)) + " (set SPARSERT_DATA, or build the kit: make gpu-kit)")


shared_dir = data_dir  # the former name


# -- the backend a benchmark builds with ------------------------------------------------------
def force_backend(name: str) -> str | None:
    """Make every compile of this process use CUDA backend `name` (SPARSERT_BACKEND), never a
    silent fallback: returns None when it is available, else the one-line reason it is not."""
    from sparsert.backends.cuda import BACKENDS

    os.environ["SPARSERT_BACKEND"] = name
    why = BACKENDS[name].available()
    return None if why is None else f"backend {name!r} unavailable: {why}"


def toolchain(backend: str) -> dict:
    """The tools that build kernels for `backend`, for the results (versions and paths)."""
    out: dict = {"backend": backend}
    if backend == "ptx":
        from sparsert.toolchain import ptxas

        out.update(ptxas=_try(ptxas.ptxas_version), nvlink=_try(ptxas.nvlink_version),
                   ptxas_path=ptxas.find_ptxas(), nvlink_path=ptxas.find_nvlink())
    else:
        out["nvrtc"] = _try(lambda: ".".join(map(str, __import__("sparsert.toolchain.nvrtc").toolchain.nvrtc.nvrtc_version())))
    return out


def stamp(env: dict, kernel=None) -> dict:
    """What every result record carries: device, driver, CUDA, backend, ptxas, schedule."""
    tools = env.get("toolchain") or {}
    return {"device": env.get("device"), "driver": env.get("driver"), "cuda": env.get("cuda_runtime"),
            "backend": getattr(kernel, "backend", None) or tools.get("backend"),
            "ptxas": tools.get("ptxas") or tools.get("nvrtc"),
            "schedule": kernel.schedule.params() if kernel is not None else None}


class Deadline:
    """A time budget (seconds; None: none): a benchmark starts no new measurement after it, so
    it ends on its own, with complete results, before an outer timeout cuts it off."""

    def __init__(self, seconds: float | None):
        import time

        self._clock = time.monotonic
        self.end = None if seconds is None else self._clock() + seconds

    def expired(self) -> bool:
        return self.end is not None and self._clock() >= self.end


# -- peaks ------------------------------------------------------------------------------------
# FP32 FMA units per SM (FMAs issued per clock per SM), by compute capability. 128 on GA10x,
# Ada, Hopper (sm_90: H100/H200) and Blackwell; 64 on Volta, Turing (T4) and GA100 (A100).
FMA_PER_CLK_PER_SM = {(7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
DEFAULT_FMA_PER_CLK_PER_SM = 128
PEAK_FORMULA = "SMs x SM clock (max boost) x FP32 FMA/clk/SM x 2 FLOP/FMA"


def fma_per_clk_per_sm(major: int, minor: int) -> int:
    return FMA_PER_CLK_PER_SM.get((major, minor), DEFAULT_FMA_PER_CLK_PER_SM)


def fp32_peak_flops(sm_count: int, clock_hz: float, fma_per_clk: int) -> float:
    """FP32 FMA peak in FLOP/s: sm_count x clock x fma_per_clk x 2 (an FMA is two FLOPs).
    H100 SXM: 132 x 1.98 GHz x 128 x 2 = 66.9 TFLOP/s."""
    return float(sm_count) * float(clock_hz) * fma_per_clk * 2.0


@dataclass(frozen=True)
class Floor:
    """The physical floor of one SpMM: the larger of its compute and its DRAM time.

    compute: 2 x nnz x N sparse FLOPs at the FP32 FMA peak (the dense baselines do more work; the
    floor is the problem's, not the method's). memory: B's rows that A touches read once and C
    written once (plus R read, when fused), at the measured DRAM bandwidth; A's values cost no
    DRAM traffic in sparsert (they are instruction immediates)."""

    compute_us: float
    memory_us: float

    @property
    def floor_us(self) -> float:
        return max(self.compute_us, self.memory_us)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_us >= self.memory_us else "memory"


def spmm_floor(*, nnz: int, m: int, k_active: int, n: int, peak_flops: float, dram_bps: float,
               residual: bool = False) -> Floor:
    flops = 2.0 * nnz * n
    nbytes = 4.0 * n * (k_active + m * (2 if residual else 1))
    return Floor(compute_us=flops / peak_flops * 1e6, memory_us=nbytes / dram_bps * 1e6)


def measure_dram_bandwidth(*, nbytes: int | None = None, repeat: int = 20) -> dict:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written.
    The buffer is 8x the L2 (at least 256 MiB) so the copy streams from DRAM."""
    import cupy

    l2, free = l2_and_free_bytes()
    nbytes = nbytes or min(max(8 * l2, 256 << 20), free // 4)
    nbytes -= nbytes % 16
    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    stream = cupy.cuda.get_current_stream()

    def copy(_i: int) -> None:
        dst.data.copy_from_device_async(src.data, nbytes, stream=stream)

    m = measure_us(copy, warmup=3, repeat=repeat, target_sample_us=0.0)
    return {"dram_bytes_per_s": 2.0 * nbytes / (m.median_us * 1e-6), "copy_bytes": nbytes,
            "copy_us": m.median_us, "method": "cudaMemcpyAsync device-to-device, (read + write) / time"}


def device_peaks() -> dict:
    """FP32 peak (from the formula) and DRAM bandwidth (measured) of the current GPU."""
    info = gpu_info()
    clock_mhz = info.get("max_sm_clock_mhz") or info.get("sm_clock_mhz")
    fma = fma_per_clk_per_sm(*info["compute_capability"])
    peak = fp32_peak_flops(info["sm_count"], clock_mhz * 1e6, fma) if clock_mhz else None
    return {
        "fp32_flops": peak, "formula": PEAK_FORMULA, "sm_count": info["sm_count"],
        "sm_clock_mhz": clock_mhz, "fma_per_clk_per_sm": fma, **measure_dram_bandwidth(),
    }


# -- environment ------------------------------------------------------------------------------
def _try(fn: Callable[[], object]):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a version we cannot read is recorded as null
        return None


def nvidia_smi() -> dict | None:
    """Driver version and clocks of the current GPU as nvidia-smi reports them."""
    fields = ("name", "driver_version", "clocks.max.sm", "clocks.sm", "memory.total", "power.limit")
    try:
        import cupy

        index = cupy.cuda.Device().id
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            index = int(visible.split(",")[index])
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30, check=True)
    except Exception:  # noqa: BLE001 - no nvidia-smi, no GPU, a UUID in CUDA_VISIBLE_DEVICES...
        return None
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields, values))


def gpu_info() -> dict:
    import cupy

    dev = cupy.cuda.Device()
    attrs = dev.attributes
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    smi = nvidia_smi() or {}
    cc = tuple(int(c) for c in dev.compute_capability)
    clock_khz = attrs.get("ClockRate")
    return {
        "name": name, "compute_capability": cc, "sm_count": int(attrs["MultiProcessorCount"]),
        "l2_bytes": int(attrs.get("L2CacheSize", 0)), "memory_bytes": int(props["totalGlobalMem"]),
        "sm_clock_mhz": clock_khz / 1e3 if clock_khz else None,
        "max_sm_clock_mhz": _try(lambda: float(smi["clocks.max.sm"])),
        "nvidia_smi": smi or None,
    }


def environment(backend: str | None = None) -> dict:
    """Versions of everything that shapes a measurement (null where unreadable); with `backend`,
    the toolchain that builds its kernels too (`toolchain`)."""
    import sparsert

    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "numpy": np.__version__, "scipy": _try(lambda: __import__("scipy").__version__),
        "sparsert": sparsert.__version__,
        "git_commit": _try(lambda: subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True).stdout.strip()),
        "nvrtc": _try(lambda: ".".join(map(str, __import__("sparsert.toolchain.nvrtc").toolchain.nvrtc.nvrtc_version()))),
        "cupy": _try(lambda: __import__("cupy").__version__),
        "torch": _try(lambda: __import__("torch").__version__),
        "torch_cuda": _try(lambda: __import__("torch").version.cuda),
    }
    try:
        import cupy

        rt = cupy.cuda.runtime
        env["cuda_runtime"] = _fmt_cuda_version(rt.runtimeGetVersion())
        env["cuda_driver_api"] = _fmt_cuda_version(rt.driverGetVersion())
        env["cublas"] = _try(lambda: cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle()))
        env["cusparse"] = _try(lambda: __import__("cupyx.cusparse").cusparse.getVersion())
        gpu = gpu_info()
        env["device"] = gpu["name"]
        env["driver"] = (gpu["nvidia_smi"] or {}).get("driver_version")
        env["gpu"] = gpu
    except Exception as e:  # noqa: BLE001 - no GPU: the record says why
        env["device"] = None
        env["gpu_error"] = f"{type(e).__name__}: {e}"
    if backend is not None:
        env["toolchain"] = toolchain(backend)
    return env


def _fmt_cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def disable_tf32() -> dict:
    """Force IEEE fp32 GEMMs in CuPy and torch; returns what was set, for the results file."""
    import cupy  # noqa: F401 - must be imported before its _core submodules
    from cupy._core import _routines_linalg as linalg

    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_FP32)
    done = {"cupy_compute_type": linalg.compute_type_to_str(linalg.get_compute_type(np.float32))}
    with contextlib.suppress(ImportError):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        done["torch_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return done


def shared_stream():
    """One stream for CuPy and torch alike, made current for both: CUDA events only time work
    on the stream they are recorded on. Returns the CuPy stream (or torch's, wrapped)."""
    import cupy

    try:
        import torch
    except ImportError:
        s = cupy.cuda.Stream(non_blocking=True)
        s.use()
        return s
    ts = torch.cuda.Stream()
    torch.cuda.set_stream(ts)
    try:  # CuPy >= 14: the CUDA stream protocol (holds a reference to torch's stream)
        s = cupy.cuda.Stream.from_external(ts)
    except (AttributeError, TypeError):  # older CuPy, or a torch without __cuda_stream__
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            s = cupy.cuda.ExternalStream(ts.cuda_stream)
        _KEEP_ALIVE.append(ts)  # this view does not own torch's stream
    s.use()
    return s


_KEEP_ALIVE: list = []


# -- results files ----------------------------------------------------------------------------
def write_json_atomic(path: Path, data: dict) -> None:
    """Written to a temp file and renamed: an interrupted run leaves the last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "unknown"
