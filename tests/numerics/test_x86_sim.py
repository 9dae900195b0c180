"""Tests for x86_sim.

AVX2/FMA kernels are assembled with GNU as + ld into a shared object, run
natively through ctypes and compared bit for bit with the simulator.  AVX-512
kernels are checked against independently computed expectations (and natively
too when the CPU happens to support AVX-512F); `as` must accept their text.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import time
from fractions import Fraction

import numpy as np
import pytest

import x86_sim
from x86_sim import AsmError, Memory, MemoryFault, Program, SimError, StepLimitExceeded

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAVE_TOOLS = shutil.which("as") is not None and shutil.which("ld") is not None
NATIVE_AVX2 = HAVE_TOOLS and {"avx2", "fma"} <= FLAGS
NATIVE_AVX512 = HAVE_TOOLS and "avx512f" in FLAGS
need_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="GNU as/ld not available")
need_avx2 = pytest.mark.skipif(not NATIVE_AVX2, reason="needs as/ld and an AVX2+FMA CPU")

HEADER = ".intel_syntax noprefix\n.text\n"


# --------------------------------------------------------------------------
# native harness

_SO_CACHE = {}


@pytest.fixture(scope="session")
def builddir(tmp_path_factory):
    return tmp_path_factory.mktemp("native")


def assemble(text, builddir, link=True):
    h = hashlib.sha1(text.encode()).hexdigest()[:16]
    s = builddir / (h + ".s")
    o = builddir / (h + ".o")
    s.write_text(text)
    subprocess.run(["as", "--64", "-o", str(o), str(s)], check=True,
                   capture_output=True, text=True)
    if not link:
        return o
    so = builddir / (h + ".so")
    subprocess.run(["ld", "-shared", "-o", str(so), str(o)], check=True,
                   capture_output=True, text=True)
    return so


def native_lib(text, builddir):
    key = text
    if key not in _SO_CACHE:
        _SO_CACHE[key] = ctypes.CDLL(str(assemble(text, builddir)))
    return _SO_CACHE[key]


def run_native(lib, name, args):
    """args: numpy arrays (passed by pointer, modified in place) or ints."""
    f = getattr(lib, name)
    f.restype = ctypes.c_uint64
    cargs = []
    for a in args:
        if isinstance(a, np.ndarray):
            cargs.append(ctypes.c_void_p(a.ctypes.data))
        else:
            cargs.append(ctypes.c_uint64(int(a) & (2**64 - 1)))
    f.argtypes = [type(c) for c in cargs]
    return f(*cargs)


def run_sim(prog, name, args, mem=None):
    mem = mem or Memory()
    sargs = []
    for a in args:
        sargs.append(mem.map(a) if isinstance(a, np.ndarray) else a)
    return prog.call(name, sargs, memory=mem, max_steps=10**7)


def aligned(a, align=64):
    """Copy of a at an address that is a multiple of align."""
    buf = np.empty(a.nbytes + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def both(text, name, args, builddir, prog=None, copy=np.copy):
    """Run natively and in the simulator on copies of args; assert the return
    value and every array are bit-identical.  Returns the simulator arrays.
    (The simulator maps its copies at 4 KiB aligned addresses.)"""
    nat = [copy(a) if isinstance(a, np.ndarray) else a for a in args]
    sim = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    rn = run_native(native_lib(text, builddir), name, nat)
    prog = prog or Program(text)
    rs = run_sim(prog, name, sim)
    assert rs == rn, "%s: return value sim %#x native %#x" % (name, rs, rn)
    for i, (x, y) in enumerate(zip(nat, sim)):
        if isinstance(x, np.ndarray):
            bad = np.flatnonzero(x.view(np.uint8) != y.view(np.uint8))
            if bad.size:
                xv = x.reshape(-1).view(np.uint32) if x.dtype.itemsize == 4 else x
                yv = y.reshape(-1).view(np.uint32) if y.dtype.itemsize == 4 else y
                j = bad[0] // x.dtype.itemsize
                raise AssertionError(
                    "%s: arg %d differs at %d of %d bytes; first element %d: "
                    "native %r sim %r" % (name, i, bad.size, x.nbytes, j,
                                          hex(int(xv.reshape(-1)[j])), hex(int(yv.reshape(-1)[j]))))
    return sim


# --------------------------------------------------------------------------
# independent float32 reference (Fractions)

def f32_round(q):
    """Round a Fraction to float32 (nearest even, subnormals, overflow)."""
    if q == 0:
        return np.float32(0.0)
    sign = -1 if q < 0 else 1
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    quantum = Fraction(2) ** (max(e, -126) - 23)
    n = q / quantum
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    v = fl * quantum
    if v >= Fraction(2) ** 128:
        return np.float32(sign * np.inf)
    return np.float32(sign * float(v))


def ref_fma(a, b, c):
    """Reference fused multiply-add on float32 scalars, x86 NaN rules with
    NaN priority a, b, c."""
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    for x in (a, b, c):
        if np.isnan(x):
            return (np.array(x).view(np.uint32) | np.uint32(0x400000)).view(np.float32)
    if (np.isinf(a) and b == 0) or (np.isinf(b) and a == 0):
        return np.array(0xFFC00000, np.uint32).view(np.float32)
    if np.isinf(a) or np.isinf(b):
        pinf = np.sign(a) * np.sign(b)
        if np.isinf(c) and np.sign(c) != pinf:
            return np.array(0xFFC00000, np.uint32).view(np.float32)
        return np.float32(pinf * np.inf)
    if np.isinf(c):
        return c
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:
        p_neg = (np.signbit(a) != np.signbit(b))
        return np.float32(-0.0) if (p_neg and np.signbit(c)) else np.float32(0.0)
    return f32_round(exact)


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def f32(u):
    return np.asarray(u, np.uint32).view(np.float32)


# --------------------------------------------------------------------------
# test inputs

SPECIALS = f32(np.array([
    0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x7F800000, 0xFF800000,
    0x7FC00000, 0xFFC12345, 0x7F812345, 0xFF800001,   # qnan, -qnan payload, snan, -snan
    0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x00800000, 0x40490FDB, 0xC2F6E979], np.uint32))


def _factor_pairs():
    """(f1, f2) with f1*f2 == 2**k +- 1 and both < 2**24: products that sit a
    hair away from a power of two -> double-rounding traps."""
    out = []
    for k in range(26, 48):
        for n in (2**k + 1, 2**k - 1):
            lo = max(3, (n >> 24) | 1)
            hi = min(2**24, int(n ** 0.5) + 1)
            f = np.arange(lo, hi, 2, dtype=np.int64)
            hit = f[(n % f == 0) & (n // f < 2**24)]
            if hit.size:
                out.append((int(hit[0]), n // int(hit[0]), k))
    return out


def fma_inputs(seed=1, nrand=2048):
    rng = np.random.default_rng(seed)
    A, B, C = [], [], []

    def add(a, b, c):
        A.append(np.float32(a))
        B.append(np.float32(b))
        C.append(np.float32(c))

    # all-bit-pattern random (NaN, inf, subnormals included)
    r = rng.integers(0, 2**32, size=(3, nrand), dtype=np.uint64).astype(np.uint32)
    for a, b, c in zip(*[f32(x) for x in r]):
        add(a, b, c)
    # moderate exponents, cancellation: c = -(a*b) +- few ulps
    a = (rng.standard_normal(nrand) * 4).astype(np.float32)
    b = (rng.standard_normal(nrand) * 4).astype(np.float32)
    p = (a.astype(np.float64) * b).astype(np.float32)
    c = -p
    c = f32(bits(c).astype(np.int64) + rng.integers(-3, 4, nrand))
    for x, y, z in zip(a, b, c):
        add(x, y, z)
    # double rounding traps: a*b = 2^s*(2^k +- 1), c = +-2^(s+k+24+-j) (+ odd mantissas)
    for f1, f2, k in _factor_pairs():
        for cexp in (k + 24, k + 23, k + 25):
            for cm in (1.0, 1.0 + 2**-23, 1.5, 1.0 - 2**-24):
                for sh in (-100, -20, 0, 30):
                    for sgn in (1, -1):
                        s = sh - cexp
                        a = np.float32(f1 * 2.0**s)
                        b = np.float32(f2)
                        c = np.float32(sgn * cm * 2.0**sh)
                        if np.isfinite(a) and a != 0:
                            add(a, b, c)
                            add(-a, b, c)
    # subnormal results and ties in the subnormal range
    for _ in range(nrand // 2):
        a = np.float32(rng.uniform(1, 2) * 2.0 ** int(rng.integers(-80, -60)))
        b = np.float32(rng.uniform(1, 2) * 2.0 ** int(rng.integers(-90, -60)))
        c = f32(np.uint32(rng.integers(0, 2**24)) | np.uint32(int(rng.integers(0, 2)) << 31))
        add(a, b, c)
    for k in range(1, 40):
        add(2.0**-75, 2.0**-75, f32(np.uint32(k)))                # + half ulp: tie
        add(2.0**-75, 2.0**-75 * (1 + 2**-23), f32(np.uint32(k)))  # just above tie
        add(-2.0**-75, 2.0**-75, f32(np.uint32(k)))
    # overflow boundary
    big = np.float32(2.0**64)
    for cm in (0.0, 2.0**103, -2.0**103, 2.0**104, np.float32(3.4028235e38)):
        add(big, np.float32(2.0**63 * (2 - 2**-23)), cm)
        add(big, np.float32(2.0**63 * (2 - 2**-22)), cm)
        add(-big, np.float32(2.0**64), -np.float32(cm))
    # signed zeros
    for a in (0.0, -0.0, 1e-30, -1e-30):
        for b in (0.0, -0.0, 1e-30, -1e-30):
            for c in (0.0, -0.0):
                add(a, b, c)
    # specials cross product
    for a in SPECIALS:
        for b in SPECIALS:
            for c in SPECIALS[::3]:
                add(a, b, c)
    n = len(A)
    pad = (-n) % 16
    A += [np.float32(1)] * pad
    B += [np.float32(1)] * pad
    C += [np.float32(1)] * pad
    return np.array(A, np.float32), np.array(B, np.float32), np.array(C, np.float32)


# --------------------------------------------------------------------------
# AVX2 kernels (run natively and simulated)

AXPY = HEADER + r"""
# void axpy(float *y, const float *x, const float *a, long n): y += a*x
    .globl axpy
    .type axpy, @function
axpy:
    vbroadcastss ymm0, DWORD PTR [rdx]
    xor eax, eax
.Lloop:
    lea r8, [rax+8]
    cmp r8, rcx
    jg .Ltail
    vmovups ymm1, YMMWORD PTR [rdi+rax*4]
    vfmadd231ps ymm1, ymm0, YMMWORD PTR [rsi+rax*4]
    vmovups YMMWORD PTR [rdi+rax*4], ymm1
    add rax, 8
    jmp .Lloop
.Ltail:
    mov r9, rcx
    sub r9, rax
    jle .Ldone                  # no tail
// a comment line in the other style
    mov DWORD PTR [rsp-8], r9d
    vpbroadcastd ymm2, DWORD PTR [rsp-8]
    vpcmpgtd ymm2, ymm2, YMMWORD PTR .Liota[rip]
    vmaskmovps ymm1, ymm2, YMMWORD PTR [rdi+rax*4]
    vmaskmovps ymm3, ymm2, [rsi+rax*4]
    vfmadd231ps ymm1, ymm0, ymm3
    vmaskmovps YMMWORD PTR [rdi+rax*4], ymm2, ymm1
.Ldone:
    vzeroupper
    mov rax, rcx
    ret
    .size axpy, .-axpy

# void dot8(float *out8, const float *x, const float *y, long n)  (n % 8 == 0)
    .globl dot8
dot8:
    vxorps ymm0, ymm0, ymm0
    vxorps xmm1, xmm1, xmm1
    test rcx, rcx
    je .Ldot_end
    xor r8d, r8d
.Ldot:
    vmovaps ymm2, YMMWORD PTR [rsi+r8*4]
    vfmadd231ps ymm0, ymm2, YMMWORD PTR [rdx+r8*4]
    vmulps ymm3, ymm2, ymm2
    vaddps ymm1, ymm1, ymm3
    add r8, 8
    cmp r8, rcx
    jb .Ldot
