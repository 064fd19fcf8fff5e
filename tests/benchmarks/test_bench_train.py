"""Meta-training loop: meta-gradient, exact resume, folder rules, non-finite stop/skip (tiny synthetic data)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks import checkpoint
from linmaml.benchmarks.learners import build_learner
from linmaml.benchmarks.config import TrainConfig, build_from_config, iteration_seed, make_engine, resume_config
from linmaml.benchmarks.scoring import model_layout
from linmaml.benchmarks.train import CLOCK_FIELDS, train
from linmaml.meta.engine import Engine




TINY = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=6, val_every=3,
            val_tasks=4, checkpoint_every=2, seed=5)


def run(tmp, **kw):
    options = {**TINY, **kw.pop("options", {})}
    return train(options, tmp, splits=synthetic_splits(), progress=False, device="cpu", **kw)


def weights(path):
    return checkpoint.load(path)


def test_meta_gradient_equals_autograd_of_the_mean_query_loss():
    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, 12, 12), ways=3, layers=2, hidden=4, inner_lr=0.3, steps=2).double()
    xs, ys = torch.rand(4, 3, 1, 12, 12, dtype=torch.float64), torch.arange(3).repeat(4, 1)
    xq, yq = torch.rand(4, 6, 1, 12, 12, dtype=torch.float64), torch.arange(3).repeat_interleave(2).repeat(4, 1)
    loss_sum, _ = Engine(learner, strategy="loop").meta_gradient(xs, ys, xq, yq, scale=0.25)
    got = [p.grad.clone() for p in learner.parameters()]
    # Independent: two explicit SGD steps with create_graph, one graph for the whole batch.
    names, params = zip(*learner.model.named_parameters())
    total = 0.0
    for i in range(4):
        fast = list(params)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(learner.model, dict(zip(names, fast)), (xs[i],)), ys[i])
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - 0.3 * g for w, g in zip(fast, grads)]
        total = total + F.cross_entropy(functional_call(learner.model, dict(zip(names, fast)), (xq[i],)), yq[i])
    want = torch.autograd.grad(total / 4, params)
    assert abs(loss_sum - float(total.detach())) < 1e-10
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12)


def _written_out_meta_gradient(learner, batch, scale):
    """The meta-gradient of ``scale · Σ_i query-loss_i`` written out task by task: the learner's inner
    steps with functional_call and autograd.grad(create_graph=True) on its adapted parameters (the
    model's for MAML; the head's, on features computed once, for ANIL), updates through the
    transform's public ``update``, each query loss backpropagated into ``.grad``.
    Returns (Σ losses, Σ accuracies)."""
    from linmaml import meta

    xs, ys, xq, yq = batch
    anil = isinstance(learner, meta.ANIL)
    module = learner.head if anil else learner.model
    base = dict(module.named_parameters())
    names = list(learner.adapted_names)
    tparams = dict(learner.transform.named_parameters())
    loss_sum = accuracy_sum = 0.0
    for i in range(xs.shape[0]):
        x_s, x_q = (learner.features(xs[i]), learner.features(xq[i])) if anil else (xs[i], xq[i])
        fast = {n: base[n] for n in names}
        for lr in learner.lrs:
            loss = F.cross_entropy(functional_call(module, {**base, **fast}, (x_s,)), ys[i])
            grads = dict(zip(names, torch.autograd.grad(loss, [fast[n] for n in names], create_graph=True)))
            updates = learner.transform.update(grads, tparams)
            fast = {n: fast[n] - lr * updates[n] for n in names}
        out = functional_call(module, {**base, **fast}, (x_q,))
        loss = F.cross_entropy(out, yq[i])
        (scale * loss).backward()
        loss_sum += float(loss.detach())
        accuracy_sum += float((out.argmax(-1) == yq[i]).double().mean())
    return loss_sum, accuracy_sum


@pytest.mark.parametrize("batching, chunk", [("loop", 8), ("split", 2), ("split", 8), ("vmap", 3), ("vmap", 8)])
@pytest.mark.parametrize("algo, transform", [("maml", "none"), ("anil", "kfo")])
def test_every_batching_gives_the_written_out_meta_gradient(batching, chunk, algo, transform):
    """`linmaml train`'s engine (make_engine of the config, channels-last episodes as the trainer
    gives them, chunks that do not divide the meta-batch) in each --batching mode against a per-task
    autograd loop written out here, float64."""
    def setup():
        torch.manual_seed(1)
        learner = build_learner(image_shape=(1, 12, 12), ways=3, layers=2, hidden=4, inner_lr=0.3, steps=2,
                                algo=algo, transform=transform).double()
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():  # move KFO off the identity, so that its factors matter
            for p in learner.transform.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return learner

    g = torch.Generator().manual_seed(2)
    xs, ys = torch.rand(5, 3, 1, 12, 12, generator=g, dtype=torch.float64), torch.arange(3).repeat(5, 1)
    xq = torch.rand(5, 6, 1, 12, 12, generator=g, dtype=torch.float64)
    yq = torch.arange(3).repeat_interleave(2).repeat(5, 1)
    reference = setup()
    want_loss, want_accuracy = _written_out_meta_gradient(reference, (xs, ys, xq, yq), 0.2)
    learner = setup()
    engine = make_engine(learner, TrainConfig(batching=batching, tasks_per_chunk=chunk, dtype="float64"))
    loss, accuracy = engine.meta_gradient(*model_layout((xs, ys, xq, yq)), scale=0.2)
    assert loss == pytest.approx(want_loss, rel=1e-12) and accuracy == pytest.approx(want_accuracy, abs=1e-12)
    wanted = dict(reference.named_parameters())
    assert any(p.grad is not None and p.grad.any() for p in wanted.values())
    total = max(float(torch.cat([p.grad.flatten() for p in wanted.values() if p.grad is not None]).norm()), 1e-300)
    for name, got in learner.named_parameters():
        want = wanted[name].grad
        if want is None:  # not reached by the meta-gradient (none here): the engine must agree
            assert got.grad is None or not got.grad.any(), name
            continue
        # relative per tensor; tensors with ~0 gradient (conv biases before BatchNorm) on the whole's scale
        scale = max(float(want.norm()), 1e-3 * total)
        assert float((got.grad - want).norm()) / scale < 1e-11, name


def test_iteration_seed_is_a_pure_function_and_spreads():
    seeds = {iteration_seed(0, t) for t in range(1000)}
    assert len(seeds) == 1000 and iteration_seed(3, 7) == iteration_seed(3, 7) != iteration_seed(4, 7)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_a_run_writes_its_folder(tmp_path):
    result = run(tmp_path)
    assert result.status == "done" and result.exit_code == 0 and result.iteration == 6
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "config.json", "last.prev.pt", "last.pt", "metrics.jsonl"]  # lock released
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == list(range(1, 7))
    vals = [r for r in lines if "val_accuracy" in r]
    assert [r["iteration"] for r in vals] == [3, 6]
    best = max(vals, key=lambda r: r["val_accuracy"])
    assert checkpoint.load(tmp_path / "best.pt")["iteration"] == best["iteration"]
    assert result.best["val_accuracy"] == best["val_accuracy"]
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["iteration"] == 6 and "optimizer" in last


def test_resume_reproduces_an_uninterrupted_run_bitwise(tmp_path):
    torch.set_num_threads(1)
    run(tmp_path / "full")
    first = run(tmp_path / "part", options={"iterations": 3})
    assert first.iteration == 3
    resumed = train({"iterations": 6}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False,
                    device="cpu")
    assert resumed.status == "done"
    a, b = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "part" / "last.pt")
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], b["optimizer"]["state"][key][field])
    # The metrics of the two runs agree line for line except wall times.
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in CLOCK_FIELDS} for x in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "part" / "metrics.jsonl")


def test_a_resumed_run_reports_its_whole_training_time_beside_this_processes(tmp_path):
    """result.seconds is this call's wall time; result.elapsed the run's since iteration 0 — the
    ``elapsed`` of metrics.jsonl's last record, which the first part's records already exceed."""
    first = run(tmp_path, options={"iterations": 3})
    records = lambda: [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    before = records()[-1]["elapsed"]
    assert first.elapsed == before > 0
    resumed = train({"iterations": 6}, tmp_path, resume=True, splits=synthetic_splits(), progress=False, device="cpu")
    last = records()[-1]
    assert last["iteration"] == 6 and resumed.elapsed == last["elapsed"]
    # The second part's training time lies inside its call (both elapsed values are rounded to 1 ms).
    assert 0 < resumed.elapsed - before <= resumed.seconds + 2e-3


def test_resume_refuses_changed_settings_and_resuming_nothing(tmp_path):
    run(tmp_path, options={"iterations": 2})
    with pytest.raises(ValueError, match=r"^inner_lr: the run being resumed used 0.4"):
        train({"inner_lr": 0.1, "iterations": 4}, tmp_path, resume=True, splits=synthetic_splits(), progress=False)
    cfg = resume_config(checkpoint.load(tmp_path / "last.pt")["config"], {"iterations": 9, "val_tasks": 5})
    assert cfg.iterations == 9 and cfg.val_tasks == 5 and cfg.hidden == 4
    # resuming a folder without a checkpoint is refused (it never starts over), and leaves no folder behind
    with pytest.raises(ValueError, match=r"^resume: .*new holds no checkpoint \(last.pt or last.prev.pt\)"):
        train(TINY, tmp_path / "new", resume=True, splits=synthetic_splits(), progress=False)
    assert not (tmp_path / "new").exists()


def test_an_old_run_in_the_folder_needs_resume_or_overwrite(tmp_path):
    run(tmp_path, options={"iterations": 2})
    with pytest.raises(FileExistsError, match="--resume .* or --overwrite"):
        run(tmp_path)
    result = run(tmp_path, overwrite=True, options={"iterations": 1})
    assert result.status == "done"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and checkpoint.load(tmp_path / "last.pt")["iteration"] == 1


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    torch.set_num_threads(1)
    run(tmp_path / "full")
    run(tmp_path / "part", options={"iterations": 4})  # checkpoints at 2, 3 (validation), 4
    last = tmp_path / "part" / "last.pt"
    raw = bytearray(last.read_bytes())
    raw[-20] ^= 0xFF
    last.write_bytes(bytes(raw))
    out = []
    stream = type("S", (), {"write": lambda self, t: out.append(t), "flush": lambda self: None})()
    train({"iterations": 6}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False, stream=stream)
    assert any(str(last) in m and "sha256" in m for m in out)
    a, b = weights(tmp_path / "full" / "last.pt"), weights(last)
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])


def test_nonfinite_stop_names_iteration_and_parameter_and_keeps_a_good_checkpoint(tmp_path):
    torch.manual_seed(TINY["seed"])
    initial = build_learner(image_shape=(1, 12, 12), ways=3, layers=1, hidden=4, pool="stride").state_dict()
    result = run(tmp_path, options={"inner_lr": 1e30})
    assert result.status == "nonfinite" and result.exit_code == 3
    assert result.message.startswith("iteration 1: ") and "model.features.block0.conv.weight" in result.message
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["iteration"] == 0
    for name, value in initial.items():
        assert torch.equal(last["learner"][name], value)


def test_nonfinite_skip_counts_the_skipped_steps(tmp_path):
    result = run(tmp_path, options={"inner_lr": 1e30, "on_nonfinite": "skip", "iterations": 4, "val_every": 10})
    assert result.status == "done" and result.skipped == 4
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in lines] == [1, 2, 3, 4] and all(r["step_skipped"] for r in lines)
    assert all(r["loss"] is None for r in lines)  # non-finite losses are written as null, never NaN


def test_skip_mode_only_skips_the_bad_steps(tmp_path):
    # A finite run with skip mode takes every step: same weights as stop mode.
    torch.set_num_threads(1)
    run(tmp_path / "a", options={"on_nonfinite": "skip"})
    run(tmp_path / "b")
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])


@pytest.mark.parametrize("algo, transform, linnet", [("fomaml", "none", 0), ("anil", "kfo", 0), ("maml", "metasgd", 2),
                                                     ("anil", "none", 2), ("maml", "metacurvature", 0)])
def test_every_learner_trains_and_evaluates(tmp_path, algo, transform, linnet):
    result = run(tmp_path, options={"algo": algo, "transform": transform, "linnet": linnet, "iterations": 2,
                                    "val_every": 2})
    assert result.status == "done" and 0 <= result.best["val_accuracy"] <= 1
    state = checkpoint.load(tmp_path / "last.pt")["learner"]
    if transform != "none":
        assert any(k.startswith("transform.") for k in state)
    if linnet:
        assert sum(".linear." in k or k.startswith("head.1.") for k in state) == linnet


@pytest.mark.parametrize("bad, match", [({"ways": 1}, "^ways: "), ({"meta_batch": 0}, "^meta_batch: "),
                                        ({"outer_lr": 0.0}, "^outer_lr: "), ({"inner_lr": float("nan")}, "^inner_lr: "),
                                        ({"algo": "sgd"}, "^algo: "), ({"val_tasks": 1}, "^val_tasks: "),
                                        ({"ways": 13}, "^ways: expected at most 12"),
                                        ({"shots": 5, "query": 4}, "^query: expected at most 3"),
                                        ({"linnet_width": 2}, "^linnet_width: "),
                                        ({"batching": "threads"}, "^batching: "),
                                        ({"tasks_per_chunk": 0}, "^tasks_per_chunk: ")])
def test_bad_settings_raise_value_errors_naming_the_setting(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, options=bad)
    assert not (tmp_path / "run.lock").exists()


def test_compile_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="^compile: "):
        run(tmp_path, options={"compile": "yes"})


def test_unknown_setting_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="^learning_rate: not a training setting"):
        run(tmp_path, options={"learning_rate": 1})


def test_divergence_of_the_first_adam_step_does_not_claim_a_checkpoint(tmp_path, monkeypatch):
    """Adam's first step is 10 · outer_lr per weight (bias correction 1 − 0.9): 1e308 overflows to
    inf in float64 at iteration 1, before any last.pt exists; the message must say so. The settings
    refuse such a rate (outer_lr <= 1e3), so it is set inside the trainer."""
    from linmaml.benchmarks import train as train_module

    original = train_module.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for group in self.optimizer.param_groups:
            group["lr"] = 1e308

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    result = run(tmp_path, options={"dtype": "float64"})
    assert result.status == "nonfinite" and result.exit_code == 3 and result.iteration == 0
    assert not (tmp_path / "last.pt").exists()
    assert "last.pt holds" not in result.message and "no checkpoint was written" in result.message
    assert result.message.startswith("iteration 1: the Adam step made ")


def test_divergence_later_names_the_iteration_that_last_pt_really_holds(tmp_path, monkeypatch):
    """checkpoint_every 2: after iteration 3 (not checkpointed) the outer rate is raised so that
    iteration 4's Adam step overflows; last.pt holds iteration 2, and the message says 2, not 3."""
    from linmaml.benchmarks import train as train_module

    original = train_module.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)

        def overflow_next_step(record):
            if record["iteration"] == 3:
                for group in self.optimizer.param_groups:
                    group["lr"] = 1e308

        self.on_iteration = overflow_next_step

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    result = run(tmp_path, options={"dtype": "float64", "checkpoint_every": 2, "val_every": 10})
    assert result.status == "nonfinite" and result.iteration == 3
    assert checkpoint.load(tmp_path / "last.pt")["iteration"] == 2
    assert "last.pt holds the weights after iteration 2 " in result.message


