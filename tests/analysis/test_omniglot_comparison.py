"""analysis/omniglot_comparison.py in quick mode on the real Omniglot, into temporary folders.

Checked against computations that do not go through the script: a direct re-evaluation of the
MAML run's checkpoint (a plain SGD inner loop written here, and the library's
``evaluate_checkpoint``), the runs' own ``config.json`` files (same budget for all five), their
``metrics.jsonl`` (resume and no-retraining), and the drawn bars of ``linmaml.plots.bars``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "analysis" / "omniglot_comparison.py"
NAMES = ("maml", "maml-linnet", "maml-kfo", "anil", "anil-kfo")
LABELS = ("MAML", "MAML+LinNet", "MAML+KFO", "ANIL", "ANIL+KFO")


def _load_script():
    spec = importlib.util.spec_from_file_location("omniglot_comparison_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(runs: pathlib.Path) -> dict:
    """(bytes, mtime_ns) of every run file: anything retrained or rewritten changes it."""
    out = {}
    for path in sorted(runs.rglob("*")):
        if path.is_file() and path.name != "run.lock":
            out[str(path.relative_to(runs))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, data_root):
    """Three invocations on one runs folder: (A) two configurations stopped at 2 of 4 iterations,
    (B) the full quick comparison (resumes A's two, trains the other three), (C) again (must not
    retrain). Returns what each left behind."""
    from linmaml.benchmarks.data import load_splits

    module = _load_script()
    base = tmp_path_factory.mktemp("omniglot-comparison")
    runs, out = base / "runs", base / "out"
    splits = load_splits("omniglot", ("train", "val", "test"), data_root)  # read once for the three runs
    common = dict(runs=runs, threads=1, data_root=data_root, device="cpu", progress=False, splits=splits)
    module.run(base / "out-partial", quick=True, iterations=2, only="maml,maml-kfo", **common)
    partial = {name: _lines(runs / name / "metrics.jsonl") for name in ("maml", "maml-kfo")}
    record = module.run(out, quick=True, **common)
    after_b = _snapshot(runs)
    json_b = (out / "omniglot_comparison.json").read_text()
    record_c = module.run(out, quick=True, **common)
    return dict(module=module, runs=runs, out=out, record=record, record_c=record_c, partial=partial,
                after_b=after_b, after_c=_snapshot(runs), json_b=json_b, data_root=data_root, splits=splits)


def test_json_png_and_table_cover_all_five(comparison):
    record, out = comparison["record"], comparison["out"]
    on_disk = json.loads(comparison["json_b"])
    assert on_disk == json.loads(json.dumps(record))
    assert record["figure"] == "omniglot_comparison"
    assert list(record["numbers"]) == list(NAMES)
    quick = comparison["module"].QUICK
    for name in NAMES:
        entry = record["numbers"][name]
        assert entry["iterations"] == quick["iterations"] and entry["complete"]
        assert len(_lines(comparison["runs"] / name / "metrics.jsonl")) == quick["iterations"]
        assert entry["tasks"] == 20 and 0.0 <= entry["accuracy"] <= 1.0 and entry["ci95"] > 0
        assert entry["train_seconds"] > 0 and entry["eval_seconds"] > 0
    with Image.open(out / "omniglot_comparison.png") as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
    table = record["table"].splitlines()
    assert len(table) == 2 + len(NAMES)
    for line, label, name in zip(table[2:], LABELS, NAMES):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == label
        assert float(cells[2]) == pytest.approx(100 * record["numbers"][name]["accuracy"], abs=0.005)
        assert float(cells[3].lstrip("± ")) == pytest.approx(100 * record["numbers"][name]["ci95"], abs=0.005)
    assert "--quick" in record["command"] and "omniglot_comparison.py" in record["command"]


def test_all_runs_have_the_same_budget(comparison):
    """From each run's own config.json: only algo, transform and linnet differ."""
    configs = {n: json.loads((comparison["runs"] / n / "config.json").read_text())["config"] for n in NAMES}
    differing = {"algo", "transform", "linnet"}
    reference = {k: v for k, v in configs["maml"].items() if k not in differing}
    for name, config in configs.items():
        assert {k: v for k, v in config.items() if k not in differing} == reference, name
    assert reference["layers"] == 2 and reference["iterations"] == 4 and reference["seed"] == 0
    assert {(c["algo"], c["transform"], c["linnet"]) for c in configs.values()} == {
        ("maml", "none", 0), ("maml", "none", 2), ("maml", "kfo", 0), ("anil", "none", 0), ("anil", "kfo", 0)}