.Ldot_end:
    vmaxps ymm0, ymm0, ymm1
    vmovups YMMWORD PTR [rdi], ymm0
    vzeroupper
    ret

# void fma231(float *c, const float *a, const float *b, long n)  c = a*b + c
    .globl fma231
fma231:
    xor eax, eax
.Lf231:
    vmovups ymm0, YMMWORD PTR [rdi+rax*4]
    vmovups ymm1, YMMWORD PTR [rsi+rax*4]
    vfmadd231ps ymm0, ymm1, YMMWORD PTR [rdx+rax*4]
    vmovups YMMWORD PTR [rdi+rax*4], ymm0
    add rax, 8
    cmp rax, rcx
    jl .Lf231
    ret

# void fmaforms(float *out, const float *x, const float *y, const float *z, long n)
# out[0:n]=x*y+z (213 on x), out[n:2n]: 132, out[2n:3n]: 231 -- same math,
# operands in different instruction positions (NaN priority).
    .globl fmaforms
fmaforms:
    push rbx
    xor eax, eax
    lea rbx, [rdi+r8*4]
    lea r9, [rbx+r8*4]
.Lff:
    vmovups xmm0, XMMWORD PTR [rsi+rax*4]
    vmovups xmm1, XMMWORD PTR [rdx+rax*4]
    vmovups xmm2, XMMWORD PTR [rcx+rax*4]
    vmovaps xmm3, xmm0
    vfmadd213ps xmm3, xmm1, xmm2          # xmm3 = xmm1*xmm3 + xmm2
    vmovups XMMWORD PTR [rdi+rax*4], xmm3
    vmovaps xmm3, xmm0
    vfmadd132ps xmm3, xmm2, xmm1          # xmm3 = xmm3*xmm1 + xmm2
    vmovups XMMWORD PTR [rbx+rax*4], xmm3
    vmovaps xmm3, xmm2
    vfmadd231ps xmm3, xmm0, xmm1          # xmm3 = xmm0*xmm1 + xmm3
    vmovups XMMWORD PTR [r9+rax*4], xmm3
    add rax, 4
    cmp rax, r8
    jl .Lff
    pop rbx
    ret

# binary ops: out[0:n] = op(a, b) for op in add, max, min, sub, mul, xor
    .globl binops
binops:
    xor eax, eax
    mov r8, rcx
    shl r8, 2                   # n*4 bytes
.Lbo:
    vmovups ymm0, YMMWORD PTR [rsi+rax*4]
    vmovups ymm1, YMMWORD PTR [rdx+rax*4]
    mov r9, rdi
    vaddps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vmaxps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vmaxps ymm2, ymm0, YMMWORD PTR [rdx+rax*4]
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vminps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vsubps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vmulps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add r9, r8
    vxorps ymm2, ymm0, ymm1
    vmovups YMMWORD PTR [r9+rax*4], ymm2
    add rax, 8
    cmp rax, rcx
    jne .Lbo
    vzeroupper
    ret

# long misc(long a, long b, long c, long d, long e, long f, long g, long h)
# stack arguments, call/ret, push/pop, imul, lea, movsxd, shifts, data sections
    .globl misc
misc:
    push rbp
    mov rbp, rsp
    push rbx
    push r12
    mov rbx, QWORD PTR [rbp+16]        # g
    mov r12, QWORD PTR [rbp+24]        # h
    imul rax, rdi, 7
    imul rsi, rdx
    add rax, rsi
    lea rax, [rax+rcx*8-3]
    movsxd r10, r8d
    add rax, r10
    mov r10d, r9d                      # zero-extends
    xor rax, r10
    call .Lhelper                      # rax = rax*3 + g
    sub rax, r12
    mov rcx, rbx
    and ecx, 63
    mov r11, rax
    shl r11, cl
    mov rdx, rax
    sar rdx, cl
    shr rax, 3
    add rax, r11
    add rax, rdx
    mov r11d, DWORD PTR .Lconst[rip]
    add rax, r11
    add rax, QWORD PTR .Lq+8[rip]
    inc QWORD PTR counter[rip]
    add rax, QWORD PTR counter[rip]
    dec r12d
    add rax, r12
    pop r12
    pop rbx
    pop rbp
    ret
.Lhelper:
    push rax
    pop rdx
    lea rax, [rdx+rdx*2]
    add rax, rbx
    ret

    .section .rodata
    .p2align 5
.Liota:
    .long 0, 1, 2, 3, 4, 5, 6, 7
.Lconst:
    .int 0x12345678
    .align 8
.Lq: .quad -5, 0x1122334455667788
    .data
    .p2align 3
counter:
    .quad 40
"""

CCS = ["l", "le", "g", "ge", "b", "be", "a", "ae", "e", "z", "ne", "nz",
       "s", "ns", "o", "no"]
ALU_OPS = ["cmp", "sub", "add", "test", "and", "or", "xor", "inc", "dec",
           "shl", "shr", "sar", "imul", "neg"]


def conditions_asm():
    out = [HEADER]
    for op in ALU_OPS:
        for w in (32, 64):
            r8, r9 = ("r8", "r9") if w == 64 else ("r8d", "r9d")
            name = "cc_%s%d" % (op, w)
            out.append("    .globl %s\n%s:\n    xor eax, eax\n    mov r9, rsi\n" % (name, name))
            if op in ("inc", "dec", "neg"):
                opline = "%s %s" % (op, r8)
            elif op in ("shl", "shr", "sar"):
                opline = "mov rcx, rsi\n    %s %s, cl" % (op, r8)
            else:
                opline = "%s %s, %s" % (op, r8, r9)
            for i, cc in enumerate(CCS):
                lab = "%s_%d" % (name, i)
                out.append(
                    "    cmp edi, esi\n"            # known flags before (shift by 0)
                    "    mov r8, rdi\n"
                    "    %s\n"
                    "    j%s .Lt_%s\n"
                    "    jmp .Ln_%s\n"
                    ".Lt_%s:\n"
                    "    or eax, %d\n"
                    ".Ln_%s:\n" % (opline, cc, lab, lab, lab, 1 << i, lab))
            out.append("    mov r8, rdi\n    %s\n    mov QWORD PTR [rdx], r8\n    ret\n" % opline)
    return "".join(out)


EDGE = [0, 1, 2, 3, 31, 32, 63, 64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        0x100000000, 2**63 - 1, 2**63, 2**64 - 1, 0xFFFFFFFF80000000, 0x123456789ABCDEF0]


@need_avx2
def test_integer_flags_every_jcc(builddir):
    text = conditions_asm()
    lib = native_lib(text, builddir)
    prog = Program(text)
    mem = Memory()
    out_n = np.zeros(1, np.uint64)
    out_s = np.zeros(1, np.uint64)
    a_out = mem.map(out_s)
    rng = np.random.default_rng(5)
    pairs = [(a, b) for a in EDGE for b in EDGE]
    pairs += [tuple(int(x) for x in rng.integers(0, 2**64, 2, dtype=np.uint64)) for _ in range(40)]
    pairs += [(int(rng.integers(-50, 50)) & (2**64 - 1), int(rng.integers(-50, 50)) & (2**64 - 1))
              for _ in range(40)]
    of_dep = sum(1 << CCS.index(c) for c in ("l", "le", "g", "ge", "o", "no"))
    zs_dep = sum(1 << CCS.index(c) for c in ("l", "le", "g", "ge", "e", "z", "ne", "nz",
                                             "s", "ns", "be", "a"))
    nchecked = 0
    for op in ALU_OPS:
        for w in (32, 64):
            name = "cc_%s%d" % (op, w)
            f = getattr(lib, name)
            f.restype = ctypes.c_uint64
            f.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]
            for a, b in pairs:
                rn = f(a, b, out_n.ctypes.data)
                rs = prog.call(name, [a, b, a_out], memory=mem)
                keep = 0xFFFF
                if op in ("shl", "shr", "sar") and (b & (w - 1)) != 1:
                    keep &= ~of_dep          # OF undefined for counts != 1
                if op == "imul":
                    keep &= ~zs_dep          # SF/ZF undefined
                assert rs & keep == rn & keep, (name, hex(a), hex(b), bin(rs), bin(rn))
                assert out_s[0] == out_n[0], (name, hex(a), hex(b))
                nchecked += 1
    assert nchecked > 1000


@need_avx2
@pytest.mark.parametrize("n", [0, 1, 5, 7, 8, 9, 16, 23, 37])
def test_axpy_masked_tail(builddir, n):
    rng = np.random.default_rng(n)
    y = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32)
    a = np.array([1.7], np.float32)
    # exact-size arrays: any access past the end faults in the simulator
    out = both(AXPY, "axpy", [y, x, a, n], builddir)[0]
    expect = (y.astype(np.float64) + 1.7 * x.astype(np.float64)).astype(np.float32)
    assert np.allclose(out, expect, rtol=1e-6, atol=1e-6)  # and bit-identical to the CPU (both)


@need_avx2
def test_dot_product(builddir):
    rng = np.random.default_rng(3)
    n = 64 * 8
    x = aligned(rng.standard_normal(n).astype(np.float32))   # vmovaps
    y = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(8, np.float32)
    got = both(AXPY, "dot8", [out, x, y, n], builddir, copy=aligned)[0]
    x64, y64 = x.astype(np.float64).reshape(-1, 8), y.astype(np.float64).reshape(-1, 8)
    lanes = np.maximum((x64 * y64).sum(axis=0), (x64 * x64).sum(axis=0))  # dot8 returns max(dot, |x|^2) per lane
    assert np.allclose(got, lanes, rtol=1e-4, atol=1e-3)
    empty = both(AXPY, "dot8", [out, x, y, 0], builddir)[0]
    assert not empty.any()


@need_avx2
def test_misc_scalar_call_stack_data(builddir):
    rng = np.random.default_rng(11)
    prog = Program(AXPY)
    for _ in range(30):
        args = [int(v) for v in rng.integers(-2**40, 2**40, 8)]
        args[6] = int(rng.integers(0, 200))
        both(AXPY, "misc", args, builddir, prog=prog)
    # .data is writable and persists between calls of the same program
    assert prog.section_array(".data").view(np.int64)[0] == 40 + 30


@need_avx2
def test_fma_random_and_adversarial(builddir):
    A, B, C = fma_inputs()
    assert len(A) > 8000
    sim = both(AXPY, "fma231", [C, A, B, len(A)], builddir)
    # the sample really contains hard cases: results the naive
    # float32(float64(a*b)+c) gets wrong (double rounding)
    with np.errstate(all="ignore"):
        naive = (A.astype(np.float64) * B.astype(np.float64) + C.astype(np.float64)).astype(np.float32)
    ok = ~(np.isnan(naive) | np.isnan(sim[0]))
    assert (bits(naive)[ok] != bits(sim[0])[ok]).sum() >= 20
    # subnormal results are present
    s = np.abs(sim[0])
    assert ((s > 0) & (s < np.float32(1.1754944e-38))).sum() > 100


@need_avx2
def test_fma_forms_nan_priority(builddir):
    vals = [np.float32(2.0), f32(0x7FC00001), f32(0xFFC00002), f32(0x7F800003),
            np.float32(np.inf), np.float32(0.0), np.float32(-np.inf)]
    X, Y, Z = [], [], []
    for a in vals:
        for b in vals:
            for c in vals:
                X.append(a)
                Y.append(b)
                Z.append(c)
    while len(X) % 4:
        X.append(np.float32(1))
        Y.append(np.float32(1))
        Z.append(np.float32(1))
    X, Y, Z = [np.array(v, np.float32) for v in (X, Y, Z)]
    n = len(X)
    out = np.zeros(3 * n, np.float32)
    got = both(AXPY, "fmaforms", [out, X, Y, Z, n], builddir)[0]
    assert np.isnan(got).any() and np.isfinite(got).any()  # the NaN cases and the plain ones


@need_avx2
def test_binops_special_values(builddir):
    rng = np.random.default_rng(9)
    a = np.repeat(SPECIALS, len(SPECIALS))
    b = np.tile(SPECIALS, len(SPECIALS))
    r = rng.integers(0, 2**32, size=(2, 256), dtype=np.uint64).astype(np.uint32)
    a = np.concatenate([a, f32(r[0]), a[::7]])
    b = np.concatenate([b, f32(r[1]), -b[::7]])
    n = len(a) - len(a) % 8
    a, b = a[:n].copy(), b[:n].copy()
    out = np.zeros(7 * n, np.float32)
    sim = both(AXPY, "binops", [out, a, b, n], builddir)
    # max semantics spelled out: NaN in either or both zero -> second source
    mx = sim[0][n:2 * n]
    for i in range(n):
        if np.isnan(a[i]) or np.isnan(b[i]) or (a[i] == 0 and b[i] == 0):
            assert bits(mx[i]) == bits(b[i])


# --------------------------------------------------------------------------
# pure simulator checks of float32 arithmetic against the Fraction reference

def test_fma_against_fraction_reference():
    A, B, C = fma_inputs(seed=2, nrand=300)
    sel = np.random.default_rng(0).choice(len(A), 3000, replace=False)
    A, B, C = A[sel], B[sel], C[sel]
    got = x86_sim.fma_f32(A, B, C)
    exp = np.array([ref_fma(a, b, c) for a, b, c in zip(A, B, C)], np.float32)
    bad = np.flatnonzero(bits(got) != bits(exp))
    assert bad.size == 0, [(A[i], B[i], C[i], hex(bits(got[i])), hex(bits(exp[i]))) for i in bad[:5]]


def test_reference_detects_double_rounding():
    # the trap the simulator must avoid: 1 + 2^-24 + 2^-54 rounds (in binary64)
    # to the float32 tie 1 + 2^-24, then to 1.0; correct is 1 + 2^-23
    a, b, c = np.float32(1025), np.float32(1047553 * 2.0**-54), np.float32(1.0)
    naive = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    assert naive == np.float32(1.0)
    assert ref_fma(a, b, c) == np.float32(1 + 2**-23)
    assert x86_sim.fma_f32(a, b, c)[0] == np.float32(1 + 2**-23)


# --------------------------------------------------------------------------
# AVX-512 (hand-computed expectations; native when the CPU supports it)

AVX512 = HEADER + r"""
# void bc(float *c16, const float *a16, const float *s, float *out48)
    .globl bc