def test_a_planted_metrics_symlink_is_refused_and_its_target_left_alone(tmp_path):
    """metrics.jsonl is opened without following a symlink: resuming a run whose metrics.jsonl was
    replaced by a link to another file refuses in one line naming the path, and the file is untouched."""
    import os

    from linmaml.benchmarks.run_folder import METRICS, MetricsLog

    out = tmp_path / "run"
    assert run(out).status == "done"
    victim = tmp_path / "victim.txt"
    victim.write_text('{"iteration": 1}\nprecious\n')
    (out / METRICS).unlink()
    os.symlink(victim, out / METRICS)
    with pytest.raises(OSError, match="symbolic link") as info:
        run(out, options={"iterations": 8}, resume=True)
    assert str(out / METRICS) in str(info.value) and len(str(info.value).splitlines()) == 1
    with pytest.raises(OSError, match="symbolic link"):
        MetricsLog(out / METRICS)
    assert victim.read_text() == '{"iteration": 1}\nprecious\n' and (out / METRICS).is_symlink()


def test_a_write_error_without_a_filename_names_metrics_jsonl(tmp_path):
    import errno

    from linmaml.benchmarks.run_folder import MetricsLog

    class Full:  # what a file object raises under ulimit -f with SIGXFSZ ignored: no filename
        def write(self, text):
            raise OSError(errno.EFBIG, "File too large")

        def flush(self):
            raise OSError(errno.EFBIG, "File too large")

        def fileno(self):
            return -1

        def close(self):
            pass

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.file.close()
    log.file = Full()
    for call in (lambda: log.write({"iteration": 1}), log.sync):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EFBIG and info.value.filename == str(tmp_path / "metrics.jsonl")
        assert str(info.value) == f"[Errno {errno.EFBIG}] File too large: '{tmp_path / 'metrics.jsonl'}'"


