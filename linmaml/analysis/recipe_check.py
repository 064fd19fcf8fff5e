"""Should a recipe change become the default? Full-length runs of both, on the validation split.

:mod:`linmaml.analysis.recipe_options` screens options with short runs of one seed; a default changes
only when full-length runs say so. This check takes finished ``linmaml train`` folders of both recipes
(``--baseline``: the current recipe's runs, ``--candidate``: the proposed one's, any number of
training seeds each) and scores every run's ``best.pt`` (chosen by its own 200 validation tasks, task
seed 0) on ``--tasks`` (default 600) *other* fixed validation tasks (task seed ``--task-seed``,
default 1; 0 is refused), 15 query images per class, each run's own test steps, keeping every task's
accuracy (:func:`linmaml.analysis.omniglot_maml.score_tasks_of_run`). The test split is not touched:
its 600 tasks are scored once per final run, by :mod:`linmaml.analysis.omniglot_maml`.

The comparison (percent points, candidate − baseline):

- ``paired``: the training seeds both recipes ran, seed ``s`` of the candidate paired with seed ``s``
  of the baseline, on the same tasks: the mean difference with the crossed interval over seeds *and*
  tasks (:func:`linmaml.analysis.depth_width_stats.paired_comparison`; with S seed pairs its
  Student-t quantile has S − 1 degrees of freedom, 12.7 for two pairs: what few seeds can say), each
  pair's mean with its interval over the tasks alone, and the tasks won, tied and lost;
- ``groups``: each recipe's mean accuracy over all its seeds with its crossed interval
  (:func:`linmaml.analysis.depth_width_stats.crossed_mean_ci`; one seed: the interval over tasks);
- ``at_candidates_time``: the cost side. For every seed pair, each run's best accuracy on its own
  in-training validation tasks (the same 200 tasks in both when both validated on the same count)
  among the validations logged by the candidate's whole training time: the baseline as it stood when
  the candidate had finished. It reads equal *wall* time, which is equal cost only for runs trained on
  the same machine at a similar load, one thread each (each run's load average at its validations is
  recorded beside it, when its log has one); otherwise compare the median steps;
- ``verdict``: ``"unfinished"`` while a run has not trained all its iterations (no verdict on a run
  cut short), ``"undecided"`` with one seed pair (its interval is over the tasks alone); else
  ``"candidate"`` when the paired crossed interval lies above 0, ``"baseline"`` when it lies below 0,
  ``"undecided"`` otherwise. Accuracy alone: the cost is reported beside it (training seconds, median
  steps, loads), not folded in, since runs trained at different loads cannot be compared by their
  wall times.

A run already scored in the ``--out`` record with the same ``best.pt`` (size and modification time),
tasks and task seed is not scored again.

    python analysis/recipe_check.py --baseline runs/o5w1s-s0 runs/o5w1s-s1 runs/o5w1s-s2 \\
        --candidate runs/o5w1s-bnws-s0 runs/o5w1s-bnws-s1 runs/o5w1s-bnws-s2 --name bn_per_step_check --out figures

writes ``<out>/<name>.json`` (default ``recipe_check.json``) and prints a table.
"""
from __future__ import annotations

import pathlib
import shlex
import statistics
import sys
import time

import numpy as np
import torch

from linmaml import _io, _validate
from linmaml.analysis._common import ArgumentParser, report_error
from linmaml.analysis.depth_width_stats import crossed_mean_ci, paired_comparison
from linmaml.analysis.omniglot_maml import (command_of, score_tasks_of_run, scoring_machine, step_seconds,
                                            training_load)
from linmaml.analysis.recipe_options import DEFAULTS, SCORE_QUERY, scoring_arguments
from linmaml.benchmarks.run import read_curves
from linmaml.benchmarks.run_files import BEST, CONFIG, METRICS
from linmaml.benchmarks.settings import TrainConfig
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError, renamed
from linmaml.intervals import mean_ci
from linmaml.plots.figure import default_out

NAME = "recipe_check"
#: What must agree between the two recipes for their runs to be scored on the same tasks.
SAME_TASKS = ("benchmark", "ways", "shots", "class_split")


def _config(folder: pathlib.Path, group: str) -> dict:
    """The run's settings from its ``config.json``; an ``ArgumentError`` naming ``group`` when the
    folder holds no finished-enough run (no ``config.json`` or no ``best.pt``)."""
    if not folder.is_dir():
        raise ArgumentError(group, f"{folder} is not a run folder")
    if not (folder / CONFIG).is_file() or not (folder / BEST).is_file():
        raise ArgumentError(group, f"{folder} holds no {CONFIG} and {BEST} (a run that has validated)")
    return _io.load_json(folder / CONFIG)["config"]


