import itertools
import math
from pathlib import Path

import pytest
import torch

from data.mnist import load_mnist
from fl_app.config import AppConfig
from fl_app.model import seeded_net
from fl_app.schedule import round_learning_rates, server_step_factor
from fl_app.task import evaluate, get_weights, seed_dropout, train


@pytest.fixture(scope="module")
def small(mnist_dir):
    return load_mnist(mnist_dir, train=True).subset(torch.arange(512))


def settings(**kw) -> dict:
    """`train`'s arguments: the train section of the defaults with `kw` changed, lr 0.05, seed 0."""
    from dataclasses import fields, replace

    from fl_app.config import project_defaults

    section = AppConfig.from_run_config(project_defaults(Path(__file__).resolve().parents[1])).train
    kw = {"local_epochs": 2, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9} | kw
    own = {f.name for f in fields(section)}
    return {"settings": replace(section, **{k: v for k, v in kw.items() if k in own}),
            "learning_rates": kw.get("learning_rates", (0.05, 0.05)), "seed": kw.get("seed", 0)}


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 1e-3), ("adadelta", 1.0)])
def test_training_lowers_the_loss(small, optimizer, lr):
    net = seeded_net(0)
    before, _ = evaluate(net, small)
    train(net, small, **settings(optimizer=optimizer, learning_rates=(lr, lr)))
    after, accuracy = evaluate(net, small)
    assert after < 0.5 * before and accuracy > 0.7


def test_training_is_deterministic_given_seed(small):
    a, b, c = seeded_net(0), seeded_net(0), seeded_net(0)
    ra, rb = train(a, small, **settings(local_epochs=1)), train(b, small, **settings(local_epochs=1))
    train(c, small, **settings(local_epochs=1, seed=1))
    assert ra == rb
    assert all(torch.equal(torch.from_numpy(x), torch.from_numpy(y))
               for x, y in zip(get_weights(a), get_weights(b), strict=True))
    assert any((x != z).any() for x, z in zip(get_weights(a), get_weights(c), strict=True))


def test_minibatches_cover_every_sample_once_per_epoch(small):
    seen = []
    net = seeded_net(0)
    net.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    train(net, small, **settings(local_epochs=3, batch_size=100))
    assert seen == ([100] * 5 + [12]) * 3


def schedule(default_run_config, **kw) -> AppConfig:
    return AppConfig.from_run_config(default_run_config | {"learning-rate": 0.1, "num-server-rounds": 4,
                                                           "lr-warmup-rounds": 0} | kw)


def test_cosine_schedule_decays_from_learning_rate_to_zero(default_run_config):
    cfg = schedule(default_run_config, **{"lr-schedule": "cosine"})
    rates = [round_learning_rates(cfg, r) for r in range(1, 5)]
    boundaries = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert [r for pair in rates for r in pair] == pytest.approx(
        [r for pair in itertools.pairwise(boundaries) for r in pair])
    assert rates[0][0] == 0.1 and rates[-1][1] == pytest.approx(0.0)
    constant = schedule(default_run_config, **{"lr-schedule": "constant"})
    assert round_learning_rates(constant, 3) == (0.1, 0.1)


def test_the_server_cosine_takes_full_steps_first_and_small_ones_last():
    factors = [server_step_factor("cosine", 4, r) for r in range(1, 5)]
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    assert factors[0] == 1.0 and 0 < factors[-1] < 0.15
    assert [server_step_factor("constant", 4, r) for r in range(1, 5)] == [1.0] * 4


def test_exp_schedule_with_warm_up(default_run_config):
    cfg = schedule(default_run_config, **{"lr-schedule": "exp", "lr-decay-rate": 0.5, "lr-warmup-rounds": 2})
    rates = [round_learning_rates(cfg, r) for r in range(1, 5)]
    assert [r for pair in rates for r in pair] == pytest.approx(
        [0.0, 0.025, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.00625])


def test_the_learning_rate_moves_linearly_over_the_round_steps(small):
    net, rates = seeded_net(0), []
    net.register_forward_hook(lambda m, inp, out: rates.append(optimizer_lr[0]))
    optimizer_lr = [None]
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        optimizer_lr[0] = self.param_groups[0]["lr"]
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = step
    try:
        train(net, small, **settings(local_epochs=2, batch_size=128, learning_rates=(0.08, 0.0)))
    finally:
        torch.optim.SGD.step = original
    assert rates[1:] + [optimizer_lr[0]] == pytest.approx([0.08 * (1 - k / 8) for k in range(8)])


def test_a_warm_up_as_long_as_the_run_is_refused(default_run_config):
    from fl_app.config import ConfigError

    with pytest.raises(ConfigError, match=r"lr-warmup-rounds = 4 \(allowed: fewer than num-server-rounds = 4\)"):
        schedule(default_run_config, **{"lr-warmup-rounds": 4})


def test_seed_dropout_draws_the_masks_torch_manual_seed_draws():
    net = torch.nn.Dropout(0.5)
    torch.manual_seed(11)
    expected = net(torch.ones(4096))
    torch.manual_seed(12)
    seed_dropout(torch.device("cpu"), 11)
    assert torch.equal(net(torch.ones(4096)), expected)
