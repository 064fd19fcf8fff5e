"""Time to accuracy: how long the textbook MAML recipe and linmaml's recipe take to reach a validation
accuracy, measured on the same machine from the runs' own logs.

Each run folder's ``metrics.jsonl`` holds, per iteration, the wall time of training so far
(``elapsed``, seconds, validation included) and, every ``val_every`` iterations, the validation
accuracy on the run's fixed validation tasks. The time to reach an accuracy ``a`` is known only to
the resolution of the validation schedule: the run reached ``a`` after the last validation below it
and by the first validation at or above it. So each time is reported as that bracket
``(before, by)`` in seconds, and the ratio of two runs' times as the interval it implies,
``[before_1 / by_2, by_1 / before_2]`` (``by_1 / by_2`` the point value; no upper end when the
second run was there by its first validation). A run that never reached
``a`` reports ``None`` and no ratio.

The two runs must share the machine and its load for the ratio to mean anything: run them side by
side, one thread each (``--threads 1``), or one after the other on an idle machine.

    python analysis/time_to_accuracy.py RUN_TEXTBOOK RUN_LINMAML --out figures --thresholds 0.97 0.98

writes ``time_to_accuracy.json`` (both runs' validation curves, brackets, ratios, and the commands
that trained them from their ``config.json``). ``configs/omniglot-5w1s-textbook.json`` is the textbook
recipe (Finn et al. 2017 for Omniglot 5-way 1-shot: meta-batch 32, one inner step of 0.4, Adam
1e-3 without a schedule, one query image per class in training, the per-task loop);
``configs/omniglot-5w1s.json`` is linmaml's.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from linmaml import _io
from linmaml.benchmarks.run import read_curves
from linmaml.benchmarks.run_files import CONFIG
from linmaml.errors import ArgumentError


def validation_curve(folder) -> list[tuple[int, float, float]]:
    """``(iteration, elapsed seconds, validation accuracy)`` of every validation in a run folder's
    ``metrics.jsonl``, in iteration order, as :func:`linmaml.benchmarks.run.read_curves` reads it (the
    one reader of a run's log: an iteration logged twice by a resumed run counts once, a torn line is
    skipped, a missing or empty log is an ``ArgumentError`` naming ``run``)."""
    curves = read_curves(folder)
    return [(int(t), float(elapsed), float(accuracy))
            for t, elapsed, accuracy in zip(curves.val_iteration, curves.val_elapsed, curves.val_accuracy)]


def time_bracket(curve, threshold: float) -> tuple[float, float] | None:
    """``(before, by)``: the elapsed seconds at the last validation below ``threshold`` (0 if the first
    validation already reached it) and at the first one at or above it; None if none reached it."""
    before = 0.0
    for _, elapsed, accuracy in curve:
        if accuracy >= threshold:
            return before, elapsed
        before = elapsed
    return None


def ratio_interval(slow, fast) -> dict | None:
    """The ratio of two runs' times to one accuracy, from their brackets: point ``by/by`` and the
    interval the validation schedules allow. None when either run did not reach it."""
    if slow is None or fast is None:
        return None
    return {"ratio": slow[1] / fast[1], "low": slow[0] / fast[1],
            "high": slow[1] / fast[0] if fast[0] > 0 else None}  # None: unbounded (fast by its first validation)


def compare(textbook, recipe, thresholds=(0.97, 0.98)) -> dict:
    """Brackets and ratios (textbook time / recipe time) for each threshold, with both curves."""
    for value in thresholds:
        if not 0 < value < 1:
            raise ArgumentError("thresholds", f"expected accuracies strictly between 0 and 1, got {value}")
    curves = {"textbook": validation_curve(textbook), "recipe": validation_curve(recipe)}
    rows = []
    for value in thresholds:
        brackets = {name: time_bracket(curve, value) for name, curve in curves.items()}
        rows.append({"threshold": value, "seconds": brackets,
                     "ratio_textbook_over_recipe": ratio_interval(brackets["textbook"], brackets["recipe"])})
    return {"runs": {"textbook": str(textbook), "recipe": str(recipe)},
            "curves": {name: [{"iteration": t, "elapsed": e, "val_accuracy": a} for t, e, a in curve]
                       for name, curve in curves.items()},
            "thresholds": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("textbook", type=pathlib.Path, help="run folder of the textbook recipe")
    parser.add_argument("recipe", type=pathlib.Path, help="run folder of linmaml's recipe")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.97, 0.98])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("figures"))
    args = parser.parse_args(argv)
    try:
        result = compare(args.textbook, args.recipe, tuple(args.thresholds))
    except ArgumentError as error:
        parser.exit(2, f"time_to_accuracy: error: {error}\n")
    for name in ("textbook", "recipe"):
        config = pathlib.Path(result["runs"][name]) / CONFIG
        result.setdefault("configs", {})[name] = _io.load_json(config) if config.is_file() else None
    args.out.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(args.out / "time_to_accuracy.json", result)
    for row in result["thresholds"]:
        ratio = row["ratio_textbook_over_recipe"]
        words = "not reached by both" if ratio is None else (
            f"{ratio['ratio']:.2f}x (between {ratio['low']:.2f}x and "
            + ("no upper end" if ratio["high"] is None else f"{ratio['high']:.2f}x") + ")")
        print(f"val accuracy {100 * row['threshold']:.0f} %: textbook {row['seconds']['textbook']} s, "
              f"recipe {row['seconds']['recipe']} s; textbook / recipe {words}")


if __name__ == "__main__":
    main()
