"""Magnitude pruning, so users can produce the pruned weights and models the compiler wants.

    w90 = sparsert.prune(w, 0.9)                        # numpy array -> pruned copy
    sd = sparsert.prune({"fc1": w1, "fc2": w2}, 0.9, scope="global")
    model90 = sparsert.prune(model, 0.95, nm="2:4")      # torch module -> pruned deep copy

What gets pruned: a single array or tensor whole; in a dict (a state_dict, an .npz), every
floating-point entry of rank >= 2 (1-D biases and norms are left alone); in a torch module, the
weights of every nn.Linear and nn.Conv2d (a weight shared by several layers is pruned once).
Inputs are never modified: a new array, dict or deep-copied module is returned.

Semantics (all deterministic):
* `sparsity` s zeroes exactly round(s * size) entries of smallest magnitude (per tensor with
  scope="layer", over all tensors together with scope="global"), or more if more were already
  zero. Ties break on position: the earlier entry (row-major; earlier tensor for "global") goes
  first.
* `nm="N:M"` keeps the N largest-magnitude entries of every M consecutive ones along the
  reduction axis (the last axis of the weight viewed as [rows, -1]: Linear in_features,
  Conv2d in_channels*kh*kw); ties keep the earlier entry. With both, N:M is applied first and
  `sparsity` then prunes further among the survivors.

Imports torch only when given a torch object or a .pt file, so the core works without it.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping

import numpy as np

from ..errors import OptionsError, WeightError

SCOPES = ("layer", "global")
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


# --------------------------------------------------------------------------- arguments


def parse_nm(nm) -> tuple[int, int] | None:
    """'2:4' or (2, 4) -> (2, 4); None -> None. N must be in 1..M-1."""
    if nm is None:
        return None
    if isinstance(nm, str):
        match = _NM_RE.match(nm)
        if not match:
            raise OptionsError(f"nm={nm!r}: expected 'N:M' such as '2:4'")
        n, m = int(match[1]), int(match[2])
    elif (isinstance(nm, (tuple, list)) and len(nm) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in nm)):
        n, m = int(nm[0]), int(nm[1])
    else:
        raise OptionsError(f"nm={nm!r}: expected 'N:M' such as '2:4' or a pair (N, M)")
    if not 0 < n < m:
        raise OptionsError(f"nm={n}:{m}: expected 0 < N < M (keep N of every M weights)")
    return n, m


def _check_sparsity(sparsity) -> float | None:
    if sparsity is None:
        return None
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.integer, np.floating)):
        raise OptionsError(f"sparsity={sparsity!r}: expected a number in [0, 1]")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:  # also refuses NaN
        raise OptionsError(f"sparsity={sparsity!r}: expected a fraction in [0, 1] (0.9 = 90% zeros)")
    return s


# --------------------------------------------------------------------------- masks


def _scores(magnitude: np.ndarray, nm: tuple[int, int] | None, name: str) -> np.ndarray:
    """Flat float64 scores: |w|, with entries the N:M rule removes set to -1 (pruned first)."""
    flat = magnitude.reshape(-1)
    if nm is None:
        return flat
    n, m = nm
    rows = magnitude.shape[0] if magnitude.ndim >= 2 else 1
    k = flat.size // rows
    if k % m:
        raise WeightError(f"{name}: reduction size {k} (weight viewed as [{rows}, {k}]) is not a "
                          f"multiple of M={m}; N:M pruning needs whole groups")
    groups = flat.reshape(-1, m)
    # Stable sort of -|w|: the N largest come first, an earlier entry before a later equal one.
    order = np.argsort(-groups, axis=1, kind="stable")
    drop = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(drop, order[:, n:], True, axis=1)
    return np.where(drop, -1.0, groups).reshape(-1)


def _count(sparsity: float | None, size: int) -> int:
    return 0 if sparsity is None else min(size, math.floor(sparsity * size + 0.5))


def _prune_order(scores: np.ndarray, sparsity: float | None) -> np.ndarray:
    """Flat indices to zero: the N:M drops plus the smallest until the target count."""
    k = max(int(np.count_nonzero(scores < 0)), _count(sparsity, scores.size))
    return np.argsort(scores, kind="stable")[:k]  # stable: ties prune the earlier entry first


def masks(magnitudes: list[tuple[str, np.ndarray]], sparsity: float | None, scope: str,
          nm: tuple[int, int] | None) -> list[np.ndarray]:
    """Boolean keep-masks (same shapes) for named float64 magnitude arrays."""
    scores = [_scores(mag, nm, name) for name, mag in magnitudes]
    keep = [np.ones(s.size, dtype=bool) for s in scores]
    if scope == "layer":
        for kp, s in zip(keep, scores):
            kp[_prune_order(s, sparsity)] = False
    else:
        offsets = np.cumsum([0] + [s.size for s in scores])
        drop = _prune_order(np.concatenate(scores), sparsity)
        tensor = np.searchsorted(offsets, drop, side="right") - 1
        for t, kp in enumerate(keep):
            kp[drop[tensor == t] - offsets[t]] = False
    return [kp.reshape(mag.shape) for kp, (_, mag) in zip(keep, magnitudes)]


# --------------------------------------------------------------------------- objects


def _torch_kind(x) -> str:
    """'tensor', 'module' or '' (torch is only imported by callers that pass torch objects)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    if isinstance(x, torch.Tensor):
        return "tensor"
    return "module" if isinstance(x, torch.nn.Module) else ""


