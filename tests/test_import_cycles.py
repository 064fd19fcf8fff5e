"""No import cycle anywhere in linmaml: every module's imports (top level and inside functions, read
with ast) form a graph without cycles. The detector is checked on a synthetic package with a cycle.

DESIGN.md's layering as a test: every import between linmaml's packages points down the table of
layers that DESIGN.md draws, with no exception. The checker is shown to fire on a
planted wrong-direction import, in a toy package and in the real graph."""
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


# --------------------------------------------------------------------------------------------------
# Layering (DESIGN.md's table)

#: layer -> packages (the first component under ``linmaml``; a module such as ``errors.py`` counts as
#: its own package). As DESIGN.md's table: a package imports only from lower layers, except
#: ``checks`` and ``verification`` (rows and their runner), which also import each other.
LAYERS = {
    0: {"errors", "_validate", "_io", "_extras", "_strategies"},
    1: {"tasks"},
    2: {"meta", "closedform"},
    3: {"simulator", "benchmarks", "plots"},
    4: {"checks", "verification"},
    5: {"analysis"},
    6: {"cli"},
    7: {"__main__"},
}
#: Pairs of one layer that may import each other.
PEERS = {frozenset({"checks", "verification"})}
#: Layer 0's own rule: the foundation modules import only ``errors``.
FOUNDATION_MAY_IMPORT = {"errors"}


def package_of(module: str, top: str = "linmaml") -> str | None:
    """The package a module belongs to (``linmaml.meta.engine`` -> ``meta``); None for the root."""
    parts = module.split(".")
    if parts[0] != top or len(parts) == 1:
        return None
    return parts[1]


def violations(graph: dict[str, set[str]], layers: dict[int, set[str]], *, top: str = "linmaml",
               peers=frozenset(), foundation_may_import=frozenset(), exceptions=()) -> list[str]:
    """Every import against the layers, as readable lines (empty: the graph keeps the layering).

    A package missing from ``layers`` is a violation too (place it in DESIGN.md's table first)."""
    rank = {package: layer for layer, packages in layers.items() for package in packages}
    found = []
    for module in sorted(graph):
        source = package_of(module, top)
        if source is None:
            continue
        if source not in rank:
            found.append(f"{module}: package {source!r} is in no layer (add it to DESIGN.md and LAYERS)")
            continue
        for target in sorted(graph[module]):
            goal = package_of(target, top)
            if goal is None or goal == source or (module, target) in exceptions:
                continue
            if goal not in rank:
                found.append(f"{module} -> {target}: package {goal!r} is in no layer")
            elif frozenset({source, goal}) in peers:
                continue
            elif rank[source] == 0 and goal not in foundation_may_import:
                found.append(f"{module} -> {target}: the foundation imports only {sorted(foundation_may_import)}")
            elif rank[source] > 0 and rank[goal] >= rank[source]:
                found.append(f"{module} -> {target}: layer {rank[source]} ({source}) imports layer {rank[goal]} "
                             f"({goal}); imports point down")
    return found


def check(graph):
    # no exception: every import of the package keeps the layering (the checker's ``exceptions``
    # argument stays for a debt that must be listed with its reason, as the toy test shows)
    return violations(graph, LAYERS, peers=PEERS, foundation_may_import=FOUNDATION_MAY_IMPORT)


def test_linmaml_imports_point_down_the_layers_of_design_md():
    graph = import_graph(PACKAGE)
    assert "linmaml.meta.engine" in graph["linmaml.simulator.maml"]  # the walk sees real edges
    assert "linmaml.tasks" in graph["linmaml.closedform.deep_linear"]  # tasks <- closedform, as drawn
    found = check(graph)
    assert not found, "imports against DESIGN.md's layers:\n" + "\n".join(found)


def test_the_checker_fires_on_an_import_planted_in_the_real_graph():
    graph = {module: set(targets) for module, targets in import_graph(PACKAGE).items()}
    graph["linmaml.meta.engine"].add("linmaml.plots.figure")     # the core importing drawing
    graph["linmaml.tasks"].add("linmaml.closedform.deep_linear")  # the arrow DESIGN.md once drew
    graph["linmaml.simulator.maml"].add("linmaml.benchmarks.config")  # one layer's packages
    found = check(graph)
    assert len(found) == 3, found
    assert any(line.startswith("linmaml.meta.engine -> linmaml.plots.figure: layer 2 (meta)") for line in found)
    assert any(line.startswith("linmaml.tasks -> linmaml.closedform.deep_linear") for line in found)
    assert any(line.startswith("linmaml.simulator.maml -> linmaml.benchmarks.config") for line in found)


def test_the_checker_fires_on_a_wrong_direction_import_inside_a_function(tmp_path):
    pkg = tmp_path / "toy"
    for sub in ("low", "high", "new"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("")
    (pkg / "low" / "core.py").write_text("from toy import base\n")
    (pkg / "high" / "app.py").write_text("from ..low import core\n")
    layers = {0: {"base"}, 1: {"low"}, 2: {"high"}, 3: {"new"}}
    assert violations(import_graph(pkg), layers, top="toy") == []
    (pkg / "low" / "core.py").write_text("from toy import base\n\ndef late():\n    from toy.high import app\n")
    assert violations(import_graph(pkg), layers, top="toy") == [
        "toy.low.core -> toy.high.app: layer 1 (low) imports layer 2 (high); imports point down"]
    exception = {("toy.low.core", "toy.high.app"): "a listed debt"}
    assert violations(import_graph(pkg), layers, top="toy", exceptions=exception) == []
    (pkg / "stray.py").write_text("")  # a package in no layer is named
    assert violations(import_graph(pkg), layers, top="toy", exceptions=exception) == [
        "toy.stray: package 'stray' is in no layer (add it to DESIGN.md and LAYERS)"]
