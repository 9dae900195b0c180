"""GNU binutils: `as` assembles emitted x86 text, `ld -shared` links the objects into one shared
object. No C compiler ever sees the unrolled code (gcc on unrolled C costs 190-1900 us per
nonzero and grows superlinearly; `as` costs 2-8 us).

Big kernels come as several parts assembled side by side: `as` is single-threaded and most of
the compile time, and each part starts as soon as its text exists, so emitting the next part
overlaps assembling this one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from ..errors import CompileError, ToolchainError
from .process import ToolResult, collect, log_head, run, spawn, stop

_TIMEOUT_S = 600
_HINT = "install GNU binutils (Debian: apt-get install binutils)"


@lru_cache(maxsize=1)
def versions() -> str:
    """'GNU assembler ... ; GNU ld ...': a cache-key part of every CPU kernel."""
    out = []
    for tool in ("as", "ld"):
        done = run([tool, "--version"], name=tool, what="--version", timeout=60)
        if done.returncode != 0 or not done.stdout.strip():
            raise ToolchainError(f"`{tool} --version` failed (exit {done.returncode}); {_HINT}")
        out.append(done.stdout.splitlines()[0].strip())
    return "; ".join(out)


def available() -> str | None:
    """None when `as` and `ld` run here, else one line saying what is missing."""
    try:
        versions()
    except ToolchainError as exc:
        return str(exc).splitlines()[0]
    return None


def assemble_and_link(sources: Iterable[str], *, name: str, timeout: float = _TIMEOUT_S) -> ToolResult:
    """Assemble each source text (`as --64`), link them (`ld -shared`), return the .so bytes."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsert-as-") as tmp:
        d = Path(tmp)
        procs = []
        try:
            for i, text in enumerate(sources):
                src = d / f"part{i}.s"
                src.write_text(text)
                procs.append((i, time.perf_counter(), spawn(["as", "--64", "-o", str(d / f"part{i}.o"), str(src)],
                                                            name=f"{name} part {i}")))
            logs = []
            for i, started, proc in procs:
                done = collect(proc, name=f"{name} part {i}", what="as", timeout=timeout, started=started)
                logs.append(done.stderr)
                if done.returncode != 0:
                    raise CompileError(f"{name}: as rejected part {i} (exit {done.returncode})\n"
                                       f"{log_head(done.stderr or done.stdout)}")
        finally:  # an error or an interrupt: no assembler left running
            for _, _, proc in procs:
                stop(proc)
        out = d / "kernel.so"
        done = run(["ld", "-shared", "-z", "noexecstack", "--hash-style=gnu", "-o", str(out)]
                   + [str(d / f"part{i}.o") for i, _, _ in procs], name=name, what="ld -shared", timeout=timeout)
        if done.returncode != 0 or not out.is_file():
            raise CompileError(f"{name}: ld -shared failed (exit {done.returncode})\n"
                               f"{log_head(done.stderr or done.stdout)}")
        return ToolResult(output=out.read_bytes(), log="".join(logs) + done.stderr,
                          seconds=time.perf_counter() - t0)
