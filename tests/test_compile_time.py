"""Compile path at scale (issue 6): slabs, parallel = serial, warm cache, and the PTX backend.

Fast tests only (small matrices). The PTX backend's numbers are checked without a GPU by running
its PTX in tests/ptx_sim.py (exact float32 FMA) against a reference model of the CUDA template's
arithmetic, and its CUBINs against the NVRTC path's: same FFMA immediates, nnz x vec of them.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np
import ptx_sim  # tests/ptx_sim.py (pytest puts tests/ on sys.path)
import pytest
import scipy.sparse as sp

from sparsert import compiler, ptx
from sparsert.compiler import compile_units, resolve_backend
from sparsert.config import DEFAULT_MAX_SLAB_NNZ, DEFAULT_PTX_MAX_SLAB_NNZ, settings, slab_budget
from sparsert.errors import CompileError, OptionsError, ToolchainError
from sparsert.options import KernelOptions
from sparsert.plan import plan
from sparsert.ptxas import assemble, find_nvlink, find_ptxas
from sparsert.render import render
from sparsert.weights import load_weight

ARCH = "sm_90"
needs_ptxas = pytest.mark.skipif(find_ptxas() is None or find_nvlink() is None,
                                 reason="ptxas / nvlink not installed (pip install nvidia-cuda-nvcc)")


def _weight(m: int, k: int, density: float, seed: int):
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, random_state=rng, dtype=np.float32).toarray()
    a[a != 0] -= 0.5  # both signs
    return load_weight(a)


def _schedule(w, *, budget=10**9, bias=None, batch=1, **opts):
    m, k = w.shape
    o = KernelOptions(**({"n": 16} | opts))
    return plan(w.matrix, o, bias=bias, weight_digest=w.digest(), max_slab_nnz=budget, batch=batch,
                batch_stride_b=k * o.n if batch > 1 else 0, batch_stride_c=m * o.n if batch > 1 else 0)


# -- reference: the CUDA template's arithmetic, operation by operation ------------------------
def reference(s, B: np.ndarray, R: np.ndarray | None) -> np.ndarray:
    """C as the CUDA source computes it: per group, acc = fma(b, w, acc) from +0 in (k, slot)
    order; the slot's owner (slot % groups) adds the other users' partials in group order; then
    + bias, + residual, relu."""
    f32 = np.float32
    C = np.zeros((s.batch, s.m, s.n), dtype=f32)
    for z in range(s.batch):
        for block in s.blocks:
            users = block.slot_users()
            for slot, row in enumerate(block.rows):
                for col in range(s.n):
                    accs = {}
                    for g, work in enumerate(block.groups):
                        acc = f32(0.0)
                        k, sl, bits = work.arrays()
                        for kk, ss, ww in zip(k.tolist(), sl.tolist(), bits.view(f32).tolist()):
                            if ss == slot:
                                acc = ptx_sim.fma32(B[z, kk, col], f32(ww), acc)
                        accs[g] = acc
                    owner = slot % s.groups
                    out = accs[owner]
                    for h in users[slot]:
                        if h != owner:
                            out = ptx_sim.add32(out, accs[h])
                    if s.bias_bits is not None:
                        out = ptx_sim.add32(out, np.array(s.bias_bits[row], np.uint32).view(f32)[()])
                    if s.residual:
                        out = ptx_sim.add32(out, R[z, row, col])
                    if s.relu:
                        out = ptx_sim.max32(out, f32(0.0))
                    C[z, row, col] = out
    return C


def run_ptx(s, B: np.ndarray, R: np.ndarray | None, **linked) -> np.ndarray:
    C = np.full((s.batch, s.m, s.n), np.nan, dtype=np.float32)  # every element must be written
    for u in ptx.render_ptx(s, ARCH, **linked):
        ptx_sim.launch(u.source, u.grid, u.block, [B, C] + ([R] if s.residual else []))
    return C


SIM_CASES = [
    dict(vec=4, groups=2, rows_per_block=4, threads_x=4, relu=True, residual=True, bias=True, batch=2),
    dict(vec=1, groups=3, rows_per_block=8, threads_x=8, bias=True),
    dict(vec=2, groups=1, rows_per_block=5, threads_x=4, relu=True),
    dict(vec=4, groups=1, rows_per_block=8, threads_x=2, n=20),  # N tail: clamped loads, masked stores
    dict(vec=1, groups=2, rows_per_block=6, threads_x=4, prefetch=3, bias=True),  # buffers rotate
    dict(vec=2, groups=1, rows_per_block=7, threads_x=4, prefetch=1, relu=True),  # no pipelining
]


@pytest.mark.parametrize("case", SIM_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ptx_computes_the_cuda_arithmetic_bit_for_bit(case):
    case = dict(case)
    w = _weight(13, 21, 0.3, seed=len(case))
    bias = np.linspace(-1, 1, 13).astype(np.float32) if case.pop("bias", False) else None
    batch = case.pop("batch", 1)
    s = _schedule(w, budget=40, bias=bias, batch=batch, **case)
    assert len(s.slabs) > 1  # several launches, first_block offsets exercised
    rng = np.random.default_rng(1)
    B = rng.standard_normal((batch, s.k, s.n)).astype(np.float32)
    R = rng.standard_normal((batch, s.m, s.n)).astype(np.float32) if s.residual else None
    got = run_ptx(s, B, R)
    want = reference(s, B, R)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    # and the reference is A @ B (+ bias, residual, relu) up to float32 rounding
    dense = np.einsum("mk,zkn->zmn", w.matrix.toarray().astype(np.float64), B.astype(np.float64))
    if bias is not None:
        dense += bias[None, :, None]
    if R is not None:
        dense += R
    if s.relu:
        dense = np.maximum(dense, 0)
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)


def _im2col(x: np.ndarray, g) -> np.ndarray:
    """The virtual im2col matrix of NCHW x, materialised: [batch, c*kh*kw, oh*ow], 0 in the padding."""
    (sy, sx), (py, px), (dy, dx) = g.stride, g.padding, g.dilation
    out = np.zeros((x.shape[0], g.k, g.n), np.float32)
    for c in range(g.c_in):
        for ky in range(g.kh):
            for kx in range(g.kw):
                row = (c * g.kh + ky) * g.kw + kx
                for oy in range(g.oh):
                    for ox in range(g.ow):
                        iy, ix = oy * sy - py + ky * dy, ox * sx - px + kx * dx
                        if 0 <= iy < g.h and 0 <= ix < g.w:
                            out[:, row, oy * g.ow + ox] = x[:, c, iy, ix]
    return out


CONV_CASES = [  # (c_in, h, w, kh, kw, stride, padding, dilation, batch, options)
    (3, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, dict(groups=2, rows_per_block=4, threads_x=8)),
    (2, 7, 9, 3, 3, (2, 2), (1, 1), (1, 1), 2, dict(relu=True, residual=True, bias=True, prefetch=2)),
    (4, 5, 5, 1, 1, (2, 2), (0, 0), (1, 1), 1, dict(threads_x=4)),  # strided 1x1: virtual too
    (2, 9, 8, 3, 3, (1, 1), (2, 2), (2, 2), 1, dict(prefetch=1, groups=3, rows_per_block=3)),
    (1, 11, 10, 7, 7, (2, 2), (3, 3), (1, 1), 1, dict(rows_per_block=5)),  # a ResNet stem
    (2, 6, 6, 3, 2, (1, 2), (1, 0), (1, 1), 2, dict(threads_x=16, rows_per_block=2, budget=30)),  # slabs
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-s{c[5][0]}{c[5][1]}"
                         f"-p{c[6][0]}{c[6][1]}-d{c[7][0]}-b{c[8]}")
def test_ptx_virtual_im2col_computes_the_cuda_arithmetic_bit_for_bit(case):
    from sparsert.plan import ConvGeometry

    c_in, h, wd, kh, kw, stride, padding, dilation, batch, opts = case
    opts = dict(opts)
    g = ConvGeometry(c_in=c_in, h=h, w=wd, kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation)
    m = 7
    w = _weight(m, g.k, 0.4, seed=g.k + g.n)
    bias = np.linspace(-1, 1, m).astype(np.float32) if opts.pop("bias", False) else None
    budget = opts.pop("budget", 10**9)
    o = KernelOptions(n=g.n, **opts)
    s = plan(w.matrix, o, bias=bias, weight_digest=w.digest(), max_slab_nnz=budget, batch=batch,
             batch_stride_b=c_in * h * wd, batch_stride_c=m * g.n, conv=g)
    assert ptx.unsupported(s) is None and (budget > 10**6 or len(s.slabs) > 1)
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((batch, c_in, h, wd)).astype(np.float32)
    R = rng.standard_normal((batch, m, g.n)).astype(np.float32) if s.residual else None
    C = np.full((batch, m, g.n), np.nan, dtype=np.float32)
    for u in ptx.render_ptx(s, ARCH):
        ptx_sim.launch(u.source, u.grid, u.block, [x, C] + ([R] if s.residual else []))
    want = reference(s, _im2col(x, g), R)
    assert C.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    units = ptx.render_ptx(s, ARCH)
    masked = sum(len(re.findall(r"and\.b32 \t%b\d+, %b\d+, %m\d+", u.source)) for u in units)
    assert (masked > 0) == any(padding), "only taps that can fall in the padding are masked"
    assert not any(re.search(r"@%p[kxy]\d+ ld", u.source) for u in units)  # loads never predicated


def test_linked_objects_compute_the_same_bits_with_replaced_functions():
    """What compiler.py links: functions split over objects, some re-assembled under a renamed
    copy (the entry calls it; the original stays, uncalled). The simulator links by name, like nvlink."""
    w = _weight(24, 30, 0.3, seed=9)
    s = _schedule(w, budget=60, vec=2, groups=2, rows_per_block=4, threads_x=4, bias=np.ones(24, np.float32))
    rng = np.random.default_rng(2)
    B = rng.standard_normal((1, s.k, s.n)).astype(np.float32)
    n = [b - a for a, b in s.slabs]
    cap = ptx.register_cap(s)
    layouts = [[(cap, (0,)), (cap, tuple(range(1, k)))] if k > 1 else [(cap, (0,))] for k in n]
    replaced = [{k - 1: 255} for k in n]
    got = run_ptx(s, B, None, layouts=layouts, replaced=replaced)
    assert got.view(np.uint32).tolist() == reference(s, B, None).view(np.uint32).tolist()
    # the renamed copy is the one that runs: break the original and the result must not change
    units = ptx.render_ptx(s, ARCH, layouts=layouts, replaced=replaced)
    C = np.full((1, s.m, s.n), np.nan, dtype=np.float32)
    for u, k in zip(units, n):
        broken = u.source.replace(f".visible .func {u.kernel_name}_b{k - 1}(", f".visible .func {u.kernel_name}_dead(")
        assert broken != u.source
        ptx_sim.launch(broken, u.grid, u.block, [B, C])
    assert C.view(np.uint32).tolist() == got.view(np.uint32).tolist()


def test_ptx_large_offsets_use_computed_addresses():
    w = _weight(6, 700, 0.05, seed=3)
    s = _schedule(w, n=1 << 20, vec=4, groups=1)  # k * n * 4 bytes passes 2**31 for k >= 512
    text = ptx.render_ptx(s, ARCH)[0].source
    assert "add.s64 \t%rd15, %rd1, " in text
    assert max(int(x) for x in __import__("re").findall(r"\[%rd\d+\+(\d+)\]", text)) < 2**31


def test_ptx_render_is_deterministic_and_matches_cuda_units():
    w = _weight(40, 50, 0.2, seed=5)
    s = _schedule(w, budget=60, n=64)
    a, b = ptx.render_ptx(s, ARCH), ptx.render_ptx(s, ARCH)
    cuda = render(s)
    assert [u.source for u in a] == [u.source for u in b]
    assert [(u.kernel_name, u.grid, u.block, u.first_block, u.nnz) for u in a] == \
        [(u.kernel_name, u.grid, u.block, u.first_block, u.nnz) for u in cuda]
    assert sum(u.source.count("fma.rn.f32") for u in a) == s.nnz * s.vec


def test_ptx_isa_versions():
    assert ptx.ptx_isa_version("sm_80") == "7.8"
    assert ptx.ptx_isa_version("sm_90") == "7.8"
    assert ptx.ptx_isa_version("sm_90a") == "8.0"
    assert ptx.ptx_isa_version("sm_100a") == "8.6"
    assert ptx.ptx_isa_version("sm_120") == "8.7"
    assert ptx.ptx_isa_version("sm_100f") == "8.8"


def test_ptx_prefetch_issues_each_load_ahead_of_its_use():
    """Row j + D of B is loaded right after row j's FMAs, into row j's buffer."""
    w = _weight(8, 40, 0.5, seed=4)
    for depth in (1, 3, 64):
        s = _schedule(w, n=16, groups=1, prefetch=depth)
        lines = [x.strip() for x in ptx.render_ptx(s, ARCH)[0].source.splitlines()]
        loads = [i for i, x in enumerate(lines) if x.startswith("ld.global.nc")]
        ks = sorted(set(s.blocks[0].groups[0].arrays()[0].tolist()))
        assert len(loads) == len(ks)
        first_fma = next(i for i, x in enumerate(lines) if x.startswith("fma.rn.f32"))
        ahead = sum(1 for i in loads if i < first_fma)
        assert ahead == min(depth, len(ks))  # the first D rows are in flight before any FMA
        used = {f"%b{j}" for j in range(depth)}
        assert {x.split()[2].rstrip(",") for x in lines if x.startswith("fma.rn.f32")} <= used


# -- slabs ------------------------------------------------------------------------------------
def test_slab_budget_splits_and_bounds_every_slab():
    w = _weight(96, 80, 0.2, seed=7)
    for budget in (50, 200, 1000):
        s = _schedule(w, budget=budget, n=32, rows_per_block=4)
        units = render(s)
        assert sum(u.nnz for u in units) == s.nnz
        for start, stop in s.slabs:  # over budget only when one block alone is
            nnz = sum(s.blocks[i].nnz for i in range(start, stop))
            assert nnz <= budget or stop - start == 1
        assert [u.first_block for u in units] == [a for a, _ in s.slabs]
    assert len(_schedule(w, budget=50, n=32, rows_per_block=4).slabs) > len(
        _schedule(w, budget=1000, n=32, rows_per_block=4).slabs) >= 1


def test_slab_budget_counts_ffmas_not_nonzeros():
    w = _weight(96, 80, 0.2, seed=7)
    for vec in (1, 2, 4):
        s = _schedule(w, budget=400, n=32, rows_per_block=4, vec=vec)
        for start, stop in s.slabs:
            ffmas = vec * sum(s.blocks[i].nnz for i in range(start, stop))
            assert ffmas <= 400 or stop - start == 1
    assert len(_schedule(w, budget=400, n=32, rows_per_block=4, vec=4).slabs) > \
        len(_schedule(w, budget=400, n=32, rows_per_block=4, vec=1).slabs)


def test_slabs_are_as_few_and_as_even_as_the_budget_allows():
    from sparsert.plan import _fill, split_slabs

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
    monkeypatch.delenv("SPARSERT_MAX_SLAB_NNZ", raising=False)
    assert settings().max_slab_nnz is None
    assert slab_budget("ptx") == DEFAULT_PTX_MAX_SLAB_NNZ > DEFAULT_MAX_SLAB_NNZ
    assert slab_budget("nvrtc") == slab_budget("hipcc") == DEFAULT_MAX_SLAB_NNZ
    monkeypatch.setenv("SPARSERT_MAX_SLAB_NNZ", "123")
    assert settings().max_slab_nnz == 123
    assert slab_budget("ptx") == slab_budget("nvrtc") == 123
    monkeypatch.setenv("SPARSERT_MAX_SLAB_NNZ", "0")
    with pytest.raises(OptionsError):
        settings()


def test_plan_for_uses_the_backends_slab_budget(monkeypatch):
    """The PTX backend builds a slab's blocks as functions on parallel threads, so its slabs
    (launches) are big; NVRTC compiles a slab as one function, so its slabs stay small."""
    from sparsert.api import plan_for

    monkeypatch.delenv("SPARSERT_MAX_SLAB_NNZ", raising=False)
    w = _weight(512, 800, 0.1, seed=31)  # ~41k nonzeros: 3 NVRTC slabs, 1 PTX slab
    o = KernelOptions(n=64)
    s_ptx, kind = plan_for(w.matrix, o, backend="ptx", weight_digest=w.digest())
    assert kind == "ptx" and len(s_ptx.slabs) == 1
    s_nvrtc, kind = plan_for(w.matrix, o, backend="nvrtc", weight_digest=w.digest())
    assert kind == "nvrtc" and len(s_nvrtc.slabs) == -(-w.matrix.nnz // DEFAULT_MAX_SLAB_NNZ)
    assert s_nvrtc.blocks == s_ptx.blocks  # the same work, cut into launches differently
    s_own, _ = plan_for(w.matrix, dataclasses.replace(o, max_slab_nnz=5000), backend="ptx",
                        weight_digest=w.digest())
    assert len(s_own.slabs) >= 8  # options.max_slab_nnz wins
    # auto: the PTX budget only where the PTX backend will build it
    s_auto, kind = plan_for(w.matrix, o, weight_digest=w.digest())
    assert len(s_auto.slabs) == len(s_ptx.slabs if kind == "ptx" else s_nvrtc.slabs)


# -- the PTX module: a function per block -------------------------------------------------------
def _blocks_per_sm(registers: int, threads: int) -> int:
    return ptx.REGISTER_FILE // (-(-registers // 8) * 8 * 32 * -(-threads // 32))


def test_ptx_slab_is_function_objects_and_an_entry_that_calls_them():
    w = _weight(40, 50, 0.3, seed=5)
    s = _schedule(w, budget=200, n=64, rows_per_block=4, groups=2, residual=True)
    assert len(s.slabs) > 1
    for index, (start, stop) in enumerate(s.slabs):
        n = stop - start
        cap = ptx.register_cap(s)
        groups = ((0,),) if n == 1 else ((0,), tuple(range(1, n)))
        (u,) = ptx.render_ptx(s, ARCH, slabs=(index,), layouts=[[(cap, g) for g in groups]], replaced=[{0: 128}])
        kernel = u.kernel_name
        objects = ptx.split_objects(u.source)
        assert [f for f, _ in objects] == [f"{kernel}_o{g[0]}.ptx" for g in groups] + \
            [f"{kernel}_b0_r128.ptx", f"{kernel}.ptx"]
        assert u.source.count(f"ptxas -c -maxrregcount {cap} ====") == len(groups)
        assert u.source.count("ptxas -c -maxrregcount 128 ====") == 1
        *funcs, entry = [text for _, text in objects]
        defined = [re.findall(r"^\.visible \.func (\w+)\((.*?)\) \.noreturn$", f, re.S | re.M) for f in funcs]
        assert [name for d in defined[:len(groups)] for name, _ in d] == [f"{kernel}_b{i}" for i in range(n)]
        assert [name for name, _ in defined[-1]] == [f"{kernel}_b0_r128"]
        # B, C, R and the reduction buffer's shared address: no function object names a shared symbol
        assert all(p.count(".param .u64") == 3 and p.count(".param .u32") == 1 for d in defined for _, p in d)
        for f in funcs:
            assert ".shared .align" not in f and f"{kernel}_red" not in f and ".entry" not in f
            assert "\tret;" not in f and f.count("\texit;") >= f.count(".visible .func")
        # the entry owns the buffer (module-local) and passes it to the function it calls, which
        # is the replacement instead of the original
        assert re.search(rf"^\.shared \.align 16 \.b8 \t{kernel}_red\[{4 * s.shared_floats}\];", entry, re.M)
        assert f"mov.u32 \t%r2, {kernel}_red;" in entry and entry.count("st.param.u32 \t[arg3], %r2;") == n
        assert entry.count(f".visible .entry {kernel}(") == 1 and ".maxnreg" not in entry
        calls = re.findall(r"call\.uni \t(\w+),", entry)
        assert calls == [f"{kernel}_b0_r128"] + [f"{kernel}_b{i}" for i in range(1, n)]
        assert sorted(re.findall(r"^\.extern \.func (\w+)\(", entry, re.M)) == sorted(calls)
        fmas = sum(s.blocks[i].nnz for i in range(start, stop)) * s.vec
        assert sum(f.count("fma.rn.f32") for f in funcs[:len(groups)]) == fmas


def test_object_parts_are_even_and_cover_the_slab(monkeypatch):
    w = _weight(256, 64, 0.2, seed=4)
    s = _schedule(w, n=64, rows_per_block=8)
    (start, stop), = s.slabs
    n = stop - start
    assert ptx.object_parts(s, 0, 8) == (tuple(range(n)),)  # under OBJECT_FMAS: one process
    monkeypatch.setattr(ptx, "OBJECT_FMAS", 1)
    biggest = max(b.nnz for b in s.blocks)
    for parts, exclude in ((1, ()), (3, ()), (8, (0, 5, 6)), (10**6, ()), (4, tuple(range(1, n)))):
        r = ptx.object_parts(s, 0, parts, exclude=exclude)
        rest = [i for i in range(n) if i not in exclude]
        assert len(r) == min(parts, len(rest)) and [i for g in r for i in g] == rest
        sizes = [sum(s.blocks[start + i].nnz for i in g) for g in r]
        assert max(sizes) - min(sizes) <= 2 * biggest, sizes
    assert ptx.object_parts(s, 0, 4, exclude=range(n)) == ()


def test_big_slabs_sample_their_biggest_blocks():
    w = _weight(64 * 40, 64, 0.2, seed=4)
    s = _schedule(w, n=64, rows_per_block=64, groups=1)
    (start, stop), = s.slabs
    assert stop - start >= ptx.SAMPLE_MIN_FUNCTIONS
    sample = ptx.sample_blocks(s, 0)
    nnz = [s.blocks[start + i].nnz for i in range(stop - start)]
    assert len(sample) == ptx.SAMPLE_FUNCTIONS and list(sample) == sorted(sample)
    assert min(nnz[i] for i in sample) >= max(nnz[i] for i in range(len(nnz)) if i not in sample)
    small = _schedule(_weight(64 * 8, 64, 0.2, seed=4), n=64, rows_per_block=64, groups=1)
    assert ptx.sample_blocks(small, 0) == ()


def test_register_cap_keeps_occupancy_and_rises_on_request():
    w = _weight(128, 256, 0.1, seed=6)
    for opts in (dict(vec=1, rows_per_block=64, prefetch=16, groups=4),
                 dict(vec=1, rows_per_block=64, prefetch=16, groups=1),
                 dict(vec=2, rows_per_block=32, prefetch=8, groups=2),
                 dict(vec=4, rows_per_block=16, prefetch=4, groups=4),
                 dict(vec=1, rows_per_block=8, prefetch=4, groups=1)):
        s = _schedule(w, n=256, **opts)
        threads = s.threads_x * s.groups
        need = s.rows_per_block * s.vec + s.prefetch * s.vec + ptx._BASE_REGISTERS[s.vec]
        if s.fmas_per_load < ptx._SPARSE_PIPELINE_FMAS:
            need += ptx._SPARSE_PIPELINE_REGISTERS
        cap = ptx.register_cap(s)
        assert need <= cap <= 255 and cap % 8 == 0
        assert _blocks_per_sm(cap, threads) == _blocks_per_sm(need, threads), opts  # headroom is free
        higher = ptx.register_cap(s, at_least=cap + 1)
        assert higher > cap and _blocks_per_sm(higher, threads) < _blocks_per_sm(cap, threads)
        assert ptx.register_cap(s, at_least=255) == 255
    big = _schedule(w, n=256, vec=4, rows_per_block=16, prefetch=64, groups=1)
    assert ptx.register_cap(big) == 255
    # at 95% a row of B loaded feeds ~3 FMAs (64 rows) against ~6 at 90%: the cap starts a step up
    dense = _schedule(_weight(256, 1024, 0.10, seed=7), n=256)
    sparse = _schedule(_weight(256, 1024, 0.05, seed=7), n=256)
    assert sparse.fmas_per_load < ptx._SPARSE_PIPELINE_FMAS < dense.fmas_per_load
    assert (dense.groups, dense.rows_per_block, dense.prefetch) == (sparse.groups, sparse.rows_per_block, sparse.prefetch)
    assert ptx.register_cap(sparse) > ptx.register_cap(dense)


# -- backend choice ---------------------------------------------------------------------------
def test_resolve_backend(monkeypatch):
    s = _schedule(_weight(8, 8, 0.5, seed=1))
    assert resolve_backend("hip", "ptx", schedule=s) == "hipcc"
    assert resolve_backend("cuda", "nvrtc", schedule=s) == "nvrtc"
    assert resolve_backend("cuda", "auto", schedule=None) == "nvrtc"  # nothing to render PTX from
    with pytest.raises(OptionsError):
        resolve_backend("cuda", "ptx", schedule=None)
    with pytest.raises(OptionsError):
        resolve_backend("cuda", "llvm", schedule=s)
    monkeypatch.setenv("SPARSERT_BACKEND", "nvrtc")
    assert resolve_backend("cuda", None, schedule=s) == "nvrtc"
    monkeypatch.setenv("SPARSERT_BACKEND", "fast")
    with pytest.raises(OptionsError):
        settings()


def test_without_nvlink_auto_falls_back_and_ptx_says_what_is_missing(monkeypatch):
    from sparsert import ptxas

    monkeypatch.setattr(ptxas, "find_nvlink", lambda: None)
    assert compiler.preferred_backend("cuda", "auto") == "nvrtc"
    assert compiler.preferred_backend("cuda", "ptx") == "ptx"  # asked for: the build says why not
    with pytest.raises(ToolchainError, match="nvlink.*not found.*nvidia-cuda-nvcc"):
        ptxas.link([], arch=ARCH)


# -- compiling --------------------------------------------------------------------------------
@needs_ptxas
def test_ptx_and_nvrtc_cubins_carry_the_same_immediates():
    from sparsert.sass import sass_stats

    w = _weight(24, 40, 0.25, seed=11)
    for opts in (dict(vec=4, groups=2, relu=True, residual=True), dict(vec=1, groups=1)):
        s = _schedule(w, budget=100, n=32, rows_per_block=8, **opts)
        units = render(s)
        got = {be: [sass_stats(a.binary) for a in compile_units(
            units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend=be)]
            for be in ("ptx", "nvrtc")}
        for p, n in zip(got["ptx"], got["nvrtc"]):
            assert collections.Counter(p.immediate_bits) == collections.Counter(n.immediate_bits)
            assert not p.spills
        assert sum(x.ffma_imm for x in got["ptx"]) == s.nnz * s.vec


@needs_ptxas
def test_sass_keeps_the_software_pipelined_loads_ahead():
    """ptxas (PTXAS_OPTIONS) must keep the emitter's load order: with the default prefetch the
    median load sits ~100 SASS instructions before its first use; with prefetch=1 (each row
    loaded just before its FMAs) it would be a handful. Also: FFMA immediates == nnz, no spills."""
    from sparsert.sass import sass_stats

    rng = np.random.default_rng(21)
    a = sp.random(128, 256, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    w = load_weight(a)

    def stats(**opts):
        s = _schedule(w, n=256, **opts)
        arts = compile_units(render(s), target="cuda", arch=ARCH, use_cache=False, jobs=2,
                             schedule=s, backend="ptx")
        parts = [sass_stats(x.binary) for x in arts]
        return s, parts, sorted(d for p in parts for d in p.load_use)

    s, parts, pipelined = stats()
    assert s.prefetch == 16 and s.vec == 1
    assert sum(p.ffma_imm for p in parts) == s.nnz and not any(p.spills for p in parts)
    _, _, eager = stats(prefetch=1)
    median = pipelined[len(pipelined) // 2]
    assert median >= 60, median
    assert median >= 4 * eager[len(eager) // 2], (median, eager[len(eager) // 2])


def _conv_schedule(geo, m=64, **opts):
    from sparsert.plan import ConvGeometry

    g = ConvGeometry(*geo)
    a = sp.random(m, g.c_in * g.kh * g.kw, density=0.1, random_state=np.random.default_rng(8),
                  dtype=np.float32, format="csr")
    w = load_weight(a)
    return plan(w.matrix, KernelOptions(n=g.oh * g.ow, **opts), weight_digest=w.digest(),
                max_slab_nnz=10**9, conv=g)


@needs_ptxas
@pytest.mark.parametrize("case", [
    dict(vec=1, rows_per_block=64, prefetch=16, groups=4),
    dict(vec=1, rows_per_block=64, prefetch=16, groups=1, relu=True),
    dict(vec=2, rows_per_block=32, prefetch=8, groups=4, residual=True),
    dict(vec=4, rows_per_block=16, prefetch=4, groups=2),
    dict(conv=(16, 14, 14, 3, 3, (1, 1), (1, 1), (1, 1)), rows_per_block=64, prefetch=16, groups=4),
    dict(conv=(16, 28, 28, 3, 3, (2, 2), (1, 1), (1, 1)), rows_per_block=32, prefetch=8, groups=2),
], ids=["spmm-v1-g4", "spmm-v1-g1", "spmm-v2-residual", "spmm-v4", "conv3x3", "conv3x3-s2"])
def test_function_layout_assembles_under_its_cap_without_spills(case):
    """The kernel calls one function per block: ptxas must keep it under the estimated cap on
    the first try, with no stack frame (the .noreturn call saves nothing) and nothing spilled."""
    from sparsert.sass import sass_stats

    case = dict(case)
    geo = case.pop("conv", None)
    if geo:
        s = _conv_schedule(geo, **case)
    else:
        rng = np.random.default_rng(9)
        w = load_weight(sp.random(128, 256, density=0.1, random_state=rng, dtype=np.float32, format="csr"))
        s = _schedule(w, n=256, bias=np.ones(128, np.float32), **case)
    (art,) = compile_units(ptx.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                           jobs=2, schedule=s, backend="ptx")
    assert art.info["register_cap"] == ptx.register_cap(s)
    assert art.info["replaced"] == [] and art.info["refits"] == 0  # no function assembled twice
    assert art.info["ptxas_runs"] == len(art.info["objects"]) + 1  # and the entry once
    assert art.info["registers"] <= ptx.register_cap(s)
    assert not art.info["spill_stores"] and not art.info["spill_loads"]
    frames = [int(x) for x in re.findall(r"(\d+) bytes stack frame", art.info["log"])]
    assert len(frames) == len(s.blocks) + 1 and not any(frames)  # every function + the entry
    assert re.search(r"nvlink info .*used \d+ registers.* 0 bytes lmem", art.info["log"])
    # the reduction buffer the functions share is the kernel's: nvlink and the CUBIN agree
    smem = int(re.search(r"nvlink info .* (\d+) bytes smem", art.info["log"]).group(1))
    usage = _resource_usage(art.binary)
    assert usage["SHARED"] == smem >= 4 * s.shared_floats and usage["STACK"] == 0 and usage["LOCAL"] == 0
    assert usage["REG"] == art.info["registers"]
    st = sass_stats(art.binary)
    assert st.ffma_imm == s.nnz * s.vec and not st.spills


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """cuobjdump -res-usage of the CUBIN's one entry (its callees report 0: nvlink folds them in)."""
    import subprocess
    import tempfile

    from sparsert.sass import find_tool

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([find_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    rows = re.findall(r"Function (\w+):\n\s*(.*)", out)
    entries = [dict((k, int(v)) for k, v in re.findall(r"(\w+):(\d+)", fields)) for name, fields in rows
               if not re.search(r"_b\d+(_r\d+)?$", name)]
    assert len(entries) == 1, out
    return entries[0]


def _spilling_conv():
    """Many clamped im2col taps (5x5, padding 2) need more registers than the estimate."""
    return _conv_schedule((8, 12, 12, 5, 5, (1, 1), (2, 2), (1, 1)), rows_per_block=64, prefetch=16, groups=1)


@needs_ptxas
def test_a_function_that_spills_is_refit_alone_and_the_kernel_calls_the_refit():
    """The functions that spilled under the first cap are assembled again alone, one occupancy
    step up at a time until they fit; nvlink drops the spilling originals (nothing else is
    assembled twice), and the kernel takes the most registers of any function it calls."""
    from sparsert.sass import sass_stats

    s = _spilling_conv()
    (art,) = compile_units(ptx.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                           jobs=2, schedule=s, backend="ptx")
    base, replaced = art.info["register_cap"], dict(art.info["replaced"])
    assert base == ptx.register_cap(s) and replaced
    assert all(cap > base and cap == ptx.register_cap(s, at_least=cap) for cap in replaced.values())
    assert art.info["refits"] >= len(replaced)
    objects = len(art.info["objects"])
    assert art.info["sample"] == [] and art.info["sample_runs"] == 0  # one block: nothing to sample
    # + the entry twice: assembled beside the functions, then again to call the refits
    assert art.info["ptxas_runs"] == objects + art.info["refits"] + 2
    assert not art.info["spill_stores"] and not art.info["spill_loads"]
    assert base < art.info["registers"] <= max(replaced.values())
    st = sass_stats(art.binary)  # the spilling originals are gone from the CUBIN
    assert st.ffma_imm == s.nnz * s.vec and not st.spills
    log = ("ptxas info    : Function properties for k_b3\n    8 bytes stack frame, 4 bytes spill stores, "
           "4 bytes spill loads\nptxas info    : Function properties for k_b1\n    0 bytes stack frame, "
           "0 bytes spill stores, 0 bytes spill loads\nptxas info    : Function properties for k_b2\n"
           "    8 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads\n")
    assert ptx.spilled_functions(log) == [2, 3] and ptx.function_spills(log) == {2: 24, 3: 8}


@needs_ptxas
def test_a_sample_that_spills_raises_the_cap_for_the_rest_of_the_slab():
    """A big slab assembles its biggest functions alone first: where they miss the cap, the cap
    they fit under holds for every other object, so the rest is not refit function by function.
    The layout is fixed (not per core): 1 and 2 jobs build the same functions."""
    from sparsert.sass import sass_stats

    s = _conv_schedule((8, 12, 12, 5, 5, (1, 1), (2, 2), (1, 1)), m=64 * 32, rows_per_block=64,
                       prefetch=16, groups=1)
    assert len(s.blocks) == ptx.SAMPLE_MIN_FUNCTIONS and len(s.slabs) == 1
    arts = {jobs: compile_units(ptx.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                                jobs=jobs, schedule=s, backend="ptx")[0] for jobs in (1, 2)}
    for art in arts.values():
        info = art.info
        base, sample = info["register_cap"], info["sample"]
        assert sample == list(ptx.sample_blocks(s, 0)) and base == ptx.register_cap(s)
        caps = {tuple(blocks): cap for cap, blocks in info["objects"]}
        sampled = [caps[(b,)] for b in sample]
        assert max(sampled) > base and info["sample_runs"] > len(sample)  # the sample missed the cap
        rest = [cap for blocks, cap in caps.items() if not set(blocks) & set(sample)]
        assert rest and set(rest) == {max(sampled)}  # ... and its cap held for the others
        assert sorted(b for blocks in caps for b in blocks) == list(range(len(s.blocks)))
        assert info["refits"] <= len(s.blocks) // 4, info["replaced"]  # not one refit per function
        assert not info["spill_stores"] and not info["spill_loads"]
        st = sass_stats(art.binary)
        assert st.ffma_imm == s.nnz and not st.spills and st.registers == info["registers"]
    one, two = (sass_stats(arts[j].binary) for j in (1, 2))
    assert (one.instructions, one.registers) == (two.instructions, two.registers)


@needs_ptxas
def test_kernel_ptx_is_the_ptx_that_was_linked(monkeypatch, tmp_path):
    """kernel.ptx holds each slab's objects as compiler.py built them (its partition, the refit
    functions under their caps), from a cold build and from the cache alike: assembling and
    linking those objects gives the same kernel."""
    import sparsert
    from sparsert.ptxas import assemble, link
    from sparsert.sass import sass_stats

    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((64, 8, 5, 5)) * (rng.random((64, 8, 5, 5)) < 0.1)).astype(np.float32)
    for _ in range(2):  # cold, then warm
        k = sparsert.compile_conv2d(w, (12, 12), padding=2, arch=ARCH, thread_groups=1, rows_per_block=64)
        info = k.kernel.artifacts[0].info
        assert info["replaced"]
        text = k.kernel.ptx[0]
        for b, cap in info["replaced"]:
            assert f"_b{b}_r{cap}.ptx: ptxas -c -maxrregcount {cap} ====" in text
        objects = []
        for name, src in ptx.split_objects(text):
            cap = re.search(rf"{re.escape(name)}: ptxas -c(?: -maxrregcount (\d+))?", text).group(1)
            opts = compiler.PTXAS_OPTIONS + ("-c",) + (("-maxrregcount", cap) if cap else ())
            objects.append((name, assemble(src, arch=ARCH, name=name, options=opts).cubin))
        again = sass_stats(link(objects, arch=ARCH).cubin)
        built = sass_stats(k.kernel.artifacts[0].binary)
        assert (again.instructions, again.ffma_imm, again.registers) == (built.instructions, built.ffma_imm, built.registers)
    assert k.kernel.artifacts[0].cached


@needs_ptxas
def test_a_lone_slab_gets_every_core_and_the_same_code(monkeypatch):
    """A slab splits into as many objects as there are cores: the count changes the time and the
    ELF layout, not the code, so it is not part of the cache key."""
    from sparsert.sass import sass_stats

    w = _weight(256, 128, 0.1, seed=12)
    s = _schedule(w, n=64)
    assert len(s.slabs) == 1 and len(s.blocks) == 4
    units = ptx.render_ptx(s, ARCH)
    small, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=4, schedule=s, backend="ptx")
    cap = ptx.register_cap(s)
    assert small.info["objects"] == [[cap, [0, 1, 2, 3]]] and small.info["split_compile"] == 4  # one object: ptxas threads
    monkeypatch.setattr(ptx, "OBJECT_FMAS", 1)  # this small slab would otherwise be one object
    one, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend="ptx")
    four, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=4, schedule=s, backend="ptx")
    assert one.info["threads"] == 1 and four.info["threads"] == 4 and four.info["split_compile"] == 1
    assert one.info["objects"] == [[cap, [0, 1, 2, 3]]] and four.info["objects"] == [[cap, [i]] for i in range(4)]
    a, b = sass_stats(one.binary), sass_stats(four.binary)
    assert (a.instructions, a.ffma_imm, a.registers) == (b.instructions, b.ffma_imm, b.registers)
    assert sorted(a.immediate_bits) == sorted(b.immediate_bits)  # functions may come in another order
    keys = {compiler.UnitBuild(units[0], target="cuda", arch=ARCH, cache=None, backend="ptx",
                               schedule=s, threads=t).key for t in (1, 4)}
    assert len(keys) == 1


