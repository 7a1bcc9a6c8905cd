"""A whole federation in this process: the same ClientApp, strategy and server as the
ServerApp's (both assembled by `fl_app.assembly`), without Flower's transport.

The clients are the ClientApp's, built by `client_fn` for each call as Flower builds
them, behind in-memory client proxies instead of a SuperLink and Ray; the run is
prepared and its server built exactly as the ServerApp does (the resume check included).
What needs the transport is not available: SecAgg+ (refused), the round timeout (none).
With one torch thread per client it gives the simulation's numbers bitwise
(tests/test_integration.py checks it). Used by the tests, the benchmarks and the privacy
audit (`fl_app.audit`), whose canary clients exist only here."""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Context,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    RecordDict,
    parameters_to_ndarrays,
)
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import run_fl

from data.mnist import MNIST_TRAIN_SIZE
from fl_app.assembly import build_server, prepare_run
from fl_app.client import client_fn
from fl_app.config import AppConfig, check_partitioning
from fl_app.model import uses_dropout
from fl_app.server import RecordingServer
from strategies.wire import SERVER_ROUND


def model_digest(parameters: Parameters) -> str:
    """A digest of a model's tensors (values, dtypes and shapes)."""
    digest = hashlib.sha256()
    for array in parameters_to_ndarrays(parameters):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class InProcessProxy(ClientProxy):
    """Calls a ClientApp client built by `client_fn` for node `partition_id` directly."""

    def __init__(self, partition_id: int, num_partitions: int, run_config: dict[str, Any], data_dir: str,
                 node_id: int | None = None, received: list | None = None) -> None:
        node_id = partition_id if node_id is None else node_id
        super().__init__(cid=str(node_id))
        self.node_id = node_id  # what SecAgg+'s workflow addresses (as Flower's own proxies carry)
        self.received = received  # ("fit" | "evaluate", server round, model digest) per message
        self.context = Context(
            run_id=1, node_id=node_id,
            node_config={"partition-id": partition_id, "num-partitions": num_partitions, "data-dir": data_dir},
            state=RecordDict(), run_config=run_config,
        )

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        self._receive("fit", ins)
        return client_fn(self.context).fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout: float | None, group_id: int | None) -> EvaluateRes:
        self._receive("evaluate", ins)
        return client_fn(self.context).evaluate(ins)

    def _receive(self, kind: str, ins: FitIns | EvaluateIns) -> None:
        if self.received is not None:
            self.received.append((kind, int(ins.config[SERVER_ROUND]), model_digest(ins.parameters)))

    def get_properties(self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None) -> GetPropertiesRes:
        return client_fn(self.context).get_properties(ins)

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def run_federation(run_config: dict[str, Any], num_clients: int, data_dir: str, run_dir: Path, *,
                   node_seed: int | None = None, received: list | None = None,
                   extra_clients: Sequence[ClientProxy] = (),
                   server_class: type[RecordingServer] = RecordingServer,
                   server_options: dict[str, Any] | None = None, workers: int = 1) -> list[dict]:
    """Validate `run_config`, run every round, return history.jsonl's rows.

    The run writes to `run_dir` (its parent becomes `output-dir`) and reads MNIST from
    `data_dir`; with `resume-from` in `run_config`, it continues that run instead.
    `node_seed` gives the nodes random ids and a random registration order, as Flower's
    simulation does; every model a client receives is appended to `received`;
    `extra_clients` join the federation beside the MNIST clients (the audit's canaries);
    `server_class(**server_options, ...)` runs the rounds. One client trains at a time,
    in this thread; `workers` > 1 trains that many at once in Flower's thread pool (for a
    model without dropout, whose masks come from torch's global generator; give each
    one torch thread)."""
    cfg = AppConfig.from_run_config(run_config)
    if workers > 1 and uses_dropout(cfg.train.model):
        raise ValueError(f"workers = {workers} with model '{cfg.train.model}': its dropout masks come from "
                         "torch's global generator, so clients must train one at a time")

    def check_population(population: int) -> None:
        """The federation check for `num_clients` MNIST partitions among `population` nodes."""
        check_partitioning(cfg, num_clients, MNIST_TRAIN_SIZE, population=population)

    check_population(num_clients + len(extra_clients))  # before anything is written
    run = prepare_run(run_config | {"data-dir": data_dir, "output-dir": str(run_dir.parent)}, run_dir=run_dir)
    with run.recorder:
        server = build_server(run, server_class=server_class, check_population=check_population,
                              **(server_options or {}))
        order, node_ids = list(range(num_clients)), list(range(num_clients))
        if node_seed is not None:
            rng = np.random.default_rng(node_seed)
            order = list(rng.permutation(num_clients))
            node_ids = [int(n) for n in rng.integers(1, 2**62, size=num_clients)]
        for pid in order:
            server.client_manager().register(
                InProcessProxy(int(pid), num_clients, run_config, data_dir, node_ids[pid], received))
        for proxy in extra_clients:
            server.client_manager().register(proxy)
        server.set_max_workers(workers)  # 1: in this thread (fl_app/cohort_calls.py)
        run_fl(server, ServerConfig(num_rounds=cfg.run.num_server_rounds))  # Flower's loop, its [SUMMARY] included
    return run.recorder.run_dir.read_history()
