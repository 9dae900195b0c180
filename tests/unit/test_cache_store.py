"""The one cache store (pure Python): layout <root>/<kind>/<key[:2]>/<key>.bin/.json, verified
reads, atomic writes, per-key locks, kinds, and the configured store."""

from __future__ import annotations

import json

import pytest

from sparsert.runtime.cache import KINDS, CacheStore, cache_key, store


def test_put_get_path_and_layout(tmp_path):
    cache = CacheStore(tmp_path, kind="kernels")
    key = cache_key(source="x", arch="sm_80")
    assert cache.get(key) is None and cache.path(key) is None
    cache.put(key, b"payload", {"registers": 32})
    entry = cache.get(key)
    assert entry.payload == b"payload" and entry.meta == {"registers": 32}
    assert cache.path(key) == tmp_path / "kernels" / key[:2] / f"{key}.bin"
    meta = json.loads((tmp_path / "kernels" / key[:2] / f"{key}.json").read_text())
    assert meta["key"] == key and meta["size"] == len(b"payload")
    assert not list(tmp_path.rglob("*.tmp"))
    cache.remove(key)
    assert cache.get(key) is None


def test_corrupt_payload_is_a_miss_and_is_removed(tmp_path):
    cache = CacheStore(tmp_path, kind="host")
    key = cache_key(a=1)
    cache.put(key, b"abc", {})
    path = cache.path(key)
    path.write_bytes(b"abd")
    assert cache.get(key) is None and not path.exists()


def test_kinds_are_separate_and_checked(tmp_path):
    key = cache_key(a=2)
    CacheStore(tmp_path, kind="tune").put(key, b"{}", {})
    assert CacheStore(tmp_path, kind="kernels").get(key) is None
    assert set(KINDS) >= {"kernels", "host", "tune"}
    with pytest.raises(ValueError):
        CacheStore(tmp_path, kind="nope")


def test_lock_is_per_key(tmp_path):
    cache = CacheStore(tmp_path)
    a, b = cache_key(a=1), cache_key(a=2)
    with cache.lock(a):
        with cache.lock(b):  # another key: not blocked
            pass
        assert cache.lock(a).lock_file != cache.lock(b).lock_file


def test_configured_store(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSERT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSERT_CACHE", raising=False)
    s = store("kernels")
    assert isinstance(s, CacheStore) and s.root == tmp_path / "kernels"
    monkeypatch.setenv("SPARSERT_CACHE", "0")
    assert store("kernels") is None


def test_key_depends_on_every_part_and_not_on_order():
    assert cache_key(a=1, b=2) == cache_key(b=2, a=1)
    assert cache_key(a=1, b=2) != cache_key(a=1, b=3)
    assert cache_key(a=b"x") != cache_key(a="x")
