"""The compiled kernel as a Python callable: GPU launch (CuPy or PyTorch, zero-copy) and host run."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .compiler import Artifact
from .config import settings
from .dialect import dialect
from .errors import InputError, ToolchainError
from .plan import Schedule
from .render import Unit

# Streams a multi-slab kernel's launches spread over. 8 = CUDA's default number of hardware work
# queues (CUDA_DEVICE_MAX_CONNECTIONS): more streams would share queues and serialise anyway.
SLAB_LANES = 8


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
        else sum(int(a.info.get("ptx_bytes") or 0) for a in artifacts),
        binary_bytes=sum(len(a.binary) for a in artifacts),
        registers=_max_or_none(a.info.get("registers") for a in artifacts),
        spill_stores=_sum_or_none(a.info.get("spill_stores") for a in artifacts),
        spill_loads=_sum_or_none(a.info.get("spill_loads") for a in artifacts),
        plan_seconds=plan_s, render_seconds=render_s, compile_seconds=compile_s,
        compiler_seconds=sum(float(a.info.get("compile_seconds") or 0.0) for a in artifacts),
        cached_slabs=sum(a.cached for a in artifacts),
    )


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class SparseKernel:
    """C = epilogue(A @ B) for the fixed A it was compiled from.

    `kernel(B)` runs on the GPU; `kernel.run_host(B)` runs the same generated source on the CPU.
    """

    def __init__(self, *, schedule: Schedule, units: tuple[Unit, ...], artifacts: list[Artifact],
                 target: str, arch: str, name: str, stats: KernelStats):
        self.schedule = schedule
        self.units = units
        self.artifacts = artifacts
        self.target = target
        self.arch = arch
        self.name = name
        self.stats = stats
        self._modules: dict[int, list] = {}  # device id -> [cupy Function per unit]
        self._streams: dict[int, tuple] = {}  # device id -> slab lanes and their events
        self._host = None
        self._rendered: tuple[Unit, ...] | None = None
        self._lock = threading.RLock()  # source_units() is also called under it (host_kernels)

    # -- inspection -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.schedule.m, self.schedule.k

    @property
    def n(self) -> int:
        return self.schedule.n

    def source_units(self) -> tuple[Unit, ...]:
        """The CUDA/HIP units with their source. A kernel built from PTX was launched from
        sourceless units (render.launch_units); their source is rendered here on first use."""
        if all(u.source for u in self.units):
            return self.units
        with self._lock:
            if self._rendered is None:
                from .render import render

                self._rendered = render(self.schedule, self.target)
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
        kinds = {a.info.get("backend") for a in self.artifacts} - {None}
        return kinds.pop() if len(kinds) == 1 else ("hipcc" if self.target == "hip" else "nvrtc")

    @property
    def ptx(self) -> tuple[str, ...] | None:
        """Per slab, the PTX objects its CUBIN was linked from (PTX backend), as one text: each
        object starts with a `// ==== object <name>.ptx: ptxas -c ...` line (ptx.split_objects);
        None for other backends. The CUDA `source` computes the same numbers bit for bit
        (tests/test_compile_time.py)."""
        if self.backend != "ptx":
            return None
        from .ptx import render_ptx

        # the objects as compiler.py built them: its partition and caps, and the functions it refit
        return tuple(render_ptx(self.schedule, self.arch, slabs=(i,), layouts=[a.info.get("objects")],
                                replaced=[{b: c for b, c in a.info.get("replaced") or []}])[0].source
                     for i, a in enumerate(self.artifacts))

    def sass_stats(self):
        """SASS facts over all slabs (CUDA only): FFMA-immediates, registers, spills."""
        if self.target != "cuda":
            raise ToolchainError("SASS inspection needs a CUDA kernel (this one targets HIP)")
        from .sass import merge_stats, sass_stats

        return merge_stats([sass_stats(a.binary) for a in self.artifacts])

    def summary(self) -> dict:
        return {
            "name": self.name, "sparsert": __version__, "target": self.target, "arch": self.arch,
            "backend": self.backend,
            "schedule": self.schedule.params(), "stats": self.stats.as_dict(),
            "units": [{"kernel": u.kernel_name, "grid": list(u.grid), "block": list(u.block),
                       "nnz": u.nnz} for u in self.units],
        }

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write <name>.cu/.hip (+ _s<i> per slab), the binaries, the PTX they were assembled from
        (PTX backend) and <name>.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        d = dialect(self.target)
        paths: dict[str, Path] = {}
        files = []
        ptx = self.ptx
        for i, (u, a) in enumerate(zip(self.source_units(), self.artifacts)):
            stem = self.name if len(self.units) == 1 else f"{self.name}_s{u.index}"
            src = out / f"{stem}{d.suffix}"
            binf = out / f"{stem}{d.binary_suffix}"
            src.write_text(u.source)
            binf.write_bytes(a.binary)
            entry = {"source": src.name, "binary": binf.name, "kernel": u.kernel_name}
            if ptx is not None:  # what the CUBIN was assembled from
                (out / f"{stem}.ptx").write_text(ptx[i])
                entry["ptx"] = f"{stem}.ptx"
                paths.setdefault("ptx", out / entry["ptx"])
            files.append(entry)
            paths.setdefault("source", src)
            paths.setdefault("binary", binf)
        summary = self.summary() | {"files": files}
        meta = out / f"{self.name}.json"
        meta.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        paths["json"] = meta
        return paths

    # -- GPU ------------------------------------------------------------------------------
    def _functions(self, device_id: int):
        with self._lock:
            fns = self._modules.get(device_id)
            if fns is None:
                if self.target != "cuda":
                    raise ToolchainError(
                        "this kernel targets HIP: sparsert compiles HIP code objects but launches "
                        "only CUDA kernels; compile with target='cuda' to run it")
                import cupy

                from .nvrtc import device_arch

                dev_arch = device_arch()
                if dev_arch is not None and dev_arch.rstrip("af") != self.arch.rstrip("af"):
                    raise ToolchainError(
                        f"kernel was compiled for {self.arch} but the current GPU is {dev_arch}; "
                        f"recompile with arch={dev_arch!r} (or arch=None for the current device)")
                fns = []
                for u, a in zip(self.units, self.artifacts):
                    module = cupy.cuda.function.Module()
                    module.load(a.binary)
                    fns.append((module, module.get_function(u.kernel_name)))
                self._modules[device_id] = fns
            return [f for _, f in fns]

    def _check_operand(self, x, what: str, shape: tuple[int, ...]):
        """Validate a device operand and return a zero-copy CuPy view of it."""
        import cupy

        if _is_torch(x):
            import torch

            if not x.is_cuda:
                raise InputError(f"{what}: a CPU torch tensor; move it to the GPU (.cuda()) or "
                                 f"use kernel.run_host() for a CPU run")
            if x.dtype != torch.float32:
                raise InputError(f"{what}: dtype {x.dtype}; expected torch.float32")
            if x.requires_grad and torch.is_grad_enabled():
                raise InputError(f"{what}: requires grad; sparsert kernels are inference-only "
                                 f"(use torch.no_grad() or .detach())")
            if tuple(x.shape) != shape:
                raise InputError(f"{what}: shape {tuple(x.shape)}; expected {shape}")
            if not x.is_contiguous():
                raise InputError(f"{what}: not C-contiguous; call .contiguous() first")
            view = cupy.asarray(x.detach())
        elif isinstance(x, cupy.ndarray):
            if x.dtype != cupy.float32:
                raise InputError(f"{what}: dtype {x.dtype}; expected float32")
            if x.shape != shape:
                raise InputError(f"{what}: shape {x.shape}; expected {shape}")
            if not x.flags.c_contiguous:
                raise InputError(f"{what}: not C-contiguous; use cupy.ascontiguousarray()")
            view = x
        elif isinstance(x, np.ndarray):
            raise InputError(f"{what}: a NumPy (host) array; pass a CuPy array or a CUDA torch tensor, "
                             f"or use kernel.run_host() to run on the CPU")
        else:
            raise InputError(f"{what}: {type(x).__name__}; expected a CuPy array or a CUDA torch tensor")
        align = 4 * self.schedule.vec
        if view.data.ptr % align:
            raise InputError(f"{what}: data pointer not {align}-byte aligned, which this kernel's "
                             f"{self.schedule.vec}-wide vector loads need; pass a fresh contiguous copy")
        return view

    def _operand_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        s = self.schedule
        return (s.k, s.n), (s.m, s.n)

    def __call__(self, B, *, out=None, residual=None):
        """C = epilogue(A @ B) on the caller's current stream (CuPy's, or torch's for tensors)."""
        b_shape, c_shape = self._operand_shapes()
        return self._launch(B, b_shape, c_shape, out=out, residual=residual)

    def _launch(self, B, b_shape, c_shape, *, out=None, residual=None):
        import cupy

        torch_in = _is_torch(B)
        b = self._check_operand(B, "B", b_shape)
        device_id = b.device.id
        if self.schedule.residual and residual is None:
            raise InputError("residual: this kernel was compiled with residual=True; pass residual=")
        if not self.schedule.residual and residual is not None:
            raise InputError("residual: this kernel was compiled without residual; recompile with residual=True")
        if out is None:
            if torch_in:
                import torch

                out = torch.empty(c_shape, dtype=torch.float32, device=B.device)
            else:
                with cupy.cuda.Device(device_id):
                    out = cupy.empty(c_shape, dtype=cupy.float32)
        c = self._check_operand(out, "out", c_shape)
        args = [b, c]
        if residual is not None:
            args.append(self._check_operand(residual, "residual", c_shape))
        for name, arr in (("out", c), ("residual", args[2] if len(args) > 2 else None)):
            if arr is not None and arr.device.id != device_id:
                raise InputError(f"{name}: on GPU {arr.device.id} but B is on GPU {device_id}")
        if torch_in:
            import torch

            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(B.device).cuda_stream, device_id)
        else:
            stream = cupy.cuda.get_current_stream()
        with cupy.cuda.Device(device_id):
            self._launch_units(self._functions(device_id), tuple(args), stream, device_id)
        return out

    def _launch_units(self, fns, args: tuple, stream, device_id: int) -> None:
        """One launch per slab. Slabs write disjoint rows of C, so several run side by side: the
        caller's stream forks to up to SLAB_LANES streams (an event each way) and joins back, so
        whatever the caller enqueues next still runs after every slab."""
        if len(fns) == 1:
            u = self.units[0]
            fns[0](u.grid, u.block, args, stream=stream)
            return
        with self._lock:  # the fork/join events are shared by the calls of this kernel
            lanes, fork, joins = self._lanes(device_id, len(fns))
            fork.record(stream)
            for lane in lanes[1:]:
                lane.wait_event(fork)
            all_lanes = (stream, *lanes[1:])
            # biggest slabs first, dealt round-robin, so the lanes finish close together
            order = sorted(range(len(fns)), key=lambda i: -self.units[i].nnz)
            for j, i in enumerate(order):
                u = self.units[i]
                fns[i](u.grid, u.block, args, stream=all_lanes[j % len(all_lanes)])
            for lane, done in zip(lanes[1:], joins):
                done.record(lane)
                stream.wait_event(done)

    def _lanes(self, device_id: int, slabs: int):
        """(streams, fork event, join events) for this device, made once (lanes[0] stands for the
        caller's stream). Events are reusable: a wait applies to the latest record before it."""
        import cupy

        cached = self._streams.get(device_id)
        if cached is None:
            width = max(1, min(SLAB_LANES, slabs))
            side = [cupy.cuda.Stream(non_blocking=True) for _ in range(width - 1)]
            cached = ((None, *side), cupy.cuda.Event(disable_timing=True),
                      [cupy.cuda.Event(disable_timing=True) for _ in side])
            self._streams[device_id] = cached
        return cached

    # -- CPU (host) -----------------------------------------------------------------------
    def host_kernels(self):
        """The generated CUDA source, compiled for the CPU (see sparsert.host)."""
        from .host import HostKernel

        with self._lock:
            if self._host is None:
                params = ["const float*", "float*"] + (["const float*"] if self.schedule.residual else [])
                # g++ runs as a subprocess per slab: build them side by side
                with ThreadPoolExecutor(max_workers=max(1, min(settings().jobs, len(self.units)))) as pool:
                    self._host = list(pool.map(
                        lambda u: HostKernel.build(u.source, u.kernel_name, params, name=u.kernel_name),
                        self.source_units()))
            return self._host

    def run_host(self, B: np.ndarray, *, residual: np.ndarray | None = None) -> np.ndarray:
        """Run the generated kernel on the CPU: slow, exact same code path as the GPU's."""
        b_shape, c_shape = self._operand_shapes()
        return self._run_host(B, b_shape, c_shape, residual=residual)

    def _run_host(self, B, b_shape, c_shape, *, residual=None) -> np.ndarray:
        b = _host_operand(B, "B", b_shape)
        args = [b, np.zeros(c_shape, dtype=np.float32)]
        if self.schedule.residual:
            if residual is None:
                raise InputError("residual: this kernel was compiled with residual=True; pass residual=")
            args.append(_host_operand(residual, "residual", c_shape))
        elif residual is not None:
            raise InputError("residual: this kernel was compiled without residual; recompile with residual=True")
        for hk, u in zip(self.host_kernels(), self.units):
            hk.launch(u.grid, u.block, args)
        return args[1]


def _host_operand(x, what: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: {type(x).__name__}; run_host expects a NumPy array")
    if x.dtype != np.float32:
        raise InputError(f"{what}: dtype {x.dtype}; expected float32")
    if x.shape != shape:
        raise InputError(f"{what}: shape {x.shape}; expected {shape}")
    if not x.flags.c_contiguous or x.ctypes.data % 16:  # vector loads need 16-byte alignment
        x = np.array(x, dtype=np.float32, order="C", copy=True)
    return x
