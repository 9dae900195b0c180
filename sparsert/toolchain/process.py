"""One way to run a tool (ptxas, nvlink, hipcc, g++, as, ld, nvdisasm): timeouts, interrupts, log
heads, error mapping, and one result type for every binding.

Each tool runs in a session (process group) of its own, so a Ctrl-C in the terminal reaches only
sparsert; when sparsert is interrupted (KeyboardInterrupt, or SIGTERM turned into SystemExit by
the CLI) every live tool's whole group is killed, not only the direct child. `kill_all()` does
the same from a signal handler.

`cancel()` kills every live tool and sets a process-wide flag that makes `run` refuse to start
another one (raising `Cancelled`), so a pool of builds stops within the time one tool takes to
die rather than working through its queue; `cancelling()` is the scope that clears it again once
the build that was interrupted has wound down (so a later compile in the same process works).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import CompileError, ToolchainError

LOG_HEAD_LINES = 40

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_cancelled = threading.Event()


class Cancelled(ToolchainError):
    """A tool was not started (or was killed) because the build was interrupted."""


@dataclass(frozen=True)
class ToolResult:
    """What every tool binding returns: the output artifact (CUBIN, object, code object, shared
    object), the tool's log, and what it reported about registers and spills where it does."""

    output: bytes
    log: str
    seconds: float
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    text: str | None = None
    """An intermediate text the tool can also hand back (NVRTC: the PTX, when asked for)."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def log_head(log: str, lines: int = LOG_HEAD_LINES) -> str:
    parts = log.splitlines()
    more = f"\n... ({len(parts) - lines} more log lines)" if len(parts) > lines else ""
    return "\n".join(parts[:lines]) + more


def log_tail(log: str, lines: int = LOG_HEAD_LINES) -> str:
    return "\n".join(log.splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def kill_all() -> None:
    """Kill every tool sparsert is running (and their children)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill_group(proc)


def cancel() -> None:
    """Interrupt the build: no new tool starts (`run` raises Cancelled), every live one is killed."""
    _cancelled.set()
    kill_all()


def cancelled() -> bool:
    return _cancelled.is_set()


@contextmanager
def cancelling() -> Iterator[None]:
    """Scope of one top-level build: an interrupt (KeyboardInterrupt, SystemExit) inside it
    cancels every tool (see `cancel`); the flag is cleared when the scope is left with nothing
    else building, so the next build in this process runs (nested and concurrent scopes: the last
    one left clears it)."""
    global _depth
    with _depth_lock:
        _depth += 1
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, Exception):
            cancel()
        raise
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                _cancelled.clear()


_depth = 0
_depth_lock = threading.Lock()


def shutdown_pool(pool, exc: BaseException | None) -> None:
    """Leave a ThreadPoolExecutor: on an interrupt cancel every tool first; on any exception drop
    the work not yet started; then wait for the running work (it ends within a tool's death, and
    its temporary folders are removed as it unwinds)."""
    if exc is not None and not isinstance(exc, Exception):
        cancel()
    pool.shutdown(wait=True, cancel_futures=exc is not None)


def spawn(cmd: list[str], *, name: str, cwd: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start a tool in its own process group, registered so that an interrupt kills it; finish
    it with collect(). For tools that run side by side while the caller prepares the next one."""
    if _cancelled.is_set():
        raise Cancelled(f"{name}: not started: interrupted")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", cwd=cwd, env=env, start_new_session=True)
    except OSError as exc:
        raise ToolchainError(f"{name}: cannot run {cmd[0]}: {exc}") from None
    with _live_lock:
        _live.add(proc)
    if _cancelled.is_set():  # cancel() ran between the check and the registration
        _kill_group(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Kill a spawned tool that is still running (its whole group) and reap it."""
    if proc.poll() is None:
        _kill_group(proc)
        proc.communicate()
    with _live_lock:
        _live.discard(proc)


def collect(proc: subprocess.Popen, *, name: str, what: str, timeout: float, started: float) -> Completed:
    """Wait for a spawned tool (killing its group on timeout or interrupt)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise ToolchainError(f"{name}: {what} timed out after {timeout:g} s") from None
    except BaseException:  # KeyboardInterrupt, SystemExit: take the whole tool down with us
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
    if _cancelled.is_set():
        raise Cancelled(f"{name}: {what} killed: interrupted")
    return Completed(proc.returncode, stdout, stderr, time.perf_counter() - started)


def run(cmd: list[str], *, name: str, what: str, timeout: float, cwd: str | None = None,
        env: dict | None = None, tmpdir: str | None = None) -> Completed:
    """Run `cmd`, capturing text output. Raises ToolchainError (naming `name` and `what`) when it
    cannot start or runs past `timeout` seconds, Cancelled when the build is being interrupted;
    the caller maps a non-zero exit itself. `tmpdir`: the tool's TMPDIR (a folder the caller
    removes, so a killed tool leaves no scratch files behind)."""
    if _cancelled.is_set():
        raise Cancelled(f"{name}: {what} not started: interrupted")
    if tmpdir is not None:  # the tool's own scratch files (ptxas's tmpxft_*, g++'s cc*.s) go
        env = {**(os.environ if env is None else env), "TMPDIR": tmpdir}  # where the caller removes them
    t0 = time.perf_counter()
    return collect(spawn(cmd, name=name, cwd=cwd, env=env), name=name, what=what, timeout=timeout, started=t0)


def check(done: Completed, *, name: str, what: str, log: str | None = None, tail: bool = False) -> None:
    """CompileError with the log's head (or tail) when the tool exited non-zero."""
    if done.returncode != 0:
        text = log if log is not None else done.stdout + done.stderr
        shown = log_tail(text) if tail else log_head(text)
        raise CompileError(f"{name}: {what} failed (exit {done.returncode})\n{shown}")
