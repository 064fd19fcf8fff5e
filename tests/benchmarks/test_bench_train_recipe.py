"""MAML++'s training-recipe options in `linmaml train` (Antoniou, Edwards & Storkey 2019): the
multi-step loss's weight schedule against values worked out by hand, a whole run with the multi-step
loss and derivative-order annealing against a training loop written out here (functional_call,
torch.autograd.grad, torch.optim.Adam; not the engine), exact resume across both switches, and the
settings' checks. Tiny synthetic data, float64."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks import checkpoint, episodes
from linmaml.benchmarks.config import TrainConfig, build_from_config, msl_weights
from linmaml.benchmarks.train import CLOCK_FIELDS, train




TINY = dict(ways=3, shots=1, query=2, test_query=3, layers=1, hidden=4, meta_batch=3, iterations=6, val_every=3,
            val_tasks=4, checkpoint_every=2, seed=5)

RECIPE = {**TINY, "steps": 2, "inner_lr": 0.3, "dtype": "float64", "msl_iterations": 4,
          "first_order_iterations": 2}


def test_msl_weights_follow_the_maml_plus_plus_schedule_worked_out_by_hand():
    """S = 5 steps, A = 100 iterations: d = (t − 1)/500, non-final max(0.2 − d, 0.006), final
    min(0.2 + 4d, 0.976)."""
    config = TrainConfig(steps=5, msl_iterations=100)
    assert msl_weights(config, 1) == pytest.approx([0.2] * 5, abs=1e-15)
    assert msl_weights(config, 51) == pytest.approx([0.1] * 4 + [0.6], abs=1e-15)       # d = 0.1
    assert msl_weights(config, 96) == pytest.approx([0.01] * 4 + [0.96], abs=1e-15)     # d = 0.19
    assert msl_weights(config, 99) == pytest.approx([0.006] * 4 + [0.976], abs=1e-15)   # floor reached
    assert msl_weights(config, 100) == pytest.approx([0.006] * 4 + [0.976], abs=1e-15)
    assert msl_weights(config, 101) is None and msl_weights(TrainConfig(steps=5), 1) is None
    for t in range(1, 101):
        assert sum(msl_weights(config, t)) == pytest.approx(1.0, abs=1e-14)


def _reference_run(options, splits):
    """The run of ``options`` written out: the trainer's initial weights (seeded build) and tasks (the
    episode sampler's numbered tasks), then per iteration t the inner loop by hand — first order
    (gradients detached) for t ≤ first_order_iterations — and the query losses weighted by the
    schedule worked out in the test above (the last step alone after msl_iterations), one Adam step."""
    config = TrainConfig.from_dict(options)
    torch.manual_seed(config.seed)
    learner = build_from_config(config, splits["train"].image_shape).to(dtype=torch.float64)
    model = learner.model
    params = dict(model.named_parameters())
    names = list(params)
    adam = torch.optim.Adam(params.values(), lr=config.outer_lr)
    sampler = episodes.EpisodeSampler(splits["train"], config.ways, config.shots, config.query, seed=config.seed)
    S, A, M = config.steps, config.msl_iterations, config.meta_batch
    for t in range(1, config.iterations + 1):
        first_order = t <= config.first_order_iterations
        if t <= A:
            d = (t - 1) / (S * A)
            weights = [max(1 / S - d, 0.03 / S)] * (S - 1) + [min(1 / S + (S - 1) * d, 1 - (S - 1) * 0.03 / S)]
        else:
            weights = [0.0] * (S - 1) + [1.0]
        xs, ys, xq, yq = sampler.tasks(range((t - 1) * M, t * M)).to_torch("cpu", torch.float64)
        adam.zero_grad()
        for i in range(M):
            fast, total = dict(params), 0.0
            for k in range(S):
                loss = F.cross_entropy(functional_call(model, fast, (xs[i],)), ys[i])
                grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
                fast = {n: fast[n] - config.inner_lr * g for n, g in zip(names, grads)}
                if weights[k]:
                    total = total + weights[k] * F.cross_entropy(functional_call(model, fast, (xq[i],)), yq[i])
            (total / M).backward()
        adam.step()
    return {n: p.detach() for n, p in params.items()}


def test_a_run_with_msl_and_first_order_annealing_equals_the_written_out_loop(tmp_path):
    torch.set_num_threads(1)
    splits = synthetic_splits()
    result = train(RECIPE, tmp_path, splits=splits, progress=False, device="cpu")
    assert result.status == "done"
    want = _reference_run(RECIPE, splits)
    got = checkpoint.load(tmp_path / "last.pt")["learner"]
    for name, value in want.items():
        # conv biases before BatchNorm have no effect and ~0 gradient: compared on the layer's scale
        scale = max(float(value.norm()), 1e-3)
        assert float((got[f"model.{name}"] - value).norm()) / scale < 1e-9, name
    # the same run without the options takes other steps: the check above can fail
    plain = train({**RECIPE, "msl_iterations": 0, "first_order_iterations": 0}, tmp_path / "plain", splits=splits,
                  progress=False, device="cpu")
    assert plain.status == "done"
    other = checkpoint.load(tmp_path / "plain" / "last.pt")["learner"]
    assert any(float((other[f"model.{n}"] - v).norm()) > 1e-6 for n, v in want.items())
    # config.json and metrics.jsonl record the options
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert saved["msl_iterations"] == 4 and saved["first_order_iterations"] == 2
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["first_order"] for r in records] == [True, True, False, False, False, False]
    assert [r["msl_weights"] is None for r in records] == [False] * 4 + [True] * 2
    assert records[0]["msl_weights"] == pytest.approx([0.5, 0.5])


def test_an_interrupted_run_resumes_across_both_switches_bitwise(tmp_path, sigterm_after):
    """Stopped by SIGTERM after iteration 1 (first order, multi-step loss on) and resumed: the weights
    and Adam's state equal the uninterrupted run's bit for bit; a changed option is refused."""
    torch.set_num_threads(1)
    options = {**RECIPE, "dtype": "float32"}
    train(options, tmp_path / "full", splits=synthetic_splits(), progress=False, device="cpu")


    part = train(options, tmp_path / "part", splits=synthetic_splits(), progress=False, device="cpu",
                 on_iteration=sigterm_after(1))
    assert part.status == "interrupted" and part.iteration == 1
    for name, value in (("msl_iterations", 5), ("first_order_iterations", 3)):
        with pytest.raises(ValueError, match=f"^{name}: the run being resumed used"):
            train({name: value}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False)
    resumed = train({}, tmp_path / "part", resume=True, splits=synthetic_splits(), progress=False, device="cpu")
    assert resumed.status == "done" and resumed.iteration == 6
    a, b = checkpoint.load(tmp_path / "full" / "last.pt"), checkpoint.load(tmp_path / "part" / "last.pt")
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], b["optimizer"]["state"][key][field])
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in CLOCK_FIELDS} for x in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "part" / "metrics.jsonl")


@pytest.mark.parametrize("bad, match", [
    (dict(msl_iterations=10), r"^msl_iterations: the multi-step loss .* with steps 1"),
    (dict(msl_iterations=-1, steps=2), r"^msl_iterations"),
    (dict(msl_iterations=10, steps=2, algo="reptile"), r"^msl_iterations: weighs the query loss .* not 'reptile'"),
    (dict(first_order_iterations=5, algo="protonet"), r"^first_order_iterations: anneals"),
    (dict(first_order_iterations=5, algo="fomaml"), r"^first_order_iterations: anneals"),
    (dict(first_order_iterations=1.5), r"^first_order_iterations"),
    (dict(class_split="alphabets", benchmark="cifar-fs"), r"^class_split: the alphabet split is Omniglot's"),
    (dict(class_split="lake"), r"^class_split: expected one of standard, alphabets"),
])
def test_bad_recipe_settings_are_refused_naming_them(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**bad)


def test_the_options_are_off_by_default():
    config = TrainConfig()
    assert (config.msl_iterations, config.first_order_iterations, config.class_split) == (0, 0, "standard")
