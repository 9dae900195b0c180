"""A tiny PTX interpreter for the subset sparsert.ptx emits, with exact IEEE float32 semantics.

Tests use it to run the PTX backend's kernels on the CPU (no GPU here) and compare them bit for
bit with a reference model of the CUDA template's arithmetic (same FMA order, same split-K sums).
FMA is a single rounding (computed exactly with Fractions, then rounded to nearest-even float32),
which plain float32 or float64 arithmetic would not give. Slow (Python per instruction): for
matrices of a few hundred nonzeros only.
"""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

F32 = np.float32


def round_f32(q: Fraction) -> np.float32:
    """The float32 nearest to q (ties to even). q != 0."""
    x = F32(float(q))  # within one ulp of the answer (double rounding at worst)
    best = None
    for c in (x, np.nextafter(x, F32(np.inf)), np.nextafter(x, F32(-np.inf))):
        if not np.isfinite(c):
            continue
        key = (abs(Fraction(float(c)) - q), int(np.array(c, F32).view(np.uint32)) & 1)
        if best is None or key < best[0]:
            best = (key, c)
    return F32(best[1])


def fma32(a, b, c) -> np.float32:
    """fma.rn.f32: a * b + c rounded once."""
    a, b, c = F32(a), F32(b), F32(c)
    q = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if q == 0:
        p_neg = np.signbit(a) != np.signbit(b)
        return F32(-0.0) if (p_neg and np.signbit(c)) else F32(0.0)
    return round_f32(q)


def add32(a, b) -> np.float32:
    return F32(a) + F32(b)  # numpy adds float32 in float32: correctly rounded


def max32(a, b) -> np.float32:
    a, b = F32(a), F32(b)
    if np.isnan(a):
        return b
    if np.isnan(b):
        return a
    if a == b == 0:
        return F32(-0.0) if (np.signbit(a) and np.signbit(b)) else F32(0.0)
    return a if a > b else b


# -- half precision: exact round-to-nearest-even to binary16 / bfloat16 ------------------------
_FORMATS = {"f16": (11, -14, Fraction(65504)), "bf16": (8, -126, Fraction(2**128 - 2**120))}


def round_half(q: Fraction, fmt: str) -> float:
    """q rounded to nearest even in `fmt` ('f16' / 'bf16'), subnormals kept, overflow to inf; as a
    float (exact). q != 0."""
    p, emin, top = _FORMATS[fmt]
    sign, m = (-1 if q < 0 else 1), abs(q)
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:
        e -= 1
    quantum = Fraction(2) ** (max(e, emin) - (p - 1))
    scaled = m / quantum
    n, rem = divmod(scaled.numerator, scaled.denominator)
    if 2 * rem > scaled.denominator or (2 * rem == scaled.denominator and n % 2):
        n += 1
    r = n * quantum
    return sign * float("inf") if r > top else sign * float(r)


def half_bits_of(x: float, fmt: str) -> int:
    """16-bit pattern of a value exactly representable in `fmt` (or +-inf, +-0)."""
    if fmt == "f16":
        return int(np.array(x, np.float16).view(np.uint16))
    return int(np.array(x, np.float32).view(np.uint32)) >> 16


def half_value(bits: int, fmt: str) -> float:
    if not isinstance(bits, int):  # an undefined register (NaN): stays NaN
        return float("nan")
    if fmt == "f16":
        return float(np.array(bits & 0xFFFF, np.uint16).view(np.float16))
    return float(np.array((bits & 0xFFFF) << 16, np.uint32).view(F32))


def hfma(a: float, b: float, c: float, fmt: str) -> float:
    """fma.rn.{f16,bf16}: a * b + c rounded once."""
    if any(np.isnan(v) for v in (a, b, c)):
        return float("nan")
    q = Fraction(a) * Fraction(b) + Fraction(c)
    if q == 0:
        p_neg = np.signbit(a) != np.signbit(b)
        return -0.0 if (p_neg and np.signbit(c)) else 0.0
    return round_half(q, fmt)


