"""x86_sim -- a small x86-64 interpreter for a fixed instruction subset.

Purpose: check the *numbers* produced by compiler-generated (AVX-512) kernels on
machines whose CPU cannot run them.  Input is assembly text in GNU ``as``
``.intel_syntax noprefix`` form.  Only numpy and the standard library are used.

Quick use::

    prog = Program(asm_text)
    mem = Memory()
    a = mem.map(A)                 # any C-contiguous numpy array, updated in place
    rax = prog.call("kernel", args=[a, n], memory=mem, max_steps=10**7)
    prog.steps                     # instructions executed by the last call

Floating point is exact IEEE binary32 with round-to-nearest-even, no FTZ/DAZ
(MXCSR default), x86 NaN rules (first NaN source operand, quietened; default
NaN 0xFFC00000 for invalid operations; MAX/MIN return the second source when
either is NaN or both are zero).  FMA rounds once (exact product in binary64,
sum rounded to odd in binary64, then one rounding to binary32).  Exceptions,
as the hardware defines them: VDPBF16PS always uses DAZ/FTZ (see ``_dpbf16``);
VCVTPH2PS is exact; VCVTPS2PH rounds to nearest even (imm8 0, or 4 = MXCSR)
with overflow to inf, subnormal results and quietened NaNs (``_f2h``).

Masked (``{kN}``) memory operands access only the selected elements (dword
or, for the half / word forms, word granularity): masked-off elements of a
load read nothing and cannot fault, a masked store writes only selected
elements; a masked ``{1to16}`` broadcast reads its dword only if some lane is
selected.

The decoder is table-driven: add an entry to ``BUILDERS`` to support another
mnemonic (a builder gets the decoder, the parsed operands and the instruction
index, and returns a closure that executes the instruction and returns ``None``
to fall through or the index of the next instruction).
"""

import ast
import bisect
import re
import sys

import numpy as np

__all__ = ["Program", "Memory", "SimError", "AsmError", "MemoryFault",
           "StepLimitExceeded", "fma_f32", "BUILDERS"]


# --------------------------------------------------------------------------
# errors

class SimError(Exception):
    """Base class of all simulator errors."""


class AsmError(SimError):
    """Unparsable text or unsupported instruction/operand."""


class MemoryFault(SimError):
    """Access to an unmapped / read-only address, or a misaligned vmovaps."""

    def __init__(self, msg, address=None, size=None):
        super().__init__(msg)
        self.address = address
        self.size = size
        self.lineno = None
        self.instruction = None


class StepLimitExceeded(SimError):
    pass


# --------------------------------------------------------------------------
# constants

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
U8, U32, U64 = np.uint8, np.uint32, np.uint64
F32, F64 = np.float32, np.float64
QNAN_BIT = 0x00400000
DEFAULT_NAN = 0xFFC00000

CODE_BASE = 0x0040_0000          # pseudo addresses of instructions (not readable)
CODE_STRIDE = 16
DATA_BASE = 0x0800_0000          # data sections of the text
USER_BASE = 0x1_0000_0000        # Memory.map() without an address
STACK_TOP = 0x7FFF_F000_0000
RET_SENTINEL = 0x0000_DEAD_0000_0000 | 0xBEEF0

