"""Rendering: Schedule -> CUDA/HIP source, one translation unit per slab.

All unrolling happens here, in Python; the Jinja template only prints. Weights are printed as the
shortest decimal that parses back to the same float32 (numpy's round-trip repr), so the source is
readable and every immediate reproduces the weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jinja2
import numpy as np

from . import __version__
from .dialect import dialect
from .errors import OptionsError
from .plan import BlockWork, ConvGeometry, Schedule
from .resources import template_dir

_LANES = "xyzw"


@dataclass(frozen=True)
class Unit:
    """One compiled unit: the source of one slab and how to launch it."""

    index: int
    kernel_name: str
    source: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    first_block: int
    nnz: int


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def float_literal(bits: int) -> str:
    """C float literal that parses to exactly this float32 (bits as uint32)."""
    text = str(np.uint32(bits).view(np.float32))
    if "e" not in text and "." not in text:  # e.g. 'inf' never reaches here (refused earlier)
        text += ".0"
    return text + "f"


class _Literals(dict):
    """bits -> literal, memoised: formatting dominates rendering of large kernels."""

    def __missing__(self, bits: int) -> str:
        text = self[bits] = float_literal(bits)
        return text


def _vec_type(vec: int) -> str:
    return "float" if vec == 1 else f"float{vec}"


def _pack(vec: int, prefix: str) -> str:
    regs = ", ".join(f"{prefix}{v}" for v in range(vec))
    return regs if vec == 1 else f"make_float{vec}({regs})"


def _conv_offset(g: ConvGeometry) -> str:
    """C expression: offset of im2col row (k) from the thread's corner (constant-folded per L(k))."""
    taps = g.kh * g.kw
    if taps == 1:
        return "(k) * %d" % (g.h * g.w)
    parts = ["(k) / %d * %d" % (taps, g.h * g.w)]
    if g.kh > 1:
        parts.append("(k) %% %d / %d * %d" % (taps, g.kw, g.dilation[0] * g.w))
    if g.kw > 1:
        parts.append("(k) %% %d" % g.kw + ("" if g.dilation[1] == 1 else " * %d" % g.dilation[1]))
    return " + ".join(parts)


def _conv_setup(s: Schedule) -> tuple[str, str, str]:
    """(setup code, L(k) body, B description) for a virtual im2col operand (vec 1).

    Each thread finds its output pixel's input corner once; L(k) is then a load at a constant
    offset from it. Taps that can fall in the padding are masked per (ky, kx) with flags computed
    once; the rest (all of them without padding) load unconditionally.
    """
    g = s.conv
    (sy, sx), (py, px), (dy, dx) = g.stride, g.padding, g.dilation
    rows_ok, cols_ok = g.tap_rows_always_valid(), g.tap_cols_always_valid()
    lines = [
        "  // Virtual im2col: column col is output pixel (oy, ox); row k = c*%d + ky*%d + kx of B is"
        % (g.kh * g.kw, g.kw),
        "  // X[c][oy*%d - %d + ky*%d][ox*%d - %d + kx*%d], 0 in the padding; out-of-range threads "
        "use the last pixel." % (sy, py, dy, sx, px, dx),
        "  const int pix = min(col, %d);" % (s.n - 1),
        "  const int oy = pix / %d, ox = pix - oy * %d;" % (g.ow, g.ow),
        "  const int iy = oy * %d - %d, ix = ox * %d - %d;" % (sy, py, sx, px),
        "  const float* __restrict__ Bp = B + blockIdx.z * %d;" % s.batch_stride_b,
        "  const int base = iy * %d + ix;" % g.w,
    ]
    offset = _conv_offset(g)
    if all(rows_ok) and all(cols_ok):
        return "\n".join(lines), "b0 = Bp[base + %s];" % offset, _b_desc(g)
    ys = [f"y{ky} = (unsigned)({_plus('iy', ky * dy)}) < {g.h}u" for ky in range(g.kh) if not rows_ok[ky]]
    xs = [f"x{kx} = (unsigned)({_plus('ix', kx * dx)}) < {g.w}u" for kx in range(g.kw) if not cols_ok[kx]]
    lines.append("  // Taps that can fall in the padding; unsigned compare also rejects negatives.")
    lines += ["  const bool " + ", ".join(decls) + ";" for decls in (ys, xs) if decls]
    flags = []
    for ky in range(g.kh):
        for kx in range(g.kw):
            terms = ([f"y{ky}"] if not rows_ok[ky] else []) + ([f"x{kx}"] if not cols_ok[kx] else [])
            flags.append(" && ".join(terms) or "true")
    lines.append("  const bool ok[%d] = {%s};" % (len(flags), ", ".join(flags)))
    index = "0" if len(flags) == 1 else "(k) %% %d" % len(flags)
    load = "b0 = ok[%s] ? Bp[base + %s] : 0.f;" % (index, offset)
    return "\n".join(lines), load, _b_desc(g)


