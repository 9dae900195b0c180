"""Rendering: Schedule -> CUDA/HIP source, one translation unit per slab.

All unrolling happens here, in Python; the Jinja template only prints. Weights are printed as the
shortest decimal that parses back to the same float32 (numpy's round-trip repr), so the source is
readable and every immediate reproduces the weight bit for bit.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
import numpy as np

from ...errors import OptionsError
from ...ir.lower import Im2col, lower_block, row_runs
from ...ir.schedule import BlockWork, ConvGeometry, Schedule
from ...resources import template_dir
from ...version import __version__
from ..base import Unit
from .dialect import dialect

_LANES = "xyzw"


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


def _conv_setup(s: Schedule, elem: str = "float", tof: str = "") -> tuple[str, str, str]:
    """(setup code, L(k) body, B description) for a virtual im2col operand (vec 1).

    Each thread finds its output pixel's input corner once; L(k) is then a load at a constant
    offset from it. Taps that can fall in the padding (ir.lower.Im2col) are masked per (ky, kx)
    with flags computed once; the rest (all of them without padding) load unconditionally.
    """
    g = s.conv
    im = Im2col(g)
    (sy, sx), (py, px), (dy, dx) = g.stride, g.padding, g.dilation
    lines = [
        "  // Virtual im2col: column col is output pixel (oy, ox); row k = c*%d + ky*%d + kx of B is"
        % (g.kh * g.kw, g.kw),
        "  // X[c][oy*%d - %d + ky*%d][ox*%d - %d + kx*%d], 0 in the padding; out-of-range threads "
        "use the last pixel." % (sy, py, dy, sx, px, dx),
        "  const int pix = min(col, %d);" % (s.n - 1),
        "  const int oy = pix / %d, ox = pix - oy * %d;" % (g.ow, g.ow),
        "  const int iy = oy * %d - %d, ix = ox * %d - %d;" % (sy, py, sx, px),
        "  const %s* __restrict__ Bp = B + blockIdx.z * %d;" % (elem, s.batch_stride_b),
        "  const int base = iy * %d + ix;" % g.w,
    ]
    offset = _conv_offset(g)
    if im.unmasked:
        return "\n".join(lines), "b0 = %s(Bp[base + %s]);" % (tof, offset) if tof else "b0 = Bp[base + %s];" % offset, _b_desc(g)
    ys = [f"y{ky} = (unsigned)({_plus('iy', ky * dy)}) < {g.h}u" for ky in range(g.kh) if not im.rows_ok[ky]]
    xs = [f"x{kx} = (unsigned)({_plus('ix', kx * dx)}) < {g.w}u" for kx in range(g.kw) if not im.cols_ok[kx]]
    lines.append("  // Taps that can fall in the padding; unsigned compare also rejects negatives.")
    lines += ["  const bool " + ", ".join(decls) + ";" for decls in (ys, xs) if decls]
    flags = [" && ".join(([f"y{tap.ky}"] if tap.check_y else []) + ([f"x{tap.kx}"] if tap.check_x else []))
             or "true" for tap in im.taps]
    lines.append("  const bool ok[%d] = {%s};" % (len(flags), ", ".join(flags)))
    index = "0" if len(flags) == 1 else "(k) %% %d" % len(flags)
    value = "%s(Bp[base + %s])" % (tof, offset) if tof else "Bp[base + %s]" % offset
    load = "b0 = ok[%s] ? %s : 0.f;" % (index, value)
    return "\n".join(lines), load, _b_desc(g)


def _plus(name: str, offset: int) -> str:
    return name if offset == 0 else f"{name} + {offset}"


def _b_desc(g: ConvGeometry) -> str:
    return (f"virtual im2col {g.k} x {g.n} of a {g.c_in} x {g.h} x {g.w} input, "
            f"{g.kh}x{g.kw} taps (never materialised)")


# Half precision: the CUDA names (cuda_fp16.h / cuda_bf16.h; hip_fp16.h and the HIP prelude below
# spell them the same; templates/emulate/host_shim.h defines them bit-exactly for run_host).
_HALF = {
    "float16": {"t": "__half", "t2": "__half2", "tof": "__half2float", "fromf": "__float2half_rn",
                "pair": "__halves2half2", "dup": "__float2half2_rn", "header": "cuda_fp16.h",
                "hip_header": "hip/hip_fp16.h"},
    "bfloat16": {"t": "__nv_bfloat16", "t2": "__nv_bfloat162", "tof": "__bfloat162float",
                 "fromf": "__float2bfloat16_rn", "pair": "__halves2bfloat162", "dup": "__float2bfloat162_rn",
                 "header": "cuda_bf16.h", "hip_header": None},
}
# HIP (5.x) has no __nv_bfloat16: the few bf16 helpers the fp32-accumulate kernels use, bit-exact
# (round to nearest even; NaN stays NaN). Packed bf16 (HFMA2.BF16) is not offered on HIP.
_HIP_BF16 = """struct __nv_bfloat16 { unsigned short x; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
__device__ inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.x << 16); }
__device__ inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const unsigned u = __float_as_uint(f);
  const unsigned r = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{(unsigned short)(r >> 16)};
}
__device__ inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
__device__ inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
__device__ inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }"""


def _half_prelude(s: Schedule, target: str) -> str:
    """Headers and the 4-column vector type of a half-precision unit ('' for float32)."""
    if s.dtype == "float32":
        return ""
    h = _HALF[s.dtype]
    if target == "hip":
        head = f"#include <{h['hip_header']}>" if h["hip_header"] else _HIP_BF16
    else:  # the emulator (g++ with the host shim) defines the types itself
        head = f"#ifndef SPARSERT_HOST_SHIM\n#include <{h['header']}>\n#endif"
    return head + f"\nstruct alignas(8) sr_h4 {{ {h['t2']} lo, hi; }};  // 4 columns: two packed pairs"


def _half_load(v: int, h: dict, ptr: str, dst: str, *, declare: bool) -> str:
    """Statements converting `v` half values at `ptr` to floats `dst0..` (one load of 2v bytes)."""
    decl = "const float " if declare else ""
    if v == 1:
        return f"{decl}{dst}0 = {h['tof']}(*({ptr}));"
    if v == 2:
        return (f"const {h['t2']} t_ = *reinterpret_cast<const {h['t2']}*>({ptr}); "
                f"{decl}{dst}0 = __low2float(t_); {decl}{dst}1 = __high2float(t_);")
    return (f"const sr_h4 t_ = *reinterpret_cast<const sr_h4*>({ptr}); "
            f"{decl}{dst}0 = __low2float(t_.lo); {decl}{dst}1 = __high2float(t_.lo); "
            f"{decl}{dst}2 = __low2float(t_.hi); {decl}{dst}3 = __high2float(t_.hi);")


def _half_store(v: int, h: dict, ptr: str, src: str) -> str:
    """Round floats `src0..` once to the half type and store them (one store of 2v bytes)."""
    q = [f"{h['fromf']}({src}{i})" for i in range(v)]
    if v == 1:
        return f"*({ptr}) = {q[0]};"
    pairs = [f"{h['pair']}({q[i]}, {q[i + 1]})" for i in range(0, v, 2)]
    if v == 2:
        return f"*reinterpret_cast<{h['t2']}*>({ptr}) = {pairs[0]};"
    return f"*reinterpret_cast<sr_h4*>({ptr}) = sr_h4{{{pairs[0]}, {pairs[1]}}};"


def _half_macros(s: Schedule) -> dict[str, str]:
    """_macros for half activations: 'float32' arithmetic (half loads converted to float, FFMA
    with the float32 weight, fp32 accumulators and partial sums, one rounding at the store) or
    packed half (accumulators hold two columns; F is one HFMA2 per pair of columns with the
    weight, already rounded to the half type by plan(), in both lanes)."""
    v, n, t = s.vec, s.n, s.threads_x
    h = _HALF[s.dtype]
    lanes = range(v)
    conv_setup = b_desc = ""
    residual = []
    if s.residual:
        residual.append(_half_load(v, h, "Rp + (row) * %d" % n, "r", declare=True))
    if not s.packed:
        vt = _vec_type(v)
        if s.conv is not None:
            if v != 1:
                raise OptionsError(f"vec={v}: a virtual im2col operand needs vec=1 (plan() enforces it)")
            conv_setup, load, b_desc = _conv_setup(s, h["t"], h["tof"])
        else:
            load = "{ %s }" % _half_load(v, h, "Bp + (k) * %d" % n, "b", declare=False) if v > 1 else (
                _half_load(v, h, "Bp + (k) * %d" % n, "b", declare=False))
        if v == 1:
            gather = "a##s##_0 += red[((g) * %d + (s)) * %d + tx];" % (s.rows_per_block, t)
        else:
            gather = "{ const %s t_ = red[((g) * %d + (s)) * %d + tx]; %s }" % (
                vt, s.rows_per_block, t, " ".join(f"a##s##_{i} += t_.{_LANES[i]};" for i in lanes))
        acc = [f"a##s##_{i}" for i in lanes]
        fma = " ".join(f"a##s##_{i} += (w) * b{i};" for i in lanes)
        zero = "float " + ", ".join(f"a##s##_{i} = 0.f" for i in lanes) + ";"
        partial = "red[(threadIdx.y * %d + (s)) * %d + tx] = %s;" % (s.rows_per_block, t, _pack(v, "a##s##_"))
        b_type, b_regs, red_type = "float", ", ".join(f"b{i}" for i in lanes), vt
    else:
        if s.conv is not None or v % 2:
            raise OptionsError(f"accumulate={s.accumulate!r}: packed half needs an even vec and no "
                               f"virtual im2col (plan() enforces it)")
        words = range(v // 2)
        t2 = h["t2"]
        if v == 2:
            load = "b0 = *reinterpret_cast<const %s*>(Bp + (k) * %d);" % (t2, n)
            partial = "red[(threadIdx.y * %d + (s)) * %d + tx] = a##s##_0;" % (s.rows_per_block, t)
            gather = "a##s##_0 = __hadd2(a##s##_0, red[((g) * %d + (s)) * %d + tx]);" % (s.rows_per_block, t)
            red_type = t2
        else:
            load = "{ const sr_h4 t_ = *reinterpret_cast<const sr_h4*>(Bp + (k) * %d); b0 = t_.lo; b1 = t_.hi; }" % n
            partial = "red[(threadIdx.y * %d + (s)) * %d + tx] = sr_h4{a##s##_0, a##s##_1};" % (s.rows_per_block, t)
            gather = ("{ const sr_h4 t_ = red[((g) * %d + (s)) * %d + tx]; a##s##_0 = __hadd2(a##s##_0, t_.lo); "
                      "a##s##_1 = __hadd2(a##s##_1, t_.hi); }" % (s.rows_per_block, t))
            red_type = "sr_h4"
        acc = [f"__{'low' if i % 2 == 0 else 'high'}2float(a##s##_{i // 2})" for i in lanes]
        fma = " ".join(f"a##s##_{j} = __hfma2({h['dup']}(w), b{j}, a##s##_{j});" for j in words)
        zero = f"{t2} " + ", ".join(f"a##s##_{j} = {h['dup']}(0.f)" for j in words) + ";"
        b_type, b_regs = t2, ", ".join(f"b{j}" for j in words)
    out = list(residual)
    for i in lanes:
        expr = acc[i]
        if s.bias_bits is not None:
            expr += " + (bias)"
        if s.residual:
            expr += f" + r{i}"
        out.append(f"float o{i} = {expr};")
        if s.relu:
            out.append(f"o{i} = fmaxf(o{i}, 0.f);")
    out.append(_half_store(v, h, "Cp + (row) * %d" % n, "o"))
    return {
        "load_macro": load, "fma_macro": fma, "zero_macro": zero,
        "store_macro": "if (live) { " + " ".join(out) + " }",
        "partial_macro": partial, "gather_macro": gather, "vec_type": red_type,
        "b_regs": b_regs, "b_type": b_type, "elem": h["t"], "conv_setup": conv_setup, "b_desc": b_desc,
    }


def _macros(s: Schedule) -> dict[str, str]:
    """The per-thread operations, written once as macros so each nonzero costs one short token."""
    if s.dtype != "float32":
        return _half_macros(s)
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
        "b_type": "float",
        "elem": "float",
        "conv_setup": conv_setup,
        "b_desc": b_desc,
    }


def _group_lines(work, literals: _Literals, indent: str) -> list[str]:
    """`L(k) F(slot, w) F(slot, w) ...` per distinct k, in k order."""
    runs = row_runs(work)
    slots, words = runs.slots, runs.bits.tolist()
    lines = []
    for j, k in enumerate(runs.ks):
        fmas = " ".join(f"F({slots[i]},{literals[words[i]]})" for i in range(runs.starts[j], runs.starts[j + 1]))
        lines.append(f"{indent}L({k}) {fmas}")
    return lines


def _store(s: Schedule, slot: int, row: int, literals: _Literals) -> str:
    if s.bias_bits is None:
        return f"S({slot},{row})"
    return f"S({slot},{row},{literals[s.bias_bits[row]]})"


def _block_body(s: Schedule, block: BlockWork, literals: _Literals) -> str:
    ind = "    "
    prog = lower_block(block)
    lines = [ind + " ".join(f"Z({i})" for i in range(len(block.rows)))]
    if not prog.split:
        lines += _group_lines(block.groups[0], literals, ind)
        lines.append(ind + " ".join(_store(s, f.slot, f.row, literals) for f in prog.finish[0]))
        return "\n".join(lines)
    # Split K (ir.lower): each group writes the partials of the slots it does not own; after the
    # barrier the owners add them (shared memory) and store.
    lines.append(ind + "switch (threadIdx.y) {")
    for g, work in enumerate(block.groups):
        lines.append(f"{ind}case {g}: {{")
        lines += _group_lines(work, literals, ind + "  ")
        if prog.partials[g]:
            lines.append(ind + "  " + " ".join(f"P({i})" for i in prog.partials[g]))
        lines.append(f"{ind}}} break;")
    lines.append(ind + "}")
    lines.append(ind + "__syncthreads();")
    lines.append(ind + "switch (threadIdx.y) {")
    for g in range(s.groups):
        ops = []
        for f in prog.finish[g]:
            ops += [f"Q({f.slot},{h})" for h in f.gathers]
            ops.append(_store(s, f.slot, f.row, literals))
        if ops:
            lines.append(f"{ind}case {g}: {' '.join(ops)} break;")
    lines.append(ind + "}")
    return "\n".join(lines)


def kernel_base_name(s: Schedule) -> str:
    return f"sparsert_{s.digest[:12]}"


def render(s: Schedule, target: str = "cuda") -> tuple[Unit, ...]:
    """All units (slabs) of a schedule. Deterministic: same schedule, same bytes."""
    d = dialect(target)
    template = _environment().get_template("cuda/spmm.cu.j2")
    literals = _Literals()
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
            prelude=d.prelude, half_prelude=_half_prelude(s, target), has_bias=s.bias_bits is not None, residual=s.residual,
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
