"""``linmaml train`` / ``linmaml evaluate`` against out-of-range settings (inner and outer rates, sizes, seeds, steps,
evaluation tasks).

The same contract as the bad-argument table of ``test_rel_cli_bad_input.py``: every row ends with
exit status 2 and exactly one line on stderr naming the flag that is out of range, no traceback,
and nothing written (the sandbox is byte-for-byte the same afterwards). The data is a synthetic
"omniglot" of 6 classes with 20 examples each (Omniglot's own count), put in place of
``load_splits``, so the rows run in milliseconds and need no dataset.

Beside the table: the maxima are honest (each accepted at its value, the reason for the outer-lr
bound is torch's own overflow), an allocator failure mid-run becomes one line saying what to lower
and leaves no half-made run folder, and ``~`` in ``--out=~/x`` is expanded (no literal ``./~``).
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch

from linmaml.benchmarks.data.fewshot import noise_splits
from linmaml.benchmarks import config as config_module
from linmaml.benchmarks.config import TrainConfig, check_task_fits, iteration_seed
from linmaml.benchmarks.train import Trainer, train
from linmaml.cli import main

CLASSES, EXAMPLES = 6, 20
TINY = ["--ways", "3", "--layers", "1", "--hidden", "2", "--meta-batch", "1", "--query", "2", "--test-query", "2",
        "--val-tasks", "2", "--iterations", "1", "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("fake_data")  # pure-noise Omniglot (conftest.py)


def synthetic_splits(names=("train", "val", "test")) -> dict:
    return noise_splits(names, classes=CLASSES, examples=EXAMPLES)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    splits = synthetic_splits(("train", "val"))
    train(dict(ways=3, shots=1, query=2, test_query=2, layers=1, hidden=2, meta_batch=1, iterations=1, val_tasks=2),
          out, splits=splits, progress=False)
    return out


def snapshot(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_line_error(capsys, argv) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.strip(), err
    return status, err


# (arguments, text the one line must contain). {sandbox}: an empty folder; {run}: a finished run.
TABLE = [
    # item 5: ranges that ended in allocator errors or Adam's overflow
    (["train", "--out", "{sandbox}/r", "--outer-lr", "1e38"], "--outer-lr: expected at most 1000"),
    (["train", "--out", "{sandbox}/r", "--hidden", "20000"], "--hidden: expected an integer <= 4096"),
    (["train", "--out", "{sandbox}/r", "--meta-batch", "1000000000"], "--meta-batch: expected an integer <= 10000"),
    (["train", "--out", "{sandbox}/r", "--linnet", "1", "--linnet-width", "100000"],
     "--linnet-width: expected an integer <= 4096"),
    (["train", "--out", "{sandbox}/r", "--linnet", "100000"], "--linnet: expected an integer <= 64"),
    (["train", "--out", "{sandbox}/r", "--layers", "100000"], "--layers: expected an integer <= 64"),
    (["train", "--out", "{sandbox}/r", "--steps", "100000000"], "--steps: expected an integer <= 1000"),
    (["train", "--out", "{sandbox}/r", "--test-steps", "100000000"], "--test-steps: expected an integer <= 1000"),
    (["train", "--out", "{sandbox}/r", "--tasks-per-chunk", "1000000"],
     "--tasks-per-chunk: expected an integer <= 10000"),
    # item 7: an empty path is the current folder, which nobody means
    (["train", "--out", ""], "--out: expected a path, got an empty string"),
    (["train", "--out", "{sandbox}/r", "--data-root", ""], "--data-root: expected a path, got an empty string"),
    # item 9
    (["train", "--out", "{sandbox}/r", "--seed", "99999999999999999999"], "--seed: expected an integer below 2**63"),
    (["train", "--out", "{sandbox}/r", "--seed", str(2**63)], "--seed: expected an integer below 2**63"),
    # item 10: the flag out of range is named, not --shots
    (["train", "--out", "{sandbox}/r", "--query", "30"], "--query: expected at most 19 (each class of omniglot/train"),
    (["train", "--out", "{sandbox}/r", "--test-query", "100"],
     "--test-query: expected at most 19 (each class of omniglot/val"),
    (["train", "--out", "{sandbox}/r", "--shots", "20"], "--shots: expected at most 19"),
    (["train", "--out", "{sandbox}/r", "--ways", "7"], "--ways: expected at most 6 (the classes of omniglot/train)"),
    # item 11
    (["train", "--out", "{sandbox}/r", "--val-tasks", "100000000"], "--val-tasks: expected an integer <= 100000"),
    # evaluate
    (["evaluate", "{run}", "--query", "100"], "--query: expected at most 19 (each class of omniglot/test"),
    (["evaluate", "{run}", "--query", "100", "--split", "val"], "--query: expected at most 19 (each class of omniglot/val"),
    (["evaluate", "{run}", "--tasks", "100000000"], "--tasks: expected an integer <= 100000"),
    (["evaluate", "{run}", "--steps", "5000"], "--steps: expected an integer <= 1000"),
    (["evaluate", "{run}", "--task-seed", str(2**64)], "--task-seed: expected an integer <= 9223372036854775807"),
    (["evaluate", ""], "CHECKPOINT: expected a path, got an empty string"),
    (["evaluate", "{run}", "--data-root", ""], "--data-root: expected a path, got an empty string"),
]


@pytest.mark.parametrize("argv, expected", TABLE, ids=[" ".join(row[0])[:60] for row in TABLE])
def test_out_of_range_is_one_line_naming_the_flag(argv, expected, tmp_path, capsys, monkeypatch, finished_run):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)  # an --out '' that slipped through would write here
    argv = [a.replace("{sandbox}", str(sandbox)).replace("{run}", str(finished_run)) for a in argv]
    if argv[0] == "train":
        argv = ["train"] + _merge(TINY, argv[1:])  # the row's own options win over TINY's
    run_before, sandbox_before = snapshot(finished_run), snapshot(sandbox)
    status, err = one_line_error(capsys, argv)
    assert status == 2, err
    assert err.startswith(f"linmaml {argv[0]}: error: "), err
    assert expected in err, err
    assert snapshot(sandbox) == sandbox_before
    assert snapshot(finished_run) == run_before


def _merge(base: list, row: list) -> list:
    """``base`` options without those the row gives, then the row's (flag, value) pairs."""
    pairs, i = [], 0
    while i < len(base):
        takes_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        pairs.append(base[i:i + 2] if takes_value else base[i:i + 1])
        i += 2 if takes_value else 1
    given = set(row[0::2])
    return [x for pair in pairs if pair[0] not in given for x in pair] + list(row)


