"""Content-addressed on-disk cache of compiled kernels (CuPy-style).

An entry is two files under <cache_dir>/kernels/<key[:2]>/: `<key>.bin` (the CUBIN / code object)
and `<key>.json` (metadata with the payload's size and sha256). Both are written to a temp file
and moved into place with os.replace, the metadata last, so a reader sees a whole entry or none.
On load the payload is checked against the metadata; anything that does not check out is a miss
(and is removed), never an exception and never a wrong kernel.
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


class KernelCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "kernels"

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.bin", folder / f"{key}.json"

    def lock(self, key: str) -> filelock.FileLock:
        """Held while compiling `key`, so parallel processes never compile the same kernel twice."""
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(folder / f"{key}.lock"))

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