def cvt_half(x, fmt: str) -> int:
    """cvt.rn.{f16,bf16}.f32: bits of float32 x rounded once."""
    x = float(x)
    if np.isnan(x):
        return 0x7E00 if fmt == "f16" else 0x7FC0
    if x == 0 or np.isinf(x):
        return half_bits_of(x, fmt)
    return half_bits_of(round_half(Fraction(x), fmt), fmt)


def _word(x) -> int:
    """A 32-bit register's bits (float registers by their IEEE bits)."""
    if isinstance(x, np.floating):
        return int(np.array(x, F32).view(np.uint32))
    return u32(x)


def _as_float(bits: int) -> np.float32:
    return np.array(u32(bits), np.uint32).view(F32)[()]


_FLOAT_REGS = ("%a", "%b", "%c", "%t", "%q", "%o")  # float32 registers (in float32-arithmetic code)


def _f32_imm(tok: str) -> np.float32:
    return np.array(int(tok[2:], 16), dtype=np.uint32).view(F32)[()]


# Exactly the opcodes sparsert.ptx emits; anything else (another rounding mode, ftz...) is refused.
_OPS = frozenset(
    "bra bra.uni ret exit call.uni st.param.u64 st.param.u32 bar.sync ld.param.u64 ld.param.u32 cvta.to.global.u64 mov.u32 mov.f32 cvt.u64.u32 cvt.s64.s32 "
    "mul.lo.s32 mad.lo.s32 min.s32 shl.b64 setp.lt.s32 setp.lt.u32 add.s64 add.rn.f32 fma.rn.f32 "
    "add.s32 sub.s32 div.u32 and.pred max.s32 selp.b32 and.b32 "
    "max.f32 ld.global.nc.f32 ld.global.nc.v2.f32 ld.global.nc.v4.f32 ld.shared.f32 ld.shared.v2.f32 "
    "ld.shared.v4.f32 st.shared.f32 st.shared.v2.f32 st.shared.v4.f32 st.global.f32 st.global.v2.f32 "
    "st.global.v4.f32 "
    # half precision
    "ld.global.nc.b16 ld.global.nc.b32 ld.global.nc.v2.b32 st.global.b16 st.global.b32 st.global.v2.b32 "
    "ld.shared.b32 ld.shared.v2.b32 st.shared.b32 st.shared.v2.b32 mov.b16 mov.b32 shl.b32 "
    "cvt.f32.f16 cvt.rn.f16.f32 cvt.rn.bf16.f32 fma.rn.f16x2 fma.rn.bf16x2 add.rn.f16x2 add.rn.bf16x2".split())
_INSN = re.compile(r"^(?:@(?P<neg>!?)(?P<pred>%p[a-z]*\d+)\s+)?(?P<op>[a-z][\w.]*)\s*(?P<args>.*?);$")


def s32(x: int) -> int:
    """The signed 32-bit value of an integer register (two's complement wrap)."""
    return ((int(x) + 2**31) % 2**32) - 2**31


def u32(x: int) -> int:
    return int(x) % 2**32


class Function:
    """One .entry or .func: its instructions, labels and parameter names."""

    def __init__(self, name: str, params: list[str], body: str):
        self.name, self.params = name, params
        self.insns: list[tuple] = []
        self.labels: dict[str, int] = {}
        for raw in body.splitlines():
            line = raw.strip()
            if not line or line in ("{", "}") or line.startswith(("//", ".reg", ".shared", ".param")):
                continue
            if line.endswith(":"):
                self.labels[line[:-1]] = len(self.insns)
                continue
            mm = _INSN.match(line)
            if mm is None:
                raise ValueError(f"cannot parse PTX line: {line!r}")
            args = [a.strip() for a in re.split(r",(?![^{(]*[})])", mm.group("args")) if a.strip()]
            self.insns.append((mm.group("pred"), mm.group("neg") == "!", mm.group("op"), args))


_HEADER = re.compile(r"^(\.visible \.entry|\.visible \.func|\.func) (\w+)\(([^)]*)\)([^;{]*?)\n\{\n(.*?)^\}\n",
                     re.S | re.M)