bc:
    vmovups zmm16, ZMMWORD PTR [rdi]
    vmovups zmm31, ZMMWORD PTR [rsi]
    vmovaps zmm17, zmm16
    vmovups zmm18, zmm16
    vfmadd231ps zmm16, zmm31, DWORD PTR [rdx]{1to16}
    vfmadd231ps zmm17, zmm31, DWORD BCST [rdx+4]
    vfmadd231ps ymm18, ymm31, DWORD PTR [rdx]{1to8}
    vmovups ZMMWORD PTR [rcx], zmm16
    vmovups ZMMWORD PTR [rcx+64], zmm17
    vmovups ZMMWORD PTR [rcx+128], zmm18     # upper 8 lanes zeroed by ymm write
    vzeroupper
    ret

# void masked(float *out, const float *a, const float *b, unsigned mask, float *out2)
    .globl masked
masked:
    kmovw k1, ecx
    vmovups zmm20, ZMMWORD PTR [rsi]
    vmovups zmm21, ZMMWORD PTR [rdx]
    vmovaps zmm0, zmm21
    vaddps zmm0{k1}, zmm20, zmm21            # merge
    vmovups ZMMWORD PTR [rdi], zmm0
    vaddps zmm1{k1}{z}, zmm20, zmm21         # zero
    vmovups ZMMWORD PTR [rdi+64], zmm1
    vmovaps zmm2, zmm20
    vmaxps zmm2 {k1}, zmm20, zmm21
    vmovups ZMMWORD PTR [rdi+128], zmm2
    vmaxps zmm3 {k1} {z}, zmm20, zmm21
    vmovups ZMMWORD PTR [rdi+192], zmm3
    vmovaps zmm4, zmm21
    vfmadd231ps zmm4{k1}, zmm20, zmm21
    vmovups ZMMWORD PTR [rdi+256], zmm4
    vmovaps zmm5, zmm21
    vfmadd231ps zmm5{k1}{z}, zmm20, DWORD PTR [rsi]{1to16}
    vmovups ZMMWORD PTR [rdi+320], zmm5
    vmovups zmm6{k1}{z}, ZMMWORD PTR [rsi]
    vmovups ZMMWORD PTR [rdi+384], zmm6
    vmovaps zmm7, zmm21
    vmovups zmm7{k1}, ZMMWORD PTR [rsi]
    vmovups ZMMWORD PTR [rdi+448], zmm7
    vmovups ZMMWORD PTR [r8]{k1}, zmm20      # masked store: other lanes untouched
    kxnorw k2, k0, k0                        # all ones
    vmovups ZMMWORD PTR [rdi+512]{k2}, zmm21
    vzeroupper
    ret

# long tail(float *dst, const float *src, long n)   (n <= 16, exact-size arrays)
    .globl tail
tail:
    vpbroadcastd zmm22, edx
    vpcmpgtd k3, zmm22, ZMMWORD PTR .Liota16[rip]
    vmovups zmm23{k3}{z}, ZMMWORD PTR [rsi]
    vaddps zmm23{k3}{z}, zmm23, zmm23
    vmovups ZMMWORD PTR [rdi]{k3}, zmm23
    kmovw eax, k3
    ret

# void upper(float *out)   VEX/EVEX writes zero the upper zmm bits
    .globl upper
upper:
    vbroadcastss zmm1, DWORD PTR .Lone[rip]
    vbroadcastss zmm2, DWORD PTR .Lone[rip]
    vbroadcastss zmm24, DWORD PTR .Lone[rip]
    vaddps xmm1, xmm1, xmm1
    vzeroupper
    vmovups ZMMWORD PTR [rdi], zmm1
    vmovups ZMMWORD PTR [rdi+64], zmm2
    vmovups ZMMWORD PTR [rdi+128], zmm24
    vxorps ymm25, ymm25, ymm25
    ret

    .section .rodata
    .p2align 6
.Liota16: .long 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
.Lone: .float 1.0
"""


def avx512_run(name, args):
    prog = Program(AVX512)
    sim = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    r = run_sim(prog, name, sim)
    return r, sim


@need_tools
def test_avx512_text_assembles(builddir):
    obj = assemble(AVX512, builddir, link=False)  # `as` raises (check=True) on any rejected line
    assert obj.read_bytes()[:4] == b"\x7fELF"


def test_avx512_broadcast_fma():
    rng = np.random.default_rng(4)
    c = rng.standard_normal(16).astype(np.float32)
    a = rng.standard_normal(16).astype(np.float32)
    s = np.array([0.3, -2.5], np.float32)
    out = np.zeros(48, np.float32)
    _, (c2, a2, s2, out) = avx512_run("bc", [c, a, s, out])
    e0 = np.array([ref_fma(x, s[0], y) for x, y in zip(a, c)], np.float32)
    e1 = np.array([ref_fma(x, s[1], y) for x, y in zip(a, c)], np.float32)
    assert (bits(out[:16]) == bits(e0)).all()
    assert (bits(out[16:32]) == bits(e1)).all()
    assert (bits(out[32:40]) == bits(e0[:8])).all()
    assert (out[40:] == 0).all()
    assert (c2 == c).all()


@pytest.mark.parametrize("mask", [0x0000, 0xFFFF, 0xA5C3, 0x0001, 0x8000])
def test_avx512_masking(mask):
    rng = np.random.default_rng(mask)
    a = rng.standard_normal(16).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    a[3], b[5], a[6], b[6] = np.nan, np.nan, 0.0, -0.0
    out = np.full(16 * 9, 7.0, np.float32)
    out2 = np.full(16, -1.0, np.float32)
    _, (out, _, _, _, out2) = avx512_run("masked", [out, a, b, mask, out2])
    m = ((mask >> np.arange(16)) & 1).astype(bool)
    add = f32(x86_sim._fadd(bits(a), bits(b)))
    mx = np.where(a > b, a, b)
    fm = np.array([ref_fma(x, y, y) for x, y in zip(a, b)], np.float32)
    fm_b = np.array([ref_fma(x, a[0], y) for x, y in zip(a, b)], np.float32)
    z = np.float32(0)
    exp = [np.where(m, add, b), np.where(m, add, z), np.where(m, mx, a), np.where(m, mx, z),
           np.where(m, fm, b), np.where(m, fm_b, z), np.where(m, a, z), np.where(m, a, b), b]
    for i, e in enumerate(exp):
        assert (bits(out[16 * i:16 * (i + 1)]) == bits(e)).all(), i
    assert (bits(out2) == bits(np.where(m, a, np.float32(-1)))).all()
    # x86 semantics checked directly: vaddps NaN -> first NaN operand, quiet
    assert bits(add[3]) == bits(a[3]) | 0x400000 and bits(add[5]) == bits(b[5]) | 0x400000
    assert bits(mx[6]) == bits(b[6])


@pytest.mark.parametrize("n", [0, 1, 5, 15, 16])
def test_avx512_kmask_tail_exact_arrays(n):
    src = np.arange(1, n + 1, dtype=np.float32)
    dst = np.full(n, -3.0, np.float32)
    r, (dst, _, _) = avx512_run("tail", [dst, src, n])
    assert r == (1 << n) - 1
    assert (dst == 2 * src).all()


def test_avx512_upper_zeroing():
    out = np.full(48, 5.0, np.float32)
    _, (out,) = avx512_run("upper", [out])
    assert (out[:4] == 2).all() and (out[4:16] == 0).all()     # VEX xmm write
    assert (out[16:20] == 1).all() and (out[20:32] == 0).all()  # vzeroupper
    assert (out[32:48] == 1).all()                                # zmm24 untouched


@pytest.mark.skipif(not NATIVE_AVX512, reason="CPU lacks AVX-512F")
def test_avx512_native_crosscheck(builddir):
    rng = np.random.default_rng(0)
    c, a = rng.standard_normal((2, 16)).astype(np.float32)
    both(AVX512, "bc", [c, a, np.array([0.3, -2.5], np.float32), np.zeros(48, np.float32)], builddir)
    for mask in (0, 0xA5C3, 0xFFFF):
        a, b = rng.standard_normal((2, 16)).astype(np.float32)
        a[3] = np.nan
        both(AVX512, "masked", [np.zeros(144, np.float32), a, b, mask,
                                np.zeros(16, np.float32)], builddir)
    for n in (0, 3, 16):
        both(AVX512, "tail", [np.zeros(n, np.float32), np.ones(n, np.float32), n], builddir)
    both(AVX512, "upper", [np.zeros(48, np.float32)], builddir)


# --------------------------------------------------------------------------
# memory model

OOB = HEADER + r"""
    .globl rd
rd:                         # float rd(const float *p, long i) -> bits of p[i]
    mov eax, DWORD PTR [rdi+rsi*4]
    ret
    .globl vrd
vrd:                        # 8-lane load at p + i
    vmovups ymm0, YMMWORD PTR [rdi+rsi*4]
    ret
    .globl wr_ro
wr_ro:
    mov DWORD PTR .Lro[rip], edi
    ret
    .globl mstore
mstore:                     # masked store of 8 lanes with mask from memory
    vmovups ymm1, YMMWORD PTR [rsi]
    vmaskmovps YMMWORD PTR [rdi], ymm1, ymm1
    ret
    .globl kload
kload:
    kmovw k1, esi
    vmovups zmm0{k1}{z}, ZMMWORD PTR [rdi]
    ret
    .globl aligned
aligned:
    vmovaps ymm0, YMMWORD PTR [rdi]
    ret
    .section .rodata
