"""Every kernel we emit compiles: CUBIN for sm_80/sm_90 with one FFMA immediate per nonzero and
column, the immediates equal to the weights bit for bit, no spills; HIP to an AMD code object."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.options import KernelOptions

DLMC_SAMPLE = [
    # (relative path, N): small layers of both networks and both sparsities, several schedules
    ("rn50/magnitude_pruning/0.9/bottleneck_1_block_group_projection_block_group1.smtx", 3136),
    ("rn50/magnitude_pruning/0.95/bottleneck_2_block_group1_1_1.smtx", 3136),
    ("rn50/magnitude_pruning/0.9/initial_conv.smtx", 12544),
]


def _assert_sass_matches_weights(kernel, matrix):
    sass = kernel.sass_stats()
    vec = kernel.schedule.vec
    assert sass.ffma_imm + sass.fmul_imm == matrix.nnz * vec
    assert not sass.spills
    assert kernel.stats.spill_stores == 0 and kernel.stats.spill_loads == 0
    # the multiset of immediates in the machine code is the weights, each once per column
    want = Counter(np.asarray(matrix.data, np.float32).view(np.uint32).tolist() * vec)
    got = Counter(b for b in sass.immediate_bits)
    bias_like = got - want  # immediates beyond the weights may only come from the epilogue
    assert want - got == Counter(), "a weight is missing from the SASS immediates"
    return bias_like


@pytest.mark.parametrize("path,n", DLMC_SAMPLE)
def test_dlmc_sample_compiles_with_one_ffma_immediate_per_nonzero(shared, path, n):
    w = sparsert.load_weight(shared / "dlmc" / path, seed=0)
    kernel = sparsert.compile(w, n=n, arch="sm_90")
    assert kernel.artifacts[0].binary[:4] == b"\x7fELF"
    assert kernel.stats.registers and kernel.stats.registers <= 255
    _assert_sass_matches_weights(kernel, w.matrix)


@pytest.mark.parametrize("opts", [
    dict(n=33, vec=1, groups=1),  # odd N tail
    dict(n=96, vec=2, groups=3, relu=True),  # split K three ways, ReLU
    dict(n=256, vec=4, groups=2, rows_per_block=8, max_slab_nnz=150),  # several slabs
    dict(n=64, residual=True),
])
def test_schedules_compile_for_sm80(opts):
    a = sp.random(40, 72, density=0.12, random_state=5, format="csr", dtype=np.float32)
    w = sparsert.load_weight(a)
    bias = np.linspace(-1, 1, 40).astype(np.float32)
    kernel = sparsert.compile(w, options=KernelOptions(arch="sm_80", **opts), bias=bias)
    assert len(kernel.units) == len(kernel.schedule.slabs)
    extra = _assert_sass_matches_weights(kernel, w.matrix)
    # bias immediates appear only as additions, never as FFMA weights beyond the matrix
    assert sum(extra.values()) == 0 or all(np.float32(np.uint32(b).view(np.float32)) in bias
                                           for b in extra)


@pytest.mark.hipcc
def test_hip_sample_compiles_to_an_amd_code_object(shared):
    w = sparsert.load_weight(shared / "dlmc" / DLMC_SAMPLE[0][0], seed=0)
    kernel = sparsert.compile(w, n=3136, target="hip", bias=np.ones(w.shape[0]), relu=True)
    assert kernel.arch == "gfx90a"
    blob = kernel.artifacts[0].binary
    assert blob.startswith(b"__CLANG_OFFLOAD_BUNDLE__") or blob.startswith(b"\x7fELF")
    assert b"amdgcn" in blob and kernel.units[0].kernel_name.encode() in blob
    assert "#include <hip/hip_runtime.h>" in kernel.source


@pytest.mark.hipcc
def test_hip_kernel_has_no_host_emulator():
    """run_host of a HIP kernel raises ToolchainError, in one line (there is no HIP emulator)."""
    a = sp.random(16, 24, density=0.2, random_state=4, format="csr", dtype=np.float32)
    kernel = sparsert.compile(a, n=8, target="hip")
    assert kernel.backend == "hipcc"
    with pytest.raises(sparsert.ToolchainError, match="host emulator") as info:
        kernel.run_host(np.ones((24, 8), np.float32))
    assert "\n" not in str(info.value)
