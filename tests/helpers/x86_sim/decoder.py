"""CPU register state (:class:`_State`: general-purpose, vector and mask
registers, lazy flags, memory) and the :class:`Decoder` that compiles parsed
operands into fast getter / setter closures bound to that state, including
the k-mask lane selection (``_maskbits``) shared with the builders.
"""

import numpy as np

from .constants import M32, M64, U16, U32
from .errors import AsmError
from .flags import LOG
from .operands import eval_expr

_AR16 = np.arange(16, dtype=np.int64)
_MASKCACHE = {}


def _maskbits(k, vl):
    key = (k, vl)
    m = _MASKCACHE.get(key)
    if m is None:
        m = ((k >> _AR16[:vl]) & 1).astype(bool)
        m.setflags(write=False)
        if len(_MASKCACHE) < 200000:
            _MASKCACHE[key] = m
    return m


class _State:
    def __init__(self):
        self.R = [0] * 16
        self.V = np.zeros((32, 16), U32)
        self.K = [0] * 8
        self.FL = [(LOG, 0, 0, 1, 1)]
        self.mem = None

    def reset(self):
        for i in range(16):
            self.R[i] = 0
        self.V[:] = 0
        for i in range(8):
            self.K[i] = 0
        self.FL[0] = (LOG, 0, 0, 1, 1)


