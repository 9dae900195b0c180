"""Planning: deal every nonzero of A to a (block, group), SparseRT-style, into a `Schedule`.

Target-neutral: the schedule's parameters (threads_x, vec, groups, rows_per_block, prefetch) are
chosen by the backend that will build it (Backend.parameters, within its hardware limits) and
passed in; this module only partitions the work.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from ..errors import OptionsError, WeightError
from ..options import KernelOptions
from .precision import round_bias, round_weights
from .schedule import BlockWork, ConvGeometry, GroupWork, Schedule


@dataclass(frozen=True)
class Parameters:
    """A backend's choice of schedule parameters (explicit options always win)."""

    threads_x: int
    vec: int
    groups: int
    rows_per_block: int
    prefetch: int

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return self.threads_x, self.vec, self.groups, self.rows_per_block, self.prefetch


def deal_rows(row_nnz: np.ndarray, blocks: int, capacity: int) -> list[list[int]]:
    """Deal rows to blocks largest-first onto the lightest block with room (LPT with capacity).

    Deterministic: ties break on row index, then block index.
    """
    order = sorted(range(len(row_nnz)), key=lambda r: (-int(row_nnz[r]), r))
    heap = [(0, b) for b in range(blocks)]
    assigned: list[list[int]] = [[] for _ in range(blocks)]
    for r in order:
        load, b = heapq.heappop(heap)
        assigned[b].append(r)
        if len(assigned[b]) < capacity:
            heapq.heappush(heap, (load + int(row_nnz[r]), b))
    return [sorted(rows) for rows in assigned if rows]


def split_groups(k: np.ndarray, groups: int) -> np.ndarray:
    """Cut points (len groups+1) over nonzeros sorted by k, balancing nonzero counts on k boundaries."""
    total = len(k)
    cuts = [0]
    for g in range(1, groups):
        target = (total * g) // groups
        # never split one k between groups: B[k] is loaded once per group that touches it
        cut = int(np.searchsorted(k, k[target], side="left")) if target < total else total
        cuts.append(max(cut, cuts[-1]))
    cuts.append(total)
    return np.asarray(cuts)


def _fill(block_nnz: list[int], limit: int) -> list[tuple[int, int]]:
    """Greedy: each range takes blocks while it stays within `limit` (a bigger block: alone)."""
    slabs, start, acc = [], 0, 0
    for i, nnz in enumerate(block_nnz):
        if i > start and acc + nnz > limit:
            slabs.append((start, i))
            start, acc = i, 0
        acc += nnz
    slabs.append((start, len(block_nnz)))
    return slabs


def split_slabs(block_nnz: list[int], max_slab_nnz: int) -> tuple[tuple[int, int], ...]:
    """Contiguous block ranges of at most max_slab_nnz (weighted) nonzeros, at least one block
    each: as few ranges as the budget allows, as even as possible (the smallest limit that still
    needs no more ranges), so slabs built side by side finish together."""
    fewest = len(_fill(block_nnz, max_slab_nnz))
    lo, hi = max(1, -(-sum(block_nnz) // fewest)), max_slab_nnz
    while lo < hi:  # the greedy count only falls as the limit rises: bisect on it
        mid = (lo + hi) // 2
        if len(_fill(block_nnz, mid)) <= fewest:
            hi = mid
        else:
            lo = mid + 1
    return tuple(_fill(block_nnz, min(lo, max_slab_nnz)))


def plan(
    matrix: sp.csr_matrix,
    opts: KernelOptions,
    *,
    parameters,
    bias: np.ndarray | None = None,
    weight_digest: str,
    max_slab_nnz: int,
    batch: int = 1,
    batch_stride_b: int = 0,
    batch_stride_c: int = 0,
    extra: tuple[tuple[str, str], ...] = (),
    conv: ConvGeometry | None = None,
) -> Schedule:
    """Build the schedule for a canonical float32 CSR matrix (see frontend.weights.load_weight);
    `parameters` is the building backend's Backend.parameters."""
    m, k = matrix.shape
    if conv is not None:
        if (conv.k, conv.n) != (k, opts.n):
            raise OptionsError(f"conv: geometry gives an im2col of {conv.k} x {conv.n} but the weight "
                               f"has K={k} and n={opts.n}")
        if opts.packed and opts.target != "cpu":  # the CPU pairs rows of K, not columns
            raise OptionsError(f"accumulate={opts.accumulate!r}: packed half arithmetic needs two columns per "
                               f"thread, but a virtual im2col (conv) operand is read one column per thread; "
                               f"use accumulate='float32' (half loads, fp32 arithmetic)")
        if opts.vec not in (None, 1):
            raise OptionsError(f"vec={opts.vec}: a virtual im2col operand is read one column per "
                               f"thread; use vec=1")
        opts = replace(opts, vec=1)
    # `parameters(m, k, nnz, opts, batch)` -> Parameters: the backend's choice (explicit options win)
    threads_x, vec, groups, rows_per_block, prefetch = parameters(m, k, matrix.nnz, opts, batch=batch).as_tuple()
    bias_bits = None
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (m,):
            raise WeightError(f"bias: expected shape ({m},) for a weight with M={m} rows, got {bias.shape}")
        bias = bias.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(bias))
        if bad.size:
            raise WeightError(f"bias: non-finite value {bias[bad[0]]} at index {bad[0]}; bias must be finite")
        bias = round_bias(bias, opts.dtype)  # the bias is in the activations' dtype
        bias_bits = tuple(int(b) for b in bias.view(np.uint32))

    accumulate = opts.accumulate or "float32"
    if accumulate != "float32":  # packed half: the weights as the HFMA2 multiplies them (RNE)
        matrix = round_weights(matrix, accumulate)
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    row_nnz = np.diff(indptr)
    n_blocks = -(-m // rows_per_block)
    blocks = []
    for rows in deal_rows(row_nnz, n_blocks, rows_per_block):
        ks, slots, vals = [], [], []
        for slot, r in enumerate(rows):
            lo, hi = indptr[r], indptr[r + 1]
            ks.append(indices[lo:hi])
            slots.append(np.full(hi - lo, slot, dtype=np.int32))
            vals.append(data[lo:hi])
        kk = np.concatenate(ks).astype(np.int32) if ks else np.zeros(0, np.int32)
        ss = np.concatenate(slots) if slots else np.zeros(0, np.int32)
        vv = np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
        order = np.lexsort((ss, kk))
        kk, ss, bits = kk[order], ss[order], vv[order].view(np.uint32)
        cuts = split_groups(kk, groups)
        work = tuple(
            GroupWork(kk[a:b].tobytes(), ss[a:b].tobytes(), bits[a:b].tobytes())
            for a, b in zip(cuts[:-1], cuts[1:])
        )
        blocks.append(BlockWork(rows=tuple(rows), groups=work))

    slab_budget = opts.max_slab_nnz or max_slab_nnz
    return Schedule(
        m=m, k=k, n=opts.n, threads_x=threads_x, vec=vec, groups=groups,
        rows_per_block=rows_per_block, blocks=tuple(blocks),
        # The budget counts FFMAs (nnz x vec): the assembler's time follows the unrolled code.
        slabs=split_slabs([b.nnz * vec for b in blocks], slab_budget),
        bias_bits=bias_bits, relu=opts.relu, residual=opts.residual,
        weight_digest=weight_digest, batch=batch, batch_stride_b=batch_stride_b,
        batch_stride_c=batch_stride_c, extra=extra, conv=conv, prefetch=prefetch,
        dtype=opts.dtype, accumulate=accumulate, bcast=opts.bcast, chunk=opts.chunk,
    )
