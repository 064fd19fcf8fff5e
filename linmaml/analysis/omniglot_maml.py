"""The published MAML numbers on Omniglot, on a CPU: score trained runs and record them with their curves.

Finn et al. (2017) report second-order MAML on Omniglot 5-way 1-shot at 98.7 ± 0.4 % and 5-way 5-shot
at 99.9 ± 0.1 %. This module does not train (the runs are ordinary ``linmaml train`` runs, an hour
each at most); it scores each given run folder's ``best.pt`` on the 600 fixed test tasks of
``linmaml evaluate`` (:func:`score_tasks_of_run`: task seed 0, 15 query images per class, the run's
test steps), reads its training time and validation curve from ``metrics.jsonl``, and writes

- ``omniglot_maml.json``: per run ``accuracy`` and ``ci95`` (percent, 1.96·s/√n over tasks),
  ``train_seconds`` (wall time of training, validation included, from the run's own log),
  ``iterations``, ``best_iteration``, the ``command`` that trained it (rebuilt from the run's
  settings), the published number beside it, and the ``machine``;
- with ``--figure NAME.png`` only, ``NAME.png`` in ``--out``: the given runs' validation accuracy
  (± 95 % CI) against wall time, with the published numbers as dashed lines (± their CI), and their
  training loss and accuracy (:func:`linmaml.plots.training.plot_runs`). Without it nothing is drawn,
  so scoring one new run never redraws another figure (the README's table figure is drawn by naming
  its seven runs and ``--figure omniglot_maml.png``).

    python analysis/omniglot_maml.py runs/omniglot-maml-1shot runs/omniglot-maml-5shot --out figures

Runs are *added* to the record already in ``--out`` (a run of the same name is replaced; ``--fresh``
starts a new record), so the table keeps every run ever scored even when its folder is gone, and
``groups`` summarises the runs of one recipe (every setting but the seed): the seeds, the mean test
accuracy with a 95 % Student-t interval over seeds (the spread of training, not of the test tasks),
and the mean training time. Every recorded run's ``validation`` curve is in the JSON, read from its
``metrics.jsonl`` (:meth:`linmaml.benchmarks.run.RunCurves.validations`: one
``{"iteration", "elapsed", "accuracy", "ci95"}`` per validation, wall seconds since the run began,
percent), and ``machine`` says where it was scored (``load_average_when_scored`` is
the load while scoring, not while training).

Each run also records its ``algo``, ``seconds_per_iteration`` (training seconds over iterations,
validation included), ``median_step_seconds`` (the median wall time of one iteration that did
not validate), ``load_average_while_training`` (:func:`training_load`), the published number of
its own algorithm (:data:`PUBLISHED_BY_ALGO`), and
``task_accuracies``: the accuracy on each of the fixed test tasks, in task order. Since every run is
scored on the same tasks (task seed 0), ``--reference RUN`` adds ``paired``: for every recorded run
scored on the same tasks, the mean per-task accuracy difference to RUN (points) with its 95 %
interval (1.96·s/√n over the per-task differences, the convention of the accuracies) and the tasks
it wins, ties and loses. ``--pair RUN REFERENCE`` (repeatable) adds one such comparison to ``pairs``,
kept in the record and recomputed from it on every call (a recorded pair whose runs were since scored
on other tasks is dropped, with a line saying so); with no run folders given, the record is only
re-paired (nothing is scored or drawn).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import shlex

import torch
from scipy import stats

from linmaml import _io
from linmaml.analysis.depth_width import machine
from linmaml.benchmarks.config import TrainConfig
from linmaml.benchmarks.settings import DEFAULT_FILTERS, DEFAULT_POOL, IDENTITY, declared, flag
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.run import Run, read_curves, read_runs
from linmaml.benchmarks.run_files import CONFIG, METRICS
from linmaml.benchmarks.scoring import score_tasks, summarize
from linmaml.errors import ArgumentError
from linmaml.plots.training import plot_runs

#: Published Omniglot accuracies on the random character split (percent; ci95 None where the paper gives
#: none) by (algo, ways, shots), each measured in its paper's setting and budget, not this module's. Each
#: was checked against at least one public copy of its paper's table; a cell no copy confirmed is left
#: out, with a comment.
PUBLISHED_BY_ALGO = {
    ("maml", 5, 1): {"accuracy": 98.7, "ci95": 0.4, "source": "Finn et al. 2017"},
    ("maml", 5, 5): {"accuracy": 99.9, "ci95": 0.1, "source": "Finn et al. 2017"},
    ("maml", 20, 1): {"accuracy": 95.8, "ci95": 0.3, "source": "Finn et al. 2017"},
    ("maml", 20, 5): {"accuracy": 98.9, "ci95": 0.2, "source": "Finn et al. 2017"},
    # Finn et al. 2017 report first-order MAML on mini-ImageNet only (Table 1 has no first-order Omniglot
    # row, 5-way or 20-way); on Omniglot it is Nichol et al.'s "1st-order MAML + transduction" row (their
    # Table 2), which Rajeswaran et al. 2019's Table 2 repeats at all four settings, citing Nichol et al.
    # in its caption.
    ("fomaml", 5, 1): {"accuracy": 98.3, "ci95": 0.5, "source": "Nichol et al. 2018 (first-order MAML, transductive)"},
    ("fomaml", 5, 5): {"accuracy": 99.2, "ci95": 0.2, "source": "Nichol et al. 2018 (first-order MAML, transductive)"},
    ("fomaml", 20, 1): {"accuracy": 89.4, "ci95": 0.5, "source": "Nichol et al. 2018 (first-order MAML, transductive)"},
    ("fomaml", 20, 5): {"accuracy": 97.9, "ci95": 0.1, "source": "Nichol et al. 2018 (first-order MAML, transductive)"},
    # BatchNorm here normalises the query set with its own statistics (transductive), as in Nichol et
    # al.'s transductive row; their non-transductive row is 95.39 ± 0.09 (5-way 1-shot), 98.90 ± 0.10
    # (5-way 5-shot), 88.14 ± 0.15 and 96.65 ± 0.33 (20-way). Numbers of the final version
    # (arXiv 1803.02999 v3, Table 2), the ones Rajeswaran et al. 2019 quote; the first version ("Reptile:
    # a Scalable Metalearning Algorithm", v1) printed others for the same rows (transductive 97.97 ±
    # 0.08, 99.47 ± 0.04, 89.36 ± 0.20, 97.47 ± 0.10). None of the copies read says whether their ± is a
    # 95 % interval over test tasks or a spread over runs (openai/supervised-reptile issue #27 asks,
    # unanswered); it is kept as printed.
    ("reptile", 5, 1): {"accuracy": 97.68, "ci95": 0.04, "source": "Nichol et al. 2018 (transductive)"},
    ("reptile", 5, 5): {"accuracy": 99.48, "ci95": 0.06, "source": "Nichol et al. 2018 (transductive)"},
    ("reptile", 20, 1): {"accuracy": 89.43, "ci95": 0.14, "source": "Nichol et al. 2018 (transductive)"},
    ("reptile", 20, 5): {"accuracy": 97.12, "ci95": 0.32, "source": "Nichol et al. 2018 (transductive)"},
    # Rajeswaran et al. 2019, Table 2: the "iMAML, GD" row (gradient descent on the inner problem, 16
    # steps at 5-way and 25 at 20-way, λ = 2, 5 CG steps for the meta-gradient), the variant linmaml's
    # --algo imaml runs; their "iMAML, Hessian-Free" row (a CG-and-line-search inner solver, not
    # implemented here) is 99.50 ± 0.26, 99.74 ± 0.11, 96.18 ± 0.36, 99.14 ± 0.1. The table does not say
    # what its ± is; it is kept as printed.
    ("imaml", 5, 1): {"accuracy": 99.16, "ci95": 0.35, "source": "Rajeswaran et al. 2019 (iMAML, GD)"},
    ("imaml", 5, 5): {"accuracy": 99.67, "ci95": 0.12, "source": "Rajeswaran et al. 2019 (iMAML, GD)"},
    ("imaml", 20, 1): {"accuracy": 94.46, "ci95": 0.42, "source": "Rajeswaran et al. 2019 (iMAML, GD)"},
    ("imaml", 20, 5): {"accuracy": 98.69, "ci95": 0.1, "source": "Rajeswaran et al. 2019 (iMAML, GD)"},
    # Snell et al. 2017, Table 1, the Euclidean-distance row trained with 60-way episodes; the table
    # gives no ± for Omniglot.
    ("protonet", 5, 1): {"accuracy": 98.8, "ci95": None, "source": "Snell et al. 2017 (60-way training episodes)"},
    ("protonet", 5, 5): {"accuracy": 99.7, "ci95": None, "source": "Snell et al. 2017 (60-way training episodes)"},
    ("protonet", 20, 1): {"accuracy": 96.0, "ci95": None, "source": "Snell et al. 2017 (60-way training episodes)"},
    ("protonet", 20, 5): {"accuracy": 98.9, "ci95": None, "source": "Snell et al. 2017 (60-way training episodes)"},
    # R2-D2 at 5-way 5-shot and 20-way: left out, no copy of Bertinetto et al.'s Omniglot table (ICLR
    # 2019) could be read to confirm the numbers or their ±.
    ("r2d2", 5, 1): {"accuracy": 98.6, "ci95": None, "source": "Bertinetto et al. 2019"},
}
#: Settings always written into a rebuilt command, even at their defaults (they name the task).
_ALWAYS = ("benchmark", "ways", "shots", "algo")


def _defaults_for(config: dict) -> dict:
    """TrainConfig's defaults as this run would resolve them: the ConvNet's filters and down-sampling
    follow the benchmark (Omniglot's 64 and strided convolutions are not CIFAR-FS's 32 and
    max-pooling), and the test steps of a run with a learned transform are its training steps."""
    default = TrainConfig().to_dict()
    benchmark = config.get("benchmark", default["benchmark"])
    default.update(hidden=DEFAULT_FILTERS.get(benchmark, 32), pool=DEFAULT_POOL.get(benchmark, "max"))
    if config.get("transform", default["transform"]) != "none":
        default["test_steps"] = config.get("steps", default["steps"])
    return default


def command_of(config: dict, out: str, threads: int | None) -> str:
    """The ``linmaml train`` command that gives a run with ``config``: every setting that has a
    command-line option and differs from the default it would take in this run (a flag alone for a
    true boolean, a JSON object quoted), in declaration order. A setting missing from ``config`` (a
    run recorded before it existed) ran with its default and is left out."""
    default = _defaults_for(config)
    words = ["linmaml", "train"]
    for name, setting in declared().items():
        if setting.flag is None or name not in config:
            continue  # recorded by the library from the model given, or older than the setting
        value = config[name]
        if name not in _ALWAYS and value == default.get(name):
            continue
        if value is None:
            continue  # "not given": the default's own meaning
        if setting.kind is bool:
            if value:
                words.append(flag(name))
            continue
        words += [flag(name), json.dumps(value, separators=(",", ":")) if setting.kind is dict else str(value)]
    words += ["--out", out]
    if threads:
        words += ["--threads", str(threads)]
    return shlex.join(words)


def published_for(config: dict) -> dict | None:
    """The published number of ``config``'s algorithm at its ways and shots (a copy), None if none
    (or when a transform or LinNet makes the run another method, the run is not on Omniglot — the
    table holds Omniglot's numbers only — or it trained on Lake et al.'s alphabet split: the published
    numbers are on the random character split)."""
    if (config.get("transform", "none") != "none" or config.get("linnet", 0)
            or config.get("benchmark", "omniglot") != "omniglot"
            or config.get("class_split", "standard") != "standard"):
        return None
    published = PUBLISHED_BY_ALGO.get((config.get("algo", "maml"), config.get("ways"), config.get("shots")))
    return dict(published) if published else None


def step_seconds(records: list[dict]) -> list[float]:
    """Wall seconds of each logged iteration that did not validate: the differences of ``elapsed``
    between consecutive ``metrics.jsonl`` records (the first record's own ``elapsed``)."""
    out, previous = [], 0.0
    for record in records:
        if "val_accuracy" not in record:
            out.append(record["elapsed"] - previous)
        previous = record["elapsed"]
    return out


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def score_tasks_of_run(folder: pathlib.Path, *, tasks: int, data_root=None, split: str = "test", task_seed: int = 0,
                       splits=None) -> tuple[dict, list[float]]:
    """``(summary, accuracies)``: the run's ``best.pt`` adapted and scored on each of the ``tasks``
    fixed test tasks of ``linmaml evaluate`` (task seed 0, 15 query images per class, the run's
    ``test_steps``), through the run's own engine, on the CPU; ``summary`` as
    :func:`linmaml.benchmarks.scoring.summarize` plus ``iteration`` and ``test_steps``;
    ``accuracies`` per task in task order (fractions). ``split``/``task_seed`` score other fixed
    tasks instead (e.g. ``"val"`` with a seed other than training's validation seed 0: the
    validation-split study of :mod:`linmaml.analysis.recipe_options`); ``splits`` may supply
    ``{split: FewShotSplit}`` instead of reading ``data_root``."""
    run = Run.open(folder)
    config = run.config
    task_set = run.tasks(split, count=tasks, query=15, seed=task_seed, data_root=data_root, splits=splits)
    accuracies, losses = score_tasks(run.engine(), task_set, steps=config.test_steps, dtype=config.torch_dtype,
                                     channels_last=config.model is None and len(run.image_shape) == 3)
    summary = summarize(accuracies, losses)
    summary.update({"iteration": run.iteration, "test_steps": config.test_steps})
    return summary, [float(a) for a in accuracies]


def training_load(records: list[dict]) -> dict | None:
    """The machine's one-minute load average at the run's validations (``linmaml train`` logs it with
    each since this field exists): ``{"median", "max", "validations"}``, None for a run that logged
    none. Seconds per iteration are read beside it: one thread each, two runs on two cores is load 2."""
    loads = [r["load_average"] for r in records if isinstance(r.get("load_average"), (int, float))]
    if not loads:
        return None
    return {"median": _median(loads), "max": max(loads), "validations": len(loads)}


def scoring_machine() -> dict:
    """:func:`linmaml.analysis.depth_width.machine`, its load average named for when it was read:
    a run is scored after training, often under another load than it trained at."""
    described = machine()
    described["load_average_when_scored"] = described.pop("load_average_at_end")
    return described


def score_run(folder: pathlib.Path, *, tasks: int, data_root=None, threads: int | None = 1) -> dict:
    config = _io.load_json(folder / CONFIG)["config"]  # bounded regular file, never a FIFO
    scored, task_accuracies = score_tasks_of_run(folder, tasks=tasks, data_root=data_root)
    published = published_for(config)
    records = [_io.loads_json(line, f"{folder / METRICS} line {n}")
               for n, line in enumerate(_io.read_text(folder / METRICS).splitlines(), start=1) if line.strip()]
    reach = None
    if published:
        reach = 100 * (scored["accuracy"] + scored["ci95"]) >= published["accuracy"] - (published["ci95"] or 0.0)
    return {
        "run": folder.name,
        "algo": config.get("algo", "maml"),
        "ways": config["ways"], "shots": config["shots"],
        "accuracy": 100 * scored["accuracy"], "ci95": 100 * scored["ci95"],
        "tasks": scored["tasks"], "test_steps": scored["test_steps"], "task_seed": 0, "test_query": 15,
        "train_seconds": records[-1]["elapsed"], "iterations": records[-1]["iteration"],
        "seconds_per_iteration": records[-1]["elapsed"] / records[-1]["iteration"],
        "median_step_seconds": _median(step_seconds(records)),
        "load_average_while_training": training_load(records),
        "best_iteration": scored["iteration"],
        "published": published,
        "ci_reaches_published_interval": reach,
        "command": command_of(config, str(folder), threads),
        "machine": scoring_machine(),
        "settings": config,
        "task_accuracies": task_accuracies,
        "validation": read_curves(folder).validations(),
    }


def task_set(result: dict) -> tuple:
    """What fixes the test tasks a recorded run was scored on: the benchmark and its class split (the
    alphabet split tests on other characters than the standard one), ways, shots, task count, task
    seed and query size. Two runs are paired task by task only when these agree. A run recorded
    before ``settings`` named the benchmark or split ran on Omniglot's standard split."""
    settings = result.get("settings") or {}
    return (settings.get("benchmark", "omniglot"), settings.get("class_split", "standard"), settings.get("data"),
            result.get("ways"), result.get("shots"), result.get("tasks"), result.get("task_seed"),
            result.get("test_query"))


def paired_differences(results: list[dict], reference: str) -> dict:
    """Every run scored on the same fixed tasks as the run named ``reference`` (the same
    :func:`task_set`, with ``task_accuracies``) against it: ``mean`` per-task
    accuracy difference (run − reference, points), ``ci95`` (1.96·s/√n over the n differences),
    ``wins``/``ties``/``losses`` (tasks where the run scores higher/equal/lower)."""
    by_name = {r["run"]: r for r in results}
    ref = by_name.get(reference)
    if ref is None or not ref.get("task_accuracies"):
        raise ArgumentError("reference", f"no recorded run named {reference!r} with per-task accuracies")
    tasks = task_set(ref)
    rows = []
    for r in results:
        if r is ref or not r.get("task_accuracies") or task_set(r) != tasks:
            continue
        diff = [100 * (a - b) for a, b in zip(r["task_accuracies"], ref["task_accuracies"], strict=True)]
        n = len(diff)
        mean = sum(diff) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1))
        rows.append({"run": r["run"], "algo": r.get("algo"), "mean": mean, "ci95": 1.96 * sd / math.sqrt(n),
                     "tasks": n, "wins": sum(d > 0 for d in diff), "ties": sum(d == 0 for d in diff),
                     "losses": sum(d < 0 for d in diff)})
    return {"reference": reference, "what": "run minus reference, accuracy points per task, same tasks",
            "runs": rows}