@needs_ptxas
def test_parallel_compile_equals_serial_byte_for_byte():
    w = _weight(64, 48, 0.2, seed=13)
    s = _schedule(w, budget=80, n=32, rows_per_block=4)
    units = render(s)
    assert len(units) >= 4
    serial = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend="ptx")
    parallel = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=3, schedule=s, backend="ptx")
    assert [a.binary for a in serial] == [a.binary for a in parallel]
    assert all(not a.cached for a in serial + parallel)


@needs_ptxas
def test_warm_cache_compiles_and_renders_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = _weight(48, 40, 0.2, seed=17)
    s = _schedule(w, budget=80, n=32, rows_per_block=4)
    units = render(s)
    calls = []
    cold = compile_units(units, target="cuda", arch=ARCH, jobs=2, schedule=s, backend="ptx",
                         progress=lambda done, total, art: calls.append((done, total, art.cached)))
    assert [c[:2] for c in calls] == [(i + 1, len(units)) for i in range(len(units))]
    assert not any(c[2] for c in calls)

    def boom(*args, **kwargs):
        raise AssertionError("a warm cache must not build or render")

    monkeypatch.setattr(compiler.UnitBuild, "build", boom)
    for renders in ("render_ptx", "function_objects", "entry_object", "replacement_object"):
        monkeypatch.setattr(ptx, renders, boom)
    calls.clear()
    warm = compile_units(units, target="cuda", arch=ARCH, jobs=2, schedule=s, backend="ptx",
                         progress=lambda done, total, art: calls.append((done, total, art.cached)))
    assert [a.binary for a in warm] == [a.binary for a in cold]
    assert all(a.cached for a in warm) and all(c[2] for c in calls) and len(calls) == len(units)
    # a different schedule (one weight changed) is a different key: it would build
    changed = dataclasses.replace(s, bias_bits=tuple([0x3F800000] * s.m))
    with pytest.raises(AssertionError, match="warm cache"):
        compile_units(render(changed), target="cuda", arch=ARCH, jobs=1, schedule=changed, backend="ptx")