def _task_fields(config: dict) -> dict:
    """The settings that fix the scored tasks (:data:`SAME_TASKS`); one a run recorded before the
    setting existed ran with its default (e.g. Omniglot's standard class split)."""
    default = TrainConfig().to_dict()
    return {k: config.get(k, default[k]) for k in SAME_TASKS}


def _fingerprint(folder: pathlib.Path) -> list[int]:
    stat = (folder / BEST).stat()
    return [stat.st_size, stat.st_mtime_ns]


def score(folder: pathlib.Path, group: str, config: dict, *, tasks: int, task_seed: int, threads: int,
          cached: dict | None, splits=None, data_root=None) -> dict:
    """One run's record: its seed, command, scores of ``best.pt`` on the validation tasks (percent;
    ``task_accuracies`` as fractions in task order), training time, load and validation curve.
    ``cached``: the same folder's record from an earlier check, reused when it scored this very
    ``best.pt`` on these tasks."""
    key = {"fingerprint": _fingerprint(folder), "tasks": tasks, "task_seed": task_seed}
    if cached and all(cached.get(k) == v for k, v in key.items()) and cached.get("task_accuracies"):
        scored_now = False
        accuracy, ci95 = cached["accuracy"], cached["ci95"]
        best_iteration, test_steps, accuracies = cached["best_iteration"], cached["test_steps"], cached["task_accuracies"]
    else:
        scored_now = True
        summary, accuracies = score_tasks_of_run(folder, tasks=tasks, data_root=data_root, split="val",
                                                 task_seed=task_seed, splits=splits)
        accuracy, ci95 = 100 * summary["accuracy"], 100 * summary["ci95"]
        best_iteration, test_steps = summary["iteration"], summary["test_steps"]
    lines = [_io.loads_json(line, f"{folder / METRICS} line {n}")
             for n, line in enumerate(_io.read_text(folder / METRICS).splitlines(), start=1) if line.strip()]
    steps = step_seconds(lines)
    return {"group": group, "folder": str(folder), "seed": config["seed"], **key, "scored_now": scored_now,
            "command": command_of(config, str(folder), threads), "accuracy": accuracy, "ci95": ci95,
            "best_iteration": best_iteration, "test_steps": test_steps,
            "iterations": int(lines[-1]["iteration"]), "planned_iterations": config["iterations"],
            "train_seconds": float(lines[-1]["elapsed"]),
            "median_step_seconds": statistics.median(steps) if steps else None,
            "load_average_while_training": training_load(lines),
            "val_tasks": config.get("val_tasks"), "validation": read_curves(folder).validations(),
            "settings": config, "task_accuracies": accuracies}


def best_by(curve: list[dict], seconds: float) -> dict | None:
    """The best validation (earliest on ties, as ``best.pt`` keeps) among those logged by ``seconds``
    of training; None when none was."""
    best = None
    for point in curve:
        if point["elapsed"] <= seconds and (best is None or point["accuracy"] > best["accuracy"]):
            best = point
    return best


def _group(runs: list[dict]) -> dict:
    x = np.array([r["task_accuracies"] for r in runs], dtype=float) * 100
    if len(runs) == 1:
        mean, half = mean_ci(x[0], 0.95, normal=True)
        interval = {"mean": float(mean), "half_width": float(half), "over": "tasks"}
    else:
        ci = crossed_mean_ci(x)
        interval = {"mean": ci["mean"], "half_width": ci["half_width"], "over": "seeds and tasks"}
    return {"seeds": [r["seed"] for r in runs], **interval,
            "median_train_seconds": statistics.median(r["train_seconds"] for r in runs)}


