"""The house's arrows point one way: no import cycles, and the core imports nothing from distill or evals.

Imports are read from the source (module level, inside functions and under `if` alike, but not under
`if TYPE_CHECKING:`, which never runs), resolved to the modules of this repository: `from pkg import name`
points at `pkg.name` when that is a module, else at `pkg`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"dd_prompting": ROOT / "dd_prompting", "dd_prompting.distill": ROOT / "distill",
         "dd_prompting.evals": ROOT / "evals"}
UPPER = ("dd_prompting.distill", "dd_prompting.evals")


def _modules() -> dict[str, Path]:
    modules = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:
                    found.add(target)
                elif base in MODULES:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(GRAPH[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    return components


def test_the_graph_is_read():
    assert "dd_prompting.models.engine" in GRAPH["dd_prompting.models.factory"]
    assert "dd_prompting.distill.training.trainer" in GRAPH["dd_prompting.distill.training.provider"]  # in a function


def test_no_import_cycles():
    assert _cycles() == []


def test_the_core_imports_nothing_from_distill_or_evals():
    upward = sorted((name, target) for name, targets in GRAPH.items() if not name.startswith(UPPER)
                    for target in targets if target.startswith(UPPER))
    assert upward == []
