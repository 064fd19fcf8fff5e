"""The differentiable inner Adam: updates equal torch.optim.Adam's (float64, 1e-12, several steps),
second-order meta-gradients equal a hand-unrolled loop (learned betas included), finite and exact
meta-gradients at a gradient entry that is exactly zero (where plain sqrt gives NaN), and the same
numbers under every engine strategy."""
import copy

import pytest
import torch
from torch import nn

from linmaml import meta
from linmaml.errors import ArgumentError, ArgumentTypeError
from linmaml.meta.engine import Engine

DT = torch.float64
SQUARED = lambda out, y: 0.5 * ((out - y) ** 2).sum(-1).mean()  # noqa: E731


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


def forward(params, x):
    W1, b1, W2, b2 = params
    return torch.tanh(x @ W1.T + b1) @ W2.T + b2


def task(seed, zero_column=False):
    g = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT)
    xq, yq = torch.randn(7, 3, generator=g, dtype=DT), torch.randn(7, 2, generator=g, dtype=DT)
    if zero_column:  # the gradient of W1[:, 1] is exactly 0 at every inner step: v stays 0 there
        xs[:, 1] = 0
    return xs, ys, xq, yq


@pytest.mark.parametrize("betas, eps, learn_betas", [((0.9, 0.999), 1e-8, False), ((0.8, 0.95), 1e-3, False),
                                                     ((0.9, 0.999), 1e-8, True)])
def test_updates_equal_torch_optim_adam(betas, eps, learn_betas):
    model = mlp(1)
    reference = copy.deepcopy(model)
    steps, lr = 6, 0.05
    learner = meta.MAML(model, lr=lr, steps=steps, transform=meta.Adam(*betas, eps=eps, learn_betas=learn_betas))
    xs, ys, _, _ = task(2, zero_column=True)  # a zero gradient column too: torch gives 0 there, so must we
    fast = learner.adapt(xs, ys, SQUARED)
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr, betas=betas, eps=eps)
    for _ in range(steps):
        optimizer.zero_grad()
        SQUARED(reference(xs), ys).backward()
        optimizer.step()
    for (name, p), q in zip(reference.named_parameters(), fast.values()):
        assert rel(q.detach(), p.detach()) < 1e-12, name
    moved = rel(fast["0.weight"].detach(), model[0].weight.detach())
    assert moved > 1e-2  # six Adam steps of 0.05 moved the weights


def hand_adam_loop(model, batch, lr, steps, beta_logits=None, betas=(0.9, 0.999), eps=1e-8, first_order=False):
    """Query loss after ``steps`` hand-written Adam steps (plain torch.sqrt), and the base leaves."""
    base = [p.detach().clone().requires_grad_() for p in model.parameters()]
    xs, ys, xq, yq = batch
    params = base
    m = [torch.zeros_like(p) for p in base]
    v = [torch.zeros_like(p) for p in base]
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(SQUARED(forward(params, xs), ys), params, create_graph=not first_order)
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if beta_logits is None:
                b1, b2 = betas
            else:
                b1, b2 = torch.sigmoid(beta_logits[i][0]), torch.sigmoid(beta_logits[i][1])
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g ** 2
            new.append(p - lr * (m[i] / (1 - b1 ** t)) / (torch.sqrt(v[i] / (1 - b2 ** t)) + eps))
        params = new
    return SQUARED(forward(params, xq), yq), base


def test_second_order_meta_gradients_equal_a_hand_unrolled_loop():
    model = mlp(3)
    batch = task(4)
    learner = meta.MAML(model, lr=0.05, steps=4, transform=meta.Adam())
    loss = SQUARED(learner(batch[2], params=learner.adapt(batch[0], batch[1], SQUARED)), batch[3])
    loss.backward()
    expected_loss, base = hand_adam_loop(model, batch, 0.05, 4)
    expected = torch.autograd.grad(expected_loss, base)
    assert abs(float(loss) - float(expected_loss)) < 1e-12 * float(expected_loss)
    for p, e in zip(model.parameters(), expected):
        assert rel(p.grad, e) < 1e-10
    # second order matters here: the first-order meta-gradient differs
    first_loss, first_base = hand_adam_loop(model, batch, 0.05, 4, first_order=True)
    first = torch.autograd.grad(first_loss, first_base)
    assert rel(first[0], expected[0]) > 1e-3


def test_learned_betas_get_the_hand_loops_meta_gradients():
    model = mlp(5)
    batch = task(6)
    transform = meta.Adam(0.8, 0.9, learn_betas=True)
    learner = meta.MAML(model, lr=0.05, steps=3, transform=transform)
    with torch.no_grad():  # move the betas off their start so every logit is its own
        for i, p in enumerate(transform.parameters()):
            p.add_(0.1 * (i + 1))
    logits = [[transform.betas[name.replace(".", "/")][leaf].detach().clone().requires_grad_()
               for leaf in ("beta1", "beta2")] for name, _ in model.named_parameters()]
    SQUARED(learner(batch[2], params=learner.adapt(batch[0], batch[1], SQUARED)), batch[3]).backward()
    expected_loss, base = hand_adam_loop(model, batch, 0.05, 3, beta_logits=logits)
    flat = [a for pair in logits for a in pair]
    expected = torch.autograd.grad(expected_loss, base + flat)
    for p, e in zip(model.parameters(), expected[:len(base)]):
        assert rel(p.grad, e) < 1e-10
    ours = [transform.betas[name.replace(".", "/")][leaf].grad for name, _ in model.named_parameters()
            for leaf in ("beta1", "beta2")]
    for a, e in zip(ours, expected[len(base):]):
        assert abs(float(a) - float(e)) <= 1e-10 * max(1.0, abs(float(e)))
    assert all(float(a) != 0 for a in ours)