class Decoder:
    """Compiles operands to fast getter/setter closures bound to a _State."""

    def __init__(self, st, symbols, text_labels):
        self.st = st
        self.symbols = symbols
        self.text_labels = text_labels

    # generic ---------------------------------------------------------------
    def value(self, op):
        return eval_expr(op.expr, self.symbols)

    def target(self, op):
        """Jump/call target: label -> instruction index (None if indirect)."""
        if op.kind == "expr":
            name = op.expr.strip()
            if name in self.text_labels:
                return self.text_labels[name]
            raise AsmError("jump target %r is not a label in the text" % name)
        return None

    def addr(self, op):
        R = self.st.R
        disp = eval_expr(op.expr, self.symbols, "displacement") if op.expr else 0
        b, i, s = op.base, op.index, op.scale
        if op.rip:
            if b is not None or i is not None or not op.expr:
                raise AsmError("unsupported rip-relative operand %r" % op.text)
        if b is None and i is None:
            a = disp & M64
            return lambda: a
        if i is None:
            if disp == 0:
                return lambda: R[b]
            return lambda: (R[b] + disp) & M64
        if b is None:
            return lambda: (R[i] * s + disp) & M64
        if disp == 0:
            return lambda: (R[b] + R[i] * s) & M64
        return lambda: (R[b] + R[i] * s + disp) & M64

    # integer operands ---------------------------------------------------------
    def get(self, op, w):
        st, R = self.st, self.st.R
        if op.kind == "gpr":
            i, rb = op.num, op.bits
            if rb == 64:
                return lambda: R[i]
            m = (1 << rb) - 1
            if w > rb:   # should not happen for well-formed code
                raise AsmError("operand size mismatch for %r" % op.text)
            return lambda: R[i] & m
        if op.kind == "expr":
            v = self.value(op) & ((1 << w) - 1)
            return lambda: v
        if op.kind == "mem":
            a = self.addr(op)
            n = (op.size or w // 8)
            return lambda: st.mem.read_int(a(), n)
        raise AsmError("operand %r not usable here" % op.text)

    def set(self, op, w):
        st, R = self.st, self.st.R
        if op.kind == "gpr":
            i, rb = op.num, op.bits
            if rb == 64:
                def s(v):
                    R[i] = v & M64
            elif rb == 32:
                def s(v):
                    R[i] = v & M32
            else:
                m = (1 << rb) - 1

                def s(v):
                    R[i] = (R[i] & ~m & M64) | (v & m)
            return s
        if op.kind == "mem":
            a = self.addr(op)
            n = (op.size or w // 8)

            def s(v):
                st.mem.write_int(a(), n, v)
            return s
        raise AsmError("operand %r is not writable" % op.text)

    # vector operands --------------------------------------------------------
    def vsrc(self, op, vl, mask=None):
        """Getter returning a uint32 array of vl lanes.  mask: k register
        number whose zero bits suppress memory accesses (fault suppression)."""
        st, V, K = self.st, self.st.V, self.st.K
        if op.kind == "vec":
            r = op.num
            if op.lanes < vl:
                raise AsmError("source %r narrower than destination" % op.text)
            view = V[r, :vl]
            return lambda: view
        if op.kind == "mem":
            a = self.addr(op)
            if op.bcst is not None:
                if op.bcst != "auto" and op.bcst != vl:
                    raise AsmError("{1to%d} does not match vector length %d"
                                   % (op.bcst, vl))
                if op.size not in (None, 4):
                    raise AsmError("broadcast element must be a DWORD: %r" % op.text)
                if mask is None:
                    return lambda: np.full(vl, st.mem.read_int(a(), 4), U32)

                def g():
                    if K[mask] & ((1 << vl) - 1) == 0:
                        return np.zeros(vl, U32)
                    return np.full(vl, st.mem.read_int(a(), 4), U32)
                return g
            if op.size not in (None, 4 * vl):
                raise AsmError("memory operand size does not match: %r" % op.text)
            if mask is None:
                return lambda: st.mem.read_vec(a(), vl)
            return lambda: st.mem.read_vec_masked(a(), vl, _maskbits(K[mask], vl))
        raise AsmError("operand %r is not a vector source" % op.text)

    def vdst(self, op, vl=None):
        """Setter for a vector register destination honouring {k} / {z};
        lanes above vl are zeroed (VEX/EVEX semantics)."""
        if op.kind != "vec":
            raise AsmError("destination %r is not a vector register" % op.text)
        V, K = self.st.V, self.st.K
        d = op.num
        vl = vl or op.lanes
        k, z = op.mask, op.zero
        lo, hi = V[d, :vl], V[d, vl:]
        zero = U32(0)
        if k is None:
            if z:
                raise AsmError("{z} without a mask in %r" % op.text)
            if vl == 16:
                def w(res):
                    lo[...] = res
            else:
                def w(res):
                    lo[...] = res
                    hi[...] = zero
            return w
        if z:
            def w(res):
                lo[...] = np.where(_maskbits(K[k], vl), res, zero)
                hi[...] = zero
        else:
            def w(res):
                lo[...] = np.where(_maskbits(K[k], vl), res, lo)
                hi[...] = zero
        return w

    # 16-bit element operands (half floats, words) ------------------------------
    @staticmethod
    def _wreg_ok(op, n):
        # the register that holds n words: xmm for up to 8, ymm 16, zmm 32
        if op.lanes != max(4, n // 2):
            raise AsmError(f"register {op.text!r} does not hold {n} words")

    def wsrc(self, op, n, mask=None):
        """Getter returning a uint16 array of n words: the low words of a vector
        register, or 2n bytes of memory.  mask: k register whose zero bits
        suppress the matching word reads (fault suppression)."""
        st, V, K = self.st, self.st.V, self.st.K
        if op.kind == "vec":
            self._wreg_ok(op, n)
            view = V[op.num].view(U16)[:n]
            return lambda: view
        if op.kind == "mem":
            if op.bcst is not None:
                raise AsmError(f"broadcast not allowed here: {op.text!r}")
            if op.size not in (None, 2 * n):
                raise AsmError(f"memory operand size does not match: {op.text!r}")
            a = self.addr(op)
            if mask is None:
                return lambda: st.mem.read_elems(a(), n, U16)
            return lambda: st.mem.read_elems(a(), n, U16, _maskbits(K[mask], n))
        raise AsmError(f"operand {op.text!r} is not a vector source")

    def wdst(self, op, n):
        """Setter for n word results: a vector register (low n words, {k}/{z}
        per word, the rest of the register zeroed) or memory (2n bytes; with
        {k} only the selected words are written, the others not accessed)."""
        st, V, K = self.st, self.st.V, self.st.K
        k, z = op.mask, op.zero
        if op.kind == "vec":
            self._wreg_ok(op, n)
            row = V[op.num].view(U16)
            lo, hi = row[:n], row[n:]
            zero = U16(0)
            if k is None:
                if z:
                    raise AsmError(f"{{z}} without a mask in {op.text!r}")

                def w(res):
                    lo[...] = res
                    hi[...] = zero
            elif z:
                def w(res):
                    lo[...] = np.where(_maskbits(K[k], n), res, zero)
                    hi[...] = zero
            else:
                def w(res):
                    lo[...] = np.where(_maskbits(K[k], n), res, lo)
                    hi[...] = zero
            return w
        if op.kind == "mem":
            if z:
                raise AsmError("zero-masking is not allowed for stores")
            if op.bcst is not None:
                raise AsmError("broadcast not allowed for stores")
            if op.size not in (None, 2 * n):
                raise AsmError(f"memory operand size does not match: {op.text!r}")
            a = self.addr(op)
            if k is None:
                return lambda res: st.mem.write_elems(a(), res)
            return lambda res: st.mem.write_elems(a(), res, _maskbits(K[k], n))
        raise AsmError(f"operand {op.text!r} is not a destination")
