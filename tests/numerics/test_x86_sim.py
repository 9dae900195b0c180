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
