"""sparsert.torch.sparsify: the model walk, layer selection, the report, shape handling, errors,
and numbers against the masked dense model, on the CPU through the host backend (the same
generated CUDA source, compiled with g++). GPU runs are marked `gpu`."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

pytestmark = pytest.mark.torch  # tests/conftest.py skips the module's tests without PyTorch ...
torch = pytest.importorskip("torch")  # ... and this keeps its module-level import from failing collection
nn = torch.nn

import sparsert  # noqa: E402
import sparsert.torch as st  # noqa: E402
from sparsert.integrations.torch import _conv_compiler  # noqa: E402 - private: not re-exported by sparsert.torch
from sparsert.errors import InputError, OptionsError  # noqa: E402

RTOL = 1e-5
HAS_CONV = _conv_compiler() is not None


def _rel(got, ref) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _mlp() -> nn.Module:
    """Layers 0 and 2 pruned to 90%, layer 4 dense."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8))
    pruned = sparsert.prune(model, 0.9)
    with torch.no_grad():
        pruned[4].weight.copy_(model[4].weight)
    return pruned


def _convnet() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    return sparsert.prune(model, 0.8)


@pytest.fixture(scope="module")
def mlp():
    return _mlp()


@pytest.fixture(scope="module")
def mlp_host(mlp):
    return st.sparsify(mlp, torch.randn(2, 3, 16), min_sparsity=0.5, backend="host", progress=False)


# --------------------------------------------------------------------------- selection and report


def test_layer_selection_by_threshold(mlp, mlp_host):
    f = mlp_host
    assert isinstance(f[0], st.SparseLinear) and isinstance(f[2], st.SparseLinear)
    assert type(f[4]) is nn.Linear and type(f[1]) is nn.GELU
    assert all(type(m) is nn.Linear for m in (mlp[0], mlp[2], mlp[4]))  # the input is untouched
    assert list(f.state_dict()) == list(mlp.state_dict())  # same parameter names
    assert all(torch.equal(a, b) for a, b in zip(f.state_dict().values(), mlp.state_dict().values()))

    none = st.sparsify(mlp, torch.randn(4, 16), min_sparsity=0.95, backend="host", progress=False)
    assert not any(isinstance(m, st.SparseLinear) for m in none.modules())
    assert [r.reason for r in none.sparsert_report.layers] == [
        "sparsity 0.900 < min_sparsity 0.95", "sparsity 0.900 < min_sparsity 0.95",
        "sparsity 0.000 < min_sparsity 0.95"]


def test_report_contents(mlp_host):
    rep = mlp_host.sparsert_report
    assert [r.name for r in rep.layers] == ["0", "2", "4"]
    first = rep["0"]
    assert (first.kind, first.shape, first.compiled, first.reason) == ("Linear", (32, 16), True, "")
    assert first.sparsity == pytest.approx(0.9, abs=1e-3)
    assert first.inputs == ((2, 3, 16),) and first.kernels == 1
    assert rep["4"].compiled is False and rep["4"].reason == "sparsity 0.000 < min_sparsity 0.5"
    assert [r.name for r in rep.compiled] == ["0", "2"] and [r.name for r in rep.skipped] == ["4"]
    text = str(rep)
    assert "32x16" in text and "compiled (1 kernel" in text and "skipped: sparsity 0.000" in text
    assert text.splitlines()[-1].startswith("2 of 3 layers compiled")
    d = rep.as_dict()
    assert d["backend"] == "host" and d["layers"][2]["compiled"] is False


