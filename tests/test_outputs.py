import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_app.assembly import prepare_run
from fl_app.checkpoint import Checkpoint, save_checkpoint
from fl_app.config import ConfigError
from fl_app.model import Net, seeded_net
from fl_app.outputs import HISTORY_FIELDS, MISSING_TENSORBOARD, RunRecorder, check_tensorboard
from fl_app.run_dir import RunDir, RunDirInUse, RunLock, SymlinkError, new_run_dir
from fl_app.task import get_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def row(r: int, acc: float) -> dict:
    return {"round": r, "centralized_loss": 1.0 / (r + 1), "centralized_accuracy": acc,
            "federated_loss": None if r == 0 else 0.5, "federated_accuracy": None if r == 0 else acc,
            "num_fit_clients": 0 if r == 0 else 3, "seconds": 1.5}


def test_run_directory_holds_every_output(tmp_path, caplog):
    run_dir = new_run_dir(tmp_path / "outs", run_id=123)
    assert run_dir.name.endswith("-run123")
    recorder = RunRecorder(run_dir, {"seed": 1}, num_rounds=2)
    for r, acc in enumerate([0.1, 0.8, 0.7]):
        recorder.record(row(r, acc))
    weights = get_weights(seeded_net(3))
    summary = recorder.finish(weights)

    run = RunDir(run_dir)
    assert run.read_config() == {"seed": 1}
    history = run.read_history()
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(set(HISTORY_FIELDS) <= set(h) for h in history)
    saved = run.read_summary()
    assert saved == summary
    assert (saved["rounds"], saved["final_accuracy"], saved["best_accuracy"], saved["best_round"]) == (2, 0.7, 0.8, 1)
    assert saved["wall_seconds"] >= 0
    net = Net()
    net.load_state_dict(torch.load(run.model))
    assert all((a == b).all() for a, b in zip(get_weights(net), weights, strict=True))
    png = run.curves.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "round 1/2 | test acc 80.00% loss 0.5000 | clients 3 | 1.5 s" in caplog.text
    assert str(run_dir) in caplog.text


def test_run_directories_never_collide(tmp_path):
    dirs = {new_run_dir(tmp_path, run_id=1) for _ in range(3)}
    assert len(dirs) == 3


def resumed_run_dir(path: Path) -> Path:
    """A run directory as an interrupted run leaves it: config.json and round 0's row."""
    path.mkdir()
    RunDir(path).write_config({"seed": 1})
    RunDir(path).write_history([row(0, 0.1)])
    return path


@pytest.mark.parametrize("name", ["summary.json", "model.pt", "curves.png", "history.jsonl", ".summary.json.tmp",
                                  ".model.pt.tmp", ".curves.png.tmp", ".history.jsonl.tmp", "tensorboard"])
def test_a_resumed_run_never_writes_through_a_link(tmp_path, name):
    """Each file a resumed run writes (and its temporary name) refuses a symbolic link:
    the link's target is left as it was."""
    run_dir = resumed_run_dir(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(victim)
    with pytest.raises(SymlinkError) as refused:
        recorder = RunRecorder(run_dir, {}, num_rounds=1, resumed_rows=[row(0, 0.1)],
                               tensorboard=name == "tensorboard")
        recorder.record(row(1, 0.5))
        recorder.finish(get_weights(seeded_net(3)))
    assert str(refused.value) == (f"{run_dir / name} is a symbolic link (to {victim}): nothing in a run "
                                  "directory is written through a link; replace it with a regular file or remove it")
    assert victim.read_text() == "precious" and (run_dir / name).is_symlink()


def test_appending_to_a_history_replaced_by_a_link_is_refused(tmp_path):
    run_dir = resumed_run_dir(tmp_path / "run")
    recorder = RunRecorder(run_dir, {}, num_rounds=2, resumed_rows=[row(0, 0.1)])
    victim = tmp_path / "victim"
    victim.write_text("precious")
    RunDir(run_dir).history.unlink()
    RunDir(run_dir).history.symlink_to(victim)
    with pytest.raises(SymlinkError, match="history.jsonl is a symbolic link"):
        recorder.record(row(1, 0.5))
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["checkpoint.npz", ".checkpoint.npz.tmp"])
def test_a_checkpoint_is_never_written_through_a_link(tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).symlink_to(victim)
    checkpoint = Checkpoint(round=1, weights=[], history=[], row={}, strategy={}, sampler={}, rng={},
                            config={}, wall_seconds=0.0, num_nodes=1)
    with pytest.raises(SymlinkError, match=f"{name} is a symbolic link"):
        save_checkpoint(tmp_path / "run", checkpoint)
    assert victim.read_text() == "precious"


def test_writes_replace_a_leftover_temporary_file_and_leave_none(tmp_path):
    run_dir = resumed_run_dir(tmp_path / "run")
    (run_dir / ".summary.json.tmp").write_text("left by a killed run")
    recorder = RunRecorder(run_dir, {}, num_rounds=1, resumed_rows=[row(0, 0.1)])
    recorder.record(row(1, 0.5))
    recorder.finish(get_weights(seeded_net(3)))
    assert sorted(os.listdir(run_dir)) == ["config.json", "curves.png", "history.jsonl", "model.pt", "run.lock",
                                           "summary.json"]
    assert RunDir(run_dir).read_summary()["rounds"] == 1


