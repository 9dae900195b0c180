"""Lazily evaluated arithmetic flags: an instruction stores the kind of its
last flag-setting operation with operands and result (``SUB``, ``ADD``,
``LOG``, ``RAW``), ``_flags`` turns that into (ZF, SF, OF, CF) when a
consumer needs them, and ``_CC`` maps condition-code suffixes to predicates
on those flags.
"""


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
