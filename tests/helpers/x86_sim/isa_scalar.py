"""Builders of the integer instructions on general-purpose registers and
memory: no-ops, moves and sign/zero extensions, lea, the ALU operations with
their flags, inc/dec, neg, not, imul, shifts and cdqe.
"""

from .constants import M32, M64
from .errors import AsmError
from .flags import ADD, LOG, RAW, SUB, _flags
from .registry import BUILDERS, _nops, _reg, _width


def _sx(v, w):
    return v - (1 << w) if v >> (w - 1) else v


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


@_reg("cdqe")
def _b_cdqe(d, ops, idx):
    R = d.st.R

    def f():
        R[0] = _sx(R[0] & M32, 32) & M64
    return f
