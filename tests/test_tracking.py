"""`tracking = "mlflow"`: the run directory's config, history and files in an MLflow
file store, read back with MLflow's client (offline)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fl_app.config import AppConfig, ConfigError
from fl_app.model import seeded_net
from fl_app.outputs import RunRecorder
from fl_app.run_dir import RunDir
from fl_app.task import get_weights
from fl_app.tracking import MISSING_MLFLOW, check_tracking

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A `file:` URI under tmp_path; MLflow's telemetry off, its file-store opt-in unset
    (the app sets it) and restored after the test."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return (tmp_path / "mlruns").as_uri()


def runs(uri: str) -> list:
    """The runs of experiment `fl-app` in the store at `uri`, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fl-app")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)


def row(r: int, acc: float) -> dict:
    return {"round": r, "centralized_loss": 1.0 / (r + 1), "centralized_accuracy": acc,
            "federated_loss": None, "federated_accuracy": None, "num_fit_clients": 2, "seconds": 0.5}


def test_a_federation_logs_config_history_and_files(tmp_path, store, mnist_dir, default_run_config):
    from mlflow.tracking import MlflowClient

    from fl_app.in_process import run_federation

    config = default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 100, "num-server-rounds": 2, "eval-samples": 300,
        "local-epochs": 1, "tracking": "mlflow", "tracking-uri": store,
    }
    run_dir = tmp_path / "run"
    history = run_federation(config, 2, mnist_dir, run_dir)

    (run,) = runs(store)
    client = MlflowClient(tracking_uri=store)
    assert (run.info.run_name, run.info.status) == ("run", "FINISHED")
    resolved = AppConfig.from_run_config(config).to_run_config() | {  # as the ServerApp resolves them
        "data-dir": str(Path(mnist_dir).resolve()), "output-dir": str(run_dir.parent.resolve())}
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in resolved.items()}
    accuracy = client.get_metric_history(run.info.run_id, "centralized_accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(r["round"], r["centralized_accuracy"]) for r in history]
    assert [r["round"] for r in history] == [0, 1, 2]
    numeric = {k for r in history for k, v in r.items()
               if k != "round" and isinstance(v, int | float) and math.isfinite(v)}
    summary = RunDir(run_dir).read_summary()
    assert set(run.data.metrics) == numeric | {"rounds", "final_accuracy", "final_loss", "best_accuracy",
                                               "best_round", "wall_seconds", "num_nodes"}
    assert run.data.metrics["final_accuracy"] == summary["final_accuracy"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.jsonl", "summary.json", "model.pt", "model_best.pt", "curves.png",
            "clients.jsonl"} == artifacts
    assert RunDir(run_dir).checkpoint.exists()  # kept out of MLflow: the exact training state


def test_a_failed_run_ends_failed_and_a_resumed_run_logs_the_whole_history(tmp_path, store):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorder = RunRecorder(run_dir, {"seed": 1}, 3, tracking="mlflow", tracking_uri=store)
    with pytest.raises(RuntimeError), recorder as rec:
        rec.record(row(0, 0.1))
        rec.record(row(1, 0.5))
        raise RuntimeError("a client crashed the server")
    (tmp_path / "secret").write_text("not the run's")
    (run_dir / "notes.txt").symlink_to(tmp_path / "secret")
    resumed = RunRecorder(run_dir, {"seed": 1}, 3, tensorboard=True, tracking="mlflow", tracking_uri=store,
                          resumed_rows=[row(0, 0.1)])
    with resumed:
        resumed.record(row(1, 0.6))
        resumed.finish(get_weights(seeded_net(3)))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    failed, finished = runs(store)
    assert (failed.info.status, finished.info.status) == ("FAILED", "FINISHED")
    assert failed.info.run_name == finished.info.run_name == "run"
    history = [(m.step, m.value) for m in client.get_metric_history(finished.info.run_id, "centralized_accuracy")]
    assert history == [(0, 0.1), (1, 0.6)]
    assert "federated_accuracy" not in finished.data.metrics  # None is not a metric
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id)}
    assert artifacts == {"config.json", "history.jsonl", "summary.json", "model.pt", "curves.png", "tensorboard"}
    assert client.list_artifacts(finished.info.run_id, "tensorboard")  # folders with their files; no links


def test_the_default_store_is_mlruns_beside_the_run_directories(tmp_path, store):
    run_dir = tmp_path / "outputs" / "run1"
    run_dir.mkdir(parents=True)
    RunRecorder(run_dir, {"seed": 1}, 1, tracking="mlflow").tracker.end("FINISHED")
    (run,) = runs((tmp_path / "outputs" / "mlruns").as_uri())
    assert run.info.run_name == "run1"


@pytest.mark.parametrize("key, value, allowed", [
    ("tracking", "wandb", "one of 'none', 'mlflow'"),
    ("tracking-uri", None, "a string (empty: none)"),
])
def test_tracking_keys_are_checked(default_run_config, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(default_run_config | {key: value})
    assert str(err.value) == f"Invalid run-config: {key} = {value!r} (allowed: {allowed})"


def test_mlflow_chosen_but_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    check_tracking("none")
    with pytest.raises(ConfigError) as err:
        check_tracking("mlflow")
    assert str(err.value) == MISSING_MLFLOW
    assert MISSING_MLFLOW == "tracking = 'mlflow' needs the optional dependency: pip install '.[mlflow]'"
    with pytest.raises(ConfigError, match="optional dependency"):
        RunRecorder(tmp_path, {"seed": 1}, 1, tracking="mlflow")
    assert not list(tmp_path.iterdir())  # refused before any file


def test_mlflow_is_imported_only_when_chosen():
    code = "import sys, fl_app.server_app, fl_app.in_process; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
