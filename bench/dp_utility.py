"""Test accuracy against client-level ε: real central-DP runs through run_simulation.py.

    python bench/dp_utility.py --num-clients 100 --samples-per-client 600 --rounds 15 \
        --clients-per-round 20 --epsilons 1 2 4 8 --delta 1e-5 --json dp_utility.json

One run per ε (σ calibrated by the app from the target ε, δ, q and the rounds) plus one
run without DP that samples the same number of clients per round. Prints a Markdown
table and writes the figures as JSON.

`--in-process` runs each federation in a process of its own through tests/federation.py
(the app's clients, strategy and server without Flower's transport, which changes no
number: the in-process federation equals the simulation bitwise with one torch thread
per client), `--jobs` of them at a time: for many runs on one GPU machine.
"""

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT), str(ROOT / "tests")]

from overhead import machine  # noqa: E402


def in_process(args: argparse.Namespace, config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One federation in this process (tests/federation.py); returns its summary.json."""
    from federation import run_federation  # tests/federation.py

    from fl_app.config import project_defaults

    started = time.perf_counter()
    run_config = project_defaults(ROOT) | config | {"num-server-rounds": args.rounds}
    run_federation(run_config, args.num_clients, str(args.data_dir), out_dir / "run")
    summary = json.loads((out_dir / "run" / "summary.json").read_text())
    summary["bench_seconds"] = time.perf_counter() - started
    return summary


def run_once(args: argparse.Namespace, overrides: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One run_simulation.py run (or an in-process one); returns its summary.json."""
    config = {
        "data-dir": str(args.data_dir),
        "output-dir": str(out_dir),
        "samples-per-client": args.samples_per_client,
        "local-epochs": args.local_epochs,
        "fraction-evaluate": args.fraction_evaluate,
        "seed": args.seed,
    } | overrides
    if args.in_process:
        return in_process(args, config, out_dir)
    text = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in config.items())
    command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(args.num_clients),
               "--rounds", str(args.rounds), "--run-config", text]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"run failed ({done.returncode}): {overrides}")
    (summary_path,) = out_dir.glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    summary["bench_seconds"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients-per-round", type=float, default=20.0)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clipping-norm", type=float, default=1.0)
    parser.add_argument("--server-learning-rate", type=float, default=1.0)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--fraction-evaluate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without DP")
    parser.add_argument("--in-process", action="store_true", help="federations without Flower's transport")
    parser.add_argument("--jobs", type=int, default=1, help="in-process runs at a time")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=Path("dp_utility.json"))
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dp-utility-") as tmp:
        settings: list[tuple[str, dict[str, Any]]] = []
        if not args.no_baseline:
            settings.append(("no DP", {"dp-mode": "off",
                                       "fraction-fit": args.clients_per_round / args.num_clients}))
        for eps in args.epsilons:
            settings.append((f"{eps:g}", {
                "dp-mode": "central", "dp-clipping": "server", "dp-noise-multiplier": 0.0,
                "dp-target-epsilon": eps, "dp-delta": args.delta,
                "dp-clients-per-round": args.clients_per_round,
                "dp-clipping-norm": args.clipping_norm,
                "server-learning-rate": args.server_learning_rate,
            }))
        if args.jobs > 1 and not args.in_process:
            parser.error("--jobs needs --in-process")
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            summaries = list(pool.map(run_once, [args] * len(settings), [o for _, o in settings],
                                      [Path(tmp) / str(i) for i in range(len(settings))]))
        for (label, overrides), summary in zip(settings, summaries):
            privacy = summary.get("privacy") or {}
            row = {"target_epsilon": label, "epsilon": privacy.get("epsilon"),
                   "noise_multiplier": privacy.get("noise_multiplier"),
                   "final_accuracy": summary["final_accuracy"], "best_accuracy": summary["best_accuracy"],
                   "rounds": summary["rounds"], "seconds": round(summary["bench_seconds"], 1)}
            runs.append(row)
            print(json.dumps(row), flush=True)

    setup = {k: v for k, v in vars(args).items() if k not in ("json", "data_dir")}
    setup["machine"] = machine()
    args.json.write_text(json.dumps({"setup": setup, "runs": runs}, indent=2) + "\n")
    print(f"\n{args.num_clients} clients x {args.samples_per_client} samples, q = "
          f"{args.clients_per_round / args.num_clients:g}, {args.rounds} rounds, δ = {args.delta:g}, "
          f"S = {args.clipping_norm:g}\n")
    print("| target ε | ε spent | σ | final acc | best acc | seconds |\n|---|---|---|---|---|---|")
    for r in runs:
        eps = "—" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        sigma = "—" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        print(f"| {r['target_epsilon']} | {eps} | {sigma} | {100 * r['final_accuracy']:.2f}% | "
              f"{100 * r['best_accuracy']:.2f}% | {r['seconds']} |")


if __name__ == "__main__":
    main()
