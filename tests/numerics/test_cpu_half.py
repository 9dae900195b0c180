"""Half precision on the CPU target (issue 15): float16 / bfloat16 B, C, bias and residual with
float32 arithmetic. The runtime widens B exactly while packing and the kernels round once at the
store, so a half kernel must equal, bit for bit, the float32 kernel of the same schedule run on
the same (half-valued) inputs and rounded to the dtype (RNE); and both stay within the README's
bound of float64. AVX2 natively, AVX-512 through the x86 simulator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from cpu_check import random_csr, simulate
from half_model import error_bound, to_dtype, values

import sparsert
from sparsert.backends.cpu.emit import emit_parts, group_blocks
from sparsert.backends.cpu.lower import lower
from sparsert.backends.cpu.params import emit_config, parameters_for
from sparsert.backends.cpu.x86 import tile_floats
from sparsert.check.reference import conv2d_reference
from sparsert.errors import InputError, OptionsError
from sparsert.ir.plan import plan
from sparsert.ir.precision import half_bits, round_to

DTYPES = ["float16", "bfloat16"]


def _opts(n, dtype, **kw):
    return sparsert.KernelOptions(n=n, target="cpu", dtype=dtype, **kw)


def _inputs(rng, k, n, m, dtype, scale=1.0):
    """Half-valued float32 B and R (exact in dtype) and the same as the kernel takes them."""
    B = round_to((rng.standard_normal((k, n)) * scale).astype(np.float32), dtype)
    R = round_to(rng.standard_normal((m, n)).astype(np.float32), dtype)
    return B, R, to_dtype(B, dtype), to_dtype(R, dtype)


def _bits(C, dtype):
    return np.asarray(C).view(np.uint16)


def _half_vs_rounded_float32(A, n, dtype, *, arch="avx2", vec=1, rows=None, relu=True, residual=True,
                             bias=True, threads=1, seed=0):
    """(half kernel, its C, where C's bits differ from the float32 kernel's C rounded to dtype)."""
    m, k = A.shape
    rng = np.random.default_rng(seed)
    b = round_to(rng.standard_normal(m).astype(np.float32), dtype) if bias else None
    half = sparsert.compile(A, options=_opts(n, dtype, arch=arch, vec=vec, rows_per_block=rows, relu=relu,
                                             residual=residual), bias=b)
    s = half.schedule
    single = sparsert.compile(A, options=_opts(n, "float32", arch=arch, vec=vec, rows_per_block=s.rows_per_block,
                                               relu=relu, residual=residual), bias=b)
    assert [blk.rows for blk in single.schedule.blocks] == [blk.rows for blk in s.blocks]
    B, R, Bh, Rh = _inputs(rng, k, n, m, dtype, scale=4.0)
    C = half(Bh, residual=Rh if residual else None, threads=threads)
    C32 = single(B, residual=R if residual else None, threads=threads)
    assert C.shape == (m, n) and C.dtype == Bh.dtype
    return half, C, np.argwhere(_bits(C, dtype) != half_bits(C32, dtype).reshape(m, n))


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vec,rows", [(1, None), (2, 6), (3, 4)])
def test_half_kernel_is_the_rounded_float32_kernel_for_every_tail(dtype, vec, rows):
    A = random_csr(23, 17, 0.3, seed=1)
    for n in (1, 5, 8, 9, 15, 16, 17, 23, 24, 25, 40, 41):
        _, C, bad = _half_vs_rounded_float32(A, n, dtype, vec=vec, rows=rows, relu=n % 2 == 0, residual=n % 3 != 0,
                                             bias=n % 5 != 0, seed=n)
        assert C.shape == (23, n) and not len(bad), f"n={n}: {len(bad)} outputs differ, first at {bad[:1]}"


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_half_large_n_threads_and_float64_bound(dtype, threads):
    A = random_csr(100, 300, 0.1, seed=7)
    kernel, C, bad = _half_vs_rounded_float32(A, 784, dtype, threads=threads, seed=3)
    assert not len(bad), f"{len(bad)} outputs differ from the rounded float32 result, first at {bad[:1]}"
    # and against float64: the README's bound for float32 accumulation with a half store
    rng = np.random.default_rng(3)
    b = round_to(rng.standard_normal(100).astype(np.float32), dtype)
    B, R, _, _ = _inputs(rng, 300, 784, 100, dtype, scale=4.0)
    s = kernel.schedule
    ref = np.maximum(A.astype(np.float64) @ B.astype(np.float64) + b[:, None] + R, 0)
    bound = error_bound(s, s.to_csr(), B[None].astype(np.float64), bias=b, Rv=R[None])[0]
    err = np.abs(values(C, dtype) - ref)
    assert (err <= bound).all(), f"worst excess {np.max(err - bound):.3g}"
    assert np.count_nonzero(err) > 0  # the half store really rounds (a float32 C would not pass as half)


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_special_values(dtype):
    """inf and NaN pass through as the dtype's own (a NaN stays a NaN: the bfloat16 rounding's
    carry must not turn it into inf); float16 overflow rounds to inf like numpy."""
    A = sp.csr_matrix(np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 70000.0 if dtype == "float16" else 1.0]],
                               np.float32))
    kernel = sparsert.compile(A, options=_opts(3, dtype, arch="avx2"))
    B = np.array([[np.nan, np.inf, -np.inf], [1.5, -0.0, 3.0], [1.0, -1.0, 2.0 ** -20]], np.float32)
    C = values(kernel(to_dtype(B, dtype)), dtype)
    assert np.isnan(C[0, 0]) and C[0, 1] == np.inf and C[0, 2] == -np.inf
    assert C[1, 0] == 3.0 and C[1, 1] == 0 and C[1, 2] == 6.0  # +0 + 2 * -0 = +0 (IEEE)
    if dtype == "float16":
        assert C[2, 0] == np.inf and C[2, 1] == -np.inf  # 70000 overflows float16
    bits = half_bits(np.float32(np.nan), dtype)
    assert np.isnan(values(np.array([bits], np.uint16).view(np.float16) if dtype == "float16" else
                           np.array([bits], np.uint16), dtype)).all()


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_stores_touch_only_c(dtype):
    """The tail tile's word copies write exactly the columns left: a C inside a larger buffer
    keeps the sentinels around it."""
    A = random_csr(9, 11, 0.5, seed=2)
    rng = np.random.default_rng(1)
    for n in (3, 13, 21):
        kernel = sparsert.compile(A, options=_opts(n, dtype, arch="avx2", residual=True))
        buf = np.full(9 * n + 64, 0x1234, np.uint16)
        out = buf[32:32 + 9 * n].view(np.float16 if dtype == "float16" else np.uint16).reshape(9, n)
        _, _, Bh, Rh = _inputs(rng, 11, n, 9, dtype)
        kernel(Bh, residual=Rh, out=out)
        assert (buf[:32] == 0x1234).all() and (buf[32 + 9 * n:] == 0x1234).all()
        assert np.array_equal(_bits(out, dtype), _bits(kernel(Bh, residual=Rh), dtype))


@pytest.mark.avx2
def test_half_operands_are_checked_in_one_line():
    torch = pytest.importorskip("torch")
    A = random_csr(8, 6, 0.5, seed=3)
    f16 = sparsert.compile(A, options=_opts(5, "float16", arch="avx2"))
    bf16 = sparsert.compile(A, options=_opts(5, "bfloat16", arch="avx2", residual=True))
    with pytest.raises(InputError, match="B: dtype float32; expected float16"):
        f16(np.zeros((6, 5), np.float32))
    with pytest.raises(InputError, match=r"B: dtype torch.float16; expected torch.bfloat16"):
        bf16(torch.zeros(6, 5, dtype=torch.float16), residual=torch.zeros(8, 5, dtype=torch.bfloat16))
    with pytest.raises(InputError, match="residual: dtype float16; expected uint16"):
        bf16(np.zeros((6, 5), np.uint16), residual=np.zeros((8, 5), np.float16))
    with pytest.raises(InputError, match="out: dtype float32; expected float16"):
        f16(np.zeros((6, 5), np.float16), out=np.zeros((8, 5), np.float32))
    # every accepted form, each returning its own kind
    assert f16(np.zeros((6, 5), np.float16)).dtype == np.float16
    assert bf16(np.zeros((6, 5), np.uint16), residual=np.zeros((8, 5), np.uint16)).dtype == np.uint16
    t = bf16(torch.ones(6, 5, dtype=torch.bfloat16), residual=torch.zeros(8, 5, dtype=torch.bfloat16))
    assert t.dtype == torch.bfloat16
    assert torch.allclose(t.float(), torch.from_numpy(A.toarray()).sum(1, keepdim=True).expand(8, 5), rtol=2 ** -8)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.ones((6, 5), ml_dtypes.bfloat16)
    y = bf16(x, residual=np.zeros((8, 5), ml_dtypes.bfloat16))
    assert y.dtype == x.dtype and np.array_equal(y.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))


def test_packed_half_arithmetic_is_a_gpu_mode():
    A = random_csr(8, 6, 0.5, seed=3)
    with pytest.raises(OptionsError, match="no packed float16 arithmetic.*accumulate=.float32."):
        sparsert.compile(A, options=_opts(6, "float16", accumulate="float16", arch="avx2"))


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", [{"stride": 1, "padding": 1}, {"stride": 2, "padding": 1},
                                  {"stride": 1, "padding": 2, "dilation": 2}])
def test_half_convolution_against_float64(dtype, geom):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((12, 5, 3, 3)).astype(np.float32)
    W[rng.random(W.shape) < 0.8] = 0
    bias = round_to(rng.standard_normal(12).astype(np.float32), dtype)
    kernel = sparsert.compile_conv2d(W, (11, 9), batch=2, bias=bias, relu=True, target="cpu", arch="avx2",
                                     dtype=dtype, **geom)
    x = round_to(rng.standard_normal((2, 5, 11, 9)).astype(np.float32), dtype)
    y = values(kernel(to_dtype(x, dtype)), dtype)
    ref = conv2d_reference(x.astype(np.float64), W.astype(np.float64), bias.astype(np.float64), relu=True, **geom)
    # the float32 accumulation bound (27 products at most per output) plus one rounding to dtype
    u = 2.0 ** -11 if dtype == "float16" else 2.0 ** -8
    mag = conv2d_reference(np.abs(x).astype(np.float64), np.abs(W).astype(np.float64), np.abs(bias), **geom)
    n = 5 * 9 + 2
    bound = n * 2.0 ** -24 / (1 - n * 2.0 ** -24) * mag * (1 + u) + u * np.abs(ref) + 2.0 ** -25
    assert y.shape == ref.shape and (np.abs(y - ref) <= bound).all()


# (vec, rows, epilogue, chunk): rows 7 leave the ReLU zero a register; None is the most rows (the
# zero from memory, k-masks up to k(vec + 1)); bias or residual alone; several chunks
AVX512_CASES = [(1, 7, {"relu": True, "residual": True, "bias": True}, None),
                (2, 7, {"relu": True, "residual": True, "bias": True}, None),
                (3, None, {"relu": True, "residual": True, "bias": False}, None),
                (4, None, {"relu": False, "residual": False, "bias": True}, None),
                (1, None, {"relu": True, "residual": True, "bias": True}, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVX512_CASES, ids=lambda c: f"v{c[0]}-r{c[1]}-{'-'.join(k for k, v in c[2].items() if v)}-c{c[3]}")
@pytest.mark.parametrize("n", [5, 16, 23])
def test_avx512_half_code_in_the_simulator(dtype, case, n):
    """AVX-512's half epilogue (vcvtps2ph / vpmovdw stores, masked widening loads) without an
    AVX-512 CPU: the simulator's half result is the rounded float32 result of the same schedule."""
    vec, rows, epi, chunk = case
    a = random_csr(21, 19, 0.3, seed=11)
    rng = np.random.default_rng(n)
    bias = round_to(rng.standard_normal(21).astype(np.float32), dtype) if epi["bias"] else None
    B, R, _, Rh = _inputs(rng, 19, n, 21, dtype, scale=3.0)
    results = {}
    for dt in ("float32", dtype):
        o = _opts(n, dt, arch="avx512", vec=vec, relu=epi["relu"], residual=epi["residual"], rows_per_block=rows)
        s = plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for("avx512"), bias=bias,
                 weight_digest="t", max_slab_nnz=1 << 62)
        cfg = emit_config("avx512", s.rows_per_block, s.vec, n, dtype=dt)
        low = lower(s)
        asm = "".join(emit_parts(low, cfg, 1))
        results[dt] = simulate(asm, B, 21, width=cfg.width, tile=tile_floats(19, cfg.width),
                               R=None if not epi["residual"] else R if dt == "float32" else Rh,
                               functions=len(group_blocks(low, cfg)), dtype=dt, chunk=chunk)
    want = half_bits(results["float32"], dtype).reshape(21, n)
    assert np.array_equal(_bits(results[dtype], dtype), want)


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
def test_avx2_half_code_agrees_with_the_simulator(dtype):
    """The AVX2 half kernel natively and in the simulator: the same bits (the red-zone tail copy
    included), so the simulator's verdict on the AVX-512 half code rests on checked semantics."""
    a = random_csr(15, 13, 0.4, seed=4)
    n = 21
    rng = np.random.default_rng(2)
    kernel = sparsert.compile(a, options=_opts(n, dtype, arch="avx2", relu=True, residual=True))
    _, _, Bh, Rh = _inputs(rng, 13, n, 15, dtype, scale=2.0)
    native = kernel(Bh, residual=Rh, threads=1)
    s = kernel.schedule
    cfg = emit_config("avx2", s.rows_per_block, s.vec, n, dtype=dtype)
    low = lower(s)
    sim = simulate(kernel.asm, values(Bh, dtype).astype(np.float32), 15, width=cfg.width,
                   tile=tile_floats(13, cfg.width), R=Rh, functions=len(group_blocks(low, cfg)), dtype=dtype)
    assert np.array_equal(_bits(native, dtype), _bits(sim, dtype))


