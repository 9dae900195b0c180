"""The CPU emitter's view of a Schedule: per register block, the row runs of ir.lower (each
distinct k of B with the (slot, weight bits) it feeds) as numpy arrays, which the emitter walks
fast. Blocks have one group each (no split K on the CPU: a block's rows live in registers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.lower import row_runs
from ...ir.schedule import Schedule


@dataclass(frozen=True)
class LoweredBlock:
    """One register block: up to R output rows; run t is row ks[t] of B, feeding the nonzeros
    starts[t] .. starts[t+1]-1 (slots, weight bits)."""

    rows: tuple[int, ...]
    ks: np.ndarray  # int64, distinct k in increasing order
    starts: np.ndarray  # int64, len(ks) + 1
    slots: np.ndarray  # int64, per nonzero
    bits: np.ndarray  # uint32, per nonzero

    @property
    def nnz(self) -> int:
        return len(self.slots)

    def taps(self):
        """(k, [(slot, bits), ...]) per distinct k: the readable form of the same data."""
        for t, k in enumerate(self.ks.tolist()):
            a, b = self.starts[t], self.starts[t + 1]
            yield k, list(zip(self.slots[a:b].tolist(), self.bits[a:b].tolist()))


@dataclass(frozen=True)
class Lowered:
    m: int
    k: int
    n: int
    blocks: tuple[LoweredBlock, ...]
    bias_bits: np.ndarray | None  # uint32 per row
    relu: bool
    residual: bool

    @property
    def nnz(self) -> int:
        return sum(b.nnz for b in self.blocks)


def lower(s: Schedule) -> Lowered:
    blocks = []
    for block in s.blocks:
        (group,) = block.groups  # the CPU plans one group per block
        runs = row_runs(group)
        blocks.append(LoweredBlock(tuple(block.rows), np.asarray(runs.ks, dtype=np.int64),
                                   np.asarray(runs.starts, dtype=np.int64),
                                   np.asarray(runs.slots, dtype=np.int64), runs.bits.astype(np.uint32)))
    bias = None if s.bias_bits is None else np.asarray(s.bias_bits, dtype=np.uint32)
    return Lowered(s.m, s.k, s.n, tuple(blocks), bias, s.relu, s.residual)
