"""Raghu et al. (2020), "Rapid learning or feature reuse?", regenerated on Omniglot from trained runs.

Four artefacts, each from :mod:`linmaml.benchmarks.feature_reuse`, on the fixed test tasks of
``linmaml evaluate`` (task seed 0, 15 query examples per class; the first ``--tasks`` of them), every
accuracy a mean over tasks with a 95 % interval (1.96 s/√n), every comparison paired on the same tasks:

(a) **layer freezing** (their Table 1) for the MAML-trained network ``--maml``: test accuracy when
    the conv layers 1, 1–2, 1–3, 1–4 are held at the meta-learned weights and only the rest adapt
    (the run's test-time steps and inner rate), beside the full adaptation and no adaptation at all;
(b) **CKA before vs after the inner loop**, layer by layer, at each snapshot of the MAML run
    ``--trajectory`` (``snapshots/iter-<t>.pt`` of ``linmaml train --snapshot-every``; iteration 0,
    when the folder lacks it, rebuilt from the run's seed exactly as training builds it), with the
    accuracy after full and head-only adaptation at each;
(c) **NIL** (no inner loop: the head replaced by the class means of the penultimate support
    features, cosine or Euclidean nearest mean) for ``--maml`` and ``--anil``, beside their own
    test accuracy;
(d) **body similarity**: CKA layer by layer between the ``--maml`` and ``--anil`` networks on the
    same query examples, with two references: ``--maml`` against a second MAML run ``--control``
    (another seed: how alike two MAML networks are) and against its own initial weights.

Writes ``raghu_omniglot.json`` (every number, the per-task values, the checkpoints' paths,
iterations and sha256, the command) and ``raghu_omniglot.png`` into ``--out``:

    python analysis/raghu.py --maml RUN_OR_PT --anil RUN_OR_PT --trajectory RUN [--control RUN_OR_PT] \\
        --tasks 200 --trajectory-tasks 100 --out figures --threads 1

The paper's mini-ImageNet findings, as its Table 1 and text are commonly quoted (not re-read here), are stored beside ours
(:data:`PAPER`). Re-run it as more snapshots appear: every number is recomputed from the files.
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import shlex
import sys
import time

import numpy as np
import torch

from linmaml import _io
from linmaml.analysis.depth_width import machine
from linmaml.analysis.omniglot_maml import command_of
from linmaml.benchmarks import episodes
from linmaml.benchmarks import feature_reuse as fr
from linmaml.benchmarks.config import build_from_config, data_options, make_engine
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.run import Run
from linmaml.benchmarks.run_files import CONFIG
from linmaml.benchmarks.scoring import mean_ci95, score_tasks
from linmaml.errors import ArgumentError
from linmaml.plots import figure as plots_figure  # by module: tests swap plots.figure.save_figure

NAME = "raghu_omniglot"

#: What we compare with: Raghu et al. 2020 on mini-ImageNet 5-way, as quoted when this analysis was
#: planned; the paper's full tables were not re-read here.
PAPER = {
    "source": "Raghu, Raghu, Bengio & Vinyals, ICLR 2020, mini-ImageNet 5-way (quoted, not re-read from the paper)",
    "freezing_1shot": {"none_frozen": 44.5, "conv_1_to_4_frozen": 44.7,
                       "claim": "freezing every conv layer at test time leaves the accuracy unchanged (Table 1)"},
    "cka": {"conv_layers": "> 0.9", "head": "< 0.5",
            "claim": "the conv layers' representations barely change in the inner loop; the head's does"},
    "nil": {"claim": "NIL (no inner loop, nearest class mean of the penultimate features) is close to the "
                     "MAML and ANIL accuracies"},
    "body_similarity": {"claim": "MAML- and ANIL-trained bodies are highly similar (CCA/CKA)"},
}


def sha256(path) -> str:
    return hashlib.sha256(_io.read_bytes(path, 1 << 31)).hexdigest()


def load(path):
    """``(learner, config, record, payload)`` of a run folder (its best.pt) or a checkpoint file
    (:meth:`linmaml.benchmarks.run.Run.open`); record: path, iteration, sha256, algo, seed, the run's
    ``linmaml train`` command."""
    run = Run.open(path)  # the one way to open a trained run: its rule for folders, checked weights
    file, payload, config, learner = pathlib.Path(run.file).resolve(), run.payload, run.config, run.learner
    folder = pathlib.Path(run.folder).resolve()
    record = {"path": str(file), "iteration": payload.get("iteration"),
              "sha256": sha256(file), "algo": config.algo, "seed": config.seed, "iterations": config.iterations,
              "train_command": command_of(config.to_dict(), str(folder), config_threads(folder))
              + (f" --snapshot-every {config.snapshot_every}" if config.snapshot_every else "")}
    return learner, config, record, payload


def config_threads(folder) -> int | None:
    """The torch threads a run folder's training used (its config.json), None if unknown."""
    try:
        return _io.load_json(pathlib.Path(folder) / CONFIG).get("threads")
    except (OSError, ValueError):
        return None


