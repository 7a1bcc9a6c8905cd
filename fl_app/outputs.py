"""The run directory: config.json, history.jsonl, summary.json, model.pt, curves.png,
checkpoint.npz (see `checkpoint`) and, with `tensorboard = true`, tensorboard/; with
`tracking = "mlflow"` the same figures and files also go to MLflow (see `tracking`).

Files are written whole to a temporary name (created new, `O_EXCL | O_NOFOLLOW`) and
renamed over their target; history.jsonl is appended to with `O_NOFOLLOW`. Nothing is
written through a symbolic link in a run directory: a link at a target or temporary
name is refused with `SymlinkError` (the run directory itself, or a folder above it,
may be a link).
"""

import errno
import io
import json
import math
import os
import time
from collections import OrderedDict
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import log

from fl_app.model import build_model
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


class SymlinkError(OSError):
    """A symbolic link where the app writes into a run directory."""


def symlink_message(path: Path) -> str:
    """Why the link at `path` stops a run, on one line."""
    return (f"{path} is a symbolic link (to {os.readlink(path)}): nothing in a run directory "
            "is written through a link; replace it with a regular file or remove it")


def find_symlink(run_dir: Path) -> Path | None:
    """The first symbolic link in `run_dir` or below it, if any."""
    for folder, subfolders, files in os.walk(run_dir):
        for name in sorted(subfolders + files):
            if os.path.islink(os.path.join(folder, name)):
                return Path(folder) / name
    return None


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise SymlinkError(symlink_message(path))


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666, durable: bool = False) -> None:
    """Write `data` to `path` through a new temporary file `.<name>.tmp` beside it and a
    rename, refusing a symbolic link at either name (a leftover regular temporary file
    is replaced). `durable`: the file and the directory are synced to disk first."""
    temporary = path.with_name(f".{path.name}.tmp")
    _refuse_symlink(path)
    _refuse_symlink(temporary)
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(temporary, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def append_text(path: Path, text: str) -> None:
    """Append `text` to the existing regular file `path`, never through a symbolic link."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SymlinkError(symlink_message(path)) from None
        raise
    with os.fdopen(descriptor, "a") as f:
        f.write(text)


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


def new_run_dir(output_dir: Path, run_id: int) -> Path:
    """Create `<output_dir>/<YYYYmmdd-HHMMSS>-run<run_id>` (suffixed if it exists)."""
    stem = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    for attempt in range(1000):
        path = output_dir / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a new run directory under {output_dir}")


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

    `resumed_rows` (from a checkpoint) continue a run in its existing directory:
    history.jsonl is cut back to them and the wall time carries on from `resumed_seconds`.

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
    ) -> None:
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.model = model
        self.rows: list[dict[str, Any]] = list(resumed_rows or [])
        self.started = time.perf_counter() - resumed_seconds
        self.resumed_rounds = len(self.rows)
        self.tracker = make_tracker(tracking, tracking_uri, run_dir.parent)  # first: a missing mlflow writes nothing
        if resumed_rows is None:
            write_atomically(run_dir / "config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        history = "".join(json.dumps(row) + "\n" for row in self.rows)
        write_atomically(run_dir / "history.jsonl", history.encode())
        clients = run_dir / "clients.jsonl"
        if resumed_rows is not None and clients.exists():  # cut back to the checkpoint's rounds
            last = self.rows[-1]["round"] if self.rows else -1
            kept = [line for line in clients.read_text().splitlines(keepends=True)
                    if json.loads(line)["round"] <= last]
            write_atomically(clients, "".join(kept).encode())
        self.writer = None
        if tensorboard:
            _refuse_symlink(run_dir / "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops what the interrupted one logged after its checkpoint
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=len(self.rows) or None)
        if self.tracker is not None:
            self.tracker.start(run_dir.name, config, self.rows)

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        """A run that stops with an error ends its MLflow run as FAILED."""
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
            self.save_model("model_best.pt", weights)
        append_text(self.run_dir / "history.jsonl", json.dumps(row) + "\n")
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

    def save_model(self, name: str, weights: list[np.ndarray]) -> None:
        """`weights` as the run model's state dict in `name` (loaded once to prove it fits)."""
        net = build_model(self.model)
        keys = list(net.state_dict().keys())
        state = OrderedDict((k, torch.from_numpy(np.array(w))) for k, w in zip(keys, weights))
        net.load_state_dict(state)
        model = io.BytesIO()
        torch.save(state, model)
        write_atomically(self.run_dir / name, model.getvalue())

    def record_clients(self, rows: list[dict[str, Any]]) -> None:
        """Append per-client figures of one round to clients.jsonl (created at the first)."""
        path, text = self.run_dir / "clients.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
        if not text:
            return
        if path.exists() or path.is_symlink():
            append_text(path, text)
        else:
            write_atomically(path, text.encode())

    def finish(self, weights: list[np.ndarray], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write model.pt, summary.json (with `extra`, e.g. the privacy statement) and
        curves.png (and send them to MLflow); return the summary."""
        self.save_model("model.pt", weights)
        summary = summarize(self.rows, time.perf_counter() - self.started)
        summary.update(extra or {})
        summary["run_dir"] = str(self.run_dir)
        write_atomically(self.run_dir / "summary.json",
                         (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        write_atomically(self.run_dir / "curves.png", plot_curves(self.rows))
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.finish(self.run_dir, summary)
        for line in summary_table(summary):
            log(INFO, "%s", line)
        return summary


def format_round(row: dict[str, Any], num_rounds: int) -> str:
    """`round 3/10 | test acc 98.95% loss 0.0342 | clients 10 | 61.2 s` (plus ε with DP;
    the sampled cohort's size where the number of replies is withheld)"""
    clients = row["num_fit_clients"] if row.get("num_fit_clients") is not None else row.get("cohort_size", 0)
    label = "clients" if row.get("num_fit_clients") is not None else "cohort"
    line = (
        f"round {row['round']}/{num_rounds} | test acc {100 * row['centralized_accuracy']:.2f}% "
        f"loss {row['centralized_loss']:.4f} | {label} {clients} | "
        f"{row['seconds']:.1f} s"
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


def plot_curves(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy and loss per round, centralized (test set) and federated (clients), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    rounds = [r["round"] for r in rows]

    def series(key: str, scale: float = 1.0) -> list[float]:
        values = [r.get(key) for r in rows]
        return [scale * v if v is not None and math.isfinite(v) else math.nan for v in values]

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    acc_ax.plot(rounds, series("centralized_accuracy", 100), "o-", label="centralized (test set)")
    acc_ax.plot(rounds, series("federated_accuracy", 100), "s--", label="federated (client validation)")
    acc_ax.set(xlabel="round", ylabel="accuracy (%)", title="Accuracy")
    loss_ax.plot(rounds, series("centralized_loss"), "o-", label="centralized (test set)")
    loss_ax.plot(rounds, series("federated_loss"), "s--", label="federated (client validation)")
    loss_ax.set(xlabel="round", ylabel="NLL loss", title="Loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    loss_ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()