def _is_torch(x) -> bool:
    return _torch_kind(x) == "tensor"


def _magnitude(x, name: str) -> np.ndarray:
    """|x| as float64 numpy (exact for every float format), refusing NaN/Inf."""
    if _is_torch(x):
        import torch

        if x.is_complex() or x.dtype == torch.bool:
            raise WeightError(f"{name}: dtype {x.dtype}; expected real numbers")
        a = x.detach().to("cpu", torch.float64).numpy()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "iuf":
            raise WeightError(f"{name}: dtype {a.dtype}; expected real numbers (float or int)")
        a = a.astype(np.float64)
    if a.ndim == 0 or a.size == 0:
        raise WeightError(f"{name}: shape {tuple(a.shape)}; expected a non-empty array")
    bad = ~np.isfinite(a)
    if bad.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))
        raise WeightError(f"{name}: non-finite weight {a[index]} at index {index}; weights must be finite")
    return np.abs(a)


def _apply(x, keep: np.ndarray):
    if _is_torch(x):
        import torch

        return x.detach().masked_fill(~torch.from_numpy(keep).to(x.device), 0)
    out = np.array(x, copy=True)
    out[~keep] = 0
    return out


def _prunable_entry(x) -> bool:
    if _is_torch(x):
        return x.is_floating_point() and x.dim() >= 2
    return isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim >= 2


def _module_weights(model) -> list[tuple[str, object]]:
    """(name, Parameter) of each nn.Linear / nn.Conv2d weight, once per distinct tensor."""
    import torch.nn as nn

    seen, out = set(), []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and isinstance(mod.weight, nn.Parameter):
            if id(mod.weight) not in seen:
                seen.add(id(mod.weight))
                out.append((f"{name}.weight" if name else "weight", mod.weight))
    return out


def prune(weights_or_model, sparsity: float | None = None, *, scope: str = "layer", nm=None):
    """Magnitude-prune an array, a tensor, a dict of them, or a torch module (see module doc).

    Returns an object of the same kind; the input is left unchanged.
    """
    s = _check_sparsity(sparsity)
    nm_ = parse_nm(nm)
    if s is None and nm_ is None:
        raise OptionsError("prune: give sparsity= (e.g. 0.9) and/or nm= (e.g. '2:4')")
    if scope not in SCOPES:
        raise OptionsError(f"scope={scope!r}: expected one of {', '.join(map(repr, SCOPES))}")
    x = weights_or_model

    if _torch_kind(x) == "module":
        import copy

        import torch

        model = copy.deepcopy(x)
        params = _module_weights(model)
        if not params:
            raise WeightError(f"prune: {type(x).__name__} has no nn.Linear or nn.Conv2d weights to prune")
        keep = masks([(n, _magnitude(p, n)) for n, p in params], s, scope, nm_)
        with torch.no_grad():
            for (_, p), kp in zip(params, keep):
                p.masked_fill_(~torch.from_numpy(kp).to(p.device), 0)
        return model

    if isinstance(x, Mapping):
        names = [k for k, v in x.items() if _prunable_entry(v)]
        if not names:
            raise WeightError("prune: the dict holds no floating-point arrays of rank >= 2 to prune")
        keep = masks([(str(k), _magnitude(x[k], str(k))) for k in names], s, scope, nm_)
        pruned = dict(zip(names, (_apply(x[k], kp) for k, kp in zip(names, keep))))
        return {k: pruned.get(k, v) for k, v in x.items()}

    if isinstance(x, np.ndarray) or _is_torch(x):
        return _apply(x, masks([("weight", _magnitude(x, "weight"))], s, scope, nm_)[0])
    raise WeightError(f"prune: expected a numpy array, a torch tensor, a dict of them or a torch "
                      f"module, got {type(x).__module__}.{type(x).__qualname__}")


def sparsity_of(x) -> float:
    """Fraction of exact zeros in an array or tensor."""
    a = x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)
    return 1.0 - np.count_nonzero(a) / a.size if a.size else 0.0
