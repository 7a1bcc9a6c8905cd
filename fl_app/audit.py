"""Audit a central-DP configuration empirically: canary clients, a measured ε beside the
reported ε.

    python -m fl_app.audit --num-clients 100 --canaries 1000 \
        --run-config "dp-target-epsilon=2.0 dp-delta=1e-5 num-server-rounds=30 samples-per-client=600"

runs the configured central-DP run (the app's clients, strategy and server in this
process, `fl_app.in_process`) with `--canaries` virtual clients added to its population.
Each canary holds a secret random direction u (a unit vector over every model
parameter) and is included in the run with probability ½; an included canary, whenever
sampled, sends an update along u longer than any clipping norm, so the server clips it to
exactly S. Canaries exist only here, never in a deployment. After the run:

- **ε_lower (95%)**, Steinke, Nasr & Jagielski 2023: each canary's score is the sum over
  rounds of ⟨w_r − w_{r−1}, u⟩ (the auditor sees every released model); the top and
  bottom scores are guessed included and excluded, and the number of correct guesses
  gives a lower bound on ε that holds with 95% confidence;
- **ε_estimate**, Andrew et al. 2024: the cosines of w_T − w_0 (the final model only)
  with the inserted and with the never-inserted directions, fitted by Gaussians; the ε of
  the Gaussian mechanism that separates them. An estimate, not a bound.

`--fault noise-scale=F` multiplies the update noise by F (the accountant still counts
σ): a broken mechanism whose ε the audit must flag. The table and a last line
`epsilon_reported=… epsilon_lower_95=… epsilon_estimate=…` are printed and written to
`audit.json` in the run directory.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.config import parse_config_args
from flwr.server.client_proxy import ClientProxy

from fl_app.config import APP_DIR, AppConfig, ConfigError, project_defaults
from fl_app.in_process import run_federation
from fl_app.model import seeded_model
from fl_app.run_dir import RunDir
from fl_app.server import RecordingServer
from fl_app.task import get_weights
from strategies.privacy.randomness import os_entropy_seed_sequence
from strategies.privacy.audit import audit_one_run, one_shot_estimate, random_directions
from strategies.wire import CLIENT_CLIP_NORM, CLIENT_KEY

OK = Status(Code.OK, "")
CANARY_LENGTH = 1e6  # an included canary's update: far beyond any clipping norm, clipped to S


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(np.float32) for a in arrays])


def unflatten(vector: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    arrays, start = [], 0
    for a in like:
        arrays.append(vector[start:start + a.size].reshape(a.shape).astype(a.dtype))
        start += a.size
    return arrays


class CanaryClient(ClientProxy):
    """A virtual client whose update is its secret direction: the model plus
    `CANARY_LENGTH`·u (server clipping cuts it to S), or S·u itself when the server asks
    clients to clip."""

    def __init__(self, index: int, direction: np.ndarray) -> None:
        super().__init__(cid=f"canary-{index}")
        self.key = f"canary-{index:06d}"
        self.direction = direction

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        return GetPropertiesRes(OK, {CLIENT_KEY: self.key})

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        weights = parameters_to_ndarrays(ins.parameters)
        if CLIENT_CLIP_NORM in ins.config:
            update = float(ins.config[CLIENT_CLIP_NORM]) * self.direction
        else:
            update = flat(weights) + CANARY_LENGTH * self.direction
        return FitRes(OK, ndarrays_to_parameters(unflatten(update, weights)), 1, {})

    def evaluate(self, ins: EvaluateIns, timeout, group_id):
        raise PermissionError("canaries do not evaluate")

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


@dataclass
class Observations:
    """What the auditor sees of the released models: per canary direction,
    Σ_r ⟨w_r − w_{r−1}, u⟩, and the final model change w_T − w_0."""

    directions: np.ndarray
    scores: np.ndarray = field(init=False)
    initial: np.ndarray | None = None
    final_change: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.zeros(len(self.directions), dtype=np.float64)

    def release(self, before: np.ndarray, after: np.ndarray) -> None:
        if self.initial is None:
            self.initial = before
        self.scores += self.directions @ (after - before)
        self.final_change = after - self.initial


class ScoringServer(RecordingServer):
    """`RecordingServer` that shows every released model to `observations`; with
    `noise_scale` < 1, a DP-FedAvg whose update noise is too small (fault injection)."""

    def __init__(self, *, observations: Observations, noise_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.observations = observations
        self.strategy.noise_factor = noise_scale

    def fit_round(self, server_round: int, timeout: float | None):
        before = flat(parameters_to_ndarrays(self.parameters))
        parameters, metrics, outcome = super().fit_round(server_round, timeout)
        if parameters is not None:
            self.observations.release(before, flat(parameters_to_ndarrays(parameters)))
        return parameters, metrics, outcome


def run_audit(run_config: dict[str, Any], num_clients: int, canaries: int, run_dir: Path,
              noise_scale: float = 1.0, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Run the configured central-DP federation with `canaries` canary clients (each
    included with probability ½) and return the audit's figures (also in audit.json)."""
    cfg = AppConfig.from_run_config(run_config)
    if cfg.dp.mode != "central":
        raise ConfigError(f"Invalid run-config: dp-mode = '{cfg.dp.mode}' (allowed: 'central'; the audit "
                          "measures client-level DP-FedAvg)")
    if canaries < 4:
        raise ValueError(f"--canaries = {canaries} (allowed: at least 4)")
    rng = rng or np.random.default_rng(os_entropy_seed_sequence())  # the auditor's secret
    dimension = sum(w.size for w in get_weights(seeded_model(cfg.train.model, cfg.run.seed)))
    directions = random_directions(canaries, dimension, rng)
    included = rng.random(canaries) < 0.5
    clients = [CanaryClient(i, directions[i]) for i in np.flatnonzero(included)]
    seen = Observations(directions)
    run_federation(run_config, num_clients, cfg.data.data_dir, run_dir, extra_clients=clients,
                   server_class=ScoringServer, server_options={"observations": seen, "noise_scale": noise_scale})
    run = RunDir(run_dir)
    privacy = run.read_summary()["privacy"]
    one_run = audit_one_run(seen.scores, included, privacy["delta"])
    change = seen.final_change
    cosines = directions @ change / max(float(np.linalg.norm(change)), 1e-30)
    estimate = one_shot_estimate(cosines[included], cosines[~included], privacy["delta"])
    figures = {
        "epsilon_reported": privacy["epsilon"], "delta": privacy["delta"],
        "epsilon_lower_95": one_run.epsilon_lower, "epsilon_estimate": estimate.epsilon,
        "canaries": canaries, "canaries_included": int(included.sum()),
        "guesses": one_run.guesses, "correct_guesses": one_run.correct,
        "one_shot_mu": estimate.mu, "noise_scale": noise_scale,
        "population": privacy["population"], "rounds": privacy["rounds_accounted"],
        "noise_multiplier": privacy["noise_multiplier"], "model": run.read_config()["model"],
    }
    run.write_audit(figures)
    return figures


