"""Progress on one line of stderr while a kernel of several slabs compiles."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """'compiling: 3/12 slabs (1 cached)' on one line of stderr, for multi-slab compiles."""

    def __init__(self, what: str = "compiling", stream=sys.stderr):
        self.what, self.stream, self.cached, self.t0 = what, stream, 0, time.perf_counter()

    def __call__(self, done: int, total: int, artifact) -> None:
        self.cached += bool(getattr(artifact, "cached", False))
        if total <= 1:
            return
        end = "\n" if done == total or not self.stream.isatty() else ""
        self.stream.write(f"\r{self.what}: {done}/{total} slabs ({self.cached} cached, "
                          f"{time.perf_counter() - self.t0:.1f} s){end}")
        self.stream.flush()
