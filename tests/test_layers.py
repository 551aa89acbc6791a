"""The architecture's guard: imports only run down the layers, no circles, few flat modules.

The layers are listed in tests/import_graph.py (`python tests/import_graph.py` prints the table).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import import_graph
import pytest


def test_no_import_runs_up_the_layers() -> None:
    graph = import_graph.read_graph()
    assert import_graph.upward_imports(graph) == []


def test_no_import_circles() -> None:
    assert import_graph.circles(import_graph.read_graph()) == []


def test_few_modules_sit_flat_in_the_package() -> None:
    flat = import_graph.flat_modules(import_graph.read_graph())
    assert len(flat) <= import_graph.FLAT_LIMIT, flat


def test_every_module_belongs_to_a_layer() -> None:
    graph = import_graph.read_graph()
    for module in graph.modules:
        import_graph.layer_of(module)  # raises for a folder missing from LAYERS


def test_only_the_runtime_imports_llama_cpp() -> None:
    importers = set()
    for path in import_graph.ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "llama_cpp" for name in names):
                importers.add(import_graph.module_name(path).split(".")[1])
    assert importers == {"runtime"}


# The checker itself, on small made-up packages: it must find what it is there to find.

def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / import_graph.PACKAGE
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def test_the_checker_finds_an_upward_import_also_inside_a_function(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "plan/__init__.py": "",
        "plan/planner.py": "def late():\n    from edgellm.serve import app\n",
        "serve/__init__.py": "",
        "serve/app.py": "from edgellm.plan.planner import late\nfrom edgellm import errors\n",
    })
    graph = import_graph.read_graph(package)
    assert import_graph.upward_imports(graph) == [("edgellm.plan.planner", "edgellm.serve.app")]
    assert import_graph.circles(graph) == [["edgellm.plan.planner", "edgellm.serve.app"]]


def test_the_checker_resolves_names_imported_from_a_package(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "__init__.py": "",
        "text/__init__.py": "",
        "text/stops.py": "from edgellm.text import reasoning\n",
        "text/reasoning.py": "X = 1\n",
        "runtime/__init__.py": "",
        "runtime/engine.py": "from edgellm.text.reasoning import X\nfrom edgellm.text import stops as s\n",
    })
    graph = import_graph.read_graph(package)
    assert graph.edges["edgellm.runtime.engine"] == {"edgellm.text.reasoning", "edgellm.text.stops"}
    assert graph.edges["edgellm.text.stops"] == {"edgellm.text.reasoning"}
    assert import_graph.upward_imports(graph) == [] and import_graph.circles(graph) == []
    floors = import_graph.floors(graph)
    assert floors["edgellm.runtime.engine"] == 3 and floors["edgellm.text.reasoning"] == 1


def test_a_folder_outside_the_layers_is_reported(tmp_path: Path) -> None:
    package = write_package(tmp_path, {"__init__.py": "", "misc/__init__.py": ""})
    with pytest.raises(KeyError, match="misc"):
        for module in import_graph.read_graph(package).modules:
            import_graph.layer_of(module)
