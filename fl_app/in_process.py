"""A whole federation in this process: the app's ClientApp clients behind in-memory
client proxies, driven by the app's strategy and `RecordingServer`. Flower's transport
(SuperLink, Ray) is left out and nothing else changes: with one torch thread per client
it gives the simulation's numbers bitwise (tests/test_integration.py checks it). Used by
the tests, the benchmarks and the privacy audit (`fl_app.audit`), whose canary clients
exist only here."""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Context, EvaluateIns, FitIns, GetPropertiesIns, RecordDict, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from data.mnist import MNIST_TRAIN_SIZE
from fl_app.checkpoint import load_checkpoint
from fl_app.client_app import client_fn
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, check_partitioning
from fl_app.outputs import RunRecorder
from fl_app.run_dir import RunDir
from strategies.privacy.release import ReleasePolicy
from fl_app.server import RecordingServer
from fl_app.server_app import build_strategy, load_test_set, local_privacy_ledger
from strategies.wire import SERVER_ROUND


def model_digest(parameters) -> str:
    """A digest of a model's tensors (values, dtypes and shapes)."""
    digest = hashlib.sha256()
    for array in parameters_to_ndarrays(parameters):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class InProcessProxy(ClientProxy):
    """Calls a ClientApp client built by `client_fn` for node `partition_id` directly."""

    def __init__(self, partition_id: int, num_partitions: int, run_config: dict[str, Any], data_dir: str,
                 node_id: int | None = None, received: list | None = None):
        node_id = partition_id if node_id is None else node_id
        super().__init__(cid=str(node_id))
        self.received = received  # ("fit" | "evaluate", server round, model digest) per message
        self.context = Context(
            run_id=1, node_id=node_id,
            node_config={"partition-id": partition_id, "num-partitions": num_partitions, "data-dir": data_dir},
            state=RecordDict(), run_config=run_config,
        )

    def fit(self, ins: FitIns, timeout, group_id):
        self._receive("fit", ins)
        return client_fn(self.context).fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout, group_id):
        self._receive("evaluate", ins)
        return client_fn(self.context).evaluate(ins)

    def _receive(self, kind: str, ins: FitIns | EvaluateIns) -> None:
        if self.received is not None:
            self.received.append((kind, int(ins.config[SERVER_ROUND]), model_digest(ins.parameters)))

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id):
        return client_fn(self.context).get_properties(ins)

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def run_federation(run_config: dict[str, Any], num_clients: int, data_dir: str, run_dir: Path, *,
                   node_seed: int | None = None, received: list | None = None,
                   extra_clients: Sequence[ClientProxy] = (),
                   server_class: type[RecordingServer] = RecordingServer,
                   server_options: dict[str, Any] | None = None) -> list[dict]:
    """Validate `run_config`, run every round, return history.jsonl's rows.

    `node_seed` gives the nodes random ids and a random registration order, as Flower's
    simulation does; every model a client receives is appended to `received`;
    `extra_clients` join the federation beside the MNIST clients (the audit's canaries);
    `server_class(**server_options, ...)` runs the rounds. With `resume-from` in
    `run_config`, the run continues there."""
    cfg = AppConfig.from_run_config(run_config)
    check_partitioning(cfg, num_clients, MNIST_TRAIN_SIZE, population=num_clients + len(extra_clients))
    manager = KeyedClientManager(cfg.run.seed)
    order, node_ids = list(range(num_clients)), list(range(num_clients))
    if node_seed is not None:
        rng = np.random.default_rng(node_seed)
        order = list(rng.permutation(num_clients))
        node_ids = [int(n) for n in rng.integers(1, 2**62, size=num_clients)]
    for pid in order:
        manager.register(InProcessProxy(int(pid), num_clients, run_config, data_dir, node_ids[pid], received))
    for proxy in extra_clients:
        manager.register(proxy)
    resume = load_checkpoint(cfg.run.resume_from) if cfg.run.resume_from else None
    if resume is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(cfg.run.resume_from)
    recorder = RunRecorder(run_dir, cfg.to_run_config(), cfg.run.num_server_rounds, tensorboard=cfg.run.tensorboard,
                           tracking=cfg.run.tracking, tracking_uri=cfg.run.tracking_uri, model=cfg.train.model,
                           resumed_rows=resume.history if resume else None)
    with recorder:
        server = server_class(
            client_manager=manager,
            strategy=build_strategy(cfg, load_test_set(cfg, data_dir)),
            recorder=recorder,
            checkpoint_every=cfg.run.checkpoint_every,
            config=cfg.to_run_config(),
            resume=resume,
            release=ReleasePolicy(cfg.dp.mode, cfg.dp.release_unprotected_metrics),
            local_privacy=local_privacy_ledger(cfg),
            **(server_options or {}),
        )
        server.set_max_workers(1)  # one client at a time: dropout draws from torch's global RNG
        server.fit(cfg.run.num_server_rounds, timeout=None)
    return RunDir(run_dir).read_history()
