"""Half precision code generation (issue 15): SASS of the PTX backend's half kernels on sm_80 and
sm_90 (packed: one HFMA2 with the weight pair as its immediate per nonzero and pair of columns,
none with a register operand, no spills; float32 arithmetic: nnz x vec FFMA immediates), the
CUDA source through NVRTC, and the HIP compile of the half kernels."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import scipy.sparse as sp

import sparsert
from sparsert.errors import OptionsError
from sparsert.ir.precision import from_half_bits, pack2


def _distinct_weight(m, k, density, dtype, seed=0):
    """Weights whose half values are all different, so that ptxas cannot merge two first products
    (acc = b * w + 0 of two rows with the same w and the same row of B) into one instruction."""
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, random_state=rng, dtype=np.float32, format="csr")
    base = 0x3C00 if dtype == "float16" else 0x3F80  # 1.0: values 1.0 .. 2.0-ish, both signs
    bits = base + 1 + rng.permutation(a.nnz)  # distinct magnitudes (a.nnz < 1000)
    vals = from_half_bits(bits.astype(np.uint16), dtype)
    a.data = vals * np.where(np.arange(a.nnz) % 2, 1, -1).astype(np.float32)
    return a


@pytest.mark.ptxas
@pytest.mark.nvdisasm
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("vec", [2, 4])
def test_packed_half_is_one_hfma2_immediate_per_nonzero_and_pair(arch, dtype, vec):
    a = _distinct_weight(64, 96, 0.1, dtype)
    k = sparsert.compile(a, options=sparsert.KernelOptions(n=128, vec=vec, groups=1, dtype=dtype,
                                                           accumulate=dtype, arch=arch), relu=True)
    s, st = k.schedule, k.sass_stats()
    assert st.hfma2_imm == s.nnz * vec // 2
    assert st.hfma2 == st.hfma2_imm  # no weight fell back to a register operand
    assert st.ffma_imm == 0 and not st.spills
    want = pack2(np.frombuffer(b"".join(g.bits for b in s.blocks for g in b.groups), np.uint32), dtype)
    assert collections.Counter(st.hfma2_immediate_bits) == collections.Counter(want.tolist() * (vec // 2))


@pytest.mark.ptxas
@pytest.mark.nvdisasm
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_packed_half_split_k_keeps_every_weight_an_immediate(arch, dtype):
    a = _distinct_weight(64, 96, 0.1, dtype, seed=1)
    k = sparsert.compile(a, options=sparsert.KernelOptions(n=128, vec=2, groups=3, dtype=dtype,
                                                           accumulate=dtype, arch=arch))
    s, st = k.schedule, k.sass_stats()
    assert st.hfma2 == st.hfma2_imm and not st.spills
    weights = collections.Counter(st.hfma2_immediate_bits)
    ones = 0x3C003C00 if dtype == "float16" else 0x3F803F80  # bf16 partial sums: t * 1 + a
    assert sum(c for b, c in weights.items() if b != ones) == s.nnz


@pytest.mark.ptxas
@pytest.mark.nvdisasm
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("vec", [1, 2, 4])
def test_float32_arithmetic_on_half_operands_is_nnz_x_vec_ffma_immediates(arch, dtype, vec):
    a = sp.random(64, 96, density=0.1, random_state=np.random.default_rng(2), dtype=np.float32, format="csr")
    a.data -= 0.5
    k = sparsert.compile(a, options=sparsert.KernelOptions(n=128, vec=vec, dtype=dtype, arch=arch),
                         bias=np.ones(64, np.float32), relu=True)
    st = k.sass_stats()
    assert st.ffma_imm + st.fmul_imm == k.schedule.nnz * vec and st.hfma2 == 0 and not st.spills
    assert sorted(st.immediate_bits) == sorted(np.frombuffer(b"".join(
        g.bits for b in k.schedule.blocks for g in b.groups), np.uint32).tolist() * vec)


def test_half_source_types():
    a = sp.random(16, 24, density=0.3, random_state=np.random.default_rng(3), dtype=np.float32, format="csr")
    from sparsert.backends.cuda import plan
    from sparsert.backends.source.render import render

    for dtype, acc, needles in (("float16", None, ["const __half* __restrict__ B", "__low2float",
                                                   "#include <cuda_fp16.h>"]),
                                ("bfloat16", "bfloat16", ["__nv_bfloat162 b0", "__hfma2(__float2bfloat162_rn(w)",
                                                          "#include <cuda_bf16.h>"])):
        s = plan(a, sparsert.KernelOptions(n=32, dtype=dtype, accumulate=acc), weight_digest="t", max_slab_nnz=10**6)
        src = render(s, "cuda")[0].source
        assert all(x in src for x in needles), dtype
        hip = render(s, "hip")[0].source
        assert "cuda_fp16.h" not in hip and "cuda_bf16.h" not in hip


@pytest.mark.parametrize("mode", [("float16", None), ("float16", "float16"), ("bfloat16", None),
                                  ("bfloat16", "bfloat16")])
def test_nvrtc_compiles_the_half_source(mode, monkeypatch):
    from sparsert.backends.cuda import NvrtcBackend

    if NvrtcBackend().available() is not None:
        pytest.skip("NVRTC not installed")
    monkeypatch.setenv("SPARSERT_BACKEND", "nvrtc")
    dtype, acc = mode
    a = sp.random(16, 24, density=0.3, random_state=np.random.default_rng(3), dtype=np.float32, format="csr")
    k = sparsert.compile(a, options=sparsert.KernelOptions(n=32, dtype=dtype, accumulate=acc, arch="sm_80",
                                                           residual=True, groups=2), bias=np.ones(16, np.float32))
    assert k.backend == "nvrtc" and k.artifacts[0].binary[:4] == b"\x7fELF"


@pytest.mark.hipcc
@pytest.mark.parametrize("mode", [("float16", None), ("float16", "float16"), ("bfloat16", None)])
def test_hip_compiles_the_half_kernels(mode):
    dtype, acc = mode
    a = sp.random(16, 24, density=0.3, random_state=np.random.default_rng(3), dtype=np.float32, format="csr")
    k = sparsert.compile(a, options=sparsert.KernelOptions(n=32, dtype=dtype, accumulate=acc, target="hip",
                                                           arch="gfx90a", residual=True, groups=2, vec=2),
                         bias=np.ones(16, np.float32), relu=True)
    assert len(k.artifacts[0].binary) > 0


def test_hip_refuses_packed_bfloat16_in_one_line():
    a = sp.random(16, 24, density=0.3, random_state=np.random.default_rng(3), dtype=np.float32, format="csr")
    with pytest.raises(OptionsError, match="HIP has no packed bfloat16") as err:
        sparsert.compile(a, n=32, target="hip", arch="gfx90a", dtype="bfloat16", accumulate="bfloat16")
    assert "\n" not in str(err.value)


@pytest.mark.ptxas
def test_bfloat16_needs_sm_80():
    a = sp.random(16, 24, density=0.3, random_state=np.random.default_rng(3), dtype=np.float32, format="csr")
    with pytest.raises(OptionsError, match="dtype='bfloat16' needs sm_80 or newer"):
        sparsert.compile(a, n=32, arch="sm_75", dtype="bfloat16")
