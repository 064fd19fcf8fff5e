"""The published Reptile and iMAML recipes as `linmaml train` options: training shots, inner
minibatches, the inner Adam transform, outer SGD with a linear schedule, Reptile's unscaled direction,
iMAML's pull-back solver and damped conjugate gradients.

Each is checked against a computation written out here (functional_call, torch.autograd.grad,
torch.optim.Adam / SGD, torch.linalg.solve on an explicit Hessian; not the engine): a whole Reptile run
in float64, the minibatch order against a direct loop, the inner Adam against torch.optim.Adam, the
schedule's values, iMAML's estimate against the exact solution of its damped system. Tiny synthetic
data (tests/benchmarks/test_bench_train_recipe.py's), one thread."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from linmaml import meta
from linmaml.benchmarks import checkpoint, episodes
from linmaml.benchmarks.config import TrainConfig, build_from_config, check_splits, make_estimator, outer_lr_at
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.learners import make_transform
from linmaml.benchmarks.train import train
from linmaml.cli import main
from linmaml.errors import ArgumentError
from linmaml.meta import estimators
from linmaml.meta.inner_loop import minibatch, minibatch_rows

TINY = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=2, iterations=3, val_every=3,
            val_tasks=4, checkpoint_every=3, seed=7, dtype="float64")

#: Nichol et al.'s recipe in miniature: 2 training shots per class (6 support rows), 4 inner Adam steps
#: (beta1 0) on minibatches of 4 rows (so the batches wrap around the 6 rows), outer SGD annealed linearly.
REPTILE = {**TINY, "algo": "reptile", "train_shots": 2, "inner_batch": 4, "steps": 4, "transform": "adam",
           "adam_beta1": 0.0, "inner_lr": 0.01, "reptile_scale": "none", "outer_optimizer": "sgd",
           "outer_lr": 0.7, "outer_lr_schedule": "linear", "test_steps": 5}


def test_the_linear_schedule_starts_at_the_rate_and_falls_by_rate_over_iterations_each_step():
    config = TrainConfig(outer_lr=2.0, outer_lr_schedule="linear", iterations=4)
    assert [outer_lr_at(config, t) for t in (1, 2, 3, 4)] == pytest.approx([2.0, 1.5, 1.0, 0.5], abs=1e-15)
    # the other schedules are as before
    assert outer_lr_at(TrainConfig(outer_lr=2.0, iterations=4), 3) == 2.0
    cosine = TrainConfig(outer_lr=2.0, outer_lr_schedule="cosine", iterations=4)
    assert outer_lr_at(cosine, 3) == pytest.approx(1.0, abs=1e-15)  # ½(1 + cos(π/2)) = ½


@pytest.mark.parametrize("n, batch, steps", [(6, 4, 5), (10, 10, 3), (50, 10, 5), (7, 3, 9), (5, 1, 6)])
def test_minibatch_rows_walk_the_support_set_cyclically_as_a_direct_loop(n, batch, steps):
    cursor, want = 0, []
    for _ in range(steps):  # a cursor over the rows, back to row 0 after the last
        rows = []
        for _ in range(batch):
            rows.append(cursor)
            cursor = cursor + 1 if cursor + 1 < n else 0
        want.append(rows)
    assert [minibatch_rows(n, batch, k) for k in range(steps)] == want
    x, y = torch.randn(n, 2, 3), torch.arange(n)
    for k in range(steps):
        xb, yb = minibatch(x, y, batch, k)
        assert torch.equal(xb, x[want[k]]) and torch.equal(yb, y[want[k]])


def test_a_shuffled_support_set_is_a_permutation_drawn_after_the_task():
    """The task's examples and query set are the unshuffled sampler's; the order is the next draw of the
    task's generator (replayed here: classes, the example keys, then the permutation)."""
    split = synthetic_splits()["train"]
    plain = episodes.EpisodeSampler(split, 3, 2, 2, seed=4)
    shuffled = episodes.EpisodeSampler(split, 3, 2, 2, seed=4, shuffle_support=True)
    for i in (0, 5):
        a, b = plain.task(i), shuffled.task(i)
        rng = np.random.default_rng([4, episodes.TRAIN_STREAM, i])
        rng.choice(split.num_classes, size=3, replace=False)
        rng.random((3, split.examples_per_class))
        order = rng.permutation(6)
        assert np.array_equal(b.support_order, order) and a.support_order is None
        assert np.array_equal(b.x_support, a.x_support[order]) and np.array_equal(b.y_support, a.y_support[order])
        assert np.array_equal(b.x_query, a.x_query) and np.array_equal(b.y_query, a.y_query)
        assert sorted(order) == list(range(6))
    # support and query stay disjoint with more training shots (6 + 2 of a class's 8 examples)
    task = episodes.EpisodeSampler(split, 3, 6, 2, seed=4, shuffle_support=True).task(3)
    for support, query in zip(task.support_examples, task.query_examples):
        assert not set(support) & set(query) and len(set(support)) == 6


