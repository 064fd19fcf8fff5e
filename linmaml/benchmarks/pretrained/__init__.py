"""Released weights: trained Omniglot networks shipped inside the package, by name.

    from linmaml.benchmarks import pretrained
    pretrained.names()                                   # ['omniglot-5w1s-maml-seed0', ...]
    learner = pretrained.load("omniglot-5w1s-maml-seed0")  # meta.MAML, float32, on the CPU
    fast = learner.adapt(xs, ys, F.cross_entropy, steps=3)  # xs (5, 1, 28, 28): a 5-way 1-shot support set
    logits = learner(xq, params=fast)                    # (n, 5)

or from the command line, scored on the 600 fixed test tasks: ``linmaml evaluate --pretrained NAME``.

Each network is one file in this folder, ``<name>.pt``: a checkpoint as ``linmaml train`` writes it
(:mod:`linmaml.benchmarks.checkpoint`: a ``torch.save`` archive with its sha256 in the zip comment,
readable with plain ``torch.load(path, weights_only=True)``), holding only what inference needs —
the run's settings (``config``), ``image_shape``, the ``iteration`` it was kept at, its best
validation record (``best``) and the learner's weights (``learner``), in float32 exactly as
trained (no optimizer state, no rounding). :func:`load` is :func:`~linmaml.benchmarks.loading.load_learner`
on that file, so the learner is rebuilt and used exactly as a run folder's ``best.pt`` is.

``manifest.json`` beside them records, per name: the file, its size and sha256 (checked by
:func:`path` before every use), the command that trained it, the commit of linmaml that trained it,
the iteration kept (best validation accuracy), and its test accuracy (mean and 95% CI over the
fixed test tasks, their number, the inner steps) with the command that measured it.
``analysis/release_weights.py --add NAME RUN_DIR`` adds a network from a finished run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from linmaml import _io
from linmaml.benchmarks.checkpoint import CorruptCheckpoint
from linmaml.benchmarks.loading import load_learner
from linmaml.errors import ArgumentError, ArgumentTypeError, FileContentError

__all__ = ["FOLDER", "MANIFEST", "names", "info", "path", "load", "sha256_of"]

#: The folder holding the weight files and the manifest (inside the installed package).
FOLDER = Path(__file__).resolve().parent
#: The manifest: ``{"networks": {name: entry}}`` (see the module docstring for an entry's fields).
MANIFEST = FOLDER / "manifest.json"


def _manifest(folder: Path | None = None) -> dict:
    file = (FOLDER if folder is None else Path(folder)) / MANIFEST.name
    if not file.exists():
        return {}
    data = _io.load_json(file)
    networks = data.get("networks") if isinstance(data, dict) else None
    if not isinstance(networks, dict):
        raise FileContentError(str(file), "is not a manifest of released weights (no 'networks' object)", separator=" ")
    return networks


def names() -> list[str]:
    """The names of the released networks, sorted."""
    return sorted(_manifest())


def info(name: str) -> dict:
    """The manifest entry of ``name`` (a copy): ``file``, ``bytes``, ``sha256``, ``command``,
    ``trained_commit``, ``iteration``, ``test`` (``accuracy``/``ci95`` as fractions, ``tasks``,
    ``steps``, ``query``, ``task_seed``, ``command``), ``validation``, ``source``.
    ``ArgumentError`` naming ``name`` if no network has that name (the message lists the names)."""
    if not isinstance(name, str):
        raise ArgumentTypeError("name", f"expected the name of a released network (str), got {type(name).__name__}")
    networks = _manifest()
    if name not in networks:
        known = ", ".join(sorted(networks)) or "none"
        raise ArgumentError("name", f"no released network is called {name!r} (released: {known})")
    return json.loads(json.dumps(networks[name]))


def sha256_of(file) -> str:
    """The hex sha256 of the bytes of ``file``."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str) -> Path:
    """The weight file of ``name``, after checking its sha256 against the manifest
    (:class:`~linmaml.benchmarks.checkpoint.CorruptCheckpoint` naming the file and both digests when
    it differs, ``FileNotFoundError`` when the file is missing)."""
    entry = info(name)
    file = FOLDER / entry["file"]
    if Path(entry["file"]).name != entry["file"]:  # the manifest names files in this folder only
        raise FileContentError(MANIFEST, f"the file of {name!r} must be a plain file name, got {entry['file']!r}")
    if not file.is_file():
        raise FileNotFoundError(f"pretrained: the weights of {name!r} ({file}) are missing from the installation")
    actual = sha256_of(file)
    if actual != entry["sha256"]:
        raise CorruptCheckpoint(f"pretrained: {file} has sha256 {actual}, the manifest says {entry['sha256']}"
                                f" (the file is damaged or was replaced)")
    return file


def load(name: str, map_location=None):
    """The released learner ``name`` (``meta.MAML`` for the MAML networks), checked against the
    manifest's sha256 and loaded with :func:`~linmaml.benchmarks.loading.load_learner` (float32,
    training mode — BatchNorm on each batch's own statistics, as trained; ``map_location`` as there).
    Adapt it with the run's inner rate and test steps: ``info(name)["test"]["steps"]`` steps (the
    learner's own ``lr`` is the run's inner rate)."""
    return load_learner(path(name), map_location=map_location)
