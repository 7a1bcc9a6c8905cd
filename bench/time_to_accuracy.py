"""Rounds and seconds until the global model reaches a test accuracy, for the reference
experiment with IID and Dirichlet partitions.

    python -m bench.time_to_accuracy [--partitioners iid dirichlet] [--rounds 10 20] \
        [--target 0.99] [--gpus-per-client 0] [--num-clients 10] [--run-config "key=value ..."] \
        [--in-process] [--json time_to_accuracy.json]

Each partitioner gets one run_simulation.py run (or, with `--in-process`, one federation
in this process through `fl_app.in_process`, whose rounds give the simulation's numbers)
with the app's defaults (the reference experiment: 10 clients x 6000 MNIST samples, all
clients every round; Dirichlet alpha 0.5), changed by `--run-config`, and its own number
of rounds. Reports the first round whose centralized test accuracy reaches the target,
the sample passes, the training seconds until then (the rounds' own times) and the wall
time from the command's start until then (start-up included; the run's shutdown too, an
upper bound), read from the run's history; on a GPU machine also the mean GPU
utilisation during the rounds (nvidia-smi, every second; the rounds taken to end 5 s
before the command).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.common.config import parse_config_args

from bench.common import (
    APP_DEFAULTS,
    ROOT,
    GpuUtilisation,
    add_data_dir,
    add_json,
    argument_parser,
    machine,
    write_json,
)
from fl_app.config import AppConfig
from fl_app.in_process import run_federation
from fl_app.run_dir import RunDir


def run(partitioner: str, rounds: int, args: argparse.Namespace, out: Path) -> dict:
    """One run; its history rows and wall time per round since the command started."""
    config = (f"partitioner='{partitioner}' dirichlet-alpha={args.alpha} data-dir='{args.data_dir.resolve()}' "
              f"data-download=false fraction-evaluate=0.0 output-dir='{out}' {args.run_config}")
    gpu = GpuUtilisation()
    gpu.start()
    if args.in_process:
        run_config = APP_DEFAULTS | parse_config_args([config]) | {"num-server-rounds": rounds}
        run_federation(run_config, args.num_clients, str(args.data_dir.resolve()), out / "run")
    else:
        command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(args.num_clients),
                   "--rounds", str(rounds), "--gpus-per-client", str(args.gpus_per_client), "--run-config", config]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{partitioner} run failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    wall = time.time() - gpu.started
    gpu.done.set()
    (run_dir,) = out.iterdir()
    rows = RunDir(run_dir).read_history()
    reached = next((r for r in rows if r["round"] > 0 and r["centralized_accuracy"] >= args.target), None)
    training = [r["seconds"] for r in rows if r["round"] > 0]
    to_target = sum(training[: reached["round"]]) if reached else None
    outside_rounds = wall - sum(training)  # start-up, round 0's evaluation and the shutdown
    cfg = AppConfig.from_run_config(APP_DEFAULTS | parse_config_args([config]) | {"num-server-rounds": rounds})
    return {
        "partitioner": partitioner, "rounds_run": rounds,
        "accuracy": [r["centralized_accuracy"] for r in rows],
        "round_seconds": [r["seconds"] for r in rows],
        "round_reached": reached["round"] if reached else None,
        "sample_passes_to_target": sample_passes(RunDir(run_dir), cfg, reached["round"]) if reached else None,
        "training_seconds_to_target": to_target,
        "wall_s_to_target": wall - sum(training[reached["round"]:]) if reached else None,  # shutdown included
        "final_accuracy": rows[-1]["centralized_accuracy"],
        "best_accuracy": max(r["centralized_accuracy"] for r in rows),
        "command_wall_s": wall,
        "outside_rounds_s": outside_rounds,
        "gpu_utilisation_during_rounds": gpu.mean_between(wall - sum(training) - 5.0, wall - 5.0),
        "gpu_samples": gpu.samples,
    }


def sample_passes(run: RunDir, cfg: AppConfig, last_round: int) -> int | None:
    """Samples trained on in rounds 1..`last_round`: the examples the clients reported
    times the local epochs (None where clients.jsonl holds no counts, as under DP)."""
    counts = [r["num_examples"] for r in run.read_clients()
              if r.get("phase") == "train" and r["round"] <= last_round and "num_examples" in r]
    return sum(counts) * cfg.train.local_epochs if counts else None


def main() -> None:
    """One simulation per partitioner; print the table and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--partitioners", nargs="+", default=["iid", "dirichlet"])
    parser.add_argument("--rounds", type=int, nargs="+", default=[10, 20],
                        help="rounds of each run, in the order of --partitioners")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--alpha", type=float, default=APP_DEFAULTS["dirichlet-alpha"])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument("--run-config", default="", help="run-config overrides for every run")
    parser.add_argument("--in-process", action="store_true",
                        help="the app's clients and server in this process (fl_app.in_process: no SuperLink, "
                             "no Ray, the same rounds), one client after another")
    add_data_dir(parser)
    add_json(parser, "time_to_accuracy.json")
    args = parser.parse_args()
    if len(args.rounds) != len(args.partitioners):
        parser.error("give one --rounds value per partitioner")

    results = []
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        for partitioner, rounds in zip(args.partitioners, args.rounds, strict=True):
            result = run(partitioner, rounds, args, Path(tmp) / partitioner)
            results.append(result)
            print(json.dumps(result), flush=True)
    figures = {"setup": {k: str(v) for k, v in vars(args).items()}, "runs": results, "machine": machine()}
    write_json(args.json, figures)
    print(f"\n| partitioner | rounds run | round reaching {args.target:.1%} | sample passes | training s "
          "until then | s from the command's start | best accuracy | s outside rounds | GPU utilisation in rounds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        def show(value, fmt="{:.1f}"):
            return "—" if value is None else fmt.format(value)
        print(f"| {r['partitioner']} | {r['rounds_run']} | {show(r['round_reached'], '{}')} "
              f"| {show(r['sample_passes_to_target'], '{:,}')} | {show(r['training_seconds_to_target'])} "
              f"| {show(r['wall_s_to_target'])} | {r['best_accuracy']:.2%} | {r['outside_rounds_s']:.1f} "
              f"| {show(r['gpu_utilisation_during_rounds'], '{:.0f}%')} |")


if __name__ == "__main__":
    main()
