"""Kernel cache: hits, corrupt entries are misses, and concurrent processes build once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.backends import resolve
from sparsert.backends.cuda import BACKENDS
from sparsert.options import KernelOptions
from sparsert.backends.cuda import plan  # ir.plan.plan with the CUDA parameter choice
from sparsert.backends.source.render import render
from sparsert.runtime.cache import cache_key


def _small(seed=0):
    return sp.random(24, 32, density=0.1, random_state=seed, format="csr", dtype=np.float32)


def _entries(root: Path) -> list[Path]:
    return sorted((root / "kernels").rglob("*.bin"))


def test_hit_returns_identical_binary_without_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    k1 = sparsert.compile(_small(), n=16, arch="sm_80")
    assert k1.stats.cached_slabs == 0 and len(_entries(tmp_path)) == 1
    k2 = sparsert.compile(_small(), n=16, arch="sm_80")
    assert k2.stats.cached_slabs == k2.stats.slabs == 1
    assert k2.artifacts[0].binary == k1.artifacts[0].binary
    assert k2.stats.registers == k1.stats.registers  # metadata survives the round trip
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_entries_are_misses_and_get_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    good = sparsert.compile(_small(1), n=8, arch="sm_80").artifacts[0].binary
    (binary,) = _entries(tmp_path)
    meta = binary.with_suffix(".json")
    corruptions = [
        lambda: binary.write_bytes(binary.read_bytes()[:-1] + bytes([binary.read_bytes()[-1] ^ 1])),  # one bit
        lambda: binary.write_bytes(b""),  # truncated payload
        lambda: meta.write_text("{not json"),  # broken metadata
        lambda: meta.write_text(json.dumps({"format": 1})),  # metadata of the wrong shape
        lambda: binary.unlink(),  # half an entry
    ]
    for corrupt in corruptions:
        corrupt()
        k = sparsert.compile(_small(1), n=8, arch="sm_80")
        assert k.stats.cached_slabs == 0, corrupt  # a miss, not a crash, not a wrong kernel
        assert k.artifacts[0].binary == good


def test_key_covers_source_arch_options_and_compiler(tmp_path):
    """Was UnitBuild(unit, ...).key: now cache_key(**backend.cache_parts(schedule, unit, arch))
    for each backend object (NVRTC keys the source, PTX the schedule's digest and slab)."""
    w = sparsert.load_weight(_small(2))
    s = plan(w.matrix, KernelOptions(n=8), weight_digest=w.digest(), max_slab_nnz=10**6)
    (unit,) = render(s)
    s2 = plan(w.matrix, KernelOptions(n=8, relu=True), weight_digest=w.digest(), max_slab_nnz=10**6)
    for backend in (BACKENDS["nvrtc"], BACKENDS["ptx"]):
        def key(schedule=s, unit=unit, arch="sm_80", **override):
            return cache_key(**(backend.cache_parts(schedule, unit, arch) | override))

        base = key()
        assert key() == base
        assert key(arch="sm_90") != base
        parts = backend.cache_parts(s, unit, "sm_80")
        assert key(options=list(parts["options"]) + ["-lineinfo"]) != base
        assert key(schedule=s2, unit=render(s2)[0]) != base
        assert key(code="0" * 64) != base  # the backend's own code is keyed
        assert parts["backend"] == backend.name and parts["arch"] == "sm_80"
    assert cache_key(**BACKENDS["nvrtc"].cache_parts(s, unit, "sm_80")) != \
        cache_key(**BACKENDS["ptx"].cache_parts(s, unit, "sm_80"))
    assert cache_key(a=1, compiler="nvrtc 13.0") != cache_key(a=1, compiler="nvrtc 13.5")


@pytest.mark.hipcc
def test_hip_key_covers_source_and_arch():
    w = sparsert.load_weight(_small(2))
    s = plan(w.matrix, KernelOptions(n=8), weight_digest=w.digest(), max_slab_nnz=10**6)
    hip = resolve("hip")
    (unit,) = hip.units(s, "gfx90a")
    base = cache_key(**hip.cache_parts(s, unit, "gfx90a"))
    assert base != cache_key(**hip.cache_parts(s, unit, "gfx942"))
    assert hip.cache_parts(s, unit, "gfx90a")["source"] == unit.source


_WORKER = r"""
import sys, time, json, os
import numpy as np, scipy.sparse as sp
import sparsert
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.005)
a = sp.random(64, 64, density=0.1, random_state=7, format="csr", dtype=np.float32)
k = sparsert.compile(a, n=32, arch="sm_80")
print(json.dumps({"cached": k.stats.cached_slabs, "sha": __import__("hashlib").sha256(k.artifacts[0].binary).hexdigest()}))
"""


def test_two_processes_compile_the_same_kernel_once(tmp_path):
    env = dict(os.environ, SPARSERT_CACHE_DIR=str(tmp_path))
    start = time.time() + 3.0  # both start compiling at the same instant, after imports
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # one built it, the other waited on the lock and loaded the finished entry
    assert sorted(r["cached"] for r in results) == [0, 1]
    assert results[0]["sha"] == results[1]["sha"]
    assert len(_entries(tmp_path)) == 1
    assert not list(tmp_path.rglob("*.tmp"))
