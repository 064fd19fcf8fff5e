"""CNN backbones: shapes, the BatchNorm policy (batch statistics always), and stable parameter names."""
import pytest
import torch
from torch.func import functional_call

import torch.nn.functional as F

from linmaml.benchmarks.models import ConvNet, feature_size, to_channels_last


@pytest.mark.parametrize("pool", ["max", "stride"])
@pytest.mark.parametrize("blocks, size", [(1, 28), (2, 28), (4, 28), (4, 84), (4, 32)])
def test_feature_size_matches_a_forward_pass(pool, blocks, size):
    net = ConvNet(in_channels=3, ways=5, blocks=blocks, filters=8, image_size=size, pool=pool)
    feats = net.features(torch.zeros(2, 3, size, size))
    side = feature_size(size, blocks, pool)
    assert feats.shape == (2, 8 * side * side)
    assert net(torch.zeros(2, 3, size, size)).shape == (2, 5)


def test_batchnorm_uses_batch_statistics_in_train_and_eval_mode():
    torch.manual_seed(0)
    net = ConvNet(in_channels=1, ways=5, blocks=2, filters=4)
    x = 3.0 + 2.0 * torch.randn(16, 1, 28, 28)
    for mode in (net.train, net.eval):
        mode()
        z = net.features.block0.norm(net.features.block0.conv(x))
        # An independent normalisation with the batch's own biased statistics, per channel.
        c = net.features.block0.conv(x)
        mean = c.mean(dim=(0, 2, 3), keepdim=True)
        var = c.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        ref = (c - mean) / torch.sqrt(var + 1e-5)
        assert torch.allclose(z, ref, atol=1e-5)
    assert len(list(net.buffers())) == 0  # no running statistics: a pure function of (params, x)


def test_parameter_names_and_functional_call():
    net = ConvNet(ways=3, blocks=2, filters=4)
    names = [n for n, _ in net.named_parameters()]
    assert names[-2:] == ["head.weight", "head.bias"]
    assert "features.block1.conv.weight" in names and "features.block0.norm.bias" in names
    params = {n: p.detach().clone() * 2 for n, p in net.named_parameters()}
    x = torch.randn(5, 1, 28, 28)
    out = functional_call(net, params, (x,))
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.mul_(2)
    assert torch.allclose(out, net(x))


@pytest.mark.parametrize("kwargs, name", [(dict(blocks=0), "blocks"), (dict(ways=1), "ways"),
                                          (dict(pool="avg"), "pool"), (dict(blocks=6, image_size=28), "blocks"),
                                          (dict(filters=2.5), "filters")])
def test_bad_configuration_names_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        ConvNet(**kwargs)


def _textbook(net: ConvNet) -> torch.nn.Module:
    """The same network written the textbook way, conv → BatchNorm → ReLU → pool, sharing ``net``'s
    parameters (the ConvNet pools before its ReLU)."""
    layers = []
    for block in list(net.features)[:-1]:
        layers += [block.conv, block.norm, torch.nn.ReLU(), block.pool]
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), net.head)


@pytest.mark.parametrize("pool", ["max", "stride"])
@pytest.mark.parametrize("in_channels, filters", [(1, 6), (1, 16), (3, 32)])  # 9·C ≤ filters folds the first norm
def test_convnet_is_the_textbook_network_to_second_order(pool, in_channels, filters):
    """Outputs and a second-order MAML meta-gradient equal the textbook network's (conv → BatchNorm →
    ReLU → pool, with torch's own BatchNorm) in float64, also on images with flat regions, whose
    pooling windows hold exact ties."""
    torch.manual_seed(4)
    net = ConvNet(in_channels=in_channels, ways=3, blocks=3, filters=filters, image_size=16, pool=pool).double()
    assert net.features.block0.fold_norm == (9 * in_channels <= filters)
    assert not net.features.block1.fold_norm
    plain = _textbook(net)
    x = torch.rand(6, in_channels, 16, 16, dtype=torch.float64)
    x[:3, :, :8] = 0.0  # constant regions: identical patches, tied maxima, windows all ≤ 0 after BN
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    params = dict(net.named_parameters())

    def meta_grad(model):
        loss = F.cross_entropy(model(x[:3]), y[:3])
        g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        fast = {n: p - 0.3 * gi for (n, p), gi in zip(params.items(), g)}
        names = {id(p): n for n, p in params.items()}
        query = functional_call(model, {n: fast[names[id(p)]] for n, p in model.named_parameters()}, (x[3:],))
        return torch.autograd.grad(F.cross_entropy(query, y[3:]), list(params.values()))

    assert torch.allclose(net(x), plain(x), rtol=1e-12, atol=1e-12)
    want = meta_grad(plain)
    scale = max(float(w.abs().max()) for w in want)
    for (name, _), a, b in zip(params.items(), meta_grad(net), want):
        # conv biases before BatchNorm have an exactly-zero gradient: compare on the whole's scale
        assert float((a - b).abs().max()) <= 1e-10 * scale, name


def test_folded_norm_under_vmap_matches_a_loop():
    """The first block's folded BatchNorm inside torch.func.vmap (per-task statistics), first and
    second derivatives, against a loop over the tasks."""
    from linmaml import meta
    from linmaml.meta.engine import Engine

    torch.manual_seed(5)
    net = ConvNet(in_channels=1, ways=3, blocks=2, filters=12, image_size=8).double()
    assert net.features.block0.fold_norm
    learner = meta.MAML(net, lr=0.2, steps=2)
    g = torch.Generator().manual_seed(5)
    xs, xq = torch.rand(3, 6, 1, 8, 8, generator=g, dtype=torch.float64), torch.rand(3, 9, 1, 8, 8, generator=g,
                                                                                        dtype=torch.float64)
    ys, yq = torch.arange(3).repeat(3, 2), torch.arange(3).repeat(3, 3)
    params = list(net.parameters())
    loop = sum(F.cross_entropy(learner(xq[m], params=learner.adapt(xs[m], ys[m], F.cross_entropy)), yq[m])
               for m in range(3)) / 3
    want = torch.autograd.grad(loop, params)
    losses, _ = Engine(learner, strategy="vmap", tasks_per_chunk=None).task_losses(xs, ys, xq, yq)
    loss = losses.mean()
    got = torch.autograd.grad(loss, params)
    scale = max(float(w.abs().max()) for w in want)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want)) <= 1e-10 * scale


def test_to_channels_last_keeps_values_and_gives_the_layout():
    x = torch.randn(2, 5, 3, 7, 6)
    y = to_channels_last(x)
    assert torch.equal(x, y) and y.stride(-3) == 1 and y.stride(-1) == 3 and y.stride(-2) == 18
    assert to_channels_last(y) is y
    one = to_channels_last(torch.randn(4, 1, 8, 8))  # one channel is re-strided too
    assert one.stride() == (64, 1, 8, 1)
    assert one[0:2].stride() == (64, 1, 8, 1)
    torch.manual_seed(0)
    net = ConvNet(in_channels=1, ways=3, blocks=2, filters=4, image_size=8).double()
    z = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(net(to_channels_last(z)), net(z), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="^x:"):
        to_channels_last(torch.zeros(3, 4))
