import math

import numpy as np
import pytest
from flwr.common import Context, FitIns, RecordDict, ndarrays_to_parameters

from data.site_data import SiteDataError
from fl_app.client import FlowerClient, NodeConfigError, client_fn, load_client_data, node_data
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
    client = FlowerClient(cfg, 0, lambda: (train_set, val_set))
    initial = get_weights(seeded_net(0))
    weights, n, metrics = client.fit(initial, {"server-round": 1, "learning-rate": 0.05, "final-learning-rate": 0.05})
    assert n == 270
    assert [w.shape for w in weights] == [w.shape for w in initial]
    assert any(not np.array_equal(a, b) for a, b in zip(weights, initial, strict=True))
    assert 0 < metrics["train_loss"] < 3 and 0 <= metrics["train_accuracy"] <= 1
    loss, n_val, eval_metrics = client.evaluate(weights, {"server-round": 1})
    assert n_val == 30 and math.isfinite(loss) and 0 <= eval_metrics["accuracy"] <= 1


def test_a_site_with_its_own_data_trains_on_all_of_it(default_run_config, mnist_dir, tmp_path):
    from data.site_data import write_mnist_partition

    write_mnist_partition(mnist_dir, tmp_path / "site", 0, 100, max_samples=200)
    run_config = default_run_config | {"samples-per-client": 50, "validation-fraction": 0.1}
    ctx = Context(run_id=1, node_id=987654321, state=RecordDict(), run_config=run_config,
                  node_config={"data-dir": str(tmp_path / "site")})
    res = client_fn(ctx).fit(FitIns(ndarrays_to_parameters(get_weights(seeded_net(0))),
                                    {"server-round": 1, "learning-rate": 0.05, "final-learning-rate": 0.05}))
    assert res.num_examples == 180
    partition_id, data = node_data(AppConfig.from_run_config(run_config), ctx.node_config)
    assert partition_id is None
    train_set, val_set = data()
    assert (len(train_set), len(val_set)) == (180, 20)  # the whole site; samples-per-client is for partitions


@pytest.mark.parametrize("node_config, message", [
    ({}, "node-config names no data: start the SuperNode with --node-config "
         "\"data-dir='<MNIST/raw IDX dir, image folders by class or .npz>'\""),
    ({"partition-id": 1}, "node-config has partition-id but not num-partitions"),
    ({"num-partitions": 3}, "node-config has num-partitions but not partition-id"),
])
def test_node_config_without_data_is_refused_clearly(default_run_config, node_config, message):
    with pytest.raises(NodeConfigError) as err:
        node_data(AppConfig.from_run_config(default_run_config), node_config)
    assert str(err.value).startswith(message)


def test_site_without_usable_data_names_the_directory(default_run_config, tmp_path):
    with pytest.raises(SiteDataError, match=f"No usable data in data-dir '{tmp_path}': expected"):
        node_data(AppConfig.from_run_config(default_run_config), {"data-dir": str(tmp_path)})[1]()


def test_the_key_query_reads_no_data(default_run_config, mnist_dir):
    from flwr.common import GetPropertiesIns

    loaded = []
    cfg = AppConfig.from_run_config(default_run_config | {"data-dir": mnist_dir})
    client = FlowerClient(cfg, 7, lambda: loaded.append(1) or load_client_data(cfg, mnist_dir, 7, 10))
    assert client.to_client().get_properties(GetPropertiesIns({})).properties == {"client-key": "partition-000007"}
    assert loaded == []
    client.fit(get_weights(seeded_net(0)), {"server-round": 1, "learning-rate": 0.05, "final-learning-rate": 0.05})
    client.evaluate(get_weights(seeded_net(0)), {"server-round": 1})
    assert loaded == [1]
