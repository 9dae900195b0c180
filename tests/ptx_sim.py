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


def _f32_imm(tok: str) -> np.float32:
    return np.array(int(tok[2:], 16), dtype=np.uint32).view(F32)[()]


# Exactly the opcodes sparsert.ptx emits; anything else (another rounding mode, ftz...) is refused.
_OPS = frozenset(
    "bra bra.uni ret exit call.uni st.param.u64 st.param.u32 bar.sync ld.param.u64 ld.param.u32 cvta.to.global.u64 mov.u32 mov.f32 cvt.u64.u32 cvt.s64.s32 "
    "mul.lo.s32 mad.lo.s32 min.s32 shl.b64 setp.lt.s32 setp.lt.u32 add.s64 add.rn.f32 fma.rn.f32 "
    "add.s32 sub.s32 div.u32 and.pred max.s32 selp.b32 and.b32 "
    "max.f32 ld.global.nc.f32 ld.global.nc.v2.f32 ld.global.nc.v4.f32 ld.shared.f32 ld.shared.v2.f32 "
    "ld.shared.v4.f32 st.shared.f32 st.shared.v2.f32 st.shared.v4.f32 st.global.f32 st.global.v2.f32 "
    "st.global.v4.f32".split())
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
    """Global buffers at fixed fake addresses (bytes), float32 elements."""

    def __init__(self, arrays: list[np.ndarray]):
        self.bases = [(i + 1) << 40 for i in range(len(arrays))]
        self.arrays = [a.reshape(-1) for a in arrays]

    def locate(self, addr: int) -> tuple[np.ndarray, int]:
        for base, arr in zip(self.bases, self.arrays):
            if base <= addr < base + 4 * arr.size:
                assert (addr - base) % 4 == 0, "misaligned access"
                return arr, (addr - base) // 4
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
                shared = np.zeros(max(1, prog.shared_bytes // 4), dtype=F32)
                threads = [_thread(prog, mem, shared, (tx, ty), (x, y, z))
                           for ty in range(block[1]) for tx in range(block[0])]
                while threads:  # run every thread to its next barrier (or its end), then repeat
                    threads = [t for t in threads if next(t, StopIteration) is not StopIteration]
