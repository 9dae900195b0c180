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

from ..toolchain.process import cancelling, shutdown_pool
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
        return None if entry is None else Artifact(binary=entry.payload, info=entry.meta, cached=True,
                                                   path=self.cache.payload_path(self.key))

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
            return Artifact(binary=artifact.binary, info=artifact.info, path=self.cache.payload_path(self.key))


def build_all(builds: Sequence[CachedBuild], *, jobs: int, progress: Progress | None = None,
              before: Callable[[list[int], int], None] | None = None) -> list[Artifact]:
    """Artifacts in order. `before(todo, workers)` is told which builds missed the cache and how
    many run at once, before any starts (a backend shares its cores among them).

    An interrupt (Ctrl-C, SIGTERM through the CLI) cancels the build: the builds not started are
    dropped, every running tool is killed and no new one starts (toolchain.process.cancel); the
    running builds unwind (removing their temporary folders, writing nothing to the cache) before
    the interrupt propagates."""
    with cancelling():
        return _build_all(builds, jobs=jobs, progress=progress, before=before)


def _build_all(builds, *, jobs, progress, before) -> list[Artifact]:
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
    pool = ThreadPoolExecutor(max_workers=workers)
    failure: BaseException | None = None
    try:
        futures = {pool.submit(builds[i].load): i for i in todo}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            if progress:
                progress(done, len(builds), results[futures[fut]])
    except BaseException as exc:
        failure = exc
        raise
    finally:
        shutdown_pool(pool, failure)
    return [r for r in results if r is not None]
