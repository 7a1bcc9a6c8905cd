"""The attacks on the DP claim, mounted with only what each attacker sees, now fail:

1. a participant rebuilds the central DP noise from the public run-config (`seed`);
2. the server replays a client's local DP-SGD noise from (seed, client, round);
3. a crash and a resume release two different models for one accounted round;
4. the outputs hold exact per-client figures outside ε.

Each attack also runs against `dp-reproducible-noise = true`, where it must succeed:
that is what shows the attack is real and the test able to fail.
"""

from collections import defaultdict

import numpy as np
import pytest
import torch
from federation import CRASH_POINTS, Crash, run_federation
from flwr.common import RecordDict

import strategies.dp_fedavg as dp_fedavg
from fl_app.client import FlowerClient, load_client_data
from fl_app.config import AppConfig
from fl_app.in_process import model_digest
from fl_app.model import seeded_model
from fl_app.run_dir import RunDir
from fl_app.task import get_weights
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.randomness import DPRandomness, secure_gaussian
from strategies.privacy.release import ALWAYS_PRESENT, DP_RELEASED_FIELDS
from strategies.wire import CLIENT_CLIP_NORM

EXACT_CLIENT_FIGURES = ("train_loss", "train_accuracy", "update_norm", "clip_fraction",
                        "median_update_norm", "num_rejected", "num_fit_failures")


@pytest.fixture
def central(default_run_config, mnist_dir) -> dict:
    """Central DP, server clipping at S = 1, every client every round (q = 1), 3 × 100
    samples; everything else the DP recipe (tanh-cnn, FedAvgM)."""
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 100, "eval-samples": 300, "local-epochs": 1,
        "num-server-rounds": 1, "dp-mode": "central", "dp-noise-multiplier": 1.0,
        "dp-clients-per-round": 3.0, "dp-clipping": "server", "dp-clipping-norm": 1.0, "min-available-clients": 3,
    }


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])


def run_and_spy(config: dict, mnist_dir: str, run_dir, monkeypatch) -> np.ndarray:
    """Run one round; return the true Σ clip(Δ_k) the server noised (the attacker's target)."""
    sums = []
    real = dp_fedavg.sum_updates

    def spy(updates, shapes):
        total = real(updates, shapes)
        sums.append(flat(total))
        return total
    monkeypatch.setattr(dp_fedavg, "sum_updates", spy)
    run_federation(config, 3, mnist_dir, run_dir)
    return sums[0]


def rebuild_sum_from_public_seed(run_dir) -> tuple[np.ndarray, float]:
    """Attack 1 with config.json, summary.json and the released models only: the initial
    model follows from `seed`, the noise from the seed's generator; returns the recovered
    clipped sum and the noise norm σS√d."""
    run = RunDir(run_dir)
    config, privacy = run.read_config(), run.read_summary()["privacy"]
    before = get_weights(seeded_model(config["model"], config["seed"]))
    after = [t.numpy() for t in torch.load(run.model).values()]
    std = privacy["noise_multiplier"] * privacy["clipping_norm"]
    noise_rng = DPRandomness(config["seed"], reproducible=True).noise
    noise = flat([secure_gaussian(noise_rng, std, a.shape) for a in before])
    released_sum = (flat(after) - flat(before)) * privacy["clients_per_round"] / config["server-learning-rate"]
    return released_sum - noise, std * np.sqrt(noise.size)


def test_central_noise_cannot_be_rebuilt_from_the_public_seed(central, mnist_dir, tmp_path, monkeypatch):
    true_sum = run_and_spy(central, mnist_dir, tmp_path / "default", monkeypatch)
    recovered, noise_norm = rebuild_sum_from_public_seed(tmp_path / "default")
    error = np.linalg.norm(recovered - true_sum)
    assert 1.0 * noise_norm < error < 2.0 * noise_norm  # ≈ √2 · noise norm: two independent noises

    seeded_sum = run_and_spy(central | {"dp-reproducible-noise": True}, mnist_dir, tmp_path / "seeded", monkeypatch)
    recovered, noise_norm = rebuild_sum_from_public_seed(tmp_path / "seeded")
    assert np.linalg.norm(recovered - seeded_sum) < 1e-4 * noise_norm  # the attack, where it works
    summary = RunDir(tmp_path / "seeded").read_summary()
    assert summary["privacy"]["valid_claim"] is False and "NOT A VALID CLAIM" in summary["privacy"]["statement"]


def test_same_seed_and_config_release_different_models_under_central_dp(central, mnist_dir, tmp_path):
    for name in ("a", "b"):
        run_federation(central, 3, mnist_dir, tmp_path / name)
    a, b = torch.load(RunDir(tmp_path / "a").model), torch.load(RunDir(tmp_path / "b").model)
    assert not any(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def local_cfg(default_run_config, mnist_dir) -> dict:
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 200, "dp-mode": "local", "dp-target-epsilon": 4.0,
        "dp-delta": 1e-3, "num-server-rounds": 2, "batch-size": 20, "local-epochs": 1,
    }


def client_update(run_config: dict, mnist_dir: str) -> np.ndarray:
    """Client 0's round-1 model, trained with DP-SGD from the seeded initial model."""
    cfg = AppConfig.from_run_config(run_config)
    train_set, val_set = load_client_data(cfg, mnist_dir, 0, 10)
    client = FlowerClient(cfg, 0, lambda: (train_set, val_set), RecordDict())
    weights, _, _ = client.fit(get_weights(seeded_model(cfg.train.model, cfg.run.seed)),
                               {"server-round": 1, "learning-rate": 0.05, "final-learning-rate": 0.05})
    return flat(weights)


