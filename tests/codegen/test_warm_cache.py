"""A warm kernel cache builds and renders nothing; a changed schedule is a new key.
(Split from the old tests/test_compile_time.py.)"""

from __future__ import annotations

import dataclasses

import pytest
from schedules import ARCH, schedule, weight

from sparsert.backends.cuda import build, ptx_objects
from sparsert.backends.source.render import render
from sparsert.pipeline import compile_units
from sparsert.runtime.build import CachedBuild


@pytest.mark.ptxas
def test_warm_cache_compiles_and_renders_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    w = weight(48, 40, 0.2, seed=17)
    s = schedule(w, budget=80, n=32, rows_per_block=4)
    units = render(s)
    calls = []
    cold = compile_units(units, target="cuda", arch=ARCH, jobs=2, schedule=s, backend="ptx",
                         progress=lambda done, total, art: calls.append((done, total, art.cached)))
    assert [c[:2] for c in calls] == [(i + 1, len(units)) for i in range(len(units))]
    assert not any(c[2] for c in calls)

    def boom(*args, **kwargs):
        raise AssertionError("a warm cache must not build or render")

    monkeypatch.setattr(CachedBuild, "build", boom)  # was compiler.UnitBuild.build
    monkeypatch.setattr(build.PtxSlabBuild, "build", boom)
    for renders in ("render_ptx", "function_objects", "entry_object", "replacement_object"):
        monkeypatch.setattr(ptx_objects, renders, boom)
        if hasattr(build, renders):  # the names build.py imported
            monkeypatch.setattr(build, renders, boom)
    calls.clear()
    warm = compile_units(units, target="cuda", arch=ARCH, jobs=2, schedule=s, backend="ptx",
                         progress=lambda done, total, art: calls.append((done, total, art.cached)))
    assert [a.binary for a in warm] == [a.binary for a in cold]
    assert all(a.cached for a in warm) and all(c[2] for c in calls) and len(calls) == len(units)
    # a different schedule (one weight changed) is a different key: it would build
    changed = dataclasses.replace(s, bias_bits=tuple([0x3F800000] * s.m))
    with pytest.raises(AssertionError, match="warm cache"):
        compile_units(render(changed), target="cuda", arch=ARCH, jobs=1, schedule=changed, backend="ptx")
