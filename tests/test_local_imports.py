"""Imports sit at the top of each module; one inside a function says why (DESIGN.md, "Imports sit at
the top"): a comment on the import, on the line above it, or on the function's first block of local
imports (one comment per function where several imports share a reason). The checker reads the
source with ast (which imports are inside which function) and tokenize (which lines carry a comment),
and is shown to fire on synthetic sources."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import linmaml

PACKAGE = Path(linmaml.__file__).parent
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
IMPORTS = (ast.Import, ast.ImportFrom)


def _local_imports(tree: ast.AST):
    """(function, [import nodes whose innermost enclosing scope is that function]) for each function."""
    found = []

    def visit(node, function, imports):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                own = []
                visit(child, child, own)
                if own:
                    found.append((child, own))
            elif isinstance(child, ast.ClassDef):
                visit(child, None, [])  # a method is its own function; a class body is not a function
            elif isinstance(child, IMPORTS) and function is not None:
                imports.append(child)
            else:
                visit(child, function, imports)

    visit(tree, None, [])
    return found


def _first_block(function, first) -> list:
    """The run of import statements that starts with ``first`` in the statement list holding it."""
    for node in ast.walk(function):
        for field in ("body", "orelse", "finalbody", "handlers"):
            statements = getattr(node, field, None)
            if isinstance(statements, list) and first in statements:
                block = []
                for statement in statements[statements.index(first):]:
                    if not isinstance(statement, IMPORTS):
                        break
                    block.append(statement)
                return block
    return [first]


def uncommented_local_imports(source: str, where: str = "<source>") -> list[str]:
    """``where:line`` of every import inside a function with no comment on its own lines, none on a
    comment line right above it, and none on (or right above) the function's first local-import block."""
    lines = source.splitlines()
    commented = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
                 if token.type == tokenize.COMMENT}

    def explained(first_line: int, last_line: int) -> bool:
        above = first_line - 1
        if above >= 1 and above in commented and lines[above - 1].lstrip().startswith("#"):
            return True
        return any(line in commented for line in range(first_line, last_line + 1))

    missing = []
    for function, imports in _local_imports(ast.parse(source, where)):
        imports.sort(key=lambda node: node.lineno)
        block = _first_block(function, imports[0])
        if explained(block[0].lineno, block[-1].end_lineno):
            continue
        missing += [f"{where}:{node.lineno}" for node in imports if not explained(node.lineno, node.end_lineno)]
    return missing


def test_every_import_inside_a_function_in_linmaml_says_why():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        missing += uncommented_local_imports(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not missing, ("imports inside functions without a comment saying why (move them to the top of the "
                         "module, or say why they must stay, as DESIGN.md lists): " + ", ".join(missing))


def test_the_checker_fires_on_a_bare_local_import_and_accepts_the_three_places_for_a_reason():
    bare = "import os\n\n\ndef f():\n    import json\n\n    return json\n"
    assert uncommented_local_imports(bare) == ["<source>:5"]
    # a comment on the import's line, on the line above, or on the function's first block of imports
    on_line = "def f():\n    import json  # lazy: why\n    return json\n"
    above = "def f():\n    # lazy: why\n    import json\n    return json\n"
    block = ("def f():\n    import json  # lazy: why\n    from os import path\n\n    x = 1\n"
             "    if x:\n        import csv\n    return json, path, csv\n")
    assert uncommented_local_imports(on_line) == uncommented_local_imports(above) == []
    assert uncommented_local_imports(block) == []
    # a multi-line import whose comment sits on a continuation line counts
    assert uncommented_local_imports("def f():\n    from os import (path,  # lazy: why\n        sep)\n") == []


def test_the_checker_does_not_take_a_comment_elsewhere_for_a_reason():
    # a comment in another function, a '#' inside a string, a comment two lines up, a nested function
    # whose import the outer function's comment does not cover, a method: all still flagged
    other = "def f():\n    import json  # lazy: why\n\n\ndef g():\n    import csv\n"
    assert uncommented_local_imports(other) == ["<source>:6"]
    string = "def f():\n    x = '# not a comment'\n    import json\n"
    assert uncommented_local_imports(string) == ["<source>:3"]
    two_up = "def f():\n    # lazy: why\n    x = 1\n    import json\n"
    assert uncommented_local_imports(two_up) == ["<source>:4"]
    nested = "def f():\n    import json  # lazy: why\n\n    def g():\n        import csv\n"
    assert uncommented_local_imports(nested) == ["<source>:5"]
    method = "class A:\n    import os\n\n    def m(self):\n        import json\n"
    assert uncommented_local_imports(method) == ["<source>:5"]
    # and a bare import after the first block is fine only because the block carries the reason
    later = "def f():\n    import json\n\n    x = 1\n    import csv  # lazy: why\n"
    assert uncommented_local_imports(later) == ["<source>:2"]


def test_the_checker_fires_on_an_import_planted_in_a_copy_of_a_real_module(tmp_path):
    source = (PACKAGE / "tasks.py").read_text(encoding="utf-8")
    assert uncommented_local_imports(source) == []
    planted = source.replace("def orthonormal_basis(", "def planted():\n    import json\n\n\ndef orthonormal_basis(", 1)
    assert planted != source
    copy = tmp_path / "tasks.py"
    copy.write_text(planted, encoding="utf-8")
    line = planted.splitlines().index("    import json") + 1
    assert uncommented_local_imports(copy.read_text(encoding="utf-8"), "tasks.py") == [f"tasks.py:{line}"]