def test_exclude_unreached_shared_and_dtype():
    torch.manual_seed(2)
    shared = nn.Linear(16, 16)
    unused = nn.Linear(16, 4)
    half = nn.Linear(16, 16).double()  # float64: refused (float32, float16, bfloat16 compile)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused, self.half = shared, shared, unused, half

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = Net()
    with torch.no_grad():
        for lin in (shared, unused, half):
            lin.weight.mul_(torch.rand(lin.weight.shape) > 0.9)
    f = st.sparsify(net, torch.randn(3, 16), backend="host", progress=False)
    rep = f.sparsert_report
    assert [r.name for r in rep.layers] == ["a", "unused", "half"]  # a shared layer is listed once
    assert rep["a"].compiled and f.a is f.b and isinstance(f.a, st.SparseLinear)
    assert rep["unused"].reason == "not called by the example forward"
    assert rep["half"].reason == "weight dtype torch.float64; sparsert kernels are float32, float16 or bfloat16"
    ex = st.sparsify(net, torch.randn(3, 16), backend="host", progress=False, exclude=["a"])
    assert ex.sparsert_report["a"].reason == "excluded by name" and type(ex.a) is nn.Linear


def test_progress_callback_and_float64_example(mlp):
    calls = []
    st.sparsify(mlp, torch.randn(5, 16), backend="host", progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)] and {c[2] for c in calls} == {"0", "2"}
    f = st.sparsify(copy.deepcopy(mlp).double(), torch.randn(5, 16, dtype=torch.float64), backend="host",
                    progress=False)
    assert {r.reason for r in f.sparsert_report.layers} == {
        "weight dtype torch.float64; sparsert kernels are float32, float16 or bfloat16"}
    assert {r.dtype for r in f.sparsert_report.layers} == {"float64"}


# --------------------------------------------------------------------------- numbers (host)


def test_linear_any_leading_shape_matches_dense(mlp, mlp_host):
    f = mlp_host
    with torch.no_grad():
        for shape in [(2, 3, 16), (16,), (3, 1, 2, 16), (1, 16)]:
            x = torch.randn(*shape)
            y = f(x)
            assert y.shape == (*shape[:-1], 8)
            assert _rel(y, mlp(x)) < RTOL, shape
        assert sorted(f[0].kernels) == [1, 6]  # (3, 1, 2) reuses N=6; (16,) and (1, 16) share N=1


def test_output_layout_is_feature_major_view(mlp, mlp_host):
    x = torch.randn(2, 3, 16)
    with torch.inference_mode():
        y = mlp_host[0](x)
        assert y.shape == (2, 3, 32) and y.stride() == (3, 1, 6)  # tokens innermost: C = [out, T]
        assert y.view(2, 3, 4, 8).shape == (2, 3, 4, 8)  # splitting features stays a view
        y2 = mlp_host[2](torch.nn.functional.gelu(y))  # feature-major in: no transpose needed
        assert _rel(y2, mlp[2](mlp[1](mlp[0](x)))) < RTOL
    g = st.sparsify(mlp, x, backend="host", progress=False, contiguous_output=True)
    with torch.no_grad():
        out = g[0](x)
    assert out.is_contiguous() and _rel(out, mlp[0](x)) < RTOL


def test_empty_batch(mlp_host):
    with torch.no_grad():
        assert mlp_host(torch.randn(0, 16)).shape == (0, 8)


@pytest.mark.skipif(not HAS_CONV, reason=st.CONV_UNAVAILABLE)
def test_conv_net_matches_dense():
    net = _convnet()
    x = torch.randn(2, 3, 8, 8)
    f = st.sparsify(net, x, min_sparsity=0.5, backend="host", progress=False)
    rep = f.sparsert_report
    assert [r.kind for r in rep.layers] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert all(r.compiled for r in rep.layers), str(rep)
    assert rep["0"].inputs == ((2, 3, 8, 8),) and rep["2"].shape == (8, 4, 3, 3)
    assert isinstance(f[2], st.SparseConv2d) and f[2].groups == 2
    with torch.no_grad():
        assert _rel(f(x), net(x)) < RTOL
        assert _rel(f[0](x[0]), net[0](x[0])) < RTOL  # unbatched CHW input
        assert sorted(f[0].kernels) == [(1, 8, 8), (2, 8, 8)]


