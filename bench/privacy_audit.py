"""The privacy audit's power (`python -m fl_app.audit`): detection rate per injected fault
and false-alarm rate on correct runs, for several targets ε, over repeated runs.

    python -m bench.privacy_audit --runs 5 --epsilons 2 1 8 \
        --faults none noise-scale=0.5 noise-scale=0.1 count-sensitivity=2

Each row runs the app's central-DP recipe `--runs` times at one target ε (σ calibrated
for it), correct ("none") or with one fault of `fl_app.audit` (the accountant still
reports the calibrated ε), each run with fresh canaries, inclusions and noise; rows in
the order given (ε first), runs one after another unless `--jobs` > 1. The defaults are
the issue's configuration (20 clients, 200 canaries, 30 clients per round, 20 rounds)
with 60 samples per client: the audit's statistics depend on the canaries, rounds, q and
σ, not on the real clients' data, and 60 samples keep a run near a minute. Prints a
Markdown table (flagged runs, ε reported and as run, the bounds' and the estimate's
ranges, seconds) and writes every run's figures as JSON after each run. `--set KEY=VALUE`
sets any other run-config key, e.g. the distributed-DP audit of the unit test's setting:

    python -m bench.privacy_audit --num-clients 10 --samples-per-client 50 --canaries 500 \
        --clients-per-round 60 --epsilons 1 --faults none noise-scale=0.5 noise-scale=0.25 \
        --set dp-mode=distributed --set dp-clipping=client --set secure-aggregation=true \
        --set secagg-reconstruction-threshold=0.9

    python -m bench.privacy_audit --simulate --runs 200

runs the same rows on an ideal mechanism simulated without training
(`fl_app.audit.simulated_audit`: the canaries' projections and the noised count drawn
directly, the real clients left out), in about a second per run: the power the
statistics have in that configuration, to compare with the trained runs.
"""

import argparse
import functools
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import APP_DEFAULTS, add_data_dir, add_json, add_set, argument_parser, machine, write_json


def audit_once(args: argparse.Namespace, epsilon: float, fault: str, out: Path) -> dict[str, Any]:
    """One audited federation at target `epsilon` with `fault` ("none" or `name=F`)."""
    import torch

    from fl_app.audit import parse_fault, run_audit

    torch.set_num_threads(1)
    config = APP_DEFAULTS | {
        "data-dir": str(args.data_dir), "samples-per-client": args.samples_per_client,
        "validation-fraction": 0.0, "min-available-clients": args.num_clients, "num-server-rounds": args.rounds,
        "dp-mode": "central", "dp-target-epsilon": epsilon, "dp-noise-multiplier": 0.0, "dp-delta": args.delta,
        "dp-clients-per-round": args.clients_per_round,
    } | dict(args.set)
    name, scale = parse_fault(fault) if fault != "none" else ("none", 1.0)
    started = time.perf_counter()
    figures = run_audit(config, args.num_clients, args.canaries, out,
                        noise_scale=scale if name == "noise-scale" else 1.0,
                        count_scale=scale if name == "count-sensitivity" else 1.0)
    return figures | {"seconds": round(time.perf_counter() - started, 1), "target_epsilon": epsilon, "fault": fault}


@functools.cache
def calibrated(epsilon: float, delta: float, rate: float, rounds: int) -> float:
    """σ for `epsilon` (RDP), as the app calibrates it."""
    from strategies.privacy.accounting import calibrate_noise_multiplier

    return calibrate_noise_multiplier(epsilon, delta, rate, rounds, "rdp")


def simulate_once(args: argparse.Namespace, epsilon: float, fault: str, rng: np.random.Generator) -> dict[str, Any]:
    """One simulated audit (no training) at target `epsilon` with `fault`."""
    from fl_app.audit import parse_fault, simulated_audit

    name, scale = parse_fault(fault) if fault != "none" else ("none", 1.0)
    rate = args.clients_per_round / (args.num_clients + args.canaries / 2)
    sigma = calibrated(epsilon, args.delta, rate, args.rounds)
    started = time.perf_counter()
    figures = simulated_audit(rng, sigma, APP_DEFAULTS["dp-clipped-count-stddev"], args.delta,
                              noise_scale=scale if name == "noise-scale" else 1.0,
                              count_scale=scale if name == "count-sensitivity" else 1.0,
                              canaries=args.canaries, rounds=args.rounds, clients=args.num_clients,
                              cohort=args.clients_per_round)
    return figures | {"seconds": round(time.perf_counter() - started, 1), "target_epsilon": epsilon, "fault": fault}


