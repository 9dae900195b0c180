"""Half precision for the tests: operands in float16 / bfloat16 (bits), and a reference model of
the CUDA template's half arithmetic, operation by operation, exact (tests/helpers/ptx_sim.py's
round_half / hfma: every HFMA2 lane is a * b + c rounded once; conversions round to nearest even).
"""

from __future__ import annotations

import numpy as np
import ptx_sim

from sparsert.check.error import HALF_TINY, UNIT_ROUNDOFF, gamma
from sparsert.ir.precision import from_half_bits, half_bits

FMT = {"float16": "f16", "bfloat16": "bf16"}


def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 x as the host array of `dtype` (float16, or bfloat16 bits as uint16)."""
    if dtype == "float32":
        return np.asarray(x, np.float32)
    if dtype == "float16":
        return np.asarray(x, np.float32).astype(np.float16)
    return half_bits(x, "bfloat16").reshape(np.shape(x))


def values(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values of a host array of `dtype` (exact)."""
    if dtype == "bfloat16":
        return from_half_bits(x, "bfloat16").reshape(x.shape).astype(np.float64)
    return np.asarray(x, np.float64)


def reference(s, B: np.ndarray, R: np.ndarray | None) -> np.ndarray:
    """C (float64 values of the stored halves) as the kernel computes it: B, R as float64 values
    (exact halves). float32 arithmetic: acc = fma32(b, w, acc); packed: acc = hfma(b, w, acc) in the
    half format, partial sums added by the owner in group order (rounded in the accumulator's
    format); then + bias, + residual, relu in float32; one rounding to the dtype at the store."""
    f32 = np.float32
    fmt = FMT[s.dtype]
    packed = s.packed
    C = np.zeros((s.batch, s.m, s.n), dtype=np.float64)
    for z in range(s.batch):
        for block in s.blocks:
            users = block.slot_users()
            for slot, row in enumerate(block.rows):
                for col in range(s.n):
                    accs = {}
                    for g, work in enumerate(block.groups):
                        acc = 0.0 if packed else f32(0.0)
                        k, sl, bits = work.arrays()
                        for kk, ss, ww in zip(k.tolist(), sl.tolist(), bits.view(f32).tolist()):
                            if ss == slot:
                                b = float(B[z, kk, col])
                                acc = ptx_sim.hfma(b, ww, acc, fmt) if packed else ptx_sim.fma32(f32(b), f32(ww), acc)
                        accs[g] = acc
                    owner = slot % s.groups
                    out = accs[owner]
                    for h in users[slot]:
                        if h != owner:
                            out = ptx_sim.hfma(accs[h], 1.0, out, fmt) if packed else ptx_sim.add32(out, accs[h])
                    out = f32(out)
                    if s.bias_bits is not None:
                        out = ptx_sim.add32(out, np.array(s.bias_bits[row], np.uint32).view(f32)[()])
                    if s.residual:
                        out = ptx_sim.add32(out, f32(R[z, row, col]))
                    if s.relu:
                        out = ptx_sim.max32(out, f32(0.0))
                    C[z, row, col] = ptx_sim.half_value(ptx_sim.cvt_half(out, fmt), fmt)
    return C


# unit roundoff, half the smallest subnormal and Higham's gamma_n: the package's (sparsert.check,
# whose tolerance the tuner uses); tests/unit/test_tune_half.py pins their values
U, TINY = UNIT_ROUNDOFF, HALF_TINY


def error_bound(s, A: np.ndarray, Bv: np.ndarray, bias=None, Rv=None) -> np.ndarray:
    """Elementwise bound on |C - C_exact| (README, "Half precision"). A: the weights the kernel
    multiplies by (s.to_csr(): rounded for packed half), Bv / Rv the operands' values, C_exact the
    float64 result from them. Sum of n products in a format of unit roundoff u: |err| <= gamma_n *
    sum|w||b| (Higham 3.5, any order); with split K the owner's extra additions count in n. Then
    fp32 epilogue adds (gamma_2 over |acc| + |bias| + |R|) and one rounding at the store (u_dtype
    relative, plus half the smallest subnormal absolute)."""
    u_acc = U["float32"] if not s.packed else U[s.accumulate]
    u_out = U[s.dtype]
    absA = np.abs(A.toarray()).astype(np.float64)
    n = int(np.diff(A.tocsr().indptr).max(initial=0)) + s.groups  # products + partial-sum adds
    mag = np.einsum("mk,zkn->zmn", absA, np.abs(Bv))
    acc_err = gamma(n, u_acc) * mag
    if s.packed:  # subnormal partial sums: an absolute error per operation
        acc_err += n * TINY[s.accumulate]
    extra = np.zeros_like(mag)
    if bias is not None:
        extra += np.abs(bias)[None, :, None]
    if Rv is not None:
        extra += np.abs(Rv)
    pre = acc_err + gamma(2, U["float32"]) * (mag + acc_err + extra)
    return pre + u_out * (mag + extra + pre) + TINY[s.dtype]