@pytest.mark.skipif(not HAS_CONV, reason=st.CONV_UNAVAILABLE)
@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own note on even kernels
def test_conv_unsupported_variants_are_skipped_with_reasons():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
                        nn.Conv2d(4, 4, 2, padding="same"))
    net = sparsert.prune(net, 0.75)
    f = st.sparsify(net, torch.randn(1, 2, 6, 6), backend="host", progress=False)
    assert f.sparsert_report["0"].reason == "padding_mode 'reflect' (only 'zeros' is supported)"
    assert "pads asymmetrically" in f.sparsert_report["1"].reason


def test_conv_feature_check(monkeypatch):
    """Without convolution support, Conv2d layers are skipped with a clear reason."""
    import sparsert.integrations.torch as impl  # sparsert.torch re-exports it; the lookup is here

    monkeypatch.setattr(impl, "_conv_compiler", lambda: None)
    net = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Flatten(), nn.Linear(4 * 3 * 3, 4))
    net = sparsert.prune(net, 0.75)
    f = st.sparsify(net, torch.randn(1, 2, 3, 3), backend="host", progress=False)
    assert f.sparsert_report["0"].reason == st.CONV_UNAVAILABLE == "convolution support not available"
    assert type(f[0]) is nn.Conv2d and isinstance(f[2], st.SparseLinear)


def test_copy_and_pickle_recompile_lazily(mlp, mlp_host):
    x = torch.randn(2, 3, 16)
    for clone in (copy.deepcopy(mlp_host), pickle.loads(pickle.dumps(mlp_host))):
        assert clone[0].kernels == {}
        with torch.no_grad():
            assert _rel(clone(x), mlp(x)) < RTOL
        assert sorted(clone[0].kernels) == [6]


def test_tiny_bert_three_dim_inputs():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16)
    bert = sparsert.prune(transformers.BertModel(cfg, add_pooling_layer=False).eval(), 0.9)
    ids = torch.randint(0, 64, (2, 5))
    f = st.sparsify(bert, {"input_ids": ids}, backend="host", progress=False)
    assert len(f.sparsert_report.compiled) == 6  # q, k, v, attention output, intermediate, output
    assert f.sparsert_report.compiled[0].inputs == ((2, 5, 16),)
    with torch.inference_mode():
        assert _rel(f(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state) < 1e-4


# --------------------------------------------------------------------------- errors


def test_autograd_is_refused_clearly(mlp, mlp_host):
    x = torch.randn(4, 16, requires_grad=True)
    with pytest.raises(InputError, match=r"0 \(Linear\): autograd is not supported.*torch.no_grad"):
        mlp_host(x)
    with torch.no_grad():
        assert _rel(mlp_host(x), mlp(x)) < RTOL  # the same input runs without autograd
    trainable = copy.deepcopy(mlp_host).requires_grad_(True)
    with pytest.raises(InputError, match="autograd is not supported"):
        trainable(torch.randn(4, 16))
    assert not mlp_host[0].weight.requires_grad  # compiled parameters are frozen


def test_cpu_tensor_on_cuda_backend(mlp):
    f = st.sparsify(mlp, torch.randn(4, 16), backend="cuda", arch="sm_90", progress=False)
    assert f.sparsert_report["0"].compiled  # NVRTC needs no GPU to compile
    with torch.no_grad(), pytest.raises(InputError, match=r"input is a CPU tensor.*backend='cuda'"):
        f(torch.randn(4, 16))


def test_input_errors(mlp_host):
    with torch.no_grad():
        with pytest.raises(InputError, match=r"dtype torch.float64; this layer's kernels are float32, "
                                             r"its weight's dtype \(cast with \.float\(\)\)$"):
            mlp_host(torch.randn(4, 16, dtype=torch.float64))
        with pytest.raises(InputError, match=r"input shape \(4, 15\); expected \[\.\.\., 16\]"):
            mlp_host[0](torch.randn(4, 15))


def test_modified_weight_is_refused(mlp):
    f = st.sparsify(mlp, torch.randn(4, 16), backend="host", progress=False)
    with torch.no_grad():
        f[0].weight.mul_(2)
        with pytest.raises(InputError, match="modified after it was compiled"):
            f(torch.randn(4, 16))


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "tpu"}, "backend='tpu'"),
    ({"min_sparsity": 1.5}, "min_sparsity=1.5"),
    ({"min_sparsity": True}, "min_sparsity=True"),
])
def test_bad_arguments(mlp, kwargs, match):
    with pytest.raises(OptionsError, match=match):
        st.sparsify(mlp, torch.randn(2, 16), progress=False, **kwargs)
    with pytest.raises(OptionsError, match="expected a torch.nn.Module"):
        st.sparsify(np.zeros(3), torch.randn(2, 16))