.Lro: .long 1
"""


def test_memory_out_of_bounds():
    prog = Program(OOB)
    mem = Memory()
    arr = np.arange(10, dtype=np.float32)
    a = mem.map(arr)
    assert prog.call("rd", [a, 9], memory=mem) == bits(np.float32(9))
    with pytest.raises(MemoryFault) as ei:
        prog.call("rd", [a, 10], memory=mem)
    msg = str(ei.value)
    assert hex(a + 40) in msg and "mov eax, DWORD PTR [rdi+rsi*4]" in msg and "line 6" in msg
    assert ei.value.address == a + 40
    with pytest.raises(MemoryFault):
        prog.call("rd", [a, -1], memory=mem)
    prog.call("vrd", [a, 2], memory=mem)
    with pytest.raises(MemoryFault):
        prog.call("vrd", [a, 3], memory=mem)               # last lane is element 10
    with pytest.raises(MemoryFault, match="read-only"):
        prog.call("wr_ro", [1], memory=mem)


def test_masked_accesses_do_not_touch_inactive_lanes():
    prog = Program(OOB)
    mem = Memory()
    dst = np.zeros(5, np.float32)
    mask = np.array([-1.0, 2.0, -3.0, -4.0, -5.0, 1.0, 1.0, 1.0], np.float32)  # sign bits
    prog.call("mstore", [mem.map(dst), mem.map(mask)], memory=mem)
    assert (dst == [-1, 0, -3, -4, -5]).all()
    mask[5] = -6.0
    with pytest.raises(MemoryFault):
        prog.call("mstore", [mem.map(np.zeros(5, np.float32)), mem.map(mask)], memory=mem)
    src = np.ones(5, np.float32)
    s = mem.map(src)
    prog.call("kload", [s, 0x1F], memory=mem)
    assert (prog.vreg(0) == [1] * 5 + [0] * 11).all()
    with pytest.raises(MemoryFault):
        prog.call("kload", [s, 0x3F], memory=mem)


def test_vmovaps_alignment_and_mapping_errors():
    prog = Program(OOB)
    mem = Memory()
    buf = np.zeros(64, np.float32)
    a = mem.map(buf)
    prog.call("aligned", [a], memory=mem)
    with pytest.raises(MemoryFault, match="misaligned"):
        prog.call("aligned", [a + 4], memory=mem)
    with pytest.raises(ValueError):
        mem.map(np.zeros(4), addr=a + 8)            # overlap
    with pytest.raises(ValueError):
        mem.map(np.zeros((4, 4))[:, 1])             # not contiguous


# --------------------------------------------------------------------------
# front end, errors, API

def test_unknown_instruction_is_named_with_line():
    text = HEADER + "f:\n    mov eax, 1\n    cpuid\n    ret\n"
    with pytest.raises(AsmError, match=r"line 5.*cpuid"):
        Program(text)
    prog = Program(text, on_unknown="defer")       # only fails when executed
    with pytest.raises(AsmError, match="cpuid"):
        prog.call("f", [])


def test_unsupported_operand_and_directive_errors():
    with pytest.raises(AsmError, match="line 3"):
        Program(HEADER + "    mov eax, DWORD PTR [eax]\n")
    with pytest.raises(AsmError, match="not a label"):
        Program(HEADER + "f:  jmp .Lnowhere\n")
    with pytest.raises(AsmError, match="undefined symbol"):
        Program(HEADER + "f:  mov eax, DWORD PTR .Lnowhere[rip]\n")
    with pytest.raises(AsmError, match=".weird"):
        Program(HEADER + "  .weird 3\n")


def test_step_limit_trace_profile(capsys):
    text = HEADER + "spin:\n  xor eax, eax\n.L:\n  inc rax\n  cmp rax, rdi\n  jne .L\n  ret\n"
    prog = Program(text)
    assert prog.call("spin", [100]) == 100
    assert prog.steps == 1 + 3 * 100 + 1
    with pytest.raises(StepLimitExceeded):
        prog.call("spin", [10**6], max_steps=1000)
    seen = []
    prog.call("spin", [2], trace=lambda n, ln, t, p: seen.append((n, ln, t)))
    assert seen[0] == (0, 4, "xor eax, eax") and len(seen) == 8
    prog.call("spin", [1], trace=True)
    assert "inc rax" in capsys.readouterr().err
    prog.call("spin", [5], profile=True)
    assert prog.profile["inc"] == 5 and prog.profile["jne"] == 5


def test_syntax_variants():
    text = r"""
        .intel_syntax noprefix
        .text
        .globl f
        .type f, @function
f:      mov eax, DWORD PTR tbl[rip+4]     # label[rip+disp]
        add eax, DWORD PTR [rip + tbl + 8]
        add eax, [rip+tbl]                 // size from register
        mov rcx, OFFSET FLAT:tbl
        add eax, DWORD PTR [rcx+12]
        lea rdx, tbl[rip]
        add eax, DWORD PTR [8+rdx+2*rsi]    ; mov r8d, -1
        add eax, r8d
        vmovups ymm0, YMMWORD PTR [rdx]
        vxorps ymm0, ymm0, ymm0
        ret
        .size f, .-f
        .section .rodata.cst16,"aM",@progbits,16
        .p2align 4
tbl:    .long 1, 0x10, 256, 0x1000, 0, 0, 0, 0
"""
    prog = Program(text)
    assert prog.call("f", [2]) == (0x10 + 256 + 1 + 0x1000 + 256 - 1) & 0xFFFFFFFF


def test_speed():
    # ~ 9 instructions per iteration, 3 vector ops (2 FMA) per iteration
    text = HEADER + r"""
k:  xor eax, eax
    vxorps ymm0, ymm0, ymm0
.L: vmovups ymm1, YMMWORD PTR [rdi+rax*4]
    vfmadd231ps ymm0, ymm1, ymm1
    vfmadd231ps ymm0, ymm1, DWORD PTR [rdi]{1to8}
    add rax, 8
    cmp rax, rsi
    jl .L
    vmovups YMMWORD PTR [rdi], ymm0
    ret
"""
    prog = Program(text)
    mem = Memory()
    x = np.ones(8 * 1000, np.float32)
    a = mem.map(x)
    t = time.perf_counter()
    for _ in range(10):
        prog.call("k", [a, len(x)], memory=mem)
    dt = time.perf_counter() - t
    assert prog.steps == 2 + 6 * 1000 + 2
    assert dt < 10, dt            # ~60k instructions, 20k FMAs


# --------------------------------------------------------------------------
# half floats, word <-> dword moves, shifts, integer ops, compares, blends,
# bf16 dot products: numpy / Fraction models, the real CPU for AVX2 + F16C

NATIVE_F16C = NATIVE_AVX2 and "f16c" in FLAGS
NATIVE_BF16 = NATIVE_AVX512 and "avx512_bf16" in FLAGS
need_f16c = pytest.mark.skipif(not NATIVE_F16C, reason="needs as/ld and an AVX2+F16C CPU")

_PROGS = {}


def sim_prog(text):
    if text not in _PROGS:
        _PROGS[text] = Program(text)
    return _PROGS[text]


def sim_call(text, name, args, mem=None):
    """Run name in the simulator on copies of the array args -> (rax, copies)."""
    sim = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    r = run_sim(sim_prog(text), name, sim, mem)
    return r, sim


def u32(x):
    return np.asarray(x, np.uint32)


def mask_bits(mask, n=16):
    return ((mask >> np.arange(n)) & 1).astype(bool)


def model_h2f(h):
    """binary16 bits -> binary32 bits: numpy's exact widening, NaN quietened
    (sign, quiet bit, payload moved to the top of the fraction)."""
    h = np.asarray(h, np.uint16)
    out = h.view(np.float16).astype(np.float32).view(np.uint32).copy()
    nan = np.isnan(h.view(np.float16))
    hn = h[nan].astype(np.uint32)
    out[nan] = ((hn & 0x8000) << 16) | 0x7FC00000 | ((hn & 0x3FF) << 13)
    return out


def model_f2h(f):
    """binary32 bits -> binary16 bits: numpy's round-to-nearest-even narrowing
    (overflow -> inf, subnormal results), NaN -> sign | 0x7E00 | top 9 payload bits."""
    u = u32(f)
    with np.errstate(all="ignore"):
        out = u.view(np.float32).astype(np.float16).view(np.uint16).copy()
    nan = np.isnan(u.view(np.float32))
    un = u[nan]
    out[nan] = (((un >> 16) & 0x8000) | 0x7E00 | ((un >> 13) & 0x1FF)).astype(np.uint16)
    return out


# float32 inputs for the narrowing: every rounding boundary of binary16
def f2h_edges():
    v = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, -65504.0, 65519.996, 65520.0,
         -65520.0, 65536.0, 1e10, 3.4028235e38, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-26,
         2.0**-25 * (1 + 2.0**-23), 3 * 2.0**-25, 5 * 2.0**-25, 2.0**-14 - 2.0**-25,
         2.0**-14 - 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-11 + 2.0**-23,
         1 - 2.0**-12, 2048 + 1, 2048 + 3, 1e-30, -1e-30, 1e-45]
    rng = np.random.default_rng(16)
    out = [np.float32(x) for x in v]
    # halfway points between adjacent halves, and one float32 ulp either side
    h = np.arange(0, 0x7C00, 37, dtype=np.uint32)
    lo = np.array(h, np.uint16).view(np.float16).astype(np.float64)
    hi = np.array(h + 1, np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    for m in mid:
        for d in (-1, 0, 1):
            x = f32(bits(m).astype(np.int64) + d)
            out += [np.float32(x), -np.float32(x)]
    bitsv = np.concatenate([bits(np.array(out, np.float32)),
                            u32([0x7FC00000, 0xFFC12345, 0x7F812345, 0xFF800001, 0x7FBFFFFF,
                                 0x7F802000, 0x7F801FFF, 0x00000001, 0x807FFFFF, 0x00800000]),
                            rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32),
                            # exponents around the binary16 range, random fractions
                            (rng.integers(0, 2**23, 4096).astype(np.uint32)
                             | (rng.integers(95, 146, 4096).astype(np.uint32) << 23)
                             | (rng.integers(0, 2, 4096).astype(np.uint32) << 31))])
    pad = (-len(bitsv)) % 16
    return np.concatenate([bitsv, np.zeros(pad, np.uint32)]).view(np.float32)


def test_half_models_and_simulator_helpers_agree_on_every_half():
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f = model_h2f(h)
    assert (x86_sim._h2f(h) == f).all()
    # widening is exact: narrowing gives the half back (NaNs: quiet bit set)
    nan = np.isnan(h.view(np.float16))
    back = model_f2h(f)
    assert (back[~nan] == h[~nan]).all() and (back[nan] == (h[nan] | 0x200)).all()
    # subnormal halves become normal floats; sNaN 0x7C01 -> 0x7FC02000
    assert x86_sim._h2f(np.array([0x0001], np.uint16))[0] == bits(np.float32(2.0**-24))
    assert x86_sim._h2f(np.array([0x7C01, 0xFC00], np.uint16)).tolist() == [0x7FC02000, 0xFF800000]
    e = bits(f2h_edges())
    assert (x86_sim._f2h(e) == model_f2h(e)).all()


def test_f2h_hand_checked_values():
    cases = {65504.0: 0x7BFF, 65519.996: 0x7BFF, 65520.0: 0x7C00, -1e10: 0xFC00,
             2.0**-25: 0x0000, 2.0**-25 * (1 + 2.0**-23): 0x0001, 3 * 2.0**-25: 0x0002,
             5 * 2.0**-25: 0x0002, 2.0**-24: 0x0001, 2.0**-14 - 2.0**-25: 0x0400,
             1 + 2.0**-11: 0x3C00, 1 + 3 * 2.0**-11: 0x3C02, -0.0: 0x8000, 1e-45: 0x0000}
    src = np.array(list(cases), np.float32)
    got = x86_sim._f2h(bits(src))
    assert got.tolist() == list(cases.values())
    nans = u32([0x7F812345, 0xFF800001, 0x7FC00000, 0xFFFFFFFF])
    assert x86_sim._f2h(nans).tolist() == [0x7E09, 0xFE00, 0x7E00, 0xFFFF]


# --- AVX2 + F16C kernels, run natively and in the simulator -----------------

F16_AVX2 = HEADER + r"""
# void h2f(float *out, const unsigned short *in, long n)       n % 8 == 0
# out[0:n] ymm <- m128, out[n:2n] ymm <- xmm register, out[2n:3n] xmm <- m64
    .globl h2f
h2f:
    xor eax, eax
    lea r8, [rdi+rdx*4]
    lea r9, [r8+rdx*4]
