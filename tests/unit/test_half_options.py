"""Half precision options and weights (issue 15), pure Python: dtype/accumulate choices and their
one-line errors, the CLI flags, bit-exact round-to-nearest-even weights, overflow and flush
reports naming (row, col), and float32 schedules' digests (kernel names) left unchanged."""

from __future__ import annotations

import warnings
from dataclasses import replace
from fractions import Fraction

import numpy as np
import ptx_sim
import pytest
import scipy.sparse as sp
from schedules import schedule, weight

from sparsert.choices import ACCUMULATE, DTYPES
from sparsert.errors import OptionsError, WeightError
from sparsert.ir.precision import from_half_bits, half_bits, pack2, round_to, round_weights
from sparsert.options import KernelOptions

BAD = [
    (dict(dtype="float64"), "dtype='float64': expected one of float32, float16, bfloat16"),
    (dict(dtype="half"), "dtype='half'"),
    (dict(accumulate="float64"), "accumulate='float64': expected one of"),
    (dict(dtype="float16", accumulate="bfloat16"), "needs dtype='bfloat16' activations"),
    (dict(dtype="float32", accumulate="float16"), "needs dtype='float16' activations"),
    (dict(dtype="float16", accumulate="float16", vec=1), "vec=1: accumulate='float16' packs two columns"),
    (dict(dtype="bfloat16", accumulate="bfloat16", n=63), "n=63: accumulate='bfloat16'"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=lambda x: str(x)[:40])
def test_bad_dtype_options_are_one_line_errors(kwargs, message):
    with pytest.raises(OptionsError) as err:
        KernelOptions(**({"n": 64} | kwargs))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_defaults_and_choices():
    o = KernelOptions(n=64)
    assert (o.dtype, o.accumulate, o.packed) == ("float32", None, False)
    assert KernelOptions(n=64, dtype="float16").packed is False
    assert KernelOptions(n=64, dtype="bfloat16", accumulate="bfloat16").packed is True
    assert DTYPES == ("float32", "float16", "bfloat16") and set(ACCUMULATE) == set(DTYPES)


def _exact_round(x: np.float32, fmt: str) -> float:
    if x == 0 or not np.isfinite(x):
        return float(x)
    return ptx_sim.round_half(Fraction(float(x)), fmt)


@pytest.mark.parametrize("dtype, fmt", [("float16", "f16"), ("bfloat16", "bf16")])
def test_weight_rounding_is_round_to_nearest_even_bit_for_bit(dtype, fmt):
    rng = np.random.default_rng(5)
    # random magnitudes over the whole range, subnormals, and exact ties (midpoints of two halves)
    x = (rng.standard_normal(4000) * np.exp2(rng.integers(-30, 20, 4000))).astype(np.float32)
    h = half_bits(x[:500], dtype)
    lo, hi = from_half_bits(h, dtype), from_half_bits(h + 1, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        ties = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
    x = np.concatenate([x, ties[np.isfinite(ties)], np.float32([65504, 65519.99, 65520, 6e-8, 2.9e-8, -0.0])])
    got = round_to(x, dtype)
    want = np.array([_exact_round(v, fmt) for v in x], dtype=np.float32)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert round_to(x, dtype).tobytes() == got.tobytes()  # deterministic


def test_packed_immediate_holds_the_half_twice():
    bits = np.float32([1.0, -2.5, 0.1]).view(np.uint32)
    assert [hex(w) for w in pack2(bits, "float16")] == ["0x3c003c00", "0xc100c100", "0x2e662e66"]
    assert [hex(w) for w in pack2(bits, "bfloat16")] == ["0x3f803f80", "0xc020c020", "0x3dcd3dcd"]


def test_overflow_is_refused_naming_row_and_col():
    a = sp.csr_matrix(np.array([[0, 1.0, 0], [0, 0, 70000.0]], np.float32))
    with pytest.raises(WeightError, match=r"70000.0 at \(row, col\) = \(1, 2\) overflows float16") as err:
        round_weights(a, "float16")
    assert "\n" not in str(err.value)
    assert round_weights(a, "bfloat16").nnz == 2  # bfloat16 has float32's range


def test_flush_to_zero_warns_naming_row_and_col():
    a = sp.csr_matrix(np.array([[0, 1.0, 0], [1e-9, 0, 2e-9]], np.float32))
    with pytest.warns(RuntimeWarning, match=r"2 nonzero\(s\) round to zero in float16, first .* \(row, col\) = \(1, 0\)"):
        out = round_weights(a, "float16")
    assert out.nnz == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert round_weights(a, "bfloat16").nnz == 3  # representable in bfloat16


def test_packed_schedule_multiplies_by_the_rounded_weights_and_float32_by_the_originals():
    w = weight(13, 21, 0.3, seed=1)
    exact = w.matrix.toarray()
    for dtype in ("float16", "bfloat16"):
        packed = schedule(w, n=16, dtype=dtype, accumulate=dtype).to_csr().toarray()
        assert np.array_equal(packed, round_to(exact, dtype))
        assert np.array_equal(schedule(w, n=16, dtype=dtype).to_csr().toarray(), exact)


def test_float32_digest_is_unchanged_and_half_digests_differ():
    w = weight(13, 21, 0.3, seed=1)
    s = schedule(w, n=16, vec=2)
    h = replace(s, dtype="float16")
    assert s.digest != h.digest != replace(h, accumulate="float16").digest
    # a float32 schedule hashes exactly the fields it hashed before the dtype fields existed
    assert replace(s, dtype="float32", accumulate="float32").digest == s.digest
    assert "dtype" not in s.params() and h.params()["dtype"] == "float16"


def test_bias_is_in_the_dtype():
    w = weight(13, 21, 0.3, seed=1)
    bias = np.linspace(-1, 1, 13).astype(np.float32) / 3
    s = schedule(w, n=16, dtype="bfloat16", bias=bias)
    got = np.array(s.bias_bits, np.uint32).view(np.float32)
    assert np.array_equal(got, round_to(bias, "bfloat16"))
    with pytest.raises(WeightError, match="bias: value 100000.0 at index 0 overflows float16"):
        schedule(w, n=16, dtype="float16", bias=np.full(13, 1e5, np.float32))


def test_packed_conv_is_refused_in_one_line():
    from schedules import conv_schedule

    with pytest.raises(OptionsError, match="virtual im2col") as err:
        conv_schedule((2, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1)), dtype="float16", accumulate="float16")
    assert "\n" not in str(err.value)


def test_cli_flags():
    from sparsert.cli import build_parser

    p = build_parser()
    args = p.parse_args(["compile", "w.npy", "--n", "8", "--dtype", "bfloat16", "--accumulate", "bfloat16"])
    assert (args.dtype, args.accumulate) == ("bfloat16", "bfloat16")
    with pytest.raises(SystemExit):
        p.parse_args(["compile", "w.npy", "--n", "8", "--dtype", "float64"])
