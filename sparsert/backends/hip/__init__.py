"""The HIP backend: the same C++ source as CUDA's NVRTC path in the HIP dialect, built into an AMD
code object by hipcc (no AMD GPU needed to build). sparsert builds HIP kernels but does not
launch them (no ROCm runtime binding yet)."""

from __future__ import annotations

from ...config import settings
from ...errors import ToolchainError
from ...ir.plan import Parameters
from ...ir.schedule import Schedule
from ...options import KernelOptions
from ...runtime.artifact import Artifact, Unit
from ...toolchain.hipcc import compile_hip, hipcc_available, hipcc_version
from ...version import __version__
from ..base import package_digest
from ..cuda.limits import launch_problem
from ..cuda.params import parameters
from ..source.render import render

SLAB_FMAS = 16384  # hipcc compiles a slab as one function: small slabs, as NVRTC's


class HipBackend:
    name = "hipcc"
    target = "hip"
    suffixes = (".hip", ".co")

    def available(self) -> str | None:
        return None if hipcc_available() else f"hipcc not found (SPARSERT_HIPCC={settings().hipcc!r})"

    def slab_budget(self) -> int:
        return settings().max_slab_nnz or SLAB_FMAS

    def parameters(self, m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters:
        return parameters(m, k, nnz, opts, batch=batch)  # the CUDA choice: same source, same limits

    def supports(self, opts: KernelOptions, conv) -> str | None:
        if opts.accumulate == "bfloat16":
            return "HIP has no packed bfloat16 FMA in the headers sparsert targets; use accumulate='float32'"
        return None

    def launch_problem(self, schedule: Schedule) -> str | None:
        """The CUDA source's limits hold for its HIP rendering too (same grid, same 32-bit offsets)."""
        return launch_problem(schedule)

    def units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        return render(schedule, "hip")

    source_units = units

    def cache_parts(self, schedule: Schedule, unit: Unit, arch: str) -> dict:
        return {"target": "hip", "arch": arch, "backend": self.name, "sparsert": __version__,
                "code": package_digest("hip"), "source": unit.source, "options": [],
                "compiler": hipcc_version()}

    def parallel(self, todo: int, workers: int, cores: int) -> dict:
        return {}

    def build(self, schedule: Schedule, unit: Unit, arch: str, **parallel) -> Artifact:
        r = compile_hip(unit.source, arch=arch, name=f"{unit.kernel_name}.hip")
        return Artifact(binary=r.output, info={"registers": None, "spill_stores": None, "spill_loads": None,
                                               "compile_seconds": r.seconds, "log": r.log, "backend": "hipcc"})

    def launcher(self, kernel):
        raise ToolchainError("this kernel targets HIP: sparsert compiles HIP code objects but launches "
                             "only CUDA kernels; compile with target='cuda' to run it")
