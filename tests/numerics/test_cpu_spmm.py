"""The CPU target's SpMM kernels against float64: every tail of N, empty rows and columns, one
nonzero, dense, K prime, the epilogues, register-block shapes, threads, the cache; AVX-512 code
through the x86 simulator (and natively where the CPU has it)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from cpu_check import check, random_csr, simulate

import sparsert
from sparsert.backends.cpu import CpuBackend
from sparsert.backends.cpu.emit import emit_parts, group_blocks
from sparsert.backends.cpu.isa import detect_isa
from sparsert.backends.cpu.lower import lower
from sparsert.backends.cpu.params import emit_config
from sparsert.backends.cpu.runtime import physical_cores, threads_for
from sparsert.backends.cpu.x86 import EmitConfig, max_rows, tile_floats
from sparsert.errors import InputError, OptionsError, ToolchainError

# (rows_per_block, vec): the default (most rows), fewer rows, wider tiles
SHAPES = [(None, None), (13, 1), (6, 2), (4, 3), (2, 4), (3, 1)]


def _run(A, n, *, seed=0, bias=False, relu=False, residual=False, threads=1, rows=None, vec=None):
    m, k = A.shape
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    kernel = sparsert.compile(A, n=n, bias=b, relu=relu, target="cpu", arch="avx2",
                              options=sparsert.KernelOptions(n=n, target="cpu", residual=residual,
                                                             rows_per_block=rows, vec=vec))
    B = rng.standard_normal((k, n)).astype(np.float32)
    R = rng.standard_normal((m, n)).astype(np.float32) if residual else None
    C = kernel(B, residual=R, threads=threads)
    assert C.shape == (m, n) and C.dtype == np.float32
    check(A, B, C, bias=b, R=R, relu=relu)
    return kernel, C


@pytest.mark.avx2
@pytest.mark.parametrize("rows,vec", SHAPES)
def test_every_tail_of_n(rows, vec):
    A = random_csr(23, 17, 0.3, seed=1)
    for n in range(1, 41):  # _run asserts the float32 error bound against float64
        kernel, C = _run(A, n, seed=n, bias=True, relu=n % 2 == 0, residual=n % 3 == 0, rows=rows, vec=vec)
        assert np.isfinite(C).all() and kernel.n == n


@pytest.mark.avx2
@pytest.mark.parametrize("n", [255, 784, 1000])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_n_and_threads(n, threads):
    _, C = _run(random_csr(100, 300, 0.1, seed=n), n, bias=True, relu=True, residual=True, threads=threads)
    assert (C >= 0).all() and C.any()  # ReLU applied; within the bound (_run)


@pytest.mark.avx2
def test_empty_rows_and_columns():
    a = random_csr(40, 30, 0.3, seed=3).tolil()
    a[5:12, :] = 0
    a[:, 7:20] = 0
    a = a.tocsr()
    a.eliminate_zeros()
    _run(a, 37, bias=True, relu=True, residual=True)
    _, C0 = _run(a, 19)
    assert (C0[5:12] == 0).all()  # no bias: rows without nonzeros are exactly zero


@pytest.mark.avx2
def test_all_zero_matrix_with_bias():
    a = sp.csr_matrix((9, 5), dtype=np.float32)
    bias = np.arange(9, dtype=np.float32) - 4
    kernel = sparsert.compile(a, n=13, bias=bias, relu=True, target="cpu", arch="avx2")
    C = kernel(np.ones((5, 13), np.float32))
    assert np.array_equal(C, np.broadcast_to(np.maximum(bias, 0)[:, None], (9, 13)))


@pytest.mark.avx2
def test_one_nonzero_dense_and_prime_k():
    a = sp.csr_matrix(([2.5], ([3], [6])), shape=(7, 11), dtype=np.float32)
    _, C = _run(a, 9)
    assert np.count_nonzero(C[[0, 1, 2, 4, 5, 6]]) == 0
    _run(random_csr(20, 31, 1.0, seed=4), 50, bias=True)  # dense
    _run(random_csr(61, 97, 0.2, seed=5), 33, relu=True, threads=2)  # K prime
    _run(random_csr(1, 1, 1.0, seed=6), 1)


@pytest.mark.avx2
@pytest.mark.torch
def test_out_argument_and_torch_zero_copy():
    import torch

    a = random_csr(30, 20, 0.2, seed=7)
    kernel = sparsert.compile(a, n=24, target="cpu", arch="avx2")
    B = torch.randn(20, 24)
    out = torch.empty(30, 24)
    assert kernel(B, out=out) is out
    check(a, B.numpy(), out.numpy())
    assert isinstance(kernel(B), torch.Tensor)
    with pytest.raises(InputError, match="out: overlaps"):
        sq = sparsert.compile(random_csr(20, 20, 0.3), n=20, target="cpu", arch="avx2")
        x = torch.randn(20, 20)
        sq(x, out=x)


@pytest.mark.avx2
def test_bad_operands_are_one_line_input_errors():
    kernel = sparsert.compile(random_csr(8, 6, 0.5), n=10, target="cpu", arch="avx2")
    good = np.zeros((6, 10), np.float32)
    cases = [
        (lambda: kernel(np.zeros((6, 11), np.float32)), "B: shape"),
        (lambda: kernel(np.zeros((6, 10))), "B: dtype float64"),
        (lambda: kernel(np.zeros((10, 6), np.float32).T), "B: not C-contiguous"),
        (lambda: kernel(good, residual=np.zeros((8, 10), np.float32)), "residual: this kernel was compiled without"),
        (lambda: kernel(good, out=np.zeros((8, 9), np.float32)), "out: shape"),
        (lambda: kernel([[0.0]]), "B: list"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(OptionsError, match="threads=0"):
        kernel(good, threads=0)


def test_isa_choice(monkeypatch):
    monkeypatch.setenv("SPARSERT_CPU_ISA", "avx512")
    assert detect_isa() == "avx512"
    assert detect_isa("avx2") == "avx2"  # the argument wins
    monkeypatch.setenv("SPARSERT_CPU_ISA", "sse2")
    with pytest.raises(OptionsError, match="sse2"):
        detect_isa()
    monkeypatch.delenv("SPARSERT_CPU_ISA")
    assert detect_isa(flags=frozenset({"avx2", "fma", "avx512f"})) == "avx512"
    assert detect_isa(flags=frozenset({"avx2", "fma"})) == "avx2"
    with pytest.raises(ToolchainError, match="neither"):
        detect_isa(flags=frozenset({"avx", "sse4_2"}))
    with pytest.raises(OptionsError, match="arch='sm_90'"):
        sparsert.KernelOptions(n=4, target="cpu", arch="sm_90")


def _pools(text: str) -> dict[int, list[int]]:
    """Per block label: the .long words of its weight pool, in order."""
    pools, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^\.Lw(\d+):$", line)
        if m:
            cur = pools.setdefault(int(m.group(1)), [])
        elif cur is not None and line.startswith("\t.long "):
            cur.extend(int(w, 16) for w in line.split(None, 1)[1].split(","))
        else:
            cur = None
    return pools


def _schedule(a, n, isa, rows=None, vec=None, **opts):
    from sparsert.backends.cpu.params import parameters_for
    from sparsert.ir.plan import plan

    o = sparsert.KernelOptions(n=n, target="cpu", arch=isa, rows_per_block=rows, vec=vec, **opts)
    return plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for(isa), weight_digest="t",
                max_slab_nnz=1 << 62)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_constant_pool_holds_every_weight_bit_for_bit(isa):
    a = random_csr(50, 40, 0.3, seed=8)
    a.data[:5] = np.array([-1e-45, 1e-40, 3.4e38, -1.17549435e-38, 0.1], np.float32)  # odd bits
    s = _schedule(a, 16, isa)
    low = lower(s)
    pools = _pools("".join(emit_parts(low, emit_config(isa, s.rows_per_block, s.vec, s.n), 2)))
    for i, blk in enumerate(low.blocks):
        assert pools.get(i, []) == blk.bits.tolist()
    assert sorted(w for p in pools.values() for w in p) == sorted(a.data.view(np.uint32).tolist())


def test_emitted_assembly_is_deterministic():
    a = random_csr(64, 48, 0.2, seed=9)
    texts = []
    for copy in (a, a.copy()):
        s = _schedule(copy, 100, "avx2", rows=6, vec=2, relu=True, residual=True)
        texts.append("".join(emit_parts(lower(s), emit_config("avx2", 6, 2, 100), 2)))
    assert texts[0] == texts[1] and "vfmadd231ps" in texts[0]


@pytest.mark.binutils
@pytest.mark.parametrize("vec", [1, 2, 4])
def test_avx512_kernels_assemble_and_refuse_to_run_without_avx512(vec):
    a = random_csr(70, 50, 0.2, seed=10)
    kernel = sparsert.compile(a, n=37, bias=np.ones(70, np.float32), relu=True, target="cpu", arch="avx512",
                              options=sparsert.KernelOptions(n=37, target="cpu", residual=True, vec=vec))
    assert kernel.artifacts[0].binary[:4] == b"\x7fELF"
    assert "zmm" in kernel.asm and "{1to16}" in kernel.asm
    from sparsert.backends.cpu.isa import runnable

    if not runnable("avx512"):
        with pytest.raises(ToolchainError, match="avx512"):
            kernel(np.zeros((50, 37), np.float32))


@pytest.mark.parametrize("vec", [1, 2])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_avx512_code_in_the_simulator(vec, n):
    """The AVX-512 path's numbers without an AVX-512 CPU: the emitted text runs in the x86
    simulator (exact IEEE float32, k-masks, embedded broadcasts; memory outside B, C, R faults)."""
    a = random_csr(40, 33, 0.3, seed=11)
    rng = np.random.default_rng(n)
    bias = rng.standard_normal(40).astype(np.float32)
    from sparsert.backends.cpu.params import parameters_for
    from sparsert.ir.plan import plan

    o = sparsert.KernelOptions(n=n, target="cpu", arch="avx512", vec=vec, relu=True, residual=True)
    s = plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for("avx512"), bias=bias,
             weight_digest="t", max_slab_nnz=1 << 62)
    cfg = emit_config("avx512", s.rows_per_block, s.vec, n)
    low = lower(s)
    asm = "".join(emit_parts(low, cfg, 1))
    B = rng.standard_normal((33, n)).astype(np.float32)
    R = rng.standard_normal((40, n)).astype(np.float32)
    C = simulate(asm, B, 40, width=cfg.width, tile=tile_floats(33, cfg.width), R=R,
                 functions=len(group_blocks(low, cfg)))
    check(a, B, C, bias=bias, R=R, relu=True)


@pytest.mark.avx2
def test_the_simulator_agrees_with_the_cpu_bit_for_bit():
    """The same AVX2 kernel natively and in the simulator: identical bits (so the simulator's
    verdict on AVX-512 code, which this CPU cannot run, rests on checked semantics)."""
    a = random_csr(30, 21, 0.3, seed=12)
    bias = np.linspace(-1, 1, 30).astype(np.float32)
    kernel = sparsert.compile(a, n=29, bias=bias, relu=True, target="cpu", arch="avx2",
                              options=sparsert.KernelOptions(n=29, target="cpu", residual=True, rows_per_block=5))
    rng = np.random.default_rng(3)
    B = rng.standard_normal((21, 29)).astype(np.float32)
    R = rng.standard_normal((30, 29)).astype(np.float32)
    native = kernel(B, residual=R, threads=1)
    s = kernel.schedule
    cfg = emit_config("avx2", s.rows_per_block, s.vec, s.n)
    low = lower(s)
    sim = simulate(kernel.asm, B, 30, width=cfg.width, tile=tile_floats(21, cfg.width), R=R,
                   functions=len(group_blocks(low, cfg)))
    assert np.array_equal(native.view(np.uint32), sim.view(np.uint32))


@pytest.mark.avx512
@pytest.mark.parametrize("vec", [1, 2])
def test_avx512_native(vec):
    a = random_csr(40, 33, 0.3, seed=11)
    rng = np.random.default_rng(0)
    for n in list(range(1, 40)) + [100, 777]:
        kernel = sparsert.compile(a, n=n, bias=np.ones(40, np.float32), relu=True, target="cpu", arch="avx512",
                                  options=sparsert.KernelOptions(n=n, target="cpu", residual=True, vec=vec))
        B = rng.standard_normal((33, n)).astype(np.float32)
        R = rng.standard_normal((40, n)).astype(np.float32)
        check(a, B, kernel(B, residual=R, threads=2), bias=np.ones(40), R=R, relu=True)


def test_thread_count_sources(monkeypatch):
    monkeypatch.delenv("SPARSERT_CPU_THREADS", raising=False)
    assert threads_for(3) == 3
    assert threads_for() == physical_cores() >= 1
    monkeypatch.setenv("SPARSERT_CPU_THREADS", "5")
    assert threads_for() == 5
    assert threads_for(2) == 2  # the argument wins
    monkeypatch.setenv("SPARSERT_CPU_THREADS", "zero")
    with pytest.raises(OptionsError, match="SPARSERT_CPU_THREADS"):
        threads_for()


def test_register_blocks_fit_the_register_file_and_cover_every_row():
    for isa, regs in (("avx2", 16), ("avx512", 32)):
        for v in (1, 2, 3, 4):
            for bcast in ("embedded", "register"):
                r = max_rows(isa, v, bcast)
                wreg = isa == "avx2" or bcast == "register"
                assert r * v + v + wreg <= regs
                assert (r + 1) * v + v + wreg > regs or (r + 1) * v + 1 + (v if isa == "avx2" else 0) > regs
    a = random_csr(100, 64, 0.1, seed=13)
    s = _schedule(a, 20, "avx2", rows=14)
    assert len(s.blocks) == -(-100 // 14) and all(len(b.rows) <= 14 for b in s.blocks)
    assert sorted(r for b in s.blocks for r in b.rows) == list(range(100))
    assert s.nnz == a.nnz
    with pytest.raises(OptionsError, match="rows=15"):
        EmitConfig(isa="avx2", v=1, rows=15).check()
    with pytest.raises(OptionsError, match="threads_x=32: a GPU schedule option"):
        _schedule(a, 20, "avx2", threads_x=32)


@pytest.mark.avx2
def test_warm_cache_builds_nothing_and_a_corrupt_shared_object_is_rebuilt(monkeypatch):
    a = random_csr(48, 40, 0.2, seed=14)
    first = sparsert.compile(a, n=30, target="cpu", arch="avx2")
    assert first.artifacts[0].path is not None and not first.stats.cached_slabs
    calls = []
    monkeypatch.setattr(CpuBackend, "build", lambda *args, **kw: calls.append(1))
    warm = sparsert.compile(a, n=30, target="cpu", arch="avx2")
    assert warm.stats.cached_slabs == 1 and not calls
    path = warm.artifacts[0].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit of the code or a weight
    path.write_bytes(bytes(data))
    monkeypatch.undo()
    again = sparsert.compile(a, n=30, target="cpu", arch="avx2")
    assert again.stats.cached_slabs == 0  # the corrupt entry was a miss, rebuilt
    B = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)
    check(a, B, again(B))


@pytest.mark.avx2
def test_a_warm_cache_needs_no_toolchain(tmp_path):
    """Compile once, then again in a process that has no `as`, `ld` or C compiler: every
    artifact (the kernel and the thread pool) comes from the cache, integrity-checked."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np, sparsert\n"
              "a = np.arange(48, dtype=np.float32).reshape(6, 8) % 3 - 1\n"
              "k = sparsert.compile(a, n=10, target='cpu', arch='avx2')\n"
              "b = np.ones((8, 10), np.float32)\n"
              "print(k.stats.cached_slabs, float(k(b).sum()), float((a @ b).sum()))\n")
    env = dict(os.environ, SPARSERT_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    bare = dict(env, PATH=str(tmp_path / "no-tools"), SPARSERT_CXX=str(tmp_path / "no-compiler"))
    warm = subprocess.run([sys.executable, "-c", script], env=bare, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr
    cached, got, want = warm.stdout.split()
    assert cached == "1" and float(got) == float(want)


@pytest.mark.avx2
def test_dlmc_patterns(shared):
    """Real pruned layers (ResNet-50 and Transformer, 90% and 95%), values from a fixed seed."""
    root = shared / "dlmc"
    picks = [root / "rn50" / "magnitude_pruning" / "0.9" / "bottleneck_2_block_group1_1_1.smtx",
             root / "rn50" / "magnitude_pruning" / "0.95" / "bottleneck_1_block_group3_2_1.smtx"]
    picks += sorted((root / "transformer").rglob("*.smtx"))[:2]
    rng = np.random.default_rng(5)
    for path in picks:
        w = sparsert.load_weight(path, seed=3)
        n = 37 if w.shape[0] > 1024 else 197
        kernel = sparsert.compile(w, n=n, relu=True, target="cpu", arch="avx2")
        B = rng.standard_normal((w.shape[1], n)).astype(np.float32)
        check(w.matrix, B, kernel(B, threads=2), relu=True)


@pytest.mark.avx2
def test_concurrent_builds_build_once_and_agree(tmp_path):
    """Three processes compile the same CPU kernel into one cache at once: the per-key lock
    lets one build it, the others load it (integrity-checked), all compute the same bits."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np, scipy.sparse as sp, sparsert\n"
              "a = sp.random(300, 400, density=0.1, random_state=7, format='csr', dtype=np.float32)\n"
              "k = sparsert.compile(a, n=64, target='cpu', arch='avx2')\n"
              "b = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)\n"
              "print(k.stats.cached_slabs, k(b, threads=1).tobytes().hex()[:64], "
              "float(np.abs(k(b) - a.toarray().astype(np.float64) @ b).max()))\n")
    env = dict(os.environ, SPARSERT_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    rows = [o.split() for o, _ in outs]
    assert sorted(r[0] for r in rows) == ["0", "1", "1"]  # built once, loaded twice
    assert len({r[1] for r in rows}) == 1 and all(float(r[2]) < 1e-4 for r in rows)
    entries = [p for p in (tmp_path / "kernels").rglob("*.bin")]
    assert len(entries) == 1
