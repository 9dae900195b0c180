"""Rendering: deterministic, readable, and every immediate reproduces its float32 bit for bit."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from sparsert.errors import WeightError
from sparsert.options import KernelOptions
from sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice
from sparsert.backends.source.render import float_literal, render
from sparsert.frontend.weights import load_weight

F_RE = re.compile(r"F\((\d+),([^)]+)f\)")
L_RE = re.compile(r"L\((\d+)\)")


def _weight(m=48, k=40, density=0.15, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, random_state=seed, format="csr", dtype=np.float32)
    # awkward values: tiny, huge, denormal, negative, exact powers of two, many digits
    special = np.array([1e-45, -3.4028235e38, 1.1754944e-38, 0.1, -7.0, 1 / 3, 2.0**-20, 123456.79],
                       dtype=np.float32)
    a.data[:] = rng.standard_normal(a.nnz).astype(np.float32)
    a.data[: len(special)] = special
    return load_weight(a)


def _schedule(w, **opts):
    return plan(w.matrix, KernelOptions(**opts), weight_digest=w.digest(), max_slab_nnz=10**6,
                bias=opts.pop("bias", None) if "bias" in opts else None)


def test_float_literal_round_trips_bit_for_bit():
    rng = np.random.default_rng(0)
    bits = np.concatenate([
        rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32),
        np.array([1, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800000, 0x80000001], np.uint32),
    ])
    vals = bits.view(np.float32)
    for b, v in zip(bits.tolist(), vals.tolist()):
        if not np.isfinite(v) or v == 0:
            continue
        text = float_literal(b)
        assert text.endswith("f") and re.fullmatch(r"-?[0-9.]+(e[+-]?\d+)?f", text), text
        assert np.float32(text[:-1]).view(np.uint32) == b, text


@pytest.mark.parametrize("opts", [dict(n=64), dict(n=100, groups=3, relu=True), dict(n=7, vec=1)])
def test_immediates_in_source_reproduce_the_weights(opts):
    w = _weight()
    s = _schedule(w, **opts)
    (unit,) = render(s)
    # Rebuild A from the source text alone: block order, group order, L(k) then F(slot, w).
    entries = {}
    for block_text, block in zip(re.split(r"\n  case \d+: \{  // block", unit.source)[1:], s.blocks):
        k = None
        for tok in re.finditer(r"L\((\d+)\)|F\((\d+),([^)]+)f\)", block_text):
            if tok.group(1) is not None:
                k = int(tok.group(1))
            else:
                row = block.rows[int(tok.group(2))]
                entries[(row, k)] = np.float32(tok.group(3)).view(np.uint32)
    a = w.matrix.tocoo()
    want = {(int(r), int(c)): np.float32(v).view(np.uint32) for r, c, v in zip(a.row, a.col, a.data)}
    assert entries == want


def test_render_is_deterministic_across_processes():
    code = (
        "import numpy as np, scipy.sparse as sp, hashlib\n"
        "from sparsert.options import KernelOptions\nfrom sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice\n"
        "from sparsert.backends.source.render import render\nfrom sparsert.frontend.weights import load_weight\n"
        "a = sp.random(60, 50, density=0.2, random_state=4, format='csr', dtype=np.float32)\n"
        "w = load_weight(a)\n"
        "s = plan(w.matrix, KernelOptions(n=96, relu=True), bias=np.arange(60), "
        "weight_digest=w.digest(), max_slab_nnz=200)\n"
        "print(hashlib.sha256(''.join(u.source for u in render(s)).encode()).hexdigest())\n"
    )
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs))) == 64


def test_two_renders_byte_identical_and_sensitive_to_one_bit():
    w = _weight()
    a = "".join(u.source for u in render(_schedule(w, n=32)))
    b = "".join(u.source for u in render(_schedule(w, n=32)))
    assert a == b
    m = w.matrix.copy()
    m.data[5] = np.nextafter(m.data[5], np.float32(np.inf))
    w2 = load_weight(m)
    c = "".join(u.source for u in render(_schedule(w2, n=32)))
    assert hashlib.sha256(a.encode()).digest() != hashlib.sha256(c.encode()).digest()


def test_header_comment_describes_the_kernel():
    w = _weight()
    (unit,) = render(_schedule(w, n=100, groups=2, relu=True))
    head = unit.source[:1500]
    assert f"A: 48 x 40 sparse, {w.nnz} nonzeros" in head
    assert "relu(A @ B)" in head and "2 thread group(s)" in head and "sparsert 0.1.0" in head
    assert f"grid ({unit.grid[0]}, {unit.grid[1]}, 1)" in head


def test_hip_differs_only_by_the_dialect_prelude():
    w = _weight()
    s = _schedule(w, n=64)
    (cu,) = render(s, "cuda")
    (hip,) = render(s, "hip")
    assert "#include <hip/hip_runtime.h>" in hip.source and "#include" not in cu.source
    assert hip.source.replace("#include <hip/hip_runtime.h>\n", "") == cu.source


def test_slabs_split_the_kernel_into_units():
    w = _weight(m=64, k=64, density=0.3)
    s = plan(w.matrix, KernelOptions(n=32, rows_per_block=4), weight_digest=w.digest(), max_slab_nnz=100)
    units = render(s)
    assert len(units) == len(s.slabs) > 1
    assert sum(u.nnz for u in units) == w.nnz
    assert sum(len(F_RE.findall(u.source)) for u in units) == w.nnz
    assert len({u.kernel_name for u in units}) == len(units)


def test_nan_and_inf_weights_are_refused_with_position():
    a = np.zeros((4, 5), np.float32)
    a[1, 2] = 1.0
    a[2, 3] = np.nan
    a[3, 0] = np.inf
    with pytest.raises(WeightError, match=r"\(row 2, col 3\)"):
        load_weight(a)
    s = sp.csr_matrix(a)
    with pytest.raises(WeightError, match=r"\(row 2, col 3\)"):
        load_weight(s)
