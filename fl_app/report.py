"""Plots of one or more finished (or running) runs, for reports and comparisons.

    python -m fl_app.report outputs/20261126-101500-run123 [outputs/...-run456 ...] [--out DIR]

writes into DIR (default: `<first run dir>/report`):

- accuracy.png  test-set (centralized) accuracy per round, one line per run; federated
                (client validation) accuracy dashed where measured;
- loss.png      the same for the loss (log scale);
- epsilon.png   ε spent per round for DP runs (central: client-level; local: the
                largest client's sample-level ε), each labelled with its run's privacy
                statement from summary.json, which is also printed;
- clients.png   clients whose update was aggregated per round, and failures (under DP,
                where those counts are withheld: the sampled cohort's size);
- label_distribution.png  labels per client of the first run's MNIST partitioning
                (flwr-datasets' plot), when the run carved MNIST into partitions and
                MNIST is in its data-dir on this machine.

`plot_curves` draws the same accuracy and loss curves for a single run: the curves.png
that every run writes at its end. matplotlib is imported when a plot is drawn.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fl_app.run_dir import RunDir

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Runs = dict[str, list[dict[str, Any]]]  # run name -> history rows
METRICS = (("accuracy", "accuracy (%)", 100.0, False), ("loss", "NLL loss", 1.0, True))  # name, label, scale, log
EPSILON_FIELDS = ("epsilon", "client_epsilon_max")  # central DP, local DP (largest client)


class NotARunError(ValueError):
    """A directory that is not a run directory."""


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(config, history rows, summary or {}) of a run directory."""
    if not run_dir.is_dir():
        raise NotARunError(f"'{run_dir}' is not a directory")
    run = RunDir(run_dir)
    missing = [path.name for path in (run.config, run.history) if not path.is_file()]
    if missing:
        raise NotARunError(f"'{run_dir}' is not a run directory (no {' or '.join(missing)}); "
                           "give the directories that runs write under output-dir")
    rows = run.read_history()
    if not rows:
        raise NotARunError(f"'{run_dir}' has no recorded round yet")
    return run.read_config(), rows, run.read_summary() if run.summary.is_file() else {}


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(rounds, `scale` × values) of the rows whose `key` is a finite number."""
    points = [(r["round"], r.get(key)) for r in rows]
    kept = [(x, scale * y) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _style(ax: Axes, title: str, ylabel: str, legend_below: bool = False) -> None:
    """Labels, whole rounds on the x axis, a light grid and the legend."""
    from matplotlib.ticker import MaxNLocator

    ax.set(xlabel="round", ylabel=ylabel, title=title)
    if isinstance(locator := ax.xaxis.get_major_locator(), MaxNLocator):  # a linear axis' AutoLocator
        locator.set_params(integer=True)
    ax.grid(alpha=0.3)
    if legend_below:  # long labels (privacy statements) under the axes, not over the lines
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.15), frameon=False)
    else:
        ax.legend(fontsize="small")


def _save(fig: Figure, target: Path | io.BytesIO, dpi: int) -> None:
    """`fig` as a PNG into `target`, then closed."""
    fig.tight_layout()
    fig.savefig(target, format="png", dpi=dpi)
    _pyplot().close(fig)


def _draw_metric(ax: Axes, runs: Runs, metric: str, ylabel: str, scale: float, log_scale: bool) -> None:
    """`metric` per round on `ax`: centralized solid, federated dashed, a colour per (named) run."""
    from matplotlib.ticker import LogFormatter

    for i, (name, rows) in enumerate(runs.items()):
        colour, prefix = f"C{i % 10}", f"{name}: " if name else ""
        ax.plot(*_series(rows, f"centralized_{metric}", scale), "o-", color=colour, ms=3,
                label=f"{prefix}test set")
        federated = _series(rows, f"federated_{metric}", scale)
        if federated[0]:
            ax.plot(*federated, "s--", color=colour, ms=3, alpha=0.7, label=f"{prefix}client validation")
    if log_scale:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    _style(ax, f"{metric.capitalize()} per round", ylabel)


def plot_curves(rows: list[dict[str, Any]]) -> bytes:
    """One run's accuracy and loss per round, side by side, as PNG (the run's curves.png)."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, METRICS, strict=True):
        _draw_metric(ax, {"": rows}, *metric)
    png = io.BytesIO()
    _save(fig, png, dpi=100)
    return png.getvalue()


def plot_metric(runs: Runs, out: Path, metric: str, ylabel: str, scale: float, log_scale: bool) -> Path:
    """`metric` per round of every run into `<out>/<metric>.png`."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    _draw_metric(ax, runs, metric, ylabel, scale, log_scale)
    path = out / f"{metric}.png"
    _save(fig, path, dpi=110)
    return path


def privacy_statement(summary: dict[str, Any]) -> str | None:
    """The run's one-line privacy statement from summary.json, if it has one."""
    privacy = summary.get("privacy")
    return privacy.get("statement") if isinstance(privacy, dict) else None


