"""ANIL on real Omniglot with your own CNN: ``train(model=...)``, then ``load_learner`` and adaptation.

The network is an ordinary ``nn.Module`` written here (:class:`MyCNN`: stride-2 conv blocks with
BatchNorm on batch statistics, flattened, and a linear head called ``classifier``).
``train(options, out_dir, model=MyCNN(), ...)`` (``from linmaml.benchmarks.train import train``) builds the ANIL learner around it
(``options["head"] = "classifier"`` names the adapted submodule; everything else is meta-trained in
the outer loop) and writes the run folder: ``config.json``, ``metrics.jsonl``, ``last.pt``,
``best.pt``. ``load_learner(out_dir, model=MyCNN())`` rebuilds the trained learner around a fresh
instance of the same class (its weights are replaced by the checkpoint's); the script then adapts it
on a few fixed 5-way 1-shot tasks of the 423 held-out test characters and prints the query accuracy
before and after adaptation.

Requirements on your model (checked by ``train``, refused with a message naming ``model``): it maps
images ``(n, 1, 28, 28)`` to logits ``(n, ways)``. A BatchNorm with running statistics runs under the
buffers policy "frozen" (batch statistics in every pass, as MAML uses them; running statistics left as
they were), and Dropout draws per task (``randomness``); :mod:`linmaml.benchmarks.learners` says how.

Data: the real Omniglot from ``--data-root`` (default ``$LINMAML_DATA``, then ``~/.cache/linmaml``),
holding ``omniglot/`` (``linmaml data download omniglot --root DIR`` fetches it). Reading and
preprocessing it takes 10–15 s on a busy CPU, included in every run.

Measured (``python examples/omniglot_anil_custom_cnn.py``: 200 iterations of 8 tasks, one thread on
a 2-core CPU shared with other jobs, 51 s in all, 33 s of it training): on 100 held-out test tasks the
query accuracy is 19.3 % before adaptation (chance: 20 %) and 75.5 % after 3 inner steps of the head
(validation accuracy 76.4 % at the end). With ``--iterations 300 --meta-batch 16`` (164 s of
training): 82.1 %. ``--quick`` trains 4 iterations of 2 tasks (a smoke test, numbers meaningless).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from linmaml.benchmarks import episodes, load_learner
from linmaml.benchmarks.data import load_splits
from linmaml.benchmarks.train import train


class MyCNN(nn.Module):
    """The user's network: ``blocks`` × (3×3 conv stride 2, BatchNorm on batch statistics, ReLU),
    then a linear head ``classifier`` on the flattened features. Images (n, 1, 28, 28) → logits (n, ways)."""

    def __init__(self, ways: int = 5, width: int = 32, blocks: int = 3):
        super().__init__()
        layers, channels, size = [], 1, 28
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1),
                       nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU()]
            channels, size = width, (size + 1) // 2
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x).flatten(1))


def accuracy_on_test_tasks(learner, test_split, count: int, steps: int) -> tuple[float, float]:
    """Mean query accuracy over ``count`` fixed 5-way 1-shot test tasks (15 queries per class),
    before adaptation and after ``steps`` inner steps, one task at a time with ``learner.adapt``."""
    before, after = [], []
    for task in episodes.evaluation_tasks(test_split, 5, 1, 15, count=count, seed=0):
        xs, ys, xq, yq = task.to_torch(dtype=torch.float32)
        fast = learner.adapt(xs, ys, F.cross_entropy, steps=steps)   # the adapted head
        with torch.no_grad():
            before.append(float((learner(xq).argmax(1) == yq).float().mean()))
            after.append(float((learner(xq, params=fast).argmax(1) == yq).float().mean()))
    return sum(before) / len(before), sum(after) / len(after)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 iterations, 5 test tasks (smoke test)")
    parser.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $LINMAML_DATA)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary folder, removed)")
    parser.add_argument("--iterations", type=int, default=200, help="meta-training iterations (default 200)")
    parser.add_argument("--meta-batch", type=int, default=8, help="tasks per meta-batch (default 8)")
    parser.add_argument("--test-tasks", type=int, default=100, help="held-out tasks to adapt to (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    for name in ("iterations", "meta_batch", "test_tasks", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    options = dict(benchmark="omniglot", ways=5, shots=1, algo="anil", head="classifier", inner_lr=0.4, steps=1,
                   test_steps=3, meta_batch=args.meta_batch, iterations=args.iterations, val_every=100, val_tasks=50,
                   checkpoint_every=100)
    if args.quick:
        options.update(iterations=4, meta_batch=2, val_every=2, val_tasks=4, checkpoint_every=2)
        args.test_tasks = 5

    start = time.perf_counter()
    try:
        splits = load_splits("omniglot", ("train", "val", "test"), args.data_root)
    except (OSError, ValueError) as error:  # missing or damaged data: the library's one-line message
        parser.exit(2, f"{parser.prog}: {error}\n")
    print(f"read Omniglot: {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "anil-mycnn"
        torch.manual_seed(0)
        start = time.perf_counter()
        result = train(options, out, model=MyCNN(), splits={"train": splits["train"], "val": splits["val"]},
                       device="cpu", threads=args.threads)
        print(f"trained ANIL around MyCNN: {result.iteration} iterations in {time.perf_counter() - start:.1f} s "
              f"({result.status}), run folder {out}")

        learner = load_learner(out, model=MyCNN())   # best.pt, rebuilt around a fresh MyCNN
        before, after = accuracy_on_test_tasks(learner, splits["test"], args.test_tasks, options["test_steps"])
    print(f"held-out test tasks ({args.test_tasks}, 5-way 1-shot): accuracy {100 * before:.1f} % before adaptation, "
          f"{100 * after:.1f} % after {options['test_steps']} inner steps")


if __name__ == "__main__":
    main()