def compare(baseline: list[dict], candidate: list[dict]) -> dict:
    """The paired comparison over the common seeds, each group's mean, the equal-time reading and the
    verdict (module docstring), all in percent points."""
    by_seed = {r["seed"]: r for r in baseline}
    pairs = [(c, by_seed[c["seed"]]) for c in candidate if c["seed"] in by_seed]
    groups = {"baseline": _group(baseline), "candidate": _group(candidate)}
    result = {"groups": groups, "paired": None, "at_candidates_time": [], "verdict": "undecided",
              "why": "no training seed ran with both recipes: nothing is paired"}
    if not pairs:
        return result
    a = np.array([c["task_accuracies"] for c, _ in pairs], dtype=float) * 100
    b = np.array([r["task_accuracies"] for _, r in pairs], dtype=float) * 100
    if len(pairs) > 1:
        paired = paired_comparison(a, b)
        crossed = paired["crossed"]
        paired["interval"] = {"low": crossed["low"], "high": crossed["high"], "half_width": crossed["half_width"],
                              "over": f"seeds and tasks (t with {crossed['dof']} dof)"}
    else:
        paired = _one_pair(a, b)
    paired["seeds"] = [c["seed"] for c, _ in pairs]
    result["paired"] = paired
    for c, r in pairs:
        seconds = c["train_seconds"]
        result["at_candidates_time"].append({
            "seed": c["seed"], "seconds": seconds, "baseline_train_seconds": r["train_seconds"],
            "same_validation_tasks": c["val_tasks"] == r["val_tasks"],
            "candidate": best_by(c["validation"], seconds), "baseline": best_by(r["validation"], seconds)})
    low, high = paired["interval"]["low"], paired["interval"]["high"]
    unfinished = [f"{r['group']} seed {r['seed']} ({r['iterations']} of {r['planned_iterations']})"
                  for r in (*baseline, *candidate) if r["iterations"] < r["planned_iterations"]]
    if unfinished:  # a run cut short is not the recipe: no verdict on it
        result["verdict"] = "unfinished"
        result["why"] = f"not every run has trained its iterations: {', '.join(unfinished)}"
        return result
    if len(pairs) < 2:  # an interval over the tasks alone says nothing of a new training seed
        result["why"] = (f"one seed pair ({low:+.2f} to {high:+.2f} points over the tasks): no training seed's "
                         "variation in it; two pairs or more decide")
        return result
    if low > 0:
        result["verdict"], result["why"] = "candidate", f"the paired interval lies above 0 ({low:+.2f} to {high:+.2f} points)"
    elif high < 0:
        result["verdict"], result["why"] = "baseline", f"the paired interval lies below 0 ({low:+.2f} to {high:+.2f} points)"
    else:
        result["why"] = f"the paired interval holds 0 ({low:+.2f} to {high:+.2f} points)"
    return result


