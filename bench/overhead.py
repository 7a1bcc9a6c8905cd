"""Federation overhead: the same training through Flower's simulation and in a plain
PyTorch loop in one process, side by side in one invocation.

    python -m bench.overhead [--num-clients 10] [--samples-per-client 600] [--rounds 4]
        [--local-epochs 1] [--gpus-per-client 0] [--json overhead.json]

Simulation: run_simulation.py, every client every round, batch 32, centralized
evaluation on the test set each round, no federated evaluation. Plain loop: for each
round, each client's samples trained from the global model with the same optimizer,
epochs and batch size (the same number of optimizer steps), the weighted average, the
same centralized evaluation. Prints the ratio for the whole run (start-up included) and
per round in steady state (rounds 2.., start-up apart). Goal: <= 1.10. On a GPU machine
both sides train on the GPU (`--gpus-per-client` is each simulated client's fraction).

Start-up: the simulation runs with `--verbose` (Flower's log timestamped), and the
moments from the command to round 1's training and the phases between them are printed
(`bench/startup.py`), with what one client process takes alone to import the client and
load its partition. Goal: round 1's training starts <= 15 s after the command.
"""

import tempfile
from pathlib import Path

import numpy as np

from bench import startup
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


def main() -> None:
    """Run the simulation, then the plain loop; print and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    add_data_dir(parser)
    add_json(parser, "overhead.json")
    args = parser.parse_args()

    overrides = {"data-dir": str(args.data_dir.resolve()), "samples-per-client": args.samples_per_client,
                 "local-epochs": args.local_epochs, "num-server-rounds": args.rounds,
                 "fraction-evaluate": 0.0, "validation-fraction": 0.0, "checkpoint-every": 0,
                 "data-download": False}
    cfg = AppConfig.from_run_config(APP_DEFAULTS | overrides)
    run_config = run_config_text(overrides)
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        sim = timed_simulation(args, run_config, Path(tmp) / "sim", "--verbose")
    sim_total, sim_rounds = sim.total_s, sim.round_s
    events = startup.timeline(sim.start, sim.lines)
    spans = startup.phases(events) | startup.client_alone(APP_DEFAULTS | overrides, overrides["data-dir"],
                                                          args.num_clients)
    plain_total, plain_rounds = plain_loop(cfg, args.num_clients, str(args.data_dir.resolve()))
    steady_sim, steady_plain = np.mean(sim_rounds[1:]), np.mean(plain_rounds[1:])
    figures = {
        "setup": {k: str(v) for k, v in vars(args).items()},
        "simulation_total_s": sim_total, "plain_total_s": plain_total,
        "simulation_round_s": sim_rounds, "plain_round_s": plain_rounds,
        "ratio_total": sim_total / plain_total, "ratio_steady_round": float(steady_sim / steady_plain),
        "startup_events_s": events, "startup_phases_s": spans,
        "machine": machine(),
    }
    write_json(args.json, figures, show=True)
    print(f"\nwhole run: simulation {sim_total:.1f} s vs plain {plain_total:.1f} s, ratio "
          f"{figures['ratio_total']:.2f}; steady-state round: {steady_sim:.2f} s vs {steady_plain:.2f} s, "
          f"ratio {figures['ratio_steady_round']:.2f}")
    startup.show(events, spans)


if __name__ == "__main__":
    main()
