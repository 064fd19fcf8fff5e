"""MAML++'s training options on Omniglot 5-way 1-shot, measured on the validation split only.

Each option of MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML") that ``linmaml
train`` has is one named variant, trained as ``linmaml train --config configs/omniglot-5w1s.json
--iterations ITER --val-every VE --seed S`` plus the variant's flags (:func:`variant_settings`):

- ``recipe``: nothing added, linmaml's recipe (one inner step of 0.4): the reference;
- ``query15``: ``--query 15``, 15 query images per class in training, as the published recipes;
- ``steps5``: ``--steps 5 --inner-lr 0.1 --test-steps 5``, MAML++'s inner loop;
- ``steps5-msl``: steps5 and ``--msl-iterations M``, the multi-step loss annealed over M iterations;
- ``steps5-bnws``: steps5 and ``--bn-per-step``, per-step BatchNorm weights and biases;
- ``steps5-lslr``: steps5 and ``--transform rates``, learned per-layer per-step inner rates;
- ``steps5-da``: steps5 and ``--first-order-iterations F``, derivative-order annealing;
- ``mamlpp``: steps5 and all four (msl, bnws, lslr, da), MAML++'s recipe on linmaml's.

M and F are fractions of the budget read from MAML++'s sources, which do not agree with one
another, so they are this study's choice: the paper trains for 150 epochs and takes first-order
steps for the first 50 (its section 4: F = ITER/3); the multi-step loss's 10 epochs are
``multi_step_loss_num_epochs`` of the later experiment configurations of its code (M = ITER/15,
10 of the paper's 150). Those later Omniglot configurations run 100 epochs (10/100 would be ITER/10)
and turn derivative-order annealing off (``first_order_to_second_order_epoch`` −1); an earlier
Omniglot 5-way 1-shot configuration runs 150 epochs with first-order steps through epoch 80 (81 of
150, not 50; AntreasAntoniou/HowToTrainYourMAMLPytorch, ``experiment_config/omniglot_maml++-omniglot_*.json``
and ``omniglot_maml++_5_way_1_shot_*_seed_0.json``). M and F are rounded, at least 1 (:data:`MSL_FRACTION`, :data:`FIRST_ORDER_FRACTION`):
133 and 667 of the default 2,000 iterations.
``linmaml train`` accepts every combination (``--bn-per-step`` beside ``--transform rates``
included), so no variant is dropped.

**Validation split only** (every recipe choice is made there, as the published-numbers work requires; the 600 test tasks are
scored once per final run, not here). Each run keeps its best-validation weights (``best.pt``,
chosen on its 200 fixed validation tasks, task seed 0); that checkpoint is then scored on
``--tasks`` (default 600) *other* fixed validation tasks (task seed ``--task-seed``, default 1; seed 0
is refused, since those tasks chose the checkpoint), 15 query images per class, the run's own test
steps, with the accuracy of every task kept
(:func:`linmaml.analysis.omniglot_maml.score_tasks_of_run`). Every variant is scored on the same
tasks, so each is compared with ``recipe`` task by task: the mean per-task difference (points) with
its 95 % interval 1.96·s/√n over the tasks, and the tasks won, tied and lost
(:func:`linmaml.analysis.omniglot_maml.paired_differences`); each MAML++ option (``steps5-*``,
``mamlpp``) is also paired with ``steps5``, the inner loop it is added to (``paired_to_steps5``), and
``mamlpp`` with each one-option variant (``paired_to_options``: what the other three options do to
that one). One training seed per variant: the
interval is over tasks, not over training seeds.

The cost of each variant comes from its own ``metrics.jsonl``: the training wall seconds
(validation included), seconds per iteration, the median wall time of an iteration that did not
validate (:func:`linmaml.analysis.omniglot_maml.step_seconds`; with derivative-order annealing also
split into first- and second-order iterations, :func:`steps_by_order`), and the validation curve against
wall time (:func:`linmaml.analysis.depth_width_seeds.validation_curve`). Times are comparable only
between runs trained on the same machine at a similar load, one thread each.

Runs live in ``<runs>/<variant>/`` (plain ``linmaml train`` folders). Without ``--train`` nothing is
trained: a variant whose folder holds no run is reported ``not run``, one short of ITER iterations
``unfinished`` (scored from its best validation so far, when it has one), so the study fills in over
several sessions. ``--train`` trains the missing variants and resumes the unfinished ones (exactly:
a resumed run is the uninterrupted one), one after another; a folder trained with other settings is
refused before any training (:func:`linmaml.analysis.depth_width.check_folder`). ``--only NAME ...``
trains and scores only those variants; the others are kept from the record already in ``--out`` when
it was made with the same settings.

Writes ``<out>/recipe_options.json`` (the settings, each variant's ``linmaml train`` command, flags,
status, scores, per-task accuracies, costs and validation curve, and the paired differences) and
``<out>/recipe_options.png`` (validation accuracy against training wall seconds, one line per
variant), and prints a table.

    python analysis/recipe_options.py --train --runs runs/recipe-options --out figures
"""
from __future__ import annotations