def test_local_dp_noise_cannot_be_replayed_by_the_server(local_cfg, mnist_dir):
    """The server knows the run-config, the client's partition, the round and the model it
    sent: replaying the client's training must miss by as much as two honest runs differ."""
    sent = client_update(local_cfg, mnist_dir)
    replay = client_update(local_cfg, mnist_dir)  # the server's replay: same inputs, its own process
    honest_spread = np.linalg.norm(client_update(local_cfg, mnist_dir) - sent)
    assert honest_spread > 1e-2
    assert 0.5 < np.linalg.norm(replay - sent) / honest_spread < 2.0

    seeded = local_cfg | {"dp-reproducible-noise": True}
    assert np.linalg.norm(client_update(seeded, mnist_dir) - client_update(seeded, mnist_dir)) < 1e-6


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_and_resume_release_each_round_once_and_account_it_once(central, mnist_dir, tmp_path, point):
    """Crash in round 2 at `point`, resume: every round's model reaches the clients and
    the outputs in one version only, released rounds = accountant steps, and a round
    computed but never released before the crash is computed again with fresh noise."""
    config = central | {"num-server-rounds": 3, "dp-release-unprotected-metrics": True,
                        "fraction-evaluate": 1.0, "min-evaluate-clients": 3}
    received: list = []
    with pytest.raises(Crash) as crash:
        run_federation(config, 3, mnist_dir, tmp_path / "run", crash_at=(2, point), received=received)
    resumed = run_federation(config | {"resume-from": str(tmp_path / "run")}, 3, mnist_dir,
                             tmp_path / "unused", received=received)
    versions = defaultdict(set)  # round -> digests of its model that left the server
    for kind, server_round, digest in received:
        versions[server_round if kind == "evaluate" else server_round - 1].add(digest)
    final = torch.load(RunDir(tmp_path / "run").model)
    versions[3].add(model_digest_of_state(final))
    assert {r: len(v) for r, v in versions.items() if r > 0} == {1: 1, 2: 1, 3: 1}
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary["privacy"]["rounds_accounted"] == 3
    assert [row["round"] for row in resumed] == [0, 1, 2, 3]
    epsilons = [row["epsilon"] for row in resumed[1:]]
    accountant = ClientLevelAccountant("rdp", 1e-5)
    expected = []
    for _ in range(3):
        accountant.step(1.0, 1.0)
        expected.append(accountant.epsilon())
    assert epsilons == pytest.approx(expected, rel=1e-12)
    if point == "after-aggregation":  # computed, never released: the resumed round 2 is fresh
        assert model_digest(crash.value.parameters) not in versions[2]


def model_digest_of_state(state: dict) -> str:
    from flwr.common import ndarrays_to_parameters

    return model_digest(ndarrays_to_parameters([t.numpy() for t in state.values()]))


@pytest.mark.parametrize("clipping", ["server", "client", "adaptive"])
def test_default_central_dp_outputs_hold_no_exact_client_figure(central, mnist_dir, tmp_path, clipping):
    config = central | {"dp-clipping": clipping, "num-server-rounds": 2}
    rows = run_federation(config, 3, mnist_dir, tmp_path / "default")
    for row in rows:
        assert set(row) <= DP_RELEASED_FIELDS | set(ALWAYS_PRESENT), row
        assert all(row[field] is None for field in ALWAYS_PRESENT), row
        assert not set(EXACT_CLIENT_FIGURES) & set(row)
    assert all("cohort_size" not in row and row["epsilon"] > 0 for row in rows[1:])
    if clipping == "adaptive":  # the noised count is released, the exact one is not
        assert all(np.isfinite(row["noised_unclipped_fraction"]) for row in rows[1:])
    summary = RunDir(tmp_path / "default").read_summary()
    assert summary["privacy"]["unprotected_metrics_released"] is False

    opted_in = run_federation(config | {"dp-release-unprotected-metrics": True}, 3, mnist_dir, tmp_path / "opt-in")
    assert {"clip_fraction", "median_update_norm", "train_loss", "federated_accuracy"} <= set(opted_in[-1])
    assert opted_in[-1]["num_fit_clients"] == 3
    summary = RunDir(tmp_path / "opt-in").read_summary()
    assert summary["privacy"]["unprotected_metrics_released"] is True


def test_clients_send_no_update_norm_and_no_exact_figures_under_dp(central, mnist_dir):
    cfg = AppConfig.from_run_config(central | {"dp-clipping": "client"})
    train_set, val_set = load_client_data(cfg, mnist_dir, 0, 3)
    client = FlowerClient(cfg, 0, lambda: (train_set, val_set))
    weights, n, metrics = client.fit(get_weights(seeded_model(cfg.train.model, cfg.run.seed)),
                                     {"server-round": 1, "learning-rate": 0.02, "final-learning-rate": 0.02,
                                      CLIENT_CLIP_NORM: 1.0})
    assert metrics == {} and n == len(train_set)
    assert np.linalg.norm(flat(weights)) <= 1.0 + 1e-5  # it sends its clipped Δ
    with pytest.raises(PermissionError, match="federated evaluation is withheld under DP"):
        client.evaluate(weights, {"server-round": 1})
