"""analysis/fig_layers.py --redraw: layers.png redrawn from layers.json alone (no training, no data),
so a change of the drawing code can be applied to the committed figure."""
from __future__ import annotations

import json

from PIL import Image


def test_redraw_uses_only_the_json(tmp_path, monkeypatch):
    from linmaml.analysis import layers

    record = {"figure": "layers", "layers": [{"name": "head.weight", "adapted": True, "relative_update": 2.7}],
              "blocks": [{"name": "head", "cka": 0.3}], "ablation": [{"label": "all", "accuracy": 97.0, "ci95": 0.5},
                                                                   {"label": "none", "accuracy": 20.0, "ci95": 1.0}],
              "preconditioner": None, "tasks": 600, "steps": 3, "settings": {"algo": "anil", "transform": "kfo"}}
    (tmp_path / "layers.json").write_text(json.dumps(record))
    monkeypatch.setattr(layers, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no training")))
    assert layers.main(["--redraw", "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "layers.png") as image:
        assert image.format == "PNG"
    assert json.loads((tmp_path / "layers.json").read_text()) == record  # the numbers are untouched
