"""Building units through the one cache (FlashInfer-style try_load / build / load), in parallel.

A `CachedBuild` is one artifact with its cache key: `load()` returns the cached copy when it
checks out, else takes the key's file lock, looks again (another process may have built it while
we waited) and builds it. `build_units` builds a kernel's units on a thread pool: the compilers
are subprocesses or release the GIL (NVRTC through ctypes), so threads run them in parallel
without pickling schedules across processes. Cache hits are taken first, in order, on the
calling thread: a warm cache starts no pool and renders nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from .artifact import Artifact
from .cache import CacheStore

Progress = Callable[[int, int, Artifact], None]
"""progress(done, total, artifact): called once per unit as it finishes (cached ones included)."""


class CachedBuild:
    def __init__(self, key: str, build: Callable[[], Artifact], cache: CacheStore | None, *, size: int = 0):
        self.key = key
        self._build = build
        self.cache = cache
        self.size = size  # for scheduling: the biggest builds start first

    def try_load(self) -> Artifact | None:
        if self.cache is None:
            return None
        entry = self.cache.get(self.key)
        return None if entry is None else Artifact(binary=entry.payload, info=entry.meta, cached=True)

    def build(self) -> Artifact:
        return self._build()

    def load(self) -> Artifact:
        hit = self.try_load()
        if hit is not None:
            return hit
        if self.cache is None:
            return self.build()
        with self.cache.lock(self.key):
            hit = self.try_load()
            if hit is not None:
                return hit
            artifact = self.build()
            self.cache.put(self.key, artifact.binary, artifact.info)
            return artifact


def build_all(builds: Sequence[CachedBuild], *, jobs: int, progress: Progress | None = None,
              before: Callable[[list[int], int], None] | None = None) -> list[Artifact]:
    """Artifacts in order. `before(todo, workers)` is told which builds missed the cache and how
    many run at once, before any starts (a backend shares its cores among them)."""
    results: list[Artifact | None] = [None] * len(builds)
    todo, done = [], 0
    for i, b in enumerate(builds):
        results[i] = b.try_load()
        if results[i] is None:
            todo.append(i)
            continue
        done += 1
        if progress:
            progress(done, len(builds), results[i])
    workers = max(1, min(jobs, len(todo) or 1))
    if before is not None and todo:
        before(todo, workers)
    if workers == 1:
        for i in todo:
            results[i] = builds[i].load()
            done += 1
            if progress:
                progress(done, len(builds), results[i])
        return [r for r in results if r is not None]
    # Biggest first, so the last worker to finish is not the one holding the giant.
    todo.sort(key=lambda i: -builds[i].size)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(builds[i].load): i for i in todo}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            if progress:
                progress(done, len(builds), results[futures[fut]])
    return [r for r in results if r is not None]
