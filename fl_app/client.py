"""The client behind the ClientApp (`fl_app/client_app.py`): a NumPyClient that trains
the run's `model` on this node's data.

A node's data comes from its node-config: `data-dir` alone is the site's own dataset
(IDX files, image folders by class or a .npz; used whole); `partition-id` and
`num-partitions` carve MNIST (simulation and demo deployments, with `data-dir` from
node-config or else run-config).
"""

import json
import threading
from collections.abc import Callable, Mapping
from functools import cached_property

import numpy as np
from flwr.client import Client, NumPyClient
from flwr.common import ConfigRecord, Context, NDArrays, RecordDict, Scalar
from torch import nn

from data.cache import locked_cache
from data.mnist import TensorDataset, map_mnist
from data.partition import PartitionSpec, client_split, partition_indices
from data.site_data import load_site_data
from fl_app.attacks import attacked
from fl_app.config import AppConfig, client_config
from fl_app.distributed_client import distributed_message
from fl_app.model import build_model
from fl_app.task import device, evaluate, get_weights, make_optimizer, set_weights, train
from strategies.privacy.mechanism import clip_update, model_delta
from strategies.wire import (
    ACCURACY,
    CLIENT_CLIP_NORM,
    CLIENT_EPSILON,
    CLIENT_KEY,
    DP_NOISE_MULTIPLIER,
    DP_ROUNDS,
    DP_SAMPLE_RATE,
    FINAL_LEARNING_RATE,
    LEARNING_RATE,
    SERVER_ROUND,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
)

ACCOUNTANT_RECORD = "local-dp-accountant"


_models = threading.local()


def thread_model(name: str) -> nn.Module:
    """The model `name` of this thread, built once per process and thread: every fit and
    evaluate loads the whole global model into it first (parameters and buffers), so
    nothing of one call reaches the next, and a ClientApp call does not build a model."""
    models = _models.__dict__
    if name not in models:
        models[name] = build_model(name).to(device())
    return models[name]


Split = tuple[TensorDataset, TensorDataset]  # (local train set, local validation set)