def _reference_reptile(options, splits):
    """The Reptile run of ``options`` written out: the trainer's initial weights (seeded build) and
    training tasks (the sampler's numbered tasks, support order replayed from the task's generator);
    per task a fresh torch.optim.Adam(betas=(beta1, 0.999)) on copies of the weights, step k on support
    rows (kB + j) mod n; then θ ← θ + ε_t · mean_tasks(φ − θ), ε_t = ε (1 − (t − 1)/T)."""
    config = TrainConfig.from_dict(options)
    torch.manual_seed(config.seed)
    learner = build_from_config(config, splits["train"].image_shape).to(dtype=torch.float64)
    model = learner.model
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    sampler = episodes.EpisodeSampler(splits["train"], config.ways, config.train_shots, config.query, seed=config.seed)
    M, B, n = config.meta_batch, config.inner_batch, config.ways * config.train_shots
    for t in range(1, config.iterations + 1):
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        for i in range((t - 1) * M, t * M):
            task = sampler.task(i)
            rng = np.random.default_rng([config.seed, episodes.TRAIN_STREAM, i])
            rng.choice(splits["train"].num_classes, size=config.ways, replace=False)
            rng.random((config.ways, splits["train"].examples_per_class))
            order = rng.permutation(n)
            xs = torch.from_numpy(task.x_support[order]).to(torch.float64)
            ys = torch.from_numpy(task.y_support[order])
            phi = {k: v.clone().requires_grad_() for k, v in theta.items()}
            adam = torch.optim.Adam(phi.values(), lr=config.inner_lr, betas=(config.adam_beta1, config.adam_beta2),
                                    eps=config.adam_eps)
            for k in range(config.steps):
                rows = [(k * B + j) % n for j in range(B)]
                adam.zero_grad()
                F.cross_entropy(functional_call(model, phi, (xs[rows],)), ys[rows]).backward()
                adam.step()
            for k in total:
                total[k] += phi[k].detach() - theta[k]
        rate = config.outer_lr * (1 - (t - 1) / config.iterations)
        theta = {k: theta[k] + rate * total[k] / M for k in theta}
    return theta


