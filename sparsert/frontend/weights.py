"""Load weight matrices from files or memory into one canonical form: float32 CSR.

Canonical means sorted column indices, no duplicates, no stored zeros (-0.0 included), so that
equal matrices have equal arrays and equal digests, whichever format they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

from ..choices import VALUE_MODES
from ..errors import OptionsError, WeightError
from .matrix_market import load_mtx

SUFFIXES = (".npy", ".npz", ".mtx", ".smtx", ".safetensors")
VALUES = VALUE_MODES
# Keys scipy.sparse.save_npz writes (besides the format-specific index arrays).
_SPARSE_NPZ_KEYS = {"format", "shape", "data"}
_INDEX_LINE = re.compile(r"[0-9 \t\r]*")  # an .smtx index line: digits and blanks only


@dataclass(frozen=True, eq=False)
class Weight:
    """A canonical float32 CSR weight matrix plus where it came from."""

    matrix: scipy.sparse.csr_matrix
    name: str
    source: str
    _digest: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        m = self.matrix
        if not (scipy.sparse.issparse(m) and m.format == "csr" and m.dtype == np.float32):
            raise WeightError(
                f"{self.source}: Weight.matrix must be a float32 scipy.sparse CSR matrix, got "
                f"{type(m).__name__} of dtype {getattr(m, 'dtype', None)}; use load_weight()"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(d) for d in self.matrix.shape)

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def sparsity(self) -> float:
        m, k = self.shape
        return 1.0 - self.nnz / (m * k) if m * k else 0.0

    def digest(self) -> str:
        """sha256 over shape, structure and exact float32 value bits; fixed-width little-endian
        so it does not depend on scipy's choice of index dtype or the host byte order."""
        if self._digest is None:
            m = self.matrix
            h = hashlib.sha256(b"sparsert.weight.v1\0")
            h.update(np.asarray(self.shape, dtype="<i8").tobytes())
            h.update(np.asarray(m.indptr, dtype="<i8").tobytes())
            h.update(np.asarray(m.indices, dtype="<i8").tobytes())
            h.update(np.asarray(m.data, dtype="<f4").view("<u4").tobytes())
            object.__setattr__(self, "_digest", h.hexdigest())  # frozen: cache via object
        return self._digest

    def __repr__(self) -> str:
        return (f"Weight(name={self.name!r}, shape={self.shape}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.3f}, source={self.source!r})")


# --------------------------------------------------------------------------- finiteness


def _where(index: tuple[int, ...]) -> str:
    if len(index) == 2:
        return f"(row {index[0]}, col {index[1]})"
    return f"index {tuple(int(i) for i in index)}"


def _first_nonfinite(matrix):
    """(index, value) of the first non-finite entry in row-major order, or None."""
    if scipy.sparse.issparse(matrix):
        coo = matrix.tocoo()
        if coo.dtype.kind not in "fc":
            return None
        bad = np.flatnonzero(~np.isfinite(coo.data))
        if bad.size == 0:
            return None
        coords = [np.asarray(c) for c in coo.coords]
        first = bad[np.lexsort([c[bad] for c in coords[::-1]])[0]]  # last key is primary
        return tuple(int(c[first]) for c in coords), coo.data[first]
    a = np.asarray(matrix)
    if a.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    index = np.unravel_index(int(np.argmax(bad)), a.shape)  # argmax: first True, C order
    return tuple(int(i) for i in index), a[index]


def check_finite(matrix, *, what: str) -> None:
    """Raise WeightError naming the first NaN/Inf (row-major order) of a dense or sparse matrix."""
    found = _first_nonfinite(matrix)
    if found is not None:
        index, value = found
        raise WeightError(
            f"{what}: non-finite weight {_fmt(value)} at {_where(index)}; weights must be finite"
        )


def _fmt(value) -> str:
    return str(value)  # numpy scalars print as nan, inf, -inf, 1e+300


# --------------------------------------------------------------------------- raw loading


def _check_dtype(dtype, what: str) -> None:
    if dtype.kind in "biuf":  # bool (as 0/1), integers, floats
        return
    kind = {"c": "complex", "O": "object", "U": "string", "S": "bytes", "V": "structured/void",
            "M": "datetime", "m": "timedelta"}.get(dtype.kind, str(dtype))
    raise WeightError(
        f"{what}: weights have {kind} dtype {dtype}; expected real numbers (float, int or bool)"
    )


