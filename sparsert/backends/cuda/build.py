"""Building CUDA units: the PTX backend's slab (relocatable objects, ptxas in parallel, nvlink)
and the NVRTC backend's CUDA C++ unit.

'ptx' (default where ptxas and nvlink are installed): ptx_objects writes the slab as relocatable
PTX objects (a function per thread block, and the entry), ptxas assembles them in parallel and
nvlink links them into one CUBIN. No NVVM: about half of NVRTC's time goes there. A warm cache
renders nothing (the key is the schedule's digest + slab + the backend's code hash).
'nvrtc': the CUDA C++ unit through NVRTC (NVVM + ptxas in-process).

A PTX slab splits into as many objects as there are cores (ptx_objects.object_parts), and one
semaphore (`gate`) keeps the ptxas processes of all slabs being built to `jobs`, so a kernel of
one slab uses every core too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ...errors import ToolchainError
from ...ir.schedule import Schedule
from ...toolchain.nvrtc import compile_cuda
from ...toolchain.process import shutdown_pool
from ...toolchain.ptxas import assemble, link
from ..base import Artifact, Unit
from .limits import MAX_REGISTERS_PER_THREAD
from .params import register_cap
from .ptx_objects import (
    entry_object,
    function_objects,
    function_spills,
    join_objects,
    object_parts,
    replacement_object,
    sample_blocks,
)

NVRTC_OPTIONS = ("--ftz=false", "--prec-div=true", "--fmad=true")  # exact IEEE; FMA contraction on
# -Ofast-compile=min: ptxas keeps the emitter's software-pipelined order of loads (at -O3 it
# re-sinks them: median load-to-use 22-26 SASS instructions instead of 111-112) and assembles in
# 65-78% of the -O3 time, with the same instructions (benchmarks/results/compile_probe.md).
PTXAS_OPTIONS = ("-Ofc", "min")


def build_nvrtc(unit: Unit, arch: str, options: Sequence[str] = NVRTC_OPTIONS) -> Artifact:
    if "#include <cuda_" in unit.source:  # half precision: cuda_fp16.h / cuda_bf16.h
        from ...toolchain.locate import find_cuda_include

        include = find_cuda_include()
        if include is None:
            raise ToolchainError("cuda_fp16.h not found (half-precision kernels need the CUDA headers for "
                                 "NVRTC: pip install nvidia-cuda-runtime, or set CUDA_HOME)")
        options = (*options, f"--include-path={include}")
    r = compile_cuda(unit.source, arch=arch, name=f"{unit.kernel_name}.cu", options=tuple(options))
    return Artifact(binary=r.output, info={
        "registers": r.registers, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads,
        "compile_seconds": r.seconds, "log": r.log, "backend": "nvrtc"})


class PtxSlabBuild:
    """One slab of the PTX backend: its objects assembled under their caps, refits, nvlink."""

    def __init__(self, schedule: Schedule, unit: Unit, arch: str, *, options: Sequence[str] = PTXAS_OPTIONS,
                 threads: int = 1, gate: threading.Semaphore | None = None, ptxas_threads: int | None = None):
        self.schedule = schedule
        self.unit = unit
        self.arch = arch
        self.options = tuple(options)
        # Objects assembled at once (ptx_objects.object_parts), and the semaphore that bounds
        # ptxas processes across every slab being built. They change the time and the ELF
        # layout, not the functions' code (not keyed).
        self.threads = threads
        self.ptxas_threads = ptxas_threads or threads  # --split-compile budget of this slab's objects together
        self.gate = gate or threading.Semaphore(max(1, threads))

    def _assemble(self, obj, split: int = 1):
        """One relocatable object, under its cap, on `split` ptxas threads (--split-compile: its
        functions in parallel); at most `gate` ptxas processes run at once."""
        options = (self.options + ("-c",) + (("-maxrregcount", str(obj.max_registers)) if obj.max_registers else ())
                   + (("--split-compile", str(split)) if split > 1 else ()))
        with self.gate:
            return assemble(obj.source, arch=self.arch, name=f"{obj.name}.ptx", options=options)

    def build(self) -> Artifact:
        """The slab as relocatable objects (ptx.py). A big slab first assembles a sample of its
        biggest functions alone, each one occupancy step higher at a time until it fits; the
        highest cap they need holds for the other objects. Then the function objects, then each
        function that still spills alone, stepping up the same way, as a renamed copy the entry
        calls (nvlink drops the spilling one), then nvlink. The entry is assembled beside the
        functions, betting on no refit; a refit assembles it again."""
        s, arch, index = self.schedule, self.arch, self.unit.index
        base = register_cap(s)
        rendered = 0.0

        def render(fn, *args):
            nonlocal rendered
            t0 = time.perf_counter()
            out = fn(*args)
            rendered += time.perf_counter() - t0
            return out

        def fit(make, cap: int):
            """Assemble make(cap), one occupancy step higher while it spills; (cap, object, result, runs)."""
            runs = []
            while True:
                obj = render(make, cap)
                r = self._assemble(obj)
                runs.append(r)
                if not (r.spill_stores or r.spill_loads) or cap >= MAX_REGISTERS_PER_THREAD:
                    return cap, obj, r, runs
                cap = register_cap(s, at_least=cap + 1)

        sample = sample_blocks(s, index)
        groups = object_parts(s, index, self.threads, exclude=sample)
        split = max(1, self.ptxas_threads // max(1, len(groups) + len(sample)))  # fewer objects than cores
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(groups) + len(sample) + 1)))
        failure: BaseException | None = None
        try:
                entry = render(entry_object, s, arch, index)
                entry_job = pool.submit(self._assemble, entry)
                fits = list(pool.map(lambda b: fit(lambda c: function_objects(s, arch, index, [(c, (b,))])[0], base),
                                     sample))
                cap = max([base] + [c for c, *_ in fits])
                rest = render(function_objects, s, arch, index, [(cap, g) for g in groups])
                rest_results = list(pool.map(lambda o: self._assemble(o, split), rest))
                spills = sorted({i for r in rest_results for i in function_spills(r.log)})
                refits = list(pool.map(lambda b: (b, fit(lambda c: replacement_object(s, arch, index, b, c),
                                                         register_cap(s, at_least=cap + 1))), spills))
                entry_r = entry_job.result()
        except BaseException as exc:  # an interrupt: kill the ptxas runs, start no more
            failure = exc
            raise
        finally:
            shutdown_pool(pool, failure)
        objects = tuple(o for _, o, _, _ in fits) + rest
        results = [r for _, _, r, _ in fits] + rest_results
        replaced = {b: c for b, (c, *_) in refits}
        runs = [x for *_, rs in fits for x in rs] + rest_results + [x for _, (*_, rs) in refits for x in rs] + [entry_r]
        if replaced:
            entry = render(entry_object, s, arch, index, replaced)
            entry_r = self._assemble(entry)
            runs.append(entry_r)
        final = list(zip(objects, results)) + [(o, r) for _, (_, o, r, _) in refits] + [(entry, entry_r)]
        linked = link([(o.name, r.output) for o, r in final], arch=arch, name=f"{self.unit.kernel_name}.cubin")
        # spills left in the kernel: only a fit that reached 255 registers can still spill (every
        # other function that spilled was refit, and nvlink drops its spilling original)
        left = [r for _, (_, _, r, _) in refits] + [r for _, _, r, _ in fits]
        stores = sum(r.spill_stores or 0 for r in left)
        loads = sum(r.spill_loads or 0 for r in left)
        log = "".join(r.log for r in runs) + linked.log
        info = {"registers": linked.registers, "spill_stores": stores, "spill_loads": loads,
                "compile_seconds": sum(r.seconds for r in runs) + linked.seconds, "log": log,
                "backend": "ptx", "render_seconds": rendered,
                "ptx_bytes": len(join_objects([o for o, _ in final])),  # as kernel.ptx shows them
                "register_cap": base, "sample": list(sample),
                "objects": [[o.max_registers, list(o.blocks)] for o in objects],
                "replaced": sorted([b, c] for b, c in replaced.items()),  # JSON: no int keys
                "refits": sum(len(rs) for _, (*_, rs) in refits),
                "sample_runs": sum(len(rs) for *_, rs in fits),
                "ptxas_runs": len(runs), "threads": self.threads, "split_compile": split}
        return Artifact(binary=linked.output, info=info)
