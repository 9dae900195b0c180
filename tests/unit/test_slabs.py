"""Slabs (launches) and their budgets: how a schedule is cut, and each backend's budget.
(Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from schedules import schedule, weight

from sparsert.backends import cuda, hip, resolve
from sparsert.backends.cuda import BACKENDS, NVRTC_SLAB_FMAS, PTX_SLAB_FMAS
from sparsert.backends.source.render import render
from sparsert.config import settings
from sparsert.errors import OptionsError
from sparsert.ir.plan import _fill, split_slabs
from sparsert.options import KernelOptions
from sparsert.pipeline import plan_with


def test_slab_budget_splits_and_bounds_every_slab():
    w = weight(96, 80, 0.2, seed=7)
    for budget in (50, 200, 1000):
        s = schedule(w, budget=budget, n=32, rows_per_block=4)
        units = render(s)
        assert sum(u.nnz for u in units) == s.nnz
        for start, stop in s.slabs:  # over budget only when one block alone is
            nnz = sum(s.blocks[i].nnz for i in range(start, stop))
            assert nnz <= budget or stop - start == 1
        assert [u.first_block for u in units] == [a for a, _ in s.slabs]
    assert len(schedule(w, budget=50, n=32, rows_per_block=4).slabs) > len(
        schedule(w, budget=1000, n=32, rows_per_block=4).slabs) >= 1


def test_slab_budget_counts_ffmas_not_nonzeros():
    w = weight(96, 80, 0.2, seed=7)
    for vec in (1, 2, 4):
        s = schedule(w, budget=400, n=32, rows_per_block=4, vec=vec)
        for start, stop in s.slabs:
            ffmas = vec * sum(s.blocks[i].nnz for i in range(start, stop))
            assert ffmas <= 400 or stop - start == 1
    assert len(schedule(w, budget=400, n=32, rows_per_block=4, vec=4).slabs) > \
        len(schedule(w, budget=400, n=32, rows_per_block=4, vec=1).slabs)


def test_slabs_are_as_few_and_as_even_as_the_budget_allows():
    assert split_slabs([13107] * 32, 262144) == ((0, 16), (16, 32))  # greedy would cut 20 + 12
    assert split_slabs([5, 5, 100, 5, 5], 20) == ((0, 2), (2, 3), (3, 5))  # a big block: alone
    rng = np.random.default_rng(3)
    for _ in range(300):
        blocks = rng.integers(1, 50, size=int(rng.integers(1, 30))).tolist()
        budget = int(rng.integers(1, 200))
        slabs, greedy = split_slabs(blocks, budget), _fill(blocks, budget)
        assert len(slabs) == len(greedy) and slabs[0][0] == 0 and slabs[-1][1] == len(blocks)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(slabs, slabs[1:]))
        sizes = [sum(blocks[a:b]) for a, b in slabs]
        assert all(n <= budget or b - a == 1 for n, (a, b) in zip(sizes, slabs))
        assert max(sizes) <= max(sum(blocks[a:b]) for a, b in greedy)


def test_slab_budget_default_and_env(monkeypatch):
    """Each backend's budget (was config.slab_budget(kind)): SPARSERT_MAX_SLAB_NNZ, else the
    backend's own default."""
    monkeypatch.delenv("SPARSERT_MAX_SLAB_NNZ", raising=False)
    assert settings().max_slab_nnz is None
    ptx_be, nvrtc_be, hip_be = BACKENDS["ptx"], BACKENDS["nvrtc"], resolve("hip")
    assert ptx_be.slab_budget() == PTX_SLAB_FMAS == 262144 > NVRTC_SLAB_FMAS
    assert nvrtc_be.slab_budget() == hip_be.slab_budget() == NVRTC_SLAB_FMAS == hip.SLAB_FMAS
    monkeypatch.setenv("SPARSERT_MAX_SLAB_NNZ", "123")
    assert settings().max_slab_nnz == 123
    assert ptx_be.slab_budget() == nvrtc_be.slab_budget() == hip_be.slab_budget() == 123
    monkeypatch.setenv("SPARSERT_MAX_SLAB_NNZ", "0")
    with pytest.raises(OptionsError):
        settings()


def test_plan_with_uses_the_backends_slab_budget(monkeypatch):
    """The PTX backend builds a slab's blocks as functions on parallel threads, so its slabs
    (launches) are big; NVRTC compiles a slab as one function, so its slabs stay small.
    (Was api.plan_for(matrix, opts, backend=...) -> (schedule, kind); now the backend object is
    resolved first and pipeline.plan_with plans for it.)"""
    monkeypatch.delenv("SPARSERT_MAX_SLAB_NNZ", raising=False)
    w = weight(512, 800, 0.1, seed=31)  # ~41k nonzeros: 3 NVRTC slabs, 1 PTX slab
    o = KernelOptions(n=64)
    ptx_be = resolve("cuda", "ptx")
    assert ptx_be.name == "ptx"
    s_ptx = plan_with(ptx_be, w.matrix, o, bias=None, weight_digest=w.digest())
    assert len(s_ptx.slabs) == 1
    nvrtc_be = resolve("cuda", "nvrtc")
    assert nvrtc_be.name == "nvrtc"
    s_nvrtc = plan_with(nvrtc_be, w.matrix, o, bias=None, weight_digest=w.digest())
    assert len(s_nvrtc.slabs) == -(-w.matrix.nnz // NVRTC_SLAB_FMAS)
    assert s_nvrtc.blocks == s_ptx.blocks  # the same work, cut into launches differently
    s_own = plan_with(ptx_be, w.matrix, dataclasses.replace(o, max_slab_nnz=5000), bias=None,
                      weight_digest=w.digest())
    assert len(s_own.slabs) >= 8  # options.max_slab_nnz wins
    # auto: the PTX budget only where the PTX backend will build it
    auto = resolve("cuda", "auto")
    s_auto = plan_with(auto, w.matrix, o, bias=None, weight_digest=w.digest())
    assert len(s_auto.slabs) == len(s_ptx.slabs if auto.name == "ptx" else s_nvrtc.slabs)
    assert auto is cuda.choose("auto")
