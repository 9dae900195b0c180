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
    # vdpbf16ps (accumulate='bfloat16'): the panel holds pairs of rows of B (see pair_block), a
    # block's runs are pairs p and its "nonzeros" bf16 weight pairs
    pairs: bool = False

    @property
    def nnz(self) -> int:
        return sum(b.nnz for b in self.blocks)

    @property
    def panel_rows(self) -> int:
        """Rows of one packed tile as the kernel reads it."""
        return (self.k + 1) // 2 if self.pairs else self.k


def pair_block(blk: LoweredBlock) -> LoweredBlock:
    """The block for vdpbf16ps: rows 2p and 2p+1 of B are one row p of the panel (bf16 pairs:
    row 2p+1 in the high half of each dword), so each (p, slot) with a nonzero at k = 2p or
    2p+1 is one instruction, its weight the dword (bf16(w[2p+1]) << 16) | bf16(w[2p]) (0 where
    absent). The weights are already rounded to bfloat16 (plan), so bf16(w) = its top 16 bits."""
    if blk.nnz == 0:
        return blk
    if (blk.bits & 0xFFFF).any():
        raise ValueError("pair_block: weights not rounded to bfloat16")
    k = np.repeat(blk.ks, np.diff(blk.starts))
    p = k // 2
    word = (blk.bits >> 16) << (16 * (k & 1)).astype(np.uint32)
    order = np.lexsort((blk.slots, p))  # by pair, then slot
    p, slots, word = p[order], blk.slots[order], word[order]
    first = np.flatnonzero(np.r_[True, (p[1:] != p[:-1]) | (slots[1:] != slots[:-1])])
    words = np.bitwise_or.reduceat(word, first).astype(np.uint32)
    ps, ss = p[first], slots[first]
    runs = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    return LoweredBlock(blk.rows, ps[runs].astype(np.int64), np.r_[runs, len(ps)].astype(np.int64),
                        ss.astype(np.int64), words)


def lower(s: Schedule) -> Lowered:
    blocks = []
    for block in s.blocks:
        (group,) = block.groups  # the CPU plans one group per block
        runs = row_runs(group)
        blocks.append(LoweredBlock(tuple(block.rows), np.asarray(runs.ks, dtype=np.int64),
                                   np.asarray(runs.starts, dtype=np.int64),
                                   np.asarray(runs.slots, dtype=np.int64), runs.bits.astype(np.uint32)))
    bias = None if s.bias_bits is None else np.asarray(s.bias_bits, dtype=np.uint32)
    if s.packed:  # accumulate='bfloat16' on the CPU: vdpbf16ps
        blocks = [pair_block(b) for b in blocks]
    return Lowered(s.m, s.k, s.n, tuple(blocks), bias, s.relu, s.residual, pairs=s.packed)
