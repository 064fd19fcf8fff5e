"""Add a trained run's network to the released weights (linmaml/benchmarks/pretrained/)::

    python analysis/release_weights.py --add omniglot-5w1s-maml-seed2 runs/o5w1s-s2 --commit 1ff2c80 --threads 1

reads the run's ``best.pt`` (verified), keeps only what inference needs (settings, image shape,
iteration, best validation record, the learner's weights, unchanged: float32 as trained), writes
``<NAME>.pt`` into the package folder, checks that the written file loads with ``load_learner``
to the same tensors bit for bit, scores it on the fixed test tasks (600 by default, as
``linmaml evaluate --pretrained NAME`` does) and records name → file, bytes, sha256, the training
command (rebuilt from the run's settings), the commit that trained it (``--commit``: the run folder
does not record it), the iteration, the validation record and the test accuracy with its interval
and task count in ``manifest.json``. Adding a name again replaces its entry; ``--remove NAME``
drops one. The run folder is only read.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from linmaml import _io
from linmaml.analysis.omniglot_maml import command_of
from linmaml.benchmarks import checkpoint, pretrained
from linmaml.benchmarks.evaluate import evaluate_checkpoint
from linmaml.benchmarks.loading import load_learner
from linmaml.benchmarks.run import check_run_payload, checkpoint_file
from linmaml.benchmarks.run_files import CONFIG
from linmaml.errors import ArgumentError


def slim_payload(payload: dict) -> dict:
    """The inference part of a ``linmaml train`` checkpoint: no optimizer, counters or pending state."""
    keep = ("format", "iteration", "config", "image_shape", "learner", "best")
    return {key: payload[key] for key in keep if key in payload}


def add(name: str, run_dir, *, folder=None, commit: str | None = None, tasks: int = 600, query: int = 15,
        data_root=None, splits=None, stream=sys.stdout) -> dict:
    """Release the best network of ``run_dir`` as ``name`` into ``folder`` (default: the package's
    pretrained folder); returns the manifest entry written."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        raise ArgumentError("--add", f"the name {name!r} must be lower-case letters, digits, '-' and '.'")
    folder = pretrained.FOLDER if folder is None else Path(folder)
    source, payload = checkpoint_file(run_dir)  # the one rule of linmaml.benchmarks.run: best.pt, else the newest last.pt
    config = check_run_payload(payload, source)
    if config.model is not None:
        raise ArgumentError("--add", f"{source} is a run on a user's model; only the built-in networks are released")
    slim = slim_payload(payload)
    data = checkpoint.encode(slim)
    target = folder / f"{name}.pt"
    _io.atomic_write_bytes(target, data)
    # The file must give back the trained tensors exactly (nothing converted or rounded on the way).
    loaded = load_learner(target).state_dict()
    trained = payload["learner"]
    if set(loaded) != set(trained) or not all(
            loaded[k].dtype == trained[k].dtype and torch.equal(loaded[k], trained[k]) for k in trained):
        target.unlink()
        raise RuntimeError(f"{target} does not give back the weights of {source} bit for bit")
    stream.write(f"{target}: {len(data):,} bytes, weights equal to {source} bit for bit\n")
    start = time.perf_counter()
    scored = evaluate_checkpoint(target, tasks=tasks, query=query, data_root=data_root, splits=splits, device="cpu")
    stream.write(f"test accuracy {100 * scored['accuracy']:.2f} % ± {100 * scored['ci95']:.2f} % on {scored['tasks']}"
                 f" tasks ({time.perf_counter() - start:.0f} s)\n")
    recorded = _io.load_json(Path(run_dir) / CONFIG) if (Path(run_dir) / CONFIG).exists() else {}
    entry = {
        "file": target.name,
        "bytes": len(data),
        "sha256": pretrained.sha256_of(target),
        "source": {"run": str(Path(run_dir)), "checkpoint": source.name},
        "command": command_of(config.to_dict(), str(Path(run_dir)), recorded.get("threads")),
        "trained_commit": commit or "not recorded",
        "iteration": payload.get("iteration"),
        "settings": {k: config.to_dict()[k] for k in ("benchmark", "ways", "shots", "algo", "inner_lr", "steps",
                                                      "test_steps", "iterations", "seed", "dtype")},
        "validation": payload.get("best"),
        "test": {"accuracy": scored["accuracy"], "ci95": scored["ci95"], "tasks": scored["tasks"],
                 "steps": scored["settings"]["steps"], "query": scored["settings"]["query"],
                 "task_seed": scored["settings"]["task_seed"], "split": "test",
                 "command": f"linmaml evaluate --pretrained {name} --tasks {tasks}"
                            + ("" if query == 15 else f" --query {query}")},
    }
    manifest = folder / pretrained.MANIFEST.name
    networks = pretrained._manifest(folder)
    networks[name] = entry
    _io.atomic_write_json(manifest, {"networks": dict(sorted(networks.items()))})
    return entry


def table_rows(name: str, entry: dict) -> tuple[str, str]:
    """The rows of ``name`` for the README's table and for the Released weights table of
    docs/guide/benchmarks.md (``tests/benchmarks/test_bench_pretrained.py`` checks both list every
    released network with these numbers)."""
    test = entry["test"]
    accuracy = f"**{100 * test['accuracy']:.2f} % ± {100 * test['ci95']:.2f} %**"
    size, sha = f"{entry['bytes']:,} bytes", entry["sha256"][:12]
    readme = f"| `{name}` | {accuracy} | {size} | `{sha}…` | `pretrained.load(\"{name}\")` |"
    iterations = entry["settings"]["iterations"]
    guide = f"| `{name}` | {accuracy} | {entry['iteration']:,} of {iterations:,} | {size} | `{sha}` |"
    return readme, guide


def remove(name: str, *, folder=None) -> None:
    folder = pretrained.FOLDER if folder is None else Path(folder)
    networks = pretrained._manifest(folder)
    if name not in networks:
        raise ArgumentError("--remove", f"no released network is called {name!r}")
    (folder / networks.pop(name)["file"]).unlink(missing_ok=True)
    _io.atomic_write_json(folder / pretrained.MANIFEST.name, {"networks": dict(sorted(networks.items()))})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", nargs=2, metavar=("NAME", "RUN_DIR"), help="release RUN_DIR's best.pt as NAME")
    action.add_argument("--remove", metavar="NAME", help="drop a released network")
    parser.add_argument("--commit", default=None, help="the linmaml commit the run was trained with")
    parser.add_argument("--tasks", type=int, default=600, help="fixed test tasks to score (default 600)")
    parser.add_argument("--data-root", default=None, help="datasets folder (default $LINMAML_DATA)")
    parser.add_argument("--folder", default=None, help="where the weights go (default: the package's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.remove:
        remove(args.remove, folder=args.folder)
        return 0
    entry = add(args.add[0], args.add[1], folder=args.folder, commit=args.commit, tasks=args.tasks,
                data_root=args.data_root)
    print(f"{args.add[0]}: sha256 {entry['sha256']}")
    readme, guide = table_rows(args.add[0], entry)
    print(f"add to the table of README.md (On real data):\n{readme}\n"
          f"and to the table of docs/guide/benchmarks.md (Released weights):\n{guide}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
