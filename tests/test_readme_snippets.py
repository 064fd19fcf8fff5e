"""Every ```python block of README.md runs as written: each in a fresh interpreter (a fresh
namespace), in order, in a temporary folder, one thread, with a timeout.

``LINMAML_README`` may name another file to check (e.g. a draft of the README); default: the
repository's README.md.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("LINMAML_README", "").strip() or REPO / "README.md")
TIMEOUT_S = 300

# A fenced block opened by ```python at the start of a line and closed by ``` at the start of a line.
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_extraction_finds_blocks_and_only_python_ones():
    text = ("intro\n```python\na = 1\n```\n```sh\nls\n```\n  ```python\nnot at line start\n```\n"
            "```python\nb = 2\nc = 3\n```\n")
    assert python_blocks(text) == [(2, "a = 1\n"), (11, "b = 2\nc = 3\n")]
    assert BLOCKS, f"{README} holds no ```python block"


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(tmp_path, line, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, (f"{README.name} block at line {line} failed (exit {done.returncode}):\n{code}\n"
                                  f"--- stderr ---\n{done.stderr[-4000:]}")