.Lh2f:
    vcvtph2ps ymm0, XMMWORD PTR [rsi+rax*2]
    vmovups YMMWORD PTR [rdi+rax*4], ymm0
    vmovdqu xmm1, XMMWORD PTR [rsi+rax*2]
    vcvtph2ps ymm2, xmm1
    vmovups YMMWORD PTR [r8+rax*4], ymm2
    vcvtph2ps xmm3, QWORD PTR [rsi+rax*2]
    vmovups XMMWORD PTR [r9+rax*4], xmm3
    vcvtph2ps xmm3, QWORD PTR [rsi+rax*2+8]
    vmovups XMMWORD PTR [r9+rax*4+16], xmm3
    add rax, 8
    cmp rax, rdx
    jl .Lh2f
    vzeroupper
    ret

# void f2h(unsigned short *out, const float *in, long n)       n % 8 == 0
# out[0:n] m128 <- ymm (imm 0), out[n:2n] xmm <- ymm register (imm 0),
# out[2n:3n] m64 <- xmm (imm 4: MXCSR rounding, and 8: same, exceptions off)
    .globl f2h
f2h:
    xor eax, eax
    lea r8, [rdi+rdx*2]
    lea r9, [r8+rdx*2]
.Lf2h:
    vmovups ymm0, YMMWORD PTR [rsi+rax*4]
    vcvtps2ph XMMWORD PTR [rdi+rax*2], ymm0, 0
    vcvtps2ph xmm1, ymm0, 0
    vmovdqu XMMWORD PTR [r8+rax*2], xmm1
    vcvtps2ph QWORD PTR [r9+rax*2], xmm0, 4
    vmovups xmm2, XMMWORD PTR [rsi+rax*4+16]
    vcvtps2ph QWORD PTR [r9+rax*2+8], xmm2, 8
    add rax, 8
    cmp rax, rdx
    jl .Lf2h
    vzeroupper
    ret

# void wd(unsigned *out, const unsigned short *in, long n)      n % 8 == 0
# out[0:n] vpmovzxwd ymm <- m128, out[n:2n] ymm <- xmm, out[2n:3n] vpmovsxwd
# ymm <- m128, out[3n:4n] vpmovzxwd xmm <- m64
    .globl wd
wd:
    xor eax, eax
    lea r8, [rdi+rdx*4]
    lea r9, [r8+rdx*4]
    lea r10, [r9+rdx*4]
.Lwd:
    vpmovzxwd ymm0, XMMWORD PTR [rsi+rax*2]
    vmovdqu YMMWORD PTR [rdi+rax*4], ymm0
    vmovdqu xmm1, XMMWORD PTR [rsi+rax*2]
    vpmovzxwd ymm2, xmm1
    vmovdqu YMMWORD PTR [r8+rax*4], ymm2
    vpmovsxwd ymm3, XMMWORD PTR [rsi+rax*2]
    vmovdqu YMMWORD PTR [r9+rax*4], ymm3
    vpmovzxwd xmm4, QWORD PTR [rsi+rax*2]
    vmovdqu XMMWORD PTR [r10+rax*4], xmm4
    vpmovzxwd xmm4, QWORD PTR [rsi+rax*2+8]
    vmovdqu XMMWORD PTR [r10+rax*4+16], xmm4
    add rax, 8
    cmp rax, rdx
    jl .Lwd
    vzeroupper
    ret

# void upper(unsigned *out48)   the VEX writes zero the rest of the register
    .globl upper_f16
upper_f16:
    vpcmpeqd ymm1, ymm1, ymm1
    vpcmpeqd ymm2, ymm2, ymm2
    vcvtps2ph xmm1, ymm1, 0
    vpmovzxwd xmm2, xmm2
    vmovdqu YMMWORD PTR [rdi], ymm1
    vmovdqu YMMWORD PTR [rdi+32], ymm2
    ret
"""


def block_kernel(name, ops):
    """out[i*n:(i+1)*n] = op_i for each op line of ops; the op reads ymm0 =
    a[j:j+8], ymm1 = b[...], ymm2 = c[...] (rsi, rdx, rcx + rax*4 address them)
    and xmm4 = the first 16 bytes of d, and leaves its result in ymm3.
    Signature: (out, a, b, c, n, d), n % 8 == 0."""
    lines = [f"    .globl {name}", f"{name}:", "    xor eax, eax", "    mov r10, r8",
             "    shl r10, 2", "    vmovdqu xmm4, XMMWORD PTR [r9]", f".L{name}:",
             "    vmovdqu ymm0, YMMWORD PTR [rsi+rax*4]",
             "    vmovdqu ymm1, YMMWORD PTR [rdx+rax*4]",
             "    vmovdqu ymm2, YMMWORD PTR [rcx+rax*4]", "    mov r11, rdi"]
    for op in ops:
        lines += [f"    {op}", "    vmovdqu YMMWORD PTR [r11+rax*4], ymm3", "    add r11, r10"]
    lines += ["    add rax, 8", "    cmp rax, r8", f"    jl .L{name}", "    vzeroupper", "    ret", ""]
    return "\n".join(lines)


SHIFT_COUNTS = [0, 1, 7, 13, 16, 31, 32, 33, 255]
SHIFT_OPS = ([f"vpslld ymm3, ymm0, {c}" for c in SHIFT_COUNTS]
             + [f"vpsrld ymm3, ymm0, {c}" for c in SHIFT_COUNTS]
             + [f"vpsrad ymm3, ymm0, {c}" for c in SHIFT_COUNTS]
             + ["vpslld ymm3, ymm0, xmm4", "vpsrld ymm3, ymm0, xmm4", "vpsrad ymm3, ymm0, xmm4",
                "vpsrld ymm3, ymm0, XMMWORD PTR [r9]"])
INT_OPS = ["vpand ymm3, ymm0, ymm1", "vpand ymm3, ymm0, YMMWORD PTR [rdx+rax*4]",
           "vpaddd ymm3, ymm0, ymm1", "vpaddd ymm3, ymm0, YMMWORD PTR [rdx+rax*4]",
           "vpor ymm3, ymm0, ymm1", "vpor ymm3, ymm0, YMMWORD PTR [rdx+rax*4]",
           "vblendvps ymm3, ymm0, ymm1, ymm2",
           "vblendvps ymm3, ymm0, YMMWORD PTR [rdx+rax*4], ymm2"]
CMP_OPS = ([f"vcmpps ymm3, ymm0, ymm1, {p}" for p in range(32)]
           + ["vcmpunordps ymm3, ymm0, ymm1", "vcmpps ymm3, ymm0, YMMWORD PTR [rdx+rax*4], 3",
              "vcmpneq_oqps ymm3, ymm0, ymm1", "vcmpgeps ymm3, ymm0, ymm1"])
LANE_AVX2 = HEADER + block_kernel("shifts", SHIFT_OPS) + block_kernel("intops", INT_OPS) \
    + block_kernel("cmps", CMP_OPS)


def model_cmp(a, b, p):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    un = np.isnan(a) | np.isnan(b)
    base = [a == b, a < b, a <= b, un, ~(a == b), ~(a < b), ~(a <= b), ~un,
            (a == b) | un, ~(a >= b), ~(a > b), np.zeros(a.shape, bool),
            (a != b) & ~un, a >= b, a > b, np.ones(a.shape, bool)][p % 16]
    return np.where(base, np.uint32(0xFFFFFFFF), np.uint32(0))


def test_f16_avx2_text_is_supported():
    prog = Program(F16_AVX2 + LANE_AVX2.replace(HEADER, ""))
    assert {"vcvtph2ps", "vcvtps2ph", "vpmovzxwd", "vpsrad", "vblendvps", "vcmpunordps",
            "vcmpps"} <= {i.mnemonic for i in prog.insns}


def test_f16_upper_bits_zeroed(builddir):
    out = np.full(16, 7, np.uint32)
    if NATIVE_F16C:
        both(F16_AVX2, "upper_f16", [out], builddir)
    _, (out,) = sim_call(F16_AVX2, "upper_f16", [out])
    # 8 all-ones floats are NaN 0xFFFFFFFF -> half 0xFFFF; the rest of ymm1 is zero
    assert out[:4].tolist() == [0xFFFFFFFF] * 4 and not out[4:8].any()
    assert out[8:12].tolist() == [0xFFFF] * 4 and not out[12:].any()
    prog = sim_prog(F16_AVX2)
    assert not prog.vreg(1, np.uint32)[4:].any() and not prog.vreg(2, np.uint32)[4:].any()


@need_f16c
def test_vcvtph2ps_every_half_native(builddir):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    n = len(h)
    out = np.zeros(3 * n, np.float32)
    got = both(F16_AVX2, "h2f", [out, h, n], builddir)[0].view(np.uint32)
    exp = model_h2f(h)
    for i in range(3):
        assert (got[i * n:(i + 1) * n] == exp).all(), i


@need_f16c
def test_vcvtps2ph_edges_native(builddir):
    f = f2h_edges()
    f = f[:len(f) // 8 * 8]
    n = len(f)
    assert n > 8000
    out = np.zeros(3 * n, np.uint16)
    got = both(F16_AVX2, "f2h", [out, f, n], builddir)[0]
    exp = model_f2h(bits(f))
    for i in range(3):
        assert (got[i * n:(i + 1) * n] == exp).all(), i
    # the sample has ties, overflow to inf, subnormal and NaN results
    h = exp.view(np.float16)
    assert np.isinf(h).sum() > 10 and np.isnan(h).sum() > 10
    assert ((exp & 0x7C00) == 0).sum() > 100


def test_vcvtps2ph_directed_rounding_is_refused():
    for imm in (1, 2, 3, 9):
        with pytest.raises(AsmError, match="imm8"):
            Program(HEADER + f"f:  vcvtps2ph xmm1, ymm0, {imm}\n    ret\n")
    Program(HEADER + "f:  vcvtps2ph xmm1, ymm0, 12\n    ret\n")   # MXCSR (default) rounding


@need_avx2
def test_vpmovzxwd_vpmovsxwd_native(builddir):
    rng = np.random.default_rng(21)
    h = np.concatenate([u32([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0xFFFE, 0x1234, 0x8001]),
                        rng.integers(0, 2**16, 1016)]).astype(np.uint16)
    n = len(h)
    out = np.zeros(4 * n, np.uint32)
    got = both(F16_AVX2, "wd", [out, h, n], builddir)[0]
    zx = h.astype(np.uint32)
    sx = h.view(np.int16).astype(np.int32).view(np.uint32)
    for i, e in enumerate([zx, zx, sx, zx]):
        assert (got[i * n:(i + 1) * n] == e).all(), i


def int_inputs(n=256, seed=3):
    rng = np.random.default_rng(seed)
    edge = u32([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x80000001, 0x0000FFFF,
                0xFFFF0000, 0x12345678, 0xDEADBEEF, 0x40000000, 0x7F800000, 0xFFC00000,
                0x00000003, 0xFFFFFFFE])
    a = np.concatenate([np.repeat(edge, len(edge)), rng.integers(0, 2**32, n, dtype=np.uint64)])
    b = np.concatenate([np.tile(edge, len(edge)), rng.integers(0, 2**32, n, dtype=np.uint64)])
    return a.astype(np.uint32), b.astype(np.uint32)


def model_shift(kind, a, c):
    if kind == "sra":
        return (a.view(np.int32) >> min(c, 31)).view(np.uint32)
    if c > 31:
        return np.zeros(a.shape, np.uint32)
    return (a << np.uint32(c)) if kind == "sll" else (a >> np.uint32(c))


@need_avx2
@pytest.mark.parametrize("count", [0, 5, 31, 32, 33, 2**32 + 1, 2**63])
def test_dword_shifts_native(builddir, count):
    a, _ = int_inputs()
    n = len(a)
    # the count operand is the low qword of xmm4 / m128; the high qword is ignored
    d = np.array([count & 0xFFFFFFFF, count >> 32, 0xFFFFFFFF, 0xFFFFFFFF], np.uint32)
    out = np.zeros(len(SHIFT_OPS) * n, np.uint32)
    z = np.zeros(n, np.uint32)
    got = both(LANE_AVX2, "shifts", [out, a, z, z, n, d], builddir)[0].reshape(-1, n)
    exp = [model_shift(kind, a, c) for kind in ("sll", "srl", "sra") for c in SHIFT_COUNTS]
    exp += [model_shift(kind, a, count) for kind in ("sll", "srl", "sra", "srl")]
    for i, e in enumerate(exp):
        assert (got[i] == e).all(), SHIFT_OPS[i]


@need_avx2
def test_vpand_vpaddd_vpor_vblendvps_native(builddir):
    a, b = int_inputs()
    rng = np.random.default_rng(4)
    c = np.concatenate([u32([0x80000000, 0x7FFFFFFF, 0xFFC00000, 0x7FC00000, 0, 0xFFFFFFFF]),
                        rng.integers(0, 2**32, len(a) - 6, dtype=np.uint64).astype(np.uint32)])
    n = len(a)
    out = np.zeros(len(INT_OPS) * n, np.uint32)
    got = both(LANE_AVX2, "intops", [out, a, b, c, n, np.zeros(4, np.uint32)], builddir)[0]
    got = got.reshape(-1, n)
    blend = np.where(c >> 31 == 1, b, a)
    exp = [a & b, a & b, a + b, a + b, a | b, a | b, blend, blend]
    for i, e in enumerate(exp):
        assert (got[i] == e).all(), INT_OPS[i]
    assert (a + b < a).any()          # wrapping sums are in the sample


@need_avx2
def test_vcmpps_all_predicates_native(builddir):
    rng = np.random.default_rng(8)
    a = np.repeat(SPECIALS, len(SPECIALS))
    b = np.tile(SPECIALS, len(SPECIALS))
    r = rng.standard_normal(256).astype(np.float32)
    a = np.concatenate([a, r, r, f32([0x00000001, 0x80000000, 0x7F800000, 0x7FC00000] * 2)])
    b = np.concatenate([b, r[::-1], r, f32([0x00000002, 0x00000000, 0x7F800000, 0x7FC00000] * 2)])
    n = len(a)
    out = np.zeros(len(CMP_OPS) * n, np.uint32)
    got = both(LANE_AVX2, "cmps", [out, a, b, np.zeros(n, np.float32), n,
                                   np.zeros(4, np.uint32)], builddir)[0].reshape(-1, n)
    for p in range(32):
        assert (got[p] == model_cmp(a, b, p)).all(), p
    for i, p in enumerate((3, 3, 12, 13)):
        assert (got[32 + i] == model_cmp(a, b, p)).all(), CMP_OPS[32 + i]


# --- AVX-512 forms: simulator against the models -----------------------------

AVX512_LANES = HEADER + r"""
# void ph2ps16(float *out48, const unsigned short *h16, unsigned mask)
    .globl ph2ps16
