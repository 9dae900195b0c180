"""sparsert.weights: every format loads to the same canonical CSR; every bad input is a WeightError."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from sparsert.errors import WeightError
from sparsert.frontend.weights import Weight, check_finite, load_array, load_weight


def _dlmc_root() -> Path | None:
    for shared in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")):
        if (shared / "dlmc").is_dir():
            return shared / "dlmc"
    return None


DENSE = np.array([[0.0, 1.5, 0.0, -2.0],
                  [0.0, 0.0, 0.0, 0.0],
                  [3.25, 0.0, -0.0, 4.0]], dtype=np.float32)


def _assert_same_csr(w: Weight, dense: np.ndarray) -> None:
    m = w.matrix
    assert isinstance(m, scipy.sparse.csr_matrix) and m.dtype == np.float32
    assert m.has_canonical_format and m.has_sorted_indices
    ref = scipy.sparse.csr_matrix(dense.astype(np.float32))
    ref.eliminate_zeros()
    assert w.shape == dense.shape and w.nnz == ref.nnz
    np.testing.assert_array_equal(m.indptr, ref.indptr)
    np.testing.assert_array_equal(m.indices, ref.indices)
    np.testing.assert_array_equal(m.data, ref.data)
    assert not np.any(m.data == 0)


def _write_smtx(path: Path, m: int, k: int, offsets, cols) -> Path:
    path.write_text(f"{m}, {k}, {len(cols)}\n{' '.join(map(str, offsets))} \n"
                    f"{' '.join(map(str, cols))} \n")
    return path


# --------------------------------------------------------------------------- round trips


def test_in_memory_dense_and_sparse(tmp_path):
    w = load_weight(DENSE)
    _assert_same_csr(w, DENSE)
    assert (w.name, w.source) == ("weight", "<numpy array>")
    assert w.sparsity == pytest.approx(1 - 4 / 12)
    for fmt in ("csr", "csc", "coo", "lil", "dok", "bsr"):
        ws = load_weight(scipy.sparse.csr_matrix(DENSE).asformat(fmt))
        _assert_same_csr(ws, DENSE)
        assert ws.source == "<scipy.sparse>" and ws.digest() == w.digest()
    _assert_same_csr(load_weight(scipy.sparse.csr_array(DENSE)), DENSE)


def test_file_formats_round_trip(tmp_path):
    want = load_weight(DENSE).digest()
    np.save(tmp_path / "a.npy", DENSE)
    np.savez(tmp_path / "b.npz", DENSE)
    scipy.sparse.save_npz(tmp_path / "c.npz", scipy.sparse.csr_matrix(DENSE))
    scipy.sparse.save_npz(tmp_path / "c2.npz", scipy.sparse.coo_matrix(DENSE), compressed=False)
    scipy.io.mmwrite(tmp_path / "d.mtx", scipy.sparse.coo_matrix(DENSE))
    scipy.io.mmwrite(tmp_path / "e.mtx", DENSE.astype(np.float64))  # dense array format
    with open(tmp_path / "f.NPZ", "wb") as fh:  # suffix case-insensitive; np.savez would add .npz
        np.savez(fh, w=DENSE)
    for name in ("a.npy", "b.npz", "c.npz", "c2.npz", "d.mtx", "e.mtx", "f.NPZ"):
        w = load_weight(tmp_path / name)
        _assert_same_csr(w, DENSE)
        assert w.digest() == want, name
        assert w.source == str(tmp_path / name) and w.name == Path(name).stem


def test_safetensors_round_trip(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"layer.0/weight": DENSE, "bias": np.ones(4, np.float32),
                  "half": DENSE.astype(np.float16)}, tmp_path / "m.safetensors")
    w = load_weight(tmp_path / "m.safetensors", tensor="layer.0/weight")
    _assert_same_csr(w, DENSE)
    assert w.name == "m_layer_0_weight"
    _assert_same_csr(load_weight(tmp_path / "m.safetensors", tensor="half"), DENSE)
    st.save_file({"only": DENSE}, tmp_path / "one.safetensors")
    _assert_same_csr(load_weight(tmp_path / "one.safetensors"), DENSE)
    assert load_array(tmp_path / "m.safetensors", tensor="bias").shape == (4,)


def test_safetensors_bf16(tmp_path):
    pytest.importorskip("safetensors")
    # numpy has no bfloat16, so write the file by hand: u64 header size, JSON header, data.
    bits = (DENSE.view(np.uint32) >> 16).astype("<u2")  # DENSE values are exact in bf16
    header = json.dumps({"w": {"dtype": "BF16", "shape": list(DENSE.shape),
                               "data_offsets": [0, bits.nbytes]}}).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    _assert_same_csr(load_weight(path), DENSE)


def test_mtx_pattern_matches_smtx(tmp_path):
    pattern = scipy.sparse.csr_matrix(DENSE != 0)
    scipy.io.mmwrite(tmp_path / "p.mtx", scipy.sparse.coo_matrix(pattern), field="pattern")
    _write_smtx(tmp_path / "p.smtx", 3, 4, pattern.indptr, pattern.indices)
    a, b = load_weight(tmp_path / "p.mtx", seed=5), load_weight(tmp_path / "p.smtx", seed=5)
    assert a.digest() == b.digest() and a.nnz == 4
    np.testing.assert_array_equal(a.matrix.indices, pattern.indices)
    expected = np.random.default_rng(5).standard_normal(4).astype(np.float32)
    np.testing.assert_array_equal(b.matrix.data, expected)
    ones = load_weight(tmp_path / "p.mtx", values="ones")
    _assert_same_csr(ones, pattern.toarray().astype(np.float32))


def test_smtx_values_seed_and_ones(tmp_path):
    # unsorted columns in row 0: values follow their columns when sorted
    p = _write_smtx(tmp_path / "s.smtx", 2, 5, [0, 3, 4], [4, 0, 2, 1])
    a, b, c = (load_weight(p, seed=s) for s in (0, 0, 1))
    assert a.digest() == b.digest() and a.digest() != c.digest()
    np.testing.assert_array_equal(a.matrix.indices, [0, 2, 4, 1])
    v = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    np.testing.assert_array_equal(a.matrix.data, v[[1, 2, 0, 3]])
    ones = load_weight(p, values="ones")
    np.testing.assert_array_equal(ones.matrix.data, np.ones(4, np.float32))
    with pytest.raises(WeightError, match="values='uniform'"):
        load_weight(p, values="uniform")


def test_smtx_empty_pattern_and_empty_third_line(tmp_path):
    p = tmp_path / "z.smtx"
    p.write_text("2, 3, 0\n0 0 0\n\n")
    a = load_array(p)
    assert a.shape == (2, 3) and a.nnz == 0
    p.write_text("2, 3, 0\n0 0 0\n")
    assert load_weight(p).nnz == 0


def test_canonicalisation_zeros_duplicates_sorting():
    # duplicates summed (including to zero, which is then dropped), -0.0 and zeros dropped
    coo = scipy.sparse.coo_matrix(
        (np.array([1.0, 2.0, -0.0, 0.0, 5.0, -5.0, 7.0]),
         (np.array([0, 0, 1, 1, 2, 2, 2]), np.array([3, 3, 0, 1, 2, 2, 0]))), shape=(3, 4))
    w = load_weight(coo)
    np.testing.assert_array_equal(w.matrix.indptr, [0, 1, 1, 2])
    np.testing.assert_array_equal(w.matrix.indices, [3, 0])
    np.testing.assert_array_equal(w.matrix.data, np.array([3.0, 7.0], np.float32))
    # unsorted indices in a CSR input come out sorted, and the caller's matrix is untouched
    csr = scipy.sparse.csr_matrix((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2])),
                                  shape=(1, 3))
    w = load_weight(csr)
    np.testing.assert_array_equal(w.matrix.indices, [0, 2])
    np.testing.assert_array_equal(csr.indices, [2, 0])
    # a value that underflows float32 is a zero after conversion, so it is dropped too
    assert load_weight(np.array([[1e-60, 1.0]])).nnz == 1


def test_dtypes():
    ints = np.array([[0, 3], [-2, 0]], dtype=np.int64)
    w = load_weight(ints)
    assert w.matrix.dtype == np.float32
    np.testing.assert_array_equal(w.matrix.toarray(), ints.astype(np.float32))
    assert load_weight(np.eye(3, dtype=bool)).nnz == 3
    assert load_weight(DENSE.astype(np.float16)).digest() == load_weight(DENSE).digest()
    with pytest.raises(WeightError, match="complex"):
        load_weight(np.ones((2, 2), np.complex64))
    with pytest.raises(WeightError, match="object"):
        load_weight(np.array([[1, None]], dtype=object))


def test_digest():
    base = load_weight(DENSE)
    assert base.digest() == load_weight(DENSE.copy()).digest() == base.digest()
    assert re.fullmatch(r"[0-9a-f]{64}", base.digest())
    flipped = DENSE.copy()
    flipped.view(np.uint32)[0, 1] ^= 1  # one mantissa bit of 1.5
    assert load_weight(flipped).digest() != base.digest()
    # same values, different shape -> different digest
    assert load_weight(np.pad(DENSE, ((0, 0), (0, 1)))).digest() != base.digest()
    assert load_weight(np.pad(DENSE, ((0, 1), (0, 0)))).digest() != base.digest()


def test_weight_requires_float32_csr():
    with pytest.raises(WeightError, match="float32"):
        Weight(matrix=scipy.sparse.csr_matrix(np.eye(2)), name="x", source="t")
    w = load_weight(DENSE)
    assert load_weight(w) is w


def test_load_array_keeps_rank(tmp_path):
    conv = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    np.save(tmp_path / "conv.npy", conv)
    a = load_array(tmp_path / "conv.npy")
    assert a.shape == conv.shape and np.array_equal(a, conv)
    assert load_array(np.float32(3.0)).shape == ()


# --------------------------------------------------------------------------- DLMC


def test_all_dlmc_files_load():
    root = _dlmc_root()
    if root is None:
        pytest.skip("DLMC subset not found (expected shared/dlmc beside the repo or /work/shared)")
    files = sorted(root.glob("**/*.smtx"))
    assert len(files) == 301
    for f in files:
        with open(f) as fh:
            m, k, nnz = (int(t) for t in fh.readline().split(","))
        w = load_weight(f, values="ones")
        assert w.shape == (m, k) and w.nnz == nnz, f


# --------------------------------------------------------------------------- bad input


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(WeightError, match=r"nope\.npy: no such file"):
        load_weight(tmp_path / "nope.npy")
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(WeightError, match=r"w\.txt: unknown weight file suffix.*\.npy.*\.smtx"):
        load_weight(tmp_path / "w.txt")
    with pytest.raises(WeightError, match="is a directory"):
        load_weight(tmp_path)
    with pytest.raises(WeightError, match="expected a file path, a numpy array"):
        load_weight([[1.0, 2.0]])


@pytest.mark.parametrize("name,content", [
    ("bad.npy", b"\x93NUMPY garbage"),
    ("bad.npy", b"not numpy at all"),
    ("bad.npz", b"PK\x03\x04broken zip"),
    ("bad.mtx", b"%%MatrixMarket matrix coordinate real general\n2 2 x\n"),
    ("bad.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}"),
])
def test_corrupt_files(tmp_path, name, content):
    if name.endswith(".safetensors"):
        pytest.importorskip("safetensors")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(WeightError, match=re.escape(name)):
        load_weight(tmp_path / name)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightError, match=r"obj\.npy") as e:
        load_weight(tmp_path / "obj.npy")
    assert e.value.__cause__ is not None


@pytest.mark.parametrize("text,match", [
    ("2 3 4\n0 1 2\n0 1\n", r"line 1: expected header 'M, K, nnz'"),
    ("2, 3\n0 1 2\n0 1\n", r"line 1"),
    ("2, 3, 2\n0 1\n0 1\n", r"line 2: expected M\+1 = 3 row offsets, found 2"),
    ("2, 3, 2\n1 1 2\n0 1\n", r"line 2: row offsets must start at 0"),
    ("2, 3, 2\n0 2 1\n0 1\n", r"line 2: row offsets decrease at row 1"),
    ("2, 3, 3\n0 1 2\n0 1\n", r"line 2: last row offset is 2, expected nnz = 3"),
    ("2, 3, 2\n0 1 2\n0 1 2\n", r"line 3: expected nnz = 2 column indices, found 3"),
    ("2, 3, 2\n0 1 2\n0 3\n", r"line 3: column index 3 at position 1 is out of range for K = 3"),
    ("2, 3, 2\n0 1 2\n0 -1\n", r"line 3: expected non-negative integers.*'-1'"),
    ("2, 3, 2\n0 1.5 2\n0 1\n", r"line 2: expected non-negative integers.*'1\.5'"),
    ("2, 3, 2\n0 2 2\n1 1\n", r"line 3: column 1 appears twice in row 0"),
    ("2, 3, 2\n0 1 2\n0 1\nextra\n", r"expected 3 lines"),
])
def test_malformed_smtx(tmp_path, text, match):
    p = tmp_path / "bad.smtx"
    p.write_text(text)
    with pytest.raises(WeightError, match=r"bad\.smtx: " + match):
        load_weight(p)


def test_smtx_same_column_across_rows_is_fine(tmp_path):
    p = _write_smtx(tmp_path / "ok.smtx", 3, 3, [0, 1, 1, 2], [2, 2])
    np.testing.assert_array_equal(load_weight(p).matrix.indices, [2, 2])


@pytest.mark.parametrize("bad,shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_nonfinite_dense_and_sparse(tmp_path, bad, shown):
    a = np.ones((5, 9), np.float32)
    a[3, 7] = bad
    a[4, 0] = bad  # later in row-major order: not the one reported
    msg = rf"non-finite weight {re.escape(shown)} at \(row 3, col 7\); weights must be finite"
    with pytest.raises(WeightError, match=r"<numpy array>: " + msg):
        load_weight(a)
    with pytest.raises(WeightError, match=r"<scipy.sparse>: " + msg):
        load_weight(scipy.sparse.csc_matrix(a))  # column-major storage, row-major report
    np.save(tmp_path / "weight.npy", a)
    with pytest.raises(WeightError, match=r"weight\.npy: " + msg):
        load_weight(tmp_path / "weight.npy")
    with pytest.raises(WeightError, match=r"^w: " + msg):
        check_finite(scipy.sparse.coo_matrix(a), what="w")
    with pytest.raises(WeightError, match=r"^w: " + msg):
        check_finite(a, what="w")
    check_finite(np.ones((2, 2)), what="w")
    check_finite(scipy.sparse.eye(3), what="w")


def test_float64_overflow_is_nonfinite():
    a = np.zeros((2, 3))
    a[1, 2] = 1e300
    with pytest.raises(WeightError, match=r"non-finite weight 1e\+300 at \(row 1, col 2\).*float32"):
        load_weight(a)
    with pytest.raises(WeightError, match=r"\(row 1, col 2\)"):
        load_weight(scipy.sparse.csr_matrix(-a))


def test_rank_errors(tmp_path):
    with pytest.raises(WeightError, match=r"convolution.*sparsert\.compile_conv2d\(.*--conv"):
        load_weight(np.ones((8, 4, 3, 3), np.float32))
    np.save(tmp_path / "conv.npy", np.ones((8, 4, 3), np.float32))
    with pytest.raises(WeightError, match=r"conv\.npy: .*convolution.*compile_conv2d"):
        load_weight(tmp_path / "conv.npy")
    with pytest.raises(WeightError, match=r"expected a 2-D \[M, K\] weight matrix, got rank 1"):
        load_weight(np.ones(5, np.float32))
    with pytest.raises(WeightError, match=r"got rank 0"):
        load_weight(np.float32(1.0))
    with pytest.raises(WeightError, match=r"empty dimension \(shape \(0, 4\)\)"):
        load_weight(np.ones((0, 4), np.float32))
    with pytest.raises(WeightError, match=r"empty dimension"):
        load_weight(scipy.sparse.csr_matrix((3, 0), dtype=np.float32))


def test_tensor_selection_errors(tmp_path):
    np.savez(tmp_path / "many.npz", w1=DENSE, w2=DENSE)
    with pytest.raises(WeightError, match=r"many\.npz: .*2 tensors.*tensor=.*'w1', 'w2'"):
        load_weight(tmp_path / "many.npz")
    _assert_same_csr(load_weight(tmp_path / "many.npz", tensor="w2"), DENSE)
    assert load_weight(tmp_path / "many.npz", tensor="w2").name == "many_w2"
    with pytest.raises(WeightError, match=r"many\.npz: no tensor named 'w3'; available: 'w1', 'w2'"):
        load_weight(tmp_path / "many.npz", tensor="w3")
    np.save(tmp_path / "a.npy", DENSE)
    with pytest.raises(WeightError, match=r"a\.npy: tensor='x'.*single unnamed"):
        load_weight(tmp_path / "a.npy", tensor="x")
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(DENSE))
    with pytest.raises(WeightError, match=r"s\.npz: tensor='x'"):
        load_weight(tmp_path / "s.npz", tensor="x")
    with pytest.raises(WeightError, match=r"tensor='x'"):
        load_weight(DENSE, tensor="x")


def test_safetensors_tensor_errors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"a": DENSE, "b": DENSE}, tmp_path / "m.safetensors")
    with pytest.raises(WeightError, match=r"m\.safetensors: .*choose one.*'a', 'b'"):
        load_weight(tmp_path / "m.safetensors")
    with pytest.raises(WeightError, match=r"m\.safetensors: no tensor named 'c'; available: 'a', 'b'"):
        load_weight(tmp_path / "m.safetensors", tensor="c")


def test_safetensors_missing_says_pip_install(tmp_path, monkeypatch):
    import sys
    (tmp_path / "m.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes the import fail
    with pytest.raises(WeightError, match=r"m\.safetensors: .*pip install safetensors"):
        load_weight(tmp_path / "m.safetensors")


def test_bad_arguments():
    with pytest.raises(WeightError, match="seed=-1"):
        load_weight(DENSE, seed=-1)
    with pytest.raises(WeightError, match="values='zeros'"):
        load_weight(DENSE, values="zeros")