# -- the maxima are honest --------------------------------------------------------------------------


def test_each_maximum_is_accepted_and_one_beyond_refused():
    bounds = {"outer_lr": config_module.OUTER_LR_MAX, "hidden": config_module.WIDTH_MAX,
              "meta_batch": config_module.META_BATCH_MAX, "tasks_per_chunk": config_module.META_BATCH_MAX,
              "val_tasks": config_module.EVAL_TASKS_MAX, "steps": config_module.STEPS_MAX,
              "test_steps": config_module.STEPS_MAX, "layers": config_module.DEPTH_MAX,
              "linnet": config_module.DEPTH_MAX, "seed": 2**63 - 1}
    for name, maximum in bounds.items():
        assert getattr(TrainConfig(**{name: maximum}), name) == maximum
        beyond = maximum * (1 + 1e-9) if isinstance(maximum, float) else maximum + 1
        with pytest.raises(ValueError, match=f"^{name}: "):
            TrainConfig(**{name: beyond})
    assert TrainConfig(linnet=1, linnet_width=config_module.WIDTH_MAX).linnet_width == config_module.WIDTH_MAX
    with pytest.raises(ValueError, match="^linnet_width: "):
        TrainConfig(linnet=1, linnet_width=config_module.WIDTH_MAX + 1)


def test_largest_seed_reaches_torch_and_numpy():
    """Every consumer of the seed takes 2**63 - 1 (the bound is not narrower than needed for them)."""
    seed = 2**63 - 1
    torch.manual_seed(seed)
    np.random.default_rng([seed, 0, 0]).random()
    assert 0 <= iteration_seed(seed, 10**6) < 2**63


