"""Builders of the flag consumers and control transfers: conditional jumps,
setcc and cmovcc for every condition code, jmp, call and ret (direct or
through a code address) and the stack operations push, pop and leave.
"""

from .constants import CODE_BASE, CODE_STRIDE, M64, RET_SENTINEL, RSP
from .errors import SimError
from .flags import _CC, _flags
from .registry import BUILDERS, _nops, _reg


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
