"""The package's import graph, read from the source: no cycles (imports inside functions count),
imports point one way through the layers, and no `try: import ... except ImportError` hides one
of the package's own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sparsert"

# Lower layers never import higher ones (same layer: allowed, cycles are caught separately).
LAYERS = {
    "version": 0, "errors": 0, "choices": 0, "config": 0, "options": 0, "resources": 0, "check": 0,
    "toolchain": 1, "runtime": 1,
    "ir": 2, "frontend": 2,
    "backends": 3,
    "pipeline": 4, "tune": 4,
    "api": 5,
    "integrations": 6, "cli": 6, "torch": 6, "__init__": 6, "__main__": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def _resolve(module: str, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(sparsert modules imported anywhere in the file but under `if TYPE_CHECKING:`, guarded
    imports of the package's own modules)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text())
    found, guarded = set(), []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.split(".")[0] == "sparsert"]
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            if base.split(".")[0] != "sparsert":
                return []
            out = []
            for a in node.names:  # `from . import x` may import a submodule x
                sub = f"{base}.{a.name}"
                out.append(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() or _is_package(sub) else base)
            return out
        return []

    def walk(node, in_try: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Try):
                catches_import = any(
                    h.type is not None and "ImportError" in ast.unparse(h.type) for h in child.handlers)
                for stmt in child.body:
                    for t in targets(stmt):
                        if catches_import:
                            guarded.append(f"{module}: {t}")
                walk(child, in_try or catches_import)
                continue
            found.update(targets(child))
            walk(child, in_try)

    walk(tree, False)
    return found - {module}, guarded


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph, guarded = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        found, g = _imports(path)
        graph[_module_name(path)] = found
        guarded += g
    # `import sparsert.a.b` also runs sparsert.a's __init__: an edge to every enclosing package,
    # except the importer's own ancestors (always initialised before it, whoever imports it)
    for m, deps in graph.items():
        for d in list(deps):
            parts = d.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts))
                        if ".".join(parts[:i]) in graph and not m.startswith(".".join(parts[:i]) + "."))
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}, guarded


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_top_level_piece_has_a_layer():
    graph, _ = _graph()
    missing = sorted({m.split(".")[1] for m in graph if "." in m} - set(LAYERS))
    assert not missing, f"modules with no layer in this test: {missing}"


def test_no_import_cycles():
    graph, _ = _graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules is not a cycle unless a submodule imports back
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers():
    graph, _ = _graph()
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if _layer(d) > _layer(m) and not d.startswith(m + ".")]
    assert not upward, "imports against the layering (cli -> api -> pipeline -> frontend, ir, " \
                       f"backends -> toolchain, runtime): {upward}"


def test_no_guarded_imports_of_the_package_itself():
    _, guarded = _graph()
    assert not guarded, f"try/except ImportError around sparsert's own modules: {guarded}"


def test_the_test_sees_real_imports():
    """The graph must see both module-level and function-level imports, or it proves nothing."""
    graph, _ = _graph()
    assert "sparsert.pipeline" in graph["sparsert.api"]  # module level
    assert "sparsert.tune" in graph["sparsert.api"]  # inside compile()


@pytest.mark.parametrize("module", ["sparsert.version", "sparsert.errors", "sparsert.choices"])
def test_base_modules_import_nothing_above_them(module):
    graph, _ = _graph()
    assert all(_layer(d) == 0 for d in graph[module]), graph[module]
