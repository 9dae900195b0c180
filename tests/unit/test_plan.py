"""Planning: every nonzero placed exactly once, constraints respected, deterministic."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsert.errors import OptionsError, WeightError
from sparsert.options import KernelOptions
from sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice
from sparsert.backends.cuda.limits import SHARED_MEMORY_BYTES
from sparsert.backends.cuda.params import choose_parameters
from sparsert.ir.plan import deal_rows, split_slabs
from sparsert.frontend.weights import load_weight


def _csr(m, k, density, seed):
    a = sp.random(m, k, density=density, random_state=seed, format="csr", dtype=np.float32)
    a.data[:] = np.random.default_rng(seed).standard_normal(a.nnz).astype(np.float32)
    return load_weight(a).matrix


def _check_schedule(s, a):
    # every nonzero exactly once, with its exact float32 bits
    back = s.to_csr()
    back.sort_indices()
    assert back.nnz == a.nnz
    assert np.array_equal(back.indptr, a.indptr) and np.array_equal(back.indices, a.indices)
    assert np.array_equal(back.data.view(np.uint32), a.data.view(np.uint32))
    # every row owned by exactly one block, within the row budget
    rows = [r for b in s.blocks for r in b.rows]
    assert sorted(rows) == list(range(a.shape[0]))
    assert all(1 <= len(b.rows) <= s.rows_per_block for b in s.blocks)
    assert all(len(b.groups) == s.groups for b in s.blocks)
    # K split: a k belongs to one group only within a block (B[k] loaded once per block)
    for b in s.blocks:
        seen = set()
        for g in b.groups:
            ks = set(g.arrays()[0].tolist())
            assert not ks & seen
            seen |= ks
    # slabs partition the blocks
    assert s.slabs[0][0] == 0 and s.slabs[-1][1] == len(s.blocks)
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(s.slabs, s.slabs[1:]))
    assert s.threads_x * s.groups <= 1024
    assert 4 * s.shared_floats <= SHARED_MEMORY_BYTES


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**16),
    groups=st.sampled_from([None, 1, 2, 3, 4]), rows=st.sampled_from([None, 1, 5, 16]),
    slab=st.sampled_from([1, 50, 10**6]),
)
def test_random_shapes_place_every_nonzero_once(m, k, n, density, seed, groups, rows, slab):
    a = _csr(m, k, density, seed)
    opts = KernelOptions(n=n, groups=groups, rows_per_block=rows, max_slab_nnz=slab)
    s = plan(a, opts, weight_digest="0" * 64, max_slab_nnz=slab)
    _check_schedule(s, a)
    assert s.n % s.vec == 0
    assert s.grid_n * s.tile_n >= n > (s.grid_n - 1) * s.tile_n


def test_edge_matrices():
    for a in (
        sp.csr_matrix(np.zeros((5, 7), np.float32)),  # all zero: rows still written (as 0 / bias)
        sp.csr_matrix(np.ones((9, 3), np.float32)),  # fully dense
        sp.csr_matrix(([2.5], ([3], [4])), shape=(8, 6), dtype=np.float32),  # one nonzero
    ):
        w = load_weight(a).matrix
        for n in (1, 2, 3, 4, 5, 31, 33, 129):
            _check_schedule(plan(w, KernelOptions(n=n), weight_digest="x", max_slab_nnz=4), w)


def test_rows_are_balanced_by_nonzeros():
    rng = np.random.default_rng(3)
    row_nnz = rng.integers(0, 200, size=256)
    blocks = deal_rows(row_nnz, 16, 16)
    loads = [int(row_nnz[b].sum()) for b in blocks]
    assert max(loads) - min(loads) <= row_nnz.max()  # LPT bound
    assert sorted(r for b in blocks for r in b) == list(range(256))


def test_split_slabs_respects_budget():
    assert split_slabs([5, 5, 5, 5], 10) == ((0, 2), (2, 4))
    assert split_slabs([50, 1], 10) == ((0, 1), (1, 2))  # an oversized block still gets a slab
    assert split_slabs([], 10) == ((0, 0),)


def test_deterministic_and_hashable():
    a = _csr(40, 50, 0.1, 1)
    s1 = plan(a, KernelOptions(n=64), weight_digest="d", max_slab_nnz=10**6)
    s2 = plan(a, KernelOptions(n=64), weight_digest="d", max_slab_nnz=10**6)
    assert s1 == s2 and hash(s1) == hash(s2) and s1.digest == s2.digest
    s3 = plan(a, KernelOptions(n=64, relu=True), weight_digest="d", max_slab_nnz=10**6)
    assert s3.digest != s1.digest
    with pytest.raises(AttributeError):
        s1.n = 3  # frozen


def test_options_are_validated():
    for bad in (dict(n=0), dict(n=-3), dict(n=2.5), dict(n=8, vec=3), dict(n=6, vec=4),
                dict(n=8, target="opencl"), dict(n=8, arch="sm90"), dict(n=8, groups=0),
                dict(n=8, threads_x=64, groups=32)):
        with pytest.raises(OptionsError):
            KernelOptions(**bad)
    with pytest.raises(OptionsError, match="shared memory"):
        choose_parameters(64, 64, 100, KernelOptions(n=1024, vec=4, threads_x=256, groups=4,
                                                     rows_per_block=32))


def test_bias_is_checked():
    a = _csr(4, 4, 0.5, 0)
    with pytest.raises(WeightError, match=r"bias: expected shape \(4,\)"):
        plan(a, KernelOptions(n=4), bias=np.zeros(3), weight_digest="x", max_slab_nnz=10)
    with pytest.raises(WeightError, match="non-finite"):
        plan(a, KernelOptions(n=4), bias=np.array([0, np.nan, 0, 0]), weight_digest="x", max_slab_nnz=10)


def test_all_dlmc_patterns_planned(shared):
    files = sorted(glob.glob(str(shared / "dlmc" / "**" / "*.smtx"), recursive=True))
    assert len(files) == 301
    for path in files:
        w = load_weight(path, seed=0)
        s = plan(w.matrix, KernelOptions(n=256), weight_digest=w.digest(), max_slab_nnz=16384)
        assert s.nnz == w.nnz, path
        assert sorted(r for b in s.blocks for r in b.rows) == list(range(w.shape[0])), path
        if files.index(path) % 20 == 0:  # full bit-exact round trip on a sample (it is slower)
            back = s.to_csr()
            back.sort_indices()
            assert np.array_equal(back.data.view(np.uint32), w.matrix.data.view(np.uint32)), path


def test_default_schedule_one_column_64_rows_and_groups_only_for_small_grids():
    from sparsert.backends.cuda.params import GROUP_MIN_NNZ, TARGET_WARPS

    # a big grid (hundreds of blocks x 8 tiles of N) fills the GPU alone: no split-K reduction
    tx, vec, groups, rows = choose_parameters(33288, 512, 852171, KernelOptions(n=256))
    assert (tx, vec, groups, rows) == (32, 1, 1, 64)
    # a small one (8 blocks x 8 tiles) gets thread groups, up to 4
    assert choose_parameters(512, 512, 13107, KernelOptions(n=256)) == (32, 1, 4, 64)
    # in between: just enough warps
    tx, vec, groups, rows = choose_parameters(4096, 4096, 1677722, KernelOptions(n=256))
    ctas = (4096 // rows) * (256 // tx)
    assert groups == 2 and ctas * groups >= TARGET_WARPS > ctas
    # never fewer than GROUP_MIN_NNZ nonzeros per group; batch counts as more CTAs
    assert choose_parameters(64, 64, 3 * GROUP_MIN_NNZ, KernelOptions(n=32))[2] == 3
    assert choose_parameters(512, 512, 13107, KernelOptions(n=256), batch=16)[2] == 1
    # explicit options win, and rows follow the accumulator budget when vec is set
    assert choose_parameters(512, 512, 13107, KernelOptions(n=256, groups=2, vec=4)) == (32, 4, 2, 16)
