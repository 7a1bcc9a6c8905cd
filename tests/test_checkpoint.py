"""Checkpoints, resuming and reproducibility, on in-process federations (the app's
clients, strategy and server without Flower's transport; the SIGKILL test with Flower's
simulation engine is in test_integration.py)."""

import json
import os

import numpy as np
import pytest
import torch

from federation import Crash, run_federation
from fl_app.checkpoint import CHECKPOINT, Checkpoint, CheckpointError, global_rng_state, load_checkpoint, save_checkpoint
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, ConfigError, check_resumable

TIMING = ("seconds",)


def comparable(rows: list[dict]) -> list[dict]:
    """History rows without wall-clock timings."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture
def config(default_run_config, mnist_dir):
    """4 clients × 150 samples, 3 rounds, half of them sampled per round."""
    return default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 150, "eval-samples": 500, "local-epochs": 1,
        "num-server-rounds": 3, "fraction-fit": 0.5, "fraction-evaluate": 0.5,
        "min-fit-clients": 2, "min-available-clients": 2, "min-evaluate-clients": 2,
    }


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    rng = np.random.default_rng(3)
    ckpt = Checkpoint(
        round=2, weights=[rng.normal(size=(3, 4)).astype(np.float32), np.arange(5)],
        history=[{"round": 0, "centralized_loss": float("nan"), "federated_loss": None}],
        row={"round": 2, "epsilon": 0.5},
        strategy={"attributes": {"m_t": [np.ones(3)], "note": "x"}},
        sampler={"rng": rng.bit_generator.state}, rng=global_rng_state(),
        config={"seed": 1}, wall_seconds=12.5, num_nodes=4,
    )
    save_checkpoint(tmp_path, ckpt)
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT, "config.json"]  # no temporary left
    assert (tmp_path / CHECKPOINT).stat().st_mode & 0o777 == 0o600  # the operator's alone
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.row == {"round": 2, "epsilon": 0.5} and loaded.wall_seconds == 12.5 and loaded.config == {"seed": 1}
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded.weights, ckpt.weights))
    assert np.array_equal(loaded.strategy["attributes"]["m_t"][0], np.ones(3))
    assert loaded.sampler["rng"] == rng.bit_generator.state  # 128-bit PCG64 state survives JSON
    assert np.isnan(loaded.history[0]["centralized_loss"]) and loaded.history[0]["federated_loss"] is None


def test_resume_from_a_directory_that_cannot_be_resumed(tmp_path):
    with pytest.raises(CheckpointError, match="is not a run directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no checkpoint.npz"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is unreadable"):
        load_checkpoint(tmp_path)


def test_a_resumed_run_must_compute_the_same_thing(default_run_config):
    saved = AppConfig.from_run_config(default_run_config).to_run_config() | {"data-dir": "/a"}
    check_resumable(saved, saved | {"data-dir": "/b", "round-timeout": 30.0, "resume-from": "/r"})
    check_resumable(saved, default_run_config | {"data-dir": "/b"})  # auto values as the run resolved them
    with pytest.raises(ConfigError, match=r"learning-rate = 0.5 \(allowed: 0.02, as in the run "
                                          r"being resumed; only resume-from, output-dir"):
        check_resumable(saved, saved | {"learning-rate": 0.5})
    with pytest.raises(ConfigError, match=r"model = 'tanh-cnn' \(allowed: 'cnn', as in the run being resumed"):
        check_resumable(saved | {"model": "cnn"}, saved | {"model": "tanh-cnn"})
    with pytest.raises(ConfigError, match="resume-from = '/r' .allowed: only with dp-mode 'off' or 'central'"):
        AppConfig.from_run_config(default_run_config | {"dp-mode": "local", "dp-target-epsilon": 1.0,
                                                        "resume-from": "/r"})


def test_sampling_follows_client_keys_not_node_ids():
    """Same seed and keys give the same cohorts whatever the node ids and their order."""
    class Proxy:
        def __init__(self, cid, key):
            self.cid, self.key_ = cid, key

        def get_properties(self, ins, timeout, group_id):
            from flwr.common import Code, GetPropertiesRes, Status
            return GetPropertiesRes(Status(Code.OK, ""), {"client-key": self.key_})

    cohorts = []
    for node_ids in ([11, 52, 33, 74, 95], [9001, 12, 777, 5, 64]):
        manager = KeyedClientManager(seed=7)
        for i in np.random.default_rng(node_ids[0]).permutation(5):
            manager.register(Proxy(str(node_ids[i]), f"partition-{i:06d}"))
        cohorts.append([[manager.key(p.cid) for p in manager.sample(2)] for _ in range(4)])
    assert cohorts[0] == cohorts[1]
    assert len({tuple(c) for c in cohorts[0]}) > 1  # and it does sample


def test_same_seed_gives_the_same_history_whatever_the_node_ids(config, mnist_dir, tmp_path):
    """Different node ids, registration order and (in run b) TensorBoard on: same run."""
    a = run_federation(config, 4, mnist_dir, tmp_path / "a", node_seed=1)
    b = run_federation(config | {"tensorboard": True}, 4, mnist_dir, tmp_path / "b", node_seed=2)
    assert comparable(a) == comparable(b)
    assert a[-1]["centralized_accuracy"] > 0.3
    wa, wb = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "b" / "tensorboard"))
    events.Reload()
    accuracy = [(e.step, e.value) for e in events.Scalars("accuracy/centralized")]
    assert accuracy == [(r["round"], pytest.approx(r["centralized_accuracy"])) for r in b]
    assert [e.value for e in events.Scalars("clients/cohort_size")] == [r["num_fit_clients"] for r in b]
    assert not (tmp_path / "a" / "tensorboard").exists()


@pytest.mark.parametrize("extra", [
    {"strategy": "fedadam", "server-learning-rate": 0.01},
    {"dp-mode": "central", "dp-noise-multiplier": 0.05, "dp-clients-per-round": 2.0,
     "dp-clipping": "adaptive", "dp-clipped-count-stddev": 1.0, "dp-clipping-norm": 1.0,
     "strategy": "fedavgm", "server-momentum": 0.5, "dp-reproducible-noise": True},
], ids=["fedadam", "central-dp-adaptive-fedavgm"])
def test_resumed_run_equals_the_uninterrupted_one(config, mnist_dir, tmp_path, extra):
    """Server optimizer moments, momentum, accountant, adaptive clipping norm and every
    generator are restored: the resumed run ends bitwise where the uninterrupted one does,
    and ε continues."""
    cfg = config | extra
    full = run_federation(cfg, 4, mnist_dir, tmp_path / "full", node_seed=1)
    with pytest.raises(Crash):
        run_federation(cfg, 4, mnist_dir, tmp_path / "crashed", node_seed=2, crash_after=1)
    assert load_checkpoint(tmp_path / "crashed").round == 1
    resumed = run_federation(cfg | {"resume-from": str(tmp_path / "crashed")}, 4, mnist_dir,
                             tmp_path / "unused", node_seed=3)
    assert comparable(resumed) == comparable(full)
    wf, wr = torch.load(tmp_path / "full" / "model.pt"), torch.load(tmp_path / "crashed" / "model.pt")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    if "dp-mode" in extra:
        epsilons = [row["epsilon"] for row in resumed[1:]]
        assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3  # never reset
        summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
        assert summary["privacy"]["epsilon"] == epsilons[-1]
        assert summary["privacy"]["rounds_accounted"] == 3 and not summary["privacy"]["valid_claim"]
