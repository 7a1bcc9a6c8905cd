import math

import numpy as np
from flwr.common import Context, RecordDict

from fl_app.client_app import FlowerClient, client_fn, load_client_data
from fl_app.config import AppConfig
from fl_app.model import seeded_net
from fl_app.task import get_weights


def context(run_config: dict, partition_id: int = 0, num_partitions: int = 10) -> Context:
    return Context(run_id=1, node_id=1, state=RecordDict(), run_config=run_config,
                   node_config={"partition-id": partition_id, "num-partitions": num_partitions})


def test_client_fn_builds_a_client_on_its_partition(default_run_config, mnist_dir):
    run_config = default_run_config | {"data-dir": mnist_dir, "samples-per-client": 300}
    client = client_fn(context(run_config, partition_id=3))
    assert client is not None
    cfg = AppConfig.from_run_config(run_config)
    train_set, val_set = load_client_data(cfg, mnist_dir, 3, 10)
    assert (len(train_set), len(val_set)) == (270, 30)


def test_fit_trains_and_reports_examples_and_metrics(default_run_config, mnist_dir):
    cfg = AppConfig.from_run_config(default_run_config | {"data-dir": mnist_dir, "samples-per-client": 300})
    train_set, val_set = load_client_data(cfg, mnist_dir, 0, 10)
    client = FlowerClient(cfg, 0, train_set, val_set)
    initial = get_weights(seeded_net(0))
    weights, n, metrics = client.fit(initial, {"server-round": 1, "learning-rate": 0.05})
    assert n == 270
    assert [w.shape for w in weights] == [w.shape for w in initial]
    assert any(not np.array_equal(a, b) for a, b in zip(weights, initial))
    assert 0 < metrics["train_loss"] < 3 and 0 <= metrics["train_accuracy"] <= 1
    loss, n_val, eval_metrics = client.evaluate(weights, {"server-round": 1})
    assert n_val == 30 and math.isfinite(loss) and 0 <= eval_metrics["accuracy"] <= 1