def test_core_does_not_import_torch_module():
    import subprocess
    import sys

    code = "import sys, sparsert; assert 'sparsert.torch' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "ok\n"


# --------------------------------------------------------------------------- half precision
# A model keeps its dtype: float16 / bfloat16 layers compile kernels of their weight's dtype (fp32
# accumulation) and run on the host through run_host's half forms. Numbers are checked against the
# dense model run in float64, elementwise within the README's bound ("Half precision") as
# tests/helpers/half_model.py's error_bound computes it from each kernel's schedule; through a
# chain of layers a layer's input error e (vs the exact input) reaches its output as |A| e, and
# ReLU passes it on unchanged (1-Lipschitz).

HALF = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _half_mlp(dtype) -> nn.Module:
    torch.manual_seed(5)
    return sparsert.prune(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24)), 0.8).to(dtype)


def _bias64(s):
    return None if s.bias_bits is None else np.array(s.bias_bits, np.uint32).view(np.float32).astype(np.float64)


def _linear_bound(layer, x, err_in=None) -> np.ndarray:
    """Bound on |layer(x) - exact| ([T, out]) for a SparseLinear fed x ([T, in], the kernel's
    dtype): error_bound on x's values, plus err_in ([T, in], x's own error) carried by |A|."""
    from half_model import error_bound

    s = layer.kernels[x.shape[0]].schedule
    A = s.to_csr()
    bv = x.detach().double().cpu().numpy().T[None]  # B = x^T: the exact values of the half input
    bound = error_bound(s, A, bv, _bias64(s))[0].T
    if err_in is not None:
        bound = bound + err_in @ np.abs(A.toarray().astype(np.float64)).T
    return bound


def _check_half_mlp(model, f, x):
    """f (the sparsified half MLP) against `model` in float64, within the derived bound."""
    dtype = x.dtype
    with torch.no_grad():
        y = f(x)
        h = torch.relu(f[0](x))  # what layer 2 of f receives
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], 24)
    tokens = x.reshape(-1, 16)
    bound0 = _linear_bound(f[0], tokens)
    bound = _linear_bound(f[2], h.reshape(-1, 32), bound0)
    with torch.no_grad():
        exact = copy.deepcopy(model).cpu().double()(tokens.cpu().double()).numpy()
    err = np.abs(y.reshape(-1, 24).cpu().double().numpy() - exact)
    assert np.all(err <= bound), float(np.max(err - bound))


