"""Reading and writing named tensors (a state_dict, an .npz, a .safetensors file, an .npy) for
pruning whole models from files. Never unpickles: .pt files go through torch.load(weights_only=True)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import OptionsError, WeightError
from .weights import load_array


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


_ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
_TORCH_SUFFIXES = (".pt", ".pth")


def _load_torch_state(path: Path) -> dict:
    try:
        import torch
    except ImportError as e:
        raise WeightError(f"{path}: reading a .pt state_dict needs PyTorch: pip install torch") from e
    try:
        # weights_only: never unpickle arbitrary objects from a file we did not write.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightError(f"{path}: cannot load as a state_dict with torch.load(weights_only=True) "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); save "
                          f"models with torch.save(model.state_dict(), path)") from e
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightError(f"{path}: expected a state_dict (a flat dict of name -> tensor), got "
                          f"{type(obj).__name__}; save with torch.save(model.state_dict(), path)")
    return dict(obj)


def _load_safetensors(path: Path) -> dict:
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise WeightError(f"{path}: reading .safetensors needs the safetensors package: "
                          f"pip install safetensors") from e
    try:
        with safe_open(str(path), framework="numpy") as f:
            dtypes = {k: f.get_slice(k).get_dtype().upper() for k in f.keys()}
        if "BF16" in dtypes.values():  # numpy has no bfloat16: keep it through torch
            from safetensors.torch import load_file
        else:
            from safetensors.numpy import load_file
        return dict(load_file(str(path)))
    except ImportError as e:
        raise WeightError(f"{path}: holds BF16 tensors, which need PyTorch to keep as BF16: "
                          f"pip install torch") from e
    except Exception as e:
        raise WeightError(f"{path}: cannot read as .safetensors ({type(e).__name__}: {e})") from e


def load_tensors(path: str | Path) -> tuple[dict, bool]:
    """({name: array or tensor}, single) from a weight file or a torch state_dict."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ARRAY_SUFFIXES + _TORCH_SUFFIXES:
        raise WeightError(f"{path}: unsupported suffix {path.suffix!r}; expected one of "
                          f"{', '.join(_ARRAY_SUFFIXES + _TORCH_SUFFIXES)}")
    if not path.is_file():
        raise WeightError(f"{path}: no such file")
    if suffix in _TORCH_SUFFIXES:
        return _load_torch_state(path), False
    if suffix == ".safetensors":
        return _load_safetensors(path), False
    if suffix == ".npy":
        return {"weight": load_array(path)}, True
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
        if {"format", "shape", "data"} <= set(z.files):  # a scipy.sparse matrix
            return {"weight": load_array(path).toarray()}, True
        return {k: z[k] for k in z.files}, False


def _numpy(name: str, x) -> np.ndarray:
    if not _is_torch(x):
        return np.asarray(x)
    import torch

    if x.dtype == torch.bfloat16:
        raise WeightError(f"{name}: bfloat16 cannot be stored in .npy/.npz; write .safetensors or .pt")
    return x.detach().cpu().numpy()


def save_tensors(tensors: dict, path: str | Path) -> None:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ARRAY_SUFFIXES + _TORCH_SUFFIXES:
        raise OptionsError(f"--out {path}: unsupported suffix {path.suffix!r}; expected one of "
                           f"{', '.join(_ARRAY_SUFFIXES + _TORCH_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        if len(tensors) != 1:
            raise OptionsError(f"--out {path}: .npy holds one array but there are {len(tensors)}; "
                               f"write .npz, .safetensors or .pt")
        (name, value), = tensors.items()
        np.save(path, _numpy(name, value))
    elif suffix == ".npz":
        np.savez(path, **{k: _numpy(k, v) for k, v in tensors.items()})
    elif suffix == ".safetensors":
        if any(_is_torch(v) for v in tensors.values()):
            import torch
            from safetensors.torch import save_file

            save_file({k: (v if _is_torch(v) else torch.from_numpy(np.ascontiguousarray(v))).contiguous()
                       for k, v in tensors.items()}, str(path))
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    else:
        import torch

        torch.save({k: v if _is_torch(v) else torch.from_numpy(np.ascontiguousarray(v))
                    for k, v in tensors.items()}, path)
