"""Writing a kernel's files: the output folder checked before anything is compiled, and every
file written to a temporary folder beside its target and moved into place (the summary .json
last), so a failure leaves either the previous files or the new ones, never a half-written set.
Every failure is an InputError naming the path and what is wrong, not a raw OSError."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_out_dir(path, *, what: str = "--out") -> Path:
    """`path` as a folder sparsert can write into (created if missing), or InputError naming
    `what` and the reason: a file, below a file, not writable."""
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"is below {parent}, which is a file"
            raise InputError(f"{what} {out}: {where}; expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {out}: cannot create the folder ({_why(exc)})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".sparsert-probe-")
    except OSError as exc:
        raise InputError(f"{what} {out}: cannot write into the folder ({_why(exc)})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return out


def write_files(out_dir, files: Sequence[tuple[str, bytes]], *, what: str = "save") -> dict[str, Path]:
    """Write (name, data) pairs into `out_dir`, in order, each moved into place from a temporary
    folder in `out_dir` only after all were written (the last one, the summary, moved last)."""
    out = check_out_dir(out_dir, what=what)
    for name, _ in files:
        target = out / name
        if target.is_dir():
            raise InputError(f"{what}: {target} is a folder; expected to write a file there")
    try:
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".sparsert-save-"))
    except OSError as exc:
        raise InputError(f"{what} {out}: cannot write into the folder ({_why(exc)})") from None
    try:
        staged = []
        for name, data in files:
            path = tmp / name
            try:
                path.write_bytes(data)
            except OSError as exc:
                raise InputError(f"{what}: cannot write {out / name} ({_why(exc)})") from None
            staged.append((path, out / name))
        written = {}
        for src, dst in staged:
            try:
                os.replace(src, dst)
            except OSError as exc:
                raise InputError(f"{what}: cannot write {dst} ({_why(exc)})") from None
            written[dst.name] = dst
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
