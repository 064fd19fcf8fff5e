"""Figure 1 (linmaml.analysis.fig_surface) in quick mode: files, JSON, and the numbers it reports.

The reported numbers are checked against independent computations: the shallow model's closed-form
optimum ½V(1−αV)^{2k}s², and adaptive quadrature over the task slope (scipy.integrate.quad) of the
post-adaptation loss at the reported end points and grid minimum.
"""
from __future__ import annotations

import importlib
import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import integrate  # noqa: E402

def load_script():
    return importlib.import_module("linmaml.analysis.fig_surface")


def ref_objective(ws, lr, steps, mean, std, x_var):
    def loss_at(a):
        w = [float(v) for v in ws]
        for _ in range(steps):
            prod = math.prod(w)
            w = [wj - lr * x_var * (prod - a) * math.prod(w[:j] + w[j + 1:]) for j, wj in enumerate(w)]
        return 0.5 * x_var * (math.prod(w) - a) ** 2

    density = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    return integrate.quad(lambda z: loss_at(mean + std * z) * density(z), -14, 14,
                          epsabs=1e-15, epsrel=1e-13, limit=200)[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig")
    module = load_script()
    began = time.perf_counter()
    record = module.run(out, quick=True)
    return module, out, record, time.perf_counter() - began


def test_interface_and_files(quick_run):
    module, out, record, seconds = quick_run
    assert module.NAME == "surface"
    assert sorted(p.name for p in out.iterdir()) == ["surface.json", "surface.png"]
    assert json.loads((out / "surface.json").read_text()) == record
    assert record["figure"] == "surface" and record["settings"]["quick"] is True
    with Image.open(out / "surface.png") as image:
        assert image.format == "PNG" and image.size[0] > 800


def test_numbers_match_independent_computations(quick_run):
    _, _, record, _ = quick_run
    cfg, num = record["settings"], record["numbers"]
    args = (cfg["inner_lr"], cfg["inner_steps"], cfg["task_mean"], cfg["task_std"], cfg["x_var"])
    lr, k, m, s, V = args
    assert num["no_adaptation_loss"] == pytest.approx(0.5 * V * s ** 2, rel=1e-15)
    shallow_floor = 0.5 * V * (1 - lr * V) ** (2 * k) * s ** 2
    assert num["shallow_optimum_closed_form"] == pytest.approx(shallow_floor, rel=1e-14)
    # The shallow runs reach the closed-form optimum w = m and cannot go below it.
    for run in num["shallow_trajectories"]:
        assert run["final_loss"] >= shallow_floor * (1 - 1e-12)
        assert run["final_loss"] == pytest.approx(shallow_floor, rel=1e-6)
        assert run["end"]["w"] == pytest.approx(m, abs=1e-4)
    assert num["shallow_best_final_loss"] == pytest.approx(shallow_floor, rel=1e-6)
    # Every deep end loss is the exact objective at its end point (recomputed by quadrature).
    for run in num["deep_trajectories"]:
        ref = ref_objective([run["end"]["w1"], run["end"]["w2"]], *args)
        assert run["final_loss"] == pytest.approx(ref, rel=1e-9, abs=1e-15)
        assert run["final_loss"] < run["start_loss"] and not run["diverged"]
    grid_min = num["deep_grid_min"]
    assert grid_min["loss"] == pytest.approx(ref_objective([grid_min["w1"], grid_min["w2"]], *args), rel=1e-9)
    assert num["deep_grid"]["w1"] == [-cfg["range"], cfg["range"]]
    # The figure's claim: with a small inner step the deep model adapts in one step, the shallow cannot.
    assert lr * V <= 0.1
    assert num["deep_best_final_loss"] < 0.01 * num["shallow_best_final_loss"]
    assert num["shallow_best_final_loss"] > 0.8 * num["no_adaptation_loss"]
    assert num["deep_to_shallow_ratio"] == pytest.approx(
        num["deep_best_final_loss"] / num["shallow_best_final_loss"], rel=1e-12)


def test_nothing_half_written_when_drawing_fails(tmp_path, monkeypatch):
    module = load_script()

    def broken_draw(result, path):
        raise RuntimeError("draw failed")

    monkeypatch.setattr(module, "draw", broken_draw)
    with pytest.raises(RuntimeError):
        module.run(tmp_path, quick=True)
    assert list(tmp_path.iterdir()) == []


def test_the_drawing_labels_every_run_explains_the_markers_and_draws_the_deep_infimum_at_zero(monkeypatch, tmp_path):
    """What a reader needs at a glance: one legend entry per deep run (panel c), the start circle and
    end star explained (panel a), and the deep model's infimum drawn at exactly 0 in panel (b), not at
    the best value its runs reached."""
    from linmaml.plots import figure

    module = load_script()
    drawn = {}
    monkeypatch.setattr(figure, "save_figure", lambda fig, path, **kw: drawn.setdefault("fig", fig))
    result = module.compute(quick=True)
    module.draw(result, tmp_path / "surface.png")
    ax_deep, ax_shallow, ax_curve = drawn["fig"].axes[:3]  # the fourth is the colour bar
    deep_runs = result["numbers"]["deep_trajectories"]
    labels_a = [t.get_text() for t in ax_deep.get_legend().get_texts()]
    assert any(t.startswith("start of a run") for t in labels_a) and any(t.startswith("end of a run") for t in labels_a)
    labels_c = [t.get_text() for t in ax_curve.get_legend().get_texts()]
    assert sum(t.startswith("deep run from") for t in labels_c) == len(deep_runs) == 5
    zero_lines = [line for line in ax_shallow.get_lines() if line.get_label().startswith("deep model's infimum: 0")]
    assert len(zero_lines) == 1 and list(zero_lines[0].get_ydata()) == [0.0, 0.0]
    assert ax_shallow.get_ylim()[0] < 0.0 < ax_shallow.get_ylim()[1]  # 0 is inside the drawn range
