"""The package's layering, checked on its source: which folder may import which, no private
names across modules, no import cycles at import time (issue 23)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "admmprune"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a relative ``from ... import`` names."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports() -> list[tuple[str, str, list[str], bool]]:
    """(importing module, imported module, names imported, at import time) for every
    import of an admmprune module inside the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: parent for parent in ast.walk(tree)
                   for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, _is_package(path), node.level, node.module)
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("admmprune"):
                        found.append((module, alias.name, [], _top_level(node, parents)))
                continue
            else:
                continue
            if not target.startswith("admmprune"):
                continue
            top = _top_level(node, parents) and not _under_type_checking(node, parents)
            found.append((module, target, names, top))
    return found


def _top_level(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Runs when the module is imported: not inside a function."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return False
    return True


IMPORTS = _imports()
MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    if module == "admmprune.__main__":  # `python -m admmprune` is the command line
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("runs", "cli", "integrations") \
        else "library"


def test_the_walk_sees_the_package():
    assert "admmprune.runs.pipeline" in MODULES and "admmprune.cli" in MODULES
    assert any(m == "admmprune.runs.pipeline" and t == "admmprune.pruner" for m, t, _, _ in
               IMPORTS)


@pytest.mark.parametrize("layer, forbidden", [
    ("library", ("runs", "cli", "integrations")),  # the library a training loop uses
    ("runs", ("cli",)),                             # the job runner
    ("integrations", ("cli",)),                     # trainer callbacks
])
def test_a_layer_imports_only_the_layers_below_it(layer, forbidden):
    bad = [(m, t) for m, t, _, _ in IMPORTS
           if _layer(m) == layer and _layer(t) in forbidden]
    assert not bad, f"{layer} imports {forbidden}: {bad}"


def test_export_never_reads_a_run_directory():
    bad = [(m, t) for m, t, _, _ in IMPORTS
           if m.startswith("admmprune.export") and t.startswith(("admmprune.runs",
                                                                   "admmprune.cli"))]
    assert not bad, bad


def test_no_module_imports_a_private_name_of_another():
    bad = [(m, t, n) for m, t, names, _ in IMPORTS for n in names
           if n.startswith("_") and not n.startswith("__") and t != m]
    assert not bad, bad


def test_no_import_cycle_at_import_time():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, target, names, top in IMPORTS:
        if not top:
            continue
        # `from admmprune.data import mnist` imports the submodule admmprune.data.mnist
        targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES] or [target]
        for t in targets:
            if t in MODULES and t != module:
                graph[module].add(t)
    # a package's __init__ importing its own submodules is not a cycle between modules
    def edges(m):
        return {t for t in graph[m] if not (t.startswith(m + ".") or m.startswith(t + "."))}

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t):] + [m, t] if t in path else [m, t])
                return True
            if t not in state and visit(t, path + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)
