"""Test accuracy under attack: fedavg, fedmedian, fedtrimmedavg and krum with 0 and k
attackers among the simulated clients, real runs through run_simulation.py.

    python -m bench.robustness --num-clients 10 --attackers 0 2 --attack sign-flip \
        --rounds 5 --json robustness.json

Prints a Markdown table (final test accuracy per strategy and attacker count) and
writes the figures as JSON.
"""

import json
import tempfile
import time
from pathlib import Path

from bench.common import APP_DEFAULTS, add_data_dir, add_json, argument_parser, simulate, write_json

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")


def main() -> None:
    """One simulation per strategy and attacker count; print the table and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--attackers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--attack", default=APP_DEFAULTS["attack"])
    parser.add_argument("--attack-scale", type=float, default=APP_DEFAULTS["attack-scale"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=APP_DEFAULTS["seed"])
    add_data_dir(parser)
    add_json(parser, "robustness.json")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="robustness-") as tmp:
        for i, (name, k) in enumerate((s, k) for s in args.strategies for k in args.attackers):
            overrides = {"strategy": name, "num-attackers": k, "attack": args.attack,
                         "attack-scale": args.attack_scale}
            if name == "krum":
                overrides["num-malicious-clients"] = max(args.attackers)
            out = Path(tmp) / str(i)
            config = {"data-dir": str(args.data_dir), "output-dir": str(out), "seed": args.seed,
                      "samples-per-client": args.samples_per_client, "local-epochs": args.local_epochs,
                      "fraction-evaluate": 0.2, "num-server-rounds": args.rounds} | overrides
            started = time.perf_counter()
            summary = simulate(args.num_clients, config, out).read_summary()
            row = {"strategy": name, "attackers": k, "final_accuracy": summary["final_accuracy"],
                   "seconds": round(time.perf_counter() - started, 1)}
            runs.append(row)
            print(json.dumps(row), flush=True)

    write_json(args.json, {"setup": {k: str(v) for k, v in vars(args).items()}, "runs": runs})
    print(f"\n{args.num_clients} clients x {args.samples_per_client} IID samples, {args.rounds} rounds, "
          f"attack {args.attack} (scale {args.attack_scale:g}), seed {args.seed}\n")
    header = " | ".join(f"{k} attackers" for k in args.attackers)
    print(f"| strategy | {header} |\n|---|{'---|' * len(args.attackers)}")
    for name in args.strategies:
        cells = " | ".join(f"{100 * r['final_accuracy']:.2f}%" for r in runs if r["strategy"] == name)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
