"""The compiled kernel as a Python callable: device-neutral, holding its backend's launcher."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError, ToolchainError
from ..version import __version__
from .artifact import Artifact, Unit
from .stats import KernelStats

if TYPE_CHECKING:  # annotations only: the runtime sits below the IR
    from ..ir.schedule import Schedule


class SparseKernel:
    """C = epilogue(A @ B) for the fixed A it was compiled from.

    Device-neutral: `kernel(B)` runs through the launcher of the backend that built it (CUDA: the
    GPU); `kernel.run_host(B)` runs the same generated source on the CPU through the emulator.
    Both are handed in by the pipeline (runtime imports no backend).
    """

    def __init__(self, *, schedule: Schedule, units: tuple[Unit, ...], artifacts: list[Artifact],
                 target: str, arch: str, name: str, stats: KernelStats, backend, emulator=None):
        self.schedule = schedule
        self.units = units
        self.artifacts = artifacts
        self.target = target
        self.arch = arch
        self.name = name
        self.stats = stats
        self._backend = backend
        self._emulator = emulator
        self._launcher = None
        self._host = None
        self._rendered: tuple[Unit, ...] | None = None
        self._lock = threading.RLock()  # source_units() is also called under it (host_kernels)

    # -- inspection -----------------------------------------------------------------------

    def __repr__(self) -> str:  # the bulk (source, PTX, binaries, schedule) stays in attributes
        s, st = self.schedule, self.stats
        return (f"<SparseKernel {self.name!r}: {s.m}x{s.k} @ {s.k}x{s.n}, nnz={s.nnz}, target={self.target}, "
                f"arch={self.arch}, slabs={len(s.slabs)}, registers={st.registers}, dtype={s.dtype}>")
    @property
    def shape(self) -> tuple[int, int]:
        return self.schedule.m, self.schedule.k

    @property
    def n(self) -> int:
        return self.schedule.n

    def source_units(self) -> tuple[Unit, ...]:
        """The units with their source. A kernel built from the schedule itself (the PTX backend)
        was launched from sourceless units; their source is rendered here on first use."""
        if all(u.source for u in self.units):
            return self.units
        with self._lock:
            if self._rendered is None:
                self._rendered = self._backend.source_units(self.schedule, self.arch)
            return self._rendered

    @property
    def source(self) -> str:
        """The generated source; several slabs are concatenated, each a standalone unit."""
        return "\n".join(u.source for u in self.source_units())

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(u.source for u in self.source_units())

    @property
    def backend(self) -> str:
        """How the binaries were built: 'ptx' (PTX emitter + ptxas), 'nvrtc' or 'hipcc'."""
        return self._backend.name

    @property
    def ptx(self) -> tuple[str, ...] | None:
        """Per slab, the PTX objects its CUBIN was linked from (PTX backend), as one text: each
        object starts with a `// ==== object <name>.ptx: ptxas -c ...` line
        (backends.cuda.ptx_objects.split_objects); None for other backends. The CUDA `source`
        computes the same numbers bit for bit (tests/numerics)."""
        render = getattr(self._backend, "ptx", None)
        return None if render is None else render(self.schedule, self.arch, self.artifacts)

    def sass_stats(self):
        """SASS facts over all slabs (CUDA only): FFMA-immediates, registers, spills."""
        inspect = getattr(self._backend, "sass_stats", None)
        if inspect is None:
            raise ToolchainError(f"SASS inspection needs a CUDA kernel (this one targets {self.target})")
        return inspect(self.artifacts)

    def summary(self) -> dict:
        return {
            "name": self.name, "sparsert": __version__, "target": self.target, "arch": self.arch,
            "backend": self.backend,
            "schedule": self.schedule.params(), "stats": self.stats.as_dict(),
            "units": [{"kernel": u.kernel_name, "grid": list(u.grid), "block": list(u.block),
                       "nnz": u.nnz} for u in self.units],
        }

    def save(self, out_dir: str | Path, *, meta: dict | None = None) -> dict[str, Path]:
        """Write <name>.cu/.hip (+ _s<i> per slab), the binaries, the PTX they were assembled from
        (PTX backend) and <name>.json (with `meta` added). All files are written to a temporary
        folder first and moved into place, the .json last (runtime/files.py); a folder that cannot
        be written is an InputError naming it, before any file is touched."""
        from .files import write_files

        source_suffix, binary_suffix = self._backend.suffixes
        files: list[tuple[str, bytes]] = []
        entries = []
        ptx = self.ptx
        for i, (u, a) in enumerate(zip(self.source_units(), self.artifacts)):
            stem = self.name if len(self.units) == 1 else f"{self.name}_s{u.index}"
            entry = {"source": f"{stem}{source_suffix}", "binary": f"{stem}{binary_suffix}", "kernel": u.kernel_name}
            files += [(entry["source"], u.source.encode()), (entry["binary"], bytes(a.binary))]
            if ptx is not None:  # what the CUBIN was assembled from
                entry["ptx"] = f"{stem}.ptx"
                files.append((entry["ptx"], ptx[i].encode()))
            entries.append(entry)
        summary = self.summary() | (meta or {}) | {"files": entries}
        files.append((f"{self.name}.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()))
        written = write_files(out_dir, files)
        first = entries[0]
        paths = {"source": written[first["source"]], "binary": written[first["binary"]],
                 "json": written[f"{self.name}.json"]}
        if "ptx" in first:
            paths["ptx"] = written[first["ptx"]]
        return paths

    # -- running ----------------------------------------------------------------------------
    def _operand_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        s = self.schedule
        return (s.k, s.n), (s.m, s.n)

    def __call__(self, B, *, out=None, residual=None, threads: int | None = None):
        """C = epilogue(A @ B) through the backend's launcher (CUDA: on the caller's current
        stream, CuPy's or torch's for tensors; CPU: NumPy arrays or CPU tensors, on `threads`
        threads, default SPARSERT_CPU_THREADS or the physical cores)."""
        b_shape, c_shape = self._operand_shapes()
        return self._launch(B, b_shape, c_shape, out=out, residual=residual, threads=threads)

    def _launch(self, B, b_shape, c_shape, *, out=None, residual=None, threads: int | None = None):
        with self._lock:
            if self._launcher is None:
                self._launcher = self._backend.launcher(self)
        if threads is not None:
            if self.target != "cpu":
                raise InputError(f"threads={threads}: only CPU kernels take a thread count "
                                 f"(this one targets {self.target})")
            return self._launcher(B, b_shape, c_shape, out=out, residual=residual, threads=threads)
        return self._launcher(B, b_shape, c_shape, out=out, residual=residual)

    @property
    def asm(self) -> str:
        """The generated x86 assembly (CPU target): the same as `source`."""
        if self.target != "cpu":
            raise ToolchainError(f"asm: only CPU kernels are x86 assembly (this one targets {self.target}: "
                                 f"see .source and .ptx)")
        return self.source

    def run_host(self, B: np.ndarray, *, residual: np.ndarray | None = None) -> np.ndarray:
        """Run the generated source on the CPU (the emulator: slow, the same code as the GPU's)."""
        b_shape, c_shape = self._operand_shapes()
        return self._run_host(B, b_shape, c_shape, residual=residual)

    def _run_host(self, B, b_shape, c_shape, *, residual=None) -> np.ndarray:
        if self._emulator is None:
            raise ToolchainError(f"run_host: kernels of target {self.target!r} have no host emulator")
        with self._lock:
            if self._host is None:
                self._host = self._emulator.launcher(self)
        return self._host(B, b_shape, c_shape, residual=residual)
