"""Lowering: a block of the Schedule as the program one worker runs, which every emitter prints.

A worker (a GPU thread, a CPU register block) runs, for its block:

  zero the accumulators of the block's rows;
  per group, in k order: load row k of B once, then one FMA per nonzero (slot, weight bits);
  split K (groups > 1): each group writes the partial sums of the slots it does not own
  (`partials`), and after a barrier the owner of each slot adds the other groups' partials in
  group order (`Finish.gathers`) and stores it;
  store: + bias, + residual, ReLU, into row `rows[slot]` of C.

Slot i is owned (finished) by group i % groups; a group only exchanges the slots it touched.
A convolution reads B as a virtual im2col matrix; `Im2col` lowers row k of it to a channel, a tap
and a constant element offset from the worker's input corner, and says which taps can fall in
the padding (and so need a bounds flag). CUDA source, PTX and x86 assembly all print these.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .schedule import BlockWork, ConvGeometry, GroupWork


@dataclass(frozen=True)
class RowRuns:
    """A group's nonzeros as runs of one k each: run j is row ks[j] of B, feeding the nonzeros
    starts[j] .. starts[j + 1] - 1 (slots and weight bits, in slot order)."""

    ks: list[int]
    starts: list[int]
    slots: list[int]
    bits: np.ndarray  # uint32, one per nonzero

    def __len__(self) -> int:
        return len(self.ks)


def row_runs(work: GroupWork) -> RowRuns:
    k, slot, bits = work.arrays()
    if len(k) == 0:
        return RowRuns([], [0], [], bits)
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]).tolist() + [len(k)]
    return RowRuns(k[starts[:-1]].tolist(), starts, slot.tolist(), bits)


@dataclass(frozen=True)
class Finish:
    """What the owner of a slot does after the barrier: add the partials of `gathers` (groups,
    in order), then apply the epilogue and store row `row` of C."""

    slot: int
    row: int
    gathers: tuple[int, ...]


@dataclass(frozen=True)
class BlockProgram:
    rows: tuple[int, ...]
    groups: tuple[GroupWork, ...]
    partials: tuple[tuple[int, ...], ...]  # per group: slots whose partial sums it writes
    finish: tuple[tuple[Finish, ...], ...]  # per group: the slots it owns, in slot order

    @property
    def split(self) -> bool:
        return len(self.groups) > 1


def lower_block(block: BlockWork) -> BlockProgram:
    groups = len(block.groups)
    if groups == 1:
        return BlockProgram(block.rows, block.groups, ((),),
                            (tuple(Finish(i, r, ()) for i, r in enumerate(block.rows)),))
    users = block.slot_users()
    owner = [i % groups for i in range(len(block.rows))]
    partials = tuple(tuple(i for i, u in enumerate(users) if g in u and owner[i] != g) for g in range(groups))
    finish = tuple(tuple(Finish(i, row, tuple(h for h in users[i] if h != g))
                         for i, row in enumerate(block.rows) if owner[i] == g) for g in range(groups))
    return BlockProgram(block.rows, block.groups, partials, finish)


@dataclass(frozen=True)
class Tap:
    """Tap t = ky * kw + kx of the filter. `check_y` / `check_x`: the tap can fall above/below
    (left/right of) the image for some output pixel, so its loads need that bounds flag."""

    t: int
    ky: int
    kx: int
    check_y: bool
    check_x: bool

    @property
    def masked(self) -> bool:
        return self.check_y or self.check_x


class Im2col:
    """Row k = c * kh * kw + ky * kw + kx of the virtual im2col matrix of one NCHW image: element
    X[c, oy*sy - py + ky*dy, ox*sx - px + kx*dx] for output pixel (oy, ox), 0 in the padding.
    Relative to the worker's input corner (iy, ix) = (oy*sy - py, ox*sx - px) it is at the
    constant element offset c*H*W + ky*dy*W + kx*dx."""

    def __init__(self, g: ConvGeometry):
        self.g = g
        self.taps_per_channel = g.kh * g.kw
        self.rows_ok = g.tap_rows_always_valid()
        self.cols_ok = g.tap_cols_always_valid()

    @cached_property
    def taps(self) -> tuple[Tap, ...]:
        g = self.g
        return tuple(Tap(ky * g.kw + kx, ky, kx, not self.rows_ok[ky], not self.cols_ok[kx])
                     for ky in range(g.kh) for kx in range(g.kw))

    @property
    def unmasked(self) -> bool:
        """No tap can fall in the padding: every load is unconditional."""
        return all(self.rows_ok) and all(self.cols_ok)

    def channel_tap(self, k: int) -> tuple[int, int]:
        return divmod(k, self.taps_per_channel)

    def offset(self, k: int) -> int:
        """Element offset of row k from the worker's input corner."""
        g = self.g
        c, t = divmod(k, self.taps_per_channel)
        ky, kx = divmod(t, g.kw)
        return c * g.h * g.w + ky * g.dilation[0] * g.w + kx * g.dilation[1]
