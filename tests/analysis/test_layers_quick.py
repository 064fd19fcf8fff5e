"""analysis/fig_layers.py in quick mode on the real Omniglot: trains the 4-block CNN, writes the
analysis figure and JSON; a given run folder is analysed without training, to the same numbers;
a missing one exits 2 with one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from linmaml.analysis import layers as L

def test_quick_layers_figure_and_reuse(tmp_path, capsys, data_root):
    record = L.run(tmp_path / "out", quick=True, runs=tmp_path / "runs", data_root=data_root, command="test")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["layers.json", "layers.png"]
    saved = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert saved["settings"]["layers"] == 4 and saved["tasks"] == L.QUICK["tasks"] and saved["training"]
    assert [b["name"] for b in saved["blocks"]] == [f"features.block{i}" for i in range(4)] + ["head"]
    labels = [row["label"] for row in saved["ablation"]]
    assert labels == ["all", "head", "all but head"] + [f"features.block{i}" for i in range(4)] + ["none"]

    run_dir = Path(record["run"])
    stamp = (run_dir / "last.pt").stat().st_mtime_ns
    again = L.run(tmp_path / "again", quick=True, run_dir=run_dir, data_root=data_root)
    assert (run_dir / "last.pt").stat().st_mtime_ns == stamp and again["training"] is None
    assert again["layers"] == record["layers"] and again["ablation"] == record["ablation"]

    capsys.readouterr()
    assert L.main(["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fig_layers: error: checkpoint:") and len(err.splitlines()) == 1  # as every opened run