ph2ps16:
    kmovw k1, edx
    vcvtph2ps zmm0, YMMWORD PTR [rsi]
    vmovups ZMMWORD PTR [rdi], zmm0
    vcvtph2ps zmm1{k1}{z}, YMMWORD PTR [rsi]
    vmovups ZMMWORD PTR [rdi+64], zmm1
    vmovdqu ymm2, YMMWORD PTR [rsi]
    vcvtph2ps zmm3, ymm2
    vmovups ZMMWORD PTR [rdi+128], zmm3
    vzeroupper
    ret

# void loads_tail(unsigned *out32, const unsigned short *h, unsigned mask)
# masked loads only: h may be shorter than 16 words
    .globl loads_tail
loads_tail:
    kmovw k1, edx
    vcvtph2ps zmm0{k1}{z}, YMMWORD PTR [rsi]
    vmovups ZMMWORD PTR [rdi], zmm0
    vpmovzxwd zmm1{k1}{z}, YMMWORD PTR [rsi]
    vmovdqu32 ZMMWORD PTR [rdi+64], zmm1
    ret

# void ps2ph16(unsigned short *out48, const float *f16, unsigned mask, unsigned short *dst)
# out[0:16] store, out[16:32] ymm{k1}{z}, out[32:48] ymm{k1} merged into .Lw;
# dst: masked store (unselected words untouched, dst may be short)
    .globl ps2ph16
ps2ph16:
    kmovw k1, edx
    vmovups zmm0, ZMMWORD PTR [rsi]
    vcvtps2ph YMMWORD PTR [rdi], zmm0, 0
    vcvtps2ph ymm1{k1}{z}, zmm0, 0
    vmovdqu YMMWORD PTR [rdi+32], ymm1
    vmovdqu ymm2, YMMWORD PTR .Lw[rip]
    vcvtps2ph ymm2{k1}, zmm0, 0
    vmovdqu YMMWORD PTR [rdi+64], ymm2
    vcvtps2ph YMMWORD PTR [rcx]{k1}, zmm0, 0
    vzeroupper
    ret

# void zxwd16(unsigned *out32, const unsigned short *h16, unsigned mask)
    .globl zxwd16
zxwd16:
    kmovw k1, edx
    vpmovzxwd zmm0, YMMWORD PTR [rsi]
    vmovdqu32 ZMMWORD PTR [rdi], zmm0
    vpmovzxwd zmm1{k1}{z}, YMMWORD PTR [rsi]
    vmovdqu32 ZMMWORD PTR [rdi+64], zmm1
    ret

# void iops16(unsigned *out(12*16), const unsigned *a, const unsigned *b,
#             const unsigned *s4, unsigned mask)
    .globl iops16
iops16:
    kmovw k1, r8d
    vmovdqu32 zmm0, ZMMWORD PTR [rsi]
    vmovdqu32 zmm1, ZMMWORD PTR [rdx]
    vpslld zmm2, zmm0, 16
    vmovdqu32 ZMMWORD PTR [rdi], zmm2
    vpsrld zmm2, zmm0, 13
    vmovdqu32 ZMMWORD PTR [rdi+64], zmm2
    vpslld zmm2, zmm0, 32
    vmovdqu32 ZMMWORD PTR [rdi+128], zmm2
    vmovdqa32 zmm2, zmm1
    vpsrld zmm2{k1}{z}, zmm0, 7
    vmovdqu32 ZMMWORD PTR [rdi+192], zmm2
    vpandd zmm2, zmm0, DWORD PTR [rcx]{1to16}
    vmovdqu32 ZMMWORD PTR [rdi+256], zmm2
    vpandd zmm2, zmm0, zmm1
    vmovdqu32 ZMMWORD PTR [rdi+320], zmm2
    vpaddd zmm2, zmm0, zmm1
    vmovdqu32 ZMMWORD PTR [rdi+384], zmm2
    vpaddd zmm2, zmm0, DWORD PTR [rcx+4]{1to16}
    vmovdqu32 ZMMWORD PTR [rdi+448], zmm2
    vmovdqa32 zmm2, zmm1
    vpord zmm2{k1}, zmm0, DWORD PTR [rcx+8]{1to16}
    vmovdqu32 ZMMWORD PTR [rdi+512], zmm2
    vpbroadcastd zmm2, DWORD PTR [rcx+12]
    vmovdqu32 ZMMWORD PTR [rdi+576], zmm2
    vpbroadcastd ymm2, DWORD PTR [rcx]
    vmovdqu32 ZMMWORD PTR [rdi+640], zmm2
    vpslld ymm2, ymm0, 3
    vmovdqu32 ZMMWORD PTR [rdi+704], zmm2
    vzeroupper
    ret

# void pord_bcst(unsigned *out16, const unsigned *a, const unsigned *s, unsigned mask)
    .globl pord_bcst
pord_bcst:
    kmovw k1, ecx
    vmovdqu32 zmm0, ZMMWORD PTR [rsi]
    vmovdqa32 zmm1, zmm0
    vpord zmm1{k1}, zmm0, DWORD PTR [rdx]{1to16}
    vmovdqu32 ZMMWORD PTR [rdi], zmm1
    ret

# void pmovdw16(unsigned short *out(5*16), const unsigned *a, unsigned mask, unsigned short *dst)
    .globl pmovdw16
pmovdw16:
    kmovw k1, edx
    vmovdqu32 zmm0, ZMMWORD PTR [rsi]
    vpmovdw YMMWORD PTR [rdi], zmm0
    vpmovdw ymm1, zmm0
    vmovdqu YMMWORD PTR [rdi+32], ymm1
    vmovdqu ymm2, YMMWORD PTR .Lw[rip]
    vpmovdw ymm2{k1}, zmm0
    vmovdqu YMMWORD PTR [rdi+64], ymm2
    vpmovdw ymm3{k1}{z}, zmm0
    vmovdqu YMMWORD PTR [rdi+96], ymm3
    vpcmpeqd ymm4, ymm4, ymm4
    vpmovdw xmm4, ymm0
    vmovdqu YMMWORD PTR [rdi+128], ymm4
    vpmovdw YMMWORD PTR [rcx]{k1}, zmm0
    vzeroupper
    ret

    .section .rodata
    .p2align 5
.Lw: .value 0xA000, 0xA001, 0xA002, 0xA003, 0xA004, 0xA005, 0xA006, 0xA007
     .value 0xA008, 0xA009, 0xA00A, 0xA00B, 0xA00C, 0xA00D, 0xA00E, 0xA00F
    .text
"""


def _cmp_kernel():
    lines = ["    .globl cmp16", "cmp16:      # (unsigned short *k35, const float *a, const float *b, mask)",
             "    kmovw k2, ecx", "    vmovups zmm0, ZMMWORD PTR [rsi]", "    vmovups zmm1, ZMMWORD PTR [rdx]"]
    for p in range(32):
        lines += [f"    vcmpps k1, zmm0, zmm1, {p}", f"    kmovw WORD PTR [rdi+{2 * p}], k1"]
    lines += ["    vcmpps k1{k2}, zmm0, zmm1, 0", "    kmovw WORD PTR [rdi+64], k1",
              "    vcmpps k1, zmm0, DWORD PTR [rdx]{1to16}, 4", "    kmovw WORD PTR [rdi+66], k1",
              "    vcmpunordps k1, zmm0, zmm1", "    kmovw WORD PTR [rdi+68], k1",
              "    vcmpps k3{k2}, zmm0, zmm1, 3", "    kmovw WORD PTR [rdi+70], k3",
              "    vzeroupper", "    ret", ""]
    return "\n".join(lines)


AVX512_LANES += _cmp_kernel()

AVX512_BF16 = HEADER + r"""
# void dp16(float *out(5*16), const float *acc, const unsigned *a, const unsigned *b, unsigned mask)
    .globl dp16
dp16:
    kmovw k1, r8d
    vmovups zmm1, ZMMWORD PTR [rdx]
    vmovups zmm2, ZMMWORD PTR [rcx]
    vmovups zmm0, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0, zmm1, zmm2
    vmovups ZMMWORD PTR [rdi], zmm0
    vmovups zmm0, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0, zmm1, DWORD PTR [rcx]{1to16}
    vmovups ZMMWORD PTR [rdi+64], zmm0
    vmovups zmm0, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0, zmm1, ZMMWORD PTR [rcx]
    vmovups ZMMWORD PTR [rdi+128], zmm0
    vmovups zmm0, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0{k1}, zmm1, zmm2
    vmovups ZMMWORD PTR [rdi+192], zmm0
    vmovups zmm0, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0{k1}{z}, zmm1, zmm2
    vmovups ZMMWORD PTR [rdi+256], zmm0
    vzeroupper
    ret

# void dploop(float *out16, const unsigned *a, const unsigned *b, long k)
# out = sum over k rows of 16 lanes (acc starts at zero, one vdpbf16ps per row)
    .globl dploop
dploop:
    vpxord zmm0, zmm0, zmm0
    test rcx, rcx
    je .Ldpe
.Ldp:
    vmovups zmm1, ZMMWORD PTR [rsi]
    vdpbf16ps zmm0, zmm1, ZMMWORD PTR [rdx]
    add rsi, 64
    add rdx, 64
    dec rcx
    jne .Ldp
.Ldpe:
    vmovups ZMMWORD PTR [rdi], zmm0
    vzeroupper
    ret