def report(figures: dict[str, Any]) -> list[str]:
    """The printed table and the last line."""
    rows = [
        ("epsilon reported (accountant)", f"{figures['epsilon_reported']:.4g} at delta {figures['delta']:g}"),
        ("epsilon lower bound (95%)", f"{figures['epsilon_lower_95']:.4g}  (all released models; "
                                      "Steinke et al. 2023)"),
        ("epsilon estimate", f"{figures['epsilon_estimate']:.4g}  (final model; Andrew et al. 2024)"),
        ("canaries", f"{figures['canaries']} ({figures['canaries_included']} included)"),
        ("guesses", str(figures["guesses"])),
        ("correct guesses", str(figures["correct_guesses"])),
    ]
    if figures["noise_scale"] != 1.0:
        rows.append(("FAULT INJECTED", f"update noise x {figures['noise_scale']:g}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if figures["epsilon_lower_95"] > figures["epsilon_reported"]:
        lines.append("VIOLATION: the measured lower bound exceeds the reported epsilon")
    lines.append(f"epsilon_reported={figures['epsilon_reported']:.4f} "
                 f"epsilon_lower_95={figures['epsilon_lower_95']:.4f} "
                 f"epsilon_estimate={figures['epsilon_estimate']:.4f}")
    return lines


def parse_fault(text: str) -> float:
    """`noise-scale=F` → F."""
    name, _, value = text.partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if name != "noise-scale" or not 0 <= scale < 1:
        raise argparse.ArgumentTypeError(f"--fault {text!r} (allowed: noise-scale=F with 0 <= F < 1)")
    return scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_app.audit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--num-clients", type=int, required=True, help="MNIST clients (partitions)")
    parser.add_argument("--canaries", type=int, default=1000, help="canary clients, each included with p = 1/2")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--fault", type=parse_fault, default=1.0, metavar="noise-scale=F",
                        help="fault injection: update noise multiplied by F")
    args = parser.parse_args(argv)
    overrides = parse_config_args([args.run_config]) if args.run_config.strip() else {}
    run_config = project_defaults(APP_DIR) | {"dp-mode": "central"} | overrides
    try:
        cfg = AppConfig.from_run_config(run_config)
        run_dir = Path(cfg.run.output_dir).expanduser().resolve() / "audit"
        suffix = 0
        while (run_dir.parent / f"{run_dir.name}-{suffix}").exists():
            suffix += 1
        run_dir = run_dir.parent / f"{run_dir.name}-{suffix}"
        figures = run_audit(run_config | {"min-available-clients": min(cfg.strategy.min_available_clients, args.num_clients)},
                            args.num_clients, args.canaries, run_dir, noise_scale=args.fault)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report(figures):
        print(line)
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