import io
import pathlib
import shlex
import statistics
import sys
import time

import torch

from linmaml import _io, _validate
from linmaml._extras import require
from linmaml.analysis._common import ArgumentParser, report_error
from linmaml.analysis.depth_width import check_folder, machine
from linmaml.analysis.depth_width_seeds import validation_curve
from linmaml.analysis.omniglot_maml import paired_differences, score_tasks_of_run, step_seconds
from linmaml.benchmarks import checkpoint, recipes
from linmaml.benchmarks.run_files import BEST, CONFIG, METRICS
from linmaml.benchmarks.settings import TrainConfig, declared, flag
from linmaml.benchmarks.train import train
from linmaml.errors import ArgumentError, ArgumentNotADirectoryError, renamed
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure
from linmaml.plots.figure import default_out, default_runs, source_checkout

NAME = "recipe_options"
#: The base recipe every variant adds its flags to, as the recorded commands name it (from the checkout's root).
BASE_CONFIG = "configs/omniglot-5w1s.json"
#: The same recipe by name, outside a source checkout (:mod:`linmaml.benchmarks.recipes`).
BASE_RECIPE = "omniglot-5w1s"
DEFAULT_RUNS = default_runs("recipe-options")
DEFAULTS = {"iterations": 2000, "val_every": 250, "seed": 0, "tasks": 600, "task_seed": 1, "threads": 1}
#: The fraction of the budget with the multi-step loss: 10 epochs (MAML++'s later configurations) of the
#: paper's 150 (module docstring: its sources disagree).
MSL_FRACTION = 10 / 150
#: The fraction of the budget with first-order steps: 50 of 150 epochs, the paper's section 4 (its
#: configurations differ: module docstring).
FIRST_ORDER_FRACTION = 50 / 150
#: Query images per class of the scored validation tasks (the protocol's 15, as the test tasks).
SCORE_QUERY = 15
#: The variant every other is paired with.
REFERENCE = "recipe"
#: The variant each MAML++ option is added to: ``steps5-*`` and ``mamlpp`` are also paired with it
#: (``paired_to_steps5``), which isolates the option from the change of inner loop.
OPTION_BASE = "steps5"
#: The variants, in the order they are trained and reported.
VARIANTS = ("recipe", "query15", "steps5", "steps5-msl", "steps5-bnws", "steps5-lslr", "steps5-da", "mamlpp")


def msl_iterations(iterations: int) -> int:
    """M: the multi-step loss annealed over MAML++'s fraction of the budget, ``round(ITER/15)``, at least 1."""
    return max(1, round(iterations * MSL_FRACTION))


def first_order_iterations(iterations: int) -> int:
    """F: first-order steps for MAML++'s fraction of the budget, ``round(ITER/3)``, at least 1."""
    return max(1, round(iterations * FIRST_ORDER_FRACTION))


