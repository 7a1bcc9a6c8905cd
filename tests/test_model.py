import torch

from fl_app.model import Net, seeded_net
from fl_app.task import get_weights, set_weights


def test_reference_cnn_has_1_199_882_parameters():
    assert sum(p.numel() for p in Net().parameters()) == 1_199_882


def test_layers_match_the_reference_architecture():
    net = Net()
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (1, 32, (3, 3))
    assert (net.conv2.in_channels, net.conv2.out_channels, net.conv2.kernel_size) == (32, 64, (3, 3))
    assert (net.fc1.in_features, net.fc1.out_features) == (9216, 128)
    assert (net.fc2.in_features, net.fc2.out_features) == (128, 10)
    assert (net.dropout1.p, net.dropout2.p) == (0.25, 0.5)


def test_forward_gives_log_probabilities():
    out = Net().eval()(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_seeded_net_depends_only_on_seed():
    a, b, c = seeded_net(7), seeded_net(7), seeded_net(8)
    for x, y in zip(get_weights(a), get_weights(b), strict=True):
        assert (x == y).all()
    assert any((x != z).any() for x, z in zip(get_weights(a), get_weights(c), strict=True))


def test_weights_round_trip():
    src, dst = seeded_net(1), seeded_net(2)
    set_weights(dst, get_weights(src))
    for x, y in zip(get_weights(src), get_weights(dst), strict=True):
        assert (x == y).all()


def test_weights_are_copies_not_views_of_the_model():
    net = seeded_net(1)
    weights = get_weights(net)
    snapshot = [w.copy() for w in weights]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert all((w == s).all() for w, s in zip(weights, snapshot, strict=True))


def test_tanh_cnn_is_small_opacus_compatible_and_seeded():
    from fl_app.model import TanhCNN, build_model, seeded_model
    from strategies.privacy.opacus_compat import ModuleValidator

    net = build_model("tanh-cnn")
    assert isinstance(net, TanhCNN) and sum(p.numel() for p in net.parameters()) == 26_010
    assert ModuleValidator.validate(net, strict=False) == []
    out = net(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.allclose(out.exp().sum(dim=1), torch.ones(4), atol=1e-5)
    a, b = seeded_model("tanh-cnn", 3), seeded_model("tanh-cnn", 3)
    assert all((x == y).all() for x, y in zip(get_weights(a), get_weights(b), strict=True))


def test_an_unknown_model_is_refused():
    import pytest

    from fl_app.model import build_model

    with pytest.raises(ValueError, match="unknown model 'mlp' .allowed: cnn, tanh-cnn."):
        build_model("mlp")
