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

    python -m fl_app.audit --mechanisms [--run-config "dp-clipping='server'"]

checks instead, in seconds and without training, the sensitivity every mechanism of the
configured DP-FedAvg declares in its privacy ledger (`DPFedAvg.mechanisms`): adversarial
neighbouring cohorts (`strategies.privacy.sensitivity`) go through the strategy's own
screening, clipping and summing (`DPFedAvg.unnoised_round`) on a small model, and each
released quantity's change is compared with its declared sensitivity. Under secure
aggregation the clients clip and refuse non-finite updates as the app's clients do, and
the strategy receives K × SecAgg+'s mean, a lone client's clipped update, or nothing when
SecAgg+ halts (more clients send nothing than the reconstruction threshold tolerates). The noise is not drawn, so σ only names the mechanisms:
dp-noise-multiplier, 1 if unset. One line per check and a last line
`mechanisms=<n> violations=<k>` are printed; the exit status is 1 when k > 0.
`--fault sensitivity-scale=F` multiplies every declared sensitivity by F (F < 1: an
understated sensitivity the check must flag).
"""

import argparse
import math
import sys
from collections.abc import Sequence
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

from fl_app.config import APP_DIR, AppConfig, ConfigError, SecAggConfig, project_defaults
from fl_app.in_process import run_federation
from fl_app.model import seeded_model
from fl_app.run_dir import RunDir
from fl_app.secagg_params import tolerated_dropouts
from fl_app.server import RecordingServer
from fl_app.task import get_weights
from strategies.dp_fedavg import DPFedAvg
from strategies.fedavg import WeightedFedAvg
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.audit import audit_one_run, one_shot_estimate, random_directions
from strategies.privacy.mechanism import clip_update
from strategies.privacy.randomness import DPRandomness, os_entropy_seed_sequence
from strategies.privacy.sensitivity import Release, Reply, SensitivityCheck, check_sensitivity, neighbouring_cohorts
from strategies.privacy.sensitivity import report as sensitivity_report
from strategies.screening import UpdateScreen
from strategies.wire import CLIENT_CLIP_NORM, CLIENT_KEY

OK = Status(Code.OK, "")
CANARY_LENGTH = 1e6  # an included canary's update: far beyond any clipping norm, clipped to S
AUDITED_SHAPES = [(6, 4), (6,), (2, 3, 3)]  # the mechanism audit's small model


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


class AuditedClient(ClientProxy):
    """A sampled client of the mechanism audit, whose reply is handed to the strategy."""

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def fit_results(cohort: Sequence[Reply]) -> list[tuple[ClientProxy, FitRes]]:
    """The replies as the strategy receives them; a failed client sends none."""
    return [(AuditedClient(f"client-{k}"), FitRes(OK, ndarrays_to_parameters(list(r.arrays)), r.num_examples, {}))
            for k, r in enumerate(cohort) if r.arrays is not None]


def secure_aggregate(cohort: Sequence[Reply], clipping_norm: float, secagg: SecAggConfig
                     ) -> list[tuple[ClientProxy, FitRes]]:
    """What DP-FedAvg receives from a SecAgg+ round (fl_app/secure_aggregation.py): each
    client clips its update to S and does not send a non-finite one (as fl_app/client.py
    does); the strategy gets K results holding the mean of the K updates sent, weighted 1
    each; none when SecAgg+ halts (more clients send nothing than `tolerated_dropouts`
    allows); a cohort of one sends its clipped update as it is."""
    updates = []
    for reply in cohort:
        if reply.arrays is not None:
            with np.errstate(invalid="ignore"):  # a non-finite update clips to NaN
                update, _ = clip_update(list(reply.arrays), clipping_norm)
            if all(np.isfinite(a).all() for a in update):
                updates.append(update)
    if not updates:
        return []
    if len(cohort) >= 2 and len(cohort) - len(updates) > tolerated_dropouts(
            len(cohort), secagg.num_shares, secagg.reconstruction_threshold):
        return []
    mean = [np.mean([u[i].astype(np.float64) for u in updates], axis=0) for i in range(len(updates[0]))]
    return [(AuditedClient(f"client-{k}"), FitRes(OK, ndarrays_to_parameters(mean), 1, {}))
            for k in range(len(updates))]


def unnoised_release(strategy: DPFedAvg, cohort: Sequence[Reply], secagg: SecAggConfig) -> Release:
    """The strategy's released quantities before noise for a round with these replies."""
    results = (secure_aggregate(cohort, strategy.clipping_norm, secagg) if strategy.secure_aggregation
               else fit_results(cohort))
    return strategy.unnoised_round(1, results).released()


