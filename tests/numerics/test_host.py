"""The CPU host runner (sparsert.backends.emulate.host + templates/emulate/host_shim.h) on hand-written NVRTC-style kernels.

Each kernel below is CUDA text as NVRTC would take it (no #include); numbers are checked with numpy.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sparsert.errors import CompileError, InputError, OptionsError, ToolchainError
from sparsert.backends.emulate.host import HostKernel, HostParam, host_compiler_available
from sparsert.runtime.cache import CacheStore

needs_cxx = pytest.mark.cxx  # skipped in tests/conftest.py without a host C++ compiler


@pytest.fixture(autouse=True)
def _host_env(monkeypatch):
    # The cache folder is the session's (tests/conftest.py); caching on, the default compiler.
    monkeypatch.delenv("SPARSERT_CACHE", raising=False)
    monkeypatch.delenv("SPARSERT_CXX", raising=False)


# ---------------------------------------------------------------------------------------------
# (a) elementwise with a tail guard over a 2D grid of blocks

ELEMENTWISE = r"""
extern "C" __global__ void __launch_bounds__(128) relu_affine(const float* __restrict__ x, float* __restrict__ y, int n, int shift) {
  const int i = (blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;  // tail guard
  y[i] = fmaxf(__ldg(x + i) * 2.0f + (float)shift, 0.0f);
}
"""


@needs_cxx
def test_elementwise_tail_guard():
    k = HostKernel.build(ELEMENTWISE, "relu_affine", ["const float*", "float*", "int", "int"], name="relu")
    assert k.params == (HostParam("in"), HostParam("out"), HostParam("int"), HostParam("int"))
    n = 1000  # grid (4, 2) x 128 threads = 1024 >= n: the last 24 threads hit the guard
    x = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    y = np.full(1024, -7.0, np.float32)
    k.launch((4, 2, 1), (128, 1, 1), [x, y, n, 1])
    ref = np.maximum(x[:n] * np.float32(2) + np.float32(1), np.float32(0))
    np.testing.assert_array_equal(y[:n], ref)
    assert (y[n:] == -7.0).all(), "threads past the tail wrote"


# ---------------------------------------------------------------------------------------------
# (b) block reduction through __shared__ + __syncthreads across threadIdx.y groups (2D block)

ROW_SUM = r"""
// One block per row of A (rows x k); block (32, 8): 8 thread groups split the row, then reduce.
extern "C" __global__ void __launch_bounds__(256) row_sum(const float* __restrict__ A, float* __restrict__ out, int k) {
  __shared__ float part[8][32];
  const float* row = A + blockIdx.x * k;
  float acc = 0.0f;
  for (int j = threadIdx.y * blockDim.x + threadIdx.x; j < k; j += blockDim.x * blockDim.y) acc += row[j];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {  // across threadIdx.y groups
    if (threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
    __syncthreads();
  }
  for (int s = 16; s > 0; s >>= 1) {  // within group 0, still through shared memory
    if (threadIdx.y == 0 && threadIdx.x < s) part[0][threadIdx.x] += part[0][threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0 && threadIdx.y == 0) out[blockIdx.x] = part[0][0];
}
"""

# Every block rewrites the same static shared array, and each thread reads a neighbour's slot:
# wrong unless __syncthreads orders the block and the next block waits for this one to finish.
ROTATE = r"""
extern "C" __global__ void rotate(const float* in, float* out, int rounds) {
  __shared__ float s[64];
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  const int n = blockDim.x * blockDim.y;
  float v = in[blockIdx.x * n + t];
  for (int r = 0; r < rounds; ++r) {
    s[t] = v;
    __syncthreads();
    v = s[(t + 1) % n] + 1.0f;
    __syncthreads();
  }
  out[blockIdx.x * n + t] = v;
}
"""

# A thread that returns before __syncthreads stops counting for it (as exited threads on the GPU).
EARLY_EXIT = r"""
extern "C" __global__ void early_exit(const float* in, float* out, int live) {
  __shared__ float s[128];
  const int t = threadIdx.x;
  if (t >= live) return;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[live - 1 - t];
}
"""


@needs_cxx
def test_block_reduction_shared_syncthreads():
    k = HostKernel.build(ROW_SUM, "row_sum", ["const float*", "float*", "int"], name="row_sum")
    rows, cols = 6, 1000
    a = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    out = np.zeros(rows, np.float32)
    k.launch((rows, 1, 1), (32, 8, 1), [a, out, cols])
    np.testing.assert_allclose(out, a.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-4)


@needs_cxx
def test_shared_memory_exchange_across_blocks():
    k = HostKernel.build(ROTATE, "rotate", ["const float*", "float*", "int"], name="rotate")
    blocks, n, rounds = 5, 64, 3
    x = np.arange(blocks * n, dtype=np.float32)
    out = np.zeros_like(x)
    k.launch((blocks,), (16, 4), [x, out, rounds])
    ref = x.reshape(blocks, n)
    for _ in range(rounds):
        ref = np.roll(ref, -1, axis=1) + 1
    np.testing.assert_array_equal(out.reshape(blocks, n), ref)


@needs_cxx
def test_early_return_before_syncthreads():
    k = HostKernel.build(EARLY_EXIT, "early_exit", ["const float*", "float*", "int"], name="early")
    blocks, n, live = 3, 128, 100
    x = np.arange(blocks * n, dtype=np.float32)
    out = np.full_like(x, -1)
    k.launch((blocks, 1, 1), (n, 1, 1), [x, out, live])
    got = out.reshape(blocks, n)
    np.testing.assert_array_equal(got[:, :live], x.reshape(blocks, n)[:, :live][:, ::-1])
    assert (got[:, live:] == -1).all()


# ---------------------------------------------------------------------------------------------
# (c) float atomicAdd into one cell from many threads

ATOMIC = r"""
extern "C" __global__ void count(float* sum, float* ticket_seen, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(sum, (float)(i % 7));
  const float old = atomicAdd(sum + 1, 1.0f);  // returns the previous value: a unique ticket
  ticket_seen[(int)old] += 1.0f;
}
"""


@needs_cxx
def test_atomic_add_float():
    k = HostKernel.build(ATOMIC, "count", ["float*", "float*", "int"], name="atomic")
    n = 3000  # sums stay small integers: exact in float32
    sums = np.zeros(2, np.float32)
    seen = np.zeros(n, np.float32)
    k.launch((12, 1, 1), (256, 1, 1), [sums, seen, n])
    assert sums[0] == sum(i % 7 for i in range(n))
    assert sums[1] == n
    assert (seen == 1).all(), "atomicAdd did not return distinct old values"


# ---------------------------------------------------------------------------------------------
# (d) float4 loads via reinterpret_cast from float*, int params, in the generated kernels' style


def _spmm_source(a: np.ndarray, n: int, groups: int) -> str:
    """A miniature of a generated kernel: nonzeros as immediates, switch on block and thread group,
    float4 loads of B, partial sums of the thread groups reduced through __shared__."""
    m, k = a.shape
    lines = [
        "#define L(k) (*reinterpret_cast<const float4*>(Bp + (k) * ldb))",
        "#define F(S, W) { a##S##_x += (W) * b.x; a##S##_y += (W) * b.y; a##S##_z += (W) * b.z; a##S##_w += (W) * b.w; }",
        f'extern "C" __global__ void __launch_bounds__(32 * {groups}) spmm_k(const float* __restrict__ B, float* __restrict__ C, int ldb, int n) {{',
        "  const int col = (blockIdx.y * blockDim.x + threadIdx.x) * 4;",
        "  const float* __restrict__ Bp = B + min(col, n - 4);",
        f"  __shared__ float4 red[{groups * 2}][32];",
        "  float " + ", ".join(f"a{r}_{c} = 0.0f" for r in range(2) for c in "xyzw") + ";",
        "  switch (blockIdx.x) {",
    ]
    for blk in range(m // 2):
        lines.append(f"  case {blk}: {{")
        lines.append("    switch (threadIdx.y) {")
        for g in range(groups):
            lines.append(f"    case {g}: {{")
            for kk in range(g, k, groups):
                for r in range(2):
                    w = a[blk * 2 + r, kk]
                    if w != 0:
                        lines.append(f"      {{ const float4 b = L({kk}); F({r}, {float(w)!r}f) }}")
            lines.append("    } break;")
        lines.append("    }")
        lines.append("  } break;")
    lines.append("  }")
    for r in range(2):
        lines.append(f"  red[threadIdx.y * 2 + {r}][threadIdx.x] = make_float4(a{r}_x, a{r}_y, a{r}_z, a{r}_w);")
    lines += [
        "  __syncthreads();",
        "  if (threadIdx.y < 2 && col < n) {",
        "    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);",
        "    for (int g = 0; g < (int)blockDim.y; ++g) {",
        "      const float4 p = red[g * 2 + threadIdx.y][threadIdx.x];",
        "      acc.x += p.x; acc.y += p.y; acc.z += p.z; acc.w += p.w;",
        "    }",
        "    *reinterpret_cast<float4*>(C + (blockIdx.x * 2 + threadIdx.y) * n + col) = acc;",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


@needs_cxx
def test_float4_generated_style_spmm():
    rng = np.random.default_rng(2)
    m, k, n, groups = 8, 24, 200, 4  # n: 50 float4 columns, 2 tiles of 32 threads: tail clamped
    a = rng.standard_normal((m, k)).astype(np.float32)
    a[rng.random((m, k)) < 0.7] = 0
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    kern = HostKernel.build(_spmm_source(a, n, groups), "spmm_k", ["const float*", "float*", "int", "int"], name="spmm")
    kern.launch((m // 2, 2, 1), (32, groups, 1), [b, c, n, n])
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (e) the cache: hits reuse the library, a corrupt entry is rebuilt


@pytest.mark.cxx
def test_cache_hit_and_corrupt_entry(tmp_path, monkeypatch):
    """The host .so lives in the one cache store: <cache>/host/<key[:2]>/<key>.bin (+ .json),
    integrity-checked on load, locked per key."""
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    params = ["const float*", "float*", "int", "int"]
    first = HostKernel.build(ELEMENTWISE, "relu_affine", params, name="cached")
    assert not first.cache_hit and first.compile_seconds > 0
    libs = sorted((tmp_path / "host").rglob("*.bin"))
    assert libs == [first.library_path]
    key = first.library_path.stem
    assert first.library_path == tmp_path / "host" / key[:2] / f"{key}.bin"
    assert first.library_path.with_suffix(".json").is_file()
    mtime = first.library_path.stat().st_mtime_ns
    assert not list((tmp_path / "host").rglob("build-*")), "build folder left behind"

    t0 = time.perf_counter()
    second = HostKernel.build(ELEMENTWISE, "relu_affine", params, name="cached")
    assert time.perf_counter() - t0 < 0.5
    assert second.cache_hit and second.compile_seconds == 0.0
    assert second.library_path == first.library_path
    assert second.library_path.stat().st_mtime_ns == mtime
    assert sorted((tmp_path / "host").rglob("*.bin")) == libs

    # A different option is a different library.
    third = HostKernel.build(ELEMENTWISE, "relu_affine", params, name="cached", opt="-O1")
    assert not third.cache_hit and third.library_path != first.library_path

    # A corrupt entry, as another process would find it (this process has the good library mapped,
    # and the dynamic loader would hand that back for the same path, so corrupt a fresh cache).
    # (1) an entry whose integrity checks out but is not a shared object (foreign or stale);
    # (2) the good entry with one bit of its payload flipped (fails the integrity check).
    good = first.library_path.read_bytes()
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    for i, make in enumerate([
        lambda store: store.put(key, b"this is not an ELF file", {}),
        lambda store: (store.put(key, good, {}), store.path(key).write_bytes(flipped)),
    ]):
        other = tmp_path / f"other{i}"
        monkeypatch.setenv("SPARSERT_CACHE_DIR", str(other))
        store = CacheStore(other, "host")
        make(store)
        corrupt = other / "host" / key[:2] / f"{key}.bin"
        assert corrupt.is_file() and corrupt.read_bytes() != good
        rebuilt = HostKernel.build(ELEMENTWISE, "relu_affine", params, name="cached")
        assert not rebuilt.cache_hit and rebuilt.library_path == corrupt
        assert rebuilt.library_path.read_bytes()[:4] == b"\x7fELF"
        x = np.arange(256, dtype=np.float32) - 100
        y = np.zeros_like(x)
        rebuilt.launch((2, 1, 1), (128, 1, 1), [x, y, 256, 0])
        np.testing.assert_array_equal(y, np.maximum(2 * x, 0))


@needs_cxx
def test_cache_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SPARSERT_CACHE", "0")
    k = HostKernel.build(ELEMENTWISE, "relu_affine", ["const float*", "float*", "int", "int"], name="nocache")
    assert not k.cache_hit
    assert not (tmp_path / "host").exists()
    x = np.ones(4, np.float32)
    y = np.zeros(4, np.float32)
    k.launch((1, 1, 1), (4, 1, 1), [x, y, 4, 0])
    assert (y == 2).all()


# ---------------------------------------------------------------------------------------------
# (f) errors


@needs_cxx
def test_compile_error_raises_compile_error():
    bad = 'extern "C" __global__ void broken(float* y) { y[0] = undeclared_thing; }\n'
    with pytest.raises(CompileError, match="undeclared_thing") as info:
        HostKernel.build(bad, "broken", ["float*"], name="broken")
    assert "kernel.cu" in str(info.value)
    assert isinstance(info.value, ToolchainError)


def test_missing_compiler_raises_toolchain_error(monkeypatch):
    monkeypatch.setenv("SPARSERT_CXX", "sparsert-no-such-compiler-xyz")
    assert not host_compiler_available()
    with pytest.raises(ToolchainError, match="apt-get install g\\+\\+"):
        HostKernel.build(ELEMENTWISE, "relu_affine", ["const float*", "float*", "int", "int"])


def test_bad_build_options():
    with pytest.raises(OptionsError, match="double"):
        HostKernel.build(ELEMENTWISE, "relu_affine", ["const float*", "double*"])
    with pytest.raises(OptionsError, match="kernel_name"):
        HostKernel.build(ELEMENTWISE, "relu affine; system", ["float*"])


@needs_cxx
def test_launch_argument_checks():
    k = HostKernel.build(ELEMENTWISE, "relu_affine", ["const float*", "float*", "int", "int"], name="relu")
    x = np.zeros(64, np.float32)
    y = np.zeros(64, np.float32)
    with pytest.raises(InputError, match="float32"):
        k.launch((1,), (64,), [x.astype(np.float64), y, 64, 0])
    with pytest.raises(InputError, match="C-contiguous"):
        k.launch((1,), (32,), [np.zeros(128, np.float32)[::2], y, 64, 0])
    with pytest.raises(InputError, match="aligned"):
        k.launch((1,), (32,), [np.zeros(65, np.float32)[1:], y, 64, 0])
    with pytest.raises(InputError, match="read-only"):
        ro = np.zeros(64, np.float32)
        ro.flags.writeable = False
        k.launch((1,), (64,), [x, ro, 64, 0])
    with pytest.raises(InputError, match="expected 4 arguments"):
        k.launch((1,), (64,), [x, y, 64])
    with pytest.raises(InputError, match="int"):
        k.launch((1,), (64,), [x, y, 64.0, 0])
    with pytest.raises(InputError, match="1024"):
        k.launch((1,), (64, 32, 1), [x, y, 64, 0])
    with pytest.raises(InputError, match=">= 1"):
        k.launch((0, 1, 1), (64, 1, 1), [x, y, 64, 0])
