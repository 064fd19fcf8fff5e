"""linmaml.bench.harness (the harness behind `linmaml bench`, `python -m linmaml.bench` and analysis/bench.py) in quick mode: every case runs, writes bench.json, and its agreement checks hold
(each case compares two independent computations: closed form vs torch autograd, the benchmark's
plain loop vs the engine and linmaml train's step, the per-task sinusoid loop vs learn2learn- and
higher-style loops written in the benchmark). Timings are not checked here, only that they
were taken. Plus the measurement helpers on known inputs and the `linmaml bench` command."""
from __future__ import annotations

import json
import math
import pathlib
import platform

import numpy as np
import pytest

from linmaml.cli import main

@pytest.fixture(scope="module")
def bench():
    from linmaml.bench import harness as module

    return module


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    record = bench.run(out, quick=True, threads=1, log=lambda text: None)
    return record, out


def _timing_ok(t, reps):
    assert len(t["samples"]) == reps and all(s > 0 for s in t["samples"])
    assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"]
    assert math.isfinite(t["ratio"]) and t["ratio"] > 0


def test_quick_run_writes_every_case(quick_run, bench):
    record, out = quick_run
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["figure"] == "bench" and on_disk["quick"] is True
    assert set(on_disk["cases"]) == set(bench.CASES)
    assert on_disk["numbers"] == json.loads(json.dumps(record["numbers"]))
    assert bench.table(record).count("\n") >= 10


def test_only_keeps_the_other_cases_of_the_previous_run(quick_run, bench, tmp_path):
    """--only re-measures its cases and keeps the rest of bench.json, saying so; a file of the
    other mode (quick vs full) is not mixed in."""
    record, out = quick_run
    folder = tmp_path / "merge"
    folder.mkdir()
    (folder / "bench.json").write_text((out / "bench.json").read_text())
    merged = bench.run(folder, quick=True, only=["deep_linear"], threads=1, log=lambda text: None)
    assert set(merged["cases"]) == set(bench.CASES)
    assert merged["cases_kept_from_previous_run"]["cases"] == sorted(set(bench.CASES) - {"deep_linear"})
    assert merged["cases"]["surface"] == json.loads((out / "bench.json").read_text())["cases"]["surface"]
    assert json.loads((folder / "bench.json").read_text())["cases"].keys() == merged["cases"].keys()
    full_mode = json.loads((out / "bench.json").read_text())
    full_mode["quick"] = False
    (folder / "bench.json").write_text(json.dumps(full_mode))
    alone = bench.run(folder, quick=True, only=["deep_linear"], threads=1, log=lambda text: None)
    assert set(alone["cases"]) == {"deep_linear"} and "cases_kept_from_previous_run" not in alone


def test_surface_agrees_with_torch_simulator(quick_run):
    record, _ = quick_run
    surface = record["cases"]["surface"]
    assert set(surface["steps"]) == {"1", "3", "5"}
    for entry in surface["steps"].values():
        assert entry["agreement_max_relative"] < 1e-10
        _timing_ok(entry["closed_form"], record["settings"]["reps"])
        assert entry["reference_subsample_points"] > 0 and entry["closed_form_peak_mib"] > 0
    assert surface["targets"]["met_agreement"]


def test_deep_linear_agrees_with_torch_simulator(quick_run):
    record, _ = quick_run
    entry = record["cases"]["deep_linear"]
    assert entry["agreement_max_relative"] <= 1e-10
    before, after = entry["support_loss_mean_before_after"]
    assert after < before  # the inner rate is stable
    _timing_ok(entry["closed_form"], record["settings"]["reps"])


