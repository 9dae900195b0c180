"""Tuning records in the one cache (kind "tune"): keyed by what a result is valid for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import settings
from ..errors import OptionsError
from ..options import KernelOptions
from ..runtime.cache import CacheStore
from .space import SCHEDULE_FIELDS, as_options

FORMAT = 2  # 2: prefetch joined the searched fields


def tune_key(weight_digest: str, opts: KernelOptions, *, bias: bool) -> dict:
    """What a stored tuning is valid for. Pinned schedule fields are part of it: a tuning found
    with vec free is not an answer for a caller who fixed vec=2."""
    # half precision: never a float32 record's answer (float32 keys stay as they were); accumulate
    # None and 'float32' compile the same kernel, so they share a record
    half = ({} if opts.dtype == "float32" and opts.accumulate in (None, "float32") else
            {"dtype": opts.dtype, "accumulate": opts.accumulate or "float32"})
    return {
        "format": FORMAT, "weight": weight_digest, "n": opts.n, "arch": opts.arch,
        "target": opts.target, "relu": opts.relu, "bias": bool(bias), "residual": opts.residual,
        "pinned": {f: getattr(opts, f) for f in SCHEDULE_FIELDS if getattr(opts, f) is not None},
    } | half


def _store() -> CacheStore:
    # Tuning costs minutes of GPU time: kept even where SPARSERT_CACHE=0 turns kernel caching off.
    return CacheStore(settings().cache_dir, "tune")


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def tune_path(key: dict) -> Path:
    """Where the record for `key` lives (the payload file of its cache entry: JSON)."""
    return _store()._paths(_digest(key))[0]


def load_record(key: dict) -> dict | None:
    """The record stored for `key` (the JSON object), or None when absent, unreadable, corrupt or
    written for another key or format."""
    hit = _store().get(_digest(key))
    if hit is None:
        return None
    try:
        entry = json.loads(hit.payload)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    return entry


def load_stored(key: dict, opts: KernelOptions) -> tuple[KernelOptions, dict] | None:
    """The stored best options for `key`, or None when absent, unreadable, corrupt or stale."""
    entry = load_record(key)
    if entry is None:
        return None
    try:
        best = entry["best"]
        params = tuple(best[f] for f in SCHEDULE_FIELDS)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in params):
            return None
        tuned = as_options(opts, params)  # validates (KernelOptions raises OptionsError)
        if any(getattr(opts, f) is not None and getattr(opts, f) != getattr(tuned, f)
               for f in SCHEDULE_FIELDS):
            return None
        return tuned, entry
    except (OSError, ValueError, KeyError, TypeError, OptionsError):
        return None


def store(key: dict, entry: dict) -> Path:
    data = json.dumps({"format": FORMAT, "key": key, **entry}, indent=2, sort_keys=True) + "\n"
    _store().put(_digest(key), data.encode(), {"what": "tuning record"})
    return tune_path(key)
