"""Compile rendered units to binaries, through the cache (try_load / build / load, Triton-style).

Three ways to build a unit (one slab):

* 'ptx' (CUDA, default where ptxas and nvlink are installed): ptx.py writes the slab as relocatable PTX
  objects (a function per thread block, and the entry), ptxas assembles them in parallel and
  nvlink links them into one CUBIN. No NVVM: about half of NVRTC's time goes there. Its cache key
  is the schedule's digest + slab index + the emitter's own hash, so a warm cache renders nothing.
* 'nvrtc' (CUDA): the CUDA C++ unit through NVRTC (NVVM + ptxas in-process).
* 'hipcc' (HIP): the HIP unit through hipcc.

Slabs build in parallel in a thread pool of `jobs` workers (SPARSERT_JOBS, default: the cores).
ptxas and hipcc are subprocesses, so threads run them truly in parallel without pickling slabs
across processes; NVRTC runs through ctypes with the GIL released, though it serialises partly
inside (measured 1.4x with 2 threads; benchmarks/COMPILE_TIME.md). A PTX slab splits into as
many objects as there are cores (ptx.object_parts), and one semaphore keeps the ptxas processes
of all slabs to `jobs`, so a kernel of one slab uses every core too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from . import __version__
from .cache import KernelCache, cache_key
from .config import settings
from .errors import OptionsError
from .plan import MAX_REGISTERS_PER_THREAD, Schedule
from .render import Unit

NVRTC_OPTIONS = ("--ftz=false", "--prec-div=true", "--fmad=true")  # exact IEEE; FMA contraction on
# -Ofast-compile=min: ptxas keeps the emitter's software-pipelined order of loads (at -O3 it
# re-sinks them: median load-to-use 22-26 SASS instructions instead of 111-112) and assembles in
# 65-78% of the -O3 time, with the same instructions (benchmarks/results/compile_probe.md).
PTXAS_OPTIONS = ("-Ofc", "min")
BACKENDS = ("ptx", "nvrtc")


@dataclass(frozen=True)
class Artifact:
    binary: bytes
    info: dict = field(hash=False)
    cached: bool = False


def compiler_version(target: str, backend: str = "nvrtc") -> str:
    if target != "cuda":
        from .hipcc import hipcc_version

        return hipcc_version()
    if backend == "ptx":
        from .ptxas import nvlink_version, ptxas_version

        return f"{ptxas_version()} + {nvlink_version()}"
    from .nvrtc import nvrtc_version

    return "nvrtc %d.%d" % nvrtc_version()


def preferred_backend(target: str, backend: str | None = None) -> str:
    """The backend resolve_backend() picks where the PTX emitter can render the schedule, known
    before planning (the slab budget depends on it). Raises OptionsError on an unknown choice."""
    if target != "cuda":
        return "hipcc"
    choice = backend or settings().backend
    if choice not in ("auto", *BACKENDS):
        raise OptionsError(f"backend={choice!r}: expected one of auto, {', '.join(BACKENDS)}")
    if choice == "auto":
        from .ptxas import find_nvlink, find_ptxas

        return "ptx" if find_ptxas() is not None and find_nvlink() is not None else "nvrtc"
    return choice


def resolve_backend(target: str, backend: str | None = None, *, schedule: Schedule | None = None) -> str:
    """The build path for `target`: 'hipcc' for HIP; for CUDA the requested backend, else
    SPARSERT_BACKEND; 'auto' picks 'ptx' when ptxas and nvlink are installed and the PTX emitter can render
    the schedule passed in (SpMM and virtual-im2col convolutions), else 'nvrtc'."""
    kind = preferred_backend(target, backend)
    if kind != "ptx":
        return kind
    from .ptx import unsupported

    why = ("no schedule was passed (compile_units(..., schedule=))" if schedule is None
           else unsupported(schedule))
    if why is None:
        return kind
    if (backend or settings().backend) == "auto":
        return "nvrtc"
    raise OptionsError(f"backend='ptx' cannot build these units: {why}")


class UnitBuild:
    """One unit's compilation. `load()` is the entry point: cache hit, else build under a lock."""

    def __init__(self, unit: Unit, *, target: str, arch: str, cache: KernelCache | None,
                 backend: str = "nvrtc", schedule: Schedule | None = None,
                 options: Sequence[str] | None = None, threads: int = 1,
                 gate: threading.Semaphore | None = None):
        self.unit = unit
        # PTX backend: objects assembled at once (ptx.object_parts), and the semaphore that bounds
        # ptxas processes across every slab being built. They change the time and the ELF
        # layout, not the functions' code (not keyed).
        self.threads = threads
        self.ptxas_threads = threads  # --split-compile budget of this slab's objects together
        self.gate = gate or threading.Semaphore(max(1, threads))
        self.target = target
        self.arch = arch
        self.cache = cache
        self.backend = backend if target == "cuda" else "hipcc"
        self.schedule = schedule
        if self.backend == "ptx":
            if schedule is None:
                raise OptionsError("the PTX backend needs the schedule the unit was rendered from")
            from .ptx import emitter_digest
            from .render import kernel_base_name

            if not unit.kernel_name.startswith(kernel_base_name(schedule)):  # names carry the digest
                raise OptionsError(f"unit {unit.kernel_name} was not rendered from this schedule")
            self.options = tuple(PTXAS_OPTIONS if options is None else options)
            # The PTX is a pure function of (schedule, slab, arch, emitter): key on those, so a
            # warm cache costs no rendering either.
            what = {"schedule": schedule.digest, "slab": unit.index, "emitter": emitter_digest()}
        else:
            self.options = tuple(NVRTC_OPTIONS if options is None else options) if target == "cuda" else ()
            what = unit.source.encode()
        self.key = cache_key(
            source=what, target=target, arch=arch, options=list(self.options), backend=self.backend,
            compiler=compiler_version(target, self.backend), sparsert=__version__,
        )

    def try_load(self) -> Artifact | None:
        if self.cache is None:
            return None
        entry = self.cache.get(self.key)
        if entry is None:
            return None
        return Artifact(binary=entry.payload, info=entry.meta, cached=True)

    def build(self) -> Artifact:
        if self.backend == "ptx":
            return self._build_ptx()
        if self.backend == "nvrtc":
            from .nvrtc import compile_cuda

            r = compile_cuda(self.unit.source, arch=self.arch, name=f"{self.unit.kernel_name}.cu",
                             options=self.options)
            return Artifact(binary=r.cubin, info=self._info(r, "nvrtc"))
        from .hipcc import compile_hip

        r = compile_hip(self.unit.source, arch=self.arch, name=f"{self.unit.kernel_name}.hip")
        info = {"registers": None, "spill_stores": None, "spill_loads": None,
                "compile_seconds": r.seconds, "log": r.log, "backend": "hipcc"}
        return Artifact(binary=r.code_object, info=info)

    def _assemble(self, obj, split: int = 1):
        """One relocatable object, under its cap, on `split` ptxas threads (--split-compile: its
        functions in parallel); at most `gate` ptxas processes run at once."""
        from .ptxas import assemble

        options = (self.options + ("-c",) + (("-maxrregcount", str(obj.max_registers)) if obj.max_registers else ())
                   + (("--split-compile", str(split)) if split > 1 else ()))
        with self.gate:
            return assemble(obj.source, arch=self.arch, name=f"{obj.name}.ptx", options=options)

    def _build_ptx(self) -> Artifact:
        """The slab as relocatable objects (ptx.py). A big slab first assembles a sample of its
        biggest functions alone, each one occupancy step higher at a time until it fits; the
        highest cap they need holds for the other objects. Then the function objects, then each
        function that still spills alone, stepping up the same way, as a renamed copy the entry
        calls (nvlink drops the spilling one), then nvlink. The entry is assembled beside the
        functions, betting on no refit; a refit assembles it again."""
        from .ptx import (entry_object, function_objects, function_spills, join_objects, object_parts,
                          register_cap, replacement_object, sample_blocks)
        from .ptxas import link

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
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(groups) + len(sample) + 1))) as pool:
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
        objects = tuple(o for _, o, _, _ in fits) + rest
        results = [r for _, _, r, _ in fits] + rest_results
        replaced = {b: c for b, (c, *_) in refits}
        runs = [x for *_, rs in fits for x in rs] + rest_results + [x for _, (*_, rs) in refits for x in rs] + [entry_r]
        if replaced:
            entry = render(entry_object, s, arch, index, replaced)
            entry_r = self._assemble(entry)
            runs.append(entry_r)
        final = list(zip(objects, results)) + [(o, r) for _, (_, o, r, _) in refits] + [(entry, entry_r)]
        linked = link([(o.name, r.cubin) for o, r in final], arch=arch, name=f"{self.unit.kernel_name}.cubin")
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
        return Artifact(binary=linked.cubin, info=info)

    @staticmethod
    def _info(r, backend: str) -> dict:
        return {"registers": r.registers, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads,
                "compile_seconds": r.seconds, "log": r.log, "backend": backend}

    def load(self) -> Artifact:
        hit = self.try_load()
        if hit is not None:
            return hit
        if self.cache is None:
            return self.build()
        with self.cache.lock(self.key):
            hit = self.try_load()  # another process may have built it while we waited
            if hit is not None:
                return hit
            artifact = self.build()
            self.cache.put(self.key, artifact.binary, artifact.info)
            return artifact