def test_a_reptile_run_with_the_published_recipe_equals_the_written_out_loop(tmp_path):
    torch.set_num_threads(1)
    splits = synthetic_splits()
    result = train(REPTILE, tmp_path, splits=splits, progress=False, device="cpu")
    assert result.status == "done"
    want = _reference_reptile(REPTILE, splits)
    got = checkpoint.load(tmp_path / "last.pt")["learner"]
    for name, value in want.items():
        error = float((got[f"model.{name}"] - value).norm()) / float(value.norm())
        # A conv bias before BatchNorm has no effect: its gradient is rounding noise (~1e-17), which
        # Adam divides by |g| + eps = 1e-8, so each step moves it by ~lr·1e-9 in a direction set by the
        # order of the sums: compared to 1e-7 of its size there, the others to 1e-10.
        assert error < (1e-7 if name.endswith("conv.bias") else 1e-10), (name, error)
    # the recipe's options matter: full-batch steps (or Adam's default beta1) take other steps
    for i, change in enumerate(({"inner_batch": None}, {"adam_beta1": 0.9}, {"train_shots": None, "inner_batch": 3})):
        other = train({**REPTILE, **change}, tmp_path / f"other{i}", splits=splits, progress=False, device="cpu")
        weights = checkpoint.load(tmp_path / f"other{i}" / "last.pt")["learner"]
        assert any(float((weights[f"model.{n}"] - v).norm()) > 1e-6 for n, v in want.items()), change
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert (saved["train_shots"], saved["inner_batch"], saved["outer_optimizer"]) == (2, 4, "sgd")
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["outer_lr"] for r in records] == pytest.approx([0.7, 0.7 * 2 / 3, 0.7 / 3], abs=1e-15)


def test_an_interrupted_reptile_run_resumes_bitwise(tmp_path, sigterm_after):
    """Stopped by SIGTERM after iteration 2 of 4 and resumed: the weights equal the uninterrupted run's."""
    torch.set_num_threads(1)
    options = {**REPTILE, "dtype": "float32", "iterations": 4, "checkpoint_every": 1, "val_every": 2}
    train(options, tmp_path / "full", splits=synthetic_splits(), progress=False, device="cpu")


    part = train(options, tmp_path / "part", splits=synthetic_splits(), progress=False, device="cpu",
                 on_iteration=sigterm_after(2))
    assert part.status == "interrupted" and part.iteration == 2
    resumed = train({}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False, device="cpu")
    assert resumed.status == "done" and resumed.iteration == 4
    a, b = checkpoint.load(tmp_path / "full" / "last.pt"), checkpoint.load(tmp_path / "part" / "last.pt")
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name


def test_validation_adapts_on_the_whole_support_set(tmp_path):
    """Training adapts on minibatches of the training tasks' train_shots; validation (after it) on the
    whole support set of its tasks, which keep --shots: the learner's inner_batch is None outside the
    meta-gradient."""
    torch.set_num_threads(1)
    seen = []
    original = meta.MAML._run_inner_loop

    def spy(self, module, names, x, *args, **kwargs):
        seen.append((self.inner_batch, x.shape[0]))
        return original(self, module, names, x, *args, **kwargs)

    meta.MAML._run_inner_loop = spy
    try:
        train({**REPTILE, "iterations": 1, "val_every": 1, "val_tasks": 2}, tmp_path, splits=synthetic_splits(),
              progress=False, device="cpu")
    finally:
        meta.MAML._run_inner_loop = original
    # training: minibatches of 4 of the 3 x 2 training shots; validation (last): all 3 x 1 support images
    assert seen[0] == (4, 6) and seen[-1] == (None, 3)
    assert set(seen) == {(4, 6), (None, 3)}


def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_the_inner_adam_transform_with_minibatches_equals_torch_optim_adam():
    """meta.MAML with the CLI's adam transform (beta1 0) and inner_batch 2 on 5 support rows: the adapted
    weights equal torch.optim.Adam(betas=(0, 0.999)) stepping on the same rows, fresh for each task."""
    model = _mlp()
    learner = meta.MAML(model, lr=0.05, steps=6, transform=make_transform("adam", {"beta1": 0.0}))
    learner.inner_batch = 2
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    for task in range(2):  # the second task starts from a fresh state, not the first task's
        fast = learner.adapt(x + task, y, F.cross_entropy)
        leaves = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        adam = torch.optim.Adam(leaves.values(), lr=0.05, betas=(0.0, 0.999), eps=1e-8)
        for k in range(6):
            rows = [(2 * k + j) % 5 for j in range(2)]
            adam.zero_grad()
            F.cross_entropy(functional_call(model, leaves, ((x + task)[rows],)), y[rows]).backward()
            adam.step()
        for n, v in leaves.items():
            assert torch.allclose(fast[n], v, rtol=1e-12, atol=1e-14), (task, n)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("damping, lambda_damping", [(0.0, 0.0), (1.0, 10.0), (0.5, 0.0)])
