"""Builders of the conversions between element widths: half <-> float
(vcvtph2ps, vcvtps2ph), word <-> dword moves and packs (vpmovzxwd,
vpmovsxwd, vpmovdw, vpackusdw) and the bfloat16 dot product vdpbf16ps.
"""

import numpy as np

from .constants import U16, U32
from .errors import AsmError
from .floats import _dpbf16, _f2h, _h2f
from .isa_vector import _b_vbin
from .registry import BUILDERS, _nops, _reg


@_reg("vcvtph2ps")
def _b_vcvtph2ps(d, ops, idx):
    # vcvtph2ps {x,y,z}mm{k}{z}, {x,y}mm / m64 / m128 / m256 (halves -> floats)
    _nops(ops, 2)
    dst, src = ops
    if dst.kind != "vec":
        raise AsmError("destination must be a vector register")
    vl = dst.lanes
    g = d.wsrc(src, vl, dst.mask)
    w = d.vdst(dst)
    return lambda: w(_h2f(g()))


@_reg("vcvtps2ph")
def _b_vcvtps2ph(d, ops, idx):
    # vcvtps2ph {x,y}mm{k}{z} / m64 / m128 / m256{k}, {x,y,z}mm, imm8
    _nops(ops, 3)
    dst, src, imm = ops
    if src.kind != "vec" or imm.kind != "expr":
        raise AsmError("vcvtps2ph needs a vector register source and an imm8")
    rc = d.value(imm) & 0xFF
    if not rc & 4 and rc & 3:
        raise AsmError(f"vcvtps2ph imm8 {rc:#x}: only round to nearest even (imm8[1:0] = 0, "
                       "or imm8[2] = 1 for the default MXCSR) is supported")
    vl = src.lanes
    g = d.vsrc(src, vl)
    w = d.wdst(dst, vl)
    return lambda: w(_f2h(g()))


def _b_vpmovxwd(signed):
    def build(d, ops, idx):
        # vpmov[zs]xwd {x,y,z}mm{k}{z}, {x,y}mm / m64 / m128 / m256
        _nops(ops, 2)
        dst, src = ops
        if dst.kind != "vec":
            raise AsmError("destination must be a vector register")
        vl = dst.lanes
        g = d.wsrc(src, vl, dst.mask)
        w = d.vdst(dst)
        if signed:
            return lambda: w(g().view(np.int16).astype(np.int32).view(U32))
        return lambda: w(g().astype(U32))
    return build


BUILDERS["vpmovzxwd"] = _b_vpmovxwd(False)
BUILDERS["vpmovsxwd"] = _b_vpmovxwd(True)


@_reg("vpmovdw")
def _b_vpmovdw(d, ops, idx):
    # vpmovdw {x,y}mm{k}{z} / m64 / m128 / m256{k}, {x,y,z}mm  (truncating)
    _nops(ops, 2)
    dst, src = ops
    if src.kind != "vec":
        raise AsmError("vpmovdw source must be a vector register")
    vl = src.lanes
    g = d.vsrc(src, vl)
    w = d.wdst(dst, vl)
    return lambda: w(g().astype(U16))


def _packusdw(a, b):
    """Per 128-bit lane: the 4 signed dwords of a, then those of b, saturated to unsigned words."""
    out = []
    for lane in range(0, len(a), 4):
        words = np.concatenate([np.clip(x[lane:lane + 4].view(np.int32), 0, 0xFFFF) for x in (a, b)])
        out.append(words.astype(U16).view(U32))
    return np.concatenate(out)


BUILDERS["vpackusdw"] = _b_vbin(_packusdw)


@_reg("vdpbf16ps")
def _b_vdpbf16ps(d, ops, idx):
    # vdpbf16ps {x,y,z}mm{k}{z}, v, v / m / m32bcst  (semantics: _dpbf16)
    _nops(ops, 3)
    dst, a, b = ops
    if dst.kind != "vec" or a.kind != "vec":
        raise AsmError("vdpbf16ps needs register destination and first source")
    vl = dst.lanes
    gc, ga, gb = d.vsrc(dst, vl), d.vsrc(a, vl), d.vsrc(b, vl, dst.mask)
    w = d.vdst(dst)
    return lambda: w(_dpbf16(gc(), ga(), gb()))
