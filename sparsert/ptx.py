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
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import OptionsError
from .plan import MAX_REGISTERS_PER_THREAD, REGISTER_FILE, BlockWork, GroupWork, Schedule
from .render import Unit, launch_units

_MAX_IMM_OFFSET = 2**31 - 1  # PTX address immediates are signed 32-bit


# Every Schedule field the emitter reads or may ignore (notes). Any other field must be at its default.
_KNOWN_FIELDS = frozenset((
    "m", "k", "n", "threads_x", "vec", "groups", "rows_per_block", "blocks", "slabs", "bias_bits",
    "relu", "residual", "weight_digest", "batch", "batch_stride_b", "batch_stride_c", "extra",
    "prefetch", "conv"))


def unsupported(s: Schedule) -> str | None:
    """Why this emitter cannot render `s` (None when it can)."""
    if s.vec not in (1, 2, 4):
        return f"vec={s.vec}"
    if s.conv is not None and s.vec != 1:
        return f"vec={s.vec} over a virtual im2col (conv) operand"
    for f in dataclasses.fields(s):
        if f.name in _KNOWN_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if getattr(s, f.name) != default:
            return f"schedule field {f.name!r} is set"
    return None


@lru_cache(maxsize=1)
def emitter_digest() -> str:
    """Hash of this file: part of the cache key, so any change to the emitter rebuilds kernels."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


_PTX_ISA = {100: "8.6", 101: "8.6", 103: "8.8", 110: "9.0", 120: "8.7", 121: "8.8"}


def ptx_isa_version(arch: str) -> str:
    """The oldest PTX ISA that knows `arch` (newer assemblers accept older ISAs)."""
    sm = int(arch[3:].rstrip("af"))
    if arch.endswith("f"):  # family-specific targets arrived with PTX 8.8
        return "8.8"
    if sm <= 90:
        return "8.0" if arch.endswith("a") else "7.8"
    return _PTX_ISA.get(sm, "9.0")


# Registers beyond accumulators and rows of B in flight: pointers, indices, predicates (measured
# on the whole-kernel layout: 16 at vec 1, 22-29 at vec 2, 34-40 at vec 4); a clamped im2col tap adds
# its pointer and mask (0-4 measured, 3 typical).
_BASE_REGISTERS = {1: 16, 2: 24, 4: 36}
_TAP_REGISTERS = 3
# Few FMAs per row of B loaded (about rows x density: 3.2 at 95% sparse and 64 rows, 6.4 at 90%)
# and the function layout needs more: 85 of the 96 DLMC Transformer layers at 95% spilled at 96
# registers and fit at 126 (results/history/compile_time-dlmc-first-cap-96.json), where 10 of 96
# at 90% did. Below this ratio the first cap starts one step up.
_SPARSE_PIPELINE_FMAS = 5.0
_SPARSE_PIPELINE_REGISTERS = 8


def register_cap(s: Schedule, *, at_least: int = 0) -> int:
    """The entry's `.maxnreg`. In whole-program mode ptxas sizes a lone kernel by itself, but a
    kernel that calls functions may take up to 255 (measured during development: 149 where the
    lone kernel of the default schedule used 96), which would cut occupancy. The cap is the schedule's estimated need
    (at least `at_least`), raised to the most registers that keep the same number of resident
    blocks per SM: headroom that costs no occupancy."""
    v = s.vec
    need = s.rows_per_block * v + s.prefetch * v + _BASE_REGISTERS[v]
    if s.fmas_per_load < _SPARSE_PIPELINE_FMAS:
        need += _SPARSE_PIPELINE_REGISTERS
    if s.conv is not None:
        rows_ok, cols_ok = s.conv.tap_rows_always_valid(), s.conv.tap_cols_always_valid()
        need += _TAP_REGISTERS * sum(not (r and c) for r in rows_ok for c in cols_ok)
    need = -(-max(need, at_least) // 8) * 8  # allocated per thread in steps of 8
    warps = -(-s.threads_x * s.groups // 32)
    blocks = REGISTER_FILE // (need * 32 * warps)
    if blocks == 0 or need >= MAX_REGISTERS_PER_THREAD:
        return MAX_REGISTERS_PER_THREAD
    return min(MAX_REGISTERS_PER_THREAD, max(need, REGISTER_FILE // (blocks * 32 * warps) // 8 * 8))


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
        self.row_bytes = 4 * s.n  # one row of B, C or R
        self.red_bytes = 4 * v  # one thread's slot in shared memory
        width = "" if v == 1 else f".v{v}"
        self.width = width
        # Virtual im2col: the predicate that guards each tap's loads (None: always inside the image).
        self.tap_flag: list[str | None] = []
        if s.conv is not None:
            g = s.conv
            rows_ok, cols_ok = g.tap_rows_always_valid(), g.tap_cols_always_valid()
            for ky in range(g.kh):
                for kx in range(g.kw):
                    t = ky * g.kw + kx
                    self.tap_flag.append(
                        None if rows_ok[ky] and cols_ok[kx] else
                        f"%px{kx}" if rows_ok[ky] else f"%py{ky}" if cols_ok[kx] else f"%pk{t}")
        # Row buffers: buffer j holds registers %b<j*vec> .. %b<j*vec+vec-1>.
        self.depth = s.prefetch
        self.bregs = [
            f"%b{j * v}" if v == 1 else "{" + ", ".join(f"%b{j * v + i}" for i in range(v)) + "}"
            for j in range(self.depth)
        ]
        # One nonzero = `vec` FMAs; printf-style template per (buffer, slot), filled with the weight's hex.
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
        out.append(f"\tld.global.nc{self.width}.f32 \t{self.bregs[buffer]}, {addr};\n")

    def _load_im2col(self, k: int, buffer: int, out: list[str]) -> None:
        """Row k of the virtual im2col matrix: one float at a constant offset from the thread's
        input corner (%rd1). A tap that can fall in the padding loads through its clamped
        pointer (%rdt<tap>, always inside the image) and is ANDed with its mask (%m<tap>: all ones
        inside, 0 in the padding, giving +0.0 exactly as the CUDA source's `ok ? x : 0.f`).
        Unpredicated loads: predicated ones took ptxas twice as long and ~30 more registers."""
        g = self.s.conv
        taps = g.kh * g.kw
        c, t = divmod(k, taps)
        ky, kx = divmod(t, g.kw)
        reg = self.bregs[buffer]
        if self.tap_flag[t] is None:
            offset = c * g.h * g.w + ky * g.dilation[0] * g.w + kx * g.dilation[1]
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
            "\tshl.b64 \t%rd11, %rd6, 2;\n\tadd.s64 \t%rd11, %rd4, %rd11;\n"
            "\tcvt.s64.s32 \t%rd7, %r15;\n\tadd.s64 \t%rd6, %rd6, %rd7;\n"
            "\tshl.b64 \t%rd6, %rd6, 2;\n\tadd.s64 \t%rd1, %rd4, %rd6;\n")
        rows_ok, cols_ok = g.tap_rows_always_valid(), g.tap_cols_always_valid()
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
                f"\tshl.b64 \t%rd12, %rd12, 2;\n\tadd.s64 \t%rdt{t}, %rd11, %rd12;\n"
                f"\tselp.b32 \t%m{t}, -1, 0, {flag};\n")

    # -- pieces of a block ------------------------------------------------------------------
    def _group_body(self, work: GroupWork, out: list[str]) -> None:
        """The group's rows of B in k order, software-pipelined: rows 0..D-1 are loaded first,
        and row j + D is loaded into row j's buffer as soon as row j's FMAs are issued, so every
        load is issued about D rows of work before its first use. The ptxas options keep this
        order (compiler.PTXAS_OPTIONS); the FMAs themselves run in (k, slot) order as in CUDA."""
        k, slot, bits = work.arrays()
        if len(k) == 0:
            return
        words = _hex_words(bits)
        v, depth = self.s.vec, self.depth
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]).tolist() + [len(k)]
        ks, slots = k.tolist(), slot.tolist()
        rows = list(zip(starts[:-1], starts[1:]))
        for j in range(min(depth, len(rows))):
            self._load_b(ks[rows[j][0]], j, out)
        for j, (a, b) in enumerate(rows):
            fma = self.fma[j % depth]
            for i in range(a, b):
                out.append(fma[slots[i]] % ((words[i],) * v))
            if j + depth < len(rows):
                self._load_b(ks[rows[j + depth][0]], j % depth, out)

    def _red_offset(self, group: int, slot: int) -> int:
        s = self.s
        return (group * s.rows_per_block + slot) * s.threads_x * self.red_bytes

    def _partial(self, group: int, slot: int, out: list[str]) -> None:  # P(s)
        v = self.s.vec
        regs = f"%a{slot * v}" if v == 1 else "{" + ", ".join(f"%a{slot * v + i}" for i in range(v)) + "}"
        out.append(f"\tst.shared{self.width}.f32 \t[%r20+{self._red_offset(group, slot)}], {regs};\n")

    def _gather(self, slot: int, group: int, out: list[str]) -> None:  # Q(s, g)
        v = self.s.vec
        regs = "%t0" if v == 1 else "{" + ", ".join(f"%t{i}" for i in range(v)) + "}"
        out.append(f"\tld.shared{self.width}.f32 \t{regs}, [%r20+{self._red_offset(group, slot)}];\n")
        for i in range(v):
            out.append(f"\tadd.rn.f32 \t%a{slot * v + i}, %a{slot * v + i}, %t{i};\n")

    def _store(self, slot: int, row: int, out: list[str]) -> None:  # S(s, row[, bias])
        s, v = self.s, self.s.vec
        offset = row * self.row_bytes
        if s.residual:
            regs = "%q0" if v == 1 else "{" + ", ".join(f"%q{i}" for i in range(v)) + "}"
            addr = self._addr("%rd3", offset, out)
            out.append(f"\t@%p1 ld.global.nc{self.width}.f32 \t{regs}, {addr};\n")
        names = []
        for i in range(v):
            acc = f"%a{slot * v + i}"
            if s.bias_bits is None and not s.residual and not s.relu:
                names.append(acc)
                continue
            cur = acc
            if s.bias_bits is not None:
                out.append(f"\tadd.rn.f32 \t%o{i}, {cur}, 0f{s.bias_bits[row]:08X};\n")
                cur = f"%o{i}"
            if s.residual:
                out.append(f"\tadd.rn.f32 \t%o{i}, {cur}, %q{i};\n")
                cur = f"%o{i}"
            if s.relu:
                out.append(f"\tmax.f32 \t%o{i}, {cur}, 0f00000000;\n")
            names.append(f"%o{i}")
        regs = names[0] if v == 1 else "{" + ", ".join(names) + "}"
        addr = self._addr("%rd2", offset, out)
        out.append(f"\t@%p1 st.global{self.width}.f32 \t{addr}, {regs};\n")

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
        out.append("".join(f"\tmov.f32 \t%a{j}, 0f00000000;\n" for j in range(len(block.rows) * v)))
        if s.groups == 1:
            self._group_body(block.groups[0], out)
            for i, row in enumerate(block.rows):
                self._store(i, row, out)
            out.append("\texit;\n")
            return
        # Same split-K epilogue as render._block_body: slot i is finished by group i % groups.
        users = block.slot_users()
        owner = [i % s.groups for i in range(len(block.rows))]
        uniform = s.threads_x % 32 == 0  # threadIdx.y is warp-uniform only when warps do not straddle groups
        groups = [f"{label}g{g}" for g in range(s.groups)]
        self._dispatch("%r4", groups, out, f"{label}d", uniform)
        for g, work in enumerate(block.groups):
            out.append(f"{groups[g]}:\n")
            self._group_body(work, out)
            for i, u in enumerate(users):
                if g in u and owner[i] != g:
                    self._partial(g, i, out)
            out.append(f"\tbra.uni \t{label}y;\n")
        out.append(f"{label}y:\n\tbar.sync \t0;\n")
        ends = [f"{label}e{g}" for g in range(s.groups)]
        self._dispatch("%r4", ends, out, f"{label}f", uniform)
        for g in range(s.groups):
            out.append(f"{ends[g]}:\n")
            for i, row in enumerate(block.rows):
                if owner[i] == g:
                    for h in users[i]:
                        if h != g:
                            self._gather(i, h, out)
                    self._store(i, row, out)
            out.append("\texit;\n")

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
            "\tshl.b64 \t%rd8, %rd8, 2;\n\tadd.s64 \t%rd2, %rd5, %rd8;\n"
        )
        if s.conv is not None:
            self._conv_setup(out)
        else:  # B + blockIdx.z * stride_b + min(col, n - vec): 32-bit unsigned product, as in C++
            out.append(
                f"\tmul.lo.s32 \t%r8, %r5, {s.batch_stride_b};\n\tcvt.u64.u32 \t%rd6, %r8;\n"
                "\tcvt.s64.s32 \t%rd7, %r7;\n\tadd.s64 \t%rd6, %rd6, %rd7;\n"
                "\tshl.b64 \t%rd6, %rd6, 2;\n\tadd.s64 \t%rd1, %rd4, %rd6;\n")
        if s.residual:
            out.append(f"\tld.param.u64 \t%rd10, [{name}_R];\n\tcvta.to.global.u64 \t%rd10, %rd10;\n"
                       "\tadd.s64 \t%rd3, %rd10, %rd8;\n")
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
                f".version {ptx_isa_version(self.arch)}\n.target {self.arch}\n.address_size 64\n\n")

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
            out.append(f".shared .align 16 .b8 \t{kernel}_red[{s.shared_floats * 4}];\n\n")
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