def test_imaml_pullback_and_damped_cg_equal_the_explicit_solution(damping, lambda_damping):
    """iMAML with the authors' solver (3 plain steps of α, then φ ← φ − αλ(φ − θ)) and CG on
    ((1 + d)I + H/(λ + d_λ)) x = ∇ℓ_q(φ), run for as many iterations as parameters: x equals
    torch.linalg.solve on the explicit Hessian of the support loss at φ (float64, 1e-8)."""
    model = _mlp()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    size = sum(p.numel() for p in model.parameters())
    learner = meta.MAML(model, lr=0.3, steps=3)
    engine = meta.Engine(learner, F.cross_entropy)
    g = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(1, 6, 3, generator=g, dtype=torch.float64), torch.randn(1, 4, 3, generator=g,
                                                                                  dtype=torch.float64)
    ys, yq = torch.tensor([[0, 1, 0, 1, 1, 0]]), torch.tensor([[1, 0, 0, 1]])
    lam, alpha = 2.0, 0.3
    est = estimators.iMAML(lam=lam, cg_steps=size, max_inner_steps=3, inner_lr=alpha, cg_tolerance=0.0,
                           solver="pullback", cg_damping=damping, cg_lambda_damping=lambda_damping)
    estimate = est.estimate(engine, xs, ys, xq, yq)
    got = estimate.grads
    # the pull-back solver takes its 3 steps and computes no proximal gradient (its norm None, not inf)
    assert estimate.info["inner_steps"] == [3] and estimate.info["inner_gradient_norm"] == [None]

    def unflat(v):
        out, at = {}, 0
        for n, s in zip(names, shapes):
            out[n] = v[at:at + s.numel()].reshape(s)
            at += s.numel()
        return out

    def loss(v, x, y):
        return F.cross_entropy(functional_call(model, unflat(v), (x,)), y)

    theta = _flat([p.detach() for p in model.parameters()])
    phi = theta.clone()
    for _ in range(3):
        phi = phi - alpha * torch.func.grad(loss)(phi, xs[0], ys[0])
    phi = phi - alpha * lam * (phi - theta)
    hessian = torch.autograd.functional.hessian(lambda v: loss(v, xs[0], ys[0]), phi)
    g_q = torch.func.grad(loss)(phi, xq[0], yq[0])
    operator = (1 + damping) * torch.eye(size, dtype=torch.float64) + hessian / (lam + lambda_damping)
    want = unflat(torch.linalg.solve(operator, g_q))
    for n in names:
        assert torch.allclose(got[f"model.{n}"], want[n], rtol=1e-8, atol=1e-10), n
    if damping:  # the damped answer is not the undamped one: the check can fail
        plain = torch.linalg.solve(torch.eye(size, dtype=torch.float64) + hessian / lam, g_q)
        assert float((_flat([got[f"model.{n}"] for n in names]) - plain).norm()) > 1e-3 * float(plain.norm())


def test_the_config_builds_the_recipes_pieces():
    config = TrainConfig(algo="imaml", imaml_solver="pullback", cg_damping=1.0, cg_lambda_damping=10.0, steps=16,
                         inner_lr=0.1, imaml_lambda=2.0)
    est = make_estimator(config)
    assert (est.solver, est.cg_damping, est.cg_lambda_damping, est.max_inner_steps, est.inner_lr, est.lam) == \
        ("pullback", 1.0, 10.0, 16, 0.1, 2.0)
    assert make_estimator(TrainConfig(algo="reptile", reptile_scale="none")).normalize is False
    assert make_estimator(TrainConfig(algo="reptile")).normalize is True
    learner = build_from_config(TrainConfig(transform="adam", adam_beta1=0.0, adam_eps=1e-6, layers=1, hidden=2),
                                (1, 8, 8))
    assert isinstance(learner.transform, meta.Adam)
    assert (learner.transform.beta1, learner.transform.beta2, learner.transform.eps) == (0.0, 0.999, 1e-6)


