"""The `sparsify` entry point: check the options, deep-copy the model, trace one forward of the
example input to record each layer's input shapes, choose the layers (select.py), build their
sparse modules, compile the recorded geometries in parallel (with progress), put the sparse
modules in place of the dense ones and attach the report."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
from torch import nn

from ...config import settings
from ...errors import OptionsError, SparsertError
from .modules import SparseConv2d, SparseLinear, _SparseModule
from .report import LayerReport, SparsifyReport
from .select import _Candidate, _candidates, _select
from .tensors import BACKENDS, _weight_sparsity


def _run_example(model: nn.Module, example_input, cands: list[_Candidate]) -> None:
    """One forward of the example (no grad, eval mode, then restored) recording layer inputs."""
    def hook_for(cand):
        def hook(_module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                cand.bad_input = f"input is a {type(x).__name__}, not a tensor"
            elif x.dtype != _module.weight.dtype:
                cand.bad_input = (f"input dtype {x.dtype}; the weight is {_module.weight.dtype} "
                                  f"(a sparse layer runs in its weight's dtype)")
            elif tuple(x.shape) not in cand.inputs:
                cand.inputs.append(tuple(x.shape))
        return hook

    handles = [c.module.register_forward_pre_hook(hook_for(c)) for c in cands]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()  # batch-norm statistics must not move, dropout need not run
        with torch.no_grad():
            if isinstance(example_input, Mapping):
                model(**example_input)
            elif isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag


def _key(module: _SparseModule, shape: tuple[int, ...]):
    if isinstance(module, SparseLinear):
        return math.prod(shape[:-1])
    n, _, h, w_ = (1, *shape) if len(shape) == 3 else shape
    return n, h, w_


def _progress_callback(progress, total: int):
    """(update(name), close()) for progress=True (tqdm, else one stderr line), False or a callable."""
    if callable(progress):
        done = [0]

        def update(name):
            done[0] += 1
            progress(done[0], total, name)
        return update, lambda: None
    if not progress or total == 0:
        return (lambda name: None), (lambda: None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        done = [0]

        def update(name):
            done[0] += 1
            sys.stderr.write(f"\rsparsert: compiled {done[0]}/{total} kernels ({name})"
                             + ("\n" if done[0] == total else ""))
            sys.stderr.flush()
        return update, lambda: None
    bar = tqdm(total=total, desc="sparsert compile", unit="kernel")

    def update(name):
        bar.set_postfix_str(name, refresh=False)
        bar.update(1)
    return update, bar.close


def _on_cuda(example_input) -> bool:
    """Is the first tensor of the example input on a CUDA device?"""
    values = (example_input.values() if isinstance(example_input, Mapping) else
              example_input if isinstance(example_input, (tuple, list)) else (example_input,))
    return any(isinstance(v, torch.Tensor) and v.is_cuda for v in values)


def sparsify(model: nn.Module, example_input, min_sparsity: float = 0.5, *, backend: str = "auto",
             arch: str | None = None, jobs: int | None = None, progress=True, exclude=(),
             contiguous_output: bool = False, use_cache: bool = True) -> nn.Module:
    """A deep copy of `model` whose nn.Linear / nn.Conv2d layers with weight sparsity >=
    min_sparsity run as sparsert kernels; every other layer is untouched.

    example_input: what `model` is called with (a tensor, a tuple of positional arguments or a
    dict of keyword arguments); one forward of it records each layer's input shape, and those
    kernels are compiled now (in parallel, through the disk cache); other shapes compile lazily.
    backend: "cuda" (kernels on the GPU, zero-copy, on torch's current stream), "cpu" (the CPU
    target: x86 code with the weights baked in, on the CPU's cores), "host" (the CUDA kernels run
    on the CPU by the emulator: slow; to check numbers without a GPU), or "auto" (default: "cuda"
    for a model fed CUDA tensors, else "cpu"). progress: True (a
    bar), False, or a callable(done, total, layer_name). exclude: layer-name globs to leave dense.
    Each layer keeps its dtype: float32, float16 and bfloat16 weights compile kernels of that
    dtype (half: fp32 accumulation, README "Half precision"), which take inputs of that dtype
    only; a model may mix them. The result's `sparsert_report` lists every Linear/Conv2d layer,
    its dtype, compiled or skipped and why.
    """
    if not isinstance(model, nn.Module):
        raise OptionsError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise OptionsError(f"backend={backend!r}: expected one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        backend = "cuda" if _on_cuda(example_input) else "cpu"
    if (isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float))
            or not 0.0 <= min_sparsity <= 1.0):
        raise OptionsError(f"min_sparsity={min_sparsity!r}: expected a fraction in [0, 1]")
    if isinstance(exclude, str):
        exclude = (exclude,)
    model = copy.deepcopy(model)
    cands = _candidates(model)
    _run_example(model, example_input, cands)

    tasks = []
    for cand in cands:
        cand.reason = _select(cand, min_sparsity, exclude, backend)
        if cand.reason:
            continue
        kind = SparseLinear if isinstance(cand.module, nn.Linear) else SparseConv2d
        extra = {"contiguous_output": contiguous_output} if kind is SparseLinear else {}
        try:
            cand.sparse = kind(cand.module, backend=backend, arch=arch, name=cand.name,
                               use_cache=use_cache, **extra)
        except SparsertError as e:
            cand.reason = str(e)
            continue
        keys = dict.fromkeys(_key(cand.sparse, shape) for shape in cand.inputs)  # [2,3,in] ~ [6,in]
        tasks += [(cand, key) for key in keys]
    _compile_all(tasks, jobs, progress)

    for cand in cands:
        if cand.sparse is not None and not cand.reason:
            for parent, attr in cand.refs:
                setattr(parent, attr, cand.sparse)
    report = SparsifyReport(backend=backend, min_sparsity=float(min_sparsity), layers=tuple(
        LayerReport(name=c.name, kind="Linear" if isinstance(c.module, nn.Linear) else "Conv2d",
                    shape=tuple(c.module.weight.shape), sparsity=_weight_sparsity(c.module.weight),
                    compiled=not c.reason, reason=c.reason, inputs=tuple(c.inputs),
                    kernels=len(c.sparse.kernels) if c.sparse is not None and not c.reason else 0,
                    compile_seconds=round(c.seconds, 3),
                    dtype=str(c.module.weight.dtype).removeprefix("torch."))
        for c in cands))
    model.sparsert_report = report
    return model


def _compile_all(tasks: list, jobs: int | None, progress) -> None:
    """Compile every (candidate, key) in parallel; a failure skips that layer with its message."""
    if not tasks:
        return
    jobs = max(1, min(jobs or settings().jobs, len(tasks)))
    inner = jobs if len(tasks) == 1 else 1  # one big layer: parallel slabs instead
    update, close = _progress_callback(progress, len(tasks))

    def build(cand, key):
        t0 = time.perf_counter()
        cand.sparse.kernel_for(key, jobs=inner)
        return time.perf_counter() - t0

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build, c, k): c for c, k in tasks}
            for fut in as_completed(futures):
                cand = futures[fut]
                try:
                    cand.seconds += fut.result()
                except SparsertError as e:
                    cand.reason = f"compile failed: {str(e).splitlines()[0]}"
                update(cand.name)
    finally:
        close()
