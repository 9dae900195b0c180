"""The one content-addressed on-disk cache (CuPy-style) for every artifact sparsert builds:
kernels (CUBINs, code objects), shared objects of the host checker and the CPU target, tuning
records.

An entry is two files under <cache_dir>/<kind>/<key[:2]>/: `<key>.bin` (the payload) and
`<key>.json` (metadata with the payload's size and sha256). Both are written to a temp file and
moved into place with os.replace, the metadata last, so a reader sees a whole entry or none.
On load the payload is checked against the metadata; anything that does not check out is a miss
(and is removed), never an exception and never a wrong artifact. `path()` hands out the verified
payload file itself, for what must be loaded from a file (ctypes.CDLL of a shared object).
A file lock per key (`lock()`) is held while building it, so parallel processes build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import filelock

FORMAT = 1  # bump when the entry layout changes


@dataclass(frozen=True)
class Entry:
    payload: bytes
    meta: dict


def cache_key(**parts) -> str:
    """sha256 over named parts (source, options, arch, compiler versions, sparsert version...)."""
    h = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


KINDS = ("kernels", "host", "cpu", "tune")


class CacheStore:
    def __init__(self, root: Path, kind: str = "kernels"):
        if kind not in KINDS:
            raise ValueError(f"cache kind {kind!r}: expected one of {KINDS}")
        self.kind = kind
        self.root = Path(root) / kind

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.bin", folder / f"{key}.json"

    def lock(self, key: str) -> filelock.FileLock:
        """Held while building `key`, so parallel processes never build the same artifact twice."""
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(folder / f"{key}.lock"))

    def payload_path(self, key: str) -> Path:
        """Where `key`'s payload lives (not checked: get() or path() check it)."""
        return self._paths(key)[0]

    def path(self, key: str) -> Path | None:
        """The payload file of a verified entry (None: absent or corrupt, and removed). Entries
        are never rewritten in place (os.replace), so the verified file stays what it was."""
        return self._paths(key)[0] if self.get(key) is not None else None

    def get(self, key: str) -> Entry | None:
        payload_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            payload = payload_path.read_bytes()
        except (OSError, ValueError):
            return None
        ok = (
            isinstance(meta, dict)
            and meta.get("format") == FORMAT
            and meta.get("key") == key
            and meta.get("size") == len(payload)
            and meta.get("sha256") == hashlib.sha256(payload).hexdigest()
        )
        if not ok:
            self.remove(key)
            return None
        return Entry(payload=payload, meta=meta.get("info", {}))

    def put(self, key: str, payload: bytes, info: dict) -> None:
        payload_path, meta_path = self._paths(key)
        meta = {
            "format": FORMAT, "key": key, "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(), "info": info,
        }
        _atomic_write(payload_path, payload)
        _atomic_write(meta_path, json.dumps(meta, sort_keys=True).encode())

    def remove(self, key: str) -> None:
        for path in self._paths(key):
            with contextlib.suppress(OSError):
                path.unlink()


def store(kind: str = "kernels") -> CacheStore | None:
    """The store of `kind` under SPARSERT_CACHE_DIR, or None when SPARSERT_CACHE=0."""
    from ..config import settings

    s = settings()
    return CacheStore(s.cache_dir, kind) if s.cache_enabled else None