_GPR_NAMES = {}
for _i, (_q, _d, _w, _b) in enumerate([
        ("rax", "eax", "ax", "al"), ("rcx", "ecx", "cx", "cl"),
        ("rdx", "edx", "dx", "dl"), ("rbx", "ebx", "bx", "bl"),
        ("rsp", "esp", "sp", "spl"), ("rbp", "ebp", "bp", "bpl"),
        ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil")]):
    _GPR_NAMES[_q] = (_i, 64)
    _GPR_NAMES[_d] = (_i, 32)
    _GPR_NAMES[_w] = (_i, 16)
    _GPR_NAMES[_b] = (_i, 8)
for _i in range(8, 16):
    _GPR_NAMES["r%d" % _i] = (_i, 64)
    _GPR_NAMES["r%dd" % _i] = (_i, 32)
    _GPR_NAMES["r%dw" % _i] = (_i, 16)
    _GPR_NAMES["r%db" % _i] = (_i, 8)
    _GPR_NAMES["r%dl" % _i] = (_i, 8)
RSP = 4
GPR64_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + \
    ["r%d" % i for i in range(8, 16)]

_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8,
          "xmmword": 16, "ymmword": 32, "zmmword": 64}
_LANES = {"x": 4, "y": 8, "z": 16}

_AR16 = np.arange(16, dtype=np.int64)
_MASKCACHE = {}


def _maskbits(k, vl):
    key = (k, vl)
    m = _MASKCACHE.get(key)
    if m is None:
        m = ((k >> _AR16[:vl]) & 1).astype(bool)
        m.setflags(write=False)
        if len(_MASKCACHE) < 200000:
            _MASKCACHE[key] = m
    return m


def _sx(v, w):
    return v - (1 << w) if v >> (w - 1) else v


# --------------------------------------------------------------------------
# memory

class _Region:
    __slots__ = ("start", "end", "u8", "mv", "writable", "name", "arr")

    def __init__(self, start, arr, writable, name):
        self.arr = arr
        self.u8 = arr.reshape(-1).view(U8)
        self.mv = memoryview(self.u8)
        self.start = start
        self.end = start + self.u8.size
        self.writable = writable
        self.name = name


class Memory:
    """Flat 64-bit address space made of mapped numpy arrays.

    ``map(arr, addr=None, writable=None, name=None) -> address``.  Without an
    address the array is placed at a fresh 4 KiB aligned address followed by at
    least one unmapped guard page.  Every access outside the mapped regions
    raises :class:`MemoryFault`.
    """

    def __init__(self):
        self._regions = []      # sorted by start
        self._starts = []
        self._last = None
        self._next = USER_BASE
        self._attached = {}

    # mapping ------------------------------------------------------------
    def map(self, arr, addr=None, writable=None, name=None, align=4096):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Memory.map expects a numpy array")
        if not arr.flags.c_contiguous:
            raise ValueError("Memory.map: array must be C-contiguous")
        if writable is None:
            writable = bool(arr.flags.writeable)
        elif writable and not arr.flags.writeable:
            raise ValueError("Memory.map: writable=True for a read-only array")
        n = arr.nbytes
        if addr is None:
            a = -(-self._next // align) * align
            addr = a
            self._next = (a + n + 4096 + 0xFFFF) & ~0xFFFF   # >= 1 guard page
        addr = int(addr)
        if addr < 0 or addr + n > M64 + 1:
            raise ValueError("Memory.map: bad address %#x" % addr)
        for r in self._regions:
            if addr < r.end and r.start < addr + n and n and r.end > r.start:
                raise ValueError("Memory.map: [%#x, %#x) overlaps %s [%#x, %#x)"
                                 % (addr, addr + n, r.name, r.start, r.end))
        reg = _Region(addr, arr, writable, name or "array@%#x" % addr)
        i = bisect.bisect(self._starts, addr)
        self._regions.insert(i, reg)
        self._starts.insert(i, addr)
        self._last = None
        return addr

    def unmap(self, addr):
        for i, r in enumerate(self._regions):
            if r.start == addr:
                del self._regions[i]
                del self._starts[i]
                self._last = None
                for k, v in list(self._attached.items()):
                    if v == addr:
                        del self._attached[k]
                return
        raise ValueError("Memory.unmap: nothing mapped at %#x" % addr)

    def _attach(self, key, arr, addr, writable, name):
        if key in self._attached:
            return
        self.map(arr, addr=addr, writable=writable, name=name)
        self._attached[key] = addr

    def regions(self):
        return [(r.start, r.end, r.name, r.writable) for r in self._regions]

    # lookup -------------------------------------------------------------
    def _fault(self, addr, n, what):
        near = ""
        i = bisect.bisect(self._starts, addr) - 1
        if 0 <= i < len(self._regions):
            r = self._regions[i]
            near = " (nearest region below: %s [%#x, %#x), offset %+d)" % (
                r.name, r.start, r.end, addr - r.start)
        return MemoryFault("%s of %d byte(s) at unmapped address %#x%s"
                           % (what, n, addr, near), addr, n)

    def _find(self, addr, n, what="read"):
        r = self._last
        if r is not None and r.start <= addr and addr + n <= r.end:
            return r
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr + n <= r.end:
                self._last = r
                return r
        raise self._fault(addr, n, what)

    def _findw(self, addr, n):
        r = self._find(addr, n, "write")
        if not r.writable:
            raise MemoryFault("write of %d byte(s) at %#x into read-only %s"
                              % (n, addr, r.name), addr, n)
        return r

    def _contains(self, addr, n, write=False):
        i = bisect.bisect(self._starts, addr) - 1
        if i < 0:
            return False
        r = self._regions[i]
        return addr + n <= r.end and (r.writable or not write)

    # scalar access --------------------------------------------------------
    def read_int(self, addr, n):
        r = self._find(addr, n)
        o = addr - r.start
        return int.from_bytes(r.mv[o:o + n], "little")

    def write_int(self, addr, n, v):
        r = self._findw(addr, n)
        o = addr - r.start
        r.mv[o:o + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def read_bytes(self, addr, n):
        r = self._find(addr, n)
        o = addr - r.start
        return bytes(r.mv[o:o + n])

    def write_bytes(self, addr, data):
        n = len(data)
        r = self._findw(addr, n)
        o = addr - r.start
        r.mv[o:o + n] = bytes(data)

    # vector access (uint32 lanes) -------------------------------------------
    def read_vec(self, addr, count):
        n = 4 * count
        r = self._find(addr, n)
        o = addr - r.start
        return r.u8[o:o + n].view(U32).copy()

    def write_vec(self, addr, vals):
        n = 4 * len(vals)
        r = self._findw(addr, n)
        o = addr - r.start
        r.u8[o:o + n] = vals.view(U8)

    def read_vec_masked(self, addr, count, m):
        """Lanes with m False read as 0 and are not accessed."""
        n = 4 * count
        if self._contains(addr, n):
            r = self._find(addr, n)
            o = addr - r.start
            v = r.u8[o:o + n].view(U32)
            return np.where(m, v, U32(0)).astype(U32)
        out = np.zeros(count, U32)
        for i in np.flatnonzero(m):
            out[i] = self.read_int(addr + 4 * int(i), 4)
        return out

    def write_vec_masked(self, addr, vals, m):
        """Only lanes with m True are written."""
        n = 4 * len(vals)
        if self._contains(addr, n, write=True):
            r = self._find(addr, n)
            o = addr - r.start
            cur = r.u8[o:o + n].view(U32)
            cur[m] = vals[m]
            return
        for i in np.flatnonzero(m):
            self.write_int(addr + 4 * int(i), 4, int(vals[i]))

    # element access of any width (e.g. the words of vcvtph2ps / vpmovdw) ----
    def read_elems(self, addr, count, dtype, m=None):
        """count elements of dtype at addr (a copy).  With m (bool array),
        elements with m False read as 0 and are not accessed."""
        dt = np.dtype(dtype)
        isz = dt.itemsize
        n = isz * count
        if m is None or self._contains(addr, n):
            r = self._find(addr, n)
            o = addr - r.start
            v = r.u8[o:o + n].view(dt)
            return v.copy() if m is None else np.where(m, v, dt.type(0)).astype(dt)
        out = np.zeros(count, dt)
        for i in np.flatnonzero(m):
            out[i] = self.read_int(addr + isz * int(i), isz)
        return out

    def write_elems(self, addr, vals, m=None):
        """Store the elements of vals at addr; with m only those with m True
        (the others are not accessed)."""
        isz = vals.dtype.itemsize
        n = isz * len(vals)
        if m is None or self._contains(addr, n, write=True):
            r = self._findw(addr, n)
            o = addr - r.start
            cur = r.u8[o:o + n].view(vals.dtype)
            if m is None:
                cur[...] = vals
            else:
                cur[m] = vals[m]
            return
        for i in np.flatnonzero(m):
            self.write_int(addr + isz * int(i), isz, int(vals[i]))


# --------------------------------------------------------------------------
# float32 arithmetic on bit patterns (uint32 arrays)

def _nanfix(r, srcs):
    """x86 NaN rule: the first NaN among srcs (quietened), else default NaN."""
    rf = r.view(F32)
    nm = rf != rf
    if not nm.any():
        return r
    out = np.full(r.shape, DEFAULT_NAN, U32)
    for s in reversed(srcs):
        sf = s.view(F32)
        out = np.where(sf != sf, s | U32(QNAN_BIT), out)
    return np.where(nm, out, r).astype(U32)


_LOW28 = U64(0x0FFFFFFF)


def fma_bits(x, y, z):
    """Correctly rounded x*y+z on float32 bit patterns (NaN payloads not fixed)."""
    return _fma64(x, y, z).astype(F32).view(U32)


def _fma64(x, y, z):
    """x*y+z on float32 bit patterns as a binary64 value v whose rounding to
    24 significant bits -- to float32 (normal or subnormal), or with unbounded
    exponent after scaling by a power of two -- equals that of the exact value
    (v is the round-to-odd value where round-to-nearest could double-round)."""
    X = x.view(F32).astype(F64)
    Y = y.view(F32).astype(F64)
    Z = z.view(F32).astype(F64)
    p = X * Y                     # exact: 24x24 bits, exponents fit binary64
    s = p + Z
    # RN32(RN64(exact)) == RN32(exact) unless RN64 landed exactly on a float32
    # midpoint (such a midpoint is a binary64 number, RN64 is monotonic).  Every
    # float32 midpoint -- normal or subnormal -- has its low 28 bits clear.
    if not ((s.view(U64) & _LOW28) == 0).any():
        return s
    t = s - p
    e = (p - (s - t)) + (Z - t)   # TwoSum error, exact while s is finite
    need = (e != 0) & np.isfinite(s)
    if need.any():
        sb = s.view(U64)
        need &= (sb & U64(1)) == 0
        if need.any():            # round to odd: move to the odd neighbour
            up = (e > 0) == (s > 0)
            sb = np.where(need, np.where(up, sb + U64(1), sb - U64(1)), sb)
            s = sb.view(F64)
    return s


def fma_f32(a, b, c):
    """Public helper: fused a*b+c for float32 arrays/scalars (x86 NaN rules,
    NaN priority a, b, c)."""
    a = np.atleast_1d(np.asarray(a, F32)).view(U32)
    b = np.atleast_1d(np.asarray(b, F32)).view(U32)
    c = np.atleast_1d(np.asarray(c, F32)).view(U32)
    a, b, c = np.broadcast_arrays(a, b, c)
    with np.errstate(all="ignore"):
        return _nanfix(fma_bits(a, b, c), [a, b, c]).view(F32)


# ---- binary16 / bfloat16 ------------------------------------------------------

U16 = np.uint16
_SIGN32 = U32(0x80000000)
_EXP32 = U32(0x7F800000)


def _h2f(h):
    """binary16 bit patterns -> binary32 bit patterns, exact (VCVTPH2PS):
    subnormal halves become normal floats, inf stays inf, a NaN keeps sign and
    payload (shifted to the top of the fraction) and gets the quiet bit."""
    h = np.asarray(h, U16).astype(U32)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    out = ((e + 112) << 23) | (m << 13)
    out = np.where(e == 0x1F, np.where(m != 0, U32(0x7FC00000) | (m << 13),
                                       U32(0x7F800000)), out)
    sub = (m.astype(F32) * F32(2.0 ** -24)).view(U32)    # exact: m < 2**10
    return (np.where(e == 0, sub, out) | sign).astype(U32)


def _f2h(u):
    """binary32 bit patterns -> binary16 bit patterns as VCVTPS2PH with
    round-to-nearest-even (imm8 = 0 or MXCSR default): overflow -> inf, tiny
    results rounded to subnormals (no FTZ), +-0 kept, NaN -> sign, all-ones
    exponent, quiet bit and the top 9 fraction bits of the input."""
    u = np.asarray(u, U32).astype(np.int64)
    sign = (u >> 16) & 0x8000
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    # normal range (e in 113..142): a carry out of the fraction bumps the
    # exponent and (at e = 142) gives exactly inf
    q = ((e - 112) << 10) | (m >> 13)
    rem = m & 0x1FFF
    q = q + ((rem > 0x1000) | ((rem == 0x1000) & ((q & 1) == 1)))
    # subnormal / zero results (e <= 112): value / 2**-24 = sig * 2**(e-126);
    # shifts beyond 25 round to zero like 25 does (sig < 2**24)
    sig = np.where(e > 0, m | 0x800000, m)
    sh = np.clip(np.where(e > 0, 126 - e, 125), 1, 25)
    qs = sig >> sh
    rs = sig & ((np.int64(1) << sh) - 1)
    half = np.int64(1) << (sh - 1)
    qs = qs + ((rs > half) | ((rs == half) & ((qs & 1) == 1)))
    out = np.where(e <= 112, qs, q)
    out = np.where(e >= 143, 0x7C00, out)
    out = np.where(e == 0xFF, np.where(m != 0, 0x7E00 | (m >> 13), 0x7C00), out)
    return (out | sign).astype(U16)


def _daz(u):
    """Denormal float32 inputs read as zero of the same sign."""
    return np.where((u & _EXP32) == 0, u & _SIGN32, u).astype(U32)


_TWO64 = F64(2.0 ** 64)
_TINY_SCALED = F32(2.0 ** -62)       # 2**-126 * 2**64


def _fma_daz_ftz(x, y, z):
    """x*y+z on float32 bit patterns: denormal inputs read as +-0 (DAZ), one
    rounding to nearest even, tiny results flushed to zero of the same sign
    (FTZ).  Tininess is detected after rounding, as x86 does (SDM vol. 1,
    4.9.1.5): the result rounded to 24 bits with unbounded exponent is nonzero
    and below 2**-126 in magnitude.  NaN rule: first NaN of x, y, z (quietened),
    default NaN for inf*0 and inf-inf."""
    x, y, z = _daz(x), _daz(y), _daz(z)
    v = _fma64(x, y, z)
    r = v.astype(F32).view(U32)
    tiny = np.abs((v * _TWO64).astype(F32)) < _TINY_SCALED
    r = np.where(tiny, r & _SIGN32, r).astype(U32)
    return _nanfix(r, (x, y, z))


def _dpbf16(acc, a, b):
    """VDPBF16PS on one vector: uint32 lanes of bf16 pairs a, b (element 2j in
    the low half of lane j, 2j+1 in the high half), float32 accumulator acc.

    The SDM's operation section (VDPBF16PS) widens a bf16 to float32 by putting
    its 16 bits at the top of a zeroed dword, then per lane j performs two
    accumulations in sequence, the odd (high) pair first and the even (low)
    pair second; each accumulation is an FMA -- the exact product added to the
    accumulator and rounded once to binary32, round to nearest even -- with
    denormal inputs (the accumulator included) treated as zero and denormal
    outputs flushed to zero; MXCSR is neither read nor written.  So
    acc = fma(a.hi, b.hi, acc); acc = fma(a.lo, b.lo, acc), each as
    _fma_daz_ftz.  NaN priority (SDM table for this instruction): src1 low,
    src2 low, src1 high, src2 high, srcdest -- which is what the two steps give
    when each picks the first NaN of (src1, src2, accumulator)."""
    hi = U32(0xFFFF0000)
    acc = _fma_daz_ftz(a & hi, b & hi, acc)
    return _fma_daz_ftz(a << 16, b << 16, acc)


def _fadd(a, b):
    return _nanfix((a.view(F32) + b.view(F32)).view(U32), (a, b))


def _fsub(a, b):
    return _nanfix((a.view(F32) - b.view(F32)).view(U32), (a, b))


def _fmul(a, b):
    return _nanfix((a.view(F32) * b.view(F32)).view(U32), (a, b))


def _fmax(a, b):
    return np.where(a.view(F32) > b.view(F32), a, b)


def _fmin(a, b):
    return np.where(a.view(F32) < b.view(F32), a, b)


# --------------------------------------------------------------------------
# flags (lazy)

SUB, ADD, LOG, RAW = 0, 1, 2, 3


def _flags(f):
    """-> (ZF, SF, OF, CF)"""
    k, a, b, r, sb = f
    if k == RAW:
        return a, b, r, sb
    zf = r == 0
    sf = (r & sb) != 0
    if k == SUB:
        return zf, sf, ((a ^ b) & (a ^ r) & sb) != 0, a < b
    if k == ADD:
        return zf, sf, ((a ^ r) & (b ^ r) & sb) != 0, r < a
    return zf, sf, False, False


_CC = {}
for _names, _fn in [
        (("o",), lambda z, s, o, c: o), (("no",), lambda z, s, o, c: not o),
        (("b", "c", "nae"), lambda z, s, o, c: c),
        (("ae", "nb", "nc"), lambda z, s, o, c: not c),
        (("e", "z"), lambda z, s, o, c: z), (("ne", "nz"), lambda z, s, o, c: not z),
        (("be", "na"), lambda z, s, o, c: c or z),
        (("a", "nbe"), lambda z, s, o, c: not (c or z)),
        (("s",), lambda z, s, o, c: s), (("ns",), lambda z, s, o, c: not s),
        (("l", "nge"), lambda z, s, o, c: s != o),
        (("ge", "nl"), lambda z, s, o, c: s == o),
        (("le", "ng"), lambda z, s, o, c: z or s != o),
        (("g", "nle"), lambda z, s, o, c: not z and s == o)]:
    for _n in _names:
        _CC[_n] = _fn


# --------------------------------------------------------------------------
# parsing

class Op:
    __slots__ = ("kind", "num", "bits", "lanes", "expr", "base", "index",
                 "scale", "rip", "size", "bcst", "mask", "zero", "text")

    def __init__(self, kind, text):
        self.kind = kind            # gpr vec k mem expr
        self.text = text
        self.mask = None
        self.zero = False
        self.bcst = None
        self.expr = ""
        self.size = None
        self.base = self.index = None
        self.scale = 1
        self.rip = False
        self.num = None
        self.bits = None
        self.lanes = None

    def __repr__(self):
        return "Op(%s %r)" % (self.kind, self.text)


_DECO = re.compile(r"\{([^{}]*)\}")
_MEMRE = re.compile(r"(?:(byte|word|dword|qword|xmmword|ymmword|zmmword)\s+(ptr|bcst)\s*)?"
                    r"(.*?)\[(.*)\]\s*$", re.I | re.S)
_TOKRE = re.compile(r"0[xX][0-9a-fA-F]+|0[bB][01]+|\d+|[A-Za-z_.$][\w.$@]*|<<|>>|\S")


def _split_top(s, sep=","):
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [x.strip() for x in out]


def _reg_of(name):
    low = name.lower()
    if low in _GPR_NAMES:
        return "gpr", _GPR_NAMES[low]
    m = re.fullmatch(r"([xyz])mm(\d+)", low)
    if m and int(m.group(2)) < 32:
        return "vec", (int(m.group(2)), _LANES[m.group(1)])
    m = re.fullmatch(r"k([0-7])", low)
    if m:
        return "k", int(m.group(1))
    return None, None


def parse_operand(s):
    op = Op("?", s)
    for d in _DECO.findall(s):
        d = d.strip().lower()
        m = re.fullmatch(r"1to(\d+)", d)
        if re.fullmatch(r"k[1-7]", d):
            op.mask = int(d[1])
        elif d == "z":
            op.zero = True
        elif m:
            op.bcst = int(m.group(1))
        else:
            raise AsmError("unsupported operand decoration {%s}" % d)
    s = _DECO.sub("", s).strip()
    if "[" in s:
        m = _MEMRE.match(s)
        if not m:
            raise AsmError("cannot parse memory operand %r" % s)
        op.kind = "mem"
        if m.group(1):
            op.size = _SIZES[m.group(1).lower()]
            if m.group(2).lower() == "bcst" and op.bcst is None:
                op.bcst = "auto"
        expr = m.group(3).strip()
        parts = re.split(r"\s*([+-])\s*", m.group(4).strip())
        sign = "+"
        for part in parts:
            if part in ("+", "-"):
                sign = part if sign == "+" else ("+" if part == "-" else "-")
                continue
            if part == "":
                continue
            kind, val = _reg_of(part)
            low = part.lower()
            if low == "rip":
                op.rip = True
            elif kind == "gpr":
                if val[1] != 64 or sign == "-":
                    raise AsmError("unsupported address register %r" % part)
                if op.base is None:
                    op.base = val[0]
                elif op.index is None:
                    op.index = val[0]
                else:
                    raise AsmError("too many registers in %r" % s)
            elif "*" in part:
                a, b = [x.strip() for x in part.split("*", 1)]
                if _reg_of(b)[0] == "gpr":
                    a, b = b, a
                k, v = _reg_of(a)
                if k != "gpr" or v[1] != 64 or sign == "-" or op.index is not None:
                    raise AsmError("bad index term %r" % part)
                op.index = v[0]
                op.scale = int(b, 0)
                if op.scale not in (1, 2, 4, 8):
                    raise AsmError("bad scale in %r" % part)
            else:
                expr += sign + part
            sign = "+"
        op.expr = expr
        return op
    kind, val = _reg_of(s)
    if kind == "gpr":
        op.kind, (op.num, op.bits) = "gpr", val
    elif kind == "vec":
        op.kind, (op.num, op.lanes) = "vec", val
    elif kind == "k":
        op.kind, op.num = "k", val
    else:
        op.kind = "expr"
        m = re.match(r"offset\s+(?:flat\s*:\s*)?(.*)$", s, re.I)
        op.expr = m.group(1) if m else s
        if not op.expr:
            raise AsmError("empty operand")
    return op


def eval_expr(expr, symbols, what="expression"):
    """Evaluate a constant expression with numbers and symbols."""
    out = []
    for t in _TOKRE.findall(expr):
        if t[0].isdigit():
            if len(t) > 1 and t[0] == "0" and t[1].isdigit():
                t = str(int(t, 8))
            out.append(str(int(t, 0)))
        elif t[0].isalpha() or t[0] in "_.$":
            if t not in symbols:
                raise AsmError("undefined symbol %r in %s %r" % (t, what, expr))
            out.append(str(symbols[t]))
        elif t in "+-*/()~|&^%" or t in ("<<", ">>"):
            out.append("//" if t == "/" else t)
        else:
            raise AsmError("bad %s %r" % (what, expr))
    if not out:
        return 0
    try:
        return int(eval(" ".join(out), {"__builtins__": {}}, {}))
    except Exception:
        raise AsmError("bad %s %r" % (what, expr)) from None


# --------------------------------------------------------------------------
# CPU state and decoder helpers

class _State:
    def __init__(self):
        self.R = [0] * 16
        self.V = np.zeros((32, 16), U32)
        self.K = [0] * 8
        self.FL = [(LOG, 0, 0, 1, 1)]
        self.mem = None

    def reset(self):
        for i in range(16):
            self.R[i] = 0
        self.V[:] = 0
        for i in range(8):
            self.K[i] = 0
        self.FL[0] = (LOG, 0, 0, 1, 1)


class Decoder:
    """Compiles operands to fast getter/setter closures bound to a _State."""

    def __init__(self, st, symbols, text_labels):
        self.st = st
        self.symbols = symbols
        self.text_labels = text_labels

    # generic ---------------------------------------------------------------
    def value(self, op):
        return eval_expr(op.expr, self.symbols)

    def target(self, op):
        """Jump/call target: label -> instruction index (None if indirect)."""
        if op.kind == "expr":
            name = op.expr.strip()
            if name in self.text_labels:
                return self.text_labels[name]
            raise AsmError("jump target %r is not a label in the text" % name)
        return None

    def addr(self, op):
        R = self.st.R
        disp = eval_expr(op.expr, self.symbols, "displacement") if op.expr else 0
        b, i, s = op.base, op.index, op.scale
        if op.rip:
            if b is not None or i is not None or not op.expr:
                raise AsmError("unsupported rip-relative operand %r" % op.text)
        if b is None and i is None:
            a = disp & M64
            return lambda: a
        if i is None:
            if disp == 0:
                return lambda: R[b]
            return lambda: (R[b] + disp) & M64
        if b is None:
            return lambda: (R[i] * s + disp) & M64
        if disp == 0:
            return lambda: (R[b] + R[i] * s) & M64
        return lambda: (R[b] + R[i] * s + disp) & M64

    # integer operands ---------------------------------------------------------
    def get(self, op, w):
        st, R = self.st, self.st.R
        if op.kind == "gpr":
            i, rb = op.num, op.bits
            if rb == 64:
                return lambda: R[i]
            m = (1 << rb) - 1
            if w > rb:   # should not happen for well-formed code
                raise AsmError("operand size mismatch for %r" % op.text)
            return lambda: R[i] & m
        if op.kind == "expr":
            v = self.value(op) & ((1 << w) - 1)
            return lambda: v
        if op.kind == "mem":
            a = self.addr(op)
            n = (op.size or w // 8)
            return lambda: st.mem.read_int(a(), n)
        raise AsmError("operand %r not usable here" % op.text)

    def set(self, op, w):
        st, R = self.st, self.st.R
        if op.kind == "gpr":
            i, rb = op.num, op.bits
            if rb == 64:
                def s(v):
                    R[i] = v & M64
            elif rb == 32:
                def s(v):
                    R[i] = v & M32
            else:
                m = (1 << rb) - 1

                def s(v):
                    R[i] = (R[i] & ~m & M64) | (v & m)
            return s
        if op.kind == "mem":
            a = self.addr(op)
            n = (op.size or w // 8)

            def s(v):
                st.mem.write_int(a(), n, v)
            return s
        raise AsmError("operand %r is not writable" % op.text)

    # vector operands --------------------------------------------------------
    def vsrc(self, op, vl, mask=None):
        """Getter returning a uint32 array of vl lanes.  mask: k register
        number whose zero bits suppress memory accesses (fault suppression)."""
        st, V, K = self.st, self.st.V, self.st.K
        if op.kind == "vec":
            r = op.num
            if op.lanes < vl:
                raise AsmError("source %r narrower than destination" % op.text)
            view = V[r, :vl]
            return lambda: view
        if op.kind == "mem":
            a = self.addr(op)
            if op.bcst is not None:
                if op.bcst != "auto" and op.bcst != vl:
                    raise AsmError("{1to%d} does not match vector length %d"
                                   % (op.bcst, vl))
                if op.size not in (None, 4):
                    raise AsmError("broadcast element must be a DWORD: %r" % op.text)
                if mask is None:
                    return lambda: np.full(vl, st.mem.read_int(a(), 4), U32)

                def g():
                    if K[mask] & ((1 << vl) - 1) == 0:
                        return np.zeros(vl, U32)
                    return np.full(vl, st.mem.read_int(a(), 4), U32)
                return g
            if op.size not in (None, 4 * vl):
                raise AsmError("memory operand size does not match: %r" % op.text)
            if mask is None:
                return lambda: st.mem.read_vec(a(), vl)
            return lambda: st.mem.read_vec_masked(a(), vl, _maskbits(K[mask], vl))
        raise AsmError("operand %r is not a vector source" % op.text)

    def vdst(self, op, vl=None):
        """Setter for a vector register destination honouring {k} / {z};
        lanes above vl are zeroed (VEX/EVEX semantics)."""
        if op.kind != "vec":
            raise AsmError("destination %r is not a vector register" % op.text)
        V, K = self.st.V, self.st.K
        d = op.num
        vl = vl or op.lanes
        k, z = op.mask, op.zero
        lo, hi = V[d, :vl], V[d, vl:]
        zero = U32(0)
        if k is None:
            if z:
                raise AsmError("{z} without a mask in %r" % op.text)
            if vl == 16:
                def w(res):
                    lo[...] = res
            else:
                def w(res):
                    lo[...] = res
                    hi[...] = zero
            return w
        if z:
            def w(res):
                lo[...] = np.where(_maskbits(K[k], vl), res, zero)
                hi[...] = zero
        else:
            def w(res):
                lo[...] = np.where(_maskbits(K[k], vl), res, lo)
                hi[...] = zero
        return w

    # 16-bit element operands (half floats, words) ------------------------------
    @staticmethod
    def _wreg_ok(op, n):
        # the register that holds n words: xmm for up to 8, ymm 16, zmm 32
        if op.lanes != max(4, n // 2):
            raise AsmError(f"register {op.text!r} does not hold {n} words")

    def wsrc(self, op, n, mask=None):
        """Getter returning a uint16 array of n words: the low words of a vector
        register, or 2n bytes of memory.  mask: k register whose zero bits
        suppress the matching word reads (fault suppression)."""
        st, V, K = self.st, self.st.V, self.st.K
        if op.kind == "vec":
            self._wreg_ok(op, n)
            view = V[op.num].view(U16)[:n]
            return lambda: view
        if op.kind == "mem":
            if op.bcst is not None:
                raise AsmError(f"broadcast not allowed here: {op.text!r}")
            if op.size not in (None, 2 * n):
                raise AsmError(f"memory operand size does not match: {op.text!r}")
            a = self.addr(op)
            if mask is None:
                return lambda: st.mem.read_elems(a(), n, U16)
            return lambda: st.mem.read_elems(a(), n, U16, _maskbits(K[mask], n))
        raise AsmError(f"operand {op.text!r} is not a vector source")

    def wdst(self, op, n):
        """Setter for n word results: a vector register (low n words, {k}/{z}
        per word, the rest of the register zeroed) or memory (2n bytes; with
        {k} only the selected words are written, the others not accessed)."""
        st, V, K = self.st, self.st.V, self.st.K
        k, z = op.mask, op.zero
        if op.kind == "vec":
            self._wreg_ok(op, n)
            row = V[op.num].view(U16)
            lo, hi = row[:n], row[n:]
            zero = U16(0)
            if k is None:
                if z:
                    raise AsmError(f"{{z}} without a mask in {op.text!r}")

                def w(res):
                    lo[...] = res
                    hi[...] = zero
            elif z:
                def w(res):
                    lo[...] = np.where(_maskbits(K[k], n), res, zero)
                    hi[...] = zero
            else:
                def w(res):
                    lo[...] = np.where(_maskbits(K[k], n), res, lo)
                    hi[...] = zero
            return w
        if op.kind == "mem":
            if z:
                raise AsmError("zero-masking is not allowed for stores")
            if op.bcst is not None:
                raise AsmError("broadcast not allowed for stores")
            if op.size not in (None, 2 * n):
                raise AsmError(f"memory operand size does not match: {op.text!r}")
            a = self.addr(op)
            if k is None:
                return lambda res: st.mem.write_elems(a(), res)
            return lambda res: st.mem.write_elems(a(), res, _maskbits(K[k], n))
        raise AsmError(f"operand {op.text!r} is not a destination")


# --------------------------------------------------------------------------
# instruction builders:  builder(dec, ops, idx) -> closure

BUILDERS = {}


def _reg(*names):
    def deco(fn):
        for n in names:
            BUILDERS[n] = fn
        return fn
    return deco


def _nops(ops, *counts):
    if len(ops) not in counts:
        raise AsmError("expected %s operand(s), got %d" % (" or ".join(map(str, counts)), len(ops)))


def _width(ops, default=None):
    for o in ops:
        if o.kind == "gpr":
            return o.bits
    for o in ops:
        if o.kind == "mem" and o.size:
            if o.size > 8:
                raise AsmError("bad operand size")
            return o.size * 8
    if default:
        return default
    raise AsmError("operand size is ambiguous (use DWORD PTR / QWORD PTR)")


@_reg("nop", "endbr64", "pause", "prefetcht0", "prefetcht1", "prefetcht2",
      "prefetchnta")
def _b_nop(d, ops, idx):
    return lambda: None


@_reg("mov", "movabs")
def _b_mov(d, ops, idx):
    _nops(ops, 2)
    w = _width(ops)
    g = d.get(ops[1], w)
    s = d.set(ops[0], w)
    dst, src = ops
    R = d.st.R
    if dst.kind == "gpr" and dst.bits == 64 and src.kind == "gpr":
        i, j = dst.num, src.num

        def f():
            R[i] = R[j]
        return f
    if dst.kind == "gpr" and dst.bits == 64 and src.kind == "expr":
        i, v = dst.num, g()

        def f():
            R[i] = v
        return f

    def f():
        s(g())
    return f


def _b_ext(signed, srcw_default):
    def build(d, ops, idx):
        _nops(ops, 2)
        dst, src = ops
        if dst.kind != "gpr":
            raise AsmError("destination must be a register")
        sw = src.bits if src.kind == "gpr" else (src.size or srcw_default) * 8
        if src.kind == "mem" and not src.size:
            sw = srcw_default * 8
        g = d.get(src, sw)
        s = d.set(dst, dst.bits)
        if signed:
            def f():
                s(_sx(g(), sw))
        else:
            def f():
                s(g())
        return f
    return build


BUILDERS["movsxd"] = _b_ext(True, 4)
BUILDERS["movsx"] = _b_ext(True, 1)
BUILDERS["movzx"] = _b_ext(False, 1)


@_reg("lea")
def _b_lea(d, ops, idx):
    _nops(ops, 2)
    dst, src = ops
    if dst.kind != "gpr" or src.kind != "mem":
        raise AsmError("lea needs a register and a memory operand")
    a = d.addr(src)
    s = d.set(dst, dst.bits)
    return lambda: s(a())


def _b_alu(kind):
    def build(d, ops, idx):
        _nops(ops, 2)
        w = _width(ops)
        m = (1 << w) - 1
        sb = 1 << (w - 1)
        g1 = d.get(ops[0], w)
        g2 = d.get(ops[1], w)
        FL = d.st.FL
        s = None if kind in ("cmp", "test") else d.set(ops[0], w)
        dst, src = ops
        R = d.st.R
        if kind in ("add", "sub", "cmp") and dst.kind == "gpr" and dst.bits == 64 \
                and src.kind == "expr":
            i, b = dst.num, g2()
            if kind == "add":
                def f():
                    a = R[i]
                    r = (a + b) & m
                    FL[0] = (ADD, a, b, r, sb)
                    R[i] = r
            elif kind == "sub":
                def f():
                    a = R[i]
                    r = (a - b) & m
                    FL[0] = (SUB, a, b, r, sb)
                    R[i] = r
            else:
                def f():
                    a = R[i]
                    FL[0] = (SUB, a, b, (a - b) & m, sb)
            return f
        if kind == "add":
            def f():
                a = g1()
                b = g2()
                r = (a + b) & m
                FL[0] = (ADD, a, b, r, sb)
                s(r)
        elif kind == "sub":
            def f():
                a = g1()
                b = g2()
                r = (a - b) & m
                FL[0] = (SUB, a, b, r, sb)
                s(r)
        elif kind == "cmp":
            def f():
                a = g1()
                b = g2()
                FL[0] = (SUB, a, b, (a - b) & m, sb)
        elif kind == "test":
            def f():
                FL[0] = (LOG, 0, 0, g1() & g2(), sb)
        else:
            op = {"and": int.__and__, "or": int.__or__, "xor": int.__xor__}[kind]

            def f():
                r = op(g1(), g2())
                FL[0] = (LOG, 0, 0, r, sb)
                s(r)
        return f
    return build


for _k in ("add", "sub", "cmp", "test", "and", "or", "xor"):
    BUILDERS[_k] = _b_alu(_k)


def _b_incdec(delta):
    def build(d, ops, idx):
        _nops(ops, 1)
        w = _width(ops)
        m = (1 << w) - 1
        sb = 1 << (w - 1)
        g = d.get(ops[0], w)
        s = d.set(ops[0], w)
        FL = d.st.FL

        def f():
            r = (g() + delta) & m
            cf = _flags(FL[0])[3]
            of = r == sb if delta == 1 else r == sb - 1
            FL[0] = (RAW, r == 0, (r & sb) != 0, of, cf)
            s(r)
        return f
    return build


BUILDERS["inc"] = _b_incdec(1)
BUILDERS["dec"] = _b_incdec(-1)


@_reg("neg")
def _b_neg(d, ops, idx):
    _nops(ops, 1)
    w = _width(ops)
    m, sb = (1 << w) - 1, 1 << (w - 1)
    g, s, FL = d.get(ops[0], w), d.set(ops[0], w), d.st.FL

    def f():
        b = g()
        r = (-b) & m
        FL[0] = (SUB, 0, b, r, sb)
        s(r)
    return f


@_reg("not")
def _b_not(d, ops, idx):
    _nops(ops, 1)
    w = _width(ops)
    m = (1 << w) - 1
    g, s = d.get(ops[0], w), d.set(ops[0], w)
    return lambda: s(g() ^ m)


@_reg("imul")
def _b_imul(d, ops, idx):
    _nops(ops, 2, 3)
    if ops[0].kind != "gpr":
        raise AsmError("one-operand imul is not supported")
    w = ops[0].bits
    m, sb = (1 << w) - 1, 1 << (w - 1)
    s, FL = d.set(ops[0], w), d.st.FL
    if len(ops) == 2:
        g1, g2 = d.get(ops[0], w), d.get(ops[1], w)
    else:
        g1, g2 = d.get(ops[1], w), d.get(ops[2], w)

    def f():
        full = _sx(g1(), w) * _sx(g2(), w)
        r = full & m
        ov = _sx(r, w) != full
        FL[0] = (RAW, r == 0, (r & sb) != 0, ov, ov)
        s(r)
    return f


def _b_shift(kind):
    def build(d, ops, idx):
        _nops(ops, 1, 2)
        w = _width(ops[:1])
        m, sb = (1 << w) - 1, 1 << (w - 1)
        cm = 63 if w == 64 else 31
        g, s, FL, R = d.get(ops[0], w), d.set(ops[0], w), d.st.FL, d.st.R
        if len(ops) == 1:
            cnt = lambda: 1  # noqa: E731
        elif ops[1].kind == "expr":
            c0 = d.value(ops[1]) & cm
            cnt = lambda: c0  # noqa: E731
        elif ops[1].kind == "gpr" and ops[1].num == 1 and ops[1].bits == 8:
            cnt = lambda: R[1] & cm  # noqa: E731
        else:
            raise AsmError("shift count must be an immediate or cl")

        def f():
            c = cnt() & cm
            a = g()
            if c == 0:          # flags unchanged; 32-bit destinations still zero-extend
                s(a)
                return
            if kind == "shl":
                r = (a << c) & m
                cf = (a >> (w - c)) & 1 if c <= w else 0
                of = ((r >> (w - 1)) & 1) ^ cf
            elif kind == "shr":
                r = a >> c
                cf = (a >> (c - 1)) & 1
                of = (a >> (w - 1)) & 1
            else:
                sa = _sx(a, w)
                r = (sa >> c) & m
                cf = (sa >> (c - 1)) & 1
                of = 0
            FL[0] = (RAW, r == 0, (r & sb) != 0, bool(of), bool(cf))
            s(r)
        return f
    return build


BUILDERS["shl"] = BUILDERS["sal"] = _b_shift("shl")
BUILDERS["shr"] = _b_shift("shr")
BUILDERS["sar"] = _b_shift("sar")


def _b_jcc(cc):
    cond = _CC[cc]

    def build(d, ops, idx):
        _nops(ops, 1)
        t = d.target(ops[0])
        FL = d.st.FL

        def f():
            if cond(*_flags(FL[0])):
                return t
        return f
    return build


def _b_setcc(cc):
    cond = _CC[cc]

    def build(d, ops, idx):
        _nops(ops, 1)
        s, FL = d.set(ops[0], 8), d.st.FL
        return lambda: s(1 if cond(*_flags(FL[0])) else 0)
    return build


def _b_cmovcc(cc):
    cond = _CC[cc]

    def build(d, ops, idx):
        _nops(ops, 2)
        w = ops[0].bits
        g, s, FL = d.get(ops[1], w), d.set(ops[0], w), d.st.FL
        gd = d.get(ops[0], w)

        def f():
            if cond(*_flags(FL[0])):
                s(g())
            else:
                s(gd())          # 32-bit cmov zero-extends even if not taken
        return f
    return build


for _c in _CC:
    BUILDERS["j" + _c] = _b_jcc(_c)
    BUILDERS["set" + _c] = _b_setcc(_c)
    BUILDERS["cmov" + _c] = _b_cmovcc(_c)


def _code_index(d, a):
    i, r = divmod(a - CODE_BASE, CODE_STRIDE)
    if r or not (0 <= i <= d.ncode):
        raise SimError("control transfer to non-code address %#x" % a)
    return i


@_reg("jmp")
def _b_jmp(d, ops, idx):
    _nops(ops, 1)
    t = d.target(ops[0])
    if t is not None:
        return lambda: t
    g = d.get(ops[0], 64)
    return lambda: _code_index(d, g())


@_reg("call")
def _b_call(d, ops, idx):
    _nops(ops, 1)
    st, R = d.st, d.st.R
    t = d.target(ops[0])
    ret = CODE_BASE + CODE_STRIDE * (idx + 1)
    g = (lambda: t) if t is not None else (lambda: _code_index(d, gi()))
    gi = None if t is not None else d.get(ops[0], 64)

    def f():
        tt = g()
        sp = (R[RSP] - 8) & M64
        st.mem.write_int(sp, 8, ret)
        R[RSP] = sp
        return tt
    return f


@_reg("ret")
def _b_ret(d, ops, idx):
    _nops(ops, 0, 1)
    extra = d.value(ops[0]) if ops else 0
    st, R = d.st, d.st.R

    def f():
        sp = R[RSP]
        a = st.mem.read_int(sp, 8)
        R[RSP] = (sp + 8 + extra) & M64
        if a == RET_SENTINEL:
            return -1
        return _code_index(d, a)
    return f


@_reg("push")
def _b_push(d, ops, idx):
    _nops(ops, 1)
    st, R = d.st, d.st.R
    g = d.get(ops[0], 64)

    def f():
        v = g()
        sp = (R[RSP] - 8) & M64
        st.mem.write_int(sp, 8, v)
        R[RSP] = sp
    return f


@_reg("pop")
def _b_pop(d, ops, idx):
    _nops(ops, 1)
    st, R = d.st, d.st.R
    s = d.set(ops[0], 64)

    def f():
        sp = R[RSP]
        v = st.mem.read_int(sp, 8)
        R[RSP] = (sp + 8) & M64
        s(v)
    return f


@_reg("leave")
def _b_leave(d, ops, idx):
    st, R = d.st, d.st.R

    def f():
        sp = R[5]
        R[5] = st.mem.read_int(sp, 8)
        R[RSP] = (sp + 8) & M64
    return f


@_reg("cdqe")
def _b_cdqe(d, ops, idx):
    R = d.st.R

    def f():
        R[0] = _sx(R[0] & M32, 32) & M64
    return f


# ---- vector -----------------------------------------------------------------

def _vl_of(op):
    if op.kind == "vec":
        return op.lanes
    if op.kind == "mem" and op.size in (16, 32, 64):
        return op.size // 4
    raise AsmError("cannot determine vector length from %r" % op.text)


@_reg("vmovups", "vmovaps", "vmovdqu", "vmovdqa", "vmovdqu32", "vmovdqa32")
def _b_vmov(d, ops, idx):
    _nops(ops, 2)
    aligned = d.mnemonic in ("vmovaps", "vmovdqa", "vmovdqa32")
    dst, src = ops
    st, V, K = d.st, d.st.V, d.st.K
    if dst.kind == "vec":
        vl = dst.lanes
        if src.kind == "vec" and src.lanes != vl:
            raise AsmError("register widths differ")
        if src.kind == "mem" and src.bcst is not None:
            raise AsmError("broadcast not allowed for moves")
        g = d.vsrc(src, vl, dst.mask)
        w = d.vdst(dst)
        if aligned and src.kind == "mem":
            a = d.addr(src)
            nb = 4 * vl

            def f():
                if a() % nb:
                    raise MemoryFault("misaligned %s load at %#x" % (d.mnemonic, a()), a(), nb)
                w(g())
            return f
        return lambda: w(g())
    if dst.kind == "mem" and src.kind == "vec":
        vl = src.lanes
        if dst.size not in (None, 4 * vl):
            raise AsmError("memory operand size does not match register")
        if dst.zero:
            raise AsmError("zero-masking is not allowed for stores")
        a = d.addr(dst)
        r = src.num
        k = dst.mask
        nb = 4 * vl

        def f():
            addr = a()
            if aligned and addr % nb:
                raise MemoryFault("misaligned %s store at %#x" % (d.mnemonic, addr), addr, nb)
            if k is None:
                st.mem.write_vec(addr, V[r, :vl])
            else:
                st.mem.write_vec_masked(addr, V[r, :vl], _maskbits(K[k], vl))
        return f
    raise AsmError("unsupported operand combination")


def _b_vbin(fn):
    def build(d, ops, idx):
        _nops(ops, 3)
        dst, a, b = ops
        vl = _vl_of(dst)
        if a.kind != "vec":
            raise AsmError("first source must be a register")
        ga = d.vsrc(a, vl)
        gb = d.vsrc(b, vl, dst.mask)
        w = d.vdst(dst)
        return lambda: w(fn(ga(), gb()))
    return build


BUILDERS["vaddps"] = _b_vbin(_fadd)
BUILDERS["vsubps"] = _b_vbin(_fsub)
BUILDERS["vmulps"] = _b_vbin(_fmul)
BUILDERS["vmaxps"] = _b_vbin(_fmax)
BUILDERS["vminps"] = _b_vbin(_fmin)
for _n, _f in [("xor", np.bitwise_xor), ("and", np.bitwise_and), ("or", np.bitwise_or)]:
    BUILDERS["v%sps" % _n] = BUILDERS["vp%s" % _n] = BUILDERS["vp%sd" % _n] = _b_vbin(_f)
BUILDERS["vandnps"] = BUILDERS["vpandn"] = BUILDERS["vpandnd"] = \
    _b_vbin(lambda a, b: (~a) & b)
BUILDERS["vpaddd"] = _b_vbin(lambda a, b: a + b)
BUILDERS["vpsubd"] = _b_vbin(lambda a, b: a - b)
BUILDERS["vpmaxsd"] = _b_vbin(lambda a, b: np.maximum(a.view(np.int32), b.view(np.int32)).view(U32))
BUILDERS["vpminsd"] = _b_vbin(lambda a, b: np.minimum(a.view(np.int32), b.view(np.int32)).view(U32))


def _b_fma(form):
    # operands in instruction order: x=op1 (dst), y=op2, z=op3.
    # NaN priority follows the SDM formula a*b+c of each form (231: op2*op3+op1,
    # 213: op2*op1+op3, 132: op1*op3+op2): first NaN among a, b, c -- measured
    # on AMD Zen 4 for all three forms.
    def build(d, ops, idx):
        _nops(ops, 3)
        dst, a, b = ops
        vl = _vl_of(dst)
        if dst.kind != "vec" or a.kind != "vec":
            raise AsmError("bad fma operands")
        gx = d.vsrc(dst, vl)
        gy = d.vsrc(a, vl)
        gz = d.vsrc(b, vl, dst.mask)
        w = d.vdst(dst)
        if form == "231":
            def f():
                x, y, z = gx(), gy(), gz()
                w(_nanfix(fma_bits(y, z, x), (y, z, x)))
        elif form == "213":
            def f():
                x, y, z = gx(), gy(), gz()
                w(_nanfix(fma_bits(y, x, z), (y, x, z)))
        else:   # 132
            def f():
                x, y, z = gx(), gy(), gz()
                w(_nanfix(fma_bits(x, z, y), (x, z, y)))
        return f
    return build


for _form in ("231", "213", "132"):
    BUILDERS["vfmadd%sps" % _form] = _b_fma(_form)


@_reg("vbroadcastss", "vpbroadcastd")
def _b_vbroadcast(d, ops, idx):
    _nops(ops, 2)
    dst, src = ops
    vl = _vl_of(dst)
    st, V, R, K = d.st, d.st.V, d.st.R, d.st.K
    w = d.vdst(dst)
    if src.kind == "vec":
        r = src.num
        return lambda: w(V[r, 0])
    if src.kind == "gpr" and d.mnemonic == "vpbroadcastd" and src.bits == 32:
        i = src.num
        return lambda: w(U32(R[i] & M32))
    if src.kind == "mem" and src.size in (None, 4) and src.bcst is None:
        a = d.addr(src)
        k = dst.mask
        if k is None:
            return lambda: w(U32(st.mem.read_int(a(), 4)))

        def f():
            if K[k] & ((1 << vl) - 1):
                w(np.full(vl, st.mem.read_int(a(), 4), U32))
            else:
                w(np.zeros(vl, U32))
        return f
    raise AsmError("unsupported broadcast source %r" % src.text)


@_reg("vpcmpgtd", "vpcmpeqd")
def _b_vpcmp(d, ops, idx):
    _nops(ops, 3)
    dst, a, b = ops
    gt = d.mnemonic == "vpcmpgtd"
    if dst.kind == "k":
        vl = a.lanes
        ga, gb = d.vsrc(a, vl), d.vsrc(b, vl, dst.mask)
        K, kd, km = d.st.K, dst.num, dst.mask
        weights = (1 << np.arange(vl, dtype=np.int64))

        def f():
            x, y = ga(), gb()
            c = (x.view(np.int32) > y.view(np.int32)) if gt else (x == y)
            v = int((c * weights).sum())
            if km is not None:
                v &= K[km]
            K[kd] = v
        return f
    vl = _vl_of(dst)
    if dst.mask is not None:
        raise AsmError("vector-destination compare cannot be masked")
    ga, gb, w = d.vsrc(a, vl), d.vsrc(b, vl), d.vdst(dst)
    ones = U32(0xFFFFFFFF)

    def f():
        x, y = ga(), gb()
        c = (x.view(np.int32) > y.view(np.int32)) if gt else (x == y)
        w(np.where(c, ones, U32(0)))
    return f


@_reg("vmaskmovps")
def _b_vmaskmov(d, ops, idx):
    _nops(ops, 3)
    st, V = d.st, d.st.V
    if ops[0].kind == "vec":
        dst, mk, src = ops
        if src.kind != "mem" or mk.kind != "vec":
            raise AsmError("vmaskmovps load needs reg, mask reg, mem")
        vl = dst.lanes
        a, w, m = d.addr(src), d.vdst(dst), mk.num

        def f():
            w(st.mem.read_vec_masked(a(), vl, (V[m, :vl] >> 31).astype(bool)))
        return f
    dst, mk, src = ops
    if dst.kind != "mem" or mk.kind != "vec" or src.kind != "vec":
        raise AsmError("vmaskmovps store needs mem, mask reg, reg")
    vl = src.lanes
    a, m, r = d.addr(dst), mk.num, src.num

    def f():
        st.mem.write_vec_masked(a(), V[r, :vl], (V[m, :vl] >> 31).astype(bool))
    return f


# ---- conversions, word <-> dword moves, shifts, compares, blends, bf16 -------

@_reg("vcvtph2ps")
def _b_vcvtph2ps(d, ops, idx):
    # vcvtph2ps {x,y,z}mm{k}{z}, {x,y}mm / m64 / m128 / m256 (halves -> floats)
    _nops(ops, 2)
    dst, src = ops
    if dst.kind != "vec":
        raise AsmError("destination must be a vector register")
    vl = dst.lanes
    g = d.wsrc(src, vl, dst.mask)
    w = d.vdst(dst)
    return lambda: w(_h2f(g()))


@_reg("vcvtps2ph")
def _b_vcvtps2ph(d, ops, idx):
    # vcvtps2ph {x,y}mm{k}{z} / m64 / m128 / m256{k}, {x,y,z}mm, imm8
    _nops(ops, 3)
    dst, src, imm = ops
    if src.kind != "vec" or imm.kind != "expr":
        raise AsmError("vcvtps2ph needs a vector register source and an imm8")
    rc = d.value(imm) & 0xFF
    if not rc & 4 and rc & 3:
        raise AsmError(f"vcvtps2ph imm8 {rc:#x}: only round to nearest even (imm8[1:0] = 0, "
                       "or imm8[2] = 1 for the default MXCSR) is supported")
    vl = src.lanes
    g = d.vsrc(src, vl)
    w = d.wdst(dst, vl)
    return lambda: w(_f2h(g()))


def _b_vpmovxwd(signed):
    def build(d, ops, idx):
        # vpmov[zs]xwd {x,y,z}mm{k}{z}, {x,y}mm / m64 / m128 / m256
        _nops(ops, 2)
        dst, src = ops
        if dst.kind != "vec":
            raise AsmError("destination must be a vector register")
        vl = dst.lanes
        g = d.wsrc(src, vl, dst.mask)
        w = d.vdst(dst)
        if signed:
            return lambda: w(g().view(np.int16).astype(np.int32).view(U32))
        return lambda: w(g().astype(U32))
    return build


BUILDERS["vpmovzxwd"] = _b_vpmovxwd(False)
BUILDERS["vpmovsxwd"] = _b_vpmovxwd(True)


@_reg("vpmovdw")
def _b_vpmovdw(d, ops, idx):
    # vpmovdw {x,y}mm{k}{z} / m64 / m128 / m256{k}, {x,y,z}mm  (truncating)
    _nops(ops, 2)
    dst, src = ops
    if src.kind != "vec":
        raise AsmError("vpmovdw source must be a vector register")
    vl = src.lanes
    g = d.vsrc(src, vl)
    w = d.wdst(dst, vl)
    return lambda: w(g().astype(U16))


def _b_vshift(kind):
    def build(d, ops, idx):
        # vps{ll,rl,ra}d dst{k}{z}, src, imm8 / xmm / m128 (count: low 64 bits)
        _nops(ops, 3)
        dst, src, cnt = ops
        vl = _vl_of(dst)
        st, V = d.st, d.st.V
        g = d.vsrc(src, vl, dst.mask)
        w = d.vdst(dst)
        if cnt.kind == "expr":
            c0 = d.value(cnt) & 0xFF

            def getc():
                return c0
        elif cnt.kind == "vec" and cnt.lanes == 4:
            r = cnt.num

            def getc():
                return int(V[r, 0]) | (int(V[r, 1]) << 32)
        elif cnt.kind == "mem" and cnt.size in (None, 16) and cnt.bcst is None:
            a = d.addr(cnt)

            def getc():
                return st.mem.read_int(a(), 16) & M64
        else:
            raise AsmError("shift count must be an imm8, an xmm register or m128")
        zeros = np.zeros(vl, U32)

        def f():
            c, x = getc(), g()
            if kind == "sra":
                w((x.view(np.int32) >> min(c, 31)).view(U32))
            elif c > 31:
                w(zeros)
            elif kind == "sll":
                w(x << c)
            else:
                w(x >> c)
        return f
    return build


def _packusdw(a, b):
    """Per 128-bit lane: the 4 signed dwords of a, then those of b, saturated to unsigned words."""
    out = []
    for lane in range(0, len(a), 4):
        words = np.concatenate([np.clip(x[lane:lane + 4].view(np.int32), 0, 0xFFFF) for x in (a, b)])
        out.append(words.astype(U16).view(U32))
    return np.concatenate(out)


BUILDERS["vpackusdw"] = _b_vbin(_packusdw)


@_reg("vpermq")
def _b_vpermq(d, ops, idx):
    # vpermq ymm, ymm/m256, imm8 (AVX2): qword i of dst = qword (imm8 >> 2i) & 3 of the source
    _nops(ops, 3)
    dst, src, imm = ops
    if dst.kind != "vec" or dst.lanes != 8 or imm.kind != "expr" or dst.mask is not None:
        raise AsmError("vpermq: only the AVX2 form ymm, ymm/m256, imm8")
    sel = d.value(imm) & 0xFF
    g = d.vsrc(src, 8)
    w = d.vdst(dst)
    order = np.array([2 * ((sel >> (2 * i)) & 3) + h for i in range(4) for h in (0, 1)])
    return lambda: w(g()[order])


BUILDERS["vpslld"] = _b_vshift("sll")
BUILDERS["vpsrld"] = _b_vshift("srl")
BUILDERS["vpsrad"] = _b_vshift("sra")


def _unord(a, b):
    return (a != a) | (b != b)  # noqa: PLR0124


# vcmpps predicates 0..15 on float32 arrays (16..31 repeat them with the other
# signalling behaviour, which changes only exceptions)
_CMPPS = [
    lambda a, b: a == b,                          # 0  EQ_OQ
    lambda a, b: a < b,                           # 1  LT_OS
    lambda a, b: a <= b,                          # 2  LE_OS
    _unord,                                       # 3  UNORD_Q
    lambda a, b: ~(a == b),                       # 4  NEQ_UQ
    lambda a, b: ~(a < b),                        # 5  NLT_US
    lambda a, b: ~(a <= b),                       # 6  NLE_US
    lambda a, b: ~_unord(a, b),                   # 7  ORD_Q
    lambda a, b: (a == b) | _unord(a, b),         # 8  EQ_UQ
    lambda a, b: ~(a >= b),                       # 9  NGE_US
    lambda a, b: ~(a > b),                        # 10 NGT_US
    lambda a, b: np.zeros(a.shape, bool),         # 11 FALSE_OQ
    lambda a, b: (a < b) | (a > b),               # 12 NEQ_OQ
    lambda a, b: a >= b,                          # 13 GE_OS
    lambda a, b: a > b,                           # 14 GT_OS
    lambda a, b: np.ones(a.shape, bool),          # 15 TRUE_UQ
]
_CMPPS_NAMES = ["eq", "lt", "le", "unord", "neq", "nlt", "nle", "ord",
                "eq_uq", "nge", "ngt", "false", "neq_oq", "ge", "gt", "true",
                "eq_os", "lt_oq", "le_oq", "unord_s", "neq_us", "nlt_uq", "nle_uq",
                "ord_s", "eq_us", "nge_uq", "ngt_uq", "false_os", "neq_os", "ge_oq",
                "gt_oq", "true_us"]


def _b_vcmpps(pred):
    def build(d, ops, idx):
        # vcmpps k{k}, v, v/m/bcst, imm8  |  vcmpps {x,y}mm, v, v/m, imm8
        # (and the vcmp<pred>ps forms without the imm8)
        if pred is None:
            _nops(ops, 4)
            if ops[3].kind != "expr":
                raise AsmError("vcmpps predicate must be an imm8")
            p = d.value(ops[3]) & 0x1F
        else:
            _nops(ops, 3)
            p = pred
        fn = _CMPPS[p & 15]
        dst, a, b = ops[:3]
        if a.kind != "vec":
            raise AsmError("first source must be a register")
        vl = a.lanes
        if dst.kind == "k":
            ga, gb = d.vsrc(a, vl), d.vsrc(b, vl, dst.mask)
            K, kd, km = d.st.K, dst.num, dst.mask
            weights = 1 << np.arange(vl, dtype=np.int64)

            def f():
                v = int(np.dot(fn(ga().view(F32), gb().view(F32)), weights))
                K[kd] = v & K[km] if km is not None else v
            return f
        if dst.mask is not None or _vl_of(dst) != vl:
            raise AsmError(f"bad vcmpps destination {dst.text!r}")
        ga, gb, w = d.vsrc(a, vl), d.vsrc(b, vl), d.vdst(dst)
        ones, zero = U32(0xFFFFFFFF), U32(0)
        return lambda: w(np.where(fn(ga().view(F32), gb().view(F32)), ones, zero))
    return build


BUILDERS["vcmpps"] = _b_vcmpps(None)
for _i, _n in enumerate(_CMPPS_NAMES):
    BUILDERS[f"vcmp{_n}ps"] = _b_vcmpps(_i)


@_reg("vblendvps")
def _b_vblendvps(d, ops, idx):
    # vblendvps {x,y}mm, {x,y}mm, {x,y}mm/m, {x,y}mm: sign bit of op4 picks op3
    _nops(ops, 4)
    dst, a, b, m = ops
    if dst.kind != "vec" or a.kind != "vec" or m.kind != "vec" or dst.mask is not None:
        raise AsmError("vblendvps needs registers (op3 may be memory), no masking")
    vl = dst.lanes
    ga, gb, gm, w = d.vsrc(a, vl), d.vsrc(b, vl), d.vsrc(m, vl), d.vdst(dst)
    return lambda: w(np.where((gm() >> 31).astype(bool), gb(), ga()))


@_reg("vdpbf16ps")
def _b_vdpbf16ps(d, ops, idx):
    # vdpbf16ps {x,y,z}mm{k}{z}, v, v / m / m32bcst  (semantics: _dpbf16)
    _nops(ops, 3)
    dst, a, b = ops
    if dst.kind != "vec" or a.kind != "vec":
        raise AsmError("vdpbf16ps needs register destination and first source")
    vl = dst.lanes
    gc, ga, gb = d.vsrc(dst, vl), d.vsrc(a, vl), d.vsrc(b, vl, dst.mask)
    w = d.vdst(dst)
    return lambda: w(_dpbf16(gc(), ga(), gb()))


@_reg("vzeroupper")
def _b_vzeroupper(d, ops, idx):
    V = d.st.V

    def f():
        V[:16, 4:] = 0
    return f


@_reg("vzeroall")
def _b_vzeroall(d, ops, idx):
    V = d.st.V

    def f():
        V[:16, :] = 0
    return f


def _b_kmov(bits):
    m = (1 << bits) - 1

    def build(d, ops, idx):
        _nops(ops, 2)
        dst, src = ops
        K, R, st = d.st.K, d.st.R, d.st
        if src.kind == "k":
            j = src.num
            g = lambda: K[j]  # noqa: E731
        elif src.kind == "gpr":
            g = d.get(src, src.bits)
        elif src.kind == "mem":
            g = d.get(src, bits)
        else:
            raise AsmError("bad kmov source")
        if dst.kind == "k":
            i = dst.num

            def f():
                K[i] = g() & m
        elif dst.kind == "gpr":
            i = dst.num

            def f():
                R[i] = g() & m
        elif dst.kind == "mem":
            s = d.set(dst, bits)

            def f():
                s(g() & m)
        else:
            raise AsmError("bad kmov destination")
        return f
    return build


def _b_klogic(bits, fn):
    m = (1 << bits) - 1

    def build(d, ops, idx):
        K = d.st.K
        if any(o.kind != "k" for o in ops):
            raise AsmError("mask instruction needs k registers")
        if len(ops) == 3:
            i, j, l = ops[0].num, ops[1].num, ops[2].num

            def f():
                K[i] = fn(K[j], K[l]) & m
        else:
            _nops(ops, 2)
            i, j = ops[0].num, ops[1].num

            def f():
                K[i] = fn(K[j], 0) & m
        return f
    return build


for _s, _b in (("b", 8), ("w", 16), ("d", 32), ("q", 64)):
    BUILDERS["kmov" + _s] = _b_kmov(_b)
    BUILDERS["kxnor" + _s] = _b_klogic(_b, lambda a, b: ~(a ^ b))
    BUILDERS["kxor" + _s] = _b_klogic(_b, lambda a, b: a ^ b)
    BUILDERS["kand" + _s] = _b_klogic(_b, lambda a, b: a & b)
    BUILDERS["kor" + _s] = _b_klogic(_b, lambda a, b: a | b)
    BUILDERS["knot" + _s] = _b_klogic(_b, lambda a, b: ~a)


# --------------------------------------------------------------------------
# assembler front end

_IGNORED_DIRECTIVES = {
    ".intel_syntax", ".globl", ".global", ".local", ".weak", ".hidden",
    ".protected", ".internal", ".type", ".size", ".file", ".ident", ".loc",
    ".addrsig", ".addrsig_sym", ".note", ".arch", ".code64", ".end",
    ".lcomm_never", ".sleb128_never", ".uleb128_never"}
_DATA_SIZES = {".byte": 1, ".short": 2, ".value": 2, ".word": 2, ".hword": 2,
               ".2byte": 2, ".long": 4, ".int": 4, ".4byte": 4,
               ".quad": 8, ".8byte": 8}
_PREFIXES = {"rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "lock",
             "{vex}", "{vex3}", "{vex2}", "{evex}", "{load}", "{store}", "data16"}


class _Insn:
    __slots__ = ("mnemonic", "operands", "lineno", "text")

    def __init__(self, mnemonic, operands, lineno, text):
        self.mnemonic, self.operands, self.lineno, self.text = \
            mnemonic, operands, lineno, text


def _strip_comment(line):
    out = []
    inq = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == '"':
            inq = not inq
        elif not inq:
            if ch == "#" or line.startswith("//", i):
                break
        out.append(ch)
        i += 1
    return "".join(out)


class Program:
    """Parsed and pre-decoded assembly text.

    Program(text, on_unknown="error")  -- on_unknown="defer" turns unknown or
    unsupported instructions into a runtime error raised only when executed.
    """

    def __init__(self, text, on_unknown="error", stack_size=1 << 20):
        if on_unknown not in ("error", "defer"):
            raise ValueError("on_unknown must be 'error' or 'defer'")
        self.stack_size = stack_size
        self.insns = []
        self.text_labels = {}            # name -> instruction index
        self.sections = {}               # name -> bytearray
        self.section_writable = {}
        self.data_labels = {}            # name -> (section, offset)
        self.equ = {}
        self._fixups = []                # (section, offset, size, expr, lineno)
        self._parse(text)
        self._layout()
        self.st = _State()
        self.steps = 0
        self.profile = None
        self._decode(on_unknown)

    # parsing ----------------------------------------------------------------
    def _parse(self, text):
        cur = ".text"
        stack = []
        lines = text.splitlines()
        for lineno, raw in enumerate(lines, 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            stmts = [line] if '"' in line else [s.strip() for s in line.split(";")]
            for stmt in stmts:
                try:
                    cur = self._stmt(stmt, cur, stack, lineno, raw.strip())
                except AsmError as e:
                    if "line " in str(e)[:8]:
                        raise
                    raise AsmError("line %d: %s: %s" % (lineno, e, raw.strip())) from None

    def _define(self, name, cur, lineno):
        if name in self.text_labels or name in self.data_labels or name in self.equ:
            raise AsmError("symbol %r defined twice" % name)
        if cur == ".text":
            self.text_labels[name] = len(self.insns)
        else:
            self.data_labels[name] = (cur, len(self.sections[cur]))

    def _section(self, name, flags=""):
        if name.startswith(".text"):
            return ".text"
        if name not in self.sections:
            self.sections[name] = bytearray()
            self.section_writable[name] = (
                name.startswith((".data", ".bss", ".tdata", ".tbss")) or "w" in flags)
        return name

    def _stmt(self, stmt, cur, stack, lineno, raw):
        while True:
            m = re.match(r"([A-Za-z_.$][\w.$@]*)\s*:(?!:)\s*(.*)$", stmt)
            if not m:
                break
            self._define(m.group(1), cur, lineno)
            stmt = m.group(2)
        if not stmt:
            return cur
        if stmt[0] == ".":
            parts = stmt.split(None, 1)
            dname = parts[0].lower()
            args = parts[1].strip() if len(parts) > 1 else ""
            return self._directive(dname, args, cur, stack, lineno)
        if cur != ".text":
            raise AsmError("instruction outside .text")
        parts = stmt.split(None, 1)
        mnem = parts[0].lower()
        rest = parts[1] if len(parts) > 1 else ""
        while mnem in _PREFIXES and rest:
            parts = rest.split(None, 1)
            mnem = parts[0].lower()
            rest = parts[1] if len(parts) > 1 else ""
        self.insns.append(_Insn(mnem, rest.strip(), lineno, raw))
        return cur

    def _directive(self, dname, args, cur, stack, lineno):
        if dname in _IGNORED_DIRECTIVES or dname.startswith(".cfi_"):
            if dname == ".intel_syntax" and args and "noprefix" not in args:
                raise AsmError(".intel_syntax prefix is not supported")
            return cur
        if dname == ".att_syntax":
            raise AsmError("AT&T syntax is not supported")
        if dname == ".text":
            return ".text"
        if dname in (".data", ".bss", ".rodata"):
            return self._section(dname)
        if dname in (".section", ".pushsection"):
            a = _split_top(args)
            if dname == ".pushsection":
                stack.append(cur)
            return self._section(a[0], a[1] if len(a) > 1 else "")
        if dname == ".popsection":
            return stack.pop() if stack else ".text"
        if dname == ".previous":
            return cur
        if dname in (".set", ".equ"):
            name, val = _split_top(args)
            self.equ[name] = val
            return cur
        if dname in (".align", ".p2align", ".balign"):
            a = _split_top(args)
            n = eval_expr(a[0], self.equ)
            al = (1 << n) if dname == ".p2align" else n
            if cur != ".text" and al > 1:
                sec = self.sections[cur]
                fill = eval_expr(a[1], self.equ) if len(a) > 1 and a[1] else 0
                pad = (-len(sec)) % al
                sec.extend(bytes([fill & 0xFF]) * pad)
            return cur
        if cur == ".text":
            if dname in _DATA_SIZES or dname in (".float", ".single", ".double",
                                                 ".zero", ".space", ".skip",
                                                 ".ascii", ".asciz", ".string"):
                raise AsmError("data directive %s in .text is not supported" % dname)
            raise AsmError("unsupported directive %s" % dname)
        sec = self.sections[cur]
        if dname in _DATA_SIZES:
            n = _DATA_SIZES[dname]
            for v in _split_top(args):
                self._fixups.append((cur, len(sec), n, v, lineno))
                sec.extend(bytes(n))
        elif dname in (".float", ".single", ".double"):
            code = "<d" if dname == ".double" else "<f"
            import struct
            for v in _split_top(args):
                try:
                    x = float(v)
                except ValueError:
                    x = float(int(v, 0))
                sec.extend(struct.pack(code, x))
        elif dname in (".zero", ".space", ".skip"):
            a = _split_top(args)
            n = eval_expr(a[0], self.equ)
            fill = eval_expr(a[1], self.equ) if len(a) > 1 else 0
            sec.extend(bytes([fill & 0xFF]) * n)
        elif dname in (".ascii", ".asciz", ".string"):
            for v in _split_top(args):
                b = ast.literal_eval("b" + v)
                sec.extend(b + (b"\0" if dname != ".ascii" else b""))
        else:
            raise AsmError("unsupported directive %s" % dname)
        return cur

    # layout ------------------------------------------------------------------
    def _layout(self):
        self.section_addr = {}
        self.section_arrays = {}
        addr = max(DATA_BASE, CODE_BASE + CODE_STRIDE * (len(self.insns) + 16))
        addr = (addr + 0xFFFF) & ~0xFFFF
        for name, data in self.sections.items():
            self.section_addr[name] = addr
            addr += (len(data) + 4096 + 0xFFF) & ~0xFFF
        sym = {}
        for n, i in self.text_labels.items():
            sym[n] = CODE_BASE + CODE_STRIDE * i
        for n, (s, o) in self.data_labels.items():
            sym[n] = self.section_addr[s] + o
        for n, v in self.equ.items():
            sym[n] = eval_expr(v, sym)
        self.symbols = sym
        for sec, off, size, expr, lineno in self._fixups:
            try:
                v = eval_expr(expr, sym)
            except AsmError as e:
                raise AsmError("line %d: %s" % (lineno, e)) from None
            self.sections[sec][off:off + size] = (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for name, data in self.sections.items():
            arr = np.frombuffer(bytes(data), U8).copy()
            if not self.section_writable[name]:
                arr.setflags(write=False)
            self.section_arrays[name] = arr

    def symbol_address(self, name):
        return self.symbols[name]

    def section_array(self, name):
        """The uint8 array backing a data section (e.g. '.data')."""
        return self.section_arrays[name]

    # decoding ----------------------------------------------------------------
    def _decode(self, on_unknown):
        d = Decoder(self.st, self.symbols, self.text_labels)
        d.ncode = len(self.insns)
        code = []
        for idx, ins in enumerate(self.insns):
            d.mnemonic = ins.mnemonic
            try:
                b = BUILDERS.get(ins.mnemonic)
                if b is None:
                    raise AsmError("unknown instruction %r" % ins.mnemonic)
                ops = [parse_operand(o) for o in _split_top(ins.operands)] \
                    if ins.operands else []
                fn = b(d, ops, idx)
            except AsmError as e:
                msg = "line %d: %s: %s" % (ins.lineno, e, ins.text)
                if on_unknown == "error":
                    raise AsmError(msg) from None
                fn = self._deferred(msg)
            code.append(fn)

        def fell_off():
            raise SimError("execution ran past the end of the text")
        code.append(fell_off)
        self.code = code

    @staticmethod
    def _deferred(msg):
        def f():
            raise AsmError(msg)
        return f

    # running -------------------------------------------------------------------
    def call(self, symbol, args=(), memory=None, max_steps=10_000_000, trace=False,
             profile=False):
        """Call ``symbol`` with the System V ABI and return rax (unsigned 64-bit).

        args: ints (-> rdi, rsi, rdx, rcx, r8, r9, then stack) and floats
        (-> xmm0..xmm7 low lane).  trace: True prints each executed instruction
        to stderr; a callable is called as trace(step, lineno, text, program).
        profile=True fills ``self.profile`` (mnemonic -> count).
        """
        if symbol not in self.text_labels:
            raise SimError("no function %r in the text" % symbol)
        mem = memory if memory is not None else Memory()
        self.memory = mem
        for name, arr in self.section_arrays.items():
            mem._attach(("section", id(self), name), arr, self.section_addr[name],
                        self.section_writable[name], "section " + name)
        if ("stack",) not in mem._attached:
            stk = np.zeros(self.stack_size, U8)
            mem._attach(("stack",), stk, STACK_TOP - self.stack_size, True, "stack")
        st = self.st
        st.reset()
        st.mem = mem
        R = st.R
        iregs = [7, 6, 2, 1, 8, 9]
        stack_args = []
        nx = 0
        for a in args:
            if isinstance(a, (float, np.floating)):
                if nx >= 8:
                    raise SimError("more than 8 float arguments")
                st.V[nx, 0] = np.array(a, F32).view(U32)
                nx += 1
            else:
                v = int(a) & M64
                if iregs:
                    R[iregs.pop(0)] = v
                else:
                    stack_args.append(v)
        sp = (STACK_TOP - 64 - 8 * len(stack_args)) & ~0xF
        for i, v in enumerate(stack_args):
            mem.write_int(sp + 8 * i, 8, v)
        sp -= 8
        mem.write_int(sp, 8, RET_SENTINEL)
        R[RSP] = sp
        pc = self.text_labels[symbol]
        code = self.code
        n = 0
        with np.errstate(all="ignore"):
            if trace or profile:
                n = self._run_slow(pc, max_steps, trace, profile)
            else:
                try:
                    while True:
                        r = code[pc]()
                        n += 1
                        if r is None:
                            pc += 1
                        elif r < 0:
                            break
                        else:
                            pc = r
                        if n >= max_steps:
                            raise StepLimitExceeded("step limit %d reached" % max_steps)
                except SimError as e:
                    self._annotate(e, pc, n)
                    raise
        self.steps = n
        return R[0]

    def _annotate(self, e, pc, n):
        self.steps = n
        if pc < len(self.insns) and not str(e).startswith("line "):
            ins = self.insns[pc]
            e.args = ("%s [executing line %d: %s]" % (e, ins.lineno, ins.text),) \
                + e.args[1:]
            if isinstance(e, MemoryFault):
                e.lineno, e.instruction = ins.lineno, ins.text

    def _run_slow(self, pc, max_steps, trace, profile):
        from collections import Counter
        prof = Counter() if profile else None
        self.profile = prof
        code = self.code
        n = 0
        try:
            while True:
                if pc < len(self.insns):
                    ins = self.insns[pc]
                    if prof is not None:
                        prof[ins.mnemonic] += 1
                    if trace is True:
                        print("%8d  L%-5d %s" % (n, ins.lineno, ins.text), file=sys.stderr)
                    elif trace:
                        trace(n, ins.lineno, ins.text, self)
                r = code[pc]()
                n += 1
                if r is None:
                    pc += 1
                elif r < 0:
                    break
                else:
                    pc = r
                if n >= max_steps:
                    raise StepLimitExceeded("step limit %d reached" % max_steps)
        except SimError as e:
            self._annotate(e, pc, n)
            raise
        return n

    # state inspection -----------------------------------------------------------
    def gpr(self, name):
        i, w = _GPR_NAMES[name.lower()]
        return self.st.R[i] & ((1 << w) - 1)

    def vreg(self, n, dtype=np.float32):
        """Copy of zmm<n> (16 lanes) viewed as dtype."""
        return self.st.V[n].copy().view(dtype)

    def kreg(self, n):
        return self.st.K[n]