def _one_pair(a: np.ndarray, b: np.ndarray) -> dict:
    """One seed pair: the mean difference over the tasks with its interval over the tasks alone (no
    seed variation can be estimated from one pair: the record says so in ``interval["over"]``)."""
    d = a[0] - b[0]
    mean, half = mean_ci(d, 0.95, normal=True)
    return {"mean": float(d.mean()), "interval": {"low": float(mean - half), "high": float(mean + half),
                                                  "half_width": float(half), "over": "tasks only (one seed pair)"},
            "per_seed": [{"mean": float(mean), "ci95_tasks": float(half)}], "tasks": int(d.size),
            "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum())}


def run(out_dir=None, *, baseline, candidate, name: str = NAME, tasks: int = DEFAULTS["tasks"],
        task_seed: int = DEFAULTS["task_seed"], threads: int = DEFAULTS["threads"], splits=None, data_root=None,
        command_line: str | None = None) -> dict:
    """Score both groups of runs, compare them, write ``<out_dir>/<name>.json``; its dict.
    ``splits`` may supply ``{"val": FewShotSplit}`` instead of reading ``data_root``."""
    tasks = _validate.integer(tasks, "tasks", minimum=2)
    task_seed = _validate.integer(task_seed, "task_seed", minimum=1)  # 0: the tasks that chose best.pt
    threads = _validate.integer(threads, "threads", minimum=1)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ArgumentError("name", f"expected a file name without a folder, got {name!r}")
    folders = {"baseline": [pathlib.Path(f) for f in baseline], "candidate": [pathlib.Path(f) for f in candidate]}
    configs = {}
    for group, paths in folders.items():
        if not paths:
            raise ArgumentError(group, "name at least one run folder")
        seeds = []
        for folder in paths:
            configs[folder] = _config(folder, group)
            seeds.append(configs[folder]["seed"])
        if len(set(seeds)) != len(seeds):
            raise ArgumentError(group, f"two runs of the same training seed ({sorted(seeds)}): one run per seed")
    if set(folders["baseline"]) & set(folders["candidate"]):
        raise ArgumentError("candidate", "a run folder is in both groups")
    first = _task_fields(configs[folders["baseline"][0]])
    for group, paths in folders.items():
        for folder in paths:
            differs = [k for k, v in _task_fields(configs[folder]).items() if v != first[k]]
            if differs:
                raise ArgumentError(group, f"{folder} differs from {folders['baseline'][0]} in {', '.join(differs)}: "
                                           "not scored on the same tasks")
    out_dir = pathlib.Path(out_dir) if out_dir is not None else default_out()
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    torch.set_num_threads(threads)
    began = time.perf_counter()
    previous = _previous(out_dir / f"{name}.json")
    runs = {group: [score(f, group, configs[f], tasks=tasks, task_seed=task_seed, threads=threads,
                          cached=previous.get(str(f)), splits=splits, data_root=data_root) for f in paths]
            for group, paths in folders.items()}
    record = {"figure": name, "command": command_line or "",
              "settings": {"split": "val", "tasks": tasks, "task_seed": task_seed, "test_query": SCORE_QUERY,
                           "threads": threads,
                           "selection": "each run's best validation (best.pt, its own validation tasks, task seed 0), "
                                        f"scored on {tasks} other validation tasks (task seed {task_seed})"},
              "machine": scoring_machine(), **runs, "comparison": compare(runs["baseline"], runs["candidate"]),
              "seconds": round(time.perf_counter() - began, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(out_dir / f"{name}.json", record)
    return record


def _previous(path: pathlib.Path) -> dict:
    """The earlier record's runs by folder (for reuse of their scores); empty when there is none or it
    cannot be read (it is then replaced, not merged)."""
    if not path.is_file():
        return {}
    try:
        old = _io.load_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict):
        return {}
    return {r["folder"]: r for group in ("baseline", "candidate") for r in old.get(group, []) if isinstance(r, dict)}


def table(record: dict) -> list[str]:
    """The compact text table: one line per run, then the comparison."""
    s, c = record["settings"], record["comparison"]
    lines = [f"validation split only: best.pt of each run on {s['tasks']} validation tasks (task seed {s['task_seed']})",
             f"{'group':<10} {'seed':>4} {'iters':>12} {'best':>6} {'val acc %':>15} {'train min':>9} {'s/iter':>7}  folder"]
    for group in ("baseline", "candidate"):
        for r in record[group]:
            step = r["median_step_seconds"]
            iters = f"{r['iterations']}/{r['planned_iterations']}"
            lines.append(f"{group:<10} {r['seed']:>4} {iters:>12} {r['best_iteration']:>6} "
                         f"{r['accuracy']:>7.2f} ± {r['ci95']:.2f} {r['train_seconds'] / 60:>9.1f} "
                         f"{(f'{step:.3f}' if step is not None else '-'):>7}  {r['folder']}")
    for group in ("baseline", "candidate"):
        g = c["groups"][group]
        lines.append(f"{group} mean over seeds {g['seeds']}: {g['mean']:.2f} ± {g['half_width']:.2f} ({g['over']})")
    if c["paired"]:
        p = c["paired"]
        lines.append(f"candidate - baseline, seeds {p['seeds']} paired task by task: {p['mean']:+.2f} points, "
                     f"interval {p['interval']['low']:+.2f} to {p['interval']['high']:+.2f} ({p['interval']['over']}); "
                     f"tasks won {p['wins']}, tied {p['ties']}, lost {p['losses']}")
    for row in c["at_candidates_time"]:
        cand, base = row["candidate"], row["baseline"]
        lines.append(f"seed {row['seed']} by {row['seconds'] / 60:.1f} min (the candidate's training): best validation "
                     f"candidate {cand['accuracy'] if cand else float('nan'):.2f}, baseline "
                     f"{base['accuracy'] if base else float('nan'):.2f} (its own validation tasks)")
    lines.append(f"verdict: {c['verdict']} ({c['why']})")
    return lines


#: The command line's flag of each argument :func:`run` names in its errors.
_FLAGS = {name: "--" + name.replace("_", "-") for name in
          ("baseline", "candidate", "name", "tasks", "task_seed", "threads", "out")}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser(prog=NAME, description=__doc__.strip().splitlines()[0])
    parser.add_argument("--baseline", nargs="+", required=True, type=pathlib.Path, metavar="RUN",
                        help="run folders of the current recipe (one per training seed)")
    parser.add_argument("--candidate", nargs="+", required=True, type=pathlib.Path, metavar="RUN",
                        help="run folders of the proposed recipe (one per training seed)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder (default: figures/)")
    parser.add_argument("--name", default=NAME, help=f"the record's file name, without .json (default {NAME})")
    scoring_arguments(parser, "run")
    args = parser.parse_args(argv)
    command_line = shlex.join(["python", "analysis/recipe_check.py", *argv])
    try:
        record = run(args.out, baseline=args.baseline, candidate=args.candidate, name=args.name, tasks=args.tasks,
                     task_seed=args.task_seed, threads=args.threads, data_root=args.data_root,
                     command_line=command_line)
    except (ValueError, TypeError, OSError) as error:
        return report_error(NAME, renamed(error, _FLAGS))
    print("\n".join(table(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
