"""Magnitude pruning: exact counts, N:M patterns, layer vs global scope, deterministic ties, errors."""

from __future__ import annotations

import numpy as np
import pytest

import sparsert
from sparsert.cli import main as cli_main
from sparsert.errors import OptionsError, WeightError
from sparsert.frontend.prune import parse_nm, prune, sparsity_of


def _rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _zeros(a) -> int:
    return int(np.count_nonzero(np.asarray(a) == 0))


# --------------------------------------------------------------------------- layer scope


@pytest.mark.parametrize("shape", [(64, 48), (7, 13), (8, 3, 3, 3), (100,)])
@pytest.mark.parametrize("s", [0.0, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_exact_sparsity(shape, s):
    w = _rand(shape)
    p = prune(w, s)
    assert p.shape == w.shape and p.dtype == w.dtype
    assert _zeros(p) == int(np.floor(s * w.size + 0.5))


def test_keeps_the_largest_magnitudes_and_leaves_input_alone():
    w = _rand((32, 40), seed=1)
    before = w.copy()
    p = prune(w, 0.8)
    np.testing.assert_array_equal(w, before)
    kept, dropped = np.abs(w[p != 0]), np.abs(w[p == 0])
    assert kept.min() >= dropped.max()
    np.testing.assert_array_equal(p[p != 0], w[p != 0])  # survivors keep their exact values


def test_already_sparse_input_stays_at_least_as_sparse():
    w = _rand((20, 20))
    w[:, :15] = 0  # 75% zeros already
    p = prune(w, 0.5)
    assert _zeros(p) == _zeros(w)
    np.testing.assert_array_equal(p, w)


def test_float16_and_int_arrays_keep_their_dtype():
    w16 = _rand((16, 16)).astype(np.float16)
    assert prune(w16, 0.5).dtype == np.float16
    wi = np.arange(-8, 8).reshape(4, 4)
    pi = prune(wi, 0.5)
    assert pi.dtype == wi.dtype and _zeros(pi) == 8 and np.abs(pi).min() == 0


# --------------------------------------------------------------------------- N:M


@pytest.mark.parametrize("nm", ["2:4", (1, 4), "4:8", " 2 : 4 "])
def test_nm_pattern(nm):
    n, m = parse_nm(nm)
    w = _rand((16, 32), seed=2)
    p = prune(w, nm=nm)
    groups, orig = p.reshape(16, -1, m), w.reshape(16, -1, m)
    assert (np.count_nonzero(groups, axis=2) == n).all()
    # the survivors of each group are its n largest magnitudes
    kept_min = np.where(groups != 0, np.abs(orig), np.inf).min(axis=2)
    dropped_max = np.where(groups == 0, np.abs(orig), -np.inf).max(axis=2)
    assert (kept_min >= dropped_max).all()


def test_nm_groups_run_along_the_reduction_axis_of_conv_weights():
    w = _rand((4, 2, 3, 3), seed=3)  # K = 2*3*3 = 18: not a multiple of 4
    with pytest.raises(WeightError, match="not a multiple of M=4"):
        prune(w, nm="2:4")
    p = prune(_rand((4, 4, 2, 2), seed=3), nm="1:2")  # K = 16
    assert (np.count_nonzero(p.reshape(4, -1, 2), axis=2) == 1).all()


def test_nm_then_sparsity():
    w = _rand((32, 64), seed=4)
    p = prune(w, 0.9, nm="2:4")
    assert _zeros(p) == round(0.9 * w.size)
    assert (np.count_nonzero(p.reshape(32, -1, 4), axis=2) <= 2).all()
    # a sparsity below N:M's own changes nothing beyond N:M
    np.testing.assert_array_equal(prune(w, 0.3, nm="2:4"), prune(w, nm="2:4"))


# --------------------------------------------------------------------------- global scope


def test_global_uses_one_threshold_over_all_tensors():
    d = {"small": _rand((30, 30), seed=5, scale=0.1), "big": _rand((30, 30), seed=6, scale=10.0),
         "bias": _rand((30,), seed=7), "steps": np.arange(900).reshape(30, 30)}
    g = prune(d, 0.5, scope="global")
    layer = prune(d, 0.5, scope="layer")
    assert _zeros(g["small"]) + _zeros(g["big"]) == 900
    assert _zeros(g["small"]) > 800 and _zeros(g["big"]) < 100  # small weights go first
    assert _zeros(layer["small"]) == _zeros(layer["big"]) == 450
    kept = np.concatenate([np.abs(d[k][g[k] != 0]) for k in ("small", "big")])
    dropped = np.concatenate([np.abs(d[k][g[k] == 0]) for k in ("small", "big")])
    assert kept.min() >= dropped.max()
    # 1-D and integer entries are not weights: returned as they were
    assert g["bias"] is d["bias"] and g["steps"] is d["steps"]
    assert list(g) == list(d)


# --------------------------------------------------------------------------- determinism


def test_ties_break_on_position():
    w = np.full((4, 4), 0.5, dtype=np.float32)
    p = prune(w, 0.5)
    np.testing.assert_array_equal(p.reshape(-1) == 0, np.arange(16) < 8)  # earlier entries first
    q = prune(np.ones((2, 8), np.float32), nm="2:4")
    np.testing.assert_array_equal(q[0, :4] != 0, [True, True, False, False])  # earlier kept
    g = prune({"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32)}, 0.5,
              scope="global")
    assert _zeros(g["a"]) == 4 and _zeros(g["b"]) == 0  # earlier tensor first
    w2 = np.round(_rand((50, 50), seed=8), 1)  # many ties
    np.testing.assert_array_equal(prune(w2, 0.7), prune(w2.copy(), 0.7))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.5}, "sparsity=1.5"),
    ({"sparsity": -0.1}, "sparsity=-0.1"),
    ({"sparsity": float("nan")}, "sparsity=nan"),
    ({"sparsity": True}, "sparsity=True"),
    ({"sparsity": "0.9"}, "sparsity='0.9'"),
    ({"sparsity": None}, "give sparsity="),
    ({"sparsity": 0.9, "scope": "model"}, "scope='model'"),
    ({"sparsity": None, "nm": "2-4"}, "expected 'N:M'"),
    ({"sparsity": None, "nm": "4:4"}, "0 < N < M"),
    ({"sparsity": None, "nm": "0:4"}, "0 < N < M"),
    ({"sparsity": None, "nm": (2,)}, "pair"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(OptionsError, match=match):
        prune(_rand((8, 8)), **kwargs)


def test_bad_weights():
    w = _rand((4, 4))
    w[1, 2] = np.nan
    with pytest.raises(WeightError, match=r"non-finite weight nan at index \(1, 2\)"):
        prune(w, 0.5)
    with pytest.raises(WeightError, match="complex"):
        prune(np.ones((2, 2), np.complex64), 0.5)
    with pytest.raises(WeightError, match="expected a numpy array"):
        prune([[1.0, 2.0]], 0.5)
    with pytest.raises(WeightError, match="no floating-point arrays"):
        prune({"b": np.ones(3, np.float32)}, 0.5)
    with pytest.raises(WeightError, match="non-empty"):
        prune(np.array(1.0, np.float32), 0.5)


def test_exported_from_package():
    assert sparsert.prune is prune


# --------------------------------------------------------------------------- torch objects


@pytest.mark.torch
def test_torch_module_linear_and_conv_weights():
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 16), torch.nn.LayerNorm(16))
    model[0].weight.data *= 10  # global scope must then prune the conv less
    dense = [p.detach().clone() for p in model.parameters()]
    layer = prune(model, 0.9)
    assert layer is not model
    for p, d in zip(model.parameters(), dense):
        assert torch.equal(p, d)  # the input model is untouched
    assert sparsity_of(layer[0].weight) == pytest.approx(round(0.9 * 216) / 216)
    assert sparsity_of(layer[3].weight) == pytest.approx(round(0.9 * 2048) / 2048)
    assert sparsity_of(layer[3].bias) == 0 and sparsity_of(layer[4].weight) == 0
    glob = prune(model, 0.9, scope="global")
    z = sum(int((glob[i].weight == 0).sum()) for i in (0, 3))
    assert z == round(0.9 * (216 + 2048))
    assert sparsity_of(glob[0].weight) < 0.9 < sparsity_of(glob[3].weight)


