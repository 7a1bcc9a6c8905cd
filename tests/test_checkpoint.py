"""Checkpoints, resuming and reproducibility, on in-process federations (the app's
clients, strategy and server without Flower's transport; the SIGKILL test with Flower's
simulation engine is in test_integration.py), and the validation of a checkpoint on
load: a damaged or edited one stops `run_simulation.py` with one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from federation import Crash, run_federation

from fl_app import simulate
from fl_app.checkpoint import Checkpoint, CheckpointError, global_rng_state, load_checkpoint, save_checkpoint
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, ConfigError, check_resumable
from fl_app.model import seeded_model
from fl_app.run_dir import RunDir, RunDirInUse, RunLock
from fl_app.task import get_weights

REPO = Path(__file__).resolve().parents[1]
TIMING = ("seconds",)
SMALL = {"samples-per-client": 150, "eval-samples": 500, "local-epochs": 1, "num-server-rounds": 3,
         "fraction-fit": 0.5, "fraction-evaluate": 0.5, "min-fit-clients": 2, "min-available-clients": 2,
         "min-evaluate-clients": 2}
CENTRAL_DP = {"dp-mode": "central", "min-fit-clients": "auto", "dp-noise-multiplier": 0.05, "dp-clients-per-round": 2.0,
              "dp-clipping": "adaptive", "dp-clipped-count-stddev": 1.0, "dp-clipping-norm": 1.0,
              "strategy": "fedavgm", "server-momentum": 0.5, "dp-reproducible-noise": True}


def comparable(rows: list[dict]) -> list[dict]:
    """History rows without wall-clock timings."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture
def config(default_run_config, mnist_dir):
    """4 clients × 150 samples, 3 rounds, half of them sampled per round."""
    return default_run_config | {"data-dir": mnist_dir} | SMALL


def test_checkpoint_round_trip_and_atomic_write(tmp_path, default_run_config):
    RunDir(tmp_path).write_config({})
    rng = np.random.default_rng(3)
    weights = get_weights(seeded_model("cnn", 1))
    ckpt = Checkpoint(
        round=1, weights=weights,
        history=[{"round": 0, "centralized_loss": float("nan"), "centralized_accuracy": 0.1,
                  "federated_loss": None, "seconds": 0.5}],
        row={"round": 1, "centralized_loss": 0.4, "centralized_accuracy": 0.9, "epsilon": 0.5},
        strategy={"attributes": {"m_t": [np.ones_like(w) for w in weights]}},
        sampler={"rng": rng.bit_generator.state}, rng=global_rng_state(),
        config=AppConfig.from_run_config(default_run_config | {"model": "cnn"}).to_run_config(),
        wall_seconds=12.5, num_nodes=4,
    )
    save_checkpoint(tmp_path, ckpt)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "config.json"]  # no temporary left
    assert RunDir(tmp_path).checkpoint.stat().st_mode & 0o777 == 0o600  # the operator's alone
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 1 and loaded.row == ckpt.row and loaded.wall_seconds == 12.5 and loaded.config == ckpt.config
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(loaded.weights, ckpt.weights, strict=True))
    assert np.array_equal(loaded.strategy["attributes"]["m_t"][0], np.ones_like(weights[0]))
    assert loaded.sampler["rng"] == rng.bit_generator.state  # 128-bit PCG64 state survives JSON
    assert np.isnan(loaded.history[0]["centralized_loss"]) and loaded.history[0]["federated_loss"] is None


def test_resume_from_a_directory_that_cannot_be_resumed(tmp_path):
    with pytest.raises(CheckpointError, match="is not a run directory"):
        load_checkpoint(tmp_path)
    RunDir(tmp_path).write_config({})
    with pytest.raises(CheckpointError, match="has no checkpoint.npz"):
        load_checkpoint(tmp_path)
    RunDir(tmp_path).checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="the file is unreadable .BadZipFile: File is not a zip file."):
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


