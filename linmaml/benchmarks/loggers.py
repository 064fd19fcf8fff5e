"""Loggers for ``train(..., on_iteration=...)``: each iteration's metrics record as a CSV row or as
TensorBoard scalars, beside the run's own ``metrics.jsonl``::

    from linmaml.benchmarks.loggers import CSVLogger, TensorBoardLogger, combine
    with CSVLogger("runs/maml/metrics.csv") as csv_log, TensorBoardLogger("tb/maml") as tb_log:
        train(settings, "runs/maml", on_iteration=combine(csv_log, tb_log))

or ``linmaml train ... --log csv:runs/maml/metrics.csv --log tensorboard:tb/maml``.

The record (one per iteration, the dict written as one line of ``metrics.jsonl``): ``iteration``,
``loss`` and ``accuracy`` (the meta-batch's mean query loss and accuracy, None when not finite),
``skipped`` (non-finite steps skipped so far), ``step_skipped``, ``elapsed`` (training seconds,
validation included); ``outer_lr`` under a schedule; after a validation ``val_accuracy``,
``val_ci95``, ``val_loss``, ``load_average`` (the one-minute load then); ``msl_weights``/``first_order``
while MAML++'s recipe options are on. ``train`` calls the hook on rank 0 only, after the line is
written to ``metrics.jsonl`` and before the checkpoint of that iteration.

* :class:`CSVLogger`: one row per record; the columns are the record's keys in the order they first
  appear (a key that appears later, such as ``val_accuracy`` at the first validation, adds a column
  and the file is rewritten with it). Each cell is the JSON text of the value — numbers exactly as
  Python writes them (``json.loads`` gives the same float back), ``true``/``false``, lists as JSON —
  and empty when the record lacks the key or holds None. Flushed after every row; created at the
  first record (so a process that never logs, another rank, leaves no file).
* :class:`TensorBoardLogger` (the extra ``linmaml[tensorboard]``): ``add_scalar(key, value,
  iteration)`` for every number of the record (booleans as 0/1, a list as ``key/0``, ``key/1``, …;
  None and ``iteration`` itself skipped). The writer is created at the first record.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from linmaml import _io
from linmaml._extras import require
from linmaml.errors import ArgumentError

__all__ = ["CSVLogger", "TensorBoardLogger", "combine", "from_spec", "cell", "scalars"]


def cell(value) -> str:
    """The CSV cell of a record's value: empty for None, else its JSON text."""
    return "" if value is None else json.dumps(value)


def scalars(record: dict) -> list[tuple[str, float]]:
    """``(tag, value)`` of every number in ``record`` (what :class:`TensorBoardLogger` writes):
    ``iteration`` and None left out, booleans as 0.0/1.0, a list of numbers as ``key/0``, ``key/1``…"""
    out = []
    for key, value in record.items():
        if key == "iteration" or value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((f"{key}/{i}", float(v)) for i, v in enumerate(value) if isinstance(v, (int, float)))
        elif isinstance(value, (int, float)):  # bool is an int
            out.append((key, float(value)))
    return out


class CSVLogger:
    """Append each metrics record to the CSV file ``path`` (module docstring: columns and cells).

    ``append``: continue an existing file (a resumed run: rows of iterations at or after the first
    new record's are dropped, as ``metrics.jsonl`` drops them); otherwise an existing file is
    replaced at the first record. Use as the ``on_iteration`` hook; :meth:`close` (or ``with``) at the end.
    """

    def __init__(self, path, append: bool = False):
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ArgumentError("path", f"expected a file path, got {path!r}")
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise ArgumentError("path", f"{self.path} is a folder, not a CSV file")
        self.append = bool(append)
        self.columns: list[str] = []
        self.file = None

    def _open(self, first_iteration) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        if self.append and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file)
                self.columns = list(reader.fieldnames or [])
                rows = [row for row in reader if _before(row.get("iteration"), first_iteration)]
        _io.atomic_write_text(self.path, _table(self.columns, rows))
        self.file = _io.open_nofollow(self.path, "a")

    def __call__(self, record: dict) -> None:
        if self.file is None:
            self._open(record.get("iteration"))
        new = [key for key in record if key not in self.columns]
        if new:  # a column appears: rewrite the file with the wider header (rare: the first validation)
            self.file.close()
            with open(self.path, newline="", encoding="utf-8") as file:
                rows = list(csv.DictReader(file)) if self.columns else []
            self.columns += new
            _io.atomic_write_text(self.path, _table(self.columns, rows))
            self.file = _io.open_nofollow(self.path, "a")
        self.file.write(_table(None, [{key: cell(value) for key, value in record.items()}], self.columns))
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _before(value, iteration) -> bool:
    """Whether a CSV row's ``iteration`` cell is before ``iteration`` (rows a resumed run keeps)."""
    try:
        return iteration is None or int(value) < int(iteration)
    except (TypeError, ValueError):
        return False


def _table(header, rows, columns=None) -> str:
    """CSV text: the header line (unless None) and the rows (dicts of cells) in ``columns`` order."""
    columns = header if columns is None else columns
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    if header is not None and columns:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class TensorBoardLogger:
    """Write each metrics record's numbers as TensorBoard scalars in ``log_dir`` (step: the iteration).

    Needs the ``tensorboard`` package (``pip install 'linmaml[tensorboard]'``); without it the
    constructor raises :class:`~linmaml._extras.MissingExtraError` naming the extra. ``writer``: any
    object with ``add_scalar(tag, value, step)`` (and optionally ``flush``/``close``) to use instead
    of a ``torch.utils.tensorboard.SummaryWriter``.
    """

    def __init__(self, log_dir, writer=None):
        if writer is None:
            # tensorboard is an optional extra: require() imports it only here, when no writer is given
            self._summary_writer = require("torch.utils.tensorboard", "the TensorBoard logger").SummaryWriter
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ArgumentError("log_dir", f"expected a folder path, got {log_dir!r}")
        self.log_dir = Path(log_dir).expanduser()
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise ArgumentError("log_dir", f"{self.log_dir} is a file, not a folder")
        self.writer = writer

    def __call__(self, record: dict) -> None:
        if self.writer is None:
            self.writer = self._summary_writer(log_dir=str(self.log_dir))
        step = int(record["iteration"])
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, step)
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None and hasattr(self.writer, "close"):
            self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def combine(*hooks):
    """One ``on_iteration`` hook calling each of ``hooks`` (None entries skipped) in turn; None if none."""
    hooks = [hook for hook in hooks if hook is not None]
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def call_all(record: dict) -> None:
        for hook in hooks:
            hook(record)

    return call_all


#: The logger kinds of :func:`from_spec` (``linmaml train --log KIND:PATH``).
KINDS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def from_spec(spec: str, append: bool = False, argument: str = "log"):
    """The logger of ``"csv:PATH"`` or ``"tensorboard:DIR"``; ``append`` continues a CSV file (a
    resumed run). ``ArgumentError`` naming ``argument`` for anything else."""
    kind, colon, target = str(spec).partition(":")
    if not colon or kind not in KINDS or not target:
        raise ArgumentError(argument, f"expected csv:PATH or tensorboard:DIR, got {spec!r}")
    try:
        return CSVLogger(target, append=append) if kind == "csv" else TensorBoardLogger(target)
    except ArgumentError as error:
        raise ArgumentError(argument, f"{kind}: {error.detail}") from None
