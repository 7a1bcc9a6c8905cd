"""Distributed DP end to end in this process: the app's SecAgg+ server over a loopback
Grid that hands each message to the ClientApp of its node (with Flower's
`secaggplus_mod`), so that everything the server process receives can be recorded and
attacked; the key rules; the adversarial neighbours of the sensitivity."""

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.common import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp.grid import Grid
from flwr.supercore.task_identity import TaskIdentity

import fl_app.client as client_module
from fl_app.client_app import app as client_app
from fl_app.config import AppConfig, ConfigError, project_defaults
from fl_app.in_process import run_federation
from fl_app.run_dir import RunDir
from strategies.distributed_dp import DistributedDPFedAvg, rotation_seed
from strategies.privacy import discretization
from strategies.privacy.discretization import decode_sum, encode_update, rotation_signs
from strategies.privacy.distributed import SkellamSettings, scaled_l2_sensitivity
from strategies.privacy.skellam import rounded_l1_bound

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 5


def distributed_config(**overrides) -> dict:
    return project_defaults(REPO) | {
        "dp-mode": "distributed", "dp-clipping": "client", "secure-aggregation": True,
        "dp-noise-multiplier": 1.0, "dp-clients-per-round": float(CLIENTS), "dp-clipping-norm": 0.5,
        "num-server-rounds": 1, "samples-per-client": 60, "local-epochs": 1, "eval-samples": 500,
        "min-available-clients": CLIENTS, "fraction-evaluate": 0.0,
    } | overrides


class LoopbackGrid(Grid):
    """Delivers each message to its node's ClientApp in this process and records every
    reply: all that reaches the server from the clients."""

    def __init__(self, run_config: dict, data_dir: str) -> None:
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config=run_config,
                          node_config={"partition-id": node, "num-partitions": CLIENTS, "data-dir": data_dir})
            for node in range(CLIENTS)
        }
        self.received: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for sent in messages:
            message = message_from_proto(message_to_proto(sent))  # the bytes a node would receive
            node = message.metadata.dst_node_id
            TaskIdentity.node_id = node  # the node's process, as Flower sets it there
            try:
                reply = client_app(message, self.contexts[node])
            finally:
                TaskIdentity.node_id = SUPERLINK_NODE_ID
            reply = message_from_proto(message_to_proto(reply))
            self.received.append(reply)
            replies.append(reply)
        return replies

    def set_run(self, run_id):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


def run_secure(tmp_path: Path, mnist_dir: str, monkeypatch, **overrides):
    """One distributed-DP round over SecAgg+; what the clients sent into SecAgg+ (their
    clipped updates), what the server received, and the residue sum it unmasked."""
    run_config = distributed_config(**overrides)
    sent: list[np.ndarray] = []
    original = client_module.distributed_message

    def recording(cfg, key, clipped, config):
        sent.append(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in clipped]))
        return original(cfg, key, clipped, config)

    monkeypatch.setattr(client_module, "distributed_message", recording)
    unmasked: list[np.ndarray] = []
    residue_sum = DistributedDPFedAvg.residue_sum

    def recording_sum(self, results):
        total = residue_sum(self, results)
        unmasked.append(total)
        return total

    monkeypatch.setattr(DistributedDPFedAvg, "residue_sum", recording_sum)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp process has set when it builds messages
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    grid = LoopbackGrid(run_config, mnist_dir)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    run_federation(run_config, CLIENTS, mnist_dir, tmp_path / "run", server_options={"grid": grid, "context": context})
    return sent, grid.received, unmasked, RunDir(tmp_path / "run")


def server_side_vectors(received: list[Message]) -> list[np.ndarray]:
    """Every integer vector the clients sent the server (SecAgg+'s masked vectors)."""
    from flwr.common import bytes_to_ndarray

    vectors = []
    for reply in received:
        if reply.has_error() or RECORD_KEY_CONFIGS not in reply.content.config_records:
            continue
        record: ConfigRecord = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS in record:
            vectors.extend(bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS])
    return vectors


def closest_to_the_unnoised_sum(vectors: list[np.ndarray], true_sum: np.ndarray, settings: dict, padded: int) -> float:
    """The attack: read every vector the server holds as residues modulo M and decode it;
    the smallest distance (relative to ‖Σ Δ‖) to the un-noised sum of the clipped updates."""
    signs = rotation_signs(rotation_seed(settings["seed"], 1), padded)
    best = math.inf
    for vector in vectors:
        if vector.shape != (padded,):
            continue
        decoded = decode_sum(np.mod(vector.astype(np.int64), settings["modulus"]), signs=signs,
                             scale=settings["scale"], modulus=settings["modulus"], dimension=true_sum.size,
                             top_up=np.zeros(padded, dtype=np.int64))
        best = min(best, float(np.linalg.norm(decoded - true_sum) / np.linalg.norm(true_sum)))
    return best


