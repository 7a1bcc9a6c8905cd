"""Recording a run as it goes into its run directory (`run_dir`): a history row per
round, the models, the summary and the curves, and with `tensorboard = true` TensorBoard
scalars (the optional dependency `pip install '.[tensorboard]'`, imported only when chosen);
with `tracking = "mlflow"` the same figures and files also go to MLflow (see
`tracking`). The per-round log line and the end-of-run summary table.
"""

import io
import math
import os
import time
from collections import OrderedDict
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import log

from fl_app.config import ConfigError
from fl_app.model import build_model
from fl_app.report import plot_curves
from fl_app.run_dir import RunDir, RunLock, refuse_symlink, write_atomically
from fl_app.tracking import make_tracker

HISTORY_FIELDS = (
    "round",
    "centralized_loss",
    "centralized_accuracy",
    "federated_loss",
    "federated_accuracy",
    "num_fit_clients",
    "seconds",
)


def resolve_output_dir(output_dir: str) -> Path:
    """`output-dir` as an absolute path (relative paths: against the working directory
    of the process running the ServerApp)."""
    return Path(output_dir).expanduser().resolve()


def output_dir_problem(output_dir: Path) -> str | None:
    """Why run directories cannot be written under `output_dir` (it cannot be created or
    written to), or None; checked before anything starts."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".fl-app-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"not writable: {err.strerror or err}"
    return None


MISSING_TENSORBOARD = "tensorboard = true needs the optional dependency: pip install '.[tensorboard]'"


def summary_writer_class() -> type:
    """TensorBoard's `SummaryWriter`, imported on first use; `ConfigError` when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(MISSING_TENSORBOARD) from None
    return SummaryWriter


def check_tensorboard(tensorboard: bool) -> None:
    """Refuse `tensorboard = true` when its optional dependency is not installed."""
    if tensorboard:
        summary_writer_class()


TENSORBOARD_SCALARS = {  # history field -> TensorBoard tag
    "centralized_accuracy": "accuracy/centralized",
    "centralized_loss": "loss/centralized",
    "federated_accuracy": "accuracy/federated",
    "federated_loss": "loss/federated",
    "epsilon": "privacy/epsilon",
    "clip_fraction": "privacy/clip_fraction",
    "clipping_norm": "privacy/clipping_norm",
    "num_fit_clients": "clients/cohort_size",
    "num_fit_failures": "clients/failures",
    "seconds": "time/round_seconds",
}


