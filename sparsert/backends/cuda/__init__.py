"""The CUDA backends: 'ptx' (PTX emitter + ptxas + nvlink, the default where they are installed)
and 'nvrtc' (the CUDA C++ unit through libnvrtc). Both plan with the same parameter choice
(params.py, within limits.py), launch through CuPy / PyTorch (launch.py) and are inspected on
their SASS (sass.py)."""

from __future__ import annotations

import threading

from ...choices import CUDA_BACKENDS
from ...config import settings
from ...errors import OptionsError
from ...ir.plan import Parameters
from ...ir.schedule import Schedule
from ...options import KernelOptions
from ...runtime.artifact import Artifact, Unit
from ...toolchain.nvrtc import nvrtc_version
from ...toolchain.ptxas import (
    find_nvlink,
    find_ptxas,
    nvlink_version,
    ptxas_version,
    unsupported_arch,
)
from ...version import __version__
from ..base import package_digest
from ..source.render import launch_units, render
from .build import NVRTC_OPTIONS, PTXAS_OPTIONS, PtxSlabBuild, build_nvrtc
from .limits import launch_problem
from .params import parameters

# FFMAs (nonzeros x vec) per slab, one launched kernel (several run side by side on forked
# streams). NVRTC compiles a slab as one function, and its time grows faster than linearly with
# the size, so its slabs are small. The PTX backend writes each thread block as a function of
# its own and ptxas assembles them on parallel threads, so one slab can be large: one launch for
# every layer of ResNet-50 at 90%, with bounded ptxas memory (benchmarks/COMPILE_TIME.md).
PTX_SLAB_FMAS = 262144
NVRTC_SLAB_FMAS = 16384


class _Cuda:
    target = "cuda"
    suffixes = (".cu", ".cubin")
    default_slab = NVRTC_SLAB_FMAS

    def slab_budget(self) -> int:
        return settings().max_slab_nnz or self.default_slab

    def parameters(self, m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters:
        return parameters(m, k, nnz, opts, batch=batch)

    def supports(self, opts: KernelOptions, conv) -> str | None:
        return None

    def launch_problem(self, schedule: Schedule) -> str | None:
        """Grid and 32-bit offset limits of the generated code (limits.launch_problem)."""
        return launch_problem(schedule)

    def source_units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        return render(schedule, "cuda")

    def common_key(self, arch: str) -> dict:
        return {"target": "cuda", "arch": arch, "backend": self.name, "sparsert": __version__,
                "code": package_digest("cuda")}

    def parallel(self, todo: int, workers: int, cores: int) -> dict:
        return {}

    def launcher(self, kernel):
        from .launch import CudaLauncher  # CuPy is imported only to launch

        return CudaLauncher(kernel)

    def sass_stats(self, artifacts):
        from .sass import merge_stats, sass_stats

        return merge_stats([sass_stats(a.binary) for a in artifacts])


class PtxBackend(_Cuda):
    name = "ptx"
    default_slab = PTX_SLAB_FMAS
    ffma_per_core_second = 14000  # measured: 27.9k nnz/s on 2 cores at 4096 x 4096 (COMPILE_TIME.md)

    def available(self) -> str | None:
        if find_ptxas() is None or find_nvlink() is None:
            return "ptxas and nvlink not found (pip install nvidia-cuda-nvcc, or set SPARSERT_PTXAS)"
        return None

    def supports(self, opts: KernelOptions, conv) -> str | None:
        if conv is not None and opts.vec not in (None, 1):
            return f"vec={opts.vec} over a virtual im2col (conv) operand"
        return unsupported_arch(opts.arch) if opts.arch else None

    def units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        # built from the schedule itself: no source (the CUDA source renders only when asked for)
        return launch_units(schedule)

    def cache_parts(self, schedule: Schedule, unit: Unit, arch: str) -> dict:
        # The PTX is a pure function of (schedule, slab, arch, backend code): a warm cache
        # renders nothing.
        return self.common_key(arch) | {
            "source": {"schedule": schedule.digest, "slab": unit.index},
            "options": list(PTXAS_OPTIONS), "compiler": f"{ptxas_version()} + {nvlink_version()}"}

    def parallel(self, todo: int, workers: int, cores: int) -> dict:
        # each slab fans its objects out to every core; one gate bounds ptxas runs across slabs
        return {"threads": cores, "gate": threading.Semaphore(cores), "ptxas_threads": max(1, cores // workers)}

    def build(self, schedule: Schedule, unit: Unit, arch: str, **parallel) -> Artifact:
        if not unit.kernel_name.startswith(f"sparsert_{schedule.digest[:12]}"):  # names carry the digest
            raise OptionsError(f"unit {unit.kernel_name} was not rendered from this schedule")
        return PtxSlabBuild(schedule, unit, arch, **parallel).build()

    def ptx(self, schedule: Schedule, arch: str, artifacts) -> tuple[str, ...]:
        """Per slab, the PTX objects as the build linked them: its partition and caps, and the
        functions it refit."""
        from .ptx_objects import render_ptx

        return tuple(render_ptx(schedule, arch, slabs=(i,), layouts=[a.info.get("objects")],
                                replaced=[{b: c for b, c in a.info.get("replaced") or []}])[0].source
                     for i, a in enumerate(artifacts))


class NvrtcBackend(_Cuda):
    name = "nvrtc"
    ffma_per_core_second = 2000  # measured: 4.3k-7.2k nnz/s on 2 cores (COMPILE_TIME.md)

    def available(self) -> str | None:
        try:
            nvrtc_version()
        except Exception as exc:  # noqa: BLE001 - ToolchainError, OSError: say why
            return str(exc).splitlines()[0]
        return None

    def units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        return render(schedule, "cuda")

    def cache_parts(self, schedule: Schedule, unit: Unit, arch: str) -> dict:
        return self.common_key(arch) | {"source": unit.source, "options": list(NVRTC_OPTIONS),
                                        "compiler": "nvrtc %d.%d" % nvrtc_version()}

    def build(self, schedule: Schedule, unit: Unit, arch: str, **parallel) -> Artifact:
        return build_nvrtc(unit, arch)


BACKENDS = {"ptx": PtxBackend(), "nvrtc": NvrtcBackend()}
assert tuple(BACKENDS) == CUDA_BACKENDS


def choose(choice: str | None) -> _Cuda:
    """The CUDA backend for `choice` ('auto', 'ptx', 'nvrtc'; None: SPARSERT_BACKEND): 'auto'
    takes 'ptx' where ptxas and nvlink are installed, else 'nvrtc'."""
    choice = choice or settings().backend
    if choice == "auto":
        return BACKENDS["ptx"] if BACKENDS["ptx"].available() is None else BACKENDS["nvrtc"]
    if choice not in BACKENDS:
        raise OptionsError(f"backend={choice!r}: expected one of auto, {', '.join(CUDA_BACKENDS)}")
    return BACKENDS[choice]


def plan(matrix, opts: KernelOptions, **kwargs) -> Schedule:
    """ir.plan.plan with the CUDA parameter choice (what a CUDA or HIP compile plans)."""
    from ...ir.plan import plan as plan_schedule

    return plan_schedule(matrix, opts, parameters=parameters, **kwargs)
