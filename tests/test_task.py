import math
from pathlib import Path

import pytest
import torch

from data.mnist import load_mnist
from fl_app.config import AppConfig
from fl_app.model import seeded_net
from fl_app.assembly import round_learning_rate
from fl_app.task import evaluate, get_weights, train


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
            "learning_rate": kw.get("learning_rate", 0.05), "seed": kw.get("seed", 0)}


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 1e-3)])
def test_training_lowers_the_loss(small, optimizer, lr):
    net = seeded_net(0)
    before, _ = evaluate(net, small)
    train(net, small, **settings(optimizer=optimizer, learning_rate=lr))
    after, accuracy = evaluate(net, small)
    assert after < 0.5 * before and accuracy > 0.7


def test_training_is_deterministic_given_seed(small):
    a, b, c = seeded_net(0), seeded_net(0), seeded_net(0)
    ra, rb = train(a, small, **settings(local_epochs=1)), train(b, small, **settings(local_epochs=1))
    train(c, small, **settings(local_epochs=1, seed=1))
    assert ra == rb
    assert all(torch.equal(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(get_weights(a), get_weights(b)))
    assert any((x != z).any() for x, z in zip(get_weights(a), get_weights(c)))


def test_minibatches_cover_every_sample_once_per_epoch(small):
    seen = []
    net = seeded_net(0)
    net.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    train(net, small, **settings(local_epochs=3, batch_size=100))
    assert seen == ([100] * 5 + [12]) * 3


def test_cosine_schedule_decays_from_learning_rate(default_run_config):
    cfg = AppConfig.from_run_config(default_run_config | {"learning-rate": 0.1, "num-server-rounds": 4})
    rates = [round_learning_rate(cfg, r) for r in range(1, 5)]
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == pytest.approx(expected) and rates[0] == 0.1
    constant = AppConfig.from_run_config(default_run_config | {"lr-schedule": "constant"})
    assert round_learning_rate(constant, 7) == constant.train.learning_rate