@needs_ptxas
def test_ptxas_errors_name_the_unit():
    with pytest.raises(CompileError, match="broken.ptx"):
        assemble(".version 7.8\n.target sm_90\n.address_size 64\nnot ptx at all\n", arch=ARCH, name="broken.ptx")
    with pytest.raises(OptionsError):
        assemble("", arch="compute_90")


def test_schedules_the_emitter_does_not_know_go_to_nvrtc():
    from sparsert.plan import ConvGeometry

    s = _schedule(_weight(8, 9, 0.5, seed=2), n=9)  # n = ow * oh of a 3x3 image, k = c_in * 1 * 1
    assert ptx.unsupported(s) is None
    conv = dataclasses.replace(s, conv=ConvGeometry(c_in=9, h=3, w=3, kh=1, kw=1, stride=(1, 1),
                                                    padding=(0, 0), dilation=(1, 1)))
    assert ptx.unsupported(conv) is None and resolve_backend("cuda", "auto", schedule=conv) in ("ptx", "nvrtc")
    wide = dataclasses.replace(conv, vec=4)  # plan() never makes this: im2col reads are scalar
    assert "conv" in ptx.unsupported(wide)
    assert resolve_backend("cuda", "auto", schedule=wide) == "nvrtc"
    with pytest.raises(OptionsError, match="conv"):
        resolve_backend("cuda", "ptx", schedule=wide)
    with pytest.raises(OptionsError, match="conv"):
        ptx.render_ptx(wide, ARCH)