@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF.values()))
def test_half_model_on_host_within_the_half_bound(dtype):
    model = _half_mlp(dtype)
    torch.manual_seed(7)
    x = torch.randn(3, 5, 16).to(dtype)
    f = st.sparsify(model, x, backend="host", progress=False)
    rep = f.sparsert_report
    assert [(r.name, r.compiled, r.dtype) for r in rep.layers] == [("0", True, HALF[dtype]), ("2", True, HALF[dtype])]
    assert str(rep).splitlines()[1].split()[3] == HALF[dtype]  # the report's dtype column
    for i in (0, 2):
        assert f[i].dtype == dtype and f[i].weight.dtype == dtype  # the model's parameters keep theirs
        (kernel,) = f[i].kernels.values()
        assert (kernel.schedule.dtype, kernel.schedule.accumulate) == (HALF[dtype], "float32")
    _check_half_mlp(model, f, x)
    _check_half_mlp(model, f, torch.randn(7, 16).to(dtype))  # another N compiles lazily, same dtype
    assert f[0].kernels[7].schedule.dtype == HALF[dtype]


@pytest.mark.skipif(not HAS_CONV, reason=st.CONV_UNAVAILABLE)
@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF.values()))
def test_half_conv_on_host_within_the_half_bound(dtype):
    from half_model import error_bound
    from schedules import im2col

    torch.manual_seed(8)
    conv = sparsert.prune(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2)), 0.7).to(dtype)
    x = torch.randn(2, 3, 7, 6).to(dtype)
    f = st.sparsify(conv, x, backend="host", progress=False)
    assert f.sparsert_report["0"].compiled and f.sparsert_report["0"].dtype == HALF[dtype]
    with torch.no_grad():
        y = f(x)
    assert y.dtype == dtype and y.shape == (2, 8, 4, 3)
    s = f[0].kernels[(2, 7, 6)].schedule
    assert s.dtype == HALF[dtype]
    with torch.no_grad():
        exact = copy.deepcopy(conv).double()(x.double()).numpy().reshape(2, 8, 12)
    bv = im2col(x.float().numpy(), s.conv).astype(np.float64)  # exact: half values are float32s
    bound = error_bound(s, s.to_csr(), bv, _bias64(s))
    err = np.abs(y.double().numpy().reshape(2, 8, 12) - exact)
    assert np.all(err <= bound), float(np.max(err - bound))


def test_float32_model_is_unchanged(mlp, mlp_host):
    rep = mlp_host.sparsert_report
    assert [r.dtype for r in rep.layers] == ["float32"] * 3
    assert str(rep).splitlines()[1].split()[3] == "float32"
    kernel = mlp_host[0].kernels[6]
    assert mlp_host[0].dtype == torch.float32 and kernel.schedule.dtype == "float32"
    w, b = (p.detach().numpy() for p in (mlp[0].weight, mlp[0].bias))
    plain = sparsert.compile(w, n=6, bias=b, name="0")  # no dtype=: the float32 kernel as before
    assert kernel.schedule.digest == plain.schedule.digest and kernel.source == plain.source
    x = torch.randn(6, 16)
    with torch.no_grad():
        y = mlp_host[0](x)
    assert y.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(plain.run_host(x.t().contiguous().numpy())).t())


def test_half_input_dtype_errors_are_one_line():
    model = _half_mlp(torch.bfloat16)
    f = st.sparsify(model, torch.randn(4, 16).bfloat16(), backend="host", progress=False)
    for wrong in (torch.float32, torch.float16):
        with torch.no_grad(), pytest.raises(InputError) as e:
            f(torch.randn(4, 16, dtype=wrong))
        assert str(e.value) == (f"0 (Linear): input dtype {wrong}; this layer's kernels are bfloat16, "
                                f"its weight's dtype (cast with .bfloat16())")
    g = st.sparsify(_half_mlp(torch.float16), torch.randn(4, 16).half(), backend="host", progress=False)
    with torch.no_grad(), pytest.raises(InputError) as e:
        g[2](torch.randn(4, 32, dtype=torch.bfloat16))
    assert str(e.value) == ("2 (Linear): input dtype torch.bfloat16; this layer's kernels are float16, "
                            "its weight's dtype (cast with .half())")
    cast = copy.deepcopy(g).float()  # cast after compiling: the kernels are float16 still
    with torch.no_grad(), pytest.raises(InputError, match=r"^0 \(Linear\): the weight was cast to "
                                                          r"torch.float32 after it was compiled as "
                                                          r"torch.float16; call sparsert.torch.sparsify"):
        cast(torch.randn(4, 16))
    # under autocast a float32 input reaches the bfloat16 layer: left dense, with the reason
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = st.sparsify(model, torch.randn(4, 16), backend="host", progress=False)
    rep = auto.sparsert_report
    assert rep["0"].reason == ("input dtype torch.float32; the weight is torch.bfloat16 "
                               "(a sparse layer runs in its weight's dtype)")
    assert type(auto[0]) is nn.Linear and rep["2"].compiled