def initial_learner(config, image_shape):
    """The weights a run of ``config`` starts from: the trainer seeds torch with the run's seed and
    builds the learner (:class:`linmaml.benchmarks.train.Trainer`), nothing else drawing in between."""
    torch.manual_seed(config.seed)
    return build_from_config(config, tuple(image_shape)).to(dtype=config.torch_dtype).train()


def summary(values) -> dict:
    """Mean and 95 % interval in percent of per-task fractions (or CKA values, then not scaled)."""
    mean, ci = mean_ci95(values)
    return {"mean": mean, "ci95": ci}


def pct(values) -> dict:
    s = summary(np.asarray(values) * 100)
    return {"accuracy": s["mean"], "ci95": s["ci95"]}


def paired(a, b) -> dict:
    """a − b per task, in points: mean and 95 % interval."""
    s = summary((np.asarray(a) - np.asarray(b)) * 100)
    return {"difference": s["mean"], "ci95": s["ci95"]}


def snapshot_files(folder) -> dict[int, pathlib.Path]:
    folder = pathlib.Path(folder) / "snapshots"
    found = {}
    for file in sorted(folder.glob("iter-*.pt")) if folder.is_dir() else []:
        match = re.fullmatch(r"iter-(\d+)\.pt", file.name)
        if match:
            found[int(match.group(1))] = file
    return found


def engine_accuracies(learner, config, tasks, steps) -> np.ndarray:
    """The per-task accuracies ``linmaml evaluate`` computes (the learner's own adaptation through the
    engine): a cross-check of the library's own adaptation."""
    accuracies, _ = score_tasks(make_engine(learner, config), tasks, steps=steps, dtype=config.torch_dtype)
    return np.asarray(accuracies, dtype=np.float64)


def own_accuracies(learner, tasks, lrs) -> np.ndarray:
    fr.check_plain_steps(learner)
    network = fr.network_of(learner)
    return fr.query_accuracies(network, tasks, fr.adapted_names_of(learner, network), lrs)


#: The record's sections that depend only on the --maml, --anil and --control files and the tasks.
FIXED_PARTS = ("freezing", "nil", "similarity")