def recorded_pairs(results: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """``pairs`` of (run, reference) names, each compared as :func:`paired_differences` does:
    one row each, with ``reference`` added; duplicates once, in first-given order."""
    rows, seen = [], set()
    for run, reference in pairs:
        if (run, reference) in seen:
            continue
        seen.add((run, reference))
        if run == reference:
            raise ArgumentError("pair", f"{run!r} is paired with itself; name two different runs")
        found = [r for r in paired_differences(results, reference)["runs"] if r["run"] == run]
        if not found:
            raise ArgumentError("pair", f"{run!r} is not a recorded run scored on the same tasks as {reference!r}")
        rows.append({**found[0], "reference": reference})
    return rows


def published_references(results: list[dict]) -> list[dict]:
    """The published numbers to draw beside the runs' validation curves: one dashed line (± its CI)
    per published setting, in the colour of the first run of that setting."""
    references, seen = [], set()
    for r in results:
        pub = r.get("published")
        if not pub or (r["ways"], r["shots"], pub["source"]) in seen:
            continue
        seen.add((r["ways"], r["shots"], pub["source"]))
        spread = f" ± {pub['ci95']}" if pub.get("ci95") is not None else ""
        references.append({"label": f"published {r['ways']}-way {r['shots']}-shot: {pub['accuracy']}{spread} % "
                                    f"({pub['source']})", "accuracy": pub["accuracy"], "ci95": pub.get("ci95") or 0.0,
                           "run": r["run"]})
    return references


def recipe_key(settings: dict) -> str:
    """The recipe of a run, as a canonical JSON string: the settings that change its weights
    (:data:`~linmaml.benchmarks.settings.IDENTITY`) but the seed, plus its length and how it is scored
    (``iterations``, ``test_steps``, ``test_query``), so runs that differ only in the seed — or in
    bookkeeping such as ``val_every`` or ``snapshot_every`` — are seeds of one recipe. A setting a run
    recorded before it existed counts as its default."""
    default = TrainConfig().to_dict()
    names = (set(IDENTITY) - {"seed"}) | {"iterations", "test_steps", "test_query"}
    return json.dumps({k: settings.get(k, default.get(k)) for k in sorted(names)}, sort_keys=True, default=str)


def seed_groups(results: list[dict]) -> list[dict]:
    """One entry per recipe: ``runs``, ``seeds``, ``mean_accuracy`` and ``ci95_over_seeds`` (95 %
    Student-t over the seeds' test accuracies; None for one seed), ``mean_train_minutes``."""
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
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="*", type=pathlib.Path,
                        help="run folders of linmaml train (none: only re-pair the record, see --pair)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("figures"), help="output folder")
    parser.add_argument("--tasks", type=int, default=600, help="fixed test tasks (default 600)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new record instead of adding the runs to the one in --out")
    parser.add_argument("--figure", default=None,
                        help="also draw the given runs' curves into this PNG in --out (a file name; "
                             "default: draw nothing)")
    parser.add_argument("--reference", default=None,
                        help="a recorded run: add the paired per-task differences of every run scored on "
                             "the same tasks to it (default: keep the record's reference, if any)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("RUN", "REFERENCE"),
                        help="also record RUN's paired per-task differences to REFERENCE (repeatable; "
                             "kept in the record's pairs)")
    args = parser.parse_args(argv)
    if not args.runs and not args.pair:
        parser.error("the following arguments are required: runs (or --pair to re-pair the record)")
    if args.figure is not None and (pathlib.Path(args.figure).name != args.figure
                                    or not args.figure.endswith(".png")):
        parser.error(f"argument --figure: expected a file name ending in .png, got {args.figure!r}")
    if args.figure is not None and not args.runs:
        parser.error("argument --figure: draws the run folders given, and none was given")
    previous, reference, old_pairs = [], args.reference, []
    if not args.fresh and (args.out / "omniglot_maml.json").is_file():
        old = _io.load_json(args.out / "omniglot_maml.json")
        previous = old.get("runs", [])
        reference = reference or (old.get("paired") or {}).get("reference")
        old_pairs = [(p["run"], p["reference"]) for p in old.get("pairs", [])]
    if not args.runs and not previous:
        parser.error(f"argument --pair: no record in {args.out} to pair runs of")
    known = {f.name for f in args.runs} | {r["run"] for r in previous if r.get("task_accuracies")}
    for name in (n for pair in args.pair for n in pair):
        if name not in known:
            parser.error(f"argument --pair: {name!r} is neither a given run nor a recorded run with per-task "
                         f"accuracies")
    if args.reference is not None and args.reference not in {f.name for f in args.runs} | {
            r["run"] for r in previous if r.get("task_accuracies")}:
        parser.error(f"argument --reference: {args.reference!r} is neither a given run nor a recorded run "
                     f"with per-task accuracies")

    torch.set_num_threads(args.threads)
    results = [score_run(folder, tasks=args.tasks, data_root=args.data_root) for folder in args.runs]
    pairs, everything_now = None, merged(previous, results)
    if old_pairs or args.pair:  # before anything is drawn or written: a bad pair leaves both untouched
        kept = []
        for pair in old_pairs:  # a recorded pair whose runs were re-scored on other tasks is dropped, said
            try:
                recorded_pairs(everything_now, [pair])
                kept.append(pair)
            except ArgumentError as error:
                print(f"omniglot_maml: dropped the recorded pair {pair[0]} - {pair[1]}: {error.detail}")
        try:
            pairs = recorded_pairs(everything_now, kept + [tuple(p) for p in args.pair])
        except ArgumentError as error:
            parser.error(f"argument --pair: {error.detail}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.figure is not None:  # (checked above: run folders were given)
        plot_runs(read_runs(args.runs), args.out / args.figure, x="time", references=published_references(results))
    everything = merged(previous, results)
    record = {"figure": "omniglot_maml", "runs": everything, "groups": seed_groups(everything)}
    if reference is not None:
        record["paired"] = paired_differences(everything, reference)
    if pairs is not None:
        record["pairs"] = pairs
    _io.atomic_write_json(args.out / "omniglot_maml.json", record)
    for r in results:
        pub = r["published"]
        print(f"{r['run']}: {r['algo']} {r['ways']}-way {r['shots']}-shot {r['accuracy']:.2f} % ± {r['ci95']:.2f} % "
              f"({r['tasks']} test tasks) after {r['iterations']} iterations, {r['train_seconds'] / 60:.1f} min "
              f"({r['seconds_per_iteration']:.3f} s per iteration)"
              + (f"; published {pub['accuracy']} ± {pub['ci95']} ({pub['source']})" if pub else ""))
    for row in record.get("paired", {}).get("runs", []):
        print(f"{row['run']} - {record['paired']['reference']}: {row['mean']:+.2f} ± {row['ci95']:.2f} points "
              f"over {row['tasks']} paired tasks")
    for row in record.get("pairs", []):
        print(f"{row['run']} - {row['reference']}: {row['mean']:+.2f} ± {row['ci95']:.2f} points over {row['tasks']} "
              f"paired tasks (wins {row['wins']}, ties {row['ties']}, losses {row['losses']})")
    return record


if __name__ == "__main__":
    main()