def test_prefetched_keys_are_asked_once_and_a_sample_waits_for_them():
    """The background key query and a sample's query do not ask a client twice."""
    import threading

    from flwr.common import Code, GetPropertiesRes, Status

    asked, release = [], threading.Event()

    class Proxy:
        def __init__(self, cid):
            self.cid = cid

        def get_properties(self, ins, timeout, group_id):
            release.wait(10)  # the query is still under way when sampling starts
            asked.append(self.cid)
            return GetPropertiesRes(Status(Code.OK, ""), {"client-key": f"partition-{int(self.cid):06d}"})

    manager = KeyedClientManager(seed=7)
    for cid in ("3", "1", "2"):
        manager.register(Proxy(cid))
    prefetch = manager.prefetch_keys()
    threading.Timer(0.2, release.set).start()
    assert len(manager.sample(2)) == 2
    prefetch.join()
    assert sorted(asked) == ["1", "2", "3"]
    assert manager.ordered(["3", "2", "1"]) == ["1", "2", "3"]


def test_same_seed_gives_the_same_history_whatever_the_node_ids(config, mnist_dir, tmp_path):
    """Different node ids, registration order and (in run b) TensorBoard on: same run."""
    a = run_federation(config, 4, mnist_dir, tmp_path / "a", node_seed=1)
    b = run_federation(config | {"tensorboard": True}, 4, mnist_dir, tmp_path / "b", node_seed=2)
    assert comparable(a) == comparable(b)
    assert a[-1]["centralized_accuracy"] > 0.3
    wa, wb = torch.load(RunDir(tmp_path / "a").model), torch.load(RunDir(tmp_path / "b").model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(RunDir(tmp_path / "b").tensorboard))
    events.Reload()
    accuracy = [(e.step, e.value) for e in events.Scalars("accuracy/centralized")]
    assert accuracy == [(r["round"], pytest.approx(r["centralized_accuracy"])) for r in b]
    assert [e.value for e in events.Scalars("clients/cohort_size")] == [r["num_fit_clients"] for r in b]
    assert not RunDir(tmp_path / "a").tensorboard.exists()


DISTRIBUTED_DP = CENTRAL_DP | {"dp-mode": "distributed", "dp-clipping": "client", "secure-aggregation": True,
                               "dp-clients-per-round": 3.0, "dp-noise-multiplier": 0.5}