def variant_settings(iterations: int) -> dict[str, dict]:
    """``{variant: TrainConfig fields it adds to the base recipe}``, in :data:`VARIANTS` order."""
    steps5 = {"steps": 5, "inner_lr": 0.1, "test_steps": 5}  # MAML++'s inner loop: 5 steps of 0.1
    msl = {"msl_iterations": msl_iterations(iterations)}
    bnws = {"bn_per_step": True}
    lslr = {"transform": "rates"}
    da = {"first_order_iterations": first_order_iterations(iterations)}
    return {"recipe": {}, "query15": {"query": 15}, "steps5": dict(steps5),
            "steps5-msl": {**steps5, **msl}, "steps5-bnws": {**steps5, **bnws}, "steps5-lslr": {**steps5, **lslr},
            "steps5-da": {**steps5, **da}, "mamlpp": {**steps5, **msl, **bnws, **lslr, **da}}


def flags(fields: dict) -> list[str]:
    """The ``linmaml train`` flags that set ``fields`` (a switch alone when true, left out when false)."""
    words = []
    for name, value in fields.items():
        if declared()[name].kind is bool:
            words += [flag(name)] if value else []
        else:
            words += [flag(name), str(value)]
    return words


def read_base(path) -> dict:
    """The training settings of the base recipe file (bare fields, or a run's ``config.json`` with its
    ``{"config": {...}}`` wrapper, as ``linmaml train --config`` reads it); ``ArgumentError`` naming
    ``config`` when it cannot be read or holds no such object."""
    path = pathlib.Path(path)
    try:
        data = _io.load_json(path)
    except (OSError, ValueError) as error:
        raise ArgumentError("config", f"cannot read {path}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ArgumentError("config", f"{path} must hold a JSON object of training settings")
    return dict(data)


def options(base: dict, study: dict, variant: str) -> dict:
    """The ``train`` settings of one variant: the base recipe, the study's budget and seed, the variant's
    fields, and every other setting at its default, so that a folder trained with any other setting is
    not taken for the variant's run (:func:`linmaml.analysis.depth_width.check_folder` compares the
    settings given)."""
    fields = variant_settings(study["iterations"])[variant]
    given = {**base, "iterations": study["iterations"], "val_every": study["val_every"], "seed": study["seed"],
             **fields}
    return TrainConfig.from_dict(given).to_dict()


def command(study: dict, variant: str, run_dir, threads: int) -> str:
    """The ``linmaml train`` command of one variant's run (add ``--resume`` to continue a stopped one)."""
    words = ["linmaml", "train", "--config", study["config"], "--iterations", str(study["iterations"]),
             "--val-every", str(study["val_every"]), "--seed", str(study["seed"]),
             *flags(variant_settings(study["iterations"])[variant]), "--out", str(run_dir), "--threads", str(threads)]
    return shlex.join(words)


def iterations_done(run_dir: pathlib.Path) -> int | None:
    """The iteration of the run's newest checkpoint; None when the folder holds no run."""
    if not checkpoint.has_checkpoint(run_dir):
        return None
    payload = checkpoint.load_latest(run_dir)
    return None if payload is None else int(payload["iteration"])


def status_of(run_dir: pathlib.Path, iterations: int) -> str:
    """``not run`` (no checkpoint), ``unfinished`` (fewer than ``iterations``) or ``done``."""
    done = iterations_done(run_dir)
    return "not run" if done is None else "done" if done >= iterations else "unfinished"


class Stopped(Exception):
    """Training of a variant ended before its budget (a signal, a non-finite step): ``result`` is
    :func:`linmaml.benchmarks.train.train`'s."""

    def __init__(self, variant: str, result):
        super().__init__(f"{variant}: training ended with {result.status}: {result.message}")
        self.variant, self.result = variant, result


def _log(text: str) -> None:
    print(f"[{NAME}] {text}", file=sys.stderr, flush=True)


def train_variants(base: dict, study: dict, names, runs: pathlib.Path, *, threads: int, splits=None,
                   data_root=None) -> None:
    """Train each of ``names`` that is not done, one after another, resuming one that has a checkpoint.
    Every folder is checked (:func:`linmaml.analysis.depth_width.check_folder`: same settings, not more
    iterations) before any training."""
    settings = {name: options(base, study, name) for name in names}
    for name in names:
        check_folder(runs / name, settings[name])
    for name in names:
        run_dir = runs / name
        done = iterations_done(run_dir)
        if done is not None and done >= study["iterations"]:
            continue
        _log(f"{name}: training" + (f" (resuming at iteration {done} of {study['iterations']})" if done else "")
             + f": {command(study, name, run_dir, threads)}")
        began = time.perf_counter()
        result = train(settings[name], run_dir, resume=done is not None, splits=splits, data_root=data_root,
                       progress=False, stream=io.StringIO(), threads=threads)
        if result.status != "done":
            raise Stopped(name, result)
        _log(f"{name}: done in {(time.perf_counter() - began) / 60:.1f} min")


def score_variant(name: str, base: dict, study: dict, runs: pathlib.Path, *, threads: int, splits=None,
                  data_root=None) -> dict:
    """One variant's record: its status, command and flags; when its run has a best checkpoint, the
    scores of ``best.pt`` on the study's fixed validation tasks (percent; ``task_accuracies`` as
    fractions in task order), its costs and its validation curve."""
    run_dir = runs / name
    status = status_of(run_dir, study["iterations"])
    if status != "not run":  # a folder trained with other settings is not this variant's run
        check_folder(run_dir, options(base, study, name))
    record = {"run": name, "variant": name, "status": status, "folder": str(run_dir),
              "flags": flags(variant_settings(study["iterations"])[name]),
              "command": command(study, name, run_dir, threads)}
    if status == "not run" or not (run_dir / BEST).is_file():
        return record  # an unfinished run that has not validated yet has no validation-chosen weights
    scored, accuracies = score_tasks_of_run(run_dir, tasks=study["tasks"], data_root=data_root, split="val",
                                            task_seed=study["task_seed"], splits=splits)
    config = _io.load_json(run_dir / CONFIG)["config"]
    lines = [_io.loads_json(line, f"{run_dir / METRICS} line {n}")
             for n, line in enumerate(_io.read_text(run_dir / METRICS).splitlines(), start=1) if line.strip()]
    steps = step_seconds(lines)
    record.update({
        "ways": config["ways"], "shots": config["shots"], "algo": config.get("algo"),
        "split": "val", "tasks": scored["tasks"], "task_seed": study["task_seed"], "test_query": SCORE_QUERY,
        "accuracy": 100 * scored["accuracy"], "ci95": 100 * scored["ci95"],
        "best_iteration": scored["iteration"], "test_steps": scored["test_steps"],
        "iterations": int(lines[-1]["iteration"]), "train_seconds": float(lines[-1]["elapsed"]),
        "seconds_per_iteration": float(lines[-1]["elapsed"]) / int(lines[-1]["iteration"]),
        "median_step_seconds": statistics.median(steps) if steps else None,
        "median_step_seconds_by_order": steps_by_order(lines),
        "validation": validation_curve(run_dir), "settings": config, "task_accuracies": accuracies})
    return record


def steps_by_order(lines: list[dict]) -> dict | None:
    """``{"first", "second"}``: the median wall seconds of the iterations that did not validate, split
    by the derivative order ``metrics.jsonl`` logs for each (``first_order``, logged while derivative-order
    annealing is on); None for a run that took no first-order step. Both halves ran in the one run,
    so their ratio is what annealing saves per step at that run's load."""
    steps = step_seconds(lines)
    orders = [bool(r.get("first_order")) for r in lines if "val_accuracy" not in r]  # step_seconds' records
    first = [t for t, o in zip(steps, orders) if o]
    second = [t for t, o in zip(steps, orders) if not o]
    if not first:
        return None
    return {"first": statistics.median(first), "second": statistics.median(second) if second else None}


def _study(config_arg: str, iterations, val_every, seed, tasks, task_seed) -> dict:
    study = {"config": str(config_arg),
             "iterations": _validate.integer(iterations, "iterations", minimum=1),
             "val_every": _validate.integer(val_every, "val_every", minimum=1),
             "seed": _validate.integer(seed, "seed", minimum=0),
             "tasks": _validate.integer(tasks, "tasks", minimum=2),
             "task_seed": _validate.integer(task_seed, "task_seed", minimum=0)}
    if study["task_seed"] == 0:
        raise ArgumentError("task_seed", "task seed 0 gives the validation tasks that chose each run's best.pt; "
                                         "score on others (e.g. 1)")
    return study


def _config_path(config) -> tuple[str, pathlib.Path]:
    """``(as the commands name it, where it is read)``: the default is read from the source checkout,
    else (an installed package) it is the shipped recipe of that name (``linmaml train --config
    omniglot-5w1s`` reads the same file); a given path as given."""
    if config is None:
        root = source_checkout()
        if root is not None:
            return BASE_CONFIG, root / BASE_CONFIG
        return BASE_RECIPE, recipes.path(BASE_RECIPE)
    return str(config), pathlib.Path(config)


def run(out_dir=None, *, runs=None, config=None, only=None, iterations=DEFAULTS["iterations"],
        val_every=DEFAULTS["val_every"], seed=DEFAULTS["seed"], tasks=DEFAULTS["tasks"],
        task_seed=DEFAULTS["task_seed"], threads=DEFAULTS["threads"], do_train: bool = False, splits=None,
        data_root=None, command_line: str | None = None) -> dict:
    """Train (with ``do_train``) and score the variants, write ``<out_dir>/recipe_options.{json,png}``;
    the JSON's dict. ``splits`` may supply ``{"train", "val"}`` splits instead of reading ``data_root``."""
    config_arg, config_file = _config_path(config)
    study = _study(config_arg, iterations, val_every, seed, tasks, task_seed)
    threads = _validate.integer(threads, "threads", minimum=1)
    names = list(VARIANTS) if only is None else list(dict.fromkeys(only))
    for name in names:
        if name not in VARIANTS:
            raise ArgumentError("only", f"unknown variant {name!r}; expected some of {', '.join(VARIANTS)}")
    if not names:
        raise ArgumentError("only", "name at least one variant")
    base = read_base(config_file)
    for name in names:
        options(base, study, name)  # every variant's settings valid (TrainConfig's checks), before any work
    runs = pathlib.Path(runs) if runs is not None else DEFAULT_RUNS
    out_dir = pathlib.Path(out_dir) if out_dir is not None else default_out()
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentNotADirectoryError("out", f"{out_dir} is not a folder")
    torch.set_num_threads(threads)
    began = time.perf_counter()
    if do_train:
        runs.mkdir(parents=True, exist_ok=True)
        train_variants(base, study, names, runs, threads=threads, splits=splits, data_root=data_root)
    fresh = {name: score_variant(name, base, study, runs, threads=threads, splits=splits, data_root=data_root)
             for name in names}
    val_tasks = options(base, study, REFERENCE)["val_tasks"]  # the same in every variant
    settings = {**study, "base": base, "runs": str(runs), "threads": threads, "split": "val", "val_tasks": val_tasks,
                "test_query": SCORE_QUERY, "reference": REFERENCE,
                "msl_fraction": "10/150 (MAML++: its later configurations' 10 epochs of the paper's 150; those "
                                "configurations run 100)",
                "first_order_fraction": "50/150 (MAML++'s paper, section 4; its configurations use 81/150 or none)",
                "selection": f"each run's best validation (best.pt, {val_tasks} validation tasks, task seed 0), scored on "
                             f"{study['tasks']} other validation tasks (task seed {study['task_seed']})"}
    kept = _kept(out_dir / f"{NAME}.json", settings, names)
    variants = [fresh.get(name) or kept.get(name) or _unscored(name, study, runs, threads) for name in VARIANTS]
    scored = [v for v in variants if v.get("task_accuracies")]
    paired = None
    if any(v["run"] == REFERENCE for v in scored):
        paired = paired_differences(scored, REFERENCE)
        for row in paired["runs"]:
            next(v for v in variants if v["run"] == row["run"])["paired"] = row
    if any(v["run"] == OPTION_BASE for v in scored):
        added = variant_settings(study["iterations"])
        base_fields = added[OPTION_BASE].items()  # the variants that add options to it: steps5-*, mamlpp
        on_base = [v for v in scored if base_fields <= added[v["run"]].items()]
        for row in paired_differences(on_base, OPTION_BASE)["runs"]:
            next(v for v in variants if v["run"] == row["run"])[f"paired_to_{OPTION_BASE}"] = row
        # a variant holding several options (mamlpp) against each one-option variant it contains: what the
        # other options add to that one, or take from it
        for v in scored:
            singles = [u for u in scored if u["run"] not in (v["run"], OPTION_BASE, REFERENCE)
                       and base_fields <= added[u["run"]].items() < added[v["run"]].items()]
            if singles:
                v["paired_to_options"] = [next(row for row in paired_differences([u, v], u["run"])["runs"])
                                          | {"reference": u["run"]} for u in singles]
    record = {"figure": NAME, "settings": settings, "command": command_line or "", "machine": machine(),
              "variants": variants, "paired": paired, "seconds": round(time.perf_counter() - began, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(v.get("validation") for v in variants):
        draw(record, out_dir / f"{NAME}.png")
    _io.atomic_write_json(out_dir / f"{NAME}.json", record)
    return record


def _unscored(name: str, study: dict, runs: pathlib.Path, threads: int) -> dict:
    """A variant left out by ``--only`` and not in a comparable earlier record: its status alone."""
    run_dir = runs / name
    return {"run": name, "variant": name, "status": status_of(run_dir, study["iterations"]) + " (not scored now)",
            "folder": str(run_dir), "flags": flags(variant_settings(study["iterations"])[name]),
            "command": command(study, name, run_dir, threads)}


def _kept(path: pathlib.Path, settings: dict, names) -> dict:
    """The earlier record's variants not named now, when that record used the same study settings."""
    if not path.is_file():
        return {}
    try:
        old = _io.load_json(path)
    except (OSError, ValueError):
        return {}  # an unreadable old record is replaced, not merged
    same = ("config", "base", "iterations", "val_every", "seed", "tasks", "task_seed", "runs")
    if not isinstance(old, dict) or any((old.get("settings") or {}).get(k) != settings[k] for k in same):
        return {}
    return {v["run"]: {key: value for key, value in v.items()
                       if key not in ("paired", f"paired_to_{OPTION_BASE}", "paired_to_options")}
            for v in old.get("variants", []) if v.get("run") not in names and v.get("run") in VARIANTS}


def draw(record: dict, path) -> None:
    """Validation accuracy (percent, the runs' own validation tasks) against training wall seconds
    (validation included), one line per variant with a run."""
    plt = require("matplotlib.pyplot", "figures")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, v in enumerate(record["variants"]):
        curve = v.get("validation")
        if curve:
            ax.plot([p["elapsed"] for p in curve], [p["accuracy"] for p in curve], "o-", ms=3, color=f"C{i}",
                    label=f"{v['variant']} ({v['status']})")
    ax.set_xlabel("training wall seconds (one thread, validation included)")
    ax.set_ylabel(f"validation accuracy % ({record['settings']['val_tasks']} validation tasks, task seed 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    s = record["settings"]
    ax.set_title(f"MAML++'s options on {s['config']}, {s['iterations']} iterations, seed {s['seed']}", fontsize=10)
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def table(record: dict) -> list[str]:
    """The compact text table: one line per variant."""
    s = record["settings"]
    lines = [f"validation split only: best.pt of each run on {s['tasks']} validation tasks (task seed "
             f"{s['task_seed']}); paired difference to {REFERENCE} (and each option's to {OPTION_BASE}) over the same "
             f"tasks, 95 % interval",
             f"{'variant':<12} {'status':<24} {'iters':>6} {'best':>6} {'val acc %':>15} {'- recipe (points)':>18} "
             f"{'- steps5':>14} {'s/iter':>7} {'train min':>9}"]
    for v in record["variants"]:
        if "accuracy" not in v:
            lines.append(f"{v['variant']:<12} {v['status']}")
            continue
        pair = v.get("paired")
        diff = "reference" if v["run"] == REFERENCE else (f"{pair['mean']:+.2f} ± {pair['ci95']:.2f}" if pair else "-")
        on_base = v.get(f"paired_to_{OPTION_BASE}")
        base_diff = f"{on_base['mean']:+.2f} ± {on_base['ci95']:.2f}" if on_base else ""
        step = v.get("median_step_seconds")
        lines.append(f"{v['variant']:<12} {v['status']:<24} {v['iterations']:>6} {v['best_iteration']:>6} "
                     f"{v['accuracy']:>7.2f} ± {v['ci95']:.2f} {diff:>18} {base_diff:>14} "
                     f"{(f'{step:.3f}' if step is not None else '-'):>7} {v['train_seconds'] / 60:>9.1f}")
    for v in record["variants"]:
        for row in v.get("paired_to_options", []):
            lines.append(f"{v['variant']} - {row['reference']}: {row['mean']:+.2f} ± {row['ci95']:.2f} points "
                         f"(tasks won {row['wins']}, tied {row['ties']}, lost {row['losses']})")
    return lines


#: The command line's flag of each argument :func:`run` names in its errors.
_FLAGS = {name: "--" + name.replace("_", "-") for name in
          ("iterations", "val_every", "seed", "tasks", "task_seed", "threads", "only", "config", "out")}


def scoring_arguments(parser, per: str) -> None:
    """The options of scoring on fixed validation tasks, shared with :mod:`linmaml.analysis.recipe_check`:
    ``--tasks``, ``--task-seed``, ``--threads``, ``--data-root``."""
    parser.add_argument("--tasks", type=int, default=DEFAULTS["tasks"],
                        help=f"fixed validation tasks scored per {per} (default {DEFAULTS['tasks']})")
    parser.add_argument("--task-seed", type=int, default=DEFAULTS["task_seed"],
                        help=f"seed of the scored validation tasks (default {DEFAULTS['task_seed']}; 0, training's "
                             "own, is refused)")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch threads (default 1)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser(prog=NAME, description=__doc__.strip().splitlines()[0])
    parser.add_argument("--train", action="store_true",
                        help="train the variants not done yet (resuming unfinished runs), then score")
    parser.add_argument("--runs", type=pathlib.Path, default=None,
                        help=f"folder of the variants' run folders <runs>/<variant> (default {DEFAULT_RUNS})")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder (default: figures/)")
    parser.add_argument("--config", default=None, help=f"the base recipe (default {BASE_CONFIG})")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help=f"only these variants (of {', '.join(VARIANTS)})")
    parser.add_argument("--iterations", type=int, default=DEFAULTS["iterations"],
                        help="training iterations of every run (default 2000)")
    parser.add_argument("--val-every", type=int, default=DEFAULTS["val_every"],
                        help="validate every V iterations (default 250)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="training seed of every run (default 0)")
    scoring_arguments(parser, "variant")
    args = parser.parse_args(argv)
    command_line = shlex.join(["python", "analysis/recipe_options.py", *argv])
    try:
        record = run(args.out, runs=args.runs, config=args.config, only=args.only, iterations=args.iterations,
                     val_every=args.val_every, seed=args.seed, tasks=args.tasks, task_seed=args.task_seed,
                     threads=args.threads, do_train=args.train, data_root=args.data_root, command_line=command_line)
    except Stopped as stopped:
        print(f"{NAME}: {stopped}", file=sys.stderr)
        return stopped.result.exit_code
    except (ValueError, TypeError, OSError) as error:
        return report_error(NAME, renamed(error, _FLAGS))
    print("\n".join(table(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
