"""linmaml.bench.gpu_check (analysis/gpu_check.py is its thin wrapper), the prepared GPU check, run as its CPU dry run on real Omniglot so that the
script cannot rot between GPU sessions: the per-task CPU loop against `linmaml train`'s step with
each --batching (an independent computation: a plain loop over tasks against vmapped inner loops),
a 2-iteration training run with evaluation, and the meta-iteration benchmark at its quick sizes.
Training for 2 iterations cannot reach the 0.6 accuracy the real check asks of 200, so the script
exits 1 here; everything else must pass."""
from __future__ import annotations

import json
import os
import pathlib

import pytest

DATA = os.environ.get("LINMAML_DATA", "")


@pytest.mark.skipif(not (pathlib.Path(DATA) / "omniglot").is_dir(),
                    reason="needs the real Omniglot files: set LINMAML_DATA (make test does)")
def test_dry_run_on_the_cpu(tmp_path, capsys):
    from linmaml.bench import gpu_check as module

    out = tmp_path / "gpu.json"
    status = module.main(["--device", "cpu", "--iterations", "2", "--bench-reps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert status == (0 if report["passed"] else 1)
    for dtype, agreement in report["agreement"].items():
        assert set(agreement["steps"]) == {"split", "vmap"}
        assert agreement["passed"], (dtype, agreement)
        # float64: the batched steps equal the loop to rounding, far inside the tolerance
        if dtype == "float64":
            assert max(r["max_rel_error_gradient"] for r in agreement["steps"].values()) < 1e-11
    training = report["training"]
    assert training["status"] == "done" and training["iterations"] == 2 and training["test_tasks"] == 200
    assert 0.0 <= training["test_accuracy"] <= 1.0 and training["seconds_per_iteration"] > 0
    bench = report["meta_benchmark"]
    assert bench["agreement_ok"] and set(bench["cases"]) == {"maml", "kfo", "anil"}
    for case in bench["cases"].values():
        assert {"reference", "train_step"} <= set(case["variants"])
    printed = capsys.readouterr().out
    assert "meta-iteration maml on cpu" in printed and "--batching vmap" in printed
