"""Where the shipped text resources live: the repository's top-level templates/ folder (one
folder per backend inside), installed as the package `sparsert.templates` (pyproject.toml), so
editable and regular installs find them alike. Every template is found through template_dir()."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path


@lru_cache(maxsize=1)
def template_dir() -> Path:
    return Path(str(files("sparsert.templates")))


def read_text(name: str) -> str:
    return (template_dir() / name).read_text()
