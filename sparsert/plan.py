"""Planning: assign every nonzero of A to a (thread block, thread group), SparseRT-style.

The `Schedule` is the one IR between planning and rendering: frozen, hashable, and complete
(the renderer reads nothing else). Layout of the computation C = A @ B (A: M x K sparse, fixed):

* a thread owns `vec` consecutive columns of N; `threads_x` threads side by side cover a tile of
  `threads_x * vec` columns; blockIdx.y walks the tiles of N (tails guarded: loads are clamped
  into range, stores masked);
* a block owns up to `rows_per_block` rows of A (any rows, not only contiguous ones: rows are
  dealt to blocks largest-first so every block carries about the same number of nonzeros);
* inside a block, K is split among `groups` (Gy) thread groups by nonzero count; each group keeps
  a partial sum per (row, column) in registers, and the partial sums meet in shared memory.

Nonzeros are stored per group as three packed arrays (k, slot, float32 bits) sorted by (k, slot):
bytes keep the plan compact and hashable even at millions of nonzeros.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .errors import OptionsError, WeightError
from .options import KernelOptions

SHARED_MEMORY_BYTES = 48 * 1024  # static shared memory a block may use without opt-in
REGISTER_FILE = 65536  # 32-bit registers per SM, and per block, on every arch since sm_70
MAX_REGISTERS_PER_THREAD = 255
ACCUMULATOR_BUDGET = 64  # rows_per_block * vec: registers of accumulators per thread
# Registers holding rows of B loaded ahead of use (prefetch * vec). 16 rows at vec 1 put the load
# ~100 instructions before its first FFMA at 90% sparsity (checked on the SASS in the tests).
PREFETCH_REGISTERS = 16
# Warps a launch should have before thread groups stop being worth their reduction: ~8 resident
# warps per SM on a 132-SM H100/H200.
TARGET_WARPS = 1024
GROUP_MIN_NNZ = 128  # nonzeros per thread group, at least


@dataclass(frozen=True)
class GroupWork:
    """One thread group's unrolled work inside one block: its nonzeros in (k, slot) order."""

    k: bytes  # int32 per nonzero: column of A = row of B
    slot: bytes  # int32 per nonzero: index into the block's `rows`
    bits: bytes  # uint32 per nonzero: the float32 weight, bit for bit

    @property
    def nnz(self) -> int:
        return len(self.k) // 4

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.frombuffer(self.k, dtype=np.int32),
            np.frombuffer(self.slot, dtype=np.int32),
            np.frombuffer(self.bits, dtype=np.uint32),
        )


@dataclass(frozen=True)
class BlockWork:
    rows: tuple[int, ...]  # output rows; accumulator slot i belongs to rows[i]
    groups: tuple[GroupWork, ...]  # exactly `groups` entries (some may be empty)

    @property
    def nnz(self) -> int:
        return sum(g.nnz for g in self.groups)

    def slot_users(self) -> tuple[tuple[int, ...], ...]:
        """For each slot, the thread groups that accumulate into it (in group order)."""
        users: list[list[int]] = [[] for _ in self.rows]
        for g, work in enumerate(self.groups):
            for s in np.unique(work.arrays()[1]).tolist():
                users[s].append(g)
        return tuple(tuple(u) for u in users)


@dataclass(frozen=True)
class ConvGeometry:
    """B as a virtual im2col matrix over one NCHW image (never materialised).

    Row k of B is the tap k = c*kh*kw + ky*kw + kx (PyTorch/DLMC im2col order); column j is the
    output pixel (oy, ox) = divmod(j, ow); B[k, j] = X[c, oy*sy - py + ky*dy, ox*sx - px + kx*dx],
    0 where that falls in the padding.
    """

    c_in: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("c_in", "h", "w", "kh", "kw"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionsError(f"conv {name}={value!r}: expected a positive integer")
        for name, low in (("stride", 1), ("padding", 0), ("dilation", 1)):
            pair = getattr(self, name)
            if not (isinstance(pair, tuple) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in pair)):
                raise OptionsError(f"conv {name}={pair!r}: expected a pair of integers >= {low}")
        if self.oh < 1 or self.ow < 1:
            raise OptionsError(
                f"conv: a {self.kh}x{self.kw} kernel (dilation {self.dilation}) does not fit a "
                f"{self.h}x{self.w} input with padding {self.padding}: output would be "
                f"{self.oh}x{self.ow}")

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def k(self) -> int:
        return self.c_in * self.kh * self.kw

    @property
    def n(self) -> int:
        return self.oh * self.ow

    def tap_rows_always_valid(self) -> tuple[bool, ...]:
        """Per ky: does every output row read inside the image (no padding check needed)?"""
        (s, p, d), oh, h = (self.stride[0], self.padding[0], self.dilation[0]), self.oh, self.h
        return tuple(ky * d - p >= 0 and (oh - 1) * s - p + ky * d < h for ky in range(self.kh))

    def tap_cols_always_valid(self) -> tuple[bool, ...]:
        (s, p, d), ow, w = (self.stride[1], self.padding[1], self.dilation[1]), self.ow, self.w
        return tuple(kx * d - p >= 0 and (ow - 1) * s - p + kx * d < w for kx in range(self.kw))