def test_zero_gradient_entry_gives_finite_exact_meta_gradients():
    model = mlp(7)
    batch = task(8, zero_column=True)
    learner = meta.MAML(model, lr=0.05, steps=3, transform=meta.Adam())
    SQUARED(learner(batch[2], params=learner.adapt(batch[0], batch[1], SQUARED)), batch[3]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    # plain torch.sqrt gives NaN there (inf · 0), which second order spreads to every parameter
    # through the Hessian: what safe_sqrt exists for
    naive_loss, base = hand_adam_loop(model, batch, 0.05, 3)
    naive = torch.autograd.grad(naive_loss, base)
    assert bool(torch.isnan(naive[0][:, 1]).all())
    # against central finite differences of the whole adapt-then-query map, every entry
    params = list(model.parameters())

    def query_loss():  # the plain loop's value is finite: only its derivative is NaN
        loss, _ = hand_adam_loop(model, batch, 0.05, 3, first_order=True)
        return float(loss)

    h = 1e-6
    for p, g in zip(params, grads):
        for index in range(p.numel()):
            flat = p.data.view(-1)  # model's own storage: hand_adam_loop copies it
            saved = float(flat[index])
            flat[index] = saved + h
            up = query_loss()
            flat[index] = saved - h
            down = query_loss()
            flat[index] = saved
            estimate = (up - down) / (2 * h)
            assert abs(float(g.view(-1)[index]) - estimate) < 1e-6 * max(1.0, abs(estimate))
    assert float(grads[0][:, 1].abs().sum()) > 0  # the zero column still gets its direct query gradient


def test_safe_sqrt_value_and_derivatives():
    v = torch.tensor([0.0, 1e-300, 0.25, 4.0], dtype=DT, requires_grad=True)
    s = meta.transforms.safe_sqrt(v)
    assert torch.equal(s.detach(), torch.sqrt(v.detach()))
    (d,) = torch.autograd.grad(s.sum(), v, create_graph=True)
    assert float(d[0]) == 0 and torch.allclose(d[2:], 0.5 / torch.sqrt(v.detach()[2:]), rtol=1e-15, atol=0)
    (d2,) = torch.autograd.grad(d.sum(), v)
    assert float(d2[0]) == 0 and bool(torch.isfinite(d2[[0, 2, 3]]).all())


@pytest.mark.parametrize("strategy", ["loop", "split", "vmap"])
def test_every_engine_strategy_gives_the_hand_loops_meta_gradient(strategy):
    model = mlp(9)
    tasks = [task(10 + i, zero_column=(i == 1)) for i in range(3)]
    stacked = [torch.stack([t[j] for t in tasks]) for j in range(4)]
    learner = meta.MAML(model, lr=0.05, steps=2, transform=meta.Adam(0.85, 0.99))
    Engine(learner, SQUARED, strategy=strategy, tasks_per_chunk=3).meta_gradient(*stacked)
    total = 0.0
    base = None
    for t in tasks:
        if t is tasks[1]:
            continue  # the zero-column task: its reference comes from the learner's own loop below
        loss, base_t = hand_adam_loop(model, t, 0.05, 2, betas=(0.85, 0.99))
        grads = torch.autograd.grad(loss, base_t)
        total = grads if base is None else [a + b for a, b in zip(total, grads)]
        base = base_t
    # the zero-column task by the per-task learner.adapt loop (exact against finite differences above)
    xs, ys, xq, yq = tasks[1]
    reference = copy.deepcopy(learner)
    reference.zero_grad()
    SQUARED(reference(xq, params=reference.adapt(xs, ys, SQUARED)), yq).backward()
    for p, e, r in zip(model.parameters(), total, reference.model.parameters()):
        assert rel(p.grad, e + r.grad) < 1e-10


def test_arguments_are_checked():
    with pytest.raises(ArgumentError, match="^beta1: "):
        meta.Adam(beta1=1.0)
    with pytest.raises(ArgumentError, match="^beta2: .*learn_betas"):
        meta.Adam(beta2=0.0, learn_betas=True)
    with pytest.raises(ArgumentError, match="^eps: "):
        meta.Adam(eps=-1e-8)
    with pytest.raises(ArgumentTypeError, match="^learn_betas: "):
        meta.Adam(learn_betas=1)


def test_first_update_with_eps_root_is_the_written_formula():
    # one step from zero moments: U = g / (sqrt(g² + eps_root) + eps) (the bias corrections cancel)
    transform = meta.Adam(0.9, 0.99, eps=1e-3, eps_root=1e-4)
    g = torch.tensor([[0.0, -0.3, 2.0]], dtype=DT)
    transform.build({"w": torch.zeros(1, 3, dtype=DT)})
    u = transform.update({"w": g})["w"]
    assert rel(u, g / (torch.sqrt(g ** 2 + 1e-4) + 1e-3)) < 1e-14 and float(u[0, 0]) == 0
