"""The target-neutral IR between planning and code generation: the `Schedule`.

Frozen, hashable and complete (every emitter reads nothing else). Layout of the computation
C = A @ B (A: M x K sparse, fixed), as the GPU backends read it:

* a worker (GPU thread) owns `vec` consecutive columns of N; `threads_x` of them side by side cover
  a tile of `threads_x * vec` columns; the grid walks the tiles of N (tails clamped on load,
  masked on store);
* a block owns up to `rows_per_block` rows of A (any rows: dealt largest-first so every block
  carries about the same number of nonzeros);
* inside a block, K is split among `groups` (Gy) worker groups by nonzero count; each keeps a
  partial sum per (row, column) and the partial sums meet (in shared memory on a GPU);
* blocks are cut into slabs, one compiled unit (launch) each.

Nonzeros are stored per group as three packed arrays (k, slot, float32 bits) sorted by (k, slot):
bytes keep the plan compact and hashable even at millions of nonzeros.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from ..errors import OptionsError


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
    # Half precision: the element type of B, C and R ('float32', 'float16', 'bfloat16') and the
    # arithmetic ('float32': FFMA into fp32 accumulators; 'float16'/'bfloat16': packed HFMA2, two
    # columns per instruction, the weights' bits already rounded to that precision by plan()).
    dtype: str = "float32"
    accumulate: str = "float32"
    # CPU target only: the AVX-512 broadcast form (None: the backend's default; part of the code),
    # and the run-time columns of N per work item (None: the launcher's choice). `chunk` changes
    # no generated code, so it is left out of the digest (and of every cache key).
    bcast: str | None = None
    chunk: int | None = None

    @property
    def packed(self) -> bool:
        return self.accumulate != "float32"

    @property
    def elem_bytes(self) -> int:
        """Bytes per element of B, C and R."""
        return 4 if self.dtype == "float32" else 2

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

    @property
    def shared_bytes(self) -> int:
        """The split-K reduction buffer: fp32 partial sums, or packed half ones (2 bytes a column)."""
        return self.shared_floats * (2 if self.packed else 4)

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
        if self.dtype != "float32" or self.accumulate != "float32":  # likewise: float32 names unchanged
            h.update(repr(("dtype", self.dtype, self.accumulate)).encode())
        if self.bcast is not None:  # likewise: only when chosen
            h.update(repr(("bcast", self.bcast)).encode())
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

    def __repr__(self) -> str:  # the per-nonzero work stays in .blocks
        conv = "" if self.conv is None else f", conv={self.conv.kh}x{self.conv.kw}"
        half = "" if self.dtype == "float32" else f", dtype={self.dtype}, accumulate={self.accumulate}"
        return (f"Schedule({self.m}x{self.k} @ {self.k}x{self.n}, nnz={self.nnz}, blocks={len(self.blocks)}, "
                f"slabs={len(self.slabs)}, threads_x={self.threads_x}, vec={self.vec}, groups={self.groups}, "
                f"rows_per_block={self.rows_per_block}, batch={self.batch}{conv}{half}, digest={self.digest[:12]})")

    def params(self) -> dict:
        """The schedule's parameters (no per-nonzero data), for summaries and JSON."""
        return {
            "M": self.m, "K": self.k, "N": self.n, "nnz": self.nnz,
            "threads_x": self.threads_x, "vec": self.vec, "groups": self.groups,
            "rows_per_block": self.rows_per_block, "blocks": len(self.blocks),
            "grid": [len(self.blocks), self.grid_n, self.batch],
            "block": [self.threads_x, self.groups, 1], "slabs": len(self.slabs),
            "shared_bytes": self.shared_bytes, "prefetch": self.prefetch, "relu": self.relu,
            "bias": self.bias_bits is not None, "residual": self.residual, "batch": self.batch,
        } | ({} if self.dtype == "float32" else {"dtype": self.dtype, "accumulate": self.accumulate}) | (
            {} if self.conv is None else {"conv": {
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
