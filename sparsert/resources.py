"""Where the shipped text resources live: the repository's top-level templates/ folder (one
folder per backend inside), installed as the package `sparsert.templates` (pyproject.toml), so
editable and regular installs find them alike. Every template is found through template_dir().
Run from a source tree that is not installed (PYTHONPATH=<checkout>, as on a GPU machine that gets
the checkout alone), `sparsert.templates` does not exist: the checkout's templates/ folder is used."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

_SOURCE_TREE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def template_dir() -> Path:
    if find_spec("sparsert.templates") is not None:  # installed (editable or regular)
        return Path(str(files("sparsert.templates")))
    if (_SOURCE_TREE_TEMPLATES / "cuda").is_dir():  # the source tree, not installed
        return _SOURCE_TREE_TEMPLATES
    raise FileNotFoundError(f"sparsert's templates not found: `sparsert.templates` is not installed "
                            f"and {_SOURCE_TREE_TEMPLATES} is missing (pip install -e . from the checkout)")


def read_text(name: str) -> str:
    return (template_dir() / name).read_text()
