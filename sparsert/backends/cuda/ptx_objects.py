"""A slab of the PTX backend as relocatable objects: which blocks' functions go in which object,
under which register cap, the sample assembled first, refit copies, and the entry that calls them.
compiler's build (build.py) assembles them with ptxas and links them with nvlink."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...ir.schedule import Schedule
from ..source.render import Unit, launch_units
from .params import register_cap
from .ptx import _Emitter

# -- a slab as relocatable objects --------------------------------------------------------------
# A slab (one launch) is assembled as relocatable objects (ptxas -c) linked by nvlink: objects of
# the blocks' functions, each held to the schedule's register cap, and the entry. A function that
# still spills is assembled once more alone, renamed `<kernel>_b<i>_r<cap>`, under a higher cap; the
# entry calls that one and nvlink drops the spilling original, so a wrong register estimate costs
# one function's assembly, not the slab's.
OBJECT_FMAS = 16384  # FMAs per function object at least (about 0.7 s of ptxas): fewer processes
OBJECT_SEPARATOR = "// ==== object "  # starts each object where a slab's objects are shown as one text


@dataclass(frozen=True)
class PtxObject:
    name: str  # file stem; also the text after OBJECT_SEPARATOR
    source: str
    max_registers: int | None  # ptxas -maxrregcount; None for the entry (nvlink sizes the kernel)
    blocks: tuple[int, ...]  # the slab-local block indices whose functions it defines


SAMPLE_MIN_FUNCTIONS = 32  # a slab of this many functions or more is sampled first ...
SAMPLE_FUNCTIONS = 4  # ... by assembling its biggest blocks alone, to find the cap before the rest


def sample_blocks(s: Schedule, index: int) -> tuple[int, ...]:
    """The slab-local blocks assembled first and alone (the biggest; none in a small slab). When
    one misses the cap, the whole slab would likely miss too (465 of the 521 functions of the
    DLMC 33288 x 512 embedding at 95% did): its cap then holds for every other object, instead of
    a refit per function. Fixed, not per core, so the code does not depend on the machine."""
    start, stop = s.slabs[index]
    if stop - start < SAMPLE_MIN_FUNCTIONS:
        return ()
    order = sorted(range(stop - start), key=lambda i: (-s.blocks[start + i].nnz, i))
    return tuple(sorted(order[:SAMPLE_FUNCTIONS]))


def object_parts(s: Schedule, index: int, parts: int, exclude: Sequence[int] = ()) -> tuple[tuple[int, ...], ...]:
    """Slab-local blocks (all but `exclude`, in order) for `parts` function objects (fewer where
    blocks are few or small), runs as even in nonzeros as possible."""
    start, stop = s.slabs[index]
    skip = set(exclude)
    which = [i for i in range(stop - start) if i not in skip]
    if not which:
        return ()
    nnz = np.array([max(1, s.blocks[start + i].nnz) for i in which], dtype=np.int64)
    want = max(1, min(len(nnz), parts, -(-int(nnz.sum()) // OBJECT_FMAS)))
    # cut where the running total is nearest each 1/want of the whole, one block at least apiece
    ends = np.cumsum(nnz)
    cuts = [0]
    for j in range(1, want):
        c = int(np.abs(ends - ends[-1] * j / want).argmin()) + 1
        cuts.append(min(max(c, cuts[-1] + 1), len(nnz) - (want - j)))
    cuts.append(len(nnz))
    return tuple(tuple(which[a:b]) for a, b in zip(cuts, cuts[1:]))


def _kernel_name(s: Schedule, index: int) -> str:
    return launch_units(s)[index].kernel_name


Layout = Sequence[tuple[int, Sequence[int]]]  # (register cap, slab-local blocks) per function object


def function_objects(s: Schedule, arch: str, index: int, layout: Layout | None = None) -> tuple[PtxObject, ...]:
    """The slab's block functions in objects of the given layout (None: one object of every
    block under register_cap(s))."""
    em, kernel = _Emitter(s, arch), _kernel_name(s, index)
    start = s.slabs[index][0]
    if layout is None:
        layout = [(register_cap(s), g) for g in object_parts(s, index, 1)]
    out = []
    for cap, which in layout:
        blocks = [(f"{kernel}_b{i}", s.blocks[start + i]) for i in which]
        out.append(PtxObject(f"{kernel}_o{which[0]}", em.functions(
            blocks, f"blocks {_spans(which)} of slab {index + 1}/{len(s.slabs)} under {cap} registers"),
            cap, tuple(which)))
    return tuple(out)


def _spans(which: Sequence[int]) -> str:
    """'0..3, 5, 7..9': the blocks of an object, for its header comment."""
    out, i = [], 0
    while i < len(which):
        j = i
        while j + 1 < len(which) and which[j + 1] == which[j] + 1:
            j += 1
        out.append(f"{which[i]}" if i == j else f"{which[i]}..{which[j]}")
        i = j + 1
    return ", ".join(out)


def replacement_object(s: Schedule, arch: str, index: int, block: int, cap: int) -> PtxObject:
    """Slab-local block `block`'s function alone, renamed for `cap` (its object's cap spilled)."""
    kernel = _kernel_name(s, index)
    name = f"{kernel}_b{block}_r{cap}"
    text = _Emitter(s, arch).functions([(name, s.blocks[s.slabs[index][0] + block])],
                                       f"block {block} of slab {index + 1}/{len(s.slabs)} under {cap} registers")
    return PtxObject(name, text, cap, (block,))


def entry_object(s: Schedule, arch: str, index: int, replaced: Mapping[int, int] | None = None) -> PtxObject:
    """The slab's entry, calling each block's function (its replacement where `replaced` maps the
    slab-local block to the cap it was re-assembled under)."""
    kernel, (start, stop) = _kernel_name(s, index), s.slabs[index]
    replaced = replaced or {}
    callees = [f"{kernel}_b{i}" + (f"_r{replaced[i]}" if i in replaced else "") for i in range(stop - start)]
    text = _Emitter(s, arch).entry(kernel, callees, f"entry of slab {index + 1}/{len(s.slabs)} "
                                                    f"(blocks {start}..{stop - 1})")
    return PtxObject(kernel, text, None, ())


def slab_objects(s: Schedule, arch: str, index: int, *, layout: Layout | None = None,
                 replaced: Mapping[int, int] | None = None) -> tuple[PtxObject, ...]:
    """Every object the slab links, in link order: function objects, replacements, the entry."""
    replaced = replaced or {}
    return (function_objects(s, arch, index, layout)
            + tuple(replacement_object(s, arch, index, b, c) for b, c in sorted(replaced.items()))
            + (entry_object(s, arch, index, replaced),))


def join_objects(objects: Sequence[PtxObject]) -> str:
    """A slab's objects as one text (kernel.ptx): each starts with an OBJECT_SEPARATOR line."""
    return "".join(f"{OBJECT_SEPARATOR}{o.name}.ptx: ptxas -c"
                   + (f" -maxrregcount {o.max_registers}" if o.max_registers else "")
                   + " ====\n" + o.source for o in objects)


