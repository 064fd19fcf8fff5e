"""CNN backbones: shapes, the BatchNorm policy (batch statistics always), and stable parameter names."""
import pytest
import torch
from torch.func import functional_call

from linmaml.benchmarks.models import ConvNet, feature_size


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
