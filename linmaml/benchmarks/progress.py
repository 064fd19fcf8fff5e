"""The status line of a training run: iterations, running loss and accuracy (in percent), and an ETA
that counts the validation passes still to come.

On a terminal the line is rewritten in place (at most 5 times a second); otherwise a line is
written every ``every`` seconds, so logs stay short. During a validation pass the line shows the
tasks scored so far, so a long final validation is never silent.

The first chunk of every validation pass is reported at once (then every ``every`` seconds), so a
pass is never silent.

The ETA is ``remaining iterations · (seconds per iteration) + remaining validation tasks ·
(seconds per validation task)``, both rates measured in this process, training and validation
apart. The first iteration (warm-up) is left out of the rate and no ETA is printed before three
iterations ("eta: measuring"): a first-iteration estimate was 14× too long. Before the first
validation task is timed, a task is estimated at the cost of one training task (seconds per
iteration / meta-batch): the order of magnitude, corrected after the first chunk. Scoring passes
(``evaluate``, ``analyze``) use :class:`RemainingTime` likewise.
"""
from __future__ import annotations

import collections
import time

import numpy as np


def safe_write(stream, text: str) -> bool:
    """Write and flush ``text`` on ``stream``; False (nothing raised) when the stream is closed, a
    broken pipe (``train … 2>&1 >/dev/null | head -c 100``) or full (``2>/dev/full``). Progress is
    a courtesy: losing it must never stop a run."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):  # ValueError: "I/O operation on closed file"
        return False


class StatusLine:
    """One status line on ``stream``, the writer of every progress display (training's
    :class:`Progress`, the scoring passes' :class:`TaskProgress`): on a terminal rewritten in place,
    at most 5 times a second; otherwise one line at most every ``every`` seconds. A line written with
    ``newline`` stays. A stream that fails (closed, a broken pipe, full) switches it off."""

    def __init__(self, stream, enabled: bool, every: float):
        self.stream, self.enabled, self.every = stream, enabled, every
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.last_print = 0.0

    def due(self, force: bool = False) -> bool:
        """Whether a line may be written now (always with ``force``); if so, the clock restarts."""
        if not self.enabled:
            return False
        now = time.perf_counter()
        if not force and now - self.last_print < (0.2 if self.tty else self.every):
            return False
        self.last_print = now
        return True

    def emit(self, text: str, newline: bool = False) -> None:
        if self.tty and not newline:
            text = "\r\033[K" + text
        else:
            text = ("\r\033[K" if self.tty else "") + text + "\n"
        if not safe_write(self.stream, text):
            self.enabled = self.tty = False  # the stream is gone: carry on without progress output

    def close(self) -> None:
        if self.enabled and self.tty:
            safe_write(self.stream, "\n")


class Progress:
    """``Progress(iterations, val_every, val_tasks, meta_batch, stream, enabled)``; call
    :meth:`iteration` after each step, :meth:`validation` as validation tasks are scored, and
    :meth:`line` for a message that stays. Running accuracy: mean over the last 100 iterations."""

    def __init__(self, iterations: int, val_every: int, val_tasks: int, meta_batch: int, stream, enabled: bool,
                 every: float = 30.0):
        self.total, self.val_every, self.val_tasks, self.meta_batch = iterations, val_every, val_tasks, meta_batch
        self.status = StatusLine(stream, enabled, every)
        self.window = collections.deque(maxlen=100)
        self.train_seconds, self.train_iterations, self.first_seconds = 0.0, 0, 0.0
        self.val_seconds, self.val_done = 0.0, 0
        self.val_pass: int | None = None  # the iteration whose validation pass is under way

    def validations_after(self, iteration: int) -> int:
        """How many validation passes come after ``iteration`` (every ``val_every``, and at the end)."""
        extra = 1 if self.total % self.val_every and iteration < self.total else 0
        return self.total // self.val_every - min(iteration, self.total) // self.val_every + extra

    def per_iteration(self) -> float | None:
        """Seconds per training iteration, the first (warm-up) left out; None before 3 iterations."""
        if self.train_iterations < 3:
            return None
        return (self.train_seconds - self.first_seconds) / (self.train_iterations - 1)

    def eta(self, iteration: int, val_tasks_left: int = 0) -> float | None:
        """Seconds still to go after ``iteration`` with ``val_tasks_left`` tasks of the current pass
        (None while fewer than 3 iterations are measured)."""
        per_iteration = self.per_iteration()
        if per_iteration is None:
            return None
        per_task = self.val_seconds / self.val_done if self.val_done else per_iteration / self.meta_batch
        tasks = val_tasks_left + self.validations_after(iteration) * self.val_tasks
        return (self.total - iteration) * per_iteration + tasks * per_task

    def iteration(self, iteration: int, loss: float, accuracy: float, skipped: int, seconds: float,
                  force: bool = False) -> None:
        """An iteration finished after ``seconds`` of training work (validation not included)."""
        self.window.append(accuracy)
        if self.train_iterations == 0:
            self.first_seconds = seconds
        self.train_seconds += seconds
        self.train_iterations += 1
        if self.status.due(force):
            per_iteration = self.per_iteration() or self.train_seconds / self.train_iterations
            self.status.emit(f"iter {iteration}/{self.total}  loss {loss:.4f}  acc {100 * np.mean(self.window):.1f} % (last "
                       f"{len(self.window)})  {per_iteration:.2f} s/it  {eta_words(self.eta(iteration))}"
                       + (f"  skipped {skipped}" if skipped else ""))

    def validation(self, iteration: int, done: int, total: int, seconds: float) -> None:
        """``done`` of the ``total`` tasks of the validation pass after ``iteration`` are scored,
        ``seconds`` after it began (called after each chunk; the last call closes the pass)."""
        if done == total:
            self.val_seconds += seconds
            self.val_done += total
            self.val_pass = None
            return
        starting = self.val_pass != iteration  # the first chunk of a pass is always said: never silent
        self.val_pass = iteration
        if self.status.due(starting):
            rate = (self.val_seconds + seconds) / (self.val_done + done) if done else None
            left = total - done
            rest = self.eta(iteration)
            if rest is None:
                eta = None
            else:
                eta = (rest + left * rate) if rate is not None else self.eta(iteration, left)
            self.status.emit(f"iter {iteration}/{self.total}  validation {done}/{total} tasks  {eta_words(eta)}",
                             newline=starting and not self.status.tty)

    def line(self, text: str) -> None:
        if self.status.enabled:
            self.status.emit(text, newline=True)

    def close(self) -> None:
        self.status.close()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class RemainingTime:
    """An ETA that is not fooled by a slow start: the rate is measured from the first report on (the
    first item's time holds one-off work: building the scoring function, first allocations, a cold
    cache; on a loaded machine a first task took 15× a later one), and no estimate is given until
    ``reports`` reports (the first included) have come in.

    ``update(done, seconds)`` with the items done and the seconds since the start; returns the
    seconds still to go for ``total`` items, or None while too little is measured."""

    def __init__(self, total: int, reports: int = 3):
        self.total, self.reports = total, reports
        self.first: tuple[int, float] | None = None
        self.count = 0

    def update(self, done: int, seconds: float) -> float | None:
        self.count += 1
        if self.first is None:
            self.first = (done, seconds)
        first_done, first_seconds = self.first
        if self.count < self.reports or done <= first_done:
            return None
        return (seconds - first_seconds) / (done - first_done) * max(self.total - done, 0)


def eta_words(seconds: float | None) -> str:
    """``eta 1.5 min``, or ``eta: measuring`` while there is no estimate yet."""
    return "eta: measuring" if seconds is None else f"eta {_minutes(seconds)}"


class TaskProgress:
    """The status line of a scoring pass over ``total`` tasks (``linmaml evaluate``): tasks done and an
    ETA from the measured seconds per task; rewritten in place on a terminal (at most 5 times a
    second), else one line every ``every`` seconds. Use ``on_progress`` as
    :func:`~linmaml.benchmarks.scoring.score_tasks`'s callback."""

    def __init__(self, label: str, stream, enabled: bool = True, every: float = 10.0):
        self.label = label
        self.status = StatusLine(stream, enabled, every)
        self.remaining: RemainingTime | None = None

    def on_progress(self, done: int, total: int, seconds: float) -> None:
        if not self.status.enabled:
            return
        if self.remaining is None:
            self.remaining = RemainingTime(total)
        eta = self.remaining.update(done, seconds)  # every chunk is measured, printed or not
        if self.status.due(force=done >= total):
            self.status.emit(f"{self.label}: {done}/{total} tasks  {seconds:.0f} s"
                             + ("" if done >= total else f"  {eta_words(eta)}"), newline=done >= total)
