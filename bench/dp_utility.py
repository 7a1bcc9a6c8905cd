"""Test accuracy against ε with the app's DP recipes: client-level (central DP-FedAvg;
with `--dp-mode distributed` the clients add the noise, clipping at a fixed S, and the
in-process federation sums their residues as SecAgg+ would) or, with `--dp-mode local`,
sample-level (DP-SGD on each site).

    python -m bench.dp_utility --num-clients 1000 --samples-per-client 60 --epsilon 2 --delta 1e-5
    python -m bench.dp_utility --dp-mode local --num-clients 10 --samples-per-client 0 --epsilon 8 3 1 0

One run per `--epsilon` with every setting the app uses by default under
`dp-mode = "central"` (pyproject's `[tool.fl-app.auto.central-dp]`, the DP recipe); only
σ differs, calibrated by the app so that the run spends the target ε at δ. `--epsilon 0`
is the same model and recipe without noise (σ = 1e-6: every update still clipped,
adaptive clipping still on), the recipe's ceiling. Under `--dp-mode local` the recipe is
`[tool.fl-app.auto.local-dp]`, ε is each site's budget (σ calibrated on the sites), and
`--epsilon 0` runs the same recipe with plain SGD (no clipping, no noise). `--rounds`, `--model`,
`--partitioner` and `--clients-per-round` override the recipe, and `--set KEY=VALUE` any
other run-config key (for tuning). Runs are in-process
federations (fl_app/in_process.py: the app's clients, strategy and server without
Flower's transport, equal to the simulation bitwise with one torch thread per client),
`--jobs` at a time; `--simulation` runs them through run_simulation.py instead.

`--holdout` is for tuning: the clients share the first 50,000 MNIST training images and
"centralized accuracy" is measured on the last 10,000 training images, never on the test
set (Papernot & Steinke 2022: hyperparameters chosen on the test set overstate utility).

Each run prints one line `final_accuracy=… best_accuracy=… epsilon=… delta=…
noise_multiplier=… sampling_rate=… rounds=… model=…`; the figures also go to `--json`.
"""

import argparse
import json
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    APP_DEFAULTS,
    add_data_dir,
    add_json,
    add_set,
    argument_parser,
    machine,
    simulate,
    write_json,
)
from fl_app.run_dir import RunDir

HOLDOUT_TRAIN = 50_000
NO_NOISE_SIGMA = 1e-6


def holdout_data(source: Path, target: Path) -> Path:
    """MNIST files under `target` whose training set is MNIST's first 50,000 training
    images and whose test set is the last 10,000 of them."""
    from data.site_data import read_idx, write_idx

    raw_in, raw_out = source / "MNIST" / "raw", target / "MNIST" / "raw"
    raw_out.mkdir(parents=True, exist_ok=True)
    images = read_idx(raw_in / "train-images-idx3-ubyte")
    labels = read_idx(raw_in / "train-labels-idx1-ubyte")
    write_idx(raw_out / "train-images-idx3-ubyte", images[:HOLDOUT_TRAIN])
    write_idx(raw_out / "train-labels-idx1-ubyte", labels[:HOLDOUT_TRAIN])
    write_idx(raw_out / "t10k-images-idx3-ubyte", images[HOLDOUT_TRAIN:])
    write_idx(raw_out / "t10k-labels-idx1-ubyte", labels[HOLDOUT_TRAIN:])
    return target


