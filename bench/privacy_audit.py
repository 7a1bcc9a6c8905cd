"""The privacy audit (`python -m fl_app.audit`) over several targets ε and injected faults.

    python -m bench.privacy_audit --num-clients 100 --samples-per-client 600 --canaries 1000 \
        --epsilons 1 2 4 8 --faults 0.1 0 --jobs 2

Each ε runs the app's central-DP recipe with σ calibrated for it; each fault F runs the
first ε with its update noise multiplied by F (the accountant still reports the same ε).
Prints a Markdown table (ε reported, ε_lower at 95%, ε_estimate, their ratios to the
reported ε, guesses, wall time) and writes the figures as JSON.
"""

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import APP_DEFAULTS, add_data_dir, add_json, argument_parser, machine, write_json


def audit_once(args: argparse.Namespace, epsilon: float, noise_scale: float, out: Path) -> dict[str, Any]:
    """One audited federation at target `epsilon`, its update noise scaled by `noise_scale`."""
    import torch

    from fl_app.audit import run_audit

    torch.set_num_threads(1)
    config = APP_DEFAULTS | {
        "data-dir": str(args.data_dir), "samples-per-client": args.samples_per_client,
        "validation-fraction": 0.0, "min-available-clients": args.num_clients,
        "dp-mode": "central", "dp-target-epsilon": epsilon, "dp-noise-multiplier": 0.0, "dp-delta": args.delta,
    }
    if args.rounds:
        config["num-server-rounds"] = args.rounds
    started = time.perf_counter()
    figures = run_audit(config, args.num_clients, args.canaries, out, noise_scale=noise_scale)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["target_epsilon"] = epsilon
    return figures


def main() -> None:
    """Audit every ε and fault; print the table and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--faults", type=float, nargs="*", default=[0.1, 0.0], help="noise scales, at the first ε")
    parser.add_argument("--delta", type=float, default=APP_DEFAULTS["dp-delta"])
    parser.add_argument("--rounds", type=int, help="default: the recipe's")
    parser.add_argument("--jobs", type=int, default=1)
    add_data_dir(parser)
    add_json(parser, "privacy_audit.json")
    args = parser.parse_args()
    settings = [(eps, 1.0) for eps in args.epsilons] + [(args.epsilons[0], f) for f in args.faults]
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        outs = [Path(tmp) / f"run{i}" for i in range(len(settings))]
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(audit_once, [args] * len(settings), [e for e, _ in settings],
                                 [f for _, f in settings], outs))
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    setup["machine"] = machine()
    write_json(args.json, {"setup": setup, "runs": rows})
    print(f"{args.num_clients} clients x {args.samples_per_client} samples + {args.canaries} canaries, "
          f"delta = {args.delta:g}, model {rows[0]['model']}\n")
    print("| run | ε reported | ε_lower (95%) | ε_estimate | lower / reported | estimate / reported "
          "| guesses (correct) | seconds |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = "correct" if r["noise_scale"] == 1.0 else f"FAULT: noise × {r['noise_scale']:g}"
        print(f"| {label} | {r['epsilon_reported']:.3f} | {r['epsilon_lower_95']:.3f} | "
              f"{r['epsilon_estimate']:.3f} | {r['epsilon_lower_95'] / r['epsilon_reported']:.2f} | "
              f"{r['epsilon_estimate'] / r['epsilon_reported']:.2f} | {r['guesses']} ({r['correct_guesses']}) | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    main()
