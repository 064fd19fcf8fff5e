"""DESIGN.md's "Writing a figure" example, read from DESIGN.md, saved as a ``fig_*`` module of a
package of its own, found by ``linmaml reproduce``'s discovery and run in quick mode: it writes its
PNG and JSON, and its Monte Carlo numbers agree with the closed form ½v(1 − αv)² (tasks w ~ N(0, 1),
one population-gradient step from 0) within four of their standard errors."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from linmaml.cli.reproduce import discover

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def design_figure_code() -> str:
    text = (ROOT / "DESIGN.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a figure"):text.index("## Conventions, written once")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 18, f"DESIGN.md's figure example grew to {len(lines)} lines"
    return code


@pytest.fixture
def example_package(tmp_path, monkeypatch):
    package = tmp_path / "designfigs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fig_one_step.py").write_text('"""One step from 0: the DESIGN.md example."""\n' + design_figure_code()
                                             + '\nif __name__ == "__main__":\n    main()\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "designfigs"
    for name in [m for m in sys.modules if m == "designfigs" or m.startswith("designfigs.")]:
        del sys.modules[name]


def closed_form(rate, v):
    return 0.5 * v * (1 - rate * v) ** 2


def test_design_figure_example_is_found_runs_and_matches_the_closed_form(example_package, tmp_path):
    figures = discover(example_package)
    assert [(f.name, f.module_name) for f in figures] == [("one_step", "designfigs.fig_one_step")]
    record = figures[0].module.run(tmp_path / "out", quick=True)
    assert (tmp_path / "out" / "one_step.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "one_step.json").read_text()) == record
    n, v = record["numbers"], record["settings"]["x_var"]
    assert record["settings"]["tasks"] == 2_000 and len(n["rates"]) == 11
    for rate, mean, se in zip(n["rates"], n["loss"], n["se"]):
        exact = closed_form(rate, v)
        assert abs(mean - exact) <= 4 * se + 1e-15, (rate, mean, exact, se)
    # α = 1/v adapts every task exactly (zero loss, zero spread); α = 0 keeps the prior loss ½v
    assert n["loss"][n["rates"].index(0.5)] == 0.0 and n["se"][n["rates"].index(0.5)] == 0.0
    assert abs(n["loss"][0] - 0.5 * v) <= 4 * n["se"][0]


def test_design_figure_example_main_is_its_command_line(example_package, tmp_path, capsys):
    module = discover(example_package)[0].module
    module.main(["--quick", "--out", str(tmp_path)])
    assert f"wrote {tmp_path / 'one_step.png'} and one_step.json" in capsys.readouterr().out
    assert json.loads((tmp_path / "one_step.json").read_text())["settings"]["tasks"] == 2_000
