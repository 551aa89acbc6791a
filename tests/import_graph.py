"""edgellm's import graph read from its source with ast: modules, edges, circles and floors.

Every import counts, also the lazy ones inside functions and those under TYPE_CHECKING: a lazy
import is still a dependency, only a later one. Used by tests/test_layers.py; run it to print the
layer table, the circles and the ten longest functions:

    python tests/import_graph.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "edgellm"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


# The layers, lowest first: a module may import its own layer's modules and any layer below.
LAYERS: list[tuple[str, ...]] = [
    ("", "errors", "units", "paths", "files"),  # ground ("" is the package itself: its version)
    ("device", "store", "text"),
    ("plan",),
    ("runtime",),  # the only package that imports llama_cpp
    ("loader",),
    ("bench", "serve", "ui", "worker"),
    ("cli",),
    ("__main__",),
]
FLAT_LIMIT = 5  # modules directly in edgellm/, beside __init__ and __main__


@dataclass
class Graph:
    modules: dict[str, Path]  # dotted name -> file
    edges: dict[str, set[str]] = field(default_factory=dict)  # importer -> imported (edgellm modules only)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import names: itself, or the nearest package above a name inside a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def read_graph(root: Path = ROOT) -> Graph:
    modules = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = Graph(modules, {name: set() for name in modules})
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from edgellm.runtime import batch` imports the module batch, not only the package.
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                if target.split(".")[0] != PACKAGE:
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    graph.edges[name].add(resolved)
    return graph


def layer_of(module: str) -> int:
    """The rank of the layer a module belongs to (by its first name under edgellm)."""
    first = module.removeprefix(PACKAGE).lstrip(".").split(".")[0]
    for rank, names in enumerate(LAYERS):
        if first in names:
            return rank
    raise KeyError(f"{module} is in no layer: add its folder to LAYERS in {Path(__file__).name}")


def upward_imports(graph: Graph) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    return sorted((importer, imported) for importer, targets in graph.edges.items() for imported in targets
                  if layer_of(imported) > layer_of(importer))


def flat_modules(graph: Graph) -> list[str]:
    return sorted(name for name, path in graph.modules.items()
                  if name.count(".") == 1 and path.name not in ("__init__.py", "__main__.py"))


def circles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (the grammar checker's Tarjan)."""
    from edgellm.text.grammar import strongly_connected

    groups: dict[str, list[str]] = {}
    for module, root in strongly_connected({name: sorted(graph.edges[name]) for name in graph.modules}).items():
        groups.setdefault(root, []).append(module)
    return sorted(sorted(members) for members in groups.values() if len(members) > 1)


def floors(graph: Graph) -> dict[str, int]:
    """Each module's floor: 1 + the highest floor it imports (modules of one circle share a floor)."""
    component_of: dict[str, str] = {}
    for component in circles(graph):
        for member in component:
            component_of[member] = component[0]
    floor: dict[str, int] = {}

    def visit(name: str, seen: frozenset[str]) -> int:
        if name in floor:
            return floor[name]
        key = component_of.get(name, name)
        below = [child for member in graph.modules if component_of.get(member, member) == key
                 for child in graph.edges[member] if component_of.get(child, child) != key]
        value = 1 + max((visit(child, seen | {key}) for child in below), default=0)
        for member in graph.modules:
            if component_of.get(member, member) == key:
                floor[member] = value
        return value

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in graph.modules:
        visit(name, frozenset())
    return floor


def longest_functions(root: Path = ROOT, count: int = 10) -> list[tuple[int, str]]:
    """The longest functions and classes by lines, as (lines, module:qualified name)."""
    sizes: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))

        def walk(node: ast.AST, prefix: str, module: str = module_name(path)) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    assert child.end_lineno is not None
                    sizes.append((child.end_lineno - child.lineno + 1, f"{module}:{name}"))
                    walk(child, f"{name}.")

        walk(tree, "")
    return sorted(sizes, reverse=True)[:count]


def _safe_layer(module: str) -> int | None:
    try:
        return layer_of(module)
    except KeyError:
        return None


def upward_imports_or_unknown(graph: Graph) -> list[tuple[str, str]]:
    """As upward_imports, but a module outside every layer counts as running up (for printing)."""
    found = []
    for importer, targets in graph.edges.items():
        for imported in targets:
            low, high = _safe_layer(importer), _safe_layer(imported)
            if low is None or high is None or high > low:
                found.append((importer, imported))
    return sorted(found)


def main() -> None:
    graph = read_graph()
    floor = floors(graph)
    flat = flat_modules(graph)
    print(f"{len(graph.modules)} modules, {len(flat)} flat in {PACKAGE}/ (beside __init__, __main__), {max(floor.values())} floors")
    print("layers, lowest first:")
    for rank, names in enumerate(LAYERS):
        members = sorted(n.removeprefix(PACKAGE + ".") for n in graph.modules if _safe_layer(n) == rank)
        print(f"  {rank}: {' '.join(names) or '-'}: {len(members)} modules")
    up = upward_imports_or_unknown(graph)
    print(f"{len(up)} imports running up")
    for importer, imported in up:
        print(f"  {importer} -> {imported}")
    for level in range(max(floor.values()), 0, -1):
        print(f"  floor {level:2}: {', '.join(sorted(n.removeprefix(PACKAGE + '.') for n, f in floor.items() if f == level))}")
    found = circles(graph)
    print(f"{len(found)} circles")
    for component in found:
        print("  " + " <-> ".join(component))
    print("ten longest functions and classes (lines):")
    for lines, name in longest_functions():
        print(f"  {lines:4}  {name}")


if __name__ == "__main__":
    main()