"""


def avx512_lanes(name, args, mem=None):
    return sim_call(AVX512_LANES, name, args, mem)


@need_tools
def test_avx512_lane_texts_assemble(builddir):
    for text in (AVX512_LANES, AVX512_BF16):
        assert assemble(text, builddir, link=False).read_bytes()[:4] == b"\x7fELF"


MASKS = [0x0000, 0xFFFF, 0xA5C3, 0x0001, 0x8000]


@pytest.mark.parametrize("mask", MASKS)
def test_avx512_vcvtph2ps(mask):
    rng = np.random.default_rng(mask)
    h = np.concatenate([np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0xFC00, 0x7C01,
                                  0xFE12, 0x7BFF, 0x3C00], np.uint16),
                        rng.integers(0, 2**16, 6).astype(np.uint16)])
    out = np.full(48, 0xBAD, np.uint32)
    _, (out, _, _) = avx512_lanes("ph2ps16", [out, h, mask])
    e = model_h2f(h)
    m = mask_bits(mask)
    assert (out[:16] == e).all() and (out[32:] == e).all()
    assert (out[16:32] == np.where(m, e, 0)).all()


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16])
def test_avx512_masked_word_loads_do_not_touch_masked_words(n):
    h = np.arange(0x3C00, 0x3C00 + n, dtype=np.uint16)       # exact size: a read past it faults
    out = np.full(32, 0xBAD, np.uint32)
    _, (out, _, _) = avx512_lanes("loads_tail", [out, h, (1 << n) - 1])
    assert (out[:n] == model_h2f(h)).all() and not out[n:16].any()
    assert (out[16:16 + n] == h).all() and not out[16 + n:].any()
    if n < 16:
        with pytest.raises(MemoryFault):
            avx512_lanes("loads_tail", [out, h, (1 << (n + 1)) - 1])


@pytest.mark.parametrize("mask", MASKS)
def test_avx512_vcvtps2ph(mask):
    f = f2h_edges()
    m = mask_bits(mask)
    iota = np.arange(0xA000, 0xA010, dtype=np.uint16)
    for j in range(0, len(f), 16):
        chunk = f[j:j + 16]
        out = np.zeros(48, np.uint16)
        dst = np.full(16, 0x5555, np.uint16)
        _, (out, _, _, dst) = avx512_lanes("ps2ph16", [out, chunk, mask, dst])
        e = model_f2h(bits(chunk))
        assert (out[:16] == e).all(), j
        assert (out[16:32] == np.where(m, e, 0)).all(), j
        assert (out[32:48] == np.where(m, e, iota)).all(), j
        assert (dst == np.where(m, e, 0x5555)).all(), j
    # masked store into a short array: only selected words are accessed
    short = np.zeros(3, np.uint16)
    _, (_, _, _, short) = avx512_lanes("ps2ph16", [np.zeros(48, np.uint16), f[:16], 0x0005, short])
    assert short.tolist() == [model_f2h(bits(f[:1]))[0], 0, model_f2h(bits(f[2:3]))[0]]
    with pytest.raises(MemoryFault):
        avx512_lanes("ps2ph16", [np.zeros(48, np.uint16), f[:16], 0x0008, np.zeros(3, np.uint16)])


@pytest.mark.parametrize("mask", MASKS)
def test_avx512_vpmovzxwd(mask):
    h = np.array([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x1234, 0xFFFE, 0x00FF,
                  9, 10, 11, 12, 0xF000, 14, 15, 16], np.uint16)
    out = np.full(32, 0xBAD, np.uint32)
    _, (out, _, _) = avx512_lanes("zxwd16", [out, h, mask])
    assert (out[:16] == h.astype(np.uint32)).all()
    assert (out[16:] == np.where(mask_bits(mask), h.astype(np.uint32), 0)).all()


@pytest.mark.parametrize("mask", MASKS)
def test_avx512_shifts_and_integer_ops(mask):
    a, b = int_inputs(n=0, seed=mask)
    s = u32([0x0F0F0F0F, 0x80000001, 0x00010000, 0xCAFEF00D])
    m = mask_bits(mask)
    for j in range(0, len(a), 16):
        x, y = a[j:j + 16], b[j:j + 16]
        out = np.zeros(12 * 16, np.uint32)
        _, (out, _, _, _, _) = avx512_lanes("iops16", [out, x, y, s, mask])
        out = out.reshape(12, 16)
        exp = [x << np.uint32(16), x >> np.uint32(13), np.zeros(16, np.uint32),
               np.where(m, x >> np.uint32(7), 0), x & s[0], x & y, x + y, x + s[1],
               np.where(m, x | s[2], y), np.full(16, s[3]),
               np.r_[np.full(8, s[0]), np.zeros(8, np.uint32)],
               np.r_[x[:8] << np.uint32(3), np.zeros(8, np.uint32)]]
        for i, e in enumerate(exp):
            assert (out[i] == e).all(), (j, i)


def test_avx512_masked_broadcast_does_not_read():
    a = np.arange(16, dtype=np.uint32)
    s = np.array([0xF0], np.uint32)
    _, (out, _, _, _) = avx512_lanes("pord_bcst", [np.zeros(16, np.uint32), a, s, 0x00FF])
    assert (out == np.where(np.arange(16) < 8, a | 0xF0, a)).all()
    prog = sim_prog(AVX512_LANES)
    mem = Memory()
    pout = mem.map(np.zeros(16, np.uint32))
    pa = mem.map(a.copy())
    prog.call("pord_bcst", [pout, pa, 0x10, 0], memory=mem)    # address 0x10 is unmapped
    assert (mem.read_elems(pout, 16, np.uint32) == a).all()
    with pytest.raises(MemoryFault):
        prog.call("pord_bcst", [pout, pa, 0x10, 0x0100], memory=mem)


@pytest.mark.parametrize("mask", MASKS)
def test_avx512_vpmovdw(mask):
    a, _ = int_inputs(n=0, seed=1)
    a = a[5 * 16:6 * 16]
    m = mask_bits(mask)
    out = np.zeros(80, np.uint16)
    dst = np.full(16, 0x5555, np.uint16)
    _, (out, _, _, dst) = avx512_lanes("pmovdw16", [out, a, mask, dst])
    t = (a & 0xFFFF).astype(np.uint16)
    iota = np.arange(0xA000, 0xA010, dtype=np.uint16)
    assert (out[:16] == t).all() and (out[16:32] == t).all()
    assert (out[32:48] == np.where(m, t, iota)).all()
    assert (out[48:64] == np.where(m, t, 0)).all()
    assert (out[64:72] == t[:8]).all() and not out[72:80].any()
    assert (dst == np.where(m, t, 0x5555)).all()
    short = np.zeros(2, np.uint16)                # exact size: words 2.. must not be written
    _, (_, _, _, short) = avx512_lanes("pmovdw16", [out, a, 0x0003, short])
    assert (short == t[:2]).all()
    with pytest.raises(MemoryFault):
        avx512_lanes("pmovdw16", [out, a, 0x0004, np.zeros(2, np.uint16)])


@pytest.mark.parametrize("mask", [0xFFFF, 0xA5C3, 0x0000])
def test_avx512_vcmpps_to_k(mask):
    rng = np.random.default_rng(12)
    r = rng.standard_normal(16).astype(np.float32)
    r2 = r.copy()
    r2[::3] = -r2[::3]
    pairs = [(SPECIALS, np.roll(SPECIALS, k)) for k in range(16)] + [(r, r2), (r2, r)]
    w = 1 << np.arange(16)

    def kbits(c):
        return int(((c != 0) * w).sum())
    for x, y in pairs:
        out = np.zeros(36, np.uint16)
        _, (out, _, _, _) = avx512_lanes("cmp16", [out, x, y, mask])
        kb = [kbits(model_cmp(x, y, p)) for p in range(32)]
        assert out[:32].tolist() == kb
        assert out[32] == kb[0] & mask and out[35] == kb[3] & mask
        assert out[33] == kbits(model_cmp(x, np.full(16, y[0]), 4))       # {1to16}
        assert out[34] == kb[3]                                              # vcmpunordps


# --- vdpbf16ps ----------------------------------------------------------------

def _daz(x):
    x = np.float32(x)
    if x != 0 and abs(x) < np.float32(2.0**-126):
        return np.float32(-0.0) if np.signbit(x) else np.float32(0.0)
    return x


def _round24_unbounded(q):
    """|q| rounded to 24 significant bits, nearest even, no exponent limits."""
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    quantum = Fraction(2) ** (e - 23)
    n = q / quantum
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    return fl * quantum


def ref_fma_daz_ftz(a, b, c):
    """Reference a*b+c: DAZ inputs, exact product and sum, one rounding to
    nearest even, results tiny after rounding (unbounded exponent) flushed to
    zero of their sign.  NaN priority a, b, c."""
    a, b, c = _daz(a), _daz(b), _daz(c)
    for x in (a, b, c):
        if np.isnan(x):
            return (np.array(x).view(np.uint32) | np.uint32(0x400000)).view(np.float32)
    if (np.isinf(a) and b == 0) or (np.isinf(b) and a == 0):
        return f32(0xFFC00000)
    if np.isinf(a) or np.isinf(b):
        pinf = np.sign(a) * np.sign(b)
        if np.isinf(c) and np.sign(c) != pinf:
            return f32(0xFFC00000)
        return np.float32(pinf * np.inf)
    if np.isinf(c):
        return c
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:
        p_neg = np.signbit(a) != np.signbit(b)
        return np.float32(-0.0) if (p_neg and np.signbit(c)) else np.float32(0.0)
    if _round24_unbounded(exact) < Fraction(2) ** -126:
        return np.float32(-0.0) if exact < 0 else np.float32(0.0)
    return f32_round(exact)


def ref_dpbf16(acc, a, b):
    """Per lane: acc += a.hi*b.hi, then acc += a.lo*b.lo (SDM order)."""
    def hi(v):
        return f32(np.uint32(int(v) & 0xFFFF0000))

    def lo(v):
        return f32(np.uint32((int(v) << 16) & 0xFFFFFFFF))
    out = []
    for c, x, y in zip(acc, a, b):
        r = ref_fma_daz_ftz(hi(x), hi(y), c)
        out.append(ref_fma_daz_ftz(lo(x), lo(y), r))
    return np.array(out, np.float32)


def bf(x):
    """float -> bf16 bits (x must be representable)."""
    u = int(bits(np.float32(x)))
    assert u & 0xFFFF == 0, x
    return u >> 16


def pair(lo, hi):
    return np.uint32(bf(hi) << 16 | bf(lo))


def dpbf16_cases():
    """(acc, a, b) float32 / uint32 lanes with the hard cases of the spec."""
    A, B, C = [], [], []

    def add(c, alo, ahi, blo, bhi):
        C.append(np.float32(c))
        A.append(pair(alo, ahi))
        B.append(pair(blo, bhi))

    t = 2.0**-24
    add(1.0, 0.0, 2.0**-12, 0.0, 2.0**-12)             # 1 + 2^-24: tie -> 1
    add(1.0, 2.0**-12, 2.0**-12, 2.0**-12, 2.0**-12)   # rounded after each product: 1, not 1+2^-23
    add(1.0, 2.0**-12 * (1 + 2.0**-7), 2.0**-12, 2.0**-12, 2.0**-12)  # high pair first: 1+2^-23
    add(1.0, 2.0**-12, 2.0**-12 * (1 + 2.0**-7), 2.0**-12, 2.0**-12)  # (other order): 1+2^-22
    add(1.0, 0.0, 3 * 2.0**-13, 0.0, 2.0**-11)         # 1 + 3*2^-24 -> 1 + 2^-22
    add(-1.0, t, 0.0, 1.0, 0.0)
    add(f32(0x00000001), 0.0, 0.0, 0.0, 0.0)           # denormal acc -> +0
    add(f32(0x80000005), -0.0, -0.0, 0.0, 0.0)         # DAZ -> -0; -0 + -0 = -0
    add(f32(0x007FFFFF), 0.0, 1.0, 0.0, 1.0)           # DAZ acc, 0 + 1 = 1
    add(0.0, 0.0, f32(0x00010000), 0.0, 2.0**100)      # denormal bf16 * 2^100 -> 0, not 2^-33
    add(0.0, 0.0, 2.0**-70, 0.0, 2.0**-70)             # 2^-140: flushed
    add(0.0, -0.0, -(2.0**-70), 0.0, 2.0**-70)         # -2^-140 -> -0, then -0 + -0
    add(0.0, 0.0, -(2.0**-70), 0.0, 2.0**-70)          # -0 + +0 = +0
    add(2.0**-126 + 2.0**-149, 0.0, -(1 + 2.0**-3) * 2.0**-75, 0.0, 2.0**-74)  # 2^-126 - 2^-152 -> 2^-126
    add(2.0**-126 + 2.0**-149, 0.0, -(2.0**-74), 0.0, 2.0**-74)  # 2^-126 - 2^-149 exactly: tiny -> 0
    add(-(2.0**-126) - 2.0**-149, -0.0, 2.0**-74, 0.0, 2.0**-74)  # -> -0 (+ -0)
    add(2.0**-125, 0.0, -(2.0**-63), 0.0, 2.0**-63)    # 2^-126 exactly: normal, kept
    add(3.4028235e38, 0.0, 2.0**52, 0.0, 2.0**51)      # max + 2^103: tie -> inf
    add(3.4028235e38, 0.0, 2.0**52, 0.0, 2.0**50)      # max + 2^102: max
    add(-3.4028235e38, 0.0, -(2.0**127), 0.0, 2.0)     # -> -inf
    add(np.inf, 0.0, -np.inf, 0.0, 1.0)                # inf - inf: default NaN
    add(1.0, 0.0, np.inf, 0.0, 0.0)                    # inf * 0: default NaN
    add(1.0, np.inf, 0.0, 0.0, 0.0)                    # low pair inf*0
    add(np.nan, 1.0, 1.0, 1.0, 1.0)
    for alo, ahi, blo, bhi in [(f32(0x7FA00000), f32(0xFFC10000), f32(0x7F810000), f32(0xFFE00000)),
                               (1.0, f32(0xFFC10000), f32(0x7F810000), f32(0xFFE00000)),
                               (1.0, f32(0xFFC10000), 1.0, f32(0xFFE00000)),
                               (1.0, 1.0, 1.0, f32(0xFFE00000)),
                               (np.inf, 1.0, 0.0, f32(0xFFE00000))]:
        add(f32(0x7F900000), alo, ahi, blo, bhi)
        add(2.0, alo, ahi, blo, bhi)
    rng = np.random.default_rng(77)
    n = len(C)
    # every bit pattern (NaN, inf, denormal bf16 and accumulators)
    C += list(f32(rng.integers(0, 2**32, 400, dtype=np.uint64).astype(np.uint32)))
    A += list(rng.integers(0, 2**32, 400, dtype=np.uint64).astype(np.uint32))
    B += list(rng.integers(0, 2**32, 400, dtype=np.uint64).astype(np.uint32))
    # moderate values with cancellation: acc = -(hi product) + small
    for _ in range(400):
        v = rng.standard_normal(4).astype(np.float32)
        x = (bits(v) & np.uint32(0xFFFF0000)).view(np.float32)
        p = np.float32(np.float64(x[1]) * x[3])
        c = f32(bits(-p).astype(np.int64) + int(rng.integers(-40, 41))) if p != 0 else p
        add(c, x[0], x[1], x[2], x[3])
    # small magnitudes around the flush threshold
    for _ in range(400):
        e = rng.integers(-70, -56, 4)
        v = (rng.uniform(1, 2, 4) * 2.0**e * rng.choice([-1, 1], 4)).astype(np.float32)
        x = (bits(v) & np.uint32(0xFFFF0000)).view(np.float32)
        c = np.float32(rng.uniform(-2, 2) * 2.0 ** int(rng.integers(-130, -122)))
        add(c, x[0], x[1], x[2], x[3])
    assert len(C) > n
    pad = (-len(C)) % 16
    for _ in range(pad):
        add(0.0, 0.0, 0.0, 0.0, 0.0)
    return (np.array(C, np.float32), np.array(A, np.uint32), np.array(B, np.uint32))


def test_dpbf16_reference_on_hand_checked_cases():
    C, A, B = dpbf16_cases()
    r = ref_dpbf16(C[:20], A[:20], B[:20])
    one = np.float32(1.0)
    assert r[0] == one and r[1] == one
    assert r[2] == np.float32(1 + 2.0**-23) and r[3] == np.float32(1 + 2.0**-22)
    assert r[4] == np.float32(1 + 2.0**-22)
    assert bits(r[6]) == 0 and bits(r[7]) == 0x80000000 and r[8] == one and bits(r[9]) == 0
    assert bits(r[10]) == 0 and bits(r[11]) == 0x80000000 and bits(r[12]) == 0
    assert r[13] == np.float32(2.0**-126) and bits(r[14]) == 0 and bits(r[15]) == 0x80000000
    assert r[16] == np.float32(2.0**-126)
    assert np.isposinf(r[17]) and r[18] == np.float32(3.4028235e38) and np.isneginf(r[19])


def test_avx512_vdpbf16ps_against_reference():
    C, A, B = dpbf16_cases()
    exp = ref_dpbf16(C, A, B)
    got = np.zeros_like(C)
    for j in range(0, len(C), 16):
        out = np.zeros(5 * 16, np.float32)
        mask = 0xA5C3
        _, (out, *_) = sim_call(AVX512_BF16, "dp16", [out, C[j:j + 16], A[j:j + 16], B[j:j + 16], mask])
        out = out.reshape(5, 16)
        e = exp[j:j + 16]
        got[j:j + 16] = out[0]
        assert (bits(out[2]) == bits(out[0])).all()
        m = mask_bits(mask)
        assert (bits(out[3]) == np.where(m, bits(e), bits(C[j:j + 16]))).all()
        assert (bits(out[4]) == np.where(m, bits(e), 0)).all()
        eb = ref_dpbf16(C[j:j + 16], A[j:j + 16], np.full(16, B[j]))
        assert (bits(out[1]) == bits(eb)).all(), j
    bad = np.flatnonzero(bits(got) != bits(exp))
    assert bad.size == 0, [(j, hex(bits(C[j])), hex(A[j]), hex(B[j]), hex(bits(got[j])),
                            hex(bits(exp[j]))) for j in bad[:5]]
    # the sample exercises what distinguishes the semantics
    assert np.isnan(exp).sum() > 20 and np.isinf(exp).sum() > 3
    assert ((bits(exp) & 0x7FFFFFFF) == 0).sum() > 40


def test_avx512_vdpbf16ps_dot_product_loop():
    rng = np.random.default_rng(5)
    k = 24
    a = (bits(rng.standard_normal(16 * k).astype(np.float32)) >> 16).astype(np.uint32)
    b = (bits(rng.standard_normal(16 * k).astype(np.float32)) >> 16).astype(np.uint32)
    a = a.reshape(k, 16) | ((a.reshape(k, 16)[::-1] ^ 0x8000) << 16)
    b = b.reshape(k, 16) | (b.reshape(k, 16)[:, ::-1] << 16)
    _, (out, _, _, _) = sim_call(AVX512_BF16, "dploop", [np.zeros(16, np.float32), a, b, k])
    acc = np.zeros(16, np.float32)
    for i in range(k):
        acc = ref_dpbf16(acc, a[i], b[i])
    assert (bits(out) == bits(acc)).all()
    hi = [f32(x & np.uint32(0xFFFF0000)).astype(np.float64) for x in (a, b)]
    lo = [f32(x << np.uint32(16)).astype(np.float64) for x in (a, b)]
    exact = (hi[0] * hi[1] + lo[0] * lo[1]).sum(axis=0)
    assert np.allclose(out, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not NATIVE_AVX512, reason="CPU lacks AVX-512F")
def test_avx512_lane_ops_native_crosscheck(builddir):
    rng = np.random.default_rng(1)
    f = f2h_edges()
    for mask in (0, 0xA5C3, 0xFFFF):
        h = rng.integers(0, 2**16, 16).astype(np.uint16)
        both(AVX512_LANES, "ph2ps16", [np.zeros(48, np.float32), h, mask], builddir)
        both(AVX512_LANES, "zxwd16", [np.zeros(32, np.uint32), h, mask], builddir)
        for j in range(0, 512, 16):
            both(AVX512_LANES, "ps2ph16", [np.zeros(48, np.uint16), f[j:j + 16], mask,
                                           np.zeros(16, np.uint16)], builddir)
        a, b = int_inputs(n=0, seed=mask)
        s = u32([0x0F0F0F0F, 0x80000001, 0x00010000, 0xCAFEF00D])
        both(AVX512_LANES, "iops16", [np.zeros(192, np.uint32), a[:16], b[:16], s, mask], builddir)
        both(AVX512_LANES, "pmovdw16", [np.zeros(80, np.uint16), a[16:32], mask,
                                        np.zeros(16, np.uint16)], builddir)
        both(AVX512_LANES, "cmp16", [np.zeros(36, np.uint16), SPECIALS, SPECIALS[::-1], mask], builddir)


@pytest.mark.skipif(not NATIVE_BF16, reason="CPU lacks AVX512_BF16")
def test_avx512_vdpbf16ps_native_crosscheck(builddir):
    C, A, B = dpbf16_cases()
    for j in range(0, len(C), 16):
        both(AVX512_BF16, "dp16", [np.zeros(80, np.float32), C[j:j + 16], A[j:j + 16],
                                   B[j:j + 16], 0xA5C3], builddir)


def test_half_and_word_forms_reject_bad_operands():
    bad = ["vcvtph2ps zmm0, xmm1",                       # 16 halves need a ymm
           "vcvtph2ps zmm0, XMMWORD PTR [rdi]",
           "vcvtps2ph zmm1, zmm0, 0",                    # 16 halves fill a ymm
           "vcvtps2ph YMMWORD PTR [rdi]{k1}{z}, zmm0, 0",  # no zero-masking on stores
           "vcvtps2ph xmm1, ymm0, xmm2",
           "vpmovzxwd ymm0, YMMWORD PTR [rdi]",
           "vpmovdw xmm0, zmm1",
           "vpmovdw YMMWORD PTR [rdi], DWORD PTR [rsi]",
           "vpslld ymm0, ymm1, ymm2",                   # count: imm8, xmm or m128
           "vcmpps ymm0{k1}, ymm1, ymm2, 3",
           "vblendvps ymm0, ymm1, ymm2, YMMWORD PTR [rdi]",
           "vdpbf16ps zmm0, ZMMWORD PTR [rdi], zmm1"]
    for line in bad:
        with pytest.raises(AsmError):
            Program(HEADER + f"f:  {line}\n    ret\n")
    ok = Program(HEADER + "f:  vcvtph2ps zmm0, ymm1\n    vpmovdw xmm0, ymm1\n    ret\n")
    assert [i.mnemonic for i in ok.insns] == ["vcvtph2ps", "vpmovdw", "ret"]


PACK_AVX2 = HEADER + r"""
    .globl packperm
