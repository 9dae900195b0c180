"""Where the shipped text resources (Jinja templates, the host shim header) live.

They sit in the repository's top-level templates/ folder, installed as the package
`sparsert.templates` (see pyproject.toml), so editable and regular installs find them alike.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path


@lru_cache(maxsize=1)
def template_dir() -> Path:
    return Path(str(files("sparsert.templates")))


def read_text(name: str) -> str:
    return (template_dir() / name).read_text()