def _rounded_bf16_weight(m, k, density, seed):
    a = random_csr(m, k, density, seed=seed)
    a.data = round_to(a.data, "bfloat16")
    return a


def test_pair_lowering_holds_every_bf16_weight_bit_for_bit():
    """vdpbf16ps blocks: each (pair p, slot) once, its dword = bf16(w[2p+1]) << 16 | bf16(w[2p]),
    and decoding every dword gives back exactly the schedule's (rounded) nonzeros."""
    a = random_csr(37, 29, 0.35, seed=6)
    o = _opts(20, "bfloat16", accumulate="bfloat16", arch="avx512", rows_per_block=9)
    with _no_warning():  # bf16 keeps these weights finite and nonzero
        s = plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for("avx512"), bias=None,
                 weight_digest="t", max_slab_nnz=1 << 62)
    low = lower(s)
    assert low.pairs and low.panel_rows == 15
    got = {}
    for blk in low.blocks:
        for p, pairs in blk.taps():
            slots = [slot for slot, _ in pairs]
            assert len(slots) == len(set(slots))
            for slot, word in pairs:
                for half, k in ((word & 0xFFFF, 2 * p), (word >> 16, 2 * p + 1)):
                    if half:
                        got[(blk.rows[slot], k)] = half << 16
    want = s.to_csr().tocoo()
    assert got == {(r, c): int(np.float32(v).view(np.uint32)) for r, c, v in zip(want.row, want.col, want.data)}
    assert all(w & 0xFFFF == 0 for w in got.values())  # bf16 values: the low halves are zero


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@pytest.mark.parametrize("vec,bcast", [(1, "embedded"), (2, "embedded"), (1, "register")])
@pytest.mark.parametrize("n,k", [(16, 29), (23, 30), (5, 1)])
def test_vdpbf16ps_kernels_in_the_simulator(vec, bcast, n, k):
    """accumulate='bfloat16' on the CPU (AVX512-BF16, not on this machine): the emitted code in
    the simulator (vdpbf16ps with DAZ/FTZ, the squeezed panel) against float64 within the bound of
    float32 accumulation of the bf16-rounded weights' products, plus one bfloat16 rounding."""
    from types import SimpleNamespace

    a = _rounded_bf16_weight(21, k, 0.4, seed=n + k)
    rng = np.random.default_rng(k)
    bias = round_to(rng.standard_normal(21).astype(np.float32), "bfloat16")
    B, R, _, Rh = _inputs(rng, k, n, 21, "bfloat16", scale=3.0)
    o = _opts(n, "bfloat16", accumulate="bfloat16", arch="avx512", vec=vec, relu=True, residual=True,
              bcast=bcast)
    s = plan(sparsert.load_weight(a).matrix, o, parameters=parameters_for("avx512"), bias=bias,
             weight_digest="t", max_slab_nnz=1 << 62)
    cfg = emit_config("avx512", s.rows_per_block, s.vec, n, bcast, "bfloat16", True)
    low = lower(s)
    asm = "".join(emit_parts(low, cfg, 1))
    assert "vdpbf16ps" in asm and "vfmadd231ps" not in asm
    C = simulate(asm, B, 21, width=cfg.width, tile=tile_floats(k, cfg.width), R=Rh,
                 functions=len(group_blocks(low, cfg)), dtype="bfloat16", pairs=True)
    A = s.to_csr()
    assert np.array_equal(A.toarray(), a.toarray())  # already bf16: rounding changed nothing
    ref = np.maximum(A.astype(np.float64) @ B.astype(np.float64) + bias[:, None] + R, 0)
    fp32_acc = SimpleNamespace(packed=False, accumulate="float32", dtype="bfloat16", groups=1)
    bound = error_bound(fp32_acc, A, B[None].astype(np.float64), bias=bias, Rv=R[None])[0]
    bound += 2 * np.diff(A.indptr).max() * 2.0 ** -126  # DAZ/FTZ: at most a subnormal per rounding
    err = np.abs(values(C, "bfloat16") - ref)
    assert (err <= bound).all(), f"worst excess {np.max(err - bound):.3g}"


