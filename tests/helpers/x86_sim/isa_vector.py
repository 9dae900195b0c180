"""Builders of the float32 / dword vector instructions (SSE/AVX/AVX-512 forms
with {k}{z} masking): moves, arithmetic and logic, FMA, broadcasts, integer
compares, vmaskmovps, dword shifts, vpermq, vcmpps, vblendvps and
vzeroupper / vzeroall.
"""

import numpy as np

from .constants import F32, M32, M64, U32
from .decoder import _maskbits
from .errors import AsmError, MemoryFault
from .floats import _fadd, _fmax, _fmin, _fmul, _fsub, _nanfix, fma_bits
from .registry import BUILDERS, _nops, _reg, _vl_of


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