def test_sinusoid_per_task_loops_agree_with_the_learn2learn_style_reference(quick_run):
    """Every configuration (second order 1 step, first order 1 step, second order 5 steps) times
    the four loops and their float64 meta-gradients equal the learn2learn-style reference's."""
    record, _ = quick_run
    entry = record["cases"]["sinusoid"]
    reps = record["settings"]["sinusoid"]["reps"]
    assert set(entry["configs"]) == {"second_order_1_step", "first_order_1_step", "second_order_5_steps"}
    for config in entry["configs"].values():
        assert list(config["variants"]) == ["learn2learn_style", "linmaml", "higher_style", "vmapped"]
        for t in config["variants"].values():
            _timing_ok(t, reps)
        assert set(config["agreement_float64_max_relative"]) == {"linmaml", "higher_style", "vmapped"}
        assert all(v <= 1e-10 for v in config["agreement_float64_max_relative"].values())
    assert entry["targets"]["met_agreement"]
    assert any(key.startswith("sinusoid_first_order_1_step_linmaml") for key in record["numbers"])


def test_sinusoid_agreement_catches_a_wrong_loop(bench):
    """The agreement measure can fail: a loop that drops the second-order term (first order
    computed where second order is asked) differs from the reference far beyond 1e-10."""
    import torch

    from linmaml.bench import case_sinusoid as case

    s = {**bench.QUICK["sinusoid"], "lr": 0.5}
    model, batch = case.setup(s, torch.float64)
    grads = case._meta_gradients(model, {"reference": case.learn2learn_style(model, 2, False, 0.5),
                                         "wrong": case.higher_style(model, 2, True, 0.5)}, batch)
    assert bench.relative_error([g.numpy() for g in grads["reference"]], [g.numpy() for g in grads["wrong"]]) > 1e-4


@pytest.mark.parametrize("case", ["maml", "kfo", "anil"])
def test_meta_iteration_variants_agree(quick_run, case):
    record, _ = quick_run
    entry = record["cases"][case]
    assert {"reference", "reference_convnet", "reference_channels_last", "train_step", "loop",
            "batched"} <= set(entry["variants"])
    for name, t in entry["variants"].items():
        _timing_ok(t, record["settings"]["reps"])
    # float64: every variant equals the plain loop up to rounding
    assert set(entry["agreement_float64_max_relative"]) == set(entry["variants"]) - {"reference"}
    assert all(v <= 1e-10 for v in entry["agreement_float64_max_relative"].values())
    # float32: every variant about as close to the float64 value as the plain loop itself
    errors = entry["float32_error_vs_float64_max_relative"]
    assert all(v <= max(1e-5, 10 * errors["reference"]) for v in errors.values())
    assert entry["targets"]["met_agreement"]


def test_transforms_case_times_each_transform_beside_maml(quick_run):
    """Every learned transform's train step is timed beside plain MAML's in the same rounds;
    ``over_maml`` is the median of the per-round time ratios (recomputed here from the samples), and
    every step's float64 meta-gradient equals the benchmark's plain loop with that transform."""
    record, _ = quick_run
    entry = record["cases"]["transforms"]
    reps = record["settings"]["transforms"]["reps"]
    assert list(entry["variants"]) == ["maml", "kfo", "metacurvature", "metasgd", "rates"]
    maml = entry["variants"]["maml"]["samples"]
    for name, t in entry["variants"].items():
        _timing_ok(t, reps)
        assert t["over_maml"] == pytest.approx(float(np.median(np.asarray(t["samples"]) / np.asarray(maml))),
                                               rel=1e-4)  # the samples are stored rounded to 1 µs
        assert record["numbers"][f"transforms_{name}_over_maml"] == t["over_maml"]
    assert entry["variants"]["maml"]["over_maml"] == 1.0
    assert set(entry["agreement_float64_max_relative"]) == set(entry["variants"])
    assert all(v <= 1e-10 for v in entry["agreement_float64_max_relative"].values())


def test_ratios_are_medians_of_per_round_ratios(bench):
    timings = {"ref": {"samples": [2.0, 4.0, 9.0]}, "fast": {"samples": [1.0, 1.0, 3.0]}}
    bench.ratios(timings, "ref")
    assert timings["fast"]["ratio"] == pytest.approx(3.0)  # per round 2, 4, 3
    assert timings["fast"]["ratio_of_medians"] == pytest.approx(4.0)
    assert timings["ref"]["ratio"] == pytest.approx(1.0)
    bench.ratios(timings, "ref", scale={"ref": 10.0})
    assert timings["fast"]["ratio"] == pytest.approx(30.0)