@pytest.mark.avx2
@pytest.mark.parametrize("dtype,pairs", [("float32", 0), ("float16", 0), ("bfloat16", 0), ("bfloat16", 1)])
@pytest.mark.parametrize("k,j0,j1", [(7, 0, 40), (8, 16, 37), (1, 0, 5)])
def test_runtime_pack_widens_exactly_and_squeezes_pairs(dtype, pairs, k, j0, j1):
    """The C runtime's packing (native, AVX2 code even for AVX-512 kernels) against the Python
    model the simulator tests use: half widened exactly, tails zero, bf16 pairs interleaved."""
    import ctypes

    from cpu_check import pack, squeeze

    from sparsert.backends.cpu.launch import ELEM
    from sparsert.backends.cpu.runtime import Job, runtime

    n, width = 40, 16
    rng = np.random.default_rng(k)
    B = round_to(rng.standard_normal((k, n)).astype(np.float32), dtype)
    Bh = np.ascontiguousarray(to_dtype(B, dtype))
    tile = tile_floats(k, width)
    tiles = -(-(j1 - j0) // width)
    job = Job()
    job.k, job.n, job.width, job.tile, job.chunk = k, n, width, tile, tiles * width
    job.elem, job.pairs, job.batch = ELEM[dtype], pairs, 1
    job.B = Bh.ctypes.data
    panel = np.full(tiles * tile + 2 * (tiles * width + 1) * 4, np.nan, np.float32)
    runtime().sprt_pack(ctypes.byref(job), 0, j0, j1, panel.ctypes.data)
    want = pack(B, j0, j1, width, tile)
    if pairs:
        want = squeeze(want, k, width, tile, tiles)
        tile2 = tile_floats((k + 1) // 2, width)
        for t in range(tiles):
            got = panel[t * tile2: t * tile2 + (k + 1) // 2 * width].view(np.uint32)
            assert np.array_equal(got, want[t * tile2: t * tile2 + (k + 1) // 2 * width].view(np.uint32))
    else:
        for t in range(tiles):
            got = panel[t * tile: t * tile + k * width].view(np.uint32)
            assert np.array_equal(got, want[t * tile: t * tile + k * width].view(np.uint32))


@pytest.mark.binutils
def test_vdpbf16ps_kernels_build_and_say_what_they_need():
    """accumulate='bfloat16' on the CPU: odd n is fine (pairs run along K); arch='avx512' builds
    AVX512-BF16 code anywhere, which runs only where the CPU has it; the default arch of a CPU
    without AVX-512 is refused in one line naming the way out."""
    from sparsert.backends.cpu.isa import has_avx512_bf16, runnable

    a = _rounded_bf16_weight(12, 9, 0.5, seed=1)
    kernel = sparsert.compile(a, options=_opts(63, "bfloat16", accumulate="bfloat16", arch="avx512"))
    assert kernel.artifacts[0].binary[:4] == b"\x7fELF" and "vdpbf16ps" in kernel.asm
    if not has_avx512_bf16():
        with pytest.raises(sparsert.ToolchainError, match="vdpbf16ps.*AVX512-BF16.*accumulate='float32'"):
            kernel(np.zeros((9, 63), np.uint16))
    if not runnable("avx512"):
        with pytest.raises(OptionsError, match="vdpbf16ps kernels are AVX512-BF16 code and need arch='avx512'"):
            sparsert.compile(a, options=_opts(63, "bfloat16", accumulate="bfloat16", arch="avx2"))


TIES = {  # (B bits, residual bits, the stored bits): A = [[1]], C = B + R rounds exactly at a tie
    "bfloat16": ([0x3F80, 0x3F81, 0x3F80, 0xBF81], [0x3B80, 0x3B80, 0x3B00, 0xBB80], [0x3F80, 0x3F82, 0x3F80, 0xBF82]),
    "float16": ([0x3C00, 0x3C01, 0x3C00, 0xBC01], [0x1000, 0x1000, 0x0C00, 0x9000], [0x3C00, 0x3C02, 0x3C00, 0xBC02]),
}


def _tie_operands(dtype, n):
    b, r, want = (np.array(v * (n // 4), np.uint16) for v in TIES[dtype])
    view = np.float16 if dtype == "float16" else np.uint16
    return b.reshape(1, n).view(view), r.reshape(1, n).view(view), want.reshape(1, n)


@pytest.mark.avx2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [4, 8, 12, 36])
def test_exact_ties_round_to_even_natively(dtype, n):
    """Random data almost never lands on a tie: these do (1 + half an ulp, odd + half an ulp,
    below half, negative), in full tiles and in the tail."""
    kernel = sparsert.compile(sp.csr_matrix(np.ones((1, 1), np.float32)),
                              options=_opts(n, dtype, arch="avx2", residual=True))
    B, R, want = _tie_operands(dtype, n)
    assert np.array_equal(np.asarray(kernel(B, residual=R)).view(np.uint16), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 20])
def test_exact_ties_round_to_even_avx512_in_the_simulator(dtype, n):
    s = plan(sparsert.load_weight(np.ones((1, 1), np.float32)).matrix, _opts(n, dtype, arch="avx512", residual=True),
             parameters=parameters_for("avx512"), bias=None, weight_digest="t", max_slab_nnz=1 << 62)
    cfg = emit_config("avx512", s.rows_per_block, s.vec, n, dtype=dtype)
    low = lower(s)
    B, R, want = _tie_operands(dtype, n)
    C = simulate("".join(emit_parts(low, cfg, 1)), values(B, dtype).astype(np.float32), 1, width=cfg.width,
                 tile=tile_floats(1, cfg.width), R=R, functions=len(group_blocks(low, cfg)), dtype=dtype)
    assert np.array_equal(np.asarray(C).view(np.uint16), want)


@pytest.mark.avx2
def test_the_bfloat16_rounding_sequence_on_every_kind_of_float32(tmp_path):
    """The AVX2 bfloat16 store's rounding (x86._narrow_avx2), assembled alone and run natively on
    a million float32 patterns (random bits, every exponent's edges, ties, NaNs with payloads whose
    rounding carry would overflow, infinities, max finite, subnormals): precision.half_bits."""
    import ctypes

    from sparsert.backends.cpu.x86 import EmitConfig, Regs, _narrow_avx2, constants
    from sparsert.toolchain import binutils

    if binutils.available() is not None:
        pytest.skip(binutils.available())
    cfg = EmitConfig(isa="avx2", v=1, rows=1, dtype="bfloat16")
    rg = Regs(cfg)
    acc = rg.acc[0][0]
    body = "\n".join(_narrow_avx2(cfg, rg, acc))
    text = f""".intel_syntax noprefix
.text
.globl round_bf16
round_bf16:
    xor rax, rax
1:
    cmp rax, rdx
    jge 2f
    vmovups {acc}, YMMWORD PTR [rdi+rax*4]
{body}
    vmovdqu XMMWORD PTR [rsi+rax*2], {'x' + rg.tmp[1:]}
    add rax, 8
    jmp 1b
2:
    vzeroupper
    ret
.section .rodata
{constants(cfg)}
.section .note.GNU-stack,"",@progbits
"""
    so = tmp_path / "round.so"
    so.write_bytes(binutils.assemble_and_link([text], name="round_bf16").output)
    fn = ctypes.CDLL(str(so)).round_bf16
    rng = np.random.default_rng(0)
    edges = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x00000001, 0x807FFFFF,
             0x7FC00000, 0xFFC00000, 0x7F80FFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FBF8000, 0x3F808000, 0x3F818000]
    exps = (np.arange(256, dtype=np.uint32) << 23)[:, None] | np.array([0, 0x7FFF, 0x8000, 0x8001, 0x18000, 0x7FFFFF],
                                                                       np.uint32)
    bits = np.concatenate([np.array(edges, np.uint32), exps.ravel(), exps.ravel() | 0x80000000,
                           rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)])
    bits = np.ascontiguousarray(np.resize(bits, -(-len(bits) // 8) * 8))
    out = np.zeros(len(bits), np.uint16)
    fn(ctypes.c_void_p(bits.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_long(len(bits)))
    want = half_bits(bits.view(np.float32), "bfloat16")
    bad = np.flatnonzero(out != want)
    assert not bad.size, f"{bad.size} differ, first {bits[bad[0]]:#010x}: got {out[bad[0]]:#06x}, want {want[bad[0]]:#06x}"


@pytest.mark.avx2
def test_foreign_byte_order_is_refused():
    a = random_csr(8, 6, 0.5, seed=3)
    for dtype, foreign in (("float32", ">f4"), ("float16", ">f2")):
        kernel = sparsert.compile(a, options=_opts(5, dtype, arch="avx2"))
        with pytest.raises(InputError, match="native byte order"):
            kernel(np.zeros((6, 5), foreign))


def test_the_cpu_packed_bfloat16_tolerance_is_the_float32_one():
    """The tuner and `check` accept a vdpbf16ps kernel within float32 accumulation of its rounded
    weights (plus flushed denormals), not the GPU's bfloat16-accumulation bound, which passes
    anything at ~100 nonzeros a row."""
    from sparsert.check import tolerance

    cpu = tolerance("bfloat16", "bfloat16", 128, s_max=10.0, c_max=5.0, target="cpu")
    gpu = tolerance("bfloat16", "bfloat16", 128, s_max=10.0, c_max=5.0)
    acc32 = tolerance("bfloat16", "float32", 128, s_max=10.0, c_max=5.0)
    assert gpu > 1 and acc32 <= cpu < 1.001 * acc32 < 0.02
