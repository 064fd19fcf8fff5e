"""No import cycle anywhere in linmaml: every module's imports (top level and inside functions, read
with ast) form a graph without cycles. The detector is checked on a synthetic package with a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import linmaml

PACKAGE = Path(linmaml.__file__).parent


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (``import a.b``, ``from a import b`` where b may be
    a module or a name, relative imports), anywhere in the file. Importing ``a.b.c`` also runs
    ``a`` and ``a.b``; those package edges are left out, since a package importing its own submodules
    is the usual layout and not a cycle of the code's design."""
    top = root.name
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == top and target != name and not name.startswith(target + "."):
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None (iterative depth-first search)."""
    colour = {node: 0 for node in graph}  # 0 new, 1 on the current path, 2 done
    for root in sorted(graph):
        if colour[root]:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        colour[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(child, 2) == 1:
                return path[path.index(child):] + [child]
            elif colour.get(child, 2) == 0:
                colour[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def test_linmaml_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "linmaml.benchmarks.train" in graph["linmaml.cli.train"]  # imported inside run()
    assert "linmaml.meta.engine" in graph["linmaml.benchmarks.config"]  # the walk sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_train_and_evaluate_do_not_import_each_other():
    graph = import_graph(PACKAGE)
    assert "linmaml.benchmarks.evaluate" not in graph["linmaml.benchmarks.train"]
    assert "linmaml.benchmarks.train" not in graph["linmaml.benchmarks.evaluate"]


def test_the_detector_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("def late():\n    from ..a import thing\n")
    graph = import_graph(pkg)
    assert graph["toy.a"] == {"toy.sub.b"} and graph["toy.sub.b"] == {"toy.sub.c"} and graph["toy.sub.c"] == {"toy.a"}
    assert find_cycle(graph) == ["toy.a", "toy.sub.b", "toy.sub.c", "toy.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