def test_cosine_outer_lr_follows_the_formula_and_resumes_bitwise(tmp_path, sigterm_after):
    """outer_lr_schedule="cosine": iteration t steps with outer_lr·½(1 + cos(π(t−1)/T)) (written out
    here), recorded in metrics.jsonl and in Adam's state; a run stopped by SIGTERM after iteration 3
    and resumed ends bit for bit where the uninterrupted run does; a new length is refused."""
    import math

    torch.set_num_threads(1)
    options = {"outer_lr_schedule": "cosine", "outer_lr": 2e-3}
    run(tmp_path / "full", options=options)
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    expected = [2e-3 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 6)) for t in range(1, 7)]
    assert [r["outer_lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    assert weights(tmp_path / "full" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])


    part = run(tmp_path / "part", options=options, on_iteration=sigterm_after(3))
    assert part.status == "interrupted" and part.iteration == 3
    with pytest.raises(ValueError, match="^iterations: the run being resumed decays"):
        train({"iterations": 9}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False)
    resumed = train({}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False, device="cpu")
    assert resumed.status == "done" and resumed.iteration == 6
    a, b = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "part" / "last.pt")
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    # A constant schedule is unchanged: Adam keeps outer_lr and no outer_lr is logged.
    run(tmp_path / "constant")
    assert "outer_lr" not in json.loads((tmp_path / "constant" / "metrics.jsonl").read_text().splitlines()[0])


def test_a_learned_transform_validated_beyond_its_steps_is_noted_once_without_warnings(tmp_path):
    """test_steps > steps with KFO: one line at the start of the run, no StepsBeyondTrainingWarning
    from the validations; adapt called directly still warns (the library's policy)."""
    import io
    import warnings

    from linmaml import meta

    stream = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train({**TINY, "transform": "kfo", "steps": 1, "test_steps": 3}, tmp_path / "kfo",
                       splits=synthetic_splits(), progress=True, device="cpu", stream=stream)
    assert result.status == "done"
    assert not [w for w in caught if issubclass(w.category, meta.StepsBeyondTrainingWarning)]
    notes = [line for line in stream.getvalue().splitlines() if "note:" in line]
    assert notes == ["linmaml train: note: validation adapts for 3 steps, the transform (KFO) was trained for 1: "
                     "see README"]
    plain = io.StringIO()
    train({**TINY, "steps": 1, "test_steps": 3}, tmp_path / "plain", splits=synthetic_splits(), progress=True,
          device="cpu", stream=plain)
    assert "note:" not in plain.getvalue()  # no learned transform: nothing to say
    learner = build_learner(image_shape=(1, 12, 12), ways=3, layers=1, hidden=4, inner_lr=0.3, steps=1,
                            transform="kfo")
    with torch.no_grad():  # learned factors (at the identity, KFO is plain MAML and nothing warns)
        for p in learner.transform.parameters():
            p.mul_(1.1)
    with pytest.warns(meta.StepsBeyondTrainingWarning):
        learner.adapt(torch.rand(3, 1, 12, 12), torch.arange(3), F.cross_entropy, steps=3)


def test_snapshots_hold_the_weights_of_iteration_0_and_every_s_th_iteration(tmp_path):
    """Independent sides: a separate run stopped at iteration 4 (the constant schedule does not depend
    on the run's length) and a separate run of zero iterations' starting weights (its iteration-0 file)."""
    run(tmp_path / "long", options={"snapshot_every": 2})
    kept = sorted(p.name for p in (tmp_path / "long" / checkpoint.SNAPSHOTS).iterdir())
    assert kept == ["iter-000000.pt", "iter-000002.pt", "iter-000004.pt", "iter-000006.pt"]
    run(tmp_path / "short", options={"iterations": 4})
    at_4 = weights(checkpoint.snapshot_path(tmp_path / "long", 4))["learner"]
    want_4 = weights(tmp_path / "short" / checkpoint.LAST)["learner"]
    assert at_4.keys() == want_4.keys()
    for name in want_4:
        assert torch.equal(at_4[name], want_4[name]), name
    start = weights(checkpoint.snapshot_path(tmp_path / "long", 0))
    assert start["iteration"] == 0 and "optimizer" not in start
    torch.manual_seed(TINY["seed"])  # the trainer seeds the initial weights with the run's seed
    fresh = build_from_config(TrainConfig(**TINY), tuple(start["image_shape"])).state_dict()
    for name in fresh:
        assert torch.equal(start["learner"][name], fresh[name]), name
    assert any(not torch.equal(start["learner"][n], at_4[n]) for n in at_4)