class RunRecorder:
    """Writes one run's directory as the run goes: a row per round, files at the end.

    It holds the directory's writer lock from its creation until it exits (as a context
    manager) or its process ends: `lock`, taken by the caller before it read anything
    there (`fl_app.assembly.prepare_run`), or else taken here before anything is written;
    `RunDirInUse` while another writer holds it.

    `resumed_rows` (see `fl_app.checkpoint.resumed_history`) continue a run in its
    existing directory and the wall time carries on from `resumed_seconds`; history.jsonl
    and clients.jsonl are cut back to those rounds, unless `append_only` (DP: released
    rows are never cut, and history.jsonl holds exactly `resumed_rows`).

    `tracking = "mlflow"` logs the run to MLflow at `tracking_uri` (empty: the file store
    `<run dir's parent>/mlruns`); a resumed run is a new MLflow run of the same name
    that logs the resumed rows again, so it holds the whole history. Used as a context
    manager, a run that stops with an error ends its MLflow run as FAILED.
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        num_rounds: int,
        *,
        tensorboard: bool = False,
        tracking: str = "none",
        tracking_uri: str = "",
        model: str = "cnn",
        resumed_rows: list[dict[str, Any]] | None = None,
        resumed_seconds: float = 0.0,
        append_only: bool = False,
        lock: RunLock | None = None,
    ) -> None:
        self.run_dir = RunDir(run_dir)
        self.num_rounds = num_rounds
        self.model = model
        self.rows: list[dict[str, Any]] = list(resumed_rows or [])
        self.started = time.perf_counter() - resumed_seconds
        self.resumed_rounds = len(self.rows)
        writer_class = summary_writer_class() if tensorboard else None  # first: a missing tensorboard
        self.tracker = make_tracker(tracking, tracking_uri, run_dir.parent)  # or mlflow writes nothing
        self.lock = lock or RunLock(run_dir)
        try:
            self._open(config, writer_class, resumed=resumed_rows is not None, append_only=append_only)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, config: dict[str, Any], writer_class: Any, *, resumed: bool, append_only: bool) -> None:
        """config.json and an empty history.jsonl for a new run; for a resumed one, its
        files cut back to the resumed rows unless `append_only`; the TensorBoard writer
        (`writer_class`, None without TensorBoard) and the MLflow run."""
        if not resumed:
            self.run_dir.write_config(config)
            self.run_dir.write_history([])
        elif not append_only:  # cut back to the checkpoint's rounds
            self.run_dir.write_history(self.rows)
            if self.run_dir.clients.exists():
                last = self.rows[-1]["round"] if self.rows else -1
                self.run_dir.write_clients([r for r in self.run_dir.read_clients() if r["round"] <= last])
        self.writer = None
        if writer_class is not None:
            refuse_symlink(self.run_dir.tensorboard)
            self.run_dir.tensorboard.mkdir(mode=0o700, exist_ok=True)
            # a resumed run drops what the interrupted one logged after its last recorded round
            self.writer = writer_class(str(self.run_dir.tensorboard), purge_step=len(self.rows) or None)
        if self.tracker is not None:
            self.tracker.start(self.run_dir.path.name, config, self.rows)

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        """A run that stops with an error ends its MLflow run as FAILED; the lock is released."""
        self.lock.release()
        if exc_type is not None and self.tracker is not None:
            self.tracker.end("FAILED")

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def record(self, row: dict[str, Any], weights: list[np.ndarray] | None = None) -> None:
        """Append one round's row to history.jsonl (and TensorBoard) and log it on one
        line with the estimated time to the end; `weights`, the round's model, become
        model_best.pt when its centralized accuracy beats every earlier round's."""
        best = max((r["centralized_accuracy"] for r in self.rows), default=-math.inf)
        self.rows.append(row)
        if weights is not None and row["centralized_accuracy"] > best:
            self.save_model(self.run_dir.best_model, weights)
        self.run_dir.append_history(row)
        if self.writer is not None:
            for field, tag in TENSORBOARD_SCALARS.items():
                value = row.get(field)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(tag, value, global_step=row["round"])
            self.writer.flush()
        if self.tracker is not None:
            self.tracker.log_row(row)
        log(INFO, "%s", format_round(row, self.num_rounds) + self.eta(row["round"]))

    def eta(self, server_round: int) -> str:
        """` | ETA 2m05s` from the mean duration of this process's rounds so far."""
        timed = [r["seconds"] for r in self.rows[self.resumed_rounds:] if r["round"] > 0]
        remaining = self.num_rounds - server_round
        if not timed or remaining <= 0:
            return ""
        return f" | ETA {format_duration(remaining * sum(timed) / len(timed))}"

    def save_model(self, path: Path, weights: list[np.ndarray]) -> None:
        """`weights` as the run model's state dict in `path` (loaded once to prove it fits)."""
        net = build_model(self.model)
        keys = list(net.state_dict().keys())
        state = OrderedDict((k, torch.from_numpy(np.array(w))) for k, w in zip(keys, weights, strict=True))
        net.load_state_dict(state)
        model = io.BytesIO()
        torch.save(state, model)
        write_atomically(path, model.getvalue())

    def record_clients(self, rows: list[dict[str, Any]]) -> None:
        """Append per-client figures of one round to clients.jsonl (created at the first)."""
        self.run_dir.append_clients(rows)

    def finish(self, weights: list[np.ndarray], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write model.pt, summary.json (with `extra`, e.g. the privacy statement) and
        curves.png (and send them to MLflow); return the summary."""
        self.save_model(self.run_dir.model, weights)
        summary = summarize(self.rows, time.perf_counter() - self.started)
        summary.update(extra or {})
        summary["run_dir"] = str(self.run_dir.path)
        self.run_dir.write_summary(summary)
        write_atomically(self.run_dir.curves, plot_curves(self.rows))
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.finish(self.run_dir, summary)
        for line in summary_table(summary):
            log(INFO, "%s", line)
        return summary


def format_round(row: dict[str, Any], num_rounds: int) -> str:
    """`round 3/10 | test acc 98.95% loss 0.0342 | clients 10 | 61.2 s` (plus ε with DP;
    no client count where the number of replies is withheld)"""
    clients = f"clients {row['num_fit_clients']} | " if row.get("num_fit_clients") is not None else ""
    line = (
        f"round {row['round']}/{num_rounds} | test acc {100 * row['centralized_accuracy']:.2f}% "
        f"loss {row['centralized_loss']:.4f} | {clients}{row['seconds']:.1f} s"
    )
    if "epsilon" in row:
        line += f" | epsilon {row['epsilon']:.3f}"
    if "client_epsilon_max" in row:
        line += f" | client epsilon max {row['client_epsilon_max']:.3f} mean {row['client_epsilon_mean']:.3f}"
    return line


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The end-of-run table: accuracy, privacy, wall time, outputs."""
    rows = [
        ("rounds", str(summary["rounds"])),
        ("final accuracy", f"{100 * summary['final_accuracy']:.2f}% (best {100 * summary['best_accuracy']:.2f}%"
                           f" in round {summary['best_round']})"),
        ("final loss", f"{summary['final_loss']:.4f}"),
    ]
    if summary.get("privacy"):
        rows.append(("privacy", summary["privacy"]["statement"]))
        if "statement_against_server" in summary["privacy"]:  # distributed DP: the second guarantee
            rows.append(("vs the server", summary["privacy"]["statement_against_server"]))
        if "statement_against_sampled_clients" in summary["privacy"]:  # central DP with SecAgg+
            rows.append(("vs sampled clients", summary["privacy"]["statement_against_sampled_clients"]))
    if "stopped_early" in summary:
        rows.append(("stopped early", str(summary["stopped_early"])))
    rows += [("wall time", format_duration(summary["wall_seconds"])), ("outputs", summary["run_dir"])]
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    return ["Run summary", rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule]


def summarize(rows: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """Final and best centralized accuracy over the recorded rounds (`privacy` is added
    by the server: the DP statement, or None)."""
    best = max(rows, key=lambda r: r["centralized_accuracy"])
    return {
        "rounds": rows[-1]["round"],
        "final_accuracy": rows[-1]["centralized_accuracy"],
        "final_loss": rows[-1]["centralized_loss"],
        "best_accuracy": best["centralized_accuracy"],
        "best_round": best["round"],
        "wall_seconds": wall_seconds,
    }