def test_json_matches_an_independent_re_evaluation(comparison):
    """The MAML run's best.pt scored again: by evaluate_checkpoint, and by a plain loop written here
    (3 SGD steps of the inner rate on the support set, accuracy on the query set, 1.96·s/√n)."""
    from torch.func import functional_call

    from linmaml.benchmarks import checkpoint, episodes
    from linmaml.benchmarks.evaluate import evaluate_checkpoint
    from linmaml.benchmarks.models import ConvNet

    torch.set_num_threads(1)
    run_dir = comparison["runs"] / "maml"
    entry = comparison["record"]["numbers"]["maml"]
    test = comparison["splits"]["test"]
    again = evaluate_checkpoint(run_dir, tasks=20, device="cpu", splits={"test": test})
    assert (again["accuracy"], again["ci95"], again["iteration"]) == (
        entry["accuracy"], entry["ci95"], entry["checkpoint_iteration"])

    payload = checkpoint.load(run_dir / "best.pt")
    config = payload["config"]
    net = ConvNet(1, 5, blocks=config["layers"], filters=config["hidden"], image_size=28, pool=config["pool"])
    net.load_state_dict({k[len("model."):]: v for k, v in payload["learner"].items() if k.startswith("model.")})
    tasks = episodes.evaluation_tasks(test, 5, 1, 15, count=20, seed=0)
    accuracies = []
    for task in tasks:
        xs, ys, xq, yq = task.to_torch("cpu", torch.float32)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
        for _ in range(config["test_steps"]):
            loss = F.cross_entropy(functional_call(net, params, (xs,)), ys)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - config["inner_lr"] * g).detach().requires_grad_(True)
                      for (n, p), g in zip(params.items(), grads)}
        with torch.no_grad():
            accuracies.append(float((functional_call(net, params, (xq,)).argmax(1) == yq).double().mean()))
    accuracies = np.array(accuracies)
    ci95 = stats.norm.ppf(0.975) * accuracies.std(ddof=1) / math.sqrt(accuracies.size)
    # float32 sums in another order could flip one near-tied prediction out of 20 × 75.
    print(f"direct loop: {accuracies.mean()!r} ± {ci95!r}; script: {entry['accuracy']!r} ± {entry['ci95']!r}")
    assert abs(accuracies.mean() - entry["accuracy"]) <= 1 / (20 * 75) + 1e-12
    assert ci95 == pytest.approx(entry["ci95"], abs=2e-3)


def test_partial_runs_are_resumed_and_finished_runs_not_retrained(comparison):
    runs = comparison["runs"]
    for name, lines in comparison["partial"].items():
        assert len(lines) == 2
        assert _lines(runs / name / "metrics.jsonl")[:2] == lines  # resumed, not restarted
    assert comparison["after_c"] == comparison["after_b"]  # (C) touched no run file
    b, c = comparison["record"]["numbers"], comparison["record_c"]["numbers"]
    for name in NAMES:
        assert c[name]["status"].startswith("done (earlier")
        assert c[name]["train_seconds_this_invocation"] == 0.0
        assert (c[name]["accuracy"], c[name]["ci95"]) == (b[name]["accuracy"], b[name]["ci95"])


def test_a_runs_folder_with_other_settings_or_more_iterations_is_refused(comparison):
    module, runs = comparison["module"], comparison["runs"]
    before = _snapshot(runs)
    with pytest.raises(ValueError, match=r"^runs: .*other settings.*hidden"):
        module.run(comparison["out"], quick=True, runs=runs, hidden=4, only="maml", device="cpu")
    with pytest.raises(ValueError, match=r"^runs: .*4 iterations, more than the 3"):
        module.run(comparison["out"], quick=True, runs=runs, iterations=3, only="anil", device="cpu")
    assert _snapshot(runs) == before