def run_config(args: argparse.Namespace, epsilon: float, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The run-config of one run: the recipe, the population, and ε (0: no noise)."""
    config: dict[str, Any] = {
        "data-dir": str(data_dir), "output-dir": str(out_dir), "seed": args.seed,
        "samples-per-client": args.samples_per_client, "validation-fraction": 0.0,
        "partitioner": args.partitioner, "min-available-clients": args.num_clients,
        "dp-mode": args.dp_mode, "dp-delta": args.delta,
    }
    if args.dp_mode == "local":  # no noise: the local recipe without DP-SGD (plain SGD)
        from fl_app.config import auto_table

        return config | ({"dp-target-epsilon": epsilon} if epsilon > 0 else
                         {"dp-mode": "off"} | auto_table()["local-dp"]) | recipe_overrides(args)
    if args.dp_mode == "distributed":  # the clients clip to a fixed S and noise; SecAgg+'s sum, in process
        config |= {"dp-clipping": "client", "secure-aggregation": True}
    if epsilon > 0:
        config |= {"dp-target-epsilon": epsilon, "dp-noise-multiplier": 0.0}
    else:
        config |= {"dp-target-epsilon": 0.0, "dp-noise-multiplier": NO_NOISE_SIGMA}
    return config | recipe_overrides(args)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """`--rounds`, `--model`, `--clients-per-round` and `--set` as run-config keys."""
    config: dict[str, Any] = {}
    for key, value in (("num-server-rounds", args.rounds), ("model", args.model),
                       ("dp-clients-per-round", args.clients_per_round)):
        if value is not None:
            config[key] = value
    return config | dict(args.set)


def run_once(args: argparse.Namespace, epsilon: float, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """One federation; returns its summary.json with the wall time and history."""
    config = APP_DEFAULTS | run_config(args, epsilon, data_dir, out_dir)
    started = time.perf_counter()
    if args.simulation:
        run = simulate(args.num_clients, config, out_dir)
    else:
        import torch

        from fl_app.in_process import run_federation

        torch.set_num_threads(1)
        run_federation(config, args.num_clients, str(data_dir), out_dir / "run")
        run = RunDir(out_dir / "run")
    summary = run.read_summary()
    summary["bench_seconds"] = time.perf_counter() - started
    summary["history"] = run.read_history()
    summary["model"] = run.read_config()["model"]
    return summary


def largest(value: float | list[float] | None) -> float:
    """A privacy figure as one number: local DP reports [min, max] over the sites."""
    if value is None:
        return 0.0
    return max(value) if isinstance(value, list) else value


def result_line(summary: dict[str, Any], delta: float) -> str:
    """The one-line result of a run (ε = inf without noise)."""
    privacy = summary["privacy"] or {"epsilon": math.inf, "noise_multiplier": 0.0, "sampling_rate": None,
                                     "rounds_accounted": len(summary["history"]) - 1}
    sigma = largest(privacy["noise_multiplier"])
    epsilon = privacy["epsilon"] if sigma > NO_NOISE_SIGMA else math.inf
    return (f"final_accuracy={summary['final_accuracy']:.4f} best_accuracy={summary['best_accuracy']:.4f} "
            f"epsilon={epsilon:.4f} delta={delta:g} noise_multiplier={sigma:.4g} "
            f"sampling_rate={largest(privacy['sampling_rate']):.4f} rounds={privacy['rounds_accounted']} "
            f"model={summary['model']}")


def plot_accuracy(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round, one line per run, labelled with its ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run in sorted(runs, key=lambda r: r["target_epsilon"] or float("inf")):
        privacy = run["privacy"]
        label = (f"ε = {privacy['epsilon']:.2f} (σ = {largest(privacy['noise_multiplier']):.2f})"
                 if run["target_epsilon"] else "no noise (σ = 0)")
        accuracy = [100 * a for a in run["accuracy_per_round"]]
        ax.plot(range(len(accuracy)), accuracy, label=f"{label}: final {accuracy[-1]:.1f}%")
    ax.set(xlabel="round", ylabel="test accuracy (%)", title=title, ylim=(80, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def row_label(setup: dict[str, Any]) -> str:
    """A row of the table, from a --json file's setup."""
    level = "sample-level" if setup.get("dp_mode") == "local" else "client-level"
    return (f"{setup['num_clients']} x {setup['samples_per_client'] or 'all'} {setup['partitioner']}, "
            f"{level}, δ = {setup['delta']:g}")


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """Final test accuracy against ε, one line per --json file (a row of the table); the
    no-noise run as a dashed level of its row's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        noised = sorted((r["privacy"]["epsilon"], 100 * r["final_accuracy"])
                        for r in row["runs"] if r["target_epsilon"])
        line = ax.plot(*zip(*noised, strict=True), marker="o", label=row_label(row["setup"]))[0] if noised else None
        for run in row["runs"]:
            if not run["target_epsilon"]:
                ax.axhline(100 * run["final_accuracy"], ls="--", lw=1, color=line.get_color() if line else "grey")
    ax.set(xscale="log", xlabel="ε (δ as labelled)", ylabel="final test accuracy (%)",
           title="Accuracy against ε (dashed: the same recipe without noise)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    """Run one federation per target ε (or only plot earlier runs); print and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=1000)
    parser.add_argument("--samples-per-client", type=int, default=60)
    parser.add_argument("--epsilon", type=float, nargs="+", default=[2.0], help="targets; 0 = no noise")
    parser.add_argument("--delta", type=float, default=APP_DEFAULTS["dp-delta"])
    parser.add_argument("--dp-mode", choices=["central", "distributed", "local"], default="central",
                        help="client-level DP-FedAvg (noise on the server, or distributed: on the clients), "
                             "or sample-level DP-SGD on each site (ε per site)")
    parser.add_argument("--partitioner", default=APP_DEFAULTS["partitioner"],
                        help="iid, dirichlet (alpha 0.5) or shards")
    parser.add_argument("--rounds", type=int, help="default: the recipe's")
    parser.add_argument("--model", help="default: the recipe's")
    parser.add_argument("--clients-per-round", type=float, help="default: the recipe's")
    add_set(parser, "lr-schedule=constant (tuning)")
    parser.add_argument("--seed", type=int, default=APP_DEFAULTS["seed"])
    parser.add_argument("--holdout", action="store_true", help="tune: evaluate on held-out training images")
    parser.add_argument("--simulation", action="store_true", help="through run_simulation.py (Flower's engine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    add_data_dir(parser)
    add_json(parser, "dp_utility.json")
    parser.add_argument("--plot", type=Path, help="also draw accuracy per round of the runs to this PNG")
    parser.add_argument("--plot-from", type=Path, nargs="+", metavar="JSON",
                        help="only draw --plot from the runs of earlier --json files")
    parser.add_argument("--frontier-from", type=Path, nargs="+", metavar="JSON",
                        help="only draw --plot: final accuracy against ε, one line per earlier --json file")
    args = parser.parse_args()
    if args.frontier_from:
        plot_frontier([json.loads(path.read_text()) for path in args.frontier_from], args.plot)
        return
    if args.plot_from:
        runs = [run for path in args.plot_from for run in json.loads(path.read_text())["runs"]]
        plot_accuracy(runs, args.plot, f"{args.num_clients} clients x {args.samples_per_client} samples, "
                      f"δ = {args.delta:g}, the DP recipe")
        return

    with tempfile.TemporaryDirectory(prefix="dp-utility-") as tmp:
        data_dir = holdout_data(args.data_dir, Path(tmp) / "holdout") if args.holdout else args.data_dir
        outs = [Path(tmp) / f"run{i}" for i in range(len(args.epsilon))]
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(run_once, [args] * len(outs), args.epsilon, [data_dir] * len(outs), outs))
    runs = []
    for epsilon, summary in zip(args.epsilon, summaries, strict=True):
        runs.append({"target_epsilon": epsilon, "privacy": summary["privacy"], "model": summary["model"],
                     "final_accuracy": summary["final_accuracy"], "best_accuracy": summary["best_accuracy"],
                     "seconds": round(summary["bench_seconds"], 1),
                     "accuracy_per_round": [r["centralized_accuracy"] for r in summary["history"]]})
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    setup["machine"] = machine()
    write_json(args.json, {"setup": setup, "runs": runs})
    if args.plot:
        plot_accuracy(runs, args.plot, f"{args.num_clients} clients x {args.samples_per_client} samples, "
                      f"δ = {args.delta:g}, the DP recipe")
    print(f"{args.num_clients} clients x {args.samples_per_client} samples ({args.partitioner}), "
          f"delta = {args.delta:g}{', held-out evaluation' if args.holdout else ''}")
    for run, summary in zip(runs, summaries, strict=True):
        print(f"target epsilon {run['target_epsilon']:g}: {run['seconds']} s")
        print(result_line(summary, args.delta))


if __name__ == "__main__":
    main()
