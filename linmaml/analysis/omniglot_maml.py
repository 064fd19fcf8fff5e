"""The published MAML numbers on Omniglot, on a CPU: score trained runs and record them with their curves.

Finn et al. (2017) report second-order MAML on Omniglot 5-way 1-shot at 98.7 ± 0.4 % and 5-way 5-shot
at 99.9 ± 0.1 %. This module does not train (the runs are ordinary ``linmaml train`` runs, an hour
each at most); it scores each given run folder's ``best.pt`` on the 600 fixed test tasks
(:func:`linmaml.benchmarks.evaluate.evaluate_checkpoint`), reads its training time and validation
curve from ``metrics.jsonl``, and writes

- ``omniglot_maml.json``: per run ``accuracy`` and ``ci95`` (percent, 95 % Student-t over tasks),
  ``train_seconds`` (wall time of training, validation included, from the run's own log),
  ``iterations``, ``best_iteration``, the ``command`` that trained it (rebuilt from the run's
  settings), the published number beside it, and the ``machine``;
- ``omniglot_maml.png``: validation accuracy (± 95 % CI) against wall time, with the published
  numbers as dashed lines (± their CI), and the training accuracy, for every run
  (:func:`linmaml.plots.training.plot_runs`).

    python analysis/omniglot_maml.py runs/omniglot-maml-1shot runs/omniglot-maml-5shot --out figures

Runs are *added* to the record already in ``--out`` (a run of the same name is replaced; ``--fresh``
starts a new record), so the table keeps every run ever scored even when its folder is gone, and
``groups`` summarises the runs of one recipe (every setting but the seed): the seeds, the mean test
accuracy with a 95 % Student-t interval over seeds (the spread of training, not of the test tasks),
and the mean training time. The figure draws the runs given on the command line (their folders hold
the training curves); every recorded run's validation curve is in the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

PUBLISHED = {1: (98.7, 0.4), 5: (99.9, 0.1)}  # Finn et al. 2017, Omniglot 5-way, percent ± 95 % CI
#: TrainConfig fields left out of the rebuilt command when they hold their defaults.
_COMMAND_FIELDS = ("benchmark", "ways", "shots", "algo", "transform", "layers", "hidden", "steps", "test_steps",
                   "inner_lr", "outer_lr", "outer_lr_schedule", "meta_batch", "query", "iterations", "val_every",
                   "val_tasks", "seed", "batching")


def command_of(config: dict, out: str, threads: int | None) -> str:
    """The ``linmaml train`` command that gives a run with ``config`` (non-default settings only)."""
    from linmaml.benchmarks.config import TrainConfig

    default = TrainConfig().to_dict()
    words = ["linmaml train"]
    for name in _COMMAND_FIELDS:
        if name in ("benchmark", "ways", "shots", "algo") or config.get(name) != default.get(name):
            words.append(f"--{name.replace('_', '-')} {config[name]}")
    words.append(f"--out {out}")
    if threads:
        words.append(f"--threads {threads}")
    return " ".join(words)


def score_run(folder: pathlib.Path, *, tasks: int, data_root=None, threads: int | None = 1) -> dict:
    from linmaml.analysis.depth_width import machine
    from linmaml.benchmarks.evaluate import evaluate_checkpoint

    from linmaml import _io

    config = _io.load_json(folder / "config.json")["config"]  # bounded regular file, never a FIFO
    scored = evaluate_checkpoint(folder, tasks=tasks, data_root=data_root, device="cpu")
    published = PUBLISHED.get(config["shots"]) if config["ways"] == 5 else None
    records = [_io.loads_json(line, f"{folder / 'metrics.jsonl'} line {n}")
               for n, line in enumerate(_io.read_text(folder / "metrics.jsonl").splitlines(), start=1) if line.strip()]
    return {
        "run": folder.name,
        "ways": config["ways"], "shots": config["shots"],
        "accuracy": 100 * scored["accuracy"], "ci95": 100 * scored["ci95"],
        "tasks": scored["tasks"], "test_steps": scored["settings"]["steps"],
        "train_seconds": records[-1]["elapsed"], "iterations": records[-1]["iteration"],
        "best_iteration": scored["iteration"],
        "published": {"accuracy": published[0], "ci95": published[1], "source": "Finn et al. 2017"} if published
        else None,
        "ci_reaches_published_interval": (100 * (scored["accuracy"] + scored["ci95"]) >= published[0] - published[1])
        if published else None,
        "command": command_of(config, str(folder), threads),
        "machine": machine(),
        "settings": config,
    }


def published_references(results: list[dict]) -> list[dict]:
    """The published numbers to draw beside the runs' validation curves: one dashed line (± its CI)
    per published setting, in the colour of the first run of that setting."""
    references, seen = [], set()
    for r in results:
        pub = r.get("published")
        if not pub or (r["ways"], r["shots"]) in seen:
            continue
        seen.add((r["ways"], r["shots"]))
        references.append({"label": f"published {r['ways']}-way {r['shots']}-shot: {pub['accuracy']} ± {pub['ci95']} % "
                                    f"({pub['source']})", "accuracy": pub["accuracy"], "ci95": pub["ci95"],
                           "run": r["run"]})
    return references


def recipe_key(settings: dict) -> str:
    """The recipe of a run: its settings without the seed (runs that differ only in the seed are
    seeds of one recipe), as a canonical JSON string."""
    return json.dumps({k: v for k, v in settings.items() if k != "seed"}, sort_keys=True)


def seed_groups(results: list[dict]) -> list[dict]:
    """One entry per recipe: ``runs``, ``seeds``, ``mean_accuracy`` and ``ci95_over_seeds`` (95 %
    Student-t over the seeds' test accuracies; None for one seed), ``mean_train_minutes``."""
    from scipy import stats

    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(recipe_key(r["settings"]), []).append(r)
    summary = []
    for runs in groups.values():
        acc = [r["accuracy"] for r in runs]
        n, mean = len(acc), sum(acc) / len(acc)
        half = None
        if n > 1:
            sd = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1))
            half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
        first = runs[0]
        summary.append({"ways": first["ways"], "shots": first["shots"], "algo": first["settings"].get("algo"),
                        "iterations": first["settings"].get("iterations"), "runs": [r["run"] for r in runs],
                        "seeds": [r["settings"].get("seed") for r in runs], "mean_accuracy": mean,
                        "ci95_over_seeds": half, "accuracies": acc,
                        "mean_train_minutes": sum(r["train_seconds"] for r in runs) / n / 60,
                        "published": first.get("published")})
    return summary


