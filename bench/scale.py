"""Scale: many simulated clients with little data each, a fraction of them per round.

    python -m bench.scale [--num-clients 1000] [--samples-per-client 60] \
        [--clients-per-round 100] [--rounds 4] [--model cnn] [--gpus-per-client 0] \
        [--json scale.json]

Simulation: run_simulation.py with `fraction-fit` = clients-per-round / num-clients, one
local epoch, batch 32, centralized evaluation on 1000 test samples each round, no
federated evaluation, no checkpoints. Its compute: the same number of clients, samples,
optimizer steps, averaging and evaluation in a plain PyTorch loop in one process, run
in the same invocation (first). Prints the steady-state round (rounds 2..) of both, the
framework overhead per sampled client, (simulation round - plain round) / clients per
round, and the peak memory of the whole simulation (PSS of every process: run_simulation,
SuperLink, ServerApp, Ray and its ClientApp workers). Goals: <= 15 ms per client with the
reference CNN (`cnn`), <= 5 ms with the DP recipe's small model (`--model tanh-cnn`).
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    APP_DEFAULTS,
    add_data_dir,
    add_json,
    argument_parser,
    machine,
    plain_loop,
    run_config_text,
    timed_simulation,
    write_json,
)
from fl_app.config import AppConfig
from fl_app.model import MODELS


def scale_overrides(data_dir: str, model: str, samples_per_client: int, num_clients: int,
                    clients_per_round: int, rounds: int) -> dict[str, Any]:
    """The run-config keys the scale simulation sets (see the module)."""
    return {"data-dir": data_dir, "model": model, "samples-per-client": samples_per_client,
            "local-epochs": 1, "num-server-rounds": rounds, "fraction-fit": clients_per_round / num_clients,
            "min-fit-clients": clients_per_round, "min-available-clients": num_clients,
            "fraction-evaluate": 0.0, "eval-samples": 1000, "validation-fraction": 0.0,
            "checkpoint-every": 0, "data-download": False}


def main() -> None:
    """Run the plain loop, then the simulation; print and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=1000)
    parser.add_argument("--samples-per-client", type=int, default=60)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    add_data_dir(parser)
    add_json(parser, "scale.json")
    args = parser.parse_args()

    overrides = scale_overrides(str(args.data_dir.resolve()), args.model, args.samples_per_client,
                                args.num_clients, args.clients_per_round, args.rounds)
    cfg = AppConfig.from_run_config(APP_DEFAULTS | overrides)
    run_config = run_config_text(overrides)
    started = time.perf_counter()
    plain_total, plain_rounds = plain_loop(cfg, args.num_clients, str(args.data_dir.resolve()),
                                           clients_per_round=args.clients_per_round)
    plain_wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        sim = timed_simulation(args, run_config, Path(tmp) / "sim")
        sim_total, sim_rounds, peak = sim.total_s, sim.round_s, sim.peak_bytes
    steady_sim, steady_plain = float(np.mean(sim_rounds[1:])), float(np.mean(plain_rounds[1:]))
    per_client_ms = 1000 * (steady_sim - steady_plain) / args.clients_per_round
    figures = {
        "setup": {k: str(v) for k, v in vars(args).items()},
        "simulation_total_s": sim_total, "simulation_round_s": sim_rounds,
        "plain_total_s": plain_total, "plain_round_s": plain_rounds,
        "plain_setup_s": plain_total - sum(plain_rounds), "plain_wall_s": plain_wall,
        "steady_round_simulation_s": steady_sim, "steady_round_compute_s": steady_plain,
        "overhead_per_sampled_client_ms": per_client_ms, "peak_pss_gib": peak / 2**30,
        "machine": machine(),
    }
    write_json(args.json, figures, show=True)
    print(f"\n{args.num_clients} clients x {args.samples_per_client} samples, {args.clients_per_round} per round, "
          f"model {args.model}: "
          f"steady round {steady_sim:.2f} s (simulation) vs {steady_plain:.2f} s (its compute, plain loop); "
          f"overhead {per_client_ms:.1f} ms per sampled client; peak memory {peak / 2**30:.2f} GiB "
          f"(whole simulation, PSS); simulation wall {sim_total:.1f} s")


if __name__ == "__main__":
    main()