def _plus(name: str, offset: int) -> str:
    return name if offset == 0 else f"{name} + {offset}"


def _b_desc(g: ConvGeometry) -> str:
    return (f"virtual im2col {g.k} x {g.n} of a {g.c_in} x {g.h} x {g.w} input, "
            f"{g.kh}x{g.kw} taps (never materialised)")


def _macros(s: Schedule) -> dict[str, str]:
    """The per-thread operations, written once as macros so each nonzero costs one short token."""
    v, n, t = s.vec, s.n, s.threads_x
    vt = _vec_type(v)
    lanes = range(v)
    conv_setup = b_desc = ""
    if s.conv is not None:
        if v != 1:
            raise OptionsError(f"vec={v}: a virtual im2col operand needs vec=1 (plan() enforces it)")
        conv_setup, load, b_desc = _conv_setup(s)
        gather = "a##s##_0 += red[((g) * %d + (s)) * %d + tx];" % (s.rows_per_block, t)
    elif v == 1:
        load = "b0 = Bp[(k) * %d];" % n
        gather = "a##s##_0 += red[((g) * %d + (s)) * %d + tx];" % (s.rows_per_block, t)
    else:
        load = "{ const %s t_ = *reinterpret_cast<const %s*>(Bp + (k) * %d); %s }" % (
            vt, vt, n, " ".join(f"b{i} = t_.{_LANES[i]};" for i in lanes))
        gather = "{ const %s t_ = red[((g) * %d + (s)) * %d + tx]; %s }" % (
            vt, s.rows_per_block, t, " ".join(f"a##s##_{i} += t_.{_LANES[i]};" for i in lanes))
    out = []
    if s.residual:
        out.append(
            "const float r_ = Rp[(row) * %d];" % n if v == 1
            else "const %s r_ = *reinterpret_cast<const %s*>(Rp + (row) * %d);" % (vt, vt, n))
    for i in lanes:
        expr = f"a##s##_{i}"
        if s.bias_bits is not None:
            expr += " + (bias)"
        if s.residual:
            expr += " + r_" if v == 1 else f" + r_.{_LANES[i]}"
        out.append(f"float o{i} = {expr};")
        if s.relu:
            out.append(f"o{i} = fmaxf(o{i}, 0.f);")
    if v == 1:
        out.append("Cp[(row) * %d] = o0;" % n)
    else:
        out.append("*reinterpret_cast<%s*>(Cp + (row) * %d) = %s;" % (vt, n, _pack(v, "o")))
    return {
        "load_macro": load,
        "fma_macro": " ".join(f"a##s##_{i} += (w) * b{i};" for i in lanes),
        "zero_macro": "float " + ", ".join(f"a##s##_{i} = 0.f" for i in lanes) + ";",
        "store_macro": "if (live) { " + " ".join(out) + " }",
        "partial_macro": "red[(threadIdx.y * %d + (s)) * %d + tx] = %s;" % (
            s.rows_per_block, t, _pack(v, "a##s##_")),
        "gather_macro": gather,
        "vec_type": vt,
        "b_regs": ", ".join(f"b{i}" for i in lanes),
        "conv_setup": conv_setup,
        "b_desc": b_desc,
    }


def _group_lines(work, literals: _Literals, indent: str) -> list[str]:
    """`L(k) F(slot, w) F(slot, w) ...` per distinct k, in k order."""
    k, slot, bits = work.arrays()
    if len(k) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]).tolist() + [len(k)]
    ks, slots, words = k.tolist(), slot.tolist(), bits.tolist()
    lines = []
    for a, b in zip(starts[:-1], starts[1:]):
        fmas = " ".join(f"F({slots[i]},{literals[words[i]]})" for i in range(a, b))
        lines.append(f"{indent}L({ks[a]}) {fmas}")
    return lines


def _store(s: Schedule, slot: int, row: int, literals: _Literals) -> str:
    if s.bias_bits is None:
        return f"S({slot},{row})"
    return f"S({slot},{row},{literals[s.bias_bits[row]]})"


