"""The instruction table: ``BUILDERS`` maps a mnemonic to its builder
``builder(decoder, ops, idx) -> closure``; ``_reg`` registers a builder under
one or more mnemonics, and ``_nops`` / ``_width`` / ``_vl_of`` are the
operand count, integer width and vector length checks the builders share.
"""

from .errors import AsmError

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


def _vl_of(op):
    if op.kind == "vec":
        return op.lanes
    if op.kind == "mem" and op.size in (16, 32, 64):
        return op.size // 4
    raise AsmError("cannot determine vector length from %r" % op.text)