def mechanism_audit(run_config: dict[str, Any], sensitivity_scale: float = 1.0,
                    rng: np.random.Generator | None = None) -> tuple[list[SensitivityCheck], int]:
    """The configured DP-FedAvg's sensitivity checks (see the module) and the number of
    mechanisms it declares; every declared sensitivity × `sensitivity_scale`. σ is
    dp-noise-multiplier, or 1 where it would be calibrated: no sensitivity depends on it."""
    cfg = AppConfig.from_run_config(run_config)
    if cfg.dp.mode != "central":
        raise ConfigError(f"Invalid run-config: dp-mode = '{cfg.dp.mode}' (allowed: 'central'; the audit "
                          "checks client-level DP-FedAvg)")
    rng = rng or np.random.default_rng(cfg.run.seed)
    reference = [rng.normal(size=shape).astype(np.float32) for shape in AUDITED_SHAPES]
    initial = ndarrays_to_parameters(reference)
    strategy = DPFedAvg(
        WeightedFedAvg(initial_parameters=initial), UpdateScreen(initial, log_rejections=False),
        clipping=cfg.dp.clipping, clipping_norm=cfg.dp.clipping_norm,
        noise_multiplier=cfg.dp.noise_multiplier or 1.0, clients_per_round=cfg.dp.clients_per_round,
        accountant=ClientLevelAccountant(cfg.dp.accountant, cfg.dp.delta), target_epsilon=None, rounds=None,
        server_learning_rate=1.0, target_quantile=cfg.dp.target_quantile, clip_learning_rate=cfg.dp.clip_learning_rate,
        clipped_count_stddev=cfg.dp.clipped_count_stddev, secure_aggregation=cfg.secagg.enabled,
        randomness=DPRandomness(cfg.run.seed, reproducible=False), min_available_clients=1,
    )
    declared = strategy.mechanisms()
    bounds = {m.name: sensitivity_scale * m.sensitivity_value(strategy.clipping_norm) for m in declared}
    cases = neighbouring_cohorts(reference, strategy.clipping_norm, sends_deltas=cfg.dp.clipping == "client",
                                 foreign_clients=not cfg.secagg.enabled, rng=rng)
    return check_sensitivity(lambda cohort: unnoised_release(strategy, cohort, cfg.secagg), bounds, cases), len(declared)


def audit_mechanisms(run_config: dict[str, Any], sensitivity_scale: float) -> int:
    """Print the mechanism audit; 1 when a check fails, 2 for a bad configuration."""
    try:
        checks, mechanisms = mechanism_audit(run_config, sensitivity_scale)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in sensitivity_report(checks, mechanisms):
        print(line)
    return 1 if any(not c.ok for c in checks) else 0


def parse_fault(text: str) -> tuple[str, float]:
    """`noise-scale=F` (0 <= F < 1) or `sensitivity-scale=F` (F > 0) → (name, F)."""
    name, _, value = text.partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = math.nan
    if (name == "noise-scale" and 0 <= scale < 1) or (name == "sensitivity-scale" and 0 < scale < math.inf):
        return name, scale
    raise argparse.ArgumentTypeError(f"--fault {text!r} (allowed: noise-scale=F with 0 <= F < 1, "
                                     "sensitivity-scale=F with F > 0 and --mechanisms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_app.audit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--mechanisms", action="store_true",
                        help="check every declared mechanism's sensitivity instead (no training)")
    parser.add_argument("--num-clients", type=int, help="MNIST clients (partitions); required without --mechanisms")
    parser.add_argument("--canaries", type=int, default=1000, help="canary clients, each included with p = 1/2")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--fault", type=parse_fault, default=None, metavar="noise-scale=F|sensitivity-scale=F",
                        help="fault injection: update noise (or, with --mechanisms, declared sensitivities) x F")
    args = parser.parse_args(argv)
    fault_name, fault_scale = args.fault or (None, 1.0)
    if fault_name == "sensitivity-scale" and not args.mechanisms:
        parser.error("--fault sensitivity-scale=F needs --mechanisms")
    if fault_name == "noise-scale" and args.mechanisms:
        parser.error("--fault noise-scale=F is for the canary audit, not --mechanisms")
    if not args.mechanisms and args.num_clients is None:
        parser.error("--num-clients is required (unless --mechanisms)")
    overrides = parse_config_args([args.run_config]) if args.run_config.strip() else {}
    if args.mechanisms:
        return audit_mechanisms(project_defaults(APP_DIR) | {"dp-mode": "central", "dp-noise-multiplier": 1.0}
                                | overrides, fault_scale)
    run_config = project_defaults(APP_DIR) | {"dp-mode": "central"} | overrides
    try:
        cfg = AppConfig.from_run_config(run_config)
        run_dir = Path(cfg.run.output_dir).expanduser().resolve() / "audit"
        suffix = 0
        while (run_dir.parent / f"{run_dir.name}-{suffix}").exists():
            suffix += 1
        run_dir = run_dir.parent / f"{run_dir.name}-{suffix}"
        figures = run_audit(run_config | {"min-available-clients": min(cfg.strategy.min_available_clients, args.num_clients)},
                            args.num_clients, args.canaries, run_dir, noise_scale=fault_scale)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report(figures):
        print(line)
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
