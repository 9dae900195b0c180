"""The tuner's search space: schedule parameters within the CUDA limits (backends/cuda/limits.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..backends.cuda.limits import (
    MAX_REGISTERS_PER_THREAD,
    MAX_THREADS_PER_BLOCK,
    REGISTER_FILE,
    SHARED_MEMORY_BYTES,
)
from ..backends.cuda.params import choose_parameters, choose_prefetch
from ..choices import VECTOR_WIDTHS
from ..errors import OptionsError
from ..options import KernelOptions

REGISTERS_PER_BLOCK = REGISTER_FILE
MAX_ACCUMULATORS = 128  # rows_per_block * vec accumulators per thread: beyond this ptxas spills
# Registers besides the accumulators: vec B values, addresses, indices (a rough, conservative guess;
# the compiled kernel's real count and spills are checked after ptxas).
OVERHEAD_REGISTERS = 24

THREADS_X = (8, 16, 32, 64, 128, 256)
GROUPS = (1, 2, 4, 8)
ROWS_PER_BLOCK = (1, 2, 4, 8, 16, 32, 64, 128)
PREFETCH = (4, 8, 16, 32)  # rows of B in flight per thread (PTX backend's software pipelining)
MAX_PREFETCH_REGISTERS = 32  # prefetch * vec
SCHEDULE_FIELDS = ("threads_x", "vec", "groups", "rows_per_block", "prefetch")

Params = tuple[int, int, int, int, int]  # (threads_x, vec, groups, rows_per_block, prefetch)


def estimated_registers(vec: int, rows_per_block: int, prefetch: int = 1) -> int:
    return rows_per_block * vec + prefetch * vec + OVERHEAD_REGISTERS


def violates(p: Params, *, m: int, k: int, n: int) -> str | None:
    """Why a parameter tuple is infeasible for an M x K weight at this N, or None if it fits."""
    tx, vec, groups, rows, prefetch = p
    threads = tx * groups
    if n % vec:
        return f"vec={vec} does not divide n={n}"
    if threads > MAX_THREADS_PER_BLOCK:
        return f"{threads} threads per block > {MAX_THREADS_PER_BLOCK}"
    if rows * vec > MAX_ACCUMULATORS:
        return f"{rows * vec} accumulators per thread > {MAX_ACCUMULATORS}"
    if groups > 1 and groups * rows * tx * vec * 4 > SHARED_MEMORY_BYTES:
        return f"{groups * rows * tx * vec * 4} bytes of shared memory > {SHARED_MEMORY_BYTES}"
    if prefetch * vec > MAX_PREFETCH_REGISTERS:
        return f"{prefetch} rows x vec {vec} of B in flight > {MAX_PREFETCH_REGISTERS} registers"
    regs = estimated_registers(vec, rows, prefetch)
    if regs > MAX_REGISTERS_PER_THREAD or regs * threads > REGISTERS_PER_BLOCK:
        return f"~{regs} registers x {threads} threads > {REGISTERS_PER_BLOCK} per block"
    return None


def _values(pinned: int | None, choices: Sequence[int], useful: Callable[[int], bool]) -> list[int]:
    return [pinned] if pinned is not None else [c for c in choices if useful(c)]


def search_space(m: int, k: int, opts: KernelOptions, include: Sequence[Params] = ()) -> list[Params]:
    """Every feasible (threads_x, vec, groups, rows_per_block, prefetch), pinned fields of `opts` kept,
    plus the feasible tuples of `include` (the planner's default may use e.g. groups=3).

    Beyond the hard limits, values that can only waste work are left out: a tile of N much wider
    than N (idle threads), more rows per block than M has.
    """
    n = opts.n
    # packed half does two columns per HFMA2: an odd vec is refused by KernelOptions, not searched
    vecs = _values(opts.vec, VECTOR_WIDTHS, lambda v: n % v == 0 and not (opts.packed and v % 2))
    rows = _values(opts.rows_per_block, ROWS_PER_BLOCK, lambda r: r == 1 or r < 2 * m)
    groups = _values(opts.groups, GROUPS, lambda g: g <= k)
    depths = _values(opts.prefetch, PREFETCH, lambda d: True)
    space = []
    for vec in vecs:
        txs = _values(opts.threads_x, THREADS_X,
                      lambda t, v=vec: t == THREADS_X[0] or t * v < 2 * n)  # >= half the lanes busy
        for tx in txs:
            for g in groups:
                for r in rows:
                    for d in depths:
                        p = (tx, vec, g, r, d)
                        if violates(p, m=m, k=k, n=n) is None:
                            space.append(p)
    extra = [tuple(p) for p in include if violates(tuple(p), m=m, k=k, n=n) is None]
    return sorted(set(space) | set(extra))  # type: ignore[arg-type]


def default_params(m: int, k: int, nnz: int, opts: KernelOptions) -> Params | None:
    try:
        tx, vec, groups, rows = choose_parameters(m, k, nnz, opts)
    except OptionsError:
        return None
    return tx, vec, groups, rows, choose_prefetch(vec, opts)


def as_options(opts: KernelOptions, p: Params) -> KernelOptions:
    return replace(opts, **dict(zip(SCHEDULE_FIELDS, p)))
