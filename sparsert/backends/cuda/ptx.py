"""Schedule -> PTX: the unrolled body written straight in PTX (no NVVM), as relocatable objects.

A slab (one launch) is an entry that calls the `.func` of its thread block (blockIdx.x picks
it). The functions live in relocatable objects (ptxas -c, several assembled at once) and nvlink
links them with the entry's object into one CUBIN: ptxas's time grows faster than linearly with
the size of one function, so a function per block keeps a big launch both fast to build and a
single kernel. The functions are `.noreturn` (they `exit`), so the call saves no registers; each
object is held by -maxrregcount to register_cap, the occupancy the schedule needs (uncapped,
ptxas gives functions far more registers than a lone kernel would use). A function that spills
anyway is assembled again alone under a higher cap and renamed; the entry calls that copy.

The CUDA path (render.py -> NVRTC) spends about half its time in NVVM turning a long, flat
program into PTX that is already nearly a 1:1 listing of the source. This emitter writes that
listing itself and leaves only ptxas (ptxas.py) to run. It follows the CUDA template operation
for operation, so the kernels compute the same numbers bit for bit:

* accumulators start at +0.0 and every nonzero is ``fma.rn.f32 acc, b, 0f<bits>, acc`` in the
  same (k, slot) order as ``F(s, w)``; the first FMA keeps its +0.0 addend, exactly as NVVM does,
  so ptxas cannot turn it into an FMUL (which would differ on -0.0);
* B rows are read with ``ld.global.nc`` (vec-wide), partial sums meet in shared memory in group
  order (``P``/``Q``), and the epilogue adds bias then residual, then clamps (``max.f32``), and
  stores only in-range columns (predicated, like ``if (live)``);
* same kernel names, launch geometry and parameters as render.render, so a unit from here is a
  drop-in replacement for the CUDA unit at launch time.

Registers are named, not SSA: ``%a<slot*vec+lane>`` accumulators, ``%b<buffer*vec+lane>`` the
rows of B in flight (``Schedule.prefetch`` buffers, software-pipelined). ptxas renames them
itself; reusing names keeps the PTX short (about 55 bytes per FMA).

Plain (batched) SpMM and convolutions through a virtual im2col (vec 1; the same constant tap
offsets and padding predicates as render._conv_setup). `unsupported()` names any Schedule field
this emitter does not know (a later extension) so callers fall back to NVRTC instead of emitting
a kernel that ignores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ...choices import VECTOR_WIDTHS
from ...errors import OptionsError
from ...ir.lower import Im2col, lower_block, row_runs
from ...ir.precision import pack2
from ...ir.schedule import BlockWork, GroupWork, Schedule
from ..base import package_digest

_MAX_IMM_OFFSET = 2**31 - 1  # PTX address immediates are signed 32-bit


# Every Schedule field the emitter reads or may ignore (notes). Any other field must be at its default.
_KNOWN_FIELDS = frozenset((
    "m", "k", "n", "threads_x", "vec", "groups", "rows_per_block", "blocks", "slabs", "bias_bits",
    "relu", "residual", "weight_digest", "batch", "batch_stride_b", "batch_stride_c", "extra",
    "prefetch", "conv", "dtype", "accumulate"))


def unsupported(s: Schedule) -> str | None:
    """Why this emitter cannot render `s` (None when it can)."""
    if s.vec not in VECTOR_WIDTHS:
        return f"vec={s.vec}"
    if s.conv is not None and s.vec != 1:
        return f"vec={s.vec} over a virtual im2col (conv) operand"
    if s.packed and (s.vec % 2 or s.conv is not None):
        return f"accumulate={s.accumulate!r} needs an even vec and no virtual im2col"
    for f in dataclasses.fields(s):
        if f.name in _KNOWN_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if getattr(s, f.name) != default:
            return f"schedule field {f.name!r} is set"
    return None


def emitter_digest() -> str:
    """Hash of the CUDA backend's own source files (and the IR it prints): stamped in every PTX
    header and part of the cache key, so any change to the emitter rebuilds kernels."""
    return package_digest("cuda")


_PTX_ISA = {100: "8.6", 101: "8.6", 103: "8.8", 110: "9.0", 120: "8.7", 121: "8.8"}


def ptx_isa_version(arch: str) -> str:
    """The oldest PTX ISA that knows `arch` (newer assemblers accept older ISAs)."""
    sm = int(arch[3:].rstrip("af"))
    if arch.endswith("f"):  # family-specific targets arrived with PTX 8.8
        return "8.8"
    if sm <= 90:
        return "8.0" if arch.endswith("a") else "7.8"
    return _PTX_ISA.get(sm, "9.0")


def _hex_words(bits: np.ndarray) -> list[str]:
    """uint32 array -> list of 8-digit upper-case hex strings, vectorised (formatting dominates)."""
    text = np.ascontiguousarray(bits, dtype=">u4").tobytes().hex().upper()
    return [text[i:i + 8] for i in range(0, len(text), 8)]


class _Emitter:
    """Builds a slab's PTX objects. Holds the per-schedule templates; `functions()` and `entry()`
    return an object's text."""

    def __init__(self, s: Schedule, arch: str):
        why = unsupported(s)
        if why is not None:
            raise OptionsError(f"the PTX backend cannot render this schedule ({why}); use backend='nvrtc'")
        self.s = s
        self.arch = arch
        v = s.vec
        self.row_bytes = s.elem_bytes * s.n  # one row of B, C or R
        self.red_bytes = (2 if s.packed else 4) * v  # one thread's slot in shared memory
        width = "" if v == 1 else f".v{v}"
        self.width = width
        # Half precision (see _half_* below): B, C, R of 2-byte elements, pointers scaled by 2.
        self.half = s.dtype != "float32"
        self.shift = 1 if self.half else 2
        self.words = max(1, v // 2)  # 32-bit words per row of a thread's half columns
        self.hwidth = "" if v <= 2 else ".v2"  # their vector width
        if self.half and s.dtype == "bfloat16" and int(arch[3:].rstrip("af")) < 80:
            raise OptionsError(f"dtype='bfloat16' needs sm_80 or newer (arch={arch!r})")
        # Virtual im2col: the predicate that guards each tap's loads (None: always inside the image).
        self.im2col = Im2col(s.conv) if s.conv is not None else None
        self.tap_flag: list[str | None] = [
            None if not tap.masked else f"%px{tap.kx}" if not tap.check_y else
            f"%py{tap.ky}" if not tap.check_x else f"%pk{tap.t}" for tap in self.im2col.taps
        ] if self.im2col is not None else []
        # Row buffers: buffer j holds registers %b<j*vec> .. %b<j*vec+vec-1>.
        self.depth = s.prefetch
        self.bregs = [
            f"%b{j * v}" if v == 1 else "{" + ", ".join(f"%b{j * v + i}" for i in range(v)) + "}"
            for j in range(self.depth)
        ]
        # One nonzero = `vec` FMAs; printf-style template per (buffer, slot), filled with the weight's hex.
        if self.half:
            self._half_init()
            return
        self.fma = [
            [
                "".join(f"\tfma.rn.f32 \t%%a{slot * v + i}, %%b{j * v + i}, 0f%s, %%a{slot * v + i};\n"
                        for i in range(v))
                for slot in range(s.rows_per_block)
            ]
            for j in range(self.depth)
        ]

    # -- addressing -------------------------------------------------------------------------
    def _addr(self, base: str, offset: int, out: list[str]) -> str:
        """`[base+offset]`, or a computed address when the offset is past a 32-bit immediate."""
        if offset <= _MAX_IMM_OFFSET:
            return f"[{base}+{offset}]" if offset else f"[{base}]"
        out.append(f"\tadd.s64 \t%rd15, {base}, {offset};\n")
        return "[%rd15]"

    def _load_b(self, k: int, buffer: int, out: list[str]) -> None:
        if self.s.conv is not None:
            self._load_im2col(k, buffer, out)
            return
        addr = self._addr("%rd1", k * self.row_bytes, out)
        if self.half:
            out.append(f"\tld.global.nc{self._hb_type()} \t{self.hregs[buffer]}, {addr};\n")
            return
        out.append(f"\tld.global.nc{self.width}.f32 \t{self.bregs[buffer]}, {addr};\n")

    def _load_im2col(self, k: int, buffer: int, out: list[str]) -> None:
        """Row k of the virtual im2col matrix: one float at a constant offset from the thread's
        input corner (%rd1). A tap that can fall in the padding loads through its clamped
        pointer (%rdt<tap>, always inside the image) and is ANDed with its mask (%m<tap>: all ones
        inside, 0 in the padding, giving +0.0 exactly as the CUDA source's `ok ? x : 0.f`).
        Unpredicated loads: predicated ones took ptxas twice as long and ~30 more registers."""
        g = self.s.conv
        c, t = self.im2col.channel_tap(k)
        if self.half:  # the mask applies after the conversion (_half_convert)
            offset = self.im2col.offset(k) if self.tap_flag[t] is None else c * g.h * g.w
            base = "%rd1" if self.tap_flag[t] is None else f"%rdt{t}"
            addr = self._addr(base, self.s.elem_bytes * offset, out)
            out.append(f"\tld.global.nc.b16 \t{self.hregs[buffer]}, {addr};\n")
            return
        reg = self.bregs[buffer]
        if self.tap_flag[t] is None:
            offset = self.im2col.offset(k)
            out.append(f"\tld.global.nc.f32 \t{reg}, {self._addr('%rd1', 4 * offset, out)};\n")
        else:  # %rdt<t> already points at the tap's (clamped) pixel of channel 0
            addr = self._addr(f"%rdt{t}", 4 * c * g.h * g.w, out)
            out.append(f"\tld.global.nc.f32 \t{reg}, {addr};\n\tand.b32 \t{reg}, {reg}, %m{t};\n")

    def _conv_setup(self, out: list[str]) -> None:
        """As render._conv_setup: output pixel (oy, ox) of column min(col, n - 1), its input corner
        (iy, ix), %rd1 = B + image offset + iy * W + ix (signed); per tap that can fall in the
        padding its validity (unsigned compares also reject negatives), a clamped pointer and a
        mask (see _load_im2col)."""
        s, g = self.s, self.s.conv
        (sy, sx), (py, px), (dy, dx) = g.stride, g.padding, g.dilation
        out.append(
            f"\tmin.s32 \t%r10, %r6, {s.n - 1};\n\tdiv.u32 \t%r11, %r10, {g.ow};\n"
            f"\tmul.lo.s32 \t%r12, %r11, {g.ow};\n\tsub.s32 \t%r12, %r10, %r12;\n"
            f"\tmul.lo.s32 \t%r13, %r11, {sy};\n\tsub.s32 \t%r13, %r13, {py};\n"
            f"\tmul.lo.s32 \t%r14, %r12, {sx};\n\tsub.s32 \t%r14, %r14, {px};\n"
            f"\tmad.lo.s32 \t%r15, %r13, {g.w}, %r14;\n"
            f"\tmul.lo.s32 \t%r8, %r5, {s.batch_stride_b};\n\tcvt.u64.u32 \t%rd6, %r8;\n"
            f"\tshl.b64 \t%rd11, %rd6, {self.shift};\n\tadd.s64 \t%rd11, %rd4, %rd11;\n"
            "\tcvt.s64.s32 \t%rd7, %r15;\n\tadd.s64 \t%rd6, %rd6, %rd7;\n"
            f"\tshl.b64 \t%rd6, %rd6, {self.shift};\n\tadd.s64 \t%rd1, %rd4, %rd6;\n")
        rows_ok, cols_ok = self.im2col.rows_ok, self.im2col.cols_ok
        for ky in range(g.kh):
            if not rows_ok[ky]:
                out.append(f"\tadd.s32 \t%r16, %r13, {ky * dy};\n\tsetp.lt.u32 \t%py{ky}, %r16, {g.h};\n")
        for kx in range(g.kw):
            if not cols_ok[kx]:
                out.append(f"\tadd.s32 \t%r16, %r14, {kx * dx};\n\tsetp.lt.u32 \t%px{kx}, %r16, {g.w};\n")
        for t, flag in enumerate(self.tap_flag):
            ky, kx = divmod(t, g.kw)
            if flag is not None and not rows_ok[ky] and not cols_ok[kx]:
                out.append(f"\tand.pred \t{flag}, %py{ky}, %px{kx};\n")
        # Flagged taps: a pointer to the clamped (always valid) pixel, and a bit mask that keeps
        # the loaded value where the tap is inside the image and makes it +0.0 in the padding.
        for t, flag in enumerate(self.tap_flag):
            if flag is None:
                continue
            ky, kx = divmod(t, g.kw)
            out.append(
                f"\tadd.s32 \t%r16, %r13, {ky * dy};\n\tmax.s32 \t%r16, %r16, 0;\n\tmin.s32 \t%r16, %r16, {g.h - 1};\n"
                f"\tadd.s32 \t%r17, %r14, {kx * dx};\n\tmax.s32 \t%r17, %r17, 0;\n\tmin.s32 \t%r17, %r17, {g.w - 1};\n"
                f"\tmad.lo.s32 \t%r18, %r16, {g.w}, %r17;\n\tcvt.s64.s32 \t%rd12, %r18;\n"
                f"\tshl.b64 \t%rd12, %rd12, {self.shift};\n\tadd.s64 \t%rdt{t}, %rd11, %rd12;\n"
                f"\tselp.b32 \t%m{t}, -1, 0, {flag};\n")

    # -- pieces of a block ------------------------------------------------------------------
    def _group_body(self, work: GroupWork, out: list[str]) -> None:
        """The group's rows of B in k order, software-pipelined: rows 0..D-1 are loaded first,
        and row j + D is loaded into row j's buffer as soon as row j's FMAs are issued, so every
        load is issued about D rows of work before its first use. The ptxas options keep this
        order (compiler.PTXAS_OPTIONS); the FMAs themselves run in (k, slot) order as in CUDA."""
        runs = row_runs(work)
        if not len(runs):
            return
        s = self.s
        words = _hex_words(pack2(runs.bits, s.accumulate) if s.packed else runs.bits)
        v, depth = self.s.vec, self.depth
        fills = 1 if s.packed else v  # packed: the pair is in one word
        ks, slots, starts = runs.ks, runs.slots, runs.starts
        for j in range(min(depth, len(ks))):
            self._load_b(ks[j], j, out)
        for j in range(len(ks)):
            fma = self.fma[j % depth]
            if self.half and not s.packed:
                self._half_convert(ks[j], j % depth, out)
            for i in range(starts[j], starts[j + 1]):
                out.append(fma[slots[i]] % ((words[i],) * fills))
            if j + depth < len(ks):
                self._load_b(ks[j + depth], j % depth, out)

    def _red_offset(self, group: int, slot: int) -> int:
        s = self.s
        return (group * s.rows_per_block + slot) * s.threads_x * self.red_bytes

    def _partial(self, group: int, slot: int, out: list[str]) -> None:  # P(s)
        v = self.s.vec
        if self.s.packed:
            w = self.words
            regs = f"%a{slot * w}" if w == 1 else "{" + ", ".join(f"%a{slot * w + i}" for i in range(w)) + "}"
            out.append(f"\tst.shared{self.hwidth}.b32 \t[%r20+{self._red_offset(group, slot)}], {regs};\n")
            return
        regs = f"%a{slot * v}" if v == 1 else "{" + ", ".join(f"%a{slot * v + i}" for i in range(v)) + "}"
        out.append(f"\tst.shared{self.width}.f32 \t[%r20+{self._red_offset(group, slot)}], {regs};\n")

    def _gather(self, slot: int, group: int, out: list[str]) -> None:  # Q(s, g)
        v = self.s.vec
        if self.s.packed:  # a + t rounded once to the half type
            w = self.words
            regs = "%t0" if w == 1 else "{" + ", ".join(f"%t{i}" for i in range(w)) + "}"
            out.append(f"\tld.shared{self.hwidth}.b32 \t{regs}, [%r20+{self._red_offset(group, slot)}];\n")
            for i in range(w):
                out.append(self.hadd.format(a=f"%a{slot * w + i}", t=f"%t{i}"))
            return
        regs = "%t0" if v == 1 else "{" + ", ".join(f"%t{i}" for i in range(v)) + "}"
        out.append(f"\tld.shared{self.width}.f32 \t{regs}, [%r20+{self._red_offset(group, slot)}];\n")
        for i in range(v):
            out.append(f"\tadd.rn.f32 \t%a{slot * v + i}, %a{slot * v + i}, %t{i};\n")

    def _store(self, slot: int, row: int, out: list[str]) -> None:  # S(s, row[, bias])
        s, v = self.s, self.s.vec
        offset = row * self.row_bytes
        if self.half:
            self._half_store(slot, row, out)
            return
        if s.residual:
            regs = "%q0" if v == 1 else "{" + ", ".join(f"%q{i}" for i in range(v)) + "}"
            addr = self._addr("%rd3", offset, out)
            out.append(f"\t@%p1 ld.global.nc{self.width}.f32 \t{regs}, {addr};\n")
        names = []
        for i in range(v):
            names.append(self._epilogue(i, f"%a{slot * v + i}", row, out))
        regs = names[0] if v == 1 else "{" + ", ".join(names) + "}"
        addr = self._addr("%rd2", offset, out)
        out.append(f"\t@%p1 st.global{self.width}.f32 \t{addr}, {regs};\n")

    def _epilogue(self, i: int, cur: str, row: int, out: list[str]) -> str:
        """Lane i's epilogue in fp32, in the CUDA source's order: + bias, + residual (%q<i>),
        ReLU, into %o<i>; returns the register holding the result (`cur` when there is none)."""
        s = self.s
        if s.bias_bits is not None:
            out.append(f"\tadd.rn.f32 \t%o{i}, {cur}, 0f{s.bias_bits[row]:08X};\n")
            cur = f"%o{i}"
        if s.residual:
            out.append(f"\tadd.rn.f32 \t%o{i}, {cur}, %q{i};\n")
            cur = f"%o{i}"
        if s.relu:
            out.append(f"\tmax.f32 \t%o{i}, {cur}, 0f00000000;\n")
            cur = f"%o{i}"
        return cur

    def _dispatch(self, reg: str, labels: list[str], out: list[str], prefix: str, uniform: bool) -> None:
        """Branch to labels[reg] by binary search (the register is known to be in range)."""
        bra = "bra.uni" if uniform else "bra"

        def node(lo: int, hi: int, name: str | None) -> None:
            if name:
                out.append(f"{name}:\n")
            if hi - lo == 1:
                out.append(f"\tbra.uni \t{labels[lo]};\n")
                return
            mid = (lo + hi) // 2
            left = f"{prefix}_{lo}_{mid}"
            out.append(f"\tsetp.lt.u32 \t%p2, {reg}, {mid};\n\t@%p2 {bra} \t{left};\n")
            node(mid, hi, None)
            node(lo, mid, left)

        node(0, len(labels), None)

    def _block(self, block: BlockWork, out: list[str]) -> None:
        s, v = self.s, self.s.vec
        label = "$B"
        if s.packed:
            out.append("".join(f"\tmov.b32 \t%a{j}, 0;\n" for j in range(len(block.rows) * self.words)))
        else:
            out.append("".join(f"\tmov.f32 \t%a{j}, 0f00000000;\n" for j in range(len(block.rows) * v)))
        prog = lower_block(block)
        if not prog.split:
            self._group_body(block.groups[0], out)
            for f in prog.finish[0]:
                self._store(f.slot, f.row, out)
            out.append("\texit;\n")
            return
        # The split-K epilogue of ir.lower: partials to shared memory, a barrier, owners gather.
        uniform = s.threads_x % 32 == 0  # threadIdx.y is warp-uniform only when warps do not straddle groups
        groups = [f"{label}g{g}" for g in range(s.groups)]
        self._dispatch("%r4", groups, out, f"{label}d", uniform)
        for g, work in enumerate(block.groups):
            out.append(f"{groups[g]}:\n")
            self._group_body(work, out)
            for i in prog.partials[g]:
                self._partial(g, i, out)
            out.append(f"\tbra.uni \t{label}y;\n")
        out.append(f"{label}y:\n\tbar.sync \t0;\n")
        ends = [f"{label}e{g}" for g in range(s.groups)]
        self._dispatch("%r4", ends, out, f"{label}f", uniform)
        for g in range(s.groups):
            out.append(f"{ends[g]}:\n")
            for f in prog.finish[g]:
                for h in f.gathers:
                    self._gather(f.slot, h, out)
                self._store(f.slot, f.row, out)
            out.append("\texit;\n")

    # -- half precision ---------------------------------------------------------------------
    # B rows in flight stay in their 16-bit form (%hb<buffer> at vec 1, else %w<buffer*words+i>
    # words of two columns) until their FMAs: 'float32' arithmetic converts them there (into
    # %c<lane>, exactly: cvt.f32.f16, or the bf16 bits shifted into a float's top half), so a
    # load is still `prefetch` rows ahead of its use; packed arithmetic multiplies the words
    # directly (fma.rn.{f16,bf16}x2 with the weight in both halves of a 32-bit constant, which
    # ptxas folds into the HFMA2's immediate). The epilogue runs in fp32 and rounds once
    # (cvt.rn.f16.f32 / cvt.rn.bf16.f32).
    def _half_init(self) -> None:
        s, v, w = self.s, self.s.vec, self.words
        self.hregs = [f"%hb{j}" if v == 1 else
                      ("{" + ", ".join(f"%w{j * w + i}" for i in range(w)) + "}" if w > 1 else f"%w{j * w}")
                      for j in range(self.depth)]
        op = "bf16x2" if s.accumulate == "bfloat16" else "f16x2"
        if s.packed:
            self.fma = [
                ["\tmov.b32 \t%%k, 0x%s;\n" + "".join(
                    f"\tfma.rn.{op} \t%%a{slot * w + i}, %%w{j * w + i}, %%k, %%a{slot * w + i};\n" for i in range(w))
                 for slot in range(s.rows_per_block)]
                for j in range(self.depth)]
            sm = int(self.arch[3:].rstrip("af"))
            # a + t rounded once: add.rn.bf16x2 needs sm_90; before it, t * 1 + a (%one: 1.0 twice)
            self.one = op == "bf16x2" and sm < 90
            self.hadd = ("\tfma.rn.bf16x2 \t{a}, {t}, %one, {a};\n" if self.one
                         else f"\tadd.rn.{op} \t{{a}}, {{a}}, {{t}};\n")
        else:
            tmpl = [[
                "".join(f"\tfma.rn.f32 \t%%a{slot * v + i}, %%c{i}, 0f%s, %%a{slot * v + i};\n" for i in range(v))
                for slot in range(s.rows_per_block)]]
            self.fma = tmpl * self.depth

    def _hb_type(self) -> str:
        return ".b16" if self.s.vec == 1 else f"{self.hwidth}.b32"

    def _unpack(self, word: str, lo: str, hi: str, out: list[str]) -> None:
        """Two float32 registers from a word of two halves (exact)."""
        if self.s.dtype == "bfloat16":
            out.append(f"\tshl.b32 \t{lo}, {word}, 16;\n\tand.b32 \t{hi}, {word}, -65536;\n")
        else:
            out.append(f"\tmov.b32 \t{{%h0, %h1}}, {word};\n\tcvt.f32.f16 \t{lo}, %h0;\n"
                       f"\tcvt.f32.f16 \t{hi}, %h1;\n")

    def _widen(self, half: str, dst: str, out: list[str]) -> None:
        """One float32 register from a 16-bit one (exact)."""
        if self.s.dtype == "bfloat16":
            out.append(f"\tmov.b32 \t{dst}, {{%hz, {half}}};\n")
        else:
            out.append(f"\tcvt.f32.f16 \t{dst}, {half};\n")

    def _half_convert(self, k: int, buffer: int, out: list[str]) -> None:
        """Row k's columns (in `buffer`) as float32 in %c<lane>, right before their FMAs."""
        v, w = self.s.vec, self.words
        if v == 1:
            self._widen(f"%hb{buffer}", "%c0", out)
            if self.im2col is not None:
                t = self.im2col.channel_tap(k)[1]
                if self.tap_flag[t] is not None:  # +0.0 in the padding (as the CUDA source's `ok ? x : 0.f`)
                    out.append(f"\tand.b32 \t%c0, %c0, %m{t};\n")
            return
        for i in range(w):
            self._unpack(f"%w{buffer * w + i}", f"%c{2 * i}", f"%c{2 * i + 1}", out)

    def _half_store(self, slot: int, row: int, out: list[str]) -> None:
        """S(s, row[, bias]) for half C: fp32 lanes, epilogue in fp32, one rounding, one store."""
        s, v, w = self.s, self.s.vec, self.words
        offset = row * self.row_bytes
        plain = s.bias_bits is None and not s.residual and not s.relu
        if s.packed and plain:  # the accumulators are C's bits already
            regs = f"%a{slot * w}" if w == 1 else "{" + ", ".join(f"%a{slot * w + i}" for i in range(w)) + "}"
            out.append(f"\t@%p1 st.global{self.hwidth}.b32 \t{self._addr('%rd2', offset, out)}, {regs};\n")
            return
        if s.residual:
            addr = self._addr("%rd3", offset, out)
            if v == 1:
                out.append(f"\t@%p1 ld.global.nc.b16 \t%hq0, {addr};\n")
                self._widen("%hq0", "%q0", out)
            else:
                regs = "%wq0" if w == 1 else "{" + ", ".join(f"%wq{i}" for i in range(w)) + "}"
                out.append(f"\t@%p1 ld.global.nc{self.hwidth}.b32 \t{regs}, {addr};\n")
                for i in range(w):
                    self._unpack(f"%wq{i}", f"%q{2 * i}", f"%q{2 * i + 1}", out)
        if s.packed:
            for i in range(w):
                self._unpack(f"%a{slot * w + i}", f"%o{2 * i}", f"%o{2 * i + 1}", out)
            lanes = [f"%o{i}" for i in range(v)]
        else:
            lanes = [f"%a{slot * v + i}" for i in range(v)]
        for i in range(v):
            cur = self._epilogue(i, lanes[i], row, out)
            out.append(f"\tcvt.rn.{'bf16' if s.dtype == 'bfloat16' else 'f16'}.f32 \t%ho{i}, {cur};\n")
        if v == 1:
            out.append(f"\t@%p1 st.global.b16 \t{self._addr('%rd2', offset, out)}, %ho0;\n")
            return
        for i in range(w):
            out.append(f"\tmov.b32 \t%wo{i}, {{%ho{2 * i}, %ho{2 * i + 1}}};\n")
        regs = "%wo0" if w == 1 else "{" + ", ".join(f"%wo{i}" for i in range(w)) + "}"
        out.append(f"\t@%p1 st.global{self.hwidth}.b32 \t{self._addr('%rd2', offset, out)}, {regs};\n")

    def _half_registers(self) -> str:
        s, v, w = self.s, self.s.vec, self.words
        acc = f".b32 \t%a<{max(1, s.rows_per_block * w)}>" if s.packed else f".f32 \t%a<{max(1, s.rows_per_block * v)}>"
        return ("\t.reg .pred \t%p<3>;\n\t.reg .b32 \t%r<24>;\n\t.reg .b64 \t%rd<16>;\n"
                f"\t.reg {acc};\n\t.reg .b16 \t%hb<{self.depth}>;\n\t.reg .b32 \t%w<{w * self.depth}>;\n"
                f"\t.reg .f32 \t%c<{v}>;\n\t.reg .b16 \t%h<2>;\n\t.reg .b16 \t%hz;\n"
                f"\t.reg .b32 \t%k;\n\t.reg .b32 \t%one;\n\t.reg .b32 \t%t<{max(v, w)}>;\n"
                f"\t.reg .f32 \t%q<{v}>;\n\t.reg .f32 \t%o<{v}>;\n\t.reg .b16 \t%ho<{v}>;\n"
                f"\t.reg .b16 \t%hq<1>;\n\t.reg .b32 \t%wq<{w}>;\n\t.reg .b32 \t%wo<{w}>;\n")

    # -- the objects ------------------------------------------------------------------------
    def _params(self) -> list[tuple[str, str]]:
        """A block function's parameters: B, C (, R) and, with thread groups, S: the shared-memory
        address of the kernel's reduction buffer. The entry owns the buffer and passes it, so no
        object but the entry's names a shared symbol."""
        s = self.s
        return ([("B", "u64"), ("C", "u64")] + ([("R", "u64")] if s.residual else [])
                + ([("S", "u32")] if s.groups > 1 else []))

    def _function(self, name: str, block: BlockWork, out: list[str]) -> None:
        """One block's work as a `.visible .func` of a relocatable object. `.noreturn` (it ends in
        `exit`): a caller that never resumes needs no registers saved, so the call costs no stack
        frame and no spill (without it ptxas saved ~45 registers)."""
        s, v = self.s, self.s.vec
        out.append(f".visible .func {name}(\n" + ",\n".join(f"\t.param .{w} {name}_{p}" for p, w in self._params())
                   + "\n) .noreturn\n{\n")
        if self.half:
            out.append(self._half_registers())
        else:
            out.append("\t.reg .pred \t%p<3>;\n\t.reg .b32 \t%r<24>;\n\t.reg .b64 \t%rd<16>;\n"
                       f"\t.reg .f32 \t%a<{max(1, s.rows_per_block * v)}>;\n"
                       f"\t.reg .f32 \t%b<{v * self.depth}>;\n\t.reg .f32 \t%t<{v}>;\n"
                       f"\t.reg .f32 \t%q<{v}>;\n\t.reg .f32 \t%o<{v}>;\n")
        if s.conv is not None:
            g = s.conv
            out.append(f"\t.reg .pred \t%py<{g.kh}>;\n\t.reg .pred \t%px<{g.kw}>;\n"
                       f"\t.reg .pred \t%pk<{g.kh * g.kw}>;\n\t.reg .b64 \t%rdt<{g.kh * g.kw}>;\n"
                       f"\t.reg .b32 \t%m<{g.kh * g.kw}>;\n")
        # r1 tx, r2 ctaid.y, r4 tid.y, r5 ctaid.z, r6 col, r7 min(col, n - vec)
        out.append(
            f"\tld.param.u64 \t%rd4, [{name}_B];\n\tld.param.u64 \t%rd5, [{name}_C];\n"
            "\tcvta.to.global.u64 \t%rd4, %rd4;\n\tcvta.to.global.u64 \t%rd5, %rd5;\n"
            "\tmov.u32 \t%r1, %tid.x;\n\tmov.u32 \t%r2, %ctaid.y;\n"
            "\tmov.u32 \t%r4, %tid.y;\n\tmov.u32 \t%r5, %ctaid.z;\n"
            f"\tmul.lo.s32 \t%r6, %r2, {s.tile_n};\n\tmad.lo.s32 \t%r6, %r1, {v}, %r6;\n"
            f"\tsetp.lt.s32 \t%p1, %r6, {s.n};\n\tmin.s32 \t%r7, %r6, {s.n - v};\n"
            f"\tmul.lo.s32 \t%r9, %r5, {s.batch_stride_c};\n\tcvt.u64.u32 \t%rd8, %r9;\n"
            "\tcvt.s64.s32 \t%rd9, %r6;\n\tadd.s64 \t%rd8, %rd8, %rd9;\n"
            f"\tshl.b64 \t%rd8, %rd8, {self.shift};\n\tadd.s64 \t%rd2, %rd5, %rd8;\n"
        )
        if s.conv is not None:
            self._conv_setup(out)
        else:  # B + blockIdx.z * stride_b + min(col, n - vec): 32-bit unsigned product, as in C++
            out.append(
                f"\tmul.lo.s32 \t%r8, %r5, {s.batch_stride_b};\n\tcvt.u64.u32 \t%rd6, %r8;\n"
                "\tcvt.s64.s32 \t%rd7, %r7;\n\tadd.s64 \t%rd6, %rd6, %rd7;\n"
                f"\tshl.b64 \t%rd6, %rd6, {self.shift};\n\tadd.s64 \t%rd1, %rd4, %rd6;\n")
        if s.residual:
            out.append(f"\tld.param.u64 \t%rd10, [{name}_R];\n\tcvta.to.global.u64 \t%rd10, %rd10;\n"
                       "\tadd.s64 \t%rd3, %rd10, %rd8;\n")
        if self.half:
            out.append("\tmov.b16 \t%hz, 0;\n")
            if s.packed and self.one and s.groups > 1:
                out.append("\tmov.b32 \t%one, 0x3F803F80;\n")
        if s.groups > 1:
            out.append(f"\tld.param.u32 \t%r20, [{name}_S];\n"
                       f"\tmad.lo.s32 \t%r20, %r1, {self.red_bytes}, %r20;\n")
        self._block(block, out)
        out.append("}\n\n")

    def _header(self, what: str) -> str:
        s = self.s
        return (f"// Generated by sparsert (PTX emitter {emitter_digest()}): {what}\n"
                f"// {s.m} x {s.k} sparse ({s.nnz} nonzeros) @ {s.k} x {s.n} dense; schedule "
                f"{s.threads_x} x {s.vec} columns, {s.groups} group(s), {s.rows_per_block} rows per "
                f"block, {s.prefetch} rows of B in flight\n"
                + ("" if not self.half else f"// {s.dtype} B, C, R; {s.accumulate} arithmetic\n")
                + f".version {ptx_isa_version(self.arch)}\n.target {self.arch}\n.address_size 64\n\n")

    def functions(self, blocks: Sequence[tuple[str, BlockWork]], what: str) -> str:
        """A relocatable object defining one `.func` per (name, block)."""
        nnz = sum(b.nnz for _, b in blocks)
        out = [self._header(f"{what}; {len(blocks)} function(s), {nnz} nonzeros")]
        for fn, block in blocks:
            self._function(fn, block, out)
        return "".join(out)

    def entry(self, kernel: str, callees: Sequence[str], what: str) -> str:
        """The entry's object: it owns the split-K reduction buffer and calls the function of its
        blockIdx.x (a binary search: log2(blocks) uniform branches). No `.maxnreg`: each function
        object is held to its cap by ptxas, and nvlink gives the kernel the most any callee uses."""
        s = self.s
        params = ["B", "C"] + (["R"] if s.residual else [])
        args = [f"%rd{i + 1}" for i in range(len(params))] + (["%r2"] if s.groups > 1 else [])
        plist = ", ".join(f".param .{w} {p}" for p, w in self._params())
        out = [self._header(what)]
        if s.groups > 1:
            out.append(f".shared .align 16 .b8 \t{kernel}_red[{s.shared_bytes}];\n\n")
        out.extend(f".extern .func {fn}({plist}) .noreturn;\n" for fn in callees)
        out.append(f"\n.visible .entry {kernel}(\n" + ",\n".join(f"\t.param .u64 {kernel}_{p}" for p in params)
                   + f"\n)\n.maxntid {s.threads_x * s.groups}, 1, 1\n{{\n"
                   "\t.reg .pred \t%p<3>;\n\t.reg .b32 \t%r<4>;\n\t.reg .b64 \t%rd<4>;\n")
        for i, p in enumerate(params):
            out.append(f"\tld.param.u64 \t%rd{i + 1}, [{kernel}_{p}];\n")
        if s.groups > 1:
            out.append(f"\tmov.u32 \t%r2, {kernel}_red;\n")
        out.append("\tmov.u32 \t%r3, %ctaid.x;\n")
        labels = [f"$C{i}" for i in range(len(callees))]
        self._dispatch("%r3", labels, out, "$D", True)
        widths = [w for _, w in self._params()]
        for label, fn in zip(labels, callees):
            out.append(f"{label}:\n\t{{\n")
            out.append("".join(f"\t.param .{w} \targ{i};\n\tst.param.{w} \t[arg{i}], {a};\n"
                               for i, (a, w) in enumerate(zip(args, widths))))
            out.append(f"\tcall.uni \t{fn}, ({', '.join(f'arg{i}' for i in range(len(args)))});\n\t}}\n")
        out.append("}\n")
        return "".join(out)
