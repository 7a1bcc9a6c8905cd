"""Experiment tracking with MLflow (`tracking = "mlflow"`, the optional dependency
`pip install '.[mlflow]'`): one MLflow run per run directory with the resolved config as
params, every numeric history field as a metric per round (step = round), the summary's
figures as metrics and the run directory's files (not its checkpoint) as artifacts.

`RunRecorder` drives it, so MLflow receives exactly what the run directory holds: under
DP only what the release policy lets out. mlflow is imported only when chosen.
"""

import json
import math
import os
import time
from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from flwr.common import log

from fl_app.config import ConfigError
from fl_app.run_dir import RunDir

MISSING_MLFLOW = "tracking = 'mlflow' needs the optional dependency: pip install '.[mlflow]'"
EXPERIMENT = "fl-app"  # unless MLFLOW_EXPERIMENT_NAME names another
MAX_PARAMS, MAX_METRICS = 100, 1000  # per log_batch call (MLflow's limits)


def mlflow_client_class() -> type:
    """MLflow's `MlflowClient`, imported on first use; `ConfigError` when mlflow is missing."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(MISSING_MLFLOW) from None
    return MlflowClient


def check_tracking(tracking: str) -> None:
    """Refuse a tracking backend whose optional dependency is not installed."""
    if tracking == "mlflow":
        mlflow_client_class()


def default_uri(output_dir: Path) -> str:
    """The local file store `<output-dir>/mlruns`."""
    return (output_dir.resolve() / "mlruns").as_uri()


def numeric(value: Any) -> bool:
    """A finite int or float (not a bool): what MLflow gets as a metric."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class MlflowTracker:
    """One run directory as one MLflow run, logged through `MlflowClient` (no global
    MLflow state): `start`, `log_row` per round, then `finish` or `end("FAILED")`."""

    def __init__(self, tracking_uri: str) -> None:
        client_class = mlflow_client_class()
        if urlparse(tracking_uri).scheme in ("", "file"):
            # MLflow 3 keeps local file stores behind an opt-in (it prefers databases)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client_class(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None

    def start(self, run_name: str, config: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
        """Create the run with `config` as params and `rows` (a resumed run's history
        so far) as metrics."""
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(key, value if isinstance(value, str) else json.dumps(value))
                  for key, value in sorted(config.items())]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS])
        self._log_metrics([m for row in rows for m in self._metrics(row, row["round"])])
        log(INFO, "MLflow tracking: run '%s' (%s) in experiment '%s' at %s",
            run_name, self.run_id, name, self.tracking_uri)

    def log_row(self, row: dict[str, Any]) -> None:
        """One history row's numeric fields as metrics at step = its round."""
        self._log_metrics(self._metrics(row, row["round"]))

    def finish(self, run_dir: RunDir, summary: dict[str, Any]) -> None:
        """Log the summary's figures (the privacy object's as `privacy_<name>`) and the run
        directory's files but its checkpoint (the operator's alone: the exact training
        state) and its lock, then end the run as FINISHED."""
        figures = dict(summary) | {f"privacy_{k}": v for k, v in (summary.get("privacy") or {}).items()}
        self._log_metrics(self._metrics(figures, 0))
        for folder, _, files in os.walk(run_dir.path):  # does not descend into linked folders
            relative = Path(folder).relative_to(run_dir.path).as_posix()
            for name in sorted(files):
                path = Path(folder) / name
                if name.startswith(".") or path.is_symlink() or path in (run_dir.checkpoint, run_dir.lock):
                    continue
                self.client.log_artifact(self.run_id, str(path), None if relative == "." else relative)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """End the run with `status` ("FINISHED" or "FAILED"), once."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None

    @staticmethod
    def _metrics(figures: dict[str, Any], step: int) -> list:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        return [Metric(key, float(value), timestamp, step)
                for key, value in figures.items() if key != "round" and numeric(value)]

    def _log_metrics(self, metrics: list) -> None:
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS])


def make_tracker(tracking: str, tracking_uri: str, output_dir: Path) -> MlflowTracker | None:
    """The tracker `tracking` names ("none": None); an empty `tracking_uri` means the
    file store `<output_dir>/mlruns`."""
    if tracking == "none":
        return None
    return MlflowTracker(tracking_uri or default_uri(output_dir))