def test_ptx_units_must_come_from_the_schedule_passed():
    a = _schedule(_weight(8, 9, 0.5, seed=2))
    b = _schedule(_weight(8, 9, 0.5, seed=3))
    with pytest.raises(OptionsError, match="not rendered from this schedule"):
        compiler.UnitBuild(render(a)[0], target="cuda", arch=ARCH, cache=None, backend="ptx", schedule=b)


@needs_ptxas
def test_ptx_backend_compile_renders_no_cuda_until_asked(monkeypatch, tmp_path):
    import sparsert
    from sparsert import api
    from sparsert import render as render_mod

    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = _weight(40, 48, 0.2, seed=23)

    def boom(*args, **kwargs):
        raise AssertionError("compile() must not render the CUDA source for the PTX backend")

    with monkeypatch.context() as m:
        m.setattr(api, "render", boom)
        kernel = sparsert.compile(w, n=64, arch=ARCH, options=KernelOptions(n=64, rows_per_block=8,
                                                                            max_slab_nnz=100))
    assert kernel.backend == "ptx" and len(kernel.units) > 1
    assert all(u.source == "" for u in kernel.units)  # launch geometry only
    assert kernel.stats.source_bytes == sum(len(p.encode()) for p in kernel.ptx)
    want = render_mod.render(kernel.schedule)
    assert kernel.sources == tuple(u.source for u in want)  # rendered on first use
    assert [(u.kernel_name, u.grid, u.block) for u in want] == \
        [(u.kernel_name, u.grid, u.block) for u in kernel.units]
    got = kernel.run_host(np.ones((48, 64), np.float32))  # the host path renders it too
    np.testing.assert_allclose(got, w.matrix.toarray() @ np.ones((48, 64)), rtol=1e-5, atol=1e-5)
