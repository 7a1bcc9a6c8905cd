"""Server-side DP aggregation time per round: clip 100 client updates of the reference
CNN to norm S, sum them, add Gaussian noise and divide by the expected cohort size.

    python -m bench.aggregation [--clients 100] [--repeats 5] [--json aggregation.json]

Measures the math alone (strategies.privacy.mechanism on numpy arrays) and the whole
DPFedAvg.aggregate_fit (deserialising the clients' parameters, screening, clipping,
noise, accounting, handing the released model to the inner strategy, serialising the new
model). Prints the median and the fastest of the
repeats in seconds per round (on a shared machine the fastest is the least disturbed).
"""

import statistics
import time

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from bench.common import add_json, argument_parser, machine, write_json
from fl_app.model import Net
from fl_app.task import get_weights
from strategies.dp_fedavg import DPFedAvg
from strategies.fedavg import WeightedFedAvg
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.mechanism import clipped_deltas, noisy_mean, sum_updates
from strategies.privacy.randomness import DPRandomness
from strategies.screening import UpdateScreen


class Proxy:
    """A client proxy as the strategy sees it: its node id."""

    def __init__(self, cid: str) -> None:
        self.cid = cid


def timings(fn, repeats: int) -> tuple[float, float]:
    """(median, fastest) seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    """Time the math and the whole aggregate_fit; print and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    add_json(parser, "aggregation.json")
    args = parser.parse_args()

    weights = get_weights(Net())
    rng = np.random.default_rng(0)
    updates = [[rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in weights] for _ in range(args.clients)]
    shapes = [w.shape for w in weights]

    client_weights = [[w + d for w, d in zip(weights, u, strict=True)] for u in updates]

    def math_only() -> None:
        """What the server computes from the clients' weights: Δ, clipped in place, summed
        one client at a time, noised, divided by m."""
        noisy_mean(sum_updates(clipped_deltas(client_weights, weights, 1.0, []), shapes), clipping_norm=1.0,
                   noise_multiplier=1.0, expected_cohort_size=args.clients, rng=rng)

    initial = ndarrays_to_parameters(weights)
    strategy = DPFedAvg(WeightedFedAvg(initial_parameters=initial), UpdateScreen(initial, log_rejections=False),
                        clipping="server", clipping_norm=1.0, noise_multiplier=1.0,
                        clients_per_round=args.clients, accountant=ClientLevelAccountant("rdp", 1e-5),
                        target_epsilon=None, rounds=None, server_learning_rate=1.0, target_quantile=0.5,
                        clip_learning_rate=0.2, clipped_count_stddev=1.0, secure_aggregation=False,
                        randomness=DPRandomness(0, reproducible=False), min_available_clients=args.clients)
    strategy.population = [str(i) for i in range(args.clients)]
    strategy.global_weights = weights
    ok = Status(Code.OK, "")
    results = [(Proxy(str(i)), FitRes(ok, ndarrays_to_parameters(w), 600, {}))
               for i, w in enumerate(client_weights)]
    server_round = iter(range(1, 10**6))

    def strategy_round() -> None:
        strategy.aggregate_fit(next(server_round), results, [])

    math_median, math_fastest = timings(math_only, args.repeats)
    fit_median, fit_fastest = timings(strategy_round, args.repeats)
    figures = {
        "clients": args.clients,
        "parameters": int(sum(w.size for w in weights)),
        "math_seconds": math_median, "math_fastest_seconds": math_fastest,
        "aggregate_fit_seconds": fit_median, "aggregate_fit_fastest_seconds": fit_fastest,
        "repeats": args.repeats,
        "machine": machine(),
    }
    write_json(args.json, figures, show=True)
    print(f"\nclip + sum + noise, {args.clients} clients x {figures['parameters']:,} parameters, per round: "
          f"math {math_median:.3f} s (fastest {math_fastest:.3f} s); DPFedAvg.aggregate_fit incl. "
          f"(de)serialisation {fit_median:.3f} s (fastest {fit_fastest:.3f} s)")


if __name__ == "__main__":
    main()
