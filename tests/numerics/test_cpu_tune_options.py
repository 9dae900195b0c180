"""The options the CPU tuner sets, against float64: an explicit chunk of N (every tail, threads,
the launcher really uses it) natively on AVX2, and the AVX-512 'register' broadcast form through
the x86 simulator (this CPU may not run AVX-512)."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_check import check, random_csr, simulate

import sparsert
from sparsert.backends.cpu.emit import emit_parts, group_blocks
from sparsert.backends.cpu.lower import lower
from sparsert.backends.cpu.params import emit_config, parameters_for
from sparsert.backends.cpu.x86 import max_rows, tile_floats
from sparsert.ir.plan import plan


@pytest.mark.avx2
@pytest.mark.parametrize("vec,chunk", [(1, 8), (1, 24), (2, 16), (3, 48), (1, 4096)])
def test_explicit_chunk_natively(vec, chunk):
    a = random_csr(37, 29, 0.3, seed=2)
    bias = np.linspace(-1, 1, 37).astype(np.float32)
    rng = np.random.default_rng(vec * chunk)
    for n in (1, 7, 8, 9, 47, 100):
        kernel = sparsert.compile(a, n=n, bias=bias, relu=True, options=sparsert.KernelOptions(
            n=n, target="cpu", arch="avx2", residual=True, vec=vec, chunk=chunk))
        B = rng.standard_normal((29, n)).astype(np.float32)
        R = rng.standard_normal((37, n)).astype(np.float32)
        for threads in (1, 3):
            check(a, B, kernel(B, residual=R, threads=threads), bias=bias, R=R, relu=True)
            job = kernel._launcher.jobs[(threads, 1)]
            width = 8 * vec
            assert job.chunk == min(chunk, -(-n // width) * width)  # the caller's, not the launcher's


@pytest.mark.parametrize("vec", [1, 2])
@pytest.mark.parametrize("n", [5, 16, 33])
def test_avx512_register_broadcast_in_the_simulator(vec, n):
    a = random_csr(40, 33, 0.3, seed=13)
    rng = np.random.default_rng(n)
    bias = rng.standard_normal(40).astype(np.float32)
    o = sparsert.KernelOptions(n=n, target="cpu", arch="avx512", vec=vec, relu=True, residual=True,
                               bcast="register", rows_per_block=max_rows("avx512", vec, "register"))
    s = plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for("avx512"), bias=bias,
             weight_digest="t", max_slab_nnz=1 << 62)
    cfg = emit_config("avx512", s.rows_per_block, s.vec, n, s.bcast)
    assert cfg.bcast == "register"
    low = lower(s)
    asm = "".join(emit_parts(low, cfg, 1))
    assert "{1to16}" not in asm and "vbroadcastss" in asm
    B = rng.standard_normal((33, n)).astype(np.float32)
    R = rng.standard_normal((40, n)).astype(np.float32)
    C = simulate(asm, B, 40, width=cfg.width, tile=tile_floats(33, cfg.width), R=R,
                 functions=len(group_blocks(low, cfg)), chunk=16 * vec)
    check(a, B, C, bias=bias, R=R, relu=True)


@pytest.mark.avx2
def test_the_launcher_packs_whole_shares_up_to_the_budget(monkeypatch):
    """The default chunk of one thread: all of N while its panel fits WHOLE_PANEL_BYTES (B then read
    in whole rows), L2-sized chunks above and with more threads; every choice computes the same bits."""
    from sparsert.backends.cpu import launch

    a = random_csr(50, 64, 0.2, seed=4)
    n = 203
    kernel = sparsert.compile(a, options=sparsert.KernelOptions(n=n, target="cpu", arch="avx2"))
    B = np.random.default_rng(1).standard_normal((64, n)).astype(np.float32)
    want = kernel(B, threads=1)
    lau = kernel._launcher
    assert lau.chunk_for(1, 1) == 208  # all 26 tiles at once
    assert lau.chunk_for(2, 1) < 208 and lau.chunk_for(2, 1) % 8 == 0  # threads share N in chunks
    monkeypatch.setattr(launch, "WHOLE_PANEL_BYTES", 4 * 64 * 100)  # below one thread's share
    monkeypatch.setattr(launch, "PANEL_BYTES", 4 * 64 * 64)  # an "L2" of 64 columns of K = 64
    assert lau.chunk_for(1, 1) == 128  # the L2 rule: 16 tiles at least
    for threads in (1, 2, 3):
        lau.jobs.clear()
        got = kernel(B, threads=threads)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        assert lau.jobs[(threads, 1)].chunk == lau.chunk_for(threads, 1)
