"""Builders of the AVX-512 mask-register instructions: kmov and the k-logic
operations (kand, kor, kxor, kxnor, knot) in their b/w/d/q widths.
"""

from .errors import AsmError
from .registry import BUILDERS, _nops


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
