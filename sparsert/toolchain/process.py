"""One way to run a tool (ptxas, nvlink, hipcc, g++, as, ld, nvdisasm): timeouts, interrupts, log
heads, error mapping, and one result type for every binding.

Each tool runs in a session (process group) of its own, so a Ctrl-C in the terminal reaches only
sparsert; when sparsert is interrupted (KeyboardInterrupt, or SIGTERM turned into SystemExit by
the CLI) every live tool's whole group is killed, not only the direct child. `kill_all()` does
the same from a signal handler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from ..errors import CompileError, ToolchainError

LOG_HEAD_LINES = 40

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


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


def run(cmd: list[str], *, name: str, what: str, timeout: float, cwd: str | None = None,
        env: dict | None = None) -> Completed:
    """Run `cmd`, capturing text output. Raises ToolchainError (naming `name` and `what`) when it
    cannot start or runs past `timeout` seconds; the caller maps a non-zero exit itself."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", cwd=cwd, env=env, start_new_session=True)
    except OSError as exc:
        raise ToolchainError(f"{name}: cannot run {cmd[0]}: {exc}") from None
    with _live_lock:
        _live.add(proc)
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
    return Completed(proc.returncode, stdout, stderr, time.perf_counter() - t0)


def check(done: Completed, *, name: str, what: str, log: str | None = None, tail: bool = False) -> None:
    """CompileError with the log's head (or tail) when the tool exited non-zero."""
    if done.returncode != 0:
        text = log if log is not None else done.stdout + done.stderr
        shown = log_tail(text) if tail else log_head(text)
        raise CompileError(f"{name}: {what} failed (exit {done.returncode})\n{shown}")