def merged(previous: list[dict], new: list[dict]) -> list[dict]:
    """``previous`` runs with those of the same name replaced by ``new`` ones, new names appended."""
    by_name = {r["run"]: r for r in new}
    kept = [by_name.pop(r["run"], r) for r in previous]
    return kept + [r for r in new if r["run"] in by_name]


def main(argv=None) -> dict:
    from linmaml import _io
    from linmaml.benchmarks.run import read_runs
    from linmaml.plots.training import plot_runs

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="run folders of linmaml train")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("figures"), help="output folder")
    parser.add_argument("--tasks", type=int, default=600, help="fixed test tasks (default 600)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new record instead of adding the runs to the one in --out")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    results = [score_run(folder, tasks=args.tasks, data_root=args.data_root) for folder in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    drawn = plot_runs(read_runs(args.runs), args.out / "omniglot_maml.png", x="time",
                      references=published_references(results))
    for result in results:
        curve = drawn["runs"].get(result["run"], {})
        result["validation"] = {"wall_time": curve.get("val_x"), "wall_time_axis": drawn["x_label"],
                                "accuracy": curve.get("val_accuracy"), "ci95": curve.get("val_ci95")}
    previous = []
    if not args.fresh and (args.out / "omniglot_maml.json").is_file():
        previous = json.loads((args.out / "omniglot_maml.json").read_text(encoding="utf-8")).get("runs", [])
    everything = merged(previous, results)
    record = {"figure": "omniglot_maml", "runs": everything, "groups": seed_groups(everything)}
    _io.atomic_write_json(args.out / "omniglot_maml.json", record)
    for r in results:
        pub = r["published"]
        print(f"{r['run']}: {r['ways']}-way {r['shots']}-shot {r['accuracy']:.2f} % ± {r['ci95']:.2f} % "
              f"({r['tasks']} test tasks) after {r['iterations']} iterations, {r['train_seconds'] / 60:.1f} min"
              + (f"; published {pub['accuracy']} ± {pub['ci95']}" if pub else ""))
    return record


if __name__ == "__main__":
    main()