class _Mixed(nn.Module):
    """A float32 Linear, a float16 Linear between casts, a float32 LayerNorm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.b(torch.relu(self.a(x)).half()).float())


def test_mixed_dtypes_in_one_model():
    net = sparsert.prune(_Mixed(), 0.8)
    net.b.half()
    x = torch.randn(2, 3, 16)
    f = st.sparsify(net, x, backend="host", progress=False)
    assert [(r.name, r.dtype, r.compiled) for r in f.sparsert_report.layers] == [
        ("a", "float32", True), ("b", "float16", True)]
    assert f.a.kernels[6].schedule.dtype == "float32" and f.b.kernels[6].schedule.dtype == "float16"
    assert f.norm.weight.dtype == torch.float32
    with torch.no_grad():
        y = f(x)
        ya = f.a(x)
        h = torch.relu(ya).half()
        yb = f.b(h)
        assert y.dtype == torch.float32 and yb.dtype == torch.float16
        assert torch.equal(y, f.norm(yb.float()))
        assert _rel(ya, net.a(x)) < RTOL
        exact = copy.deepcopy(net.b).double()(h.double()).reshape(6, 16).numpy()
    err = np.abs(yb.double().reshape(6, 16).numpy() - exact)
    bound = _linear_bound(f.b, h.reshape(6, 32))
    assert np.all(err <= bound), float(np.max(err - bound))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_mlp_matches_dense_on_a_side_stream(mlp):
    dense = copy.deepcopy(mlp).cuda()
    x = torch.randn(4, 7, 16, device="cuda")
    f = st.sparsify(dense, x, progress=False)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.inference_mode():
        y = f(x)
        ref = dense(x)
    stream.synchronize()
    assert y.is_cuda and y.shape == (4, 7, 8)
    assert _rel(y, ref) < RTOL
    with torch.no_grad():  # a new token count compiles lazily
        assert _rel(f(x[:1]), dense(x[:1])) < RTOL
    assert sorted(f[0].kernels) == [7, 28]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CONV, reason=st.CONV_UNAVAILABLE)
def test_gpu_convnet_matches_dense():
    net = _convnet().cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    f = st.sparsify(net, x, progress=False)
    with torch.inference_mode():
        assert _rel(f(x), net(x)) < RTOL


@pytest.mark.gpu
def test_gpu_cuda_graph_capture(mlp):
    dense = copy.deepcopy(mlp).cuda()
    x = torch.randn(8, 16, device="cuda")
    f = st.sparsify(dense, x, progress=False)
    with torch.inference_mode():
        f(x)  # load the modules before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = f(x)
        x.copy_(torch.randn(8, 16, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(y, dense(x)) < RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF.values()))
def test_gpu_half_model_within_the_half_bound(dtype):
    model = _half_mlp(dtype).cuda()
    x = torch.randn(4, 7, 16, device="cuda").to(dtype)
    f = st.sparsify(model, x, progress=False)
    assert all(r.compiled and r.dtype == HALF[dtype] for r in f.sparsert_report.layers)
    assert f[0].kernels[28].schedule.dtype == HALF[dtype]
    _check_half_mlp(model, f, x)
    with torch.no_grad(), pytest.raises(InputError, match=r"input dtype torch.float32; this layer's kernels"):
        f(x.float())
