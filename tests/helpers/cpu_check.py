"""Checks for CPU-target results: float64 references within the a-priori float32 error bound, and
running emitted block functions in the x86 simulator with the runtime's packed panel."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

U = 2.0 ** -24  # unit roundoff of float32


def random_csr(m, k, density, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    a = sp.random(m, k, density=density, random_state=seed, format="csr", dtype=np.float64)
    a.data = rng.standard_normal(a.nnz)
    return a.astype(np.float32)


def check(A, B, C, *, bias=None, R=None, relu=False) -> None:
    """C against float64, within the bound of a float32 dot product of n terms:
    |C - ref| <= gamma_{n+1} * (sum_k |a_ik||b_kj| + |bias_i| + |R_ij|), n = terms per output
    (nonzeros of the row + bias + residual), +1 for the final rounding; ReLU is 1-Lipschitz."""
    A = sp.csr_matrix(A, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    ref = A @ B64
    mag = abs(A) @ np.abs(B64)
    extra = 0
    if bias is not None:
        ref = ref + np.asarray(bias, np.float64)[:, None]
        mag = mag + np.abs(np.asarray(bias, np.float64))[:, None]
        extra += 1
    if R is not None:
        ref = ref + R
        mag = mag + np.abs(R)
        extra += 1
    if relu:
        ref = np.maximum(ref, 0)
    n = np.diff(A.indptr)[:, None] + extra + 1
    tol = n * U / (1 - n * U) * mag
    err = np.abs(np.asarray(C, np.float64) - ref)
    bad = err > tol
    assert not bad.any(), (f"{bad.sum()} outputs out of bound; worst at "
                           f"{np.unravel_index(np.argmax(err - tol), err.shape)}: err {err.max():.3g}")


def pack(B: np.ndarray, j0: int, j1: int, width: int, tile: int) -> np.ndarray:
    """The runtime's packed panel of B's columns [j0, j1) (templates/cpu/runtime.c pack()): tile t
    holds K rows of `width` floats at t * tile, zero past j1."""
    k = B.shape[0]
    tiles = -(-(j1 - j0) // width)
    panel = np.zeros(max(1, tiles) * tile, np.float32)
    for t in range(tiles):
        a, z = j0 + t * width, min(j1, j0 + (t + 1) * width)
        block = np.zeros((k, width), np.float32)
        block[:, : z - a] = B[:, a:z]
        panel[t * tile: t * tile + k * width] = block.reshape(-1)
    return panel


def squeeze(panel: np.ndarray, k: int, width: int, tile: int, tiles: int) -> np.ndarray:
    """The runtime's squeeze() for vdpbf16ps kernels: each packed tile as (k + 1) // 2 rows of
    `width` dwords, (bf16 of row 2p + 1) << 16 | bf16 of row 2p, at a stride of
    tile_floats((k + 1) // 2, width)."""
    p = (k + 1) // 2
    tile2 = p * width + 16
    out = np.zeros(max(1, tiles) * tile2, np.uint32)
    for t in range(tiles):
        rows = np.zeros((2 * p, width), np.uint32)
        rows[:k] = panel[t * tile: t * tile + k * width].view(np.uint32).reshape(k, width)
        out[t * tile2: t * tile2 + p * width] = ((rows[1::2] & 0xFFFF0000) | (rows[0::2] >> 16)).reshape(-1)
    return out.view(np.float32)


def simulate(asm: str, B: np.ndarray, m: int, *, width: int, tile: int, R=None, functions=None, chunk=None,
             dtype: str = "float32", pairs: bool = False):
    """C computed by running every exported block function of `asm` in the x86 simulator over
    the packed panel of B, chunk by chunk, as the runtime does. B: float32 values (a half kernel's
    panel is its B widened, exactly); C and R in `dtype` (bfloat16 as uint16 bits)."""
    from x86_sim import Memory, Program

    k, n = B.shape
    prog = Program(asm)
    if dtype == "float32":
        C = np.full((m, n), np.nan, np.float32)  # poisoned: every output must be written
    else:  # a NaN in both half formats
        C = np.full((m, n), 0x7FFF, np.uint16).view(np.float16 if dtype == "float16" else np.uint16)
    chunk = chunk or n
    for j0 in range(0, n, chunk):
        j1 = min(n, j0 + chunk)
        panel = pack(B, j0, j1, width, tile)
        if pairs:
            panel = squeeze(panel, k, width, tile, -(-(j1 - j0) // width))
        mem = Memory()
        p_addr, c_addr = mem.map(panel), mem.map(C)
        r_addr = mem.map(R) if R is not None else 0
        for f in range(functions):
            prog.call(f"sprt_fn_{f}", args=[p_addr, c_addr, r_addr, j0, j1], memory=mem)
    return C