class FlowerClient(NumPyClient):
    """One site: local training on its train set (DP-SGD when `dp-mode = "local"`),
    evaluation on its validation set, both from `data()`, called at the first fit or
    evaluate (never for the key query). `client_key` (the partition id, or the node id of
    a site with its own data) seeds local training; `key` names the client to the server
    (default: its partition); `attacker` makes it send an `attack`ed update. `state` is
    the node's context state, which outlives the client object between rounds and carries
    the local privacy accountant."""

    def __init__(
        self,
        cfg: AppConfig,
        client_key: int,
        data: Callable[[], Split],
        state: RecordDict | None = None,
        attacker: bool = False,
        key: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.client_key = client_key
        self.data = data
        self.state = state if state is not None else RecordDict()
        self.attacker = attacker
        self.key = key or f"partition-{client_key:06d}"

    @cached_property
    def split(self) -> Split:
        """The local (train, validation) sets, loaded at first use."""
        return self.data()

    @property
    def train_set(self) -> TensorDataset:
        return self.split[0]

    @property
    def val_set(self) -> TensorDataset:
        return self.split[1]

    @property
    def net(self) -> nn.Module:
        """This thread's model (`thread_model`): built at the first fit or evaluate, never
        for the key query."""
        return thread_model(self.cfg.train.model)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """The key the server orders and samples clients by (stable across runs)."""
        return {CLIENT_KEY: self.key}

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict]:
        """Train the global model locally; return it (or, when the server asks for
        client-side DP clipping, the update clipped to norm S), the example count and
        metrics."""
        set_weights(self.net, parameters)
        server_round = int(config[SERVER_ROUND])
        seed = np.random.SeedSequence([self.cfg.run.seed, self.client_key, server_round])
        learning_rates = float(config[LEARNING_RATE]), float(config[FINAL_LEARNING_RATE])
        train_seed = int(seed.generate_state(1)[0])
        metrics: dict[str, Scalar] = {}
        if self.cfg.dp.mode == "local":  # DP-SGD trains the whole round at its first rate
            loss, accuracy, privacy = self._train_private(learning_rates[0], train_seed)
            metrics.update(privacy)
        else:
            loss, accuracy = train(self.net, self.train_set, self.cfg.train, learning_rates=learning_rates,
                                   seed=train_seed)
        if self.releases_own_figures:
            metrics.update({TRAIN_LOSS: loss, TRAIN_ACCURACY: accuracy})
        weights = get_weights(self.net)
        reference = parameters
        if CLIENT_CLIP_NORM in config:
            weights, _ = clip_update(model_delta(weights, parameters), float(config[CLIENT_CLIP_NORM]))
            reference = [np.zeros_like(w) for w in weights]
        if self.attacker:
            rng = np.random.default_rng(seed.spawn(1)[0])
            weights = attacked(self.cfg.attack.kind, weights, reference, self.cfg.attack.scale, rng)
        if self.cfg.secagg.enabled:
            # The server cannot screen a masked update: a non-finite one must not leave the
            # client. Anything sent in the clear would escape the secure sum and the noise.
            if not all(np.isfinite(w).all() for w in weights):
                raise ValueError("local training gave a non-finite update; not sent")
            if self.cfg.dp.mode == "distributed":  # rounded, with its noise share, for the modular sum
                weights = [distributed_message(self.cfg, self.client_key, weights, config)]
            return weights, 1, {}
        if self.cfg.dp.mode == "local":  # the exact example count would reveal a sample's presence
            return weights, 1, metrics
        return weights, len(self.train_set), metrics

    @property
    def releases_own_figures(self) -> bool:
        """Whether this client reports exact figures of its data (train loss and accuracy,
        validation results): never under DP unless `dp-release-unprotected-metrics`."""
        return self.cfg.dp.mode == "off" or self.cfg.dp.release_unprotected_metrics

    def _train_private(self, learning_rate: float, seed: int) -> tuple[float, float, dict[str, Scalar]]:
        """DP-SGD, continuing this client's accountant across rounds; returns the train
        loss and accuracy and the privacy report (ε so far, σ, Poisson batch rate,
        rounds trained)."""
        from strategies.privacy.local_dp import (  # Opacus: slow import
            LocalDPSettings,
            batches_per_epoch,
            local_noise_multiplier,
            train_private,
        )

        dp = LocalDPSettings(
            max_grad_norm=self.cfg.dp.max_grad_norm,
            noise_multiplier=local_noise_multiplier(
                target_epsilon=self.cfg.dp.target_epsilon, delta=self.cfg.dp.delta,
                num_samples=len(self.train_set), batch_size=self.cfg.train.batch_size,
                epochs=self.cfg.train.local_epochs, rounds=self.cfg.run.num_server_rounds,
                accountant=self.cfg.dp.accountant,
            ),
            delta=self.cfg.dp.delta,
            accountant=self.cfg.dp.accountant,
            reproducible=self.cfg.dp.reproducible_noise,
        )
        saved = self.state.config_records.get(ACCOUNTANT_RECORD)
        previous = json.loads(str(saved["state"])) if saved else None
        rounds = 1
        if saved:
            done = saved["rounds"]
            assert isinstance(done, int), "written as an int below"
            rounds = done + 1
        self.net.train()  # this thread's model may come from an evaluate; Opacus checks the mode first
        loss, accuracy, epsilon, state = train_private(
            self.net, self.train_set, dp, previous, epochs=self.cfg.train.local_epochs,
            batch_size=self.cfg.train.batch_size, seed=seed,
            make_optimizer=lambda net: make_optimizer(net, self.cfg.train, learning_rate))
        self.state[ACCOUNTANT_RECORD] = ConfigRecord({"state": json.dumps(state), "rounds": rounds})
        privacy: dict[str, Scalar] = {
            CLIENT_EPSILON: epsilon, DP_NOISE_MULTIPLIER: dp.noise_multiplier,
            DP_SAMPLE_RATE: 1 / batches_per_epoch(len(self.train_set), self.cfg.train.batch_size),
            DP_ROUNDS: rounds,
        }
        return loss, accuracy, privacy

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict]:
        """Loss and accuracy of the global model on the local validation split (refused
        under DP unless `dp-release-unprotected-metrics`: exact figures of local data)."""
        if not self.releases_own_figures:
            raise PermissionError("federated evaluation is withheld under DP "
                                  "(dp-release-unprotected-metrics = false)")
        if len(self.val_set) == 0:
            return float("nan"), 0, {}
        set_weights(self.net, parameters)
        loss, accuracy = evaluate(self.net, self.val_set)
        return loss, len(self.val_set), {ACCURACY: accuracy}