def plot_epsilon(runs: Runs, summaries: dict[str, dict], out: Path) -> Path | None:
    """ε per round for DP runs, each labelled with its privacy statement (printed too);
    None when no run has one."""
    dp_runs = {}
    for name, rows in runs.items():
        field = next((f for f in EPSILON_FIELDS if _series(rows, f)[0]), None)
        if field is not None:
            dp_runs[name] = (rows, field)
    if not dp_runs:
        return None
    fig, ax = _pyplot().subplots(figsize=(9, 4.5 + 0.45 * len(dp_runs)))
    for name, (rows, field) in dp_runs.items():
        statement = privacy_statement(summaries[name])
        if statement:
            print(f"{name}: {statement}")
        label = f"{name}\n{statement}" if statement else name
        ax.plot(*_series(rows, field), "o-", ms=3, label=label)
    _style(ax, "Privacy spent", "ε", legend_below=True)
    path = out / "epsilon.png"
    _save(fig, path, dpi=110)
    return path


def plot_clients(runs: Runs, out: Path) -> Path:
    """Clients aggregated per round (solid) and failed (dotted)."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for i, (name, rows) in enumerate(runs.items()):
        trained = [r for r in rows if r["round"] > 0]
        aggregated = _series(trained, "num_fit_clients")
        if aggregated[0]:
            ax.plot(*aggregated, "o-", color=f"C{i % 10}", ms=3, label=f"{name}: aggregated")
        else:
            ax.plot(*_series(trained, "cohort_size"), "o-", color=f"C{i % 10}", ms=3,
                    label=f"{name}: sampled (DP)")
        failures = _series(trained, "num_fit_failures")
        if any(failures[1]):
            ax.plot(*failures, "x:", color=f"C{i % 10}", label=f"{name}: failed")
    _style(ax, "Clients per round", "clients")
    path = out / "clients.png"
    _save(fig, path, dpi=110)
    return path


def plot_label_distribution(config: dict[str, Any], summary: dict[str, Any], out: Path) -> Path | None:
    """flwr-datasets' per-partition label plot of the run's MNIST partitioning, or None
    (with the reason printed) when it cannot be rebuilt here."""
    from data.mnist import load_mnist, missing_files

    path = out / "label_distribution.png"
    num_nodes = summary.get("num_nodes")
    if not num_nodes:
        print(f"{path.name} skipped: the run has no summary with its number of clients")
        return None
    if missing_files(config["data-dir"]):
        print(f"{path.name} skipped: MNIST not found in the run's data-dir {config['data-dir']}")
        return None
    _pyplot()  # the Agg backend, before flwr-datasets imports pyplot
    from flwr_datasets.visualization import plot_label_distributions

    from data.partition import PartitionSpec, partitioner

    spec = PartitionSpec(scheme=config["partitioner"], num_partitions=int(num_nodes), seed=config["seed"],
                         dirichlet_alpha=config["dirichlet-alpha"], shards_per_client=config["shards-per-client"])
    labels = load_mnist(config["data-dir"], train=True).labels
    fig, ax, _ = plot_label_distributions(
        partitioner(labels, spec), label_name="label", plot_type="bar", size_unit="absolute",
        partition_id_axis="x", legend=True, legend_title="digit", figsize=(max(6, 0.4 * num_nodes), 4.5),
        title=f"MNIST labels per client ({config['partitioner']} partitioning, {num_nodes} clients)",
    )
    ax.set(xlabel="client (partition id)", ylabel="training samples")
    _save(fig, path, dpi=110)
    return path


def write_report(run_dirs: list[Path], out: Path) -> list[Path]:
    """Write the plots; return their paths. Raises `NotARunError` before writing anything."""
    loaded = {}
    for run_dir in run_dirs:
        name = run_dir.resolve().name
        loaded[name if name not in loaded else str(run_dir)] = load_run(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: rows for name, (_, rows, _) in loaded.items()}
    summaries = {name: summary for name, (_, _, summary) in loaded.items()}
    first_config, _, first_summary = next(iter(loaded.values()))
    written = [
        *(plot_metric(runs, out, *metric) for metric in METRICS),
        plot_epsilon(runs, summaries, out),
        plot_clients(runs, out),
        plot_label_distribution(first_config, first_summary, out),
    ]
    return [path for path in written if path is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_app.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories to plot (overlaid)")
    parser.add_argument("--out", type=Path, help="where to write the PNGs (default: <first run>/report)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.run_dirs, args.out or RunDir(args.run_dirs[0]).report)
    except NotARunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
