"""sparsify(model) on a CPU model: the CPU target by default ('auto'), real kernels, the same
numbers as the dense model within float32 rounding, torch tensors in and out."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import sparsert  # noqa: E402
import sparsert.torch as st  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.avx2]


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 1), torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10)).eval()


def test_a_cpu_model_runs_on_the_cpu_target_by_default():
    model = sparsert.prune(_net(), 0.9)
    x = torch.randn(2, 3, 16, 16)
    fast = st.sparsify(model, x, progress=False)
    report = fast.sparsert_report
    assert report.backend == "cpu" and len(report.compiled) == 5, str(report)
    kernels = [k for m in fast.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d)) for k in m.kernels.values()]
    assert kernels and all(getattr(k, "kernel", k).target == "cpu" for k in kernels)
    with torch.no_grad():
        got, ref = fast(x), model(x)
        ref64 = model.double()(x.double())
    # float32 on both sides: the sparse kernels' error is of the dense model's own order
    assert (got.double() - ref64).abs().max() <= 4 * (ref.double() - ref64).abs().max() + 1e-5


def test_wrong_device_and_explicit_backends():
    model = sparsert.prune(torch.nn.Sequential(torch.nn.Linear(32, 16)), 0.8)
    x = torch.randn(4, 32)
    fast = st.sparsify(model, x, backend="cpu", progress=False)
    assert fast.sparsert_report.backend == "cpu"
    with pytest.raises(sparsert.OptionsError, match="backend='gpu'"):
        st.sparsify(model, x, backend="gpu", progress=False)


def test_depthwise_convolutions_stay_dense_on_the_cpu_target():
    torch.manual_seed(1)
    model = sparsert.prune(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                               torch.nn.Conv2d(8, 16, 1)).eval(), 0.9)
    x = torch.randn(1, 8, 10, 10)
    report = st.sparsify(model, x, backend="cpu", progress=False).sparsert_report
    assert "depthwise" in report["0"].reason and report["1"].compiled


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_model_stays_half_on_the_cpu_target(dtype):
    """A float16 / bfloat16 model keeps its dtype on the CPU target: every layer compiles a kernel
    of that dtype (float32 arithmetic, one rounding per layer output), the outputs are that dtype,
    and they are as close to the float64 model as the dense half model's own output is."""
    model = sparsert.prune(_net(), 0.9).to(dtype)
    x = torch.randn(2, 3, 16, 16).to(dtype)
    fast = st.sparsify(model, x, backend="cpu", progress=False)
    report = fast.sparsert_report
    assert len(report.compiled) == 5 and {r.dtype for r in report.compiled} == {str(dtype).removeprefix("torch.")}
    kernels = [k for m in fast.modules() if isinstance(m, (st.SparseLinear, st.SparseConv2d)) for k in m.kernels.values()]
    assert all(getattr(k, "kernel", k).schedule.dtype == str(dtype).removeprefix("torch.") for k in kernels)
    with torch.no_grad():
        got = fast(x)
        ref64 = copy.deepcopy(model).double()(x.double())
        dense = model(x)
    assert got.dtype == dtype
    # the dense half model rounds at least as often (every op in the dtype)
    assert (got.double() - ref64).abs().max() <= 2 * (dense.double() - ref64).abs().max() + 1e-3
    with pytest.raises(sparsert.InputError, match="input dtype torch.float32"):
        fast(x.float())