Progress = Callable[[int, int, Artifact], None]
"""progress(done, total, artifact): called once per unit as it finishes (cached ones included)."""


def compile_units(units: Sequence[Unit], *, target: str, arch: str, use_cache: bool = True,
                  jobs: int | None = None, progress: Progress | None = None,
                  schedule: Schedule | None = None, backend: str | None = None) -> list[Artifact]:
    """Compile every unit (in parallel), returning artifacts in unit order.

    `schedule`: the Schedule the units were rendered from; the PTX backend renders from it.
    `backend`: 'ptx', 'nvrtc' or 'auto' for CUDA (None: SPARSERT_BACKEND); ignored for HIP.
    """
    s = settings()
    cache = KernelCache(s.cache_dir) if (use_cache and s.cache_enabled) else None
    kind = resolve_backend(target, backend, schedule=schedule)
    builds = [UnitBuild(u, target=target, arch=arch, cache=cache, backend=kind, schedule=schedule)
              for u in units]
    results: list[Artifact | None] = [None] * len(builds)
    # Cache hits first, in order, on this thread: a warm cache starts no pool and renders nothing.
    todo, done = [], 0
    for i, b in enumerate(builds):
        results[i] = b.try_load()
        if results[i] is None:
            todo.append(i)
            continue
        done += 1
        if progress:
            progress(done, len(builds), results[i])
    cores = max(1, jobs or s.jobs)
    jobs = max(1, min(cores, len(todo) or 1))
    if kind == "ptx":  # each slab fans its objects out to every core; one gate bounds ptxas runs,
        gate = threading.Semaphore(cores)  # and a slab's objects share the cores no other slab uses
        for i in todo:
            builds[i].threads, builds[i].gate, builds[i].ptxas_threads = cores, gate, max(1, cores // jobs)
    if jobs == 1:
        for i in todo:
            results[i] = builds[i].load()
            done += 1
            if progress:
                progress(done, len(builds), results[i])
    else:
        # Biggest slabs first, so the last worker to finish is not the one holding the giant.
        todo.sort(key=lambda i: -units[i].nnz)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(builds[i].load): i for i in todo}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                done += 1
                if progress:
                    progress(done, len(builds), results[futures[fut]])
    return [r for r in results if r is not None]
