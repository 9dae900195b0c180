"""Matrix Market files, read and checked by sparsert itself: scipy's C reader (fast_matrix_market)
crashes the interpreter on some malformed files, which a loader must never do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse

from ..errors import WeightError

_MM_FIELDS = ("real", "integer", "pattern", "complex", "double")
_MM_SYMMETRY = ("general", "symmetric", "skew-symmetric", "hermitian")


def load_mtx(path: Path, what: str, *, pattern_values):
    """Matrix Market, read and checked here in full (scipy's C reader crashes the interpreter on
    some malformed files): header, size line, then exactly the promised entries with in-range
    indices. Coordinate or array format; general, symmetric or skew-symmetric; real, integer or
    pattern (values drawn as for .smtx)."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise WeightError(f"{what}: not a text Matrix Market file (non-ASCII byte at offset {e.start})") from e
    lines = text.split("\n")
    head = lines[0].strip().lower().split()
    if len(head) != 5 or head[0] != "%%matrixmarket" or head[1] != "matrix":
        raise WeightError(f"{what}: line 1: expected '%%MatrixMarket matrix <format> <field> <symmetry>', "
                          f"got {lines[0][:80]!r}")
    fmt, field_, symmetry = head[2:]
    if fmt not in ("coordinate", "array") or field_ not in _MM_FIELDS or symmetry not in _MM_SYMMETRY:
        raise WeightError(f"{what}: line 1: unsupported Matrix Market kind {fmt} {field_} {symmetry}")
    if field_ == "complex" or symmetry == "hermitian":
        raise WeightError(f"{what}: weights have complex dtype (Matrix Market '{field_} {symmetry}'); "
                          f"expected real numbers (float, int or bool)")
    body = [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("%")]
    if not body:
        raise WeightError(f"{what}: no size line after the header")
    size = body[0].split()
    want = 3 if fmt == "coordinate" else 2
    if len(size) != want or not all(s.isdigit() for s in size):
        raise WeightError(f"{what}: size line: expected {want} non-negative integers, got {body[0][:80]!r}")
    m, k = int(size[0]), int(size[1])
    if symmetry != "general" and m != k:
        raise WeightError(f"{what}: a {symmetry} matrix must be square, got {m} x {k}")
    try:
        flat = np.array(" ".join(body[1:]).split(), dtype=np.float64) if len(body) > 1 else np.zeros(0)
    except ValueError:
        raise WeightError(f"{what}: entries: expected numbers") from None
    if fmt == "array":
        count = m * k if symmetry == "general" else (m * (m + 1)) // 2 - (m if symmetry == "skew-symmetric" else 0)
        if field_ == "pattern" or flat.size != count:
            raise WeightError(f"{what}: array format: expected {count} values, found {flat.size}")
        if symmetry == "general":
            return flat.reshape(k, m).T  # column-major
        out = np.zeros((m, m))
        cols, rows = np.triu_indices(m, 0 if symmetry == "symmetric" else 1)  # lower triangle, column-major
        order = np.lexsort((rows, cols))
        rows, cols = rows[order], cols[order]
        out[rows, cols] = flat
        out[cols, rows] = flat if symmetry == "symmetric" else -flat
        return out
    nnz = int(size[2])
    per = 2 if field_ == "pattern" else 3
    if flat.size != nnz * per:
        raise WeightError(f"{what}: expected {nnz} entries of {per} numbers (the size line's count), "
                          f"found {flat.size} numbers")
    entries = flat.reshape(nnz, per)
    ij = entries[:, :2]
    if nnz and (not np.all(ij == np.round(ij)) or ij[:, 0].min() < 1 or ij[:, 0].max() > m
                or ij[:, 1].min() < 1 or ij[:, 1].max() > k):
        raise WeightError(f"{what}: entries: indices must be integers within 1..{m} x 1..{k}")
    r, c = ij[:, 0].astype(np.int64) - 1, ij[:, 1].astype(np.int64) - 1
    vals = np.ones(nnz) if field_ == "pattern" else entries[:, 2]
    if symmetry != "general":
        off = r != c
        r, c = np.concatenate([r, c[off]]), np.concatenate([c, r[off]])
        vals = np.concatenate([vals, vals[off] if symmetry == "symmetric" else -vals[off]])
    a = scipy.sparse.csr_matrix((vals, (r, c)), shape=(m, k))
    a.sum_duplicates()
    if field_ == "pattern":
        a.data = pattern_values(a.nnz)
    return a
