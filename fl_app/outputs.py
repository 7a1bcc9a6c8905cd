"""The run directory: config.json, history.jsonl, summary.json, model.pt, curves.png."""

import json
import math
import time
from collections import OrderedDict
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import log

from fl_app.model import Net

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


class RunRecorder:
    """Writes one run's directory as the run goes: a row per round, files at the end."""

    def __init__(self, run_dir: Path, config: dict[str, Any], num_rounds: int) -> None:
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (run_dir / "history.jsonl").write_text("")

    def record(self, row: dict[str, Any]) -> None:
        """Append one round's row to history.jsonl and log it on one line."""
        self.rows.append(row)
        with open(self.run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(INFO, "%s", format_round(row, self.num_rounds))

    def finish(self, weights: list[np.ndarray], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write model.pt, summary.json (with `extra`, e.g. the privacy statement) and
        curves.png; return the summary."""
        net = Net()
        keys = list(net.state_dict().keys())
        state = OrderedDict((k, torch.from_numpy(np.array(w))) for k, w in zip(keys, weights))
        net.load_state_dict(state)  # proves the file will load into Net
        torch.save(state, self.run_dir / "model.pt")
        summary = summarize(self.rows, time.perf_counter() - self.started)
        summary.update(extra or {})
        summary["run_dir"] = str(self.run_dir)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(self.rows, self.run_dir / "curves.png")
        log(INFO, "Run finished: %s rounds, final accuracy %.2f%%, outputs in %s",
            summary["rounds"], 100 * summary["final_accuracy"], self.run_dir)
        return summary


def format_round(row: dict[str, Any], num_rounds: int) -> str:
    """`round 3/10 | test acc 98.95% loss 0.0342 | clients 10 | 61.2 s` (plus ε with DP)"""
    line = (
        f"round {row['round']}/{num_rounds} | test acc {100 * row['centralized_accuracy']:.2f}% "
        f"loss {row['centralized_loss']:.4f} | clients {row['num_fit_clients']} | "
        f"{row['seconds']:.1f} s"
    )
    if "epsilon" in row:
        line += f" | epsilon {row['epsilon']:.3f}"
    if "client_epsilon_max" in row:
        line += f" | client epsilon max {row['client_epsilon_max']:.3f} mean {row['client_epsilon_mean']:.3f}"
    return line


def summarize(rows: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """Final and best centralized accuracy over the recorded rounds."""
    best = max(rows, key=lambda r: r["centralized_accuracy"])
    return {
        "rounds": rows[-1]["round"],
        "final_accuracy": rows[-1]["centralized_accuracy"],
        "final_loss": rows[-1]["centralized_loss"],
        "best_accuracy": best["centralized_accuracy"],
        "best_round": best["round"],
        "wall_seconds": wall_seconds,
    }


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy and loss per round, centralized (test set) and federated (clients)."""
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