def test_bad_arguments(comparison, tmp_path, capsys):
    module = comparison["module"]
    with pytest.raises(ValueError, match=r"^only: expected names among maml, .*'mamal'"):
        module.configurations(only="maml,mamal")
    with pytest.raises(ValueError, match=r"^jobs: "):
        module.run(tmp_path, quick=True, runs=tmp_path / "r", jobs=0)
    assert module.main(["--quick", "--only", "nope", "--runs", str(tmp_path / "r"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["omniglot_comparison: only: expected names among maml, maml-linnet, maml-kfo, anil, anil-kfo,"
                   " got 'nope'"]
    assert not (tmp_path / "r").exists()


def test_ci_bars_draws_each_mean_and_interval():
    import matplotlib.pyplot as plt

    from linmaml.plots.bars import ci_bars

    fig, ax = plt.subplots()
    means, halves = [91.5, 88.0, 95.25], [0.5, 1.25, 0.75]
    bars = ci_bars(ax, ["a", "b", "c"], means, halves, baseline=20.0)
    for bar, mean in zip(bars.patches, means):
        assert bar.get_y() == 20.0 and bar.get_y() + bar.get_height() == pytest.approx(mean)
    caps = sorted(float(y) for line in bars.errorbar.lines[1] for y in line.get_ydata())
    ends = [m - h for m, h in zip(means, halves)] + [m + h for m, h in zip(means, halves)]
    assert caps == pytest.approx(sorted(ends))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="^means: expected one mean"):
        ci_bars(ax, ["a", "b"], [1.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="^half_widths: "):
        ci_bars(ax, ["a"], [1.0], [-0.1])
    plt.close(fig)


@pytest.mark.slow
def test_parallel_jobs_give_the_serial_results(comparison, tmp_path):
    """--jobs 2 (spawned processes, each loading the data itself) trains the same weights as the
    serial run and reports the same test accuracy."""
    from linmaml.benchmarks import checkpoint

    module = comparison["module"]
    only = ("maml-kfo", "anil")
    record = module.run(tmp_path / "out", quick=True, runs=tmp_path / "runs", threads=1, jobs=2, only=",".join(only),
                        data_root=comparison["data_root"], device="cpu", progress=False)
    assert list(record["numbers"]) == list(only)
    for name in only:
        mine = checkpoint.load(tmp_path / "runs" / name / "last.pt")["learner"]
        serial = checkpoint.load(comparison["runs"] / name / "last.pt")["learner"]
        assert mine.keys() == serial.keys()
        assert all(torch.equal(mine[k], serial[k]) for k in mine)
        assert (record["numbers"][name]["accuracy"], record["numbers"][name]["ci95"]) == (
            comparison["record"]["numbers"][name]["accuracy"], comparison["record"]["numbers"][name]["ci95"])


@pytest.mark.slow
def test_the_recorded_train_command_reproduces_a_run(comparison, tmp_path):
    """The JSON's ``linmaml train`` command for ANIL, run as a separate process into another folder,
    ends with the weights of the script's own run."""
    import shlex
    import subprocess
    import sys

    from linmaml.benchmarks import checkpoint

    words = shlex.split(comparison["record"]["train_commands"]["anil"])
    assert words[:2] == ["linmaml", "train"]
    words[words.index("--out") + 1] = str(tmp_path / "anil")
    env = dict(os.environ, LINMAML_DATA=str(comparison["data_root"]))
    done = subprocess.run([sys.executable, "-m", "linmaml", *words[1:], "--quiet"], env=env, capture_output=True,
                          text=True, timeout=900)  # hang guard only
    assert done.returncode == 0, done.stderr
    mine = checkpoint.load(tmp_path / "anil" / "last.pt")["learner"]
    script = checkpoint.load(comparison["runs"] / "anil" / "last.pt")["learner"]
    assert mine.keys() == script.keys() and all(torch.equal(mine[k], script[k]) for k in mine)