def test_the_new_settings_default_to_the_old_behaviour():
    config = TrainConfig()
    assert (config.train_shots, config.inner_batch, config.outer_optimizer, config.outer_eps, config.reptile_scale,
            config.imaml_solver, config.cg_damping, config.cg_lambda_damping) == \
        (None, None, "adam", 1e-8, "rates", "proximal", 0.0, 0.0)
    est = make_estimator(TrainConfig(algo="imaml"))
    assert (est.solver, est.cg_damping, est.cg_lambda_damping) == ("proximal", 0.0, 0.0)


@pytest.mark.parametrize("bad, name", [
    (dict(inner_batch=0), "inner_batch"),
    (dict(inner_batch=6), "inner_batch"),  # 5-way 1-shot has 5 support rows
    (dict(inner_batch=2, algo="imaml"), "inner_batch"),
    (dict(inner_batch=2, algo="protonet"), "inner_batch"),
    (dict(train_shots=0), "train_shots"),
    (dict(transform="adam", adam_beta1=1.0), "adam_beta1"),
    (dict(transform="adam", adam_beta2=-0.1), "adam_beta2"),
    (dict(transform="adam", adam_eps=0.0), "adam_eps"),  # 0/0 where a gradient entry is exactly 0
    (dict(adam_beta1=0.0), "adam_beta1"),  # without --transform adam
    (dict(outer_optimizer="rmsprop"), "outer_optimizer"),
    (dict(outer_optimizer="sgd", outer_eps=1e-3), "outer_eps"),
    (dict(outer_eps=0.0), "outer_eps"),
    (dict(outer_lr_schedule="step"), "outer_lr_schedule"),
    (dict(reptile_scale="none"), "reptile_scale"),  # algo maml
    (dict(algo="reptile", reptile_scale="sum"), "reptile_scale"),
    (dict(cg_damping=1.0), "cg_damping"),  # algo maml
    (dict(algo="imaml", cg_damping=-1.0), "cg_damping"),
    (dict(algo="imaml", cg_lambda_damping=float("nan")), "cg_lambda_damping"),
    (dict(algo="imaml", imaml_solver="newton"), "imaml_solver"),
])
def test_bad_recipe_settings_are_refused_naming_them(bad, name):
    with pytest.raises((ArgumentError, TypeError, ValueError)) as caught:
        TrainConfig(**bad)
    assert getattr(caught.value, "argument", None) == name, caught.value


def test_training_shots_the_data_cannot_supply_are_refused_naming_the_setting():
    splits = synthetic_splits()  # 8 examples per class
    with pytest.raises(ArgumentError) as caught:
        check_splits(TrainConfig(train_shots=7, query=2), splits)
    assert caught.value.argument == "query"
    with pytest.raises(ArgumentError) as caught:
        check_splits(TrainConfig(train_shots=8, query=1), splits)
    assert caught.value.argument == "train_shots"
    check_splits(TrainConfig(train_shots=6, query=2, test_query=3), splits)  # fits


