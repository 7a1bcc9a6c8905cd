"""Rounds and seconds until the global model reaches a test accuracy, for the reference
experiment with IID and Dirichlet partitions.

    python -m bench.time_to_accuracy [--partitioners iid dirichlet] [--rounds 10 20] \
        [--target 0.99] [--gpus-per-client 0] [--json time_to_accuracy.json]

Each partitioner gets one run_simulation.py run with the app's defaults (10 clients x
6000 MNIST samples, all clients every round, 2 local epochs, batch 32, SGD 0.02 with
momentum 0.9 decayed by a cosine over the run's rounds; Dirichlet alpha 0.5) and its own
number of rounds. Reports the first round whose centralized test accuracy reaches the
target, the training seconds until then (the rounds' own times) and the wall time from
the command's start (start-up included), read from the run's history.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import APP_DEFAULTS, ROOT, add_data_dir, add_json, argument_parser, machine, write_json
from fl_app.run_dir import RunDir


def run(partitioner: str, rounds: int, args: argparse.Namespace, out: Path) -> dict:
    """One run; its history rows and wall time per round since the command started."""
    config = (f"partitioner='{partitioner}' dirichlet-alpha={args.alpha} data-dir='{args.data_dir.resolve()}' "
              f"data-download=false fraction-evaluate=0.0 output-dir='{out}'")
    command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(args.num_clients),
               "--rounds", str(rounds), "--gpus-per-client", str(args.gpus_per_client), "--run-config", config]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{partitioner} run failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    (run_dir,) = out.iterdir()
    rows = RunDir(run_dir).read_history()
    reached = next((r for r in rows if r["round"] > 0 and r["centralized_accuracy"] >= args.target), None)
    training = [r["seconds"] for r in rows if r["round"] > 0]
    return {
        "partitioner": partitioner, "rounds_run": rounds,
        "accuracy": [r["centralized_accuracy"] for r in rows],
        "round_seconds": [r["seconds"] for r in rows],
        "round_reached": reached["round"] if reached else None,
        "training_seconds_to_target": sum(training[: reached["round"]]) if reached else None,
        "final_accuracy": rows[-1]["centralized_accuracy"],
        "best_accuracy": max(r["centralized_accuracy"] for r in rows),
        "command_wall_s": time.time() - started,
    }


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
    add_data_dir(parser)
    add_json(parser, "time_to_accuracy.json")
    args = parser.parse_args()
    if len(args.rounds) != len(args.partitioners):
        parser.error("give one --rounds value per partitioner")

    results = []
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        for partitioner, rounds in zip(args.partitioners, args.rounds):
            result = run(partitioner, rounds, args, Path(tmp) / partitioner)
            results.append(result)
            print(json.dumps(result), flush=True)
    figures = {"setup": {k: str(v) for k, v in vars(args).items()}, "runs": results, "machine": machine()}
    write_json(args.json, figures)
    print(f"\n| partitioner | rounds run | round reaching {args.target:.1%} | training s until then "
          "| best accuracy | command wall s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        reached = "not reached" if r["round_reached"] is None else str(r["round_reached"])
        seconds = "—" if r["training_seconds_to_target"] is None else f"{r['training_seconds_to_target']:.1f}"
        print(f"| {r['partitioner']} | {r['rounds_run']} | {reached} | {seconds} | {r['best_accuracy']:.2%} "
              f"| {r['command_wall_s']:.1f} |")


if __name__ == "__main__":
    main()