@pytest.mark.torch
def test_torch_shared_weight_pruned_once_and_tensors_in_dicts():
    import torch
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.weight = a.weight  # tied: one tensor, pruned once to exactly 50%
    pruned = prune(torch.nn.Sequential(a, b), 0.5, scope="global")
    assert pruned[0].weight is pruned[1].weight
    assert int((pruned[0].weight == 0).sum()) == 32
    sd = {"w": torch.randn(8, 8, dtype=torch.bfloat16), "b": torch.randn(8)}
    out = prune(sd, 0.75)
    assert out["w"].dtype == torch.bfloat16 and int((out["w"] == 0).sum()) == 48
    assert out["b"] is sd["b"]
    with pytest.raises(WeightError, match="no nn.Linear or nn.Conv2d"):
        prune(torch.nn.ReLU(), 0.5)


# --------------------------------------------------------------------------- CLI


def test_cli_npy_and_npz(tmp_path, capsys):
    w = _rand((16, 32))
    np.save(tmp_path / "w.npy", w)
    assert cli_main(["prune", str(tmp_path / "w.npy"), "--sparsity", "0.75", "--nm", "2:4",
                     "--out", str(tmp_path / "p.npy")]) == 0
    p = np.load(tmp_path / "p.npy")
    assert _zeros(p) == 384 and (np.count_nonzero(p.reshape(16, -1, 4), axis=2) <= 2).all()
    assert "sparsity 0.7500" in capsys.readouterr().out

    np.savez(tmp_path / "m.npz", fc1=_rand((8, 8), 1, 0.1), fc2=_rand((8, 8), 2, 10.0),
             bias=_rand((8,)))
    assert cli_main(["prune", str(tmp_path / "m.npz"), "--sparsity", "0.5", "--global",
                     "--out", str(tmp_path / "out" / "p.npz")]) == 0
    with np.load(tmp_path / "out" / "p.npz") as z:
        assert _zeros(z["fc1"]) + _zeros(z["fc2"]) == 64 and _zeros(z["fc1"]) > 32
        assert _zeros(z["bias"]) == 0