@locked_cache(maxsize=16)
def load_client_data(
    cfg: AppConfig, data_dir: str, partition_id: int, num_partitions: int
) -> tuple[TensorDataset, TensorDataset]:
    """This client's (train, validation) split, computed once per process (from the
    memory-mapped training images: a process holding clients does not load all of MNIST)."""
    full = map_mnist(data_dir, train=True)
    spec = PartitionSpec(
        scheme=cfg.data.partitioner,
        num_partitions=num_partitions,
        seed=cfg.run.seed,
        dirichlet_alpha=cfg.data.dirichlet_alpha,
        shards_per_client=cfg.data.shards_per_client,
    )
    indices = partition_indices(full.labels, spec, partition_id)
    return client_split(
        full,
        indices,
        seed=cfg.run.seed + partition_id,
        max_samples=cfg.data.samples_per_client,
        validation_fraction=cfg.data.validation_fraction,
    )


class NodeConfigError(ValueError):
    """A SuperNode's node-config says neither where its data is nor which partition."""


def node_data(cfg: AppConfig, node_config: Mapping[str, Scalar]) -> tuple[int | None, Callable[[], Split]]:
    """(partition id or None for a site's own data, what loads its (train, validation)
    split); a node-config naming no data is refused here, before any data is read."""
    if "partition-id" in node_config or "num-partitions" in node_config:
        missing = [k for k in ("partition-id", "num-partitions") if k not in node_config]
        if missing:
            present = "num-partitions" if missing == ["partition-id"] else "partition-id"
            raise NodeConfigError(
                f"node-config has {present} but not {missing[0]}: give both (demo mode, a "
                "partition of MNIST) or only data-dir (the site's own data)"
            )
        partition_id = int(node_config["partition-id"])
        num_partitions = int(node_config["num-partitions"])
        data_dir = str(node_config.get("data-dir", cfg.data.data_dir))
        return partition_id, lambda: load_client_data(cfg, data_dir, partition_id, num_partitions)
    if "data-dir" in node_config:
        site_dir = str(node_config["data-dir"])
        return None, lambda: load_site_split(cfg, site_dir)
    raise NodeConfigError(
        "node-config names no data: start the SuperNode with --node-config "
        "\"data-dir='<MNIST/raw IDX dir, image folders by class or .npz>'\" (the site's own data) or "
        "\"partition-id=<i> num-partitions=<n>\" (demo: a partition of MNIST)"
    )


@locked_cache(maxsize=4)
def load_site_split(cfg: AppConfig, data_dir: str) -> tuple[TensorDataset, TensorDataset]:
    """A site's whole dataset, split (seeded) into local train and validation sets."""
    data = load_site_data(data_dir)
    return client_split(data, np.arange(len(data)), seed=cfg.run.seed, max_samples=0,
                        validation_fraction=cfg.data.validation_fraction)


def client_fn(context: Context) -> Client:
    """Build the client for this node from its node-config and the run-config."""
    cfg = client_config(context.run_config)
    partition_id, data = node_data(cfg, context.node_config)
    if partition_id is None:
        return FlowerClient(cfg, context.node_id, data, context.state, key=f"node-{context.node_id}").to_client()
    attacker = partition_id < cfg.attack.num_attackers
    return FlowerClient(cfg, partition_id, data, context.state, attacker).to_client()