class Program:
    """PTX linked as nvlink would: the functions of one or more modules (one .entry among them,
    any number of .func; `.extern` declarations resolve by name) and their shared symbol."""

    def __init__(self, ptx: str):
        self.functions: dict[str, Function] = {}
        self.entry: Function | None = None
        self.noreturn: set[str] = set()
        for m in _HEADER.finditer(ptx):
            kind, name, params, attrs, body = m.groups()
            fn = Function(name, re.findall(r"\.param \.u(?:32|64) (\w+)", params), body)
            self.functions[name] = fn
            if ".noreturn" in attrs:
                self.noreturn.add(name)
            if kind.endswith("entry"):
                assert self.entry is None, "one .entry per module"
                self.entry = fn
        assert self.entry is not None, "no .entry in the module"
        m = re.search(r"\.shared .*?(\S+)\[(\d+)\];", ptx)
        self.shared_name, self.shared_bytes = (m.group(1), int(m.group(2))) if m else (None, 0)


class Memory:
    """Global buffers at fixed fake addresses (bytes): float32 elements, or 16-bit ones (a uint16
    or float16 array: half-precision operands, accessed as their bits)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.bases = [(i + 1) << 40 for i in range(len(arrays))]
        self.arrays = [a.reshape(-1) if a.itemsize == 4 else a.reshape(-1).view(np.uint16) for a in arrays]

    def locate(self, addr: int, align: int = 4) -> tuple[np.ndarray, int]:
        for base, arr in zip(self.bases, self.arrays):
            size = arr.itemsize
            if base <= addr < base + size * arr.size:
                assert (addr - base) % max(size, align) == 0, "misaligned access"
                return arr, (addr - base) // size
        raise IndexError(f"global access out of every buffer: {addr:#x}")


def _thread(prog: Program, mem: Memory, shared: np.ndarray, tid, ctaid):
    special = {"%tid.x": tid[0], "%tid.y": tid[1], "%tid.z": 0,
               "%ctaid.x": ctaid[0], "%ctaid.y": ctaid[1], "%ctaid.z": ctaid[2]}
    fn = prog.entry
    regs: dict[str, object] = {}
    params = dict(zip(fn.params, mem.bases))
    outgoing: dict[str, object] = {}  # .param variables of the call being set up
    frames: list[tuple] = []  # callers to resume at `ret` (a .noreturn function has none)

    def val(tok: str):
        if tok.startswith("%"):
            # A register never written reads as an undefined value, modelled as NaN: it can only
            # pass the bit-exact comparison if it never reaches memory (e.g. a dead thread's
            # residual, loaded and stored under the same false predicate).
            return special[tok] if tok in special else regs.get(tok, F32(np.nan))
        if tok.startswith("0f"):
            return _f32_imm(tok)
        if tok == prog.shared_name:
            return 0
        return int(tok)

    def addr(tok: str) -> int:
        inner = tok.strip("[]")
        base, _, off = inner.partition("+")
        return (params[base] if base in params else val(base)) + (int(off) if off else 0)

    def regs_of(tok: str) -> list[str]:
        return [r.strip() for r in tok.strip("{}").split(",")]

    pc = 0
    while True:
        if pc >= len(fn.insns):
            raise AssertionError(f"{fn.name}: ran off the end of the function")
        pred, neg, op, a = fn.insns[pc]
        pc += 1
        if pred is not None and bool(regs[pred]) == neg:
            continue
        if op not in _OPS:
            raise NotImplementedError(f"PTX op {op} (not in the simulated subset)")
        parts = op.split(".")
        name = parts[0]
        if name == "bra":
            pc = fn.labels[a[0]]
        elif name == "exit":
            return
        elif name == "ret":
            if not frames:
                return
            assert fn.name not in prog.noreturn, f"{fn.name} is .noreturn but returns"
            fn, pc, regs, params = frames.pop()
        elif op in ("st.param.u64", "st.param.u32"):
            outgoing[a[0].strip("[]")] = val(a[1])
        elif name == "call":
            callee = prog.functions[a[0]]
            names = [x.strip() for x in a[1].strip("()").split(",") if x.strip()]
            frames.append((fn, pc, regs, params))
            fn, pc, regs = callee, 0, {}
            params = {p: outgoing[x] for p, x in zip(callee.params, names, strict=True)}
            outgoing = {}
        elif name == "bar":
            yield
        elif name in ("fma", "add") and parts[-1] in ("f16x2", "bf16x2"):
            fmt = parts[-1][:-2]
            x, y = _word(val(a[1])), _word(val(a[2]))
            if name == "fma":
                z = _word(val(a[3]))
            else:  # add: x + y = x * 1 + y
                x, y, z = x, (0x3C003C00 if fmt == "f16" else 0x3F803F80), y
            lanes = [hfma(half_value(x >> sh, fmt), half_value(y >> sh, fmt), half_value(z >> sh, fmt), fmt)
                     for sh in (0, 16)]
            regs[a[0]] = half_bits_of(lanes[0], fmt) | (half_bits_of(lanes[1], fmt) << 16)
        elif op == "cvt.f32.f16":
            regs[a[0]] = F32(half_value(val(a[1]), "f16"))
        elif op in ("cvt.rn.f16.f32", "cvt.rn.bf16.f32"):
            regs[a[0]] = cvt_half(val(a[1]), parts[2])
        elif op in ("mov.b16", "mov.b32") and (a[0].startswith("{") or a[1].startswith("{")):
            if a[0].startswith("{"):  # unpack a word into halves (low first)
                word = _word(val(a[1]))
                lo, hi = regs_of(a[0])
                regs[lo], regs[hi] = word & 0xFFFF, word >> 16
            else:  # pack two halves into a word
                lo, hi = (int(val(r)) & 0xFFFF for r in regs_of(a[1]))
                word = lo | (hi << 16)
                regs[a[0]] = _as_float(word) if a[0].startswith(_FLOAT_REGS) and a[0][:2] != "%a" else word
        elif op in ("mov.b16", "mov.b32"):
            tok = a[1]
            regs[a[0]] = int(tok, 16) if tok.startswith("0x") else val(tok)
        elif op == "shl.b32":
            out = (_word(val(a[1])) << int(a[2])) & 0xFFFFFFFF
            regs[a[0]] = _as_float(out) if a[0].startswith(("%c", "%q", "%o")) else out
        elif op == "and.b32" and a[0].startswith(("%c", "%q", "%o")) and not isinstance(val(a[1]), np.floating):
            regs[a[0]] = _as_float(_word(val(a[1])) & u32(val(a[2])))  # bf16 word -> its high half as f32
        elif name == "ld" and parts[1] == "param":
            regs[a[0]] = params[a[1].strip("[]")]
        elif op == "cvt.u64.u32":
            regs[a[0]] = u32(val(a[1]))
        elif op == "cvt.s64.s32":
            regs[a[0]] = s32(val(a[1]))
        elif name in ("cvta", "mov"):
            regs[a[0]] = val(a[1])
        elif name == "mul":
            regs[a[0]] = s32(val(a[1]) * val(a[2]))
        elif name == "mad":
            regs[a[0]] = s32(val(a[1]) * val(a[2]) + val(a[3]))
        elif op == "min.s32":
            regs[a[0]] = min(s32(val(a[1])), s32(val(a[2])))
        elif op == "max.s32":
            regs[a[0]] = max(s32(val(a[1])), s32(val(a[2])))
        elif op == "selp.b32":
            regs[a[0]] = u32(val(a[1]) if regs[a[3]] else val(a[2]))
        elif op == "and.b32":  # on a float register: its IEEE bits (the padding mask)
            x = val(a[1])
            bits = int(np.array(x, F32).view(np.uint32)) if isinstance(x, np.floating) else u32(x)
            out = bits & u32(val(a[2]))
            regs[a[0]] = np.array(out, np.uint32).view(F32)[()] if isinstance(x, np.floating) else out
        elif name == "div":
            regs[a[0]] = u32(val(a[1])) // u32(val(a[2]))
        elif op in ("add.s32", "sub.s32"):
            b = val(a[2])
            regs[a[0]] = s32(val(a[1]) + (b if name == "add" else -b))
        elif name == "shl":
            regs[a[0]] = val(a[1]) << val(a[2])
        elif op == "and.pred":
            regs[a[0]] = bool(regs[a[1]]) and bool(regs[a[2]])
        elif name == "setp":
            assert parts[1] == "lt", op
            conv = u32 if parts[2] == "u32" else s32
            regs[a[0]] = conv(val(a[1])) < conv(val(a[2]))
        elif name == "add" and parts[1] == "s64":
            regs[a[0]] = val(a[1]) + val(a[2])
        elif name == "add":
            regs[a[0]] = add32(val(a[1]), val(a[2]))
        elif name == "fma":
            regs[a[0]] = fma32(val(a[1]), val(a[2]), val(a[3]))
        elif name == "max":
            regs[a[0]] = max32(val(a[1]), val(a[2]))
        elif name == "ld" and parts[-1] in ("b16", "b32"):
            dst = regs_of(a[0])
            if parts[1] == "shared":
                i = addr(a[1]) // 4
                vals = shared[i:i + len(dst)]
                assert len(vals) == len(dst), "vector access past the end of shared memory"
                for r, v in zip(dst, vals):
                    regs[r] = v
                continue
            arr, i = mem.locate(addr(a[1]), 2 if parts[-1] == "b16" else 4 * len(dst))
            assert arr.itemsize == 2, "16-bit loads of a float32 buffer"
            per = 1 if parts[-1] == "b16" else 2
            vals = arr[i:i + per * len(dst)].astype(np.int64).tolist()
            assert len(vals) == per * len(dst), "vector access past the end of a buffer"
            for j, r in enumerate(dst):
                regs[r] = vals[j] if per == 1 else vals[2 * j] | (vals[2 * j + 1] << 16)
        elif name == "st" and parts[-1] in ("b16", "b32"):
            src = [regs[r] for r in regs_of(a[1])]
            if parts[1] == "shared":
                i = addr(a[0]) // 4
                shared[i:i + len(src)] = src
                continue
            arr, i = mem.locate(addr(a[0]), 2 if parts[-1] == "b16" else 4 * len(src))
            halves = [int(x) & 0xFFFF for x in src] if parts[-1] == "b16" else [
                h for x in src for h in (_word(x) & 0xFFFF, _word(x) >> 16)]
            assert i + len(halves) <= arr.size
            arr[i:i + len(halves)] = np.array(halves, np.uint16)
        elif name == "ld":
            dst = regs_of(a[0])
            if parts[1] == "shared":
                i = addr(a[1]) // 4
                vals = shared[i:i + len(dst)]
            else:
                arr, i = mem.locate(addr(a[1]))
                vals = arr[i:i + len(dst)]
            assert len(vals) == len(dst), "vector access past the end of a buffer"
            for r, v in zip(dst, vals):
                regs[r] = F32(v)
        elif name == "st":
            src = [F32(regs[r]) for r in regs_of(a[1])]
            if parts[1] == "shared":
                i = addr(a[0]) // 4
                shared[i:i + len(src)] = src
            else:
                arr, i = mem.locate(addr(a[0]))
                assert i + len(src) <= arr.size
                arr[i:i + len(src)] = src
        else:
            raise NotImplementedError(f"PTX op {op}")


def launch(ptx: str, grid, block, arrays: list[np.ndarray]) -> None:
    """Run one kernel launch; `arrays` are the kernel's pointer arguments, in order (written in place)."""
    prog = Program(ptx)
    mem = Memory(arrays)
    for z in range(grid[2]):
        for y in range(grid[1]):
            for x in range(grid[0]):
                # a list: float32 partial sums, or the 32-bit words of packed half ones
                shared = [F32(0.0)] * max(1, prog.shared_bytes // 4)
                threads = [_thread(prog, mem, shared, (tx, ty), (x, y, z))
                           for ty in range(block[1]) for tx in range(block[0])]
                while threads:  # run every thread to its next barrier (or its end), then repeat
                    threads = [t for t in threads if next(t, StopIteration) is not StopIteration]