def _check_args(tensor, seed, values) -> None:
    if values not in VALUES:
        raise WeightError(f"values={values!r}: expected one of {', '.join(map(repr, VALUES))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WeightError(f"seed={seed!r}: expected a non-negative integer")
    if tensor is not None and not isinstance(tensor, str):
        raise WeightError(f"tensor={tensor!r}: expected a tensor name (str) or None")


def _pattern_values(nnz: int, seed: int, values: str) -> np.ndarray:
    """Values for a pattern-only matrix, in CSR order, so .smtx and pattern .mtx agree."""
    if values == "ones":
        return np.ones(nnz, dtype=np.float32)
    return np.random.default_rng(seed).standard_normal(nnz).astype(np.float32)


def _no_tensor(tensor, what: str, kind: str) -> None:
    if tensor is not None:
        raise WeightError(
            f"{what}: tensor={tensor!r} was given but {kind} holds a single unnamed matrix; "
            f"tensor= only applies to .safetensors files and plain (dense) .npz files"
        )


def _pick(names: list[str], tensor: str | None, what: str) -> str:
    listed = ", ".join(repr(n) for n in names) or "(none)"
    if tensor is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise WeightError(f"{what}: the file holds no tensors")
        raise WeightError(f"{what}: the file holds {len(names)} tensors; choose one with "
                          f"tensor=NAME (CLI: --tensor NAME). Available: {listed}")
    if tensor not in names:
        raise WeightError(f"{what}: no tensor named {tensor!r}; available: {listed}")
    return tensor


def _load_npz(path: Path, tensor, what: str):
    # Open the file here: np.load(path) leaks its handle when the zip is corrupt.
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
        keys = list(z.files)
        if _SPARSE_NPZ_KEYS <= set(keys):  # written by scipy.sparse.save_npz
            _no_tensor(tensor, what, "a scipy.sparse .npz")
            return scipy.sparse.load_npz(path)
        return z[_pick(keys, tensor, what)]


def _smtx_ints(line: str, lineno: int, what: str) -> np.ndarray:
    if not _INDEX_LINE.fullmatch(line):
        bad = next(t for t in line.split() if not t.isdigit())
        raise WeightError(f"{what}: line {lineno}: expected non-negative integers separated by "
                          f"spaces, found {bad[:40]!r}")
    return np.fromstring(line, dtype=np.int64, sep=" ")  # fast, text mode (not deprecated)


def _load_smtx(path: Path, seed: int, values: str, what: str):
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise WeightError(f"{what}: not a text .smtx file (non-ASCII byte at offset {e.start})") from e
    lines = text.split("\n")
    while len(lines) > 3 and not lines[-1].strip():  # tolerate trailing blank lines
        lines.pop()
    if len(lines) == 2:
        lines.append("")  # nnz == 0 written without a third line
    if len(lines) != 3:
        raise WeightError(f"{what}: expected 3 lines (header 'M, K, nnz', row offsets, column "
                          f"indices), found {len(lines)}")
    head = [t.strip() for t in lines[0].split(",")]
    if len(head) != 3 or not all(t.isdigit() for t in head):
        raise WeightError(f"{what}: line 1: expected header 'M, K, nnz' (three non-negative "
                          f"integers), got {lines[0][:80]!r}")
    m, k, nnz = (int(t) for t in head)
    offsets = _smtx_ints(lines[1], 2, what)
    if offsets.size != m + 1:
        raise WeightError(f"{what}: line 2: expected M+1 = {m + 1} row offsets, found {offsets.size}")
    if offsets[0] != 0:
        raise WeightError(f"{what}: line 2: row offsets must start at 0, found {offsets[0]}")
    drops = np.flatnonzero(np.diff(offsets) < 0)
    if drops.size:
        r = int(drops[0])
        raise WeightError(f"{what}: line 2: row offsets decrease at row {r} "
                          f"({offsets[r]} then {offsets[r + 1]}); they must be nondecreasing")
    if offsets[-1] != nnz:
        raise WeightError(f"{what}: line 2: last row offset is {offsets[-1]}, expected nnz = {nnz} "
                          f"from the header")
    cols = _smtx_ints(lines[2], 3, what)
    if cols.size != nnz:
        raise WeightError(f"{what}: line 3: expected nnz = {nnz} column indices, found {cols.size}")
    out = np.flatnonzero(cols >= k)
    if out.size:
        p = int(out[0])
        raise WeightError(f"{what}: line 3: column index {cols[p]} at position {p} is out of "
                          f"range for K = {k} (expected 0 <= col < {k})")
    # Values follow file order and move with their columns when sorted.
    a = scipy.sparse.csr_matrix((_pattern_values(nnz, seed, values), cols, offsets), shape=(m, k))
    a.sort_indices()
    # A repeated column within a row would silently change nnz on canonicalisation: refuse it.
    same = np.flatnonzero(np.diff(a.indices) == 0)
    dup = same[~np.isin(same + 1, offsets)]  # a step onto a row start is not a repeat
    if dup.size:
        r = int(np.searchsorted(offsets, dup[0], side="right") - 1)
        raise WeightError(f"{what}: line 3: column {a.indices[dup[0]]} appears twice in row {r}")
    return a


def _load_safetensors(path: Path, tensor, what: str):
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise WeightError(f"{what}: reading .safetensors needs the safetensors package: "
                          f"pip install safetensors") from e
    with safe_open(str(path), framework="numpy") as f:
        name = _pick(list(f.keys()), tensor, what)
        dtype = f.get_slice(name).get_dtype()
        if dtype.upper() == "BF16":
            return _read_bf16(path, name, what)  # numpy has no bfloat16
        try:
            return f.get_tensor(name)
        except (TypeError, ValueError) as e:
            raise WeightError(f"{what}: tensor {name!r} has dtype {dtype}, which numpy cannot "
                              f"read ({e}); store it as F32, F16 or BF16") from e


def _read_bf16(path: Path, name: str, what: str) -> np.ndarray:
    """Read one BF16 tensor straight from the safetensors layout: u64 header size, JSON
    header, data. bf16 is the top half of a float32, so shifting left by 16 is exact."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(n))[name]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != 2 * count:
        raise WeightError(f"{what}: tensor {name!r}: BF16 data is {end - begin} bytes, "
                          f"expected {2 * count} for shape {shape}")
    raw = np.fromfile(path, dtype="<u2", count=count, offset=8 + n + begin)
    if raw.size != count:
        raise WeightError(f"{what}: tensor {name!r}: file is truncated")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _load_file(source, tensor, seed, values):
    path = Path(os.fspath(source))
    what = str(source)
    if not path.exists():
        raise WeightError(f"{what}: no such file")
    if path.is_dir():
        raise WeightError(f"{what}: is a directory, expected a weight file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise WeightError(f"{what}: unknown weight file suffix {path.suffix!r}; supported: "
                          f"{', '.join(SUFFIXES)}")
    try:
        if suffix == ".npy":
            _no_tensor(tensor, what, "an .npy file")
            with open(path, "rb") as fh:
                return np.load(fh, allow_pickle=False)
        if suffix == ".npz":
            return _load_npz(path, tensor, what)
        if suffix == ".mtx":
            _no_tensor(tensor, what, "a Matrix Market file")
            return load_mtx(path, what, pattern_values=lambda nnz: _pattern_values(nnz, seed, values))
        if suffix == ".smtx":
            _no_tensor(tensor, what, "an .smtx file")
            return _load_smtx(path, seed, values, what)
        return _load_safetensors(path, tensor, what)
    except WeightError:
        raise
    except Exception as e:  # numpy/scipy/safetensors parse errors: name the file, keep the cause
        raise WeightError(f"{what}: cannot read as {suffix} ({type(e).__name__}: {e})") from e


def load_array(source, *, tensor: str | None = None, seed: int = 0, values: str = "normal"):
    """Load a weight of any rank as stored: a dense ndarray (dtype as stored, except BF16 which
    becomes float32) or a 2-D scipy.sparse.csr_matrix (not yet canonical, dtype as stored).

    source: a path (.npy .npz .mtx .smtx .safetensors), a numpy array, or a scipy.sparse
    matrix/array. tensor picks a named array in .npz/.safetensors; seed and values fill in
    pattern-only files (.smtx, pattern .mtx).
    """
    _check_args(tensor, seed, values)
    if isinstance(source, (str, os.PathLike)):
        a = _load_file(source, tensor, seed, values)
        what = str(source)
    elif isinstance(source, (np.ndarray, np.generic)):
        _no_tensor(tensor, "<numpy array>", "an in-memory array")
        a, what = np.asarray(source), "<numpy array>"  # np.matrix, scalars -> plain ndarray
    elif scipy.sparse.issparse(source):
        _no_tensor(tensor, "<scipy.sparse>", "an in-memory matrix")
        a, what = source, "<scipy.sparse>"
    else:
        raise WeightError(f"weight source: expected a file path, a numpy array or a scipy.sparse "
                          f"matrix, got {type(source).__module__}.{type(source).__qualname__}")
    _check_dtype(a.dtype, what)
    if scipy.sparse.issparse(a):
        if a.ndim != 2:
            raise WeightError(f"{what}: expected a 2-D sparse matrix, got shape {a.shape}")
        a = scipy.sparse.csr_matrix(a)
    return a


# --------------------------------------------------------------------------- canonical weight


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def load_weight(source, *, tensor: str | None = None, seed: int = 0,
                values: str = "normal") -> Weight:
    """Load a 2-D [M, K] weight as a canonical float32 CSR Weight; NaN/Inf (also values that
    overflow float32) are refused with their (row, col). A Weight is returned unchanged."""
    if isinstance(source, Weight):
        _no_tensor(tensor, source.source, "a Weight")
        return source
    a = load_array(source, tensor=tensor, seed=seed, values=values)
    if isinstance(source, (str, os.PathLike)):
        src = str(source)
        name = _sanitise(Path(os.fspath(source)).stem) + ("_" + _sanitise(tensor) if tensor else "")
    else:
        src = "<scipy.sparse>" if scipy.sparse.issparse(source) else "<numpy array>"
        name = "weight"
    what = f"{src} (tensor {tensor!r})" if tensor else src

    if a.ndim in (3, 4):
        raise WeightError(
            f"{what}: weight has shape {a.shape} (rank {a.ndim}), which looks like a convolution "
            f"weight; load_weight expects a 2-D [M, K] matrix. Compile convolutions with "
            f"sparsert.compile_conv2d(...) (CLI: --conv)")
    if a.ndim != 2:
        hint = "; reshape to (1, K) or (M, 1) if this is a single row or column" if a.ndim == 1 else ""
        raise WeightError(f"{what}: expected a 2-D [M, K] weight matrix, got rank {a.ndim} with "
                          f"shape {a.shape}{hint}")
    if 0 in a.shape:
        raise WeightError(f"{what}: weight has an empty dimension (shape {a.shape}); expected "
                          f"M >= 1 and K >= 1")

    # Canonicalise in a float type at least as wide as float64, then narrow once, so that ints
    # are exact, float16 sums cannot overflow, and a value that overflows float32 is reported.
    wide = np.promote_types(a.dtype, np.float64)
    m = scipy.sparse.csr_matrix(a, dtype=wide, copy=True)  # copy: never mutate the caller's
    m.sum_duplicates()  # also sorts indices
    check_finite(m, what=what)
    with np.errstate(over="ignore"):  # overflow is reported below, with its position
        out = m.astype(np.float32)
    over = np.flatnonzero(~np.isfinite(out.data))
    if over.size:
        i = int(over[0])  # canonical CSR order is row-major order
        r = int(np.searchsorted(m.indptr, i, side="right") - 1)
        raise WeightError(
            f"{what}: non-finite weight {_fmt(m.data[i])} at (row {r}, col {int(m.indices[i])}) "
            f"after conversion to float32 (overflows; largest float32 is "
            f"{float(np.finfo(np.float32).max):.7g}); weights must be finite")
    out.eliminate_zeros()  # explicit zeros, -0.0 (== 0), and values that underflow to 0
    if max(out.nnz, out.shape[1]) < 2**31:  # int32 indices whenever they fit, for the kernels
        out.indices = out.indices.astype(np.int32, copy=False)
        out.indptr = out.indptr.astype(np.int32, copy=False)
    out.has_canonical_format = True
    return Weight(matrix=out, name=name or "weight", source=src)


# --------------------------------------------------------------------------- helpers of compile()


def as_weight(weight, *, tensor: str | None = None, seed: int = 0, values: str = "normal") -> Weight:
    return weight if isinstance(weight, Weight) else load_weight(weight, tensor=tensor, seed=seed, values=values)


def load_bias(bias, m: int) -> np.ndarray | None:
    """Bias from an array, or a file in any weight format (flattened to length M)."""
    if bias is None:
        return None
    arr = bias if isinstance(bias, np.ndarray) else load_array(bias)
    if not isinstance(arr, np.ndarray):
        arr = arr.toarray()
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if arr.shape != (m,):
        raise OptionsError(f"bias: expected {m} values (one per row of the weight), got {arr.size}")
    check_finite(arr.reshape(1, -1), what="bias")
    return arr
