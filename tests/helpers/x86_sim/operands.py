"""Parsing of instruction operands in Intel syntax into :class:`Op` objects
(registers, masks, memory references with size / broadcast / {k}{z}
decorations, immediates and symbol expressions), splitting of operand lists,
and evaluation of constant expressions over a symbol table
(``eval_expr``).
"""

import re

from .constants import _GPR_NAMES, _LANES, _SIZES
from .errors import AsmError


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