def _block_body(s: Schedule, block: BlockWork, literals: _Literals) -> str:
    ind = "    "
    lines = [ind + " ".join(f"Z({i})" for i in range(len(block.rows)))]
    if s.groups == 1:
        lines += _group_lines(block.groups[0], literals, ind)
        lines.append(ind + " ".join(_store(s, i, r, literals) for i, r in enumerate(block.rows)))
        return "\n".join(lines)
    # Split K: slot i is finished by group i % groups, which adds the other groups' partial sums
    # (read from shared memory) to its own registers; only groups that touched a slot write it.
    users = block.slot_users()
    owner = [i % s.groups for i in range(len(block.rows))]
    lines.append(ind + "switch (threadIdx.y) {")
    for g, work in enumerate(block.groups):
        lines.append(f"{ind}case {g}: {{")
        lines += _group_lines(work, literals, ind + "  ")
        parts = [f"P({i})" for i, u in enumerate(users) if g in u and owner[i] != g]
        if parts:
            lines.append(ind + "  " + " ".join(parts))
        lines.append(f"{ind}}} break;")
    lines.append(ind + "}")
    lines.append(ind + "__syncthreads();")
    lines.append(ind + "switch (threadIdx.y) {")
    for g in range(s.groups):
        ops = []
        for i, row in enumerate(block.rows):
            if owner[i] == g:
                ops += [f"Q({i},{h})" for h in users[i] if h != g]
                ops.append(_store(s, i, row, literals))
        if ops:
            lines.append(f"{ind}case {g}: {' '.join(ops)} break;")
    lines.append(ind + "}")
    return "\n".join(lines)


def kernel_base_name(s: Schedule) -> str:
    return f"sparsert_{s.digest[:12]}"


def render(s: Schedule, target: str = "cuda") -> tuple[Unit, ...]:
    """All units (slabs) of a schedule. Deterministic: same schedule, same bytes."""
    d = dialect(target)
    template = _environment().get_template("spmm.cu.j2")
    literals = _Literals()
    base = kernel_base_name(s)
    sparsity = 1.0 - s.nnz / (s.m * s.k)
    formula = "A @ B"
    if s.bias_bits is not None:
        formula += " + bias"
    if s.residual:
        formula += " + R"
    if s.relu:
        formula = f"relu({formula})"
    macros = _macros(s)
    units = []
    for index, (start, stop) in enumerate(s.slabs):
        name = unit_name(s, index)
        cases = []
        for local, bi in enumerate(range(start, stop)):
            block = s.blocks[bi]
            rows = block.rows
            span = f"rows {rows[0]}..{rows[-1]}" if rows == tuple(range(rows[0], rows[-1] + 1)) else (
                f"{len(rows)} rows")
            cases.append({
                "index": local, "block": bi,
                "comment": f"{span}, {block.nnz} nonzeros",
                "body": _block_body(s, block, literals),
            })
        source = template.render(
            version=__version__, epilogue_formula=formula, m=s.m, k=s.k, n=s.n,
            nnz_total=s.nnz, sparsity=f"{sparsity:.2%}", weight_digest=s.weight_digest,
            batch=s.batch, threads_x=s.threads_x, vec=s.vec, groups=s.groups,
            rows_per_block=s.rows_per_block, blocks_total=len(s.blocks), grid_n=s.grid_n,
            slab_index=index, slab_count=len(s.slabs), block_start=start, block_stop=stop,
            nnz_slab=sum(s.blocks[i].nnz for i in range(start, stop)), extra=s.extra,
            prelude=d.prelude, has_bias=s.bias_bits is not None, residual=s.residual,
            kernel_name=name, batch_stride_b=s.batch_stride_b, batch_stride_c=s.batch_stride_c,
            cases=cases, **macros,
        )
        units.append(_unit(s, index, source))
    return tuple(units)


def _unit(s: Schedule, index: int, source: str) -> Unit:
    start, stop = s.slabs[index]
    return Unit(
        index=index, kernel_name=unit_name(s, index), source=source,
        grid=(stop - start, s.grid_n, s.batch), block=(s.threads_x, s.groups, 1),
        first_block=start, nnz=sum(s.blocks[i].nnz for i in range(start, stop)),
    )


def unit_name(s: Schedule, index: int) -> str:
    base = kernel_base_name(s)
    return base if len(s.slabs) == 1 else f"{base}_s{index}"


def launch_units(s: Schedule) -> tuple[Unit, ...]:
    """The units' names and launch geometry with no source (`source == ""`): all that a launch,
    and a build from the schedule (the PTX backend), need. Rendering the CUDA source of a big
    kernel costs seconds (2-3 us per nonzero); SparseKernel renders it only when asked for."""
    return tuple(_unit(s, i, "") for i in range(len(s.slabs)))
