"""IEEE arithmetic on bit patterns as the hardware does it: binary32 operations
on uint32 arrays with the x86 NaN rules (``_nanfix``), the once-rounded FMA
(``fma_bits``, ``fma_f32``), binary16 <-> binary32 conversions (``_h2f``,
``_f2h``) and the DAZ/FTZ bfloat16 dot product of VDPBF16PS (``_dpbf16``).
"""

import numpy as np

from .constants import DEFAULT_NAN, F32, F64, QNAN_BIT, U16, U32, U64


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
