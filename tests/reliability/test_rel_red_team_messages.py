"""The red team's tracebacks and misleading messages: each ends as one line naming the file
or the argument at fault (exit status 2 at the command line, ``ArgumentError`` in Python), and a
closed or full stderr never stops a run. Synthetic data (put in place of ``load_splits``): fast."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml.benchmarks.data.fewshot import noise_splits
from linmaml import meta
from linmaml.benchmarks import layerwise as analyze_module
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.train import train
from linmaml.cli import build_parser, main
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine
from linmaml.plots import layerwise as layerwise_tables
from linmaml.tasks import SinusoidFamily

CLASSES, EXAMPLES = 6, 20
SETTINGS = dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=2,
                val_every=2, val_tasks=2)


pytestmark = pytest.mark.usefixtures("fake_data")  # pure-noise Omniglot (conftest.py)


def synthetic_splits(names=("train", "val", "test")) -> dict:
    return noise_splits(names, classes=CLASSES, examples=EXAMPLES)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(SETTINGS, out, splits=synthetic_splits(("train", "val")), progress=False).status == "done"
    return out


def one_line_error(capsys, argv) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.strip(), err
    return status, err


# -- checkpoints with a valid digest whose payload does not fit -------------------------------------------------

PAYLOADS = {
    "weights of another shape": lambda p: {**p, "learner": {k: torch.zeros(3, *v.shape) for k, v in p["learner"].items()}},
    "a weight missing": lambda p: {**p, "learner": dict(list(p["learner"].items())[1:])},
    "an extra weight": lambda p: {**p, "learner": {**p["learner"], "extra": torch.zeros(2)}},
    "weights a list": lambda p: {**p, "learner": [1, 2]},
    "image shape garbage": lambda p: {**p, "image_shape": "abc"},
    "image shape absurd": lambda p: {**p, "image_shape": [1, 10 ** 9, 10 ** 9]},
    "settings garbage": lambda p: {**p, "config": {**p["config"], "layers": "four"}},
    "settings not a dict": lambda p: {**p, "config": 5},
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_evaluate_and_analyze_name_the_checkpoint_whose_payload_does_not_fit(finished, tmp_path, capsys, name):
    path = tmp_path / "crafted.pt"
    checkpoint.save(path, PAYLOADS[name](checkpoint.load(finished / checkpoint.BEST)))
    for command in (["evaluate", str(path), "--tasks", "2", "--quiet"], ["analyze", str(path), "--tasks", "2"]):
        status, err = one_line_error(capsys, command)
        assert status == 2 and str(path) in err, err


def test_nan_weights_are_named_not_scored(finished, tmp_path, capsys):
    path = tmp_path / "nan.pt"
    payload = checkpoint.load(finished / checkpoint.BEST)
    checkpoint.save(path, {**payload, "learner": {k: v * float("nan") for k, v in payload["learner"].items()}})
    status, err = one_line_error(capsys, ["evaluate", str(path), "--tasks", "2", "--quiet"])
    assert status == 2 and str(path) in err and "not finite" in err
    assert "accuracy" not in capsys.readouterr().out  # before the fix: "accuracy 20.00 % ± 0.00 %"


# -- arguments: ranges, paths, negative numbers -------------------------------------------------------------------


@pytest.mark.parametrize("argv,needle", [
    (["train", "--out", "{tmp}/r", "--threads", "99999999999999999999"], "--threads: expected an integer <= 1024"),
    (["evaluate", "{run}", "--threads", "99999999999999999999"], "--threads: expected an integer <= 1024"),
    (["analyze", "{run}", "--threads", "99999999999999999999"], "--threads: expected an integer <= 1024"),
    (["analyze", "{run}", "--tasks", "10000000"], "--tasks: expected an integer <= 100000"),
    (["analyze", "{run}", "--steps", "1000000"], "--steps: expected an integer <= 1000"),
    (["analyze", ""], "RUN: expected a path"),
    (["analyze", "{run}", "--out", "{tmp}/afile/sub"], "--out: {tmp}/afile is a file"),
    (["plot", "{run}", "--out", "{tmp}/afile/x.png"], "--out: {tmp}/afile is a file"),
    (["plot", "{run}", "--out", "{tmp}/x.png", "--window", "99999999999999999999"], "--window: expected an integer <="),
    (["surface", "--task-mean", "1e308"], "--task-mean: "),
    (["surface", "--task-std", "1e200"], "--task-std: "),
])
def test_bad_arguments_are_named(finished, tmp_path, capsys, monkeypatch, argv, needle):
    (tmp_path / "afile").write_text("a file")
    analyses = []
    monkeypatch.setattr(analyze_module, "analyze_run", lambda *a, **k: analyses.append(a))
    fill = lambda text: text.replace("{tmp}", str(tmp_path)).replace("{run}", str(finished))  # noqa: E731
    status, err = one_line_error(capsys, [fill(a) for a in argv])
    assert status == 2 and fill(needle) in err, err
    assert analyses == []  # refused before the analysis, not after it


def test_analyze_expands_a_tilde_in_run(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(finished.parent))
    seen = []
    monkeypatch.setattr(analyze_module, "analyze_run", lambda path, **k: seen.append(path) or {})
    monkeypatch.setattr(layerwise_tables, "format_table", lambda result: "table")
    assert main(["analyze", "~/run", "--tasks", "2"]) == 0
    assert seen == [finished]


def test_negative_rates_parse_as_values():
    args = build_parser().parse_args(["train", "--out", "x", "--inner-lr", "-1e3", "--outer-lr", "-.5"])
    assert args.inner_lr == -1000.0 and args.outer_lr == -0.5


def test_plot_skips_an_iteration_beyond_int64(finished, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = (finished / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(lines + '{"iteration": 100000000000000000000000000000}\n')
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 0  # OverflowError before the fix
    assert (tmp_path / "x.png").is_file() and "wrote" in capsys.readouterr().out


# -- a closed or full stderr ---------------------------------------------------------------------------------------


class BrokenStream:
    """stderr after ``| head -c 100`` has exited: every write fails with EPIPE."""

    def __init__(self):
        self.attempts = 0

    def write(self, text):
        self.attempts += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False


def test_a_closed_stderr_does_not_stop_training(tmp_path, monkeypatch, capsys):
    broken = BrokenStream()
    monkeypatch.setattr("sys.stderr", broken)
    out = tmp_path / "run"
    status = main(["train", "--out", str(out), "--ways", "3", "--layers", "1", "--hidden", "2", "--meta-batch", "1",
                   "--query", "2", "--test-query", "2", "--val-tasks", "2", "--iterations", "4", "--val-every", "2",
                   "--threads", "1"])
    assert status == 0 and broken.attempts >= 1  # progress was tried, failed, and training went on
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_an_error_with_a_closed_stderr_still_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stderr", BrokenStream())
    assert main(["train", "--out", str(tmp_path / "r"), "--resume"]) == 2


# -- the meta library's arguments ----------------------------------------------------------------------------------


def _learner():
    torch.manual_seed(0)
    return meta.MAML(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), lr=0.1, steps=1)


X, Y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("call,argument", [
    (lambda L: L.adapt(X, Y + 3, F.cross_entropy), "y_support"),
    (lambda L: L.adapt(X, Y - 1, F.cross_entropy), "y_support"),
    (lambda L: L.adapt(X.long(), Y, F.cross_entropy), "x_support"),
    (lambda L: L.adapt(X[:0], Y[:0], F.cross_entropy), "x_support"),
    (lambda L: L.adapt(X, Y, F.cross_entropy, steps=10 ** 9), "steps"),
])
def test_maml_adapt_names_the_bad_argument(call, argument):
    with pytest.raises((ArgumentError, ArgumentTypeError)) as caught:
        call(_learner())
    assert caught.value.argument == argument


@pytest.mark.parametrize("strategy", ["loop", "split", "vmap"])
@pytest.mark.parametrize("change,argument", [
    (dict(y_support=Y + 3), "y_support"),
    (dict(y_query=Y + 4), "y_query"),
    (dict(y_query=Y - 2), "y_query"),
    (dict(x_query=X[:0], y_query=Y[:0]), "x_query"),
    (dict(x_support=X.long(), x_query=X.long()), "x_support"),
])
def test_the_engine_names_the_bad_argument(strategy, change, argument):
    engine = Engine(_learner(), strategy=strategy, tasks_per_chunk=2)
    batch = dict(x_support=X, y_support=Y, x_query=X, y_query=Y)
    batch = {k: v.expand(2, *v.shape).clone() for k, v in {**batch, **change}.items()}
    for method in (engine.score, engine.meta_gradient):
        with pytest.raises((ArgumentError, ArgumentTypeError)) as caught:
            method(batch["x_support"], batch["y_support"], batch["x_query"], batch["y_query"])
        assert caught.value.argument == argument, str(caught.value)


def test_the_engine_refuses_steps_past_its_maximum():
    engine = Engine(_learner())
    batch = [t.expand(1, *t.shape) for t in (X, Y, X, Y)]
    with pytest.raises(ArgumentError, match=r"^steps: expected an integer <= 10000"):
        engine.score(*batch, steps=10 ** 9)


def test_sinusoid_bounds_that_overflow_are_refused():
    with pytest.raises(ArgumentError, match=r"^x_range\[0\]: expected a number within"):
        SinusoidFamily(x_range=(-1e308, 1e308))
    tasks = SinusoidFamily(x_range=(-1e100, 1e100)).sample(3, seed=0)
    assert all(np.isfinite(getattr(tasks, k)).all() for k in ("Xs", "Ys", "Xq", "Yq")) and math.isfinite(1e100)
