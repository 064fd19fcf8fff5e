"""One thread and data-root policy for every command on a run (linmaml.benchmarks.run_settings): a
run's config.json records the data root it read and its threads; evaluate, analyze and --resume
reuse them unless told otherwise; analyze no longer takes every core by default."""
from __future__ import annotations

import json
import os

import pytest
import torch

from linmaml.benchmarks import run_settings
from linmaml.cli import main

TINY = ["--layers", "1", "--hidden", "4", "--meta-batch", "2", "--query", "3", "--val-tasks", "5", "--quiet"]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(tmp_path, **fields):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {}, **fields}))
    return run


def test_recorded_settings_and_their_precedence(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run = _config(tmp_path, data_root=str(data), threads=3)
    assert run_settings.recorded(run) == {"data_root": str(data), "threads": 3}
    assert run_settings.recorded(run / "best.pt") == {"data_root": str(data), "threads": 3}  # a checkpoint inside
    assert run_settings.threads_for(None, run) == 3 and run_settings.threads_for(2, run) == 2
    assert run_settings.threads_for(None) == run_settings.DEFAULT_THREADS == 1
    assert run_settings.data_root_for(None, run) == data
    assert run_settings.data_root_for(tmp_path, run) == tmp_path  # --data-root wins
    data.rmdir()  # a recorded root that is gone: the library's default (None)
    assert run_settings.data_root_for(None, run) is None


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", json.dumps({"threads": True, "data_root": 5}),
                                     json.dumps({"threads": 0, "data_root": ""}), json.dumps({"threads": 10 ** 20}),
                                     json.dumps({"threads": 1025})])
def test_an_older_or_odd_config_records_nothing(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(content)
    assert run_settings.recorded(run) == {"data_root": None, "threads": None}
    assert run_settings.recorded(tmp_path / "missing") == {"data_root": None, "threads": None}


def test_a_fifo_config_is_not_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "config.json")  # opening it for reading would block without O_NONBLOCK
    assert run_settings.recorded(run) == {"data_root": None, "threads": None}


@pytest.mark.slow
def test_evaluate_analyze_and_resume_reuse_the_runs_data_root_and_threads(tmp_path, capsys, monkeypatch, data_root,
                                                                          keep_threads):
    """Trained with --data-root and --threads 2 while $LINMAML_DATA is unset and the per-user cache is
    empty: evaluate, analyze and --resume find the data without being told, evaluate and --resume
    use the run's 2 threads, and --threads overrides."""
    monkeypatch.delenv("LINMAML_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--iterations", "2", "--val-every", "2", "--data-root", str(data_root),
                 "--threads", "2", *TINY]) == 0
    capsys.readouterr()
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["data_root"] == str(data_root.resolve()) and recorded["threads"] == 2

    torch.set_num_threads(1)
    assert main(["evaluate", str(out), "--tasks", "2", "--json"]) == 0
    assert torch.get_num_threads() == 2  # the run's own
    assert json.loads(capsys.readouterr().out)["tasks"] == 2
    assert main(["evaluate", str(out), "--tasks", "2", "--json", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1  # told otherwise
    capsys.readouterr()

    assert main(["analyze", str(out), "--tasks", "2", "--spectrum-tasks", "0", "--json"]) == 0
    assert torch.get_num_threads() == 2 and json.loads(capsys.readouterr().out)["tasks"] == 2

    torch.set_num_threads(1)
    assert main(["train", "--out", str(out), "--resume", "--iterations", "3", "--quiet"]) == 0
    assert torch.get_num_threads() == 2
    assert json.loads((out / "config.json").read_text())["data_root"] == str(data_root.resolve())


def test_analyze_defaults_to_one_thread_for_a_run_that_records_none(tmp_path, capsys, keep_threads):
    """An older run (no threads in config.json): analyze sets one thread, not every core, before it
    reads anything (here it then fails on the missing checkpoint)."""
    run = _config(tmp_path)
    torch.set_num_threads(2)
    assert main(["analyze", str(run), "--tasks", "2"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert torch.get_num_threads() == 1