def spread(values: list[float], digits: int = 2) -> str:
    """median (min–max)."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(runs: list[dict[str, Any]]) -> list[str]:
    """One Markdown row per (ε, fault), in the order the runs came."""
    rows: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for run in runs:
        rows.setdefault((run["target_epsilon"], run["fault"]), []).append(run)
    lines = [("| ε target | run | flagged | ε reported | ε as run | ε_lower any (95%) | ε_lower Gaussian (95%) "
              "| ε estimate / ε as run | seconds |"), "|---|---|---|---|---|---|---|---|---|"]
    for (epsilon, fault), group in rows.items():
        flagged = sum(r["violation"] for r in group)
        rate = f"{flagged}/{len(group)}" + (" (false alarms)" if fault == "none" else "")
        lines.append(
            f"| {epsilon:g} | {'correct' if fault == 'none' else fault} | {rate} | "
            f"{statistics.median(r['epsilon_reported'] for r in group):.3f} | "
            f"{statistics.median(r['epsilon_true'] for r in group):.3g} | "
            f"{spread([r['epsilon_lower_95'] for r in group])} | {spread([r['epsilon_gaussian_95'] for r in group])} | "
            f"{spread([r['epsilon_estimate'] / r['epsilon_true'] for r in group])} | "
            f"{statistics.median(r['seconds'] for r in group):.0f} |")
    return lines


def main() -> None:
    """Audit every (ε, fault) `--runs` times; print the table and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument("--samples-per-client", type=int, default=60)
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--clients-per-round", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 1.0, 8.0])
    parser.add_argument("--faults", nargs="+", default=["none", "noise-scale=0.5", "noise-scale=0.1",
                                                        "count-sensitivity=2"])
    parser.add_argument("--runs", type=int, default=5, help="runs per (ε, fault)")
    parser.add_argument("--delta", type=float, default=APP_DEFAULTS["dp-delta"])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--simulate", action="store_true", help="an ideal mechanism simulated, no training")
    add_set(parser, "dp-mode=distributed (trained runs only)")
    add_data_dir(parser)
    add_json(parser, "privacy_audit.json")
    args = parser.parse_args()
    if args.simulate and args.set:
        parser.error("--set applies to trained runs; --simulate draws an ideal Gaussian mechanism")
    settings = [(eps, fault) for eps in args.epsilons for fault in args.faults for _ in range(args.runs)]
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    setup["machine"] = machine()
    runs: list[dict[str, Any]] = []
    if args.simulate:
        rng = np.random.default_rng()
        for eps, fault in settings:
            runs.append(simulate_once(args, eps, fault, rng))
        write_json(args.json, {"setup": setup, "runs": runs})
        print(f"simulated: {args.canaries} canaries, {args.num_clients} other clients, {args.clients_per_round:g} "
              f"clients per round, {args.rounds} rounds, delta = {args.delta:g}, {args.runs} runs per row\n")
        print("\n".join(table(runs)))
        return
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp, \
            ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(audit_once, args, eps, fault, Path(tmp) / f"run{i}")
                   for i, (eps, fault) in enumerate(settings)]
        for future in futures:
            runs.append(future.result())
            write_json(args.json, {"setup": setup, "runs": runs})
    print(f"{args.num_clients} clients x {args.samples_per_client} samples + {args.canaries} canaries, "
          f"{args.clients_per_round:g} clients per round, {args.rounds} rounds, delta = {args.delta:g}, "
          f"model {runs[0]['model']}, {args.runs} runs per row"
          + "".join(f", {key}={value}" for key, value in args.set) + "\n")
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
