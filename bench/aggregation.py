"""Server-side DP aggregation time per round: clip 100 client updates of the reference
CNN to norm S, sum them, add Gaussian noise and divide by the expected cohort size.

    python bench/aggregation.py [--clients 100] [--repeats 5] [--json aggregation.json]

Measures the math alone (strategies.dp_mechanism on numpy arrays) and the whole
DPFedAvg.aggregate_fit (deserialising the clients' parameters, screening, clipping,
noise, accounting, serialising the new model). Prints the median seconds per round.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fl_app.model import Net
from fl_app.task import get_weights
from strategies.accounting import ClientLevelAccountant
from strategies.dp_fedavg import DPFedAvg
from strategies.dp_mechanism import clip_update, noisy_mean


class Proxy:
    def __init__(self, cid: str) -> None:
        self.cid = cid


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("aggregation.json"))
    args = parser.parse_args()

    weights = get_weights(Net())
    rng = np.random.default_rng(0)
    updates = [[rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in weights] for _ in range(args.clients)]
    shapes = [w.shape for w in weights]

    def math_only() -> None:
        clipped = [clip_update(u, 1.0)[0] for u in updates]
        noisy_mean(clipped, shapes, clipping_norm=1.0, noise_multiplier=1.0,
                   expected_cohort_size=args.clients, rng=rng)

    strategy = DPFedAvg(initial_parameters=ndarrays_to_parameters(weights), clipping_norm=1.0,
                        noise_multiplier=1.0, clients_per_round=args.clients,
                        accountant=ClientLevelAccountant("rdp", 1e-5))
    strategy.population = [str(i) for i in range(args.clients)]
    strategy.global_weights = weights
    ok = Status(Code.OK, "")
    results = [(Proxy(str(i)), FitRes(ok, ndarrays_to_parameters([w + d for w, d in zip(weights, u)]), 600, {}))
               for i, u in enumerate(updates)]
    server_round = iter(range(1, 10**6))

    def strategy_round() -> None:
        strategy.aggregate_fit(next(server_round), results, [])

    figures = {
        "clients": args.clients,
        "parameters": int(sum(w.size for w in weights)),
        "math_seconds": median_seconds(math_only, args.repeats),
        "aggregate_fit_seconds": median_seconds(strategy_round, args.repeats),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"\nclip + sum + noise, {args.clients} clients x {figures['parameters']:,} parameters: "
          f"{figures['math_seconds']:.3f} s (math), {figures['aggregate_fit_seconds']:.3f} s "
          "(DPFedAvg.aggregate_fit incl. (de)serialisation) per round")


if __name__ == "__main__":
    main()