def test_interleaved_counts_calls(bench):
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    out = bench.interleaved({"a": make("a"), "b": make("b")}, reps=5, warm_each=True)
    assert calls == {"a": 11, "b": 11}  # warm-up + 5 × (untimed + timed)
    assert len(out["a"]["samples"]) == 5


def test_relative_error_floor(bench):
    ref = [np.array([3.0, 4.0]), np.array([1e-20])]
    assert bench.relative_error(ref, [np.array([3.0, 4.5]), np.array([1e-20])]) == pytest.approx(0.1)
    # a structurally-zero tensor is measured against the whole gradient (norm 5), not its own norm
    assert bench.relative_error(ref, [np.array([3.0, 4.0]), np.array([5e-3])]) == pytest.approx(1.0)


def test_memory_probe_in_a_fresh_process(bench):
    probe = bench.memory_probe_subprocess("deep_linear", "closed_form", bench.QUICK["deep_linear"], threads=1)
    assert "error" not in probe, probe
    assert probe["peak_mib"] >= probe["resident_before_step_mib"] > 0


def test_cli_bench_quick_and_bad_input(tmp_path, capsys):
    assert main(["bench", "--quick", "--only", "deep_linear", "--out", str(tmp_path)]) == 0
    assert "deep_linear" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench.json").read_text())["cases"].keys() == {"deep_linear"}
    assert main(["bench", "--quick", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "--only" in capsys.readouterr().err


def test_allocator_case_times_both_policies_in_fresh_processes(quick_run):
    from linmaml.benchmarks import allocator

    record, _ = quick_run
    # bench.run() itself leaves the process's malloc alone (the command line applies its policy)
    assert record["machine"]["allocator"] == str(allocator.current())
    entry = record["cases"]["allocator"]
    assert entry["policies"]["system"].startswith("system")
    glibc = platform.libc_ver()[0] == "glibc"
    assert entry["policies"]["keep"].startswith("keep" if glibc else "system")  # glibc: the thresholds were taken
    assert len(entry["rounds"]) == 1
    for name in ("reference", "train_step"):
        assert math.isfinite(entry["speedup"][name]) and entry["speedup"][name] > 0
        assert entry["rounds"][0]["system"][name] > 0 and entry["rounds"][0]["keep"][name] > 0
    assert record["numbers"]["allocator_keep_train_step_speedup"] == entry["speedup"]["train_step"]


def test_every_case_records_how_it_was_measured(quick_run, bench, tmp_path):
    """Each case carries its own threads/allocator/date, so a later --only run that keeps it beside
    cases measured otherwise does not relabel it."""
    record, _ = quick_run
    for case, entry in record["cases"].items():
        assert entry["measured_with"]["torch_threads"] == 1, case
        assert entry["measured_with"]["allocator"] == record["machine"]["allocator"]
    folder = tmp_path / "merge"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps(record))
    merged = bench.run(folder, quick=True, only=["deep_linear"], threads=2, log=lambda text: None)
    assert merged["cases"]["deep_linear"]["measured_with"]["torch_threads"] == 2
    assert merged["cases"]["surface"]["measured_with"]["torch_threads"] == 1  # kept with its own record


def test_cli_bench_quick_without_out_writes_figures_quick(tmp_path, monkeypatch, capsys):
    """``linmaml bench --quick`` without --out never touches figures/bench.json: ./figures-quick."""
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", "--only", "deep_linear"]) == 0
    assert json.loads((tmp_path / "figures-quick" / "bench.json").read_text())["cases"].keys() == {"deep_linear"}
    assert "--quick without --out writes to" in capsys.readouterr().err