def compute(args, previous: dict | None = None) -> dict:
    started = time.perf_counter()
    maml, config, maml_record, payload = load(args.maml)
    anil, anil_config, anil_record, _ = load(args.anil)
    if (anil_config.ways, anil_config.shots, anil_config.benchmark) != (config.ways, config.shots, config.benchmark):
        raise ArgumentError("anil", f"a {anil_config.benchmark} {anil_config.ways}-way {anil_config.shots}-shot run, "
                                    f"--maml is {config.benchmark} {config.ways}-way {config.shots}-shot")
    splits = load_splits(config.benchmark, ("test",), args.data_root, **data_options(config))
    tasks = episodes.evaluation_tasks(splits["test"], config.ways, config.shots, config.test_query,
                                      count=args.tasks, seed=0)
    few = episodes.evaluation_tasks(splits["test"], config.ways, config.shots, config.test_query,
                                    count=args.trajectory_tasks, seed=0)
    steps = config.test_steps
    lrs = maml.step_rates(steps)
    anil_lrs = anil.step_rates(anil_config.test_steps)
    network = fr.network_of(maml)
    layers = [layer.name for layer in fr.network_layers(network)]
    result = {"figure": NAME, "paper": PAPER,
              "settings": {"benchmark": config.benchmark, "ways": config.ways, "shots": config.shots,
                           "query": config.test_query, "tasks": args.tasks, "trajectory_tasks": args.trajectory_tasks,
                           "task_seed": 0, "split": "test", "test_steps": steps, "inner_lrs": lrs,
                           "anil_test_steps": anil_config.test_steps, "anil_inner_lrs": anil_lrs,
                           "layers": layers},
              "checkpoints": {"maml": maml_record, "anil": anil_record}}

    say = lambda text: print(f"raghu: {text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    control = None
    if args.control is not None:
        control, _, control_record, _ = load(args.control)
        result["checkpoints"]["control"] = control_record
    # What (a), (c) and (d) depend on: the same files and tasks give the same numbers, so a rerun
    # (e.g. for new snapshots) takes them from the previous record instead of recomputing them.
    basis = {"maml": maml_record["sha256"], "anil": anil_record["sha256"],
             "control": control_record["sha256"] if control is not None else None,
             "tasks": args.tasks, "ways": config.ways, "shots": config.shots, "query": config.test_query}
    result["basis"] = basis
    if previous is not None and previous.get("basis") == basis and all(k in previous for k in FIXED_PARTS):
        for part in FIXED_PARTS:
            result[part] = previous[part]
        say("(a), (c), (d) taken from the previous record (same checkpoints and tasks)")
    elif "fixed" in args.parts:
        compute_fixed_parts(result, maml, anil, control, config, anil_config, tasks, lrs, anil_lrs, payload, layers,
                            say)
    if "trajectory" in args.parts:
        compute_trajectory(result, args, few, previous, say)
    elif previous is not None and previous.get("settings", {}).get("trajectory_tasks") == args.trajectory_tasks:
        result["trajectory"] = previous.get("trajectory", [])
    result["machine"] = machine()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def compute_fixed_parts(result, maml, anil, control, config, anil_config, tasks, lrs, anil_lrs, payload, layers, say):
    """(a), (c) and (d) of the module docstring into ``result``."""
    network = fr.network_of(maml)
    maml_record, anil_record = result["checkpoints"]["maml"], result["checkpoints"]["anil"]
    # (a) layer freezing
    rows = fr.freezing_table(maml, tasks, lrs)
    engine = engine_accuracies(maml, config, tasks, config.test_steps)
    none = fr.query_accuracies(network, tasks, [], lrs)
    full = rows[0]["accuracies"]
    result["freezing"] = {
        "rows": [{"frozen_layers": [layers.index(n) + 1 for n in r["frozen"]], "frozen": r["frozen"],
                  "adapted": r["adapted"], **pct(r["accuracies"]), "minus_full": paired(r["accuracies"], full),
                  "per_task": r["accuracies"].tolist()} for r in rows],
        "no_adaptation": {**pct(none), "per_task": none.tolist()},
        "engine_check": {"accuracy": pct(engine)["accuracy"],
                         "max_abs_task_difference": float(np.abs(engine - full).max()),
                         "note": "linmaml evaluate's adaptation (the engine) on the same tasks; equals the "
                                 "no-layer-frozen row up to rounding"}}
    say("freezing done")

    # (c) NIL
    nil = {}
    for label, learner, learner_lrs, record in (("maml", maml, lrs, maml_record), ("anil", anil, anil_lrs, anil_record)):
        own = own_accuracies(learner, tasks, learner_lrs)
        scores = fr.nil_accuracies(learner, tasks, ways=config.ways)
        nil[label] = {"iteration": record["iteration"], "adapted": pct(own), "adapted_per_task": own.tolist(),
                      **{rule: {**pct(v), "minus_adapted": paired(v, own), "per_task": v.tolist()}
                         for rule, v in scores.items()}}
    nil["anil"]["engine_check"] = {"accuracy": pct(engine_accuracies(anil, anil_config, tasks,
                                                                      anil_config.test_steps))["accuracy"]}
    result["nil"] = nil
    say("NIL done")

    # (d) body similarity
    initial = initial_learner(config, payload["image_shape"])
    similarity = {"maml_vs_anil": fr.network_similarity(maml, anil, tasks),
                  "maml_vs_its_initial_weights": fr.network_similarity(maml, initial, tasks)}
    if control is not None:
        similarity["maml_vs_control_maml"] = fr.network_similarity(maml, control, tasks)
    result["similarity"] = {pair: {layer: {**summary(v), "per_task": v.tolist()} for layer, v in per.items()}
                            for pair, per in similarity.items()}
    result["similarity"]["note"] = ("linear CKA of each layer's outputs on the query sets at the meta-learned "
                                    "weights (no adaptation); references: another MAML seed, and the MAML "
                                    "network's own initial weights")
    say("similarity done")


def compute_trajectory(result, args, few, previous, say):
    """(b) of the module docstring into ``result["trajectory"]``; a snapshot already in ``previous``
    (same file by sha256, same number of tasks) is taken from there."""
    trajectory = []
    done = {}
    if previous is not None and previous.get("settings", {}).get("trajectory_tasks") == args.trajectory_tasks:
        done = {point_key(p["checkpoint"]): p for p in previous.get("trajectory", [])}
    if args.trajectory is not None:
        files = snapshot_files(args.trajectory)
        _, traj_config, _, traj_payload = load(args.trajectory)
        points = sorted(set(files) | {0})
        for t in points:
            if t in files:
                key = "sha256:" + sha256(files[t])
            else:
                key = f"initial weights of seed {traj_config.seed}, {traj_config.algo}"
            if key in done:
                trajectory.append(done[key])
                say(f"trajectory iteration {t} taken from the previous record")
                continue
            if t in files:
                learner, _, record, _ = load(files[t])
                record["reconstructed"] = False
            else:  # iteration 0: the run's seed-determined initial weights (module docstring)
                learner = initial_learner(traj_config, traj_payload["image_shape"])
                record = {"path": None, "iteration": 0, "sha256": None, "algo": traj_config.algo,
                          "seed": traj_config.seed, "reconstructed": True}
            t_lrs = learner.step_rates(traj_config.test_steps)
            t_net = fr.network_of(learner)
            cka = fr.cka_before_after(learner, few, t_lrs)
            head = [n for n in fr.adapted_names_of(learner, t_net) if n in fr.network_layers(t_net)[-1].parameters]
            full_t = own_accuracies(learner, few, t_lrs)
            head_t = fr.query_accuracies(t_net, few, head, t_lrs)
            record["key"] = key
            trajectory.append({"iteration": t, "checkpoint": record,
                               "cka": {layer: {**summary(v), "per_task": v.tolist()} for layer, v in cka.items()},
                               "adapted": pct(full_t), "head_only": pct(head_t),
                               "head_only_minus_adapted": paired(head_t, full_t)})
            say(f"trajectory iteration {t} done")
        result["checkpoints"]["trajectory_run"] = {"path": str(pathlib.Path(args.trajectory).resolve()),
                                                   "seed": traj_config.seed, "iterations": traj_config.iterations,
                                                   "snapshots": sorted(files)}
    result["trajectory"] = trajectory


def point_key(record: dict) -> str | None:
    return record.get("key")


def draw(result: dict, path) -> None:
    import matplotlib  # lazy: an optional extra (linmaml/_extras.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: an optional extra (linmaml/_extras.py)

    layers = result["settings"]["layers"]
    short = [f"conv{i + 1}" for i in range(len(layers) - 1)] + ["head"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))

    ax = axes[0]
    rows = result["freezing"]["rows"]
    labels = ["none"] + ["1–" + str(len(r["frozen"])) if len(r["frozen"]) > 1 else "1" for r in rows[1:]]
    ax.errorbar(range(len(rows)), [r["accuracy"] for r in rows], yerr=[r["ci95"] for r in rows], fmt="o-",
                capsize=3, label="MAML-trained, test-time freezing")
    for k, r in enumerate(rows[1:], start=1):  # the paired difference is what the claim is about
        d = r["minus_full"]
        ax.annotate(f"Δ {d['difference']:+.2f}\n± {d['ci95']:.2f}", (k, r["accuracy"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlabel("conv layers frozen at test time (Δ: paired vs none frozen, points)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("(a) freezing layers at test time")
    ax.legend(fontsize=8)

    ax = axes[1]
    traj = result["trajectory"]
    if traj:
        its = [p["iteration"] for p in traj]
        for layer, label in zip(layers, short):
            ax.errorbar(its, [p["cka"][layer]["mean"] for p in traj], yerr=[p["cka"][layer]["ci95"] for p in traj],
                        fmt="o-", capsize=2, label=label)
        ax.axhline(0.9, color="grey", lw=0.6, ls="--")
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.legend(fontsize=8)
    ax.set_xlabel("MAML training iteration")
    ax.set_ylabel("linear CKA, before vs after inner loop")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("(b) representation change in the inner loop")

    ax = axes[2]
    nil = result["nil"]
    groups = [("maml", "MAML"), ("anil", "ANIL")]
    kinds = [("adapted", "own inner loop"), ("cosine", "NIL cosine"), ("euclidean", "NIL Euclidean")]
    for j, (kind, label) in enumerate(kinds):
        xs = [i + (j - 1) * 0.25 for i in range(len(groups))]
        vals = [nil[g]["adapted"] if kind == "adapted" else nil[g][kind] for g, _ in groups]
        ax.bar(xs, [v["accuracy"] for v in vals], 0.24, yerr=[v["ci95"] for v in vals], capsize=3, label=label)
    low = min(min(nil[g]["adapted"]["accuracy"], nil[g]["cosine"]["accuracy"], nil[g]["euclidean"]["accuracy"])
              for g, _ in groups)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_xticks(range(len(groups)), [f"{lab} (iter {nil[g]['iteration']})" for g, lab in groups])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("(c) NIL: no inner loop at test time")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[3]
    sim = result["similarity"]
    for pair, label in (("maml_vs_anil", "MAML vs ANIL"), ("maml_vs_control_maml", "MAML vs MAML (other seed)"),
                        ("maml_vs_its_initial_weights", "MAML vs its initial weights")):
        if pair in sim:
            ax.errorbar(range(len(layers)), [sim[pair][layer]["mean"] for layer in layers],
                        yerr=[sim[pair][layer]["ci95"] for layer in layers], fmt="o-", capsize=2, label=label)
    ax.set_xticks(range(len(layers)), short)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("linear CKA")
    ax.set_title("(d) similarity of two networks")
    ax.legend(fontsize=8)
    fig.suptitle(f"Raghu et al. 2020 on Omniglot {result['settings']['ways']}-way {result['settings']['shots']}-shot "
                 f"({result['settings']['tasks']} test tasks; 95 % intervals over tasks)")
    fig.tight_layout()
    plots_figure.save_figure(fig, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--maml", required=True, type=pathlib.Path, help="MAML run folder (best.pt) or checkpoint")
    parser.add_argument("--anil", required=True, type=pathlib.Path, help="ANIL run folder (best.pt) or checkpoint")
    parser.add_argument("--trajectory", type=pathlib.Path, default=None,
                        help="a MAML run folder with snapshots/ (linmaml train --snapshot-every)")
    parser.add_argument("--control", type=pathlib.Path, default=None,
                        help="a second MAML run (another seed) for the similarity reference")
    parser.add_argument("--tasks", type=int, default=200, help="fixed test tasks for (a), (c), (d) (default 200)")
    parser.add_argument("--trajectory-tasks", type=int, default=100, help="test tasks per snapshot in (b) (default 100)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("figures"), help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default: $LINMAML_DATA)")
    parser.add_argument("--parts", choices=("all", "fixed", "trajectory"), default="all",
                        help="compute (a), (c), (d) ('fixed'), (b) ('trajectory') or all (default); the others are "
                             "kept from the record in --out where it matches")
    parser.add_argument("--fresh", action="store_true",
                        help="recompute everything (default: numbers of unchanged files are taken from the record "
                             "already in --out)")
    args = parser.parse_args(argv)
    args.parts = ("fixed", "trajectory") if args.parts == "all" else (args.parts,)
    for name in ("tasks", "trajectory_tasks", "threads"):
        if getattr(args, name) < (2 if name != "threads" else 1):
            parser.error(f"--{name.replace('_', '-')}: expected at least {2 if name != 'threads' else 1}")
    torch.set_num_threads(args.threads)
    previous = None
    if not args.fresh and (args.out / f"{NAME}.json").is_file():
        previous = _io.load_json(args.out / f"{NAME}.json")
    result = compute(args, previous)
    words = sys.argv[1:] if argv is None else list(argv)
    result["command"] = "python -m linmaml.analysis.raghu " + " ".join(shlex.quote(str(w)) for w in words)
    args.out.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(args.out / f"{NAME}.json", result)
    missing = [part for part in FIXED_PARTS + ("trajectory",) if part not in result]
    if missing:  # a partial record (--parts): the figure waits for the rest
        print(f"raghu: wrote {args.out / (NAME + '.json')} without {', '.join(missing)}; no figure drawn")
        return result
    draw(result, args.out / f"{NAME}.png")
    print(format_summary(result))
    return result


def format_summary(result: dict) -> str:
    lines = ["(a) freezing (MAML-trained):"]
    for r in result["freezing"]["rows"]:
        d = r["minus_full"]
        lines.append(f"  frozen {r['frozen_layers'] or 'none'}: {r['accuracy']:.2f} ± {r['ci95']:.2f} %"
                     f"  (vs none: {d['difference']:+.2f} ± {d['ci95']:.2f})")
    lines.append(f"  no adaptation: {result['freezing']['no_adaptation']['accuracy']:.2f} %")
    lines.append("(b) CKA before vs after adaptation:")
    for p in result["trajectory"]:
        lines.append(f"  iter {p['iteration']}: " + ", ".join(f"{v['mean']:.3f}" for v in p["cka"].values())
                     + f"  acc {p['adapted']['accuracy']:.1f}, head only {p['head_only']['accuracy']:.1f}")
    lines.append("(c) NIL:")
    for g, v in result["nil"].items():
        lines.append(f"  {g}: adapted {v['adapted']['accuracy']:.2f} ± {v['adapted']['ci95']:.2f}, cosine "
                     f"{v['cosine']['accuracy']:.2f} ± {v['cosine']['ci95']:.2f}, euclidean "
                     f"{v['euclidean']['accuracy']:.2f} ± {v['euclidean']['ci95']:.2f}")
    lines.append("(d) CKA of two networks:")
    for pair, per in result["similarity"].items():
        if isinstance(per, dict):
            lines.append(f"  {pair}: " + ", ".join(f"{v['mean']:.3f}" for v in per.values()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