@pytest.mark.parametrize("extra", [{"strategy": "fedadam", "server-learning-rate": 0.01}, CENTRAL_DP, DISTRIBUTED_DP],
                         ids=["fedadam", "central-dp-adaptive-fedavgm", "distributed-dp"])
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
    wf, wr = torch.load(RunDir(tmp_path / "full").model), torch.load(RunDir(tmp_path / "crashed").model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    if "dp-mode" in extra:
        epsilons = [row["epsilon"] for row in resumed[1:]]
        assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3  # never reset
        summary = RunDir(tmp_path / "crashed").read_summary()
        assert summary["privacy"]["epsilon"] == epsilons[-1]
        assert summary["privacy"]["rounds_accounted"] == 3 and not summary["privacy"]["valid_claim"]


@pytest.fixture(scope="module")
def interrupted(default_run_config, mnist_dir, tmp_path_factory) -> Path:
    """The run directory of a central-DP run (DP-FedAvg over FedAvgM, tanh-cnn) killed
    right after round 1's checkpoint, of 3 rounds."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(Crash):
        run_federation(default_run_config | {"data-dir": mnist_dir} | SMALL | CENTRAL_DP, 4, mnist_dir, run_dir,
                       node_seed=2, crash_after=1)
    return run_dir


Edit = Callable[[dict, dict], None]


def edited_copy(source: Path, target: Path, edit: Edit) -> Path:
    """A copy of run directory `source` whose checkpoint's JSON document and arrays were
    changed by `edit(document, arrays)` and written back as the app writes them."""
    shutil.copytree(source, target)
    path = RunDir(target).checkpoint
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    document = json.loads(arrays.pop("__document__").tobytes())
    edit(document, arrays)
    np.savez(path, __document__=np.frombuffer(json.dumps(document).encode(), dtype=np.uint8), **arrays)
    return target


def array(arrays: dict, reference: dict) -> np.ndarray:
    return arrays[reference["__array__"]]


def set_array(arrays: dict, reference: dict, value: np.ndarray) -> None:
    arrays[reference["__array__"]] = value


def set_nan(arrays: dict, reference: dict) -> None:
    value = array(arrays, reference).copy()
    value.flat[3] = np.nan
    set_array(arrays, reference, value)


def dp_state(document: dict) -> dict:
    return document["strategy"]["state_dict"]


EDITS: dict[str, tuple[Edit, str]] = {  # what was hand-edited -> the one line that refuses it
    "round-99": (lambda d, a: d.update(round=99),
                 "round = 99 (allowed: an integer in [1, 3], num-server-rounds of the run)"),
    "round-negative": (lambda d, a: d.update(round=-3), "round = -3 (allowed: an integer in [1, 3]"),
    "round-0": (lambda d, a: d.update(round=0), "round = 0 (allowed: an integer in [1, 3]"),
    "round-text": (lambda d, a: d.update(round="1"), "round = '1' (allowed: an integer in [1, 3]"),
    "weights-int8": (lambda d, a: set_array(a, d["weights"][0], array(a, d["weights"][0]).astype(np.int8)),
                     "weights[0] (conv1.weight) = int8 array of shape (16, 1, 8, 8) (allowed: a float32 (or wider "
                     "float) array of shape (16, 1, 8, 8), as in model 'tanh-cnn')"),
    "weights-float16": (lambda d, a: set_array(a, d["weights"][1], array(a, d["weights"][1]).astype(np.float16)),
                        "weights[1] (conv1.bias) = float16 array of shape (16,) (allowed: a float32 (or wider "
                        "float) array of shape (16,), as in model 'tanh-cnn')"),
    "weights-nan": (lambda d, a: set_nan(a, d["weights"][2]),
                    "weights[2] (conv2.weight) = float32 array of shape (32, 16, 4, 4) with 1 NaN or "
                    "infinite values (allowed: finite values only)"),
    "weights-shape": (lambda d, a: set_array(a, d["weights"][7], array(a, d["weights"][7])[:9]),
                      "weights[7] (fc2.bias) = float32 array of shape (9,) (allowed: a float32 (or wider float) "
                      "array of shape (10,), as in model 'tanh-cnn')"),
    "weights-missing": (lambda d, a: d["weights"].pop(),
                        "weights = a list of 7 items (allowed: a list of the 8 arrays of model 'tanh-cnn')"),
    "weights-dangling": (lambda d, a: d["weights"].__setitem__(0, {"__array__": "a999"}),
                         "a field refers to an array the file does not hold (KeyError: 'a999')"),
    "history-dropped": (lambda d, a: d.update(history=[]),
                        "history rounds = [] (allowed: [0], the rows recorded before round 1)"),
    "history-renumbered": (lambda d, a: d["history"][0].update(round=5),
                           "history rounds = [5] (allowed: [0], the rows recorded before round 1)"),
    "row-round": (lambda d, a: d["row"].update(round=2), "row.round = 2 (allowed: 1, the round)"),
    "accuracy": (lambda d, a: d["row"].update(centralized_accuracy=1.5),
                 "row.centralized_accuracy = 1.5 (allowed: a number in [0, 1])"),
    "format": (lambda d, a: d.update(format=1),
               "format = 1 (allowed: 2; the file was written by another version of the app)"),
    "field-missing": (lambda d, a: d.pop("rng"), "field 'rng' is missing (allowed: the fields round, weights"),
    "field-unknown": (lambda d, a: d.update(extra=1), "field 'extra' is unknown (allowed: the fields round,"),
    "config": (lambda d, a: d["config"].update({"num-server-rounds": 0}),
               "config: num-server-rounds = 0 (allowed: an integer >= 1, or 'auto')"),
    "wall-seconds": (lambda d, a: d.update(wall_seconds=float("nan")),
                     "wall_seconds = nan (allowed: a finite number >= 0)"),
    "num-nodes": (lambda d, a: d.update(num_nodes=0),
                  "num_nodes = 0 (allowed: an integer >= min-available-clients = 2)"),
    "rng-torch": (lambda d, a: set_array(a, d["rng"]["torch"], array(a, d["rng"]["torch"])[:10]),
                  "rng.torch = uint8 array of shape (10,) (allowed: a generator state; RuntimeError: "),
    "sampler-rng": (lambda d, a: d["sampler"]["rng"].update(bit_generator="MT19937"),
                    "sampler.rng = {'bit_generator': 'MT19937', "),
    "sigma-lowered": (lambda d, a: dp_state(d).update(noise_multiplier=0.001),
                      "strategy.state_dict.noise_multiplier = 0.001 (allowed: 0.05, dp-noise-multiplier)"),
    "accountant-reset": (lambda d, a: dp_state(d)["accountant"].update(history=[]),
                         "strategy.state_dict.accountant.history = [] (allowed: [[sigma, q, steps]] = "
                         "[[0.05, 0.5, 1]]: one step per round so far)"),
    "accountant-q": (lambda d, a: dp_state(d)["accountant"].update(history=[[0.05, 0.01, 1]]),
                     "strategy.state_dict.accountant.history = [[0.05, 0.01, 1]] (allowed:"),
    "accountant-delta": (lambda d, a: dp_state(d)["accountant"].update(delta=0.1),
                         "strategy.state_dict.accountant = {'accountant': 'rdp', 'delta': 0.1, "),
    "population": (lambda d, a: dp_state(d).update(population=["a"]),
                   "strategy.state_dict.population = ['a'] (allowed: at least dp-clients-per-round = 2 "
                   "distinct client keys)"),
    "momentum-nan": (lambda d, a: set_nan(a, dp_state(d)["server_optimizer"]["attributes"]["momentum_vector"][6]),
                     "strategy.state_dict.server_optimizer.attributes.momentum_vector[6] (fc2.weight) = float32 "
                     "array of shape (10, 32) with 1 NaN or infinite values"),
}


def test_an_intact_checkpoint_passes_every_check(interrupted, mnist_dir):
    checkpoint = load_checkpoint(interrupted)
    assert checkpoint.round == 1 and [r["round"] for r in checkpoint.history] == [0]
    overrides = {"data-dir": mnist_dir, "resume-from": str(interrupted)} | SMALL | CENTRAL_DP
    args = simulate.parse_args(["--num-clients", "4", "--run-config", " ".join(
        f"{k}={simulate.toml_value(v)}" for k, v in overrides.items())])
    assert simulate.resolve_run_config(args)["resume-from"] == str(interrupted)  # the pre-flight passes


@pytest.mark.parametrize("case", EDITS)
def test_an_edited_checkpoint_is_refused_with_one_line(interrupted, tmp_path, case):
    edit, message = EDITS[case]
    run_dir = edited_copy(interrupted, tmp_path / "run", edit)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(run_dir)
    assert str(refused.value).startswith(f"Invalid checkpoint {RunDir(run_dir).checkpoint}: {message}")
    assert "\n" not in str(refused.value)


def damage(path: Path, how: str) -> None:
    """Zero the file, cut it in half or flip one bit in its middle (in the weights)."""
    data = bytearray(path.read_bytes())
    if how == "zero-byte":
        data = bytearray()
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how, detail", [
    ("zero-byte", "BadZipFile: File is not a zip file"),
    ("truncated", "BadZipFile: File is not a zip file"),
    ("bit-flipped", "ValueError: bad CRC-32 for a"),
])
def test_a_damaged_checkpoint_is_refused_with_one_line(interrupted, tmp_path, capsys, mnist_dir, how, detail):
    """Through run_simulation.py's pre-flight: one line on stderr, exit 2, nothing started."""
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    damage(RunDir(run_dir).checkpoint, how)
    code = simulate.main(["--num-clients", "4", "--run-config",
                                f"data-dir='{mnist_dir}' resume-from='{run_dir}'"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"run_simulation: Invalid checkpoint {RunDir(run_dir).checkpoint}: the file is unreadable "
                          f"({detail}") and err.endswith("; it is truncated or corrupted\n")
    assert err.count("\n") == 1


def test_run_simulation_refuses_a_corrupted_checkpoint_before_starting(interrupted, tmp_path, mnist_dir):
    """End to end: `python run_simulation.py` on a hand-edited checkpoint (round = 99) and
    on a truncated one prints one line, no traceback, and exits 2."""
    for case in ("round-99", "truncated"):
        if case == "truncated":
            run_dir = shutil.copytree(interrupted, tmp_path / case)
            damage(RunDir(run_dir).checkpoint, case)
            expected = "the file is unreadable (BadZipFile: File is not a zip file)"
        else:
            run_dir = edited_copy(interrupted, tmp_path / case, EDITS[case][0])
            expected = EDITS[case][1]
        result = subprocess.run(
            [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "4", "--run-config",
             f"data-dir='{mnist_dir}' resume-from='{run_dir}'"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"run_simulation: Invalid checkpoint {RunDir(run_dir).checkpoint}: {expected}")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stdout + result.stderr


def test_a_symbolic_link_in_the_run_directory_is_refused_before_anything_runs(interrupted, tmp_path, capsys,
                                                                               mnist_dir):
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    run = RunDir(run_dir)
    run.summary.symlink_to(victim)
    code = simulate.main(["--num-clients", "4", "--run-config",
                                f"data-dir='{mnist_dir}' resume-from='{run_dir}'"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"run_simulation: resume-from = '{run_dir}' cannot be resumed: {run.summary} is a "
        f"symbolic link (to {victim}): nothing in a run directory is written through a link; replace it "
        "with a regular file or remove it\n")
    run.summary.unlink()
    run.tensorboard.mkdir()
    (run.tensorboard / "events").symlink_to(victim)
    with pytest.raises(CheckpointError, match=f"{run.tensorboard / 'events'} is a symbolic link"):
        load_checkpoint(run_dir)
    assert victim.read_text() == "precious"


def test_the_run_directory_itself_may_be_a_link(interrupted, tmp_path):
    """Links inside a run directory are refused, not a linked run directory or outputs folder."""
    (tmp_path / "linked").symlink_to(interrupted)
    assert load_checkpoint(tmp_path / "linked").round == 1


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def resume_argv(run_dir: Path, mnist_dir: str, extra: dict | None = None) -> list[str]:
    """run_simulation.py's arguments to resume the `interrupted` run in `run_dir`, with `extra` run-config."""
    overrides = {"data-dir": mnist_dir, "resume-from": str(run_dir)} | SMALL | CENTRAL_DP | (extra or {})
    return ["--num-clients", "4", "--run-config", " ".join(
        f"{k}={simulate.toml_value(v)}" for k, v in overrides.items())]


def test_checkpoint_every_cannot_change_on_resume_and_is_1_under_central_dp(interrupted, tmp_path, capsys,
                                                                            mnist_dir, default_run_config):
    """The attack: a resume with checkpoint-every = 0 wrote no checkpoint, so a second one
    went back to the old checkpoint and released its rounds again. Refused with one line
    before anything runs; the run directory is left as it was."""
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    before = files(run_dir)
    for every in (0, 2):
        code = simulate.main(resume_argv(run_dir, mnist_dir, {"checkpoint-every": every}))
        assert (code, capsys.readouterr().err) == (2, (
            f"run_simulation: Invalid run-config: checkpoint-every = {every} (allowed: 1 with dp-mode = 'central': "
            "each released round is checkpointed before it leaves the server, so a resumed run never computes "
            "a released round again)\n"))
        with pytest.raises(ConfigError, match=f"checkpoint-every = {every} .allowed: 1 with dp-mode = 'central'"):
            run_federation(default_run_config | SMALL | CENTRAL_DP | {"resume-from": str(run_dir),
                                                                      "checkpoint-every": every},
                           4, mnist_dir, tmp_path / "unused")
    assert files(run_dir) == before
    saved = AppConfig.from_run_config(default_run_config).to_run_config()
    with pytest.raises(ConfigError) as refused:  # without DP: as in the run being resumed
        check_resumable(saved, saved | {"checkpoint-every": 0})
    assert str(refused.value) == (
        "Invalid run-config: checkpoint-every = 0 (allowed: 1, as in the run being resumed; only resume-from, "
        "output-dir, data-dir, data-download, round-timeout, tensorboard, tracking, tracking-uri may change)")


def test_under_dp_released_history_is_append_only(interrupted, config, mnist_dir, tmp_path, caplog):
    """A central-DP run stopped during round 3's training, after round 2's row: its resume
    goes on with round 3 (round 2 is not released again) and ends as the uninterrupted run.
    The same directory with round 1's older checkpoint put back is refused, every file
    unchanged; so is resuming the finished run."""
    cfg = config | CENTRAL_DP
    full = run_federation(cfg, 4, mnist_dir, tmp_path / "full", node_seed=1)
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    run = RunDir(run_dir)
    old_checkpoint = run.checkpoint.read_bytes()  # of round 1
    with pytest.raises(Crash):
        run_federation(cfg | {"resume-from": str(run_dir)}, 4, mnist_dir, tmp_path / "unused",
                       crash_at=(3, "during-fit"))
    assert [r["round"] for r in run.read_history()] == [0, 1, 2] and load_checkpoint(run_dir).round == 2
    released = run.history.read_bytes()

    replay = shutil.copytree(run_dir, tmp_path / "replay")
    RunDir(replay).checkpoint.write_bytes(old_checkpoint)
    before = files(replay)
    message = (f"resume-from = '{replay}' cannot be resumed: its history.jsonl holds round 2, released after the "
               "checkpoint of round 1; under DP a released round is never computed again")
    with pytest.raises(CheckpointError) as refused:
        run_federation(cfg | {"resume-from": str(replay)}, 4, mnist_dir, tmp_path / "unused")
    assert str(refused.value) == message
    assert files(replay) == before

    caplog.set_level("INFO")
    resumed = run_federation(cfg | {"resume-from": str(run_dir)}, 4, mnist_dir, tmp_path / "unused")
    assert run.history.read_bytes().startswith(released)
    assert "Round 2 was released before the run stopped: going on with round 3" in caplog.text
    assert [r["round"] for r in resumed] == [0, 1, 2, 3] and comparable(resumed) == comparable(full)
    wf, wr = torch.load(RunDir(tmp_path / "full").model), torch.load(run.model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert run.read_summary()["privacy"]["rounds_accounted"] == 3

    finished = files(run_dir)
    with pytest.raises(CheckpointError) as refused:
        run_federation(cfg | {"resume-from": str(run_dir)}, 4, mnist_dir, tmp_path / "unused")
    assert str(refused.value) == (f"resume-from = '{run_dir}' cannot be resumed: the run finished (it wrote "
                                  "summary.json); start a new run instead")
    assert files(run_dir) == finished


def test_a_finished_run_is_never_resumed(tmp_path, capsys, mnist_dir):
    """With or without DP, whatever its checkpoint: one line, exit 2, nothing written."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config({})
    run.write_summary({"rounds": 3})
    code = simulate.main(["--num-clients", "4", "--run-config",
                                f"data-dir='{mnist_dir}' resume-from='{run.path}'"])
    assert (code, capsys.readouterr().err) == (2, (
        f"run_simulation: resume-from = '{run.path}' cannot be resumed: the run finished (it wrote summary.json); "
        "start a new run instead\n"))
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "summary.json"]


def test_a_run_directory_in_use_is_refused_to_a_second_writer(interrupted, config, tmp_path, capsys, mnist_dir):
    """While a writer holds the lock (here this process; the SIGKILL test has another),
    run_simulation.py refuses with one line and exit 2, and a ServerApp's prepare_run
    refuses before reading the checkpoint; a new run into a locked directory too."""
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    before = files(run_dir)
    lock = RunLock(run_dir)
    in_use = f"run directory {run_dir} is in use by another run (locked)"
    code = simulate.main(resume_argv(run_dir, mnist_dir))
    assert (code, capsys.readouterr().err) == (2, f"run_simulation: {in_use}\n")
    with pytest.raises(RunDirInUse) as refused:
        run_federation(config | CENTRAL_DP | {"resume-from": str(run_dir)}, 4, mnist_dir, tmp_path / "unused")
    assert str(refused.value) == in_use
    with pytest.raises(RunDirInUse):
        run_federation(config, 4, mnist_dir, run_dir)
    lock.release()
    assert files(run_dir) == before | {"run.lock": b""}
