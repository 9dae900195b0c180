"""The PTX emitter and the PTX objects of a slab, as text (no assembler needed): determinism,
addressing, prefetch order, a function per block, object partitions, samples, register caps,
and the schedules it refuses. (Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import dataclasses
import re

import pytest
from schedules import ARCH, schedule, weight

from sparsert.backends.cuda import BACKENDS, ptx, ptx_objects
from sparsert.backends.cuda.limits import REGISTER_FILE
from sparsert.backends.cuda.params import (_BASE_REGISTERS, _SPARSE_PIPELINE_FMAS, _SPARSE_PIPELINE_REGISTERS,
                                           register_cap)
from sparsert.backends.source.render import render
from sparsert.errors import OptionsError
from sparsert.ir.schedule import ConvGeometry
from sparsert.options import KernelOptions
from sparsert.pipeline import Layout, plan_with


def test_ptx_large_offsets_use_computed_addresses():
    w = weight(6, 700, 0.05, seed=3)
    s = schedule(w, n=1 << 20, vec=4, groups=1)  # k * n * 4 bytes passes 2**31 for k >= 512
    text = ptx_objects.render_ptx(s, ARCH)[0].source
    assert "add.s64 \t%rd15, %rd1, " in text
    assert max(int(x) for x in re.findall(r"\[%rd\d+\+(\d+)\]", text)) < 2**31


def test_ptx_render_is_deterministic_and_matches_cuda_units():
    w = weight(40, 50, 0.2, seed=5)
    s = schedule(w, budget=60, n=64)
    a, b = ptx_objects.render_ptx(s, ARCH), ptx_objects.render_ptx(s, ARCH)
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
    w = weight(8, 40, 0.5, seed=4)
    for depth in (1, 3, 64):
        s = schedule(w, n=16, groups=1, prefetch=depth)
        lines = [x.strip() for x in ptx_objects.render_ptx(s, ARCH)[0].source.splitlines()]
        loads = [i for i, x in enumerate(lines) if x.startswith("ld.global.nc")]
        ks = sorted(set(s.blocks[0].groups[0].arrays()[0].tolist()))
        assert len(loads) == len(ks)
        first_fma = next(i for i, x in enumerate(lines) if x.startswith("fma.rn.f32"))
        ahead = sum(1 for i in loads if i < first_fma)
        assert ahead == min(depth, len(ks))  # the first D rows are in flight before any FMA
        used = {f"%b{j}" for j in range(depth)}
        assert {x.split()[2].rstrip(",") for x in lines if x.startswith("fma.rn.f32")} <= used


def test_ptx_header_stamps_the_cuda_backends_code_digest():
    """The `(PTX emitter <16 hex>)` stamp is the hash of the CUDA backend's sources, part of the
    cache key."""
    from sparsert.backends.base import package_digest

    s = schedule(weight(8, 9, 0.5, seed=2))
    text = ptx_objects.render_ptx(s, ARCH)[0].source
    stamp = re.search(r"\(PTX emitter ([0-9a-f]{16})\)", text)
    assert stamp and ptx.emitter_digest() == stamp.group(1) == package_digest("cuda")[:16]
    unit = BACKENDS["ptx"].units(s, ARCH)[0]
    assert BACKENDS["ptx"].cache_parts(s, unit, ARCH)["code"] == package_digest("cuda")


# -- the PTX module: a function per block -------------------------------------------------------
def _blocks_per_sm(registers: int, threads: int) -> int:
    return REGISTER_FILE // (-(-registers // 8) * 8 * 32 * -(-threads // 32))


def test_ptx_slab_is_function_objects_and_an_entry_that_calls_them():
    w = weight(40, 50, 0.3, seed=5)
    s = schedule(w, budget=200, n=64, rows_per_block=4, groups=2, residual=True)
    assert len(s.slabs) > 1
    for index, (start, stop) in enumerate(s.slabs):
        n = stop - start
        cap = register_cap(s)
        groups = ((0,),) if n == 1 else ((0,), tuple(range(1, n)))
        (u,) = ptx_objects.render_ptx(s, ARCH, slabs=(index,), layouts=[[(cap, g) for g in groups]],
                                      replaced=[{0: 128}])
        kernel = u.kernel_name
        objects = ptx_objects.split_objects(u.source)
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
    w = weight(256, 64, 0.2, seed=4)
    s = schedule(w, n=64, rows_per_block=8)
    (start, stop), = s.slabs
    n = stop - start
    assert ptx_objects.object_parts(s, 0, 8) == (tuple(range(n)),)  # under OBJECT_FMAS: one process
    monkeypatch.setattr(ptx_objects, "OBJECT_FMAS", 1)
    biggest = max(b.nnz for b in s.blocks)
    for parts, exclude in ((1, ()), (3, ()), (8, (0, 5, 6)), (10**6, ()), (4, tuple(range(1, n)))):
        r = ptx_objects.object_parts(s, 0, parts, exclude=exclude)
        rest = [i for i in range(n) if i not in exclude]
        assert len(r) == min(parts, len(rest)) and [i for g in r for i in g] == rest
        sizes = [sum(s.blocks[start + i].nnz for i in g) for g in r]
        assert max(sizes) - min(sizes) <= 2 * biggest, sizes
    assert ptx_objects.object_parts(s, 0, 4, exclude=range(n)) == ()


def test_big_slabs_sample_their_biggest_blocks():
    w = weight(64 * 40, 64, 0.2, seed=4)
    s = schedule(w, n=64, rows_per_block=64, groups=1)
    (start, stop), = s.slabs
    assert stop - start >= ptx_objects.SAMPLE_MIN_FUNCTIONS
    sample = ptx_objects.sample_blocks(s, 0)
    nnz = [s.blocks[start + i].nnz for i in range(stop - start)]
    assert len(sample) == ptx_objects.SAMPLE_FUNCTIONS and list(sample) == sorted(sample)
    assert min(nnz[i] for i in sample) >= max(nnz[i] for i in range(len(nnz)) if i not in sample)
    small = schedule(weight(64 * 8, 64, 0.2, seed=4), n=64, rows_per_block=64, groups=1)
    assert ptx_objects.sample_blocks(small, 0) == ()


def test_register_cap_keeps_occupancy_and_rises_on_request():
    w = weight(128, 256, 0.1, seed=6)
    for opts in (dict(vec=1, rows_per_block=64, prefetch=16, groups=4),
                 dict(vec=1, rows_per_block=64, prefetch=16, groups=1),
                 dict(vec=2, rows_per_block=32, prefetch=8, groups=2),
                 dict(vec=4, rows_per_block=16, prefetch=4, groups=4),
                 dict(vec=1, rows_per_block=8, prefetch=4, groups=1)):
        s = schedule(w, n=256, **opts)
        threads = s.threads_x * s.groups
        need = s.rows_per_block * s.vec + s.prefetch * s.vec + _BASE_REGISTERS[s.vec]
        if s.fmas_per_load < _SPARSE_PIPELINE_FMAS:
            need += _SPARSE_PIPELINE_REGISTERS
        cap = register_cap(s)
        assert need <= cap <= 255 and cap % 8 == 0
        assert _blocks_per_sm(cap, threads) == _blocks_per_sm(need, threads), opts  # headroom is free
        higher = register_cap(s, at_least=cap + 1)
        assert higher > cap and _blocks_per_sm(higher, threads) < _blocks_per_sm(cap, threads)
        assert register_cap(s, at_least=255) == 255
    big = schedule(w, n=256, vec=4, rows_per_block=16, prefetch=64, groups=1)
    assert register_cap(big) == 255
    # at 95% a row of B loaded feeds ~3 FMAs (64 rows) against ~6 at 90%: the cap starts a step up
    dense = schedule(weight(256, 1024, 0.10, seed=7), n=256)
    sparse = schedule(weight(256, 1024, 0.05, seed=7), n=256)
    assert sparse.fmas_per_load < _SPARSE_PIPELINE_FMAS < dense.fmas_per_load
    assert (dense.groups, dense.rows_per_block, dense.prefetch) == (sparse.groups, sparse.rows_per_block, sparse.prefetch)
    assert register_cap(sparse) > register_cap(dense)


# -- what the emitter refuses -------------------------------------------------------------------
def test_schedules_the_emitter_does_not_know_raise_options_error():
    """Rewritten (was test_schedules_the_emitter_does_not_know_go_to_nvrtc): there is no
    schedule-based fallback to NVRTC any more. The backend is resolved before planning; the PTX
    backend refuses vec > 1 over a virtual im2col up front (plan_with), and a schedule the
    emitter cannot render raises OptionsError from the emitter itself."""
    s = schedule(weight(8, 9, 0.5, seed=2), n=9)  # n = ow * oh of a 3x3 image, k = c_in * 1 * 1
    assert ptx.unsupported(s) is None
    g = ConvGeometry(c_in=9, h=3, w=3, kh=1, kw=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1))
    conv = dataclasses.replace(s, conv=g)
    assert ptx.unsupported(conv) is None
    ptx._Emitter(conv, ARCH)  # renders
    wide = dataclasses.replace(conv, vec=4)  # plan() never makes this: im2col reads are scalar
    assert "conv" in ptx.unsupported(wide)
    with pytest.raises(OptionsError, match="conv"):
        ptx._Emitter(wide, ARCH)
    with pytest.raises(OptionsError, match="conv"):
        ptx_objects.render_ptx(wide, ARCH)
    # the PTX backend says so before planning; NVRTC takes the same request
    g4 = dataclasses.replace(g, h=4, w=4)  # n = 16: vec=4 divides it
    wide_opts = KernelOptions(n=g4.n, vec=4)
    assert "conv" in BACKENDS["ptx"].supports(wide_opts, g4)
    assert BACKENDS["nvrtc"].supports(wide_opts, g4) is None
    w = weight(8, 9, 0.5, seed=2)
    with pytest.raises(OptionsError, match="conv"):
        plan_with(BACKENDS["ptx"], w.matrix, wide_opts, bias=None, weight_digest=w.digest(),
                  layout=Layout(conv=g4))


def test_ptx_units_must_come_from_the_schedule_passed():
    a = schedule(weight(8, 9, 0.5, seed=2))
    b = schedule(weight(8, 9, 0.5, seed=3))
    with pytest.raises(OptionsError, match="not rendered from this schedule"):
        BACKENDS["ptx"].build(b, render(a)[0], ARCH)
