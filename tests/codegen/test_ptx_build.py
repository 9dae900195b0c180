"""PTX slabs assembled and linked (ptxas + nvlink, no device): same FFMA immediates as NVRTC,
the software pipeline kept, every function under its register cap, refits of what spills,
samples, kernel.ptx as linked, the per-core layout, parallel = serial, errors.
(Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import scipy.sparse as sp
from schedules import ARCH, conv_schedule, resource_usage, schedule, spilling_conv, weight

from sparsert.backends.cuda import BACKENDS, build, ptx_objects
from sparsert.backends.cuda.params import register_cap
from sparsert.backends.cuda.sass import sass_stats
from sparsert.backends.source.render import render
from sparsert.errors import CompileError, OptionsError
from sparsert.frontend.weights import load_weight
from sparsert.options import KernelOptions
from sparsert.pipeline import compile_units
from sparsert.runtime.cache import cache_key
from sparsert.toolchain.ptxas import assemble, link

pytestmark = pytest.mark.ptxas


def test_ptx_and_nvrtc_cubins_carry_the_same_immediates():
    w = weight(24, 40, 0.25, seed=11)
    for opts in (dict(vec=4, groups=2, relu=True, residual=True), dict(vec=1, groups=1)):
        s = schedule(w, budget=100, n=32, rows_per_block=8, **opts)
        units = render(s)
        got = {be: [sass_stats(a.binary) for a in compile_units(
            units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend=be)]
            for be in ("ptx", "nvrtc")}
        for p, n in zip(got["ptx"], got["nvrtc"]):
            assert collections.Counter(p.immediate_bits) == collections.Counter(n.immediate_bits)
            assert not p.spills
        assert sum(x.ffma_imm for x in got["ptx"]) == s.nnz * s.vec


def test_sass_keeps_the_software_pipelined_loads_ahead():
    """ptxas (PTXAS_OPTIONS) must keep the emitter's load order: with the default prefetch the
    median load sits ~100 SASS instructions before its first use; with prefetch=1 (each row
    loaded just before its FMAs) it would be a handful. Also: FFMA immediates == nnz, no spills."""
    rng = np.random.default_rng(21)
    a = sp.random(128, 256, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    w = load_weight(a)

    def stats(**opts):
        s = schedule(w, n=256, **opts)
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
    case = dict(case)
    geo = case.pop("conv", None)
    if geo:
        s = conv_schedule(geo, **case)
    else:
        rng = np.random.default_rng(9)
        w = load_weight(sp.random(128, 256, density=0.1, random_state=rng, dtype=np.float32, format="csr"))
        s = schedule(w, n=256, bias=np.ones(128, np.float32), **case)
    (art,) = compile_units(ptx_objects.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                           jobs=2, schedule=s, backend="ptx")
    assert art.info["register_cap"] == register_cap(s)
    assert art.info["replaced"] == [] and art.info["refits"] == 0  # no function assembled twice
    assert art.info["ptxas_runs"] == len(art.info["objects"]) + 1  # and the entry once
    assert art.info["registers"] <= register_cap(s)
    assert not art.info["spill_stores"] and not art.info["spill_loads"]
    frames = [int(x) for x in re.findall(r"(\d+) bytes stack frame", art.info["log"])]
    assert len(frames) == len(s.blocks) + 1 and not any(frames)  # every function + the entry
    assert re.search(r"nvlink info .*used \d+ registers.* 0 bytes lmem", art.info["log"])
    # the reduction buffer the functions share is the kernel's: nvlink and the CUBIN agree
    smem = int(re.search(r"nvlink info .* (\d+) bytes smem", art.info["log"]).group(1))
    usage = resource_usage(art.binary)
    assert usage["SHARED"] == smem >= 4 * s.shared_floats and usage["STACK"] == 0 and usage["LOCAL"] == 0
    assert usage["REG"] == art.info["registers"]
    st = sass_stats(art.binary)
    assert st.ffma_imm == s.nnz * s.vec and not st.spills


def test_a_function_that_spills_is_refit_alone_and_the_kernel_calls_the_refit():
    """The functions that spilled under the first cap are assembled again alone, one occupancy
    step up at a time until they fit; nvlink drops the spilling originals (nothing else is
    assembled twice), and the kernel takes the most registers of any function it calls."""
    s = spilling_conv()
    (art,) = compile_units(ptx_objects.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                           jobs=2, schedule=s, backend="ptx")
    base, replaced = art.info["register_cap"], dict(art.info["replaced"])
    assert base == register_cap(s) and replaced
    assert all(cap > base and cap == register_cap(s, at_least=cap) for cap in replaced.values())
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
    assert ptx_objects.spilled_functions(log) == [2, 3] and ptx_objects.function_spills(log) == {2: 24, 3: 8}


def test_a_sample_that_spills_raises_the_cap_for_the_rest_of_the_slab():
    """A big slab assembles its biggest functions alone first: where they miss the cap, the cap
    they fit under holds for every other object, so the rest is not refit function by function.
    The layout is fixed (not per core): 1 and 2 jobs build the same functions."""
    s = conv_schedule((8, 12, 12, 5, 5, (1, 1), (2, 2), (1, 1)), m=64 * 32, rows_per_block=64,
                      prefetch=16, groups=1)
    assert len(s.blocks) == ptx_objects.SAMPLE_MIN_FUNCTIONS and len(s.slabs) == 1
    arts = {jobs: compile_units(ptx_objects.render_ptx(s, ARCH), target="cuda", arch=ARCH, use_cache=False,
                                jobs=jobs, schedule=s, backend="ptx")[0] for jobs in (1, 2)}
    for art in arts.values():
        info = art.info
        base, sample = info["register_cap"], info["sample"]
        assert sample == list(ptx_objects.sample_blocks(s, 0)) and base == register_cap(s)
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


def test_kernel_ptx_is_the_ptx_that_was_linked(monkeypatch, tmp_path):
    """kernel.ptx holds each slab's objects as the PTX build built them (its partition, the refit
    functions under their caps), from a cold build and from the cache alike: assembling and
    linking those objects gives the same kernel."""
    import sparsert

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
        for name, src in ptx_objects.split_objects(text):
            cap = re.search(rf"{re.escape(name)}: ptxas -c(?: -maxrregcount (\d+))?", text).group(1)
            opts = build.PTXAS_OPTIONS + ("-c",) + (("-maxrregcount", cap) if cap else ())
            objects.append((name, assemble(src, arch=ARCH, name=name, options=opts).output))
        again = sass_stats(link(objects, arch=ARCH).output)
        built = sass_stats(k.kernel.artifacts[0].binary)
        assert (again.instructions, again.ffma_imm, again.registers) == (built.instructions, built.ffma_imm, built.registers)
    assert k.kernel.artifacts[0].cached


def test_a_lone_slab_gets_every_core_and_the_same_code(monkeypatch):
    """A slab splits into as many objects as there are cores: the count changes the time and the
    ELF layout, not the code, so it is not part of the cache key."""
    w = weight(256, 128, 0.1, seed=12)
    s = schedule(w, n=64)
    assert len(s.slabs) == 1 and len(s.blocks) == 4
    units = ptx_objects.render_ptx(s, ARCH)
    small, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=4, schedule=s, backend="ptx")
    cap = register_cap(s)
    assert small.info["objects"] == [[cap, [0, 1, 2, 3]]] and small.info["split_compile"] == 4  # one object: ptxas threads
    monkeypatch.setattr(ptx_objects, "OBJECT_FMAS", 1)  # this small slab would otherwise be one object
    one, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend="ptx")
    four, = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=4, schedule=s, backend="ptx")
    assert one.info["threads"] == 1 and four.info["threads"] == 4 and four.info["split_compile"] == 1
    assert one.info["objects"] == [[cap, [0, 1, 2, 3]]] and four.info["objects"] == [[cap, [i]] for i in range(4)]
    a, b = sass_stats(one.binary), sass_stats(four.binary)
    assert (a.instructions, a.ffma_imm, a.registers) == (b.instructions, b.ffma_imm, b.registers)
    assert sorted(a.immediate_bits) == sorted(b.immediate_bits)  # functions may come in another order
    # the key: what the backend keys a unit on, whatever the cores it is built on
    backend = BACKENDS["ptx"]
    parts = backend.cache_parts(s, units[0], ARCH)
    assert not {"threads", "gate", "ptxas_threads"} & set(parts)
    parallel = {t: backend.parallel(1, 1, t) for t in (1, 4)}
    assert parallel[1]["threads"] == 1 and parallel[4]["threads"] == 4
    keys = {cache_key(**backend.cache_parts(s, units[0], ARCH)) for _ in parallel}
    assert len(keys) == 1


def test_parallel_compile_equals_serial_byte_for_byte():
    w = weight(64, 48, 0.2, seed=13)
    s = schedule(w, budget=80, n=32, rows_per_block=4)
    units = render(s)
    assert len(units) >= 4
    serial = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=1, schedule=s, backend="ptx")
    parallel = compile_units(units, target="cuda", arch=ARCH, use_cache=False, jobs=3, schedule=s, backend="ptx")
    assert [a.binary for a in serial] == [a.binary for a in parallel]
    assert all(not a.cached for a in serial + parallel)


def test_ptxas_errors_name_the_unit():
    with pytest.raises(CompileError, match="broken.ptx"):
        assemble(".version 7.8\n.target sm_90\n.address_size 64\nnot ptx at all\n", arch=ARCH, name="broken.ptx")
    with pytest.raises(OptionsError):
        assemble("", arch="compute_90")


def test_ptx_backend_compile_renders_no_cuda_until_asked(monkeypatch, tmp_path):
    import sparsert
    import sparsert.backends.cuda as cuda_backends
    from sparsert.backends.source import render as render_mod

    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = weight(40, 48, 0.2, seed=23)

    def boom(*args, **kwargs):
        raise AssertionError("compile() must not render the CUDA source for the PTX backend")

    with monkeypatch.context() as m:
        m.setattr(cuda_backends, "render", boom)
        m.setattr(render_mod, "render", boom)
        kernel = sparsert.compile(w, n=64, arch=ARCH,
                                  options=KernelOptions(n=64, rows_per_block=8, max_slab_nnz=100))
    assert kernel.backend == "ptx" and len(kernel.units) > 1
    assert all(u.source == "" for u in kernel.units)  # launch geometry only
    assert kernel.stats.source_bytes == sum(len(p.encode()) for p in kernel.ptx)
    want = render_mod.render(kernel.schedule)
    assert kernel.sources == tuple(u.source for u in want)  # rendered on first use
    assert [(u.kernel_name, u.grid, u.block) for u in want] == \
        [(u.kernel_name, u.grid, u.block) for u in kernel.units]
    got = kernel.run_host(np.ones((48, 64), np.float32))  # the host path renders it too
    np.testing.assert_allclose(got, w.matrix.toarray() @ np.ones((48, 64)), rtol=1e-5, atol=1e-5)
