"""The CPU target: x86-64 assembly (AVX-512 where the CPU has it, AVX2+FMA otherwise) with every
nonzero baked in, assembled by GNU `as` and linked by `ld` into a shared object, run by a
persistent thread pool (SparseDNN-style: vectorised along N, register-blocked).

    kernel = sparsert.compile(w, n=784, target="cpu")     # arch: 'avx512' | 'avx2' (the CPU's best)
    C = kernel(B)                                          # NumPy array or CPU torch tensor

Planning: rows are dealt (by nonzero count) to register blocks of R rows x V vectors of N; for
each distinct k of a block the emitted code loads V vectors of the packed row of B once and feeds
every nonzero of that column with FMAs whose weight comes from a constant pool beside the code
(x86 has no floating-point immediates); the runtime packs chunks of N tile-major and sweeps each
block's code over a chunk while code and panel are hot; tails of N are masked.
"""

from __future__ import annotations

import time

from ...config import settings
from ...errors import OptionsError
from ...ir.plan import Parameters
from ...ir.schedule import Schedule
from ...options import KernelOptions
from ...runtime.artifact import Artifact, Unit
from ...toolchain import binutils
from ...version import __version__
from ..base import package_digest
from ..source.render import kernel_base_name
from .emit import emit_parts, group_blocks, parts_for
from .isa import detect_isa, has_avx512_bf16, runnable, supported
from .lower import lower
from .params import emit_config, parameters_for

NO_SLABS = 1 << 62  # the CPU builds one shared object per kernel: its parts are assembled in parallel


class CpuBackend:
    name = "cpu"
    target = "cpu"
    suffixes = (".s", ".so")

    def available(self) -> str | None:
        why = binutils.available()
        if why is not None:
            return why
        return None if supported() else "this CPU has neither AVX-512F nor AVX2+FMA"

    def slab_budget(self) -> int:
        return NO_SLABS

    def parameters(self, m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1) -> Parameters:
        return parameters_for(opts.arch or detect_isa())(m, k, nnz, opts, batch=batch)

    def supports(self, opts: KernelOptions, conv) -> str | None:
        if opts.accumulate == "float16":
            return ("accumulate='float16': the CPU target has no packed float16 arithmetic; it takes float16 "
                    "activations with float32 arithmetic (accumulate='float32')")
        if opts.packed and (opts.arch or detect_isa()) != "avx512":
            return (f"accumulate='bfloat16': vdpbf16ps kernels are AVX512-BF16 code and need arch='avx512' "
                    f"(this CPU: {'has' if has_avx512_bf16() else 'has no'} AVX512-BF16); "
                    f"accumulate='float32' runs bfloat16 activations on any CPU")
        return None

    def _config(self, schedule: Schedule, arch: str):
        return emit_config(arch, schedule.rows_per_block, schedule.vec, schedule.n, schedule.bcast, schedule.dtype,
                           schedule.packed)

    def units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        # built from the schedule itself (like the PTX backend): the assembly renders on demand
        return (Unit(index=0, kernel_name=kernel_base_name(schedule), source="",
                     grid=(len(schedule.blocks), 1, schedule.batch), block=(1, 1, 1), first_block=0,
                     nnz=schedule.nnz),)

    def source_units(self, schedule: Schedule, arch: str) -> tuple[Unit, ...]:
        (unit,) = self.units(schedule, arch)
        text = "".join(emit_parts(lower(schedule), self._config(schedule, arch), 1))
        return (Unit(index=0, kernel_name=unit.kernel_name, source=text, grid=unit.grid, block=unit.block,
                     first_block=0, nnz=unit.nnz),)

    def cache_parts(self, schedule: Schedule, unit: Unit, arch: str) -> dict:
        cfg = self._config(schedule, arch)
        return {"target": "cpu", "arch": arch, "backend": self.name, "sparsert": __version__,
                "code": package_digest("cpu"), "source": {"schedule": schedule.digest},
                "options": [cfg.v, cfg.rows, cfg.bcast, cfg.group_fmas, cfg.ldc]}
        # No assembler version in the key: the emitted text fixes every instruction and constant
        # (any `as` encodes the same code), so a warm cache needs no toolchain at all. The
        # assembler that built an entry is recorded in its info.

    def parallel(self, todo: int, workers: int, cores: int) -> dict:
        return {"jobs": cores}

    def build(self, schedule: Schedule, unit: Unit, arch: str, jobs: int | None = None, **parallel) -> Artifact:
        t0 = time.perf_counter()
        low, cfg = lower(schedule), self._config(schedule, arch)
        parts = parts_for(low, jobs or settings().jobs)
        printed = [0]

        def texts():  # counted as the assembler takes them (kernel.stats.source_bytes)
            for text in emit_parts(low, cfg, parts):
                printed[0] += len(text)
                yield text

        result = binutils.assemble_and_link(texts(), name=unit.kernel_name)
        info = {"backend": "cpu", "isa": arch, "assembler": binutils.versions(), "v": cfg.v, "rows": cfg.rows, "bcast": cfg.bcast,
                "functions": len(group_blocks(low, cfg)), "parts": parts, "asm_bytes": printed[0], "registers": None,
                "spill_stores": None, "spill_loads": None, "code_bytes": len(result.output),
                "compile_seconds": time.perf_counter() - t0}
        return Artifact(binary=result.output, info=info)

    def launcher(self, kernel):
        from .launch import CpuLauncher

        return CpuLauncher(kernel)


class NativeHost:
    """run_host of a CPU kernel: the kernel itself (it already runs on this host)."""

    name = "cpu"
    target = "cpu"

    def available(self) -> str | None:
        return None

    def launcher(self, kernel):
        from .launch import CpuLauncher

        return CpuLauncher(kernel)


def check_runnable(arch: str) -> None:
    if not runnable(arch):
        raise OptionsError(f"arch={arch!r}: this CPU cannot run {arch} code (it has {', '.join(supported()) or 'neither'})")
