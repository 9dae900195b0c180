"""What a backend hands the runtime: compiled units (launch geometry, source when there is one)
and their built artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Unit:
    """One compiled unit (a slab: one launch): its source (when the backend compiles source; ''
    when it builds from the schedule itself) and how to launch it."""

    index: int
    kernel_name: str
    source: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    first_block: int
    nnz: int


@dataclass(frozen=True)
class Artifact:
    binary: bytes
    info: dict = field(hash=False)
    cached: bool = False
    path: Path | None = field(default=None, hash=False, compare=False)
    """The verified cache file holding `binary`, for what must be loaded from a file (a shared
    object through ctypes); None when it did not go through the cache."""
