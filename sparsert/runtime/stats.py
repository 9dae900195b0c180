"""What a compile reports about the kernel it made (kernel.stats)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the runtime sits below the IR
    from ..ir.schedule import Schedule



@dataclass(frozen=True)
class KernelStats:
    nnz: int
    blocks: int
    slabs: int
    source_bytes: int  # of the source the binaries were built from (PTX for the PTX backend)
    binary_bytes: int
    registers: int | None  # max over slabs (ptxas -v); None for HIP
    spill_stores: int | None  # bytes, summed over slabs
    spill_loads: int | None
    plan_seconds: float
    render_seconds: float
    compile_seconds: float  # wall time of this compile call (0 when every slab came from the cache)
    compiler_seconds: float  # compiler time summed over slabs, as recorded when they were built
    cached_slabs: int

    def as_dict(self) -> dict:
        return asdict(self)


def _max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _sum_or_none(values):
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def make_stats(schedule: Schedule, units, artifacts, *, plan_s: float, render_s: float,
               compile_s: float) -> KernelStats:
    return KernelStats(
        nnz=schedule.nnz, blocks=len(schedule.blocks) * schedule.grid_n * schedule.batch,
        slabs=len(units),
        # the source the binaries were built from: the CUDA/HIP units, or the PTX (PTX backend)
        source_bytes=sum(len(u.source.encode()) for u in units) if all(u.source for u in units)
        else sum(int(a.info.get("ptx_bytes") or a.info.get("asm_bytes") or 0) for a in artifacts),
        binary_bytes=sum(len(a.binary) for a in artifacts),
        registers=_max_or_none(a.info.get("registers") for a in artifacts),
        spill_stores=_sum_or_none(a.info.get("spill_stores") for a in artifacts),
        spill_loads=_sum_or_none(a.info.get("spill_loads") for a in artifacts),
        plan_seconds=plan_s, render_seconds=render_s, compile_seconds=compile_s,
        compiler_seconds=sum(float(a.info.get("compile_seconds") or 0.0) for a in artifacts),
        cached_slabs=sum(a.cached for a in artifacts),
    )
