"""The figure runner's command line (plots.figure.figure_module): a figure's own flags appear in its
--help, run their action before the figure is computed, and only when given; the JSON holds the
numbers compute returned, without its private keys."""
import json

import pytest

from linmaml.plots.figure import figure_module


def _toy(events):
    def compute(quick=False):
        events.append(("compute", quick))
        return {"figure": "toy", "settings": {}, "numbers": {"x": 1.5}, "_private": [1]}

    def draw(result, path):
        events.append(("draw", path.name))
        path.write_bytes(b"png")

    return compute, draw


def test_a_figures_own_flag_runs_before_compute_and_only_when_given(tmp_path):
    events = []
    compute, draw = _toy(events)
    _, main = figure_module("toy", "A toy figure.", compute, draw, quick_help="small",
                            flags={"--prepare-first": ("prepare", lambda: events.append(("prepare",)))})
    main(["--out", str(tmp_path), "--quick"])
    assert events == [("compute", True), ("draw", "toy.png")]
    events.clear()
    main(["--out", str(tmp_path), "--prepare-first"])
    assert events == [("prepare",), ("compute", False), ("draw", "toy.png")]
    record = json.loads((tmp_path / "toy.json").read_text())
    assert record["numbers"] == {"x": 1.5} and "_private" not in record


def test_a_figures_own_flag_is_in_its_help(capsys):
    _, main = figure_module("toy", "A toy figure.", *_toy([]), quick_help="small",
                            flags={"--prepare-first": ("prepare the inputs", lambda: None)})
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--prepare-first" in capsys.readouterr().out


def test_criteria_summary_writes_one_line_per_criterion():
    from linmaml.plots.figure import criteria_summary

    record = {"numbers": {"criteria": {
        "ratio": {"value": 1.23456, "ci95": 0.01, "required": "<= 1.3", "met": True},
        "gap": {"value": -0.5, "ci95": 0.25, "required": ">= 2", "met": False}}}}
    assert criteria_summary(record) == ["ratio: 1.235 ± 0.010 (required <= 1.3: met)",
                                        "gap: -0.500 ± 0.250 (required >= 2: NOT met)"]