def test_outer_lr_bound_sits_below_adams_float32_overflow():
    """Why 1e38 must be refused: torch's Adam raises on its own step at that rate in float32
    (lr / (1 - beta1) exceeds float32's 3.4e38), while the maximum takes a finite step."""
    def adam_step(lr):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.Adam([weight], lr=lr)
        weight.grad = torch.ones(3)
        optimizer.step()
        return weight.detach()

    with pytest.raises(RuntimeError, match="overflow"):
        adam_step(1e38)
    # Adam's first step moves each weight by lr (its normalised gradient is 1)
    assert torch.allclose(adam_step(config_module.OUTER_LR_MAX), torch.full((3,), 1 - config_module.OUTER_LR_MAX))


def test_check_task_fits_names_the_setting_at_each_boundary():
    split = synthetic_splits(("train",))["train"]
    check_task_fits(split, CLASSES, 1, EXAMPLES - 1)  # the largest task the split can supply
    check_task_fits(split, 2, EXAMPLES - 1, 1)
    cases = [((CLASSES + 1, 1, 1, "query"), "ways"), ((2, EXAMPLES, 1, "query"), "shots"),
             ((2, 1, EXAMPLES, "query"), "query"), ((2, 5, EXAMPLES - 4, "test_query"), "test_query")]
    for args, name in cases:
        with pytest.raises(ValueError, match=f"^{name}: expected at most "):
            check_task_fits(split, *args)


# -- out of memory ----------------------------------------------------------------------------------


def _allocator_failure(self, t):
    # What torch's CPU allocator raises (a RuntimeError with no class of its own).
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 1600000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_out_of_memory_is_one_line_and_leaves_no_half_made_folder(tmp_path, capsys, monkeypatch):
    """The allocator fails in iteration 1, after config.json and metrics.jsonl were opened: the
    command says what to lower and the folder it created is gone."""
    monkeypatch.setattr(Trainer, "_iteration", _allocator_failure)
    out = tmp_path / "run"
    status, err = one_line_error(capsys, ["train", "--out", str(out)] + TINY)
    assert status == 2
    # the settings in play are named as flags (the model's size among them), none singled out as the cause
    assert "linmaml train: error: out of memory: the model and an iteration with these settings" in err
    assert all(flag in err for flag in ("--meta-batch", "--layers", "--hidden", "--query", "--batching"))
    assert "--linnet" not in err  # not in play: this run has no LinNet layers
    assert not out.exists()


def test_out_of_memory_in_the_library_is_memory_error_and_keeps_an_existing_folder_clean(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_iteration", _allocator_failure)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MemoryError, match=r"out of memory: .*meta_batch=1, .*hidden=2"):
        train(dict(ways=3, layers=1, hidden=2, meta_batch=1, query=2, test_query=2, val_tasks=2, iterations=1), out,
              splits=synthetic_splits(("train", "val")), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_run_that_completed_an_iteration_keeps_its_files_on_failure(tmp_path, monkeypatch):
    """Only an unstarted run is discarded: a failure after the first checkpoint leaves the run resumable."""
    original = Trainer._iteration

    def fail_second(self, t):
        if t == 2:
            _allocator_failure(self, t)
        return original(self, t)

    monkeypatch.setattr(Trainer, "_iteration", fail_second)
    out = tmp_path / "run"
    with pytest.raises(MemoryError):
        train(dict(ways=3, layers=1, hidden=2, meta_batch=1, query=2, test_query=2, val_tasks=2, iterations=3,
                   checkpoint_every=1), out, splits=synthetic_splits(("train", "val")), progress=False)
    assert {"config.json", "metrics.jsonl", "last.pt"} <= {p.name for p in out.iterdir()}


# -- ~ is expanded, and the path used is printed ---------------------------------------------------


def test_tilde_after_equals_is_expanded_and_printed(tmp_path, capsys, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["train", "--out=~/x"] + TINY) == 0
    out = capsys.readouterr().out
    assert (home / "x" / "metrics.jsonl").is_file()
    assert not (cwd / "~").exists() and list(cwd.iterdir()) == []
    assert f"run in {home / 'x'}" in out
    assert main(["evaluate", "~/x", "--tasks", "2", "--query", "2", "--quiet"]) == 0
    assert f"checkpoint {home / 'x' / 'best.pt'}" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []
    assert os.path.expanduser("~") == str(home)
