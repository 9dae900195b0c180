"""Progress on one line of stderr while a kernel compiles."""

from __future__ import annotations

import sys
import threading
import time


class ProgressLine:
    """'compiling: 3/12 slabs (1 cached)' on one line of stderr, for multi-slab compiles; for a
    build estimated to take a while (pipeline.NOTICE_SECONDS), a line saying so first and the
    elapsed time against the estimate every second (a terminal) or 15 seconds (a log)."""

    def __init__(self, what: str = "compiling", stream=sys.stderr):
        self.what, self.stream, self.cached, self.t0 = what, stream, 0, time.perf_counter()
        self.done, self.total, self.estimate = 0, 0, None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _write(self, final: bool) -> None:
        with self._lock:
            end = "\n" if final or not self._tty() else ""
            est = f" of ~{self.estimate:.0f} s estimated" if self.estimate else ""
            count = f"{self.done}/{self.total} slabs" if self.total else "building"
            self.stream.write(f"\r{self.what}: {count} ({self.cached} cached, "
                              f"{time.perf_counter() - self.t0:.1f} s{est}){end}")
            self.stream.flush()

    def notice(self, text: str, seconds: float) -> None:
        """Called once before a long build starts: say so, then tick until it ends."""
        self.estimate = seconds
        with self._lock:
            self.stream.write(f"sparsert: {self.what}: {text}\n")
            self.stream.flush()
        threading.Thread(target=self._tick, daemon=True, name="sparsert-progress").start()

    def _tick(self) -> None:
        every = 1.0 if self._tty() else 15.0
        while not self._stop.wait(every):
            self._write(final=False)

    def close(self) -> None:
        """Stop ticking (the compile ended, or failed)."""
        self._stop.set()

    def __call__(self, done: int, total: int, artifact) -> None:
        self.cached += bool(getattr(artifact, "cached", False))
        self.done, self.total = done, total
        if done == total:
            self._stop.set()
        if total <= 1 and self.estimate is None:
            return
        self._write(final=done == total)
