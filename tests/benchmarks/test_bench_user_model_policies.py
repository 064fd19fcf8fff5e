"""train() accepts what the library accepts: your own model with a running-statistics BatchNorm (run
under the buffers policy "frozen") and with Dropout (drawn per task; under split/vmap with vmap's
``randomness``). The first meta-gradient of a run, read from the model's ``.grad`` after iteration 1,
is compared with a hand-written second-order MAML loop in float64 (torch.autograd on F.conv2d,
F.batch_norm, F.linear, F.dropout written here, not the library's engine)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linmaml.benchmarks import episodes
from linmaml.benchmarks.config import iteration_seed
from linmaml.benchmarks.data.fewshot import synthetic_splits
from linmaml.benchmarks.train import train

OPTIONS = dict(ways=3, shots=2, query=2, test_query=2, meta_batch=3, iterations=1, val_every=1, val_tasks=2,
               checkpoint_every=1, seed=4, inner_lr=0.3, steps=2, dtype="float64", tasks_per_chunk=2)


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(size=8, classes=(6, 4), examples=6, seed=3)


class NormNet(nn.Module):
    """conv → BatchNorm2d with running statistics → ReLU → linear head."""

    def __init__(self, ways=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(3)  # track_running_stats=True: running statistics, as a pretrained backbone
        self.head = nn.Linear(3 * 4 * 4, ways)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


class DropNet(nn.Module):
    """linear → Dropout → ReLU → linear head."""

    def __init__(self, ways=3, p=0.3):
        super().__init__()
        self.body = nn.Linear(64, 10)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(10, ways)

    def forward(self, x):
        return self.head(torch.relu(self.drop(self.body(x.flatten(1)))))


def norm_forward(w, x):
    """NormNet by hand: batch statistics (biased variance, eps 1e-5), no running statistics."""
    z = F.conv2d(x, w["conv.weight"], w["conv.bias"], stride=2, padding=1)
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    z = (z - mean) / torch.sqrt(var + 1e-5) * w["norm.weight"][None, :, None, None] + w["norm.bias"][None, :, None, None]
    return F.linear(torch.relu(z).flatten(1), w["head.weight"], w["head.bias"])


def drop_forward(w, x, p=0.3):
    h = F.linear(x.flatten(1), w["body.weight"], w["body.bias"])
    return F.linear(torch.relu(F.dropout(h, p, training=p > 0)), w["head.weight"], w["head.bias"])


def hand_meta_gradient(forward, initial, tasks, lr, steps):
    """Second-order MAML: ``steps`` plain gradient steps of ``lr`` on each support set, the mean query
    cross-entropy over tasks differentiated to the initial weights."""
    w0 = {k: v.clone().requires_grad_(True) for k, v in initial.items()}
    total = 0.0
    for xs, ys, xq, yq in tasks:
        w = dict(w0)
        for _ in range(steps):
            loss = F.cross_entropy(forward(w, xs), ys)
            grads = torch.autograd.grad(loss, list(w.values()), create_graph=True)
            w = {k: v - lr * g for (k, v), g in zip(w.items(), grads)}
        total = total + F.cross_entropy(forward(w, xq), yq)
    grads = torch.autograd.grad(total / len(tasks), list(w0.values()))
    return dict(zip(w0, grads))


def first_tasks(splits, options):
    sampler = episodes.EpisodeSampler(splits["train"], options["ways"], options["shots"], options["query"],
                                      seed=options["seed"])
    batch = sampler.tasks(range(options["meta_batch"]))
    xs, ys, xq, yq = batch.to_torch(dtype=torch.float64)
    return [(xs[i], ys[i], xq[i], yq[i]) for i in range(len(xs))]


def train_and_capture(tmp_path, splits, model, options):
    """Train ``model`` and return (the weights before, the gradient after iteration 1)."""
    model = model.double()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    captured = {}

    def on_iteration(record):
        if record["iteration"] == 1:
            captured.update({k: v.grad.detach().clone() for k, v in model.named_parameters()})

    result = train(options, tmp_path / "run", model=model, splits=splits, progress=False, device="cpu", threads=1,
                   on_iteration=on_iteration)
    assert result.status == "done", result.message
    return initial, captured


@pytest.mark.parametrize("batching", ["loop", "split", "vmap"])
def test_running_stat_batchnorm_trains_with_frozen_statistics(tmp_path, splits, batching):
    torch.manual_seed(0)
    model = NormNet()
    with torch.no_grad():  # "pretrained" statistics, which the run must leave as they are
        model.norm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        model.norm.running_var.copy_(torch.tensor([2.0, 0.5, 3.0]))
    stats = {k: v.clone() for k, v in model.named_buffers()}
    options = {**OPTIONS, "batching": batching, "iterations": 3}
    initial, grads = train_and_capture(tmp_path, splits, model, options)
    expected = hand_meta_gradient(norm_forward, initial, first_tasks(splits, options), options["inner_lr"],
                                  options["steps"])
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-12, msg=name)
    for name, value in model.named_buffers():  # frozen: three iterations and validations later, untouched
        assert torch.equal(value, stats[name].to(value.dtype)), name


def test_the_hand_forward_is_the_models_forward_with_batch_statistics(splits):
    # the reference above must compute what the model computes when it normalises with batch statistics
    torch.manual_seed(1)
    model = NormNet().double().train()
    model.norm.track_running_stats = False
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(norm_forward(dict(model.named_parameters()), x), model(x), rtol=1e-12, atol=1e-12)


def test_dropout_first_meta_gradient_with_the_loop_strategy_equals_a_hand_loop(tmp_path, splits):
    torch.manual_seed(2)
    options = {**OPTIONS, "batching": "loop"}
    initial, grads = train_and_capture(tmp_path, splits, DropNet(), options)
    # the loop draws the masks in the order of a hand loop: task by task, each inner step's support
    # forward, then the query forward, from the generator seeded for iteration 1
    torch.manual_seed(iteration_seed(options["seed"], 1))
    expected = hand_meta_gradient(drop_forward, initial, first_tasks(splits, options), options["inner_lr"],
                                  options["steps"])
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("batching", ["split", "vmap"])
def test_dropout_trains_under_vmapped_strategies_with_randomness(tmp_path, splits, batching):
    torch.manual_seed(2)
    options = {**OPTIONS, "batching": batching, "iterations": 2}
    initial, grads = train_and_capture(tmp_path, splits, DropNet(), options)
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    # Dropout is live: the gradient differs from the same model's without dropout (p = 0 by hand)
    without = hand_meta_gradient(lambda w, x: drop_forward(w, x, p=0.0), initial, first_tasks(splits, options),
                                 options["inner_lr"], options["steps"])
    assert any(not torch.allclose(grads[k], without[k], rtol=1e-6, atol=1e-9) for k in without)
    # ... and it is refused with randomness 'error', naming the setting
    with pytest.raises(ValueError, match=r"^randomness: drop \(Dropout\)"):
        train({**options, "randomness": "error"}, tmp_path / "refused", model=DropNet().double(), splits=splits,
              progress=False, device="cpu", threads=1)
