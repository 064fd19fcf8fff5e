"""Every ```python block of README.md and of the manual's guide pages (docs/guide/*.md) runs as
written: each in a fresh interpreter (a fresh namespace), in order, in a temporary folder, one
thread, with a timeout.

``LINMAML_README`` may name another file to check (e.g. a draft of the README); default: the
repository's README.md and docs/guide/*.md.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_GIVEN = os.environ.get("LINMAML_README", "").strip()
PAGES = [Path(_GIVEN)] if _GIVEN else [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
README = PAGES[0]
TIMEOUT_S = 900  # a hang guard only (DESIGN.md: tests bound events, not seconds)

# A fenced block opened by ```python at the start of a line and closed by ``` at the start of a line.
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


#: (page, line of the opening fence, code) of every block of every page, in order
BLOCKS = [(page, line, code) for page in PAGES for line, code in python_blocks(page.read_text(encoding="utf-8"))]


def test_the_extraction_finds_blocks_and_only_python_ones():
    text = ("intro\n```python\na = 1\n```\n```sh\nls\n```\n  ```python\nnot at line start\n```\n"
            "```python\nb = 2\nc = 3\n```\n")
    assert python_blocks(text) == [(2, "a = 1\n"), (11, "b = 2\nc = 3\n")]
    assert BLOCKS, f"{', '.join(map(str, PAGES))} hold no ```python block"


def _run_block(tmp_path, request, page, line, code) -> str:
    """Run one block as a new user would (a fresh interpreter in an empty folder, one thread); blocks
    on real data get ``$LINMAML_DATA`` from the ``data_root`` fixture. Returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if "load_splits" in code or "benchmarks.train" in code:
        env["LINMAML_DATA"] = str(request.getfixturevalue("data_root"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # a hang guard, not a speed claim
    assert done.returncode == 0, (f"{page.name} block at line {line} failed (exit {done.returncode}):\n{code}\n"
                                  f"--- stderr ---\n{done.stderr[-4000:]}")
    return done.stdout


def _printed_claim(code: str) -> list[float]:
    """The numbers of the block's ``# prints ...`` comment (what the README tells the reader)."""
    claims = [line for line in code.splitlines() if line.startswith("# prints")]
    assert len(claims) == 1, "the block says what it prints in one '# prints' comment"
    return [float(x) for x in re.findall(r"\d+\.\d+", claims[0])]


@pytest.mark.parametrize("page, line, code", BLOCKS, ids=[f"{page.stem}-line{line}" for page, line, _ in BLOCKS])
def test_readme_python_block_runs(tmp_path, request, page, line, code):
    out = _run_block(tmp_path, request, page, line, code)
    if "held-out query MSE after" in code:
        # The first snippet shows adaptation: the error before adapting (steps=0), after 1 and 10
        # inner steps, each smaller than the one before, and the numbers the README quotes.
        got = [float(x) for x in re.findall(r"inner steps: (\d+\.\d+)", out)]
        assert len(got) == 3 and got[0] > got[1] > got[2], out
        assert got == pytest.approx(_printed_claim(code), abs=1.5e-3), out
    if "evaluate_checkpoint(" in code:
        # your own model: accuracy before adapting near chance, after 3 steps far above it
        got = [float(x) for x in re.findall(r"accuracy (\d+\.\d+) %", out)]
        task0 = [float(x) for x in re.findall(r"(\d+\.\d+)% of 75", out)]
        assert len(got) == 2 and got[1] > got[0] + 10, out
        claim = _printed_claim(code)
        assert [got[0], got[1], task0[0]] == pytest.approx([claim[0], claim[2], claim[4]], abs=0.051), out
