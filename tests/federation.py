"""A whole federation in this process: the app's ClientApp clients behind in-memory
client proxies, driven by the app's strategy and RecordingServer. Flower's transport
(SuperLink, Ray) is left out; tests/test_integration.py covers it."""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Context, EvaluateIns, FitIns, GetPropertiesIns, RecordDict, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import fit_clients

from fl_app.checkpoint import load_checkpoint
from fl_app.client_app import client_fn
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, check_partitioning
from fl_app.outputs import RunRecorder
from fl_app.server import RecordingServer
from fl_app.release import ReleasePolicy
from fl_app.server_app import MNIST_TRAIN_SIZE, build_strategy, load_test_set, local_privacy_ledger


CRASH_POINTS = ("after-aggregation", "after-centralized-eval", "after-checkpoint",
                "during-federated-eval", "during-fit")


class Crash(Exception):
    """Stands for the server process dying; `parameters` is the global model it held."""

    def __init__(self, server_round: int, point: str, parameters) -> None:
        super().__init__(f"crash in round {server_round} {point}")
        self.parameters = parameters


class CrashingServer(RecordingServer):
    """Dies (raises `Crash`) at `point` of round `crash_round`: right after aggregation,
    after centralized evaluation (before the checkpoint), right after the checkpoint,
    once the clients have evaluated the round's model, or once the clients of the round
    have trained (before aggregation)."""

    def __init__(self, crash_round: int, point: str, **kwargs):
        super().__init__(**kwargs)
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}")
        self.crash_round, self.point = crash_round, point

    def _crash(self, server_round: int, point: str) -> None:
        if (server_round, point) == (self.crash_round, self.point):
            raise Crash(server_round, point, self.parameters)

    def fit_round(self, server_round, timeout):
        if (server_round, "during-fit") == (self.crash_round, self.point):
            instructions = self.strategy.configure_fit(
                server_round=server_round, parameters=self.parameters, client_manager=self._client_manager)
            fit_clients(instructions, max_workers=self.max_workers, timeout=timeout, group_id=server_round)
            self._crash(server_round, "during-fit")
        parameters, metrics, outcome = super().fit_round(server_round, timeout)
        if (server_round, "after-aggregation") == (self.crash_round, self.point):
            raise Crash(server_round, "after-aggregation", parameters)
        return parameters, metrics, outcome

    def _save_checkpoint(self, server_round: int, row: dict) -> None:
        self._crash(server_round, "after-centralized-eval")
        super()._save_checkpoint(server_round, row)
        self._crash(server_round, "after-checkpoint")

    def evaluate_round(self, server_round, timeout):
        result = super().evaluate_round(server_round, timeout)
        self._crash(server_round, "during-federated-eval")
        return result


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
            self.received.append((kind, int(ins.config["server-round"]), model_digest(ins.parameters)))

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id):
        return client_fn(self.context).get_properties(ins)

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def run_federation(run_config: dict[str, Any], num_clients: int, data_dir: str, run_dir: Path,
                   node_seed: int | None = None, crash_after: int = 0,
                   crash_at: tuple[int, str] | None = None, received: list | None = None) -> list[dict]:
    """Validate `run_config`, run every round, return history.jsonl's rows.

    `node_seed` gives the nodes random ids and a random registration order, as Flower's
    simulation does; `crash_after` makes the server raise `Crash` right after that
    round's checkpoint, `crash_at = (round, point)` at any of `CRASH_POINTS`; every model
    a client receives is appended to `received`. With `resume-from` in `run_config`, the
    run continues there."""
    cfg = AppConfig.from_run_config(run_config)
    check_partitioning(cfg, num_clients, MNIST_TRAIN_SIZE)
    manager = KeyedClientManager(cfg.seed)
    order, node_ids = list(range(num_clients)), list(range(num_clients))
    if node_seed is not None:
        rng = np.random.default_rng(node_seed)
        order = list(rng.permutation(num_clients))
        node_ids = [int(n) for n in rng.integers(1, 2**62, size=num_clients)]
    for pid in order:
        manager.register(InProcessProxy(int(pid), num_clients, run_config, data_dir, node_ids[pid], received))
    resume = load_checkpoint(cfg.resume_from) if cfg.resume_from else None
    if resume is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(cfg.resume_from)
    server_kwargs = dict(
        client_manager=manager,
        strategy=build_strategy(cfg, load_test_set(cfg, data_dir)),
        recorder=RunRecorder(run_dir, cfg.to_run_config(), cfg.num_server_rounds, tensorboard=cfg.tensorboard, model=cfg.model,
                             resumed_rows=resume.history if resume else None),
        checkpoint_every=cfg.checkpoint_every,
        config=cfg.to_run_config(),
        resume=resume,
        release=ReleasePolicy(cfg.dp_mode, cfg.dp_release_unprotected_metrics),
        local_privacy=local_privacy_ledger(cfg),
    )
    if crash_after:
        crash_at = (crash_after, "after-checkpoint")
    server = CrashingServer(*crash_at, **server_kwargs) if crash_at else RecordingServer(**server_kwargs)
    server.set_max_workers(1)  # one client at a time: dropout draws from torch's global RNG
    server.fit(cfg.num_server_rounds, timeout=None)
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
