"""The simulated flat 64-bit address space: :class:`Memory` maps numpy arrays
at addresses and serves the scalar, vector, masked and element-wise reads
and writes of the executing instructions, raising :class:`MemoryFault` for
anything outside the mapped (or writable) regions.
"""

import bisect

import numpy as np

from .constants import M64, U8, U32, USER_BASE
from .errors import MemoryFault


class _Region:
    __slots__ = ("start", "end", "u8", "mv", "writable", "name", "arr")

    def __init__(self, start, arr, writable, name):
        self.arr = arr
        self.u8 = arr.reshape(-1).view(U8)
        self.mv = memoryview(self.u8)
        self.start = start
        self.end = start + self.u8.size
        self.writable = writable
        self.name = name


class Memory:
    """Flat 64-bit address space made of mapped numpy arrays.

    ``map(arr, addr=None, writable=None, name=None) -> address``.  Without an
    address the array is placed at a fresh 4 KiB aligned address followed by at
    least one unmapped guard page.  Every access outside the mapped regions
    raises :class:`MemoryFault`.
    """

    def __init__(self):
        self._regions = []      # sorted by start
        self._starts = []
        self._last = None
        self._next = USER_BASE
        self._attached = {}

    # mapping ------------------------------------------------------------
    def map(self, arr, addr=None, writable=None, name=None, align=4096):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Memory.map expects a numpy array")
        if not arr.flags.c_contiguous:
            raise ValueError("Memory.map: array must be C-contiguous")
        if writable is None:
            writable = bool(arr.flags.writeable)
        elif writable and not arr.flags.writeable:
            raise ValueError("Memory.map: writable=True for a read-only array")
        n = arr.nbytes
        if addr is None:
            a = -(-self._next // align) * align
            addr = a
            self._next = (a + n + 4096 + 0xFFFF) & ~0xFFFF   # >= 1 guard page
        addr = int(addr)
        if addr < 0 or addr + n > M64 + 1:
            raise ValueError("Memory.map: bad address %#x" % addr)
        for r in self._regions:
            if addr < r.end and r.start < addr + n and n and r.end > r.start:
                raise ValueError("Memory.map: [%#x, %#x) overlaps %s [%#x, %#x)"
                                 % (addr, addr + n, r.name, r.start, r.end))
        reg = _Region(addr, arr, writable, name or "array@%#x" % addr)
        i = bisect.bisect(self._starts, addr)
        self._regions.insert(i, reg)
        self._starts.insert(i, addr)
        self._last = None
        return addr

    def unmap(self, addr):
        for i, r in enumerate(self._regions):
            if r.start == addr:
                del self._regions[i]
                del self._starts[i]
                self._last = None
                for k, v in list(self._attached.items()):
                    if v == addr:
                        del self._attached[k]
                return
        raise ValueError("Memory.unmap: nothing mapped at %#x" % addr)

    def _attach(self, key, arr, addr, writable, name):
        if key in self._attached:
            return
        self.map(arr, addr=addr, writable=writable, name=name)
        self._attached[key] = addr

    def regions(self):
        return [(r.start, r.end, r.name, r.writable) for r in self._regions]

    # lookup -------------------------------------------------------------
    def _fault(self, addr, n, what):
        near = ""
        i = bisect.bisect(self._starts, addr) - 1
        if 0 <= i < len(self._regions):
            r = self._regions[i]
            near = " (nearest region below: %s [%#x, %#x), offset %+d)" % (
                r.name, r.start, r.end, addr - r.start)
        return MemoryFault("%s of %d byte(s) at unmapped address %#x%s"
                           % (what, n, addr, near), addr, n)

    def _find(self, addr, n, what="read"):
        r = self._last
        if r is not None and r.start <= addr and addr + n <= r.end:
            return r
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0:
            r = self._regions[i]
            if addr + n <= r.end:
                self._last = r
                return r
        raise self._fault(addr, n, what)

    def _findw(self, addr, n):
        r = self._find(addr, n, "write")
        if not r.writable:
            raise MemoryFault("write of %d byte(s) at %#x into read-only %s"
                              % (n, addr, r.name), addr, n)
        return r

    def _contains(self, addr, n, write=False):
        i = bisect.bisect(self._starts, addr) - 1
        if i < 0:
            return False
        r = self._regions[i]
        return addr + n <= r.end and (r.writable or not write)

    # scalar access --------------------------------------------------------
    def read_int(self, addr, n):
        r = self._find(addr, n)
        o = addr - r.start
        return int.from_bytes(r.mv[o:o + n], "little")

    def write_int(self, addr, n, v):
        r = self._findw(addr, n)
        o = addr - r.start
        r.mv[o:o + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def read_bytes(self, addr, n):
        r = self._find(addr, n)
        o = addr - r.start
        return bytes(r.mv[o:o + n])

    def write_bytes(self, addr, data):
        n = len(data)
        r = self._findw(addr, n)
        o = addr - r.start
        r.mv[o:o + n] = bytes(data)

    # vector access (uint32 lanes) -------------------------------------------
    def read_vec(self, addr, count):
        n = 4 * count
        r = self._find(addr, n)
        o = addr - r.start
        return r.u8[o:o + n].view(U32).copy()

    def write_vec(self, addr, vals):
        n = 4 * len(vals)
        r = self._findw(addr, n)
        o = addr - r.start
        r.u8[o:o + n] = vals.view(U8)

    def read_vec_masked(self, addr, count, m):
        """Lanes with m False read as 0 and are not accessed."""
        n = 4 * count
        if self._contains(addr, n):
            r = self._find(addr, n)
            o = addr - r.start
            v = r.u8[o:o + n].view(U32)
            return np.where(m, v, U32(0)).astype(U32)
        out = np.zeros(count, U32)
        for i in np.flatnonzero(m):
            out[i] = self.read_int(addr + 4 * int(i), 4)
        return out

    def write_vec_masked(self, addr, vals, m):
        """Only lanes with m True are written."""
        n = 4 * len(vals)
        if self._contains(addr, n, write=True):
            r = self._find(addr, n)
            o = addr - r.start
            cur = r.u8[o:o + n].view(U32)
            cur[m] = vals[m]
            return
        for i in np.flatnonzero(m):
            self.write_int(addr + 4 * int(i), 4, int(vals[i]))

    # element access of any width (e.g. the words of vcvtph2ps / vpmovdw) ----
    def read_elems(self, addr, count, dtype, m=None):
        """count elements of dtype at addr (a copy).  With m (bool array),
        elements with m False read as 0 and are not accessed."""
        dt = np.dtype(dtype)
        isz = dt.itemsize
        n = isz * count
        if m is None or self._contains(addr, n):
            r = self._find(addr, n)
            o = addr - r.start
            v = r.u8[o:o + n].view(dt)
            return v.copy() if m is None else np.where(m, v, dt.type(0)).astype(dt)
        out = np.zeros(count, dt)
        for i in np.flatnonzero(m):
            out[i] = self.read_int(addr + isz * int(i), isz)
        return out

    def write_elems(self, addr, vals, m=None):
        """Store the elements of vals at addr; with m only those with m True
        (the others are not accessed)."""
        isz = vals.dtype.itemsize
        n = isz * len(vals)
        if m is None or self._contains(addr, n, write=True):
            r = self._findw(addr, n)
            o = addr - r.start
            cur = r.u8[o:o + n].view(vals.dtype)
            if m is None:
                cur[...] = vals
            else:
                cur[m] = vals[m]
            return
        for i in np.flatnonzero(m):
            self.write_int(addr + isz * int(i), isz, int(vals[i]))
