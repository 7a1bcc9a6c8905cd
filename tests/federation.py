"""A whole federation in this process: the app's ClientApp clients behind in-memory
client proxies, driven by the app's strategy and RecordingServer. Flower's transport
(SuperLink, Ray) is left out; tests/test_integration.py covers it."""

import json
from pathlib import Path
from typing import Any

from flwr.common import Context, EvaluateIns, FitIns, RecordDict
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fl_app.client_app import client_fn
from fl_app.config import AppConfig, check_partitioning
from fl_app.outputs import RunRecorder
from fl_app.server import RecordingServer
from fl_app.server_app import MNIST_TRAIN_SIZE, build_strategy, load_test_set


class InProcessProxy(ClientProxy):
    """Calls a ClientApp client built by `client_fn` for node `partition_id` directly."""

    def __init__(self, partition_id: int, num_partitions: int, run_config: dict[str, Any], data_dir: str):
        super().__init__(cid=f"node-{partition_id:04d}")
        self.context = Context(
            run_id=1, node_id=partition_id,
            node_config={"partition-id": partition_id, "num-partitions": num_partitions, "data-dir": data_dir},
            state=RecordDict(), run_config=run_config,
        )

    def fit(self, ins: FitIns, timeout, group_id):
        return client_fn(self.context).fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout, group_id):
        return client_fn(self.context).evaluate(ins)

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def run_federation(run_config: dict[str, Any], num_clients: int, data_dir: str, run_dir: Path) -> list[dict]:
    """Validate `run_config`, run every round, return history.jsonl's rows."""
    cfg = AppConfig.from_run_config(run_config)
    check_partitioning(cfg, num_clients, MNIST_TRAIN_SIZE)
    manager = SimpleClientManager()
    for pid in range(num_clients):
        manager.register(InProcessProxy(pid, num_clients, run_config, data_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    server = RecordingServer(
        client_manager=manager,
        strategy=build_strategy(cfg, load_test_set(cfg, data_dir)),
        recorder=RunRecorder(run_dir, run_config, cfg.num_server_rounds),
    )
    server.set_max_workers(1)  # one client at a time: dropout draws from torch's global RNG
    server.fit(cfg.num_server_rounds, timeout=None)
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
