"""Local DP-SGD: the client's accountant persists across rounds and stays in budget."""

import pytest
from flwr.common import RecordDict

from fl_app.client import FlowerClient, load_client_data
from fl_app.config import AppConfig
from fl_app.model import seeded_model
from fl_app.task import get_weights
from strategies.wire import CLIENT_EPSILON


@pytest.fixture
def local_cfg(default_run_config, mnist_dir) -> AppConfig:
    return AppConfig.from_run_config(default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 300, "dp-mode": "local",
        "dp-target-epsilon": 4.0, "dp-delta": 1e-3, "num-server-rounds": 3,
        "batch-size": 30, "local-epochs": 1,
    })


def test_client_epsilon_grows_across_rounds_and_ends_within_budget(local_cfg, mnist_dir):
    train_set, val_set = load_client_data(local_cfg, mnist_dir, 0, 10)
    state = RecordDict()  # the node's context state, kept by Flower between rounds
    weights = get_weights(seeded_model(local_cfg.train.model, 0))
    epsilons = []
    for server_round in (1, 2, 3):
        client = FlowerClient(local_cfg, 0, lambda: (train_set, val_set), state)  # new object each round
        weights, n, metrics = client.fit(
            weights, {"server-round": server_round, "learning-rate": 0.05, "final-learning-rate": 0.05})
        epsilons.append(metrics[CLIENT_EPSILON])
        assert n == 1  # the exact example count would reveal a sample's presence
        assert metrics["dp_rounds"] == server_round and metrics["dp_sample_rate"] == 1 / 9
        assert "train_loss" not in metrics  # exact figures of the local data stay on the client
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] <= 4.0
    assert epsilons[2] >= 0.9 * 4.0  # sigma was calibrated for all 3 rounds

    fresh = FlowerClient(local_cfg, 0, lambda: (train_set, val_set), RecordDict())
    _, _, metrics = fresh.fit(weights, {"server-round": 4, "learning-rate": 0.05, "final-learning-rate": 0.05})
    assert metrics[CLIENT_EPSILON] == pytest.approx(epsilons[0])  # what a reset would under-report