@pytest.mark.parametrize("argv, flag", [
    (["--inner-batch", "0"], "--inner-batch"),
    (["--algo", "imaml", "--inner-batch", "2"], "--inner-batch"),
    (["--outer-optimizer", "rmsprop"], "--outer-optimizer"),
    (["--adam-beta1", "0"], "--adam-beta1"),
    (["--cg-damping", "1"], "--cg-damping"),
])
def test_the_command_line_refuses_bad_recipe_options_with_exit_2(argv, flag, tmp_path, capsys):
    try:
        code = main(["train", *argv, "--out", str(tmp_path / "run")])
    except SystemExit as stop:  # argparse's own refusal of a choice
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo, transform", [("maml", "none"), ("maml", "adam"), ("anil", "none"), ("fomaml", "adam")])
def test_inner_minibatches_give_the_same_meta_gradient_under_every_strategy(algo, transform):
    """A ConvNet with BatchNorm (batch statistics of each minibatch), float64: the meta-gradient with
    inner_batch 4 of 6 support rows under the loop, split and vmap strategies agree to 1e-10; and it
    differs from the full-batch one (the minibatches are used)."""
    from linmaml.benchmarks.learners import build_learner

    torch.manual_seed(0)
    learner = build_learner(image_shape=(1, 6, 6), ways=3, algo=algo, transform=transform, layers=1, hidden=3,
                            inner_lr=0.05, steps=3, pool="stride").double()
    g = torch.Generator().manual_seed(2)
    xs, xq = torch.rand(4, 6, 1, 6, 6, generator=g, dtype=torch.float64), torch.rand(4, 6, 1, 6, 6, generator=g,
                                                                                      dtype=torch.float64)
    ys, yq = torch.tensor([[0, 1, 2, 0, 1, 2]] * 4), torch.tensor([[2, 1, 0, 0, 1, 2]] * 4)

    def gradient(strategy, batch):
        learner.zero_grad()
        learner.inner_batch = batch
        try:
            meta.Engine(learner, F.cross_entropy, strategy=strategy, tasks_per_chunk=2).meta_gradient(
                xs, ys, xq, yq, scale=0.25)
        finally:
            learner.inner_batch = None
        return _flat([p.grad for p in learner.parameters() if p.grad is not None])

    loop = gradient("loop", 4)
    for strategy in ("split", "vmap"):
        other = gradient(strategy, 4)
        assert float((other - loop).norm()) <= 1e-10 * float(loop.norm()), strategy
    assert float((gradient("loop", None) - loop).norm()) > 1e-6 * float(loop.norm())


def test_a_resumed_recipe_run_keeps_every_recipe_setting_and_its_linear_horizon():
    """Every setting of the recipes changes the weights, so a resumed run refuses a new value of each,
    naming it; a linear schedule's length is its horizon (as the cosine's), so a new length is refused
    too, while the settings that do not change the weights stay overridable."""
    from linmaml.benchmarks.settings import resume_config

    saved = TrainConfig.from_dict(REPTILE).to_dict()
    changes = {"train_shots": 3, "inner_batch": 5, "adam_beta1": 0.5, "adam_beta2": 0.99, "adam_eps": 1e-6,
               "outer_optimizer": "adam", "outer_lr": 0.5, "outer_lr_schedule": "cosine", "reptile_scale": "rates"}
    for name, value in changes.items():
        assert saved[name] != value, name
        with pytest.raises(ArgumentError) as caught:
            resume_config(saved, {name: value})
        assert caught.value.argument == name, (name, caught.value)
    imaml = TrainConfig(algo="imaml", imaml_solver="pullback", cg_damping=1.0, cg_lambda_damping=10.0,
                        outer_eps=1e-3).to_dict()
    for name, value in {"imaml_solver": "proximal", "cg_damping": 0.5, "cg_lambda_damping": 1.0,
                        "outer_eps": 1e-4}.items():
        with pytest.raises(ArgumentError) as caught:
            resume_config(imaml, {name: value})
        assert caught.value.argument == name, (name, caught.value)
    with pytest.raises(ArgumentError) as caught:
        resume_config(saved, {"iterations": REPTILE["iterations"] + 1})
    assert caught.value.argument == "iterations"
    resumed = resume_config(saved, {"iterations": REPTILE["iterations"], "test_steps": 7, "val_every": 1})
    assert (resumed.test_steps, resumed.val_every, resumed.inner_batch, resumed.train_shots) == (7, 1, 4, 2)