def test_cli_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"a": _rand((8, 16)), "b": _rand((16,))}, str(tmp_path / "w.safetensors"))
    assert cli_main(["prune", str(tmp_path / "w.safetensors"), "--sparsity", "0.5",
                     "--out", str(tmp_path / "p.safetensors")]) == 0
    out = st.load_file(str(tmp_path / "p.safetensors"))
    assert _zeros(out["a"]) == 64 and _zeros(out["b"]) == 0


@pytest.mark.torch
def test_cli_torch_state_dict(tmp_path):
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert cli_main(["prune", str(tmp_path / "m.pt"), "--sparsity", "0.5",
                     "--out", str(tmp_path / "p.pt")]) == 0
    sd = torch.load(tmp_path / "p.pt", weights_only=True)
    assert int((sd["0.weight"] == 0).sum()) == 64 and int((sd["0.bias"] == 0).sum()) == 0
    model.load_state_dict(sd)  # still a valid state_dict for the same model


def test_cli_errors(tmp_path, capsys):
    np.save(tmp_path / "w.npy", _rand((4, 4)))
    args = ["prune", str(tmp_path / "w.npy"), "--out", str(tmp_path / "o.npy")]
    assert cli_main(args) == 2
    assert "--sparsity" in capsys.readouterr().err
    assert cli_main(args + ["--nm", "3:2"]) == 2
    assert "0 < N < M" in capsys.readouterr().err
    assert cli_main(["prune", str(tmp_path / "nope.npy"), "--sparsity", "0.5", "--out",
                     str(tmp_path / "o.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.savez(tmp_path / "m.npz", a=_rand((4, 4)), b=_rand((4, 4)))
    assert cli_main(["prune", str(tmp_path / "m.npz"), "--sparsity", "0.5", "--out",
                     str(tmp_path / "o.npy")]) == 2
    assert ".npy holds one array" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a fraction outside [0, 1]
        cli_main(args + ["--sparsity", "2"])


@pytest.mark.torch
def test_cli_refuses_pickled_objects(tmp_path, capsys):
    import torch
    torch.save(torch.nn.Linear(4, 4), tmp_path / "model.pt")  # a whole pickled module
    assert cli_main(["prune", str(tmp_path / "model.pt"), "--sparsity", "0.5",
                     "--out", str(tmp_path / "o.pt")]) == 2
    assert "weights_only=True" in capsys.readouterr().err
