"""Progress lines: a validation pass is never silent, and no ETA is printed from the first (warm-up)
item alone. Times are passed in, never measured: the tests count lines, not seconds."""
from __future__ import annotations

import io

import pytest

from linmaml.benchmarks.progress import Progress, RemainingTime, TaskProgress, eta_words


def test_remaining_time_leaves_out_the_warm_up_and_waits_for_three_reports():
    remaining = RemainingTime(total=100)
    # first task 10 s (warm-up), then 1 s per task: a first-item estimate would say 99 · 10 s
    assert remaining.update(1, 10.0) is None
    assert remaining.update(2, 11.0) is None
    assert remaining.update(3, 12.0) == pytest.approx(97 * 1.0)
    assert remaining.update(10, 19.0) == pytest.approx(90 * 1.0)
    chunks = RemainingTime(total=40)  # chunks of 4 tasks, 2 s each after a 9 s first chunk
    assert [chunks.update(d, s) for d, s in ((4, 9.0), (8, 11.0), (12, 13.0))] == [None, None, pytest.approx(14.0)]
    assert eta_words(None) == "eta: measuring" and eta_words(90.0) == "eta 1.5 min"


def test_a_validation_pass_says_so_at_its_first_chunk():
    stream = io.StringIO()
    progress = Progress(iterations=10, val_every=5, val_tasks=40, meta_batch=4, stream=stream, enabled=True,
                        every=1e9)  # the periodic line never comes due here: only forced lines appear
    for t in (1, 2, 3, 4, 5):
        progress.iteration(t, 1.0, 0.5, 0, 0.1)
    assert stream.getvalue() == ""  # nothing due during training (every is huge)
    progress.validation(5, 4, 40, 0.5)
    progress.validation(5, 8, 40, 1.0)
    progress.validation(5, 40, 40, 5.0)  # the pass ends (its result line is the trainer's)
    progress.validation(10, 4, 40, 0.5)  # the next pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("iter 5/10  validation 4/40 tasks") and lines[1].startswith("iter 10/10  validation 4/40")


def test_training_eta_waits_for_three_iterations_and_leaves_out_the_first():
    stream = io.StringIO()
    progress = Progress(iterations=100, val_every=1000, val_tasks=10, meta_batch=4, stream=stream, enabled=True,
                        every=0.0)  # every iteration's line is due
    for t, seconds in enumerate((20.0, 1.0, 1.0, 1.0), 1):
        progress.iteration(t, 1.0, 0.5, 0, seconds)
    lines = stream.getvalue().splitlines()
    assert "eta: measuring" in lines[0] and "eta: measuring" in lines[1]
    assert progress.per_iteration() == pytest.approx(1.0)  # (23 - 20) / 3, the 20 s warm-up left out
    # 96 iterations left at 1 s, and the one validation pass at the end: 10 tasks at 1 s / 4 tasks
    assert progress.eta(4) == pytest.approx(96 + 10 / 4)
    assert "1.6 min" in lines[3]


def test_task_progress_prints_no_eta_from_one_task_and_none_at_the_end():
    stream = io.StringIO()
    status = TaskProgress("evaluate test", stream, every=0.0)
    for done, seconds in ((1, 30.0), (2, 31.0), (3, 32.0), (4, 33.0)):
        status.on_progress(done, 4, seconds)
    lines = stream.getvalue().splitlines()
    assert "eta: measuring" in lines[0] and "eta: measuring" in lines[1]
    assert "eta 0.0 min" in lines[2]  # one task left at 1 s
    assert lines[3] == "evaluate test: 4/4 tasks  33 s"
