"""Lowered matrix -> GNU assembler text, through the thin Jinja2 frame templates/cpu/kernel.s.j2.

The unrolled bodies are printed by x86.py (Python: templating them would miss the compile rate);
the template prints the frame: the tile loop of each function, the constant pools and the
exported tables the runtime reads. Deterministic: same schedule and configuration, same bytes.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
import numpy as np

from ...resources import template_dir
from .lower import Lowered
from .x86 import EmitConfig, constants, emit_block, tile_floats

PART_NNZ = 20000  # nonzeros per assembler part at least: below this one `as` is faster than two


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir() / "cpu")), autoescape=False,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("kernel.s.j2")


def group_blocks(low: Lowered, cfg: EmitConfig) -> list[list[int]]:
    """Consecutive planner blocks per function: up to cfg.group_fmas FMAs (nonzeros x V) each, so
    one function's code stays in the L1 instruction cache while its tile of B stays in L1D."""
    groups: list[list[int]] = []
    acc = 0
    for i, b in enumerate(low.blocks):
        cost = b.nnz * cfg.v
        if groups and acc + cost <= cfg.group_fmas:
            groups[-1].append(i)
            acc += cost
        else:
            groups.append([i])
            acc = cost
    return groups


def emit_parts(low: Lowered, cfg: EmitConfig, parts: int = 1):
    """The assembly, as `parts` texts of about equal nonzeros (the last holds the tables); a
    generator, so the assembler can start on one part while the next is printed."""
    cfg.check()
    groups = group_blocks(low, cfg)
    parts = max(1, min(parts, len(groups)))
    cum = np.cumsum([sum(low.blocks[i].nnz for i in g) + 1 for g in groups])
    cuts = [0] + [int(np.searchsorted(cum, cum[-1] * p / parts)) + 1 for p in range(1, parts)] + [len(groups)]
    cuts = sorted(set(min(c, len(groups)) for c in cuts))
    table = {"nfunctions": len(groups), "nnz": [sum(low.blocks[i].nnz for i in g) for g in groups],
             "rows": [sum(len(low.blocks[i].rows) for i in g) for g in groups]}
    tpl, const = _template(), constants(cfg)
    for p, (a, z) in enumerate(zip(cuts[:-1], cuts[1:])):
        functions = [{"index": f, "segments": [emit_block(i, low.blocks[i], low, cfg) for i in groups[f]]}
                     for f in range(a, z)]
        yield tpl.render(functions=functions, W=cfg.width, E=cfg.esize, tile_bytes=4 * tile_floats(low.panel_rows, cfg.width),
                         constants=const, table=table if p == len(cuts) - 2 else None)


def parts_for(low: Lowered, jobs: int) -> int:
    """Two parts per core: `as` on one part overlaps printing the next."""
    return min(2 * max(1, jobs), max(1, low.nnz // PART_NNZ))