@dataclass(frozen=True)
class Schedule:
    m: int
    k: int
    n: int
    threads_x: int
    vec: int
    groups: int
    rows_per_block: int
    blocks: tuple[BlockWork, ...]
    slabs: tuple[tuple[int, int], ...]  # [start, stop) ranges of blocks, one compiled kernel each
    bias_bits: tuple[int, ...] | None  # float32 bits per row, baked in as immediates
    relu: bool
    residual: bool
    weight_digest: str
    # Batched operands (convolution over NCHW images): blockIdx.z walks the batch, and B, C, R
    # advance by these many floats per image. 0 and batch 1 for a plain SpMM.
    batch: int = 1
    batch_stride_b: int = 0
    batch_stride_c: int = 0
    extra: tuple[tuple[str, str], ...] = field(default=())  # free-form (key, value) notes for the header
    # Convolution: B is a virtual im2col matrix read straight from the NCHW input (needs vec 1).
    conv: ConvGeometry | None = None
    # Software pipelining: each thread loads row j + prefetch of B right after using row j.
    prefetch: int = 1

    @property
    def tile_n(self) -> int:
        return self.threads_x * self.vec

    @property
    def grid_n(self) -> int:
        return -(-self.n // self.tile_n)

    @property
    def nnz(self) -> int:
        return sum(b.nnz for b in self.blocks)

    @property
    def shared_floats(self) -> int:
        return self.groups * self.rows_per_block * self.tile_n if self.groups > 1 else 0

    @cached_property
    def fmas_per_load(self) -> float:
        """Nonzeros per row of B a thread group loads (each distinct k of a group is one load)."""
        loads = sum(len(np.unique(g.arrays()[0])) for b in self.blocks for g in b.groups)
        return self.nnz / loads if loads else float("inf")

    @cached_property
    def digest(self) -> str:
        """Content hash of everything that shapes the generated code."""
        h = hashlib.sha256()
        h.update(repr((self.m, self.k, self.n, self.threads_x, self.vec, self.groups,
                       self.rows_per_block, self.slabs, self.bias_bits, self.relu, self.residual,
                       self.weight_digest, self.batch, self.batch_stride_b, self.batch_stride_c,
                       self.extra, self.prefetch)).encode())
        if self.conv is not None:  # only then: plain SpMM digests (and kernel names) stay as they were
            h.update(repr(self.conv).encode())
        for block in self.blocks:
            h.update(repr(block.rows).encode())
            for g in block.groups:
                h.update(len(g.k).to_bytes(8, "little"))
                h.update(g.k)
                h.update(g.slot)
                h.update(g.bits)
        return h.hexdigest()

    def __hash__(self) -> int:  # the default would walk every block on each call
        return hash(self.digest)

    def params(self) -> dict:
        """The schedule's parameters (no per-nonzero data), for summaries and JSON."""
        return {
            "M": self.m, "K": self.k, "N": self.n, "nnz": self.nnz,
            "threads_x": self.threads_x, "vec": self.vec, "groups": self.groups,
            "rows_per_block": self.rows_per_block, "blocks": len(self.blocks),
            "grid": [len(self.blocks), self.grid_n, self.batch],
            "block": [self.threads_x, self.groups, 1], "slabs": len(self.slabs),
            "shared_bytes": 4 * self.shared_floats, "prefetch": self.prefetch, "relu": self.relu,
            "bias": self.bias_bits is not None, "residual": self.residual, "batch": self.batch,
        } | ({} if self.conv is None else {"conv": {
            "c_in": self.conv.c_in, "h": self.conv.h, "w": self.conv.w, "kh": self.conv.kh,
            "kw": self.conv.kw, "stride": list(self.conv.stride), "padding": list(self.conv.padding),
            "dilation": list(self.conv.dilation), "oh": self.conv.oh, "ow": self.conv.ow}})

    def to_csr(self) -> sp.csr_matrix:
        """Rebuild A from the plan (tests use this to prove every nonzero is placed once)."""
        rows, cols, vals = [], [], []
        for block in self.blocks:
            row_of_slot = np.asarray(block.rows, dtype=np.int64)
            for g in block.groups:
                k, slot, bits = g.arrays()
                rows.append(row_of_slot[slot])
                cols.append(k)
                vals.append(bits.view(np.float32))
        if rows:
            r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        else:
            r = c = np.zeros(0, np.int64)
            v = np.zeros(0, np.float32)
        return sp.csr_matrix((v, (r, c)), shape=(self.m, self.k), dtype=np.float32)


def choose_parameters(m: int, k: int, nnz: int, opts: KernelOptions, *, batch: int = 1
                      ) -> tuple[int, int, int, int]:
    """Defaults for (threads_x, vec, groups, rows_per_block); explicit options win.

    One column per thread (vec 1) and 64 rows per block by default, as in SparseRT: rows, not vec,
    decide how often a loaded value of B is reused (rows_per_block x density FFMAs per load), and
    vec multiplies the unrolled code (nonzeros x vec FFMAs), hence compile time and instruction
    cache footprint, for the same work. A 64-accumulator budget bought as 16 rows x vec 4 reuses B
    a quarter as often as 64 rows x vec 1 (benchmarks/COMPILE_TIME.md).

    Thread groups (split K) shorten each thread's chain of FFMAs but cost a shared-memory
    reduction of up to 3 x rows_per_block instructions per thread. They pay off only when the
    grid alone cannot fill the GPU: groups are added until the launch has about TARGET_WARPS warps,
    at most 4, and only while each group keeps >= GROUP_MIN_NNZ nonzeros.
    """
    n = opts.n
    vec = opts.vec or 1
    threads_x = opts.threads_x or min(32, 1 << max(0, math.ceil(math.log2(-(-n // vec)))))
    rows = opts.rows_per_block or max(1, min(m, ACCUMULATOR_BUDGET // vec))
    if opts.groups:
        groups = opts.groups
    else:
        n_blocks = -(-m // rows)
        per_block = nnz / max(1, n_blocks)
        ctas = n_blocks * -(-n // (threads_x * vec)) * max(1, batch)
        warps_per_group = threads_x / 32
        wanted = math.ceil(TARGET_WARPS / (ctas * warps_per_group))
        groups = int(max(1, min(4, wanted, per_block // GROUP_MIN_NNZ, k)))
        while groups > 1 and groups * rows * threads_x * vec * 4 > SHARED_MEMORY_BYTES:
            groups -= 1
    if threads_x * groups > 1024:
        raise OptionsError(f"threads_x * groups = {threads_x * groups}: a block has at most 1024 threads")
    if groups > 1 and groups * rows * threads_x * vec * 4 > SHARED_MEMORY_BYTES:
        raise OptionsError(
            f"groups={groups} x rows_per_block={rows} x threads_x={threads_x} x vec={vec} floats of "
            f"partial sums exceed {SHARED_MEMORY_BYTES // 1024} KiB of shared memory; lower one of them"
        )
    return threads_x, vec, groups, rows


def choose_prefetch(vec: int, opts: KernelOptions) -> int:
    """Rows of B in flight per thread: PREFETCH_REGISTERS // vec registers' worth by default."""
    return opts.prefetch or max(1, PREFETCH_REGISTERS // vec)


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
    bias: np.ndarray | None = None,
    weight_digest: str,
    max_slab_nnz: int,
    batch: int = 1,
    batch_stride_b: int = 0,
    batch_stride_c: int = 0,
    extra: tuple[tuple[str, str], ...] = (),
    conv: ConvGeometry | None = None,
) -> Schedule:
    """Build the schedule for a canonical float32 CSR matrix (see weights.load_weight)."""
    m, k = matrix.shape
    if conv is not None:
        if (conv.k, conv.n) != (k, opts.n):
            raise OptionsError(f"conv: geometry gives an im2col of {conv.k} x {conv.n} but the weight "
                               f"has K={k} and n={opts.n}")
        if opts.vec not in (None, 1):
            raise OptionsError(f"vec={opts.vec}: a virtual im2col operand is read one column per "
                               f"thread; use vec=1")
        opts = replace(opts, vec=1)
    threads_x, vec, groups, rows_per_block = choose_parameters(m, k, matrix.nnz, opts, batch=batch)
    prefetch = choose_prefetch(vec, opts)
    bias_bits = None
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (m,):
            raise WeightError(f"bias: expected shape ({m},) for a weight with M={m} rows, got {bias.shape}")
        bias = bias.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(bias))
        if bad.size:
            raise WeightError(f"bias: non-finite value {bias[bad[0]]} at index {bad[0]}; bias must be finite")
        bias_bits = tuple(int(b) for b in bias.view(np.uint32))

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
    )