packperm:                   # (out[24] dwords, a[8], b[8]): packusdw a,b ; permq 0x08 ; permq 0x1b
    vmovdqu ymm0, YMMWORD PTR [rsi]
    vmovdqu ymm1, YMMWORD PTR [rdx]
    vpackusdw ymm2, ymm0, ymm1
    vmovdqu YMMWORD PTR [rdi], ymm2
    vpermq ymm3, ymm2, 8
    vmovdqu YMMWORD PTR [rdi+32], ymm3
    vpermq ymm4, YMMWORD PTR [rsi], 0x1b
    vmovdqu YMMWORD PTR [rdi+64], ymm4
    vzeroupper
    ret
"""


def _model_packperm(a, b):
    sat = [np.clip(x.view(np.int32), 0, 0xFFFF).astype(np.uint16) for x in (a, b)]
    packed = np.concatenate([sat[0][:4], sat[1][:4], sat[0][4:], sat[1][4:]]).view(np.uint32)
    q = packed.view(np.uint64)
    perm8 = q[[0, 2, 0, 0]].view(np.uint32)
    perm1b = a.view(np.uint64)[[3, 2, 1, 0]].view(np.uint32)
    return np.concatenate([packed, perm8, perm1b])


@need_avx2
def test_vpackusdw_saturates_and_vpermq_selects_native(builddir):
    """The AVX2 bfloat16 store's packing (vpackusdw per 128-bit lane with unsigned saturation,
    then vpermq): simulator, numpy model and the CPU agree, negatives and > 0xFFFF included."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        a = rng.integers(-(1 << 31), 1 << 31, 8, dtype=np.int64).astype(np.int32).view(np.uint32)
        b = rng.integers(-70000, 70000, 8).astype(np.int32).view(np.uint32)
        a[:3] = np.array([0, 0xFFFF, 0x10000], np.uint32)
        out = np.zeros(24, np.uint32)
        sim = both(PACK_AVX2, "packperm", [out, a, b], builddir)[0]
        assert np.array_equal(sim, _model_packperm(a, b))