def split_objects(text: str) -> list[tuple[str, str]]:
    """(file name, PTX) per object of a join_objects text."""
    out = []
    for chunk in text.split(OBJECT_SEPARATOR)[1:]:
        head, _, body = chunk.partition("\n")
        out.append((head.split(":", 1)[0], body))
    return out


def function_spills(log: str) -> dict[int, int]:
    """Spilled bytes (stores + loads) of each `<kernel>_b<i>` function a ptxas -v log reports
    spilling, keyed by i."""
    found = re.findall(r"Function properties for \S+_b(\d+)\n\s*\d+ bytes stack frame, (\d+) bytes spill "
                       r"stores, (\d+) bytes spill loads", log)
    return {int(i): int(st) + int(ld) for i, st, ld in found if int(st) or int(ld)}


def spilled_functions(log: str) -> list[int]:
    """Indices of the `<kernel>_b<i>` functions the log reports spilling, the most spilled first."""
    spilled = function_spills(log)
    return sorted(spilled, key=lambda i: (-spilled[i], i))


def render_ptx(s: Schedule, arch: str, slabs: tuple[int, ...] | None = None, *,
               layouts: Sequence[Layout | None] | None = None,
               replaced: Sequence[Mapping[int, int] | None] | None = None) -> tuple[Unit, ...]:
    """PTX units for the schedule's slabs (all, or the given indices): each unit's source is the
    slab's objects as one text (join_objects); same names and launch geometry as
    render.render(s). Deterministic: same schedule, arch, layouts and replacements, same bytes.
    `layouts` and `replaced`: per listed slab, as compiler.py built it (None: one function object,
    nothing replaced)."""
    geometry = launch_units(s)
    which = tuple(range(len(s.slabs)) if slabs is None else slabs)
    layouts = list(layouts) if layouts is not None else [None] * len(which)
    replaced = list(replaced) if replaced is not None else [None] * len(which)
    return tuple(dataclasses.replace(geometry[i], source=join_objects(slab_objects(s, arch, i, layout=g, replaced=r)))
                 for i, g, r in zip(which, layouts, replaced))