def test_a_run_directory_reached_through_a_link_is_written(tmp_path):
    """Only links inside a run directory are refused: the outputs folder may be a link."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "outputs").symlink_to(tmp_path / "disk")
    recorder = RunRecorder(new_run_dir(tmp_path / "outputs", run_id=1), {"seed": 1}, num_rounds=1)
    recorder.record(row(0, 0.1))
    recorder.record(row(1, 0.5))
    recorder.finish(get_weights(seeded_net(3)))
    (run_dir,) = (tmp_path / "disk").iterdir()
    assert RunDir(run_dir).read_summary()["final_accuracy"] == 0.5


def test_the_best_rounds_model_is_saved_beside_the_final_one(tmp_path):
    recorder = RunRecorder(tmp_path, {"seed": 1}, num_rounds=3)
    models = [get_weights(seeded_net(s)) for s in range(4)]
    for r, acc in enumerate([0.1, 0.8, 0.8, 0.7]):
        recorder.record(row(r, acc), models[r])
    summary = recorder.finish(models[3])
    best, final = Net(), Net()
    best.load_state_dict(torch.load(RunDir(tmp_path).best_model))
    final.load_state_dict(torch.load(RunDir(tmp_path).model))
    assert summary["best_round"] == 1  # the first of equally good rounds, as in summary.json
    assert all((a == b).all() for a, b in zip(get_weights(best), models[1], strict=True))
    assert all((a == b).all() for a, b in zip(get_weights(final), models[3], strict=True))


@pytest.mark.parametrize("dp, written", [({}, True), ({"dp-mode": "central", "dp-noise-multiplier": 1.0,
                                                        "dp-clients-per-round": 3}, False),
                                          ({"dp-mode": "central", "dp-noise-multiplier": 1.0,
                                            "dp-clients-per-round": 3, "dp-release-unprotected-metrics": True}, True)])
def test_clients_jsonl_holds_each_clients_figures_where_the_release_policy_allows(
        tmp_path, mnist_dir, default_run_config, dp, written):
    from fl_app.in_process import run_federation

    config = default_run_config | {"data-dir": mnist_dir, "samples-per-client": 100, "num-server-rounds": 2,
                                   "local-epochs": 1, "eval-samples": 300, "min-available-clients": 3} | dp
    run_federation(config, 3, mnist_dir, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert run.clients.exists() == written
    if not written:
        return
    rows = run.read_clients()
    train = [r for r in rows if r["phase"] == "train"]
    assert [(r["round"], r["client"]) for r in train] == [
        (rnd, f"partition-{k:06d}") for rnd in (1, 2) for k in range(3)]
    assert all(r["num_examples"] == 90 and 0 <= r["train_accuracy"] <= 1 and r["train_loss"] > 0 for r in train)
    if not dp:
        evaluate = [r for r in rows if r["phase"] == "evaluate"]
        assert len(evaluate) == 6 and all(r["num_examples"] == 10 and 0 <= r["accuracy"] <= 1 for r in evaluate)


def test_a_run_directory_and_its_files_are_the_operators_alone(tmp_path):
    """Run directories 0700 (the TensorBoard folder too), every file the run writes 0600."""
    run_dir = new_run_dir(tmp_path / "outputs", run_id=1)
    with RunRecorder(run_dir, {"seed": 1}, num_rounds=1, tensorboard=True) as recorder:
        recorder.record(row(0, 0.1), get_weights(seeded_net(1)))
        recorder.record(row(1, 0.5), get_weights(seeded_net(2)))
        recorder.record_clients([{"round": 1, "phase": "train", "client": "a", "num_examples": 3}])
        recorder.finish(get_weights(seeded_net(3)))
    run = RunDir(run_dir)
    assert run_dir.stat().st_mode & 0o777 == 0o700 and run.tensorboard.stat().st_mode & 0o777 == 0o700
    files = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir() if p.is_file()}
    assert files == dict.fromkeys(["config.json", "history.jsonl", "clients.jsonl", "model.pt", "model_best.pt",
                                   "summary.json", "curves.png", "run.lock"], 0o600)


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path):
    """The lock is per open file, so a second writer in this process is refused as one in
    another process would be; it writes nothing, and the first writer's exit lets the next in."""
    run_dir = resumed_run_dir(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with RunRecorder(run_dir, {}, num_rounds=2, resumed_rows=[row(0, 0.1)], append_only=True):
        with pytest.raises(RunDirInUse) as refused:
            RunRecorder(run_dir, {}, num_rounds=2)
        assert str(refused.value) == f"run directory {run_dir} is in use by another run (locked)"
        with pytest.raises(RunDirInUse):
            RunLock(run_dir)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before | {"run.lock": b""}
    RunLock(run_dir).release()


def test_another_process_is_refused_while_a_writer_holds_the_lock(tmp_path):
    run_dir = resumed_run_dir(tmp_path / "run")
    lock = RunLock(run_dir)
    code = f"from pathlib import Path; from fl_app.run_dir import RunLock; RunLock(Path({str(run_dir)!r}))"
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        f"fl_app.run_dir.RunDirInUse: run directory {run_dir} is in use by another run (locked)")
    lock.release()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_tensorboard_chosen_but_missing_is_one_line(tmp_path, monkeypatch, default_run_config):
    """Without the optional dependency, `tensorboard = true` stops the run before any work
    (no output folder, no MNIST, no run directory) with one line saying what to install."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails as if not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    check_tensorboard(False)
    with pytest.raises(ConfigError) as err:
        check_tensorboard(True)
    assert str(err.value) == MISSING_TENSORBOARD
    assert MISSING_TENSORBOARD == "tensorboard = true needs the optional dependency: pip install '.[tensorboard]'"
    with pytest.raises(ConfigError, match="^tensorboard = true needs"):
        prepare_run(default_run_config | {"tensorboard": True, "output-dir": str(tmp_path / "outputs"),
                                          "data-dir": str(tmp_path / "data"), "data-download": False})
    with pytest.raises(ConfigError, match="^tensorboard = true needs"):
        RunRecorder(tmp_path / "run", {"seed": 1}, 1, tensorboard=True)
    assert not list(tmp_path.iterdir())  # refused before any file