def test_the_server_never_holds_the_sum_without_its_noise(tmp_path, mnist_dir, monkeypatch):
    """Over SecAgg+ the server receives masked vectors and, unmasked, only the noised sum:
    no vector it holds decodes to within the noise of the clients' un-noised sum. The
    same attack on a run whose clients add no noise finds the sum (the test's power)."""
    sent, received, unmasked, run = run_secure(tmp_path / "noised", mnist_dir, monkeypatch)
    privacy = run.read_summary()["privacy"]
    assert len(sent) == CLIENTS and privacy["mode"] == "distributed" and privacy["rounds_accounted"] == 1
    (mechanism,) = privacy["mechanisms"]
    settings = {"seed": 42, "scale": mechanism["scale"], "modulus": 2 ** mechanism["bits"]}
    masked = [v for v in server_side_vectors(received) if v.size > 1]  # each after its masked weight factor
    assert len(masked) == CLIENTS
    assert all(v.max() >= 2 ** 20 for v in masked)  # masks spread over SecAgg+'s 2^32 field
    true_sum = sum(sent)
    reachable = masked + [u for u in unmasked if u is not None]
    # the noise on the survivors' sum: γ·√(K μ/(gτ)) per coordinate, τ(5) = 2 at threshold 0.5
    noise = mechanism["scale"] * math.sqrt(CLIENTS / 2 * mechanism["variance"] / mechanism["noise_growth"]
                                           * true_sum.size)
    assert noise / np.linalg.norm(true_sum) > 0.5
    distance = closest_to_the_unnoised_sum(reachable, true_sum, settings, mechanism["padded_dimension"])
    assert distance == pytest.approx(noise / np.linalg.norm(true_sum), rel=0.05)

    monkeypatch.setattr(discretization, "skellam_noise", lambda rng, variance, size: np.zeros(size, dtype=np.int64))
    sent, received, unmasked, _ = run_secure(tmp_path / "noiseless", mnist_dir, monkeypatch)
    exposed = closest_to_the_unnoised_sum(server_side_vectors(received) + [u for u in unmasked if u is not None],
                                          sum(sent), settings, mechanism["padded_dimension"])
    assert exposed < distance / 10  # only rounding's error is left


def test_secagg_carries_the_same_sum_as_the_in_process_stand_in(tmp_path, mnist_dir, monkeypatch):
    """With reproducible noise the SecAgg+ round and the in-process modular sum release the
    same model: Flower's protocol carries every client's integers exactly."""
    config = distributed_config(**{"dp-reproducible-noise": True})
    _, _, _, secure = run_secure(tmp_path / "secure", mnist_dir, monkeypatch, **{"dp-reproducible-noise": True})
    run_federation(config, CLIENTS, mnist_dir, tmp_path / "plain" / "run")
    plain = RunDir(tmp_path / "plain" / "run")
    assert secure.read_history()[-1]["centralized_loss"] == plain.read_history()[-1]["centralized_loss"]
    assert secure.read_summary()["privacy"]["epsilon"] == plain.read_summary()["privacy"]["epsilon"]


@pytest.mark.parametrize("overrides, message", [
    ({"secure-aggregation": False},
     "dp-mode = 'distributed' (allowed: only with secure-aggregation = true and dp-clipping = 'client'"),
    ({"dp-clipping": "adaptive", "secure-aggregation": True},
     "dp-mode = 'distributed' (allowed: only with secure-aggregation = true and dp-clipping = 'client'"),
    ({"dp-bits": 31}, "dp-bits = 31 (allowed: an integer in [8, 30])"),
    ({"strategy": "fedmedian"}, "strategy = 'fedmedian' (allowed with dp-mode = 'distributed'"),
])
def test_distributed_mode_refuses_what_it_cannot_protect(overrides, message):
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(distributed_config(**overrides))
    assert message in str(err.value)


def test_distributed_mode_takes_the_central_recipe():
    cfg = AppConfig.from_run_config(distributed_config(**{"model": "auto", "strategy": "auto"}))
    assert (cfg.train.model, cfg.strategy.name, cfg.dp.central) == ("tanh-cnn", "fedavgm", True)


@pytest.mark.parametrize("neighbour", ["spike", "spread", "half-integers", "sign-pattern"])
def test_one_clients_rounded_vector_stays_within_the_declared_sensitivity(neighbour):
    """Adversarial neighbours: an update at norm S on one coordinate, spread evenly, one
    whose rotated and scaled coordinates sit at half-integers (rounding's worst case),
    and one aligned with the rotation's signs. The other clients' draws being the same,
    adding the client changes the integer sum (before the noise, which does not depend
    on it) by its rounded vector, whose L2 and L1 norms stay within the declared Δ₂, Δ₁."""
    d, padded, clip, scale = 1000, 1024, 0.5, 0.5 / 300
    signs = rotation_signs([42, 1, 1], padded)
    if neighbour == "spike":
        update = np.zeros(d)
        update[7] = clip
    elif neighbour == "spread":
        update = np.full(d, clip / math.sqrt(d))
    elif neighbour == "half-integers":  # R x / γ = k + ½ on every coordinate, ‖x‖ ≤ S
        target = np.full(padded, 0.5)
        target *= (clip / scale) / np.linalg.norm(target) * 0.999
        target = np.floor(target) + 0.5
        update = discretization.unrotate(target * scale, signs, padded)
        d = padded
    else:
        update = np.resize(signs, d) * clip / math.sqrt(d)
    update *= min(1.0, clip / np.linalg.norm(update))
    settings = SkellamSettings(clipping_norm=clip, dimension=d, bits=16, scale=scale, noise_multiplier=1.0,
                               noise_growth=1.0, cohort_bound=3, wrap_bound=0.0)
    l2 = scaled_l2_sensitivity(clip / scale, settings.padded_dimension)
    others = [np.random.default_rng(i).normal(size=d) * 1e-3 for i in range(3)]
    for seed in range(20):
        def summed(clients, seed=seed):
            noise_rng = np.random.default_rng([seed, 1])
            total = np.zeros(settings.padded_dimension, dtype=np.int64)
            for x in clients:
                total += encode_update(x, signs=signs, scale=scale, norm_bound=l2, noise_variance=0.0,
                                       modulus=2 ** 40, rng=noise_rng)
            return total
        with_client, without = summed([*others, update]), summed(others)
        difference = discretization.centred(with_client - without, 2 ** 40).astype(np.float64)
        assert np.linalg.norm(difference) <= settings.l2_sensitivity
        assert np.abs(difference).sum() <= rounded_l1_bound(settings.l2_sensitivity, settings.padded_dimension)
