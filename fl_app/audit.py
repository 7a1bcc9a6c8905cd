"""Audit a central-DP configuration empirically: canary clients, a measured ε beside the
reported ε.

    python -m fl_app.audit --num-clients 20 --canaries 200 \
        --run-config "dp-target-epsilon=2.0 num-server-rounds=20 dp-clients-per-round=30.0"

runs the configured central-DP run (the app's clients, strategy and server in this
process, `fl_app.in_process`; as many clients training at once as there are CPUs, on one
torch thread each, unless the model has dropout) with `--canaries` virtual clients added
to its population.
Each canary holds a secret random direction u (a unit vector over every model
parameter) and is included in the run with probability ½; an included canary, whenever
sampled, sends an update along u longer than any clipping norm, so the server clips it to
exactly the round's S. Canaries exist only here, never in a deployment. Every round the
auditor projects the released noised mean on every direction, z = ⟨m·mean, u⟩ / S (the
released model is a public function of it), and reads the released count of adaptive
clipping. After the run (the statistics: strategies/privacy/audit.py):

- **ε_lower (95%, any mechanism)**, Steinke, Nasr & Jagielski 2023: each canary scored by
  the likelihood ratio of the claimed subsampled Gaussian over all rounds; the top and
  bottom scores guessed included and excluded; the number of correct guesses gives a
  lower bound on ε that holds whatever the mechanism;
- **ε_gaussian (95%)**, the parametric audit of Nasr et al. 2023: the update noise
  measured on the never-included directions and a canary's effect (its rounds sampled
  against its rounds not sampled) give the per-round noise multiplier; the
  accountant's ε at its 95% upper limit (the claimed q and T) is the least ε the run
  should have stated if its release is Gaussian;
- **ε_estimate**: the accountant's ε at the measured noise multipliers (update sum and
  noised count composed). An estimate, not a bound.

The two bounds share the 5% error: 2.5% each (Bonferroni), so that a correct run is
flagged in at most 5% of audits. `VIOLATION` and exit status 1 when either exceeds the
reported ε. `--fault noise-scale=F` multiplies the update noise by F and
`--fault count-sensitivity=F` each client's contribution to adaptive clipping's count
by F (the accountant still counts the declared mechanisms): broken mechanisms for the
audit to flag. The table and a last line `epsilon_reported=… epsilon_lower_95=…
epsilon_gaussian_95=… epsilon_estimate=…` are printed and written to `audit.json` in the
run directory.

    python -m fl_app.audit --mechanisms [--run-config "dp-clipping='server'"]

checks instead, in seconds and without training, the sensitivity every mechanism of the
configured (central or distributed) DP-FedAvg declares in its privacy ledger
(`DPFedAvg.mechanisms`): adversarial neighbouring cohorts
(`strategies.privacy.sensitivity`) go through the strategy's own screening, clipping and
summing (`DPFedAvg.unnoised_round`) on a small model, and each released quantity's
change is compared with its declared sensitivity. Under secure aggregation the clients
clip and refuse non-finite updates as the app's clients do, and the strategy receives K
× SecAgg+'s mean, a lone client's clipped update, or nothing when SecAgg+ halts (more
clients send nothing than the reconstruction threshold tolerates). Under `dp-mode =
"distributed"` the released quantity is the sum of the survivors' rounded integer
vectors (each client's update encoded as the clients encode it, without noise; zero when
SecAgg+ halts), checked in L2 against Δ₂ and in L1 against Δ₁; its scale γ is the one a
population of ⌈dp-clients-per-round⌉ clients (q = 1) would get.
The noise is not drawn, so σ only names the mechanisms:
dp-noise-multiplier, 1 if unset. One line per check and a last line
`mechanisms=<n> violations=<k>` are printed; the exit status is 1 when k > 0.
`--fault sensitivity-scale=F` multiplies every declared sensitivity by F (F < 1: an
understated sensitivity the check must flag).
"""

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from fl_app.distributed_client import distributed_message
from fl_app.in_process import run_federation
from fl_app.model import seeded_model, uses_dropout
from fl_app.run_dir import RunDir
from fl_app.secagg_params import tolerated_dropouts, unmask_threshold
from fl_app.server import RecordingServer
from fl_app.task import get_weights
from strategies.distributed_dp import DistributedDPFedAvg, rotation_seed
from strategies.dp_fedavg import UNCLIPPED_COUNT, UPDATE_SUM, DPFedAvg
from strategies.fedavg import WeightedFedAvg
from strategies.privacy.accounting import ClientLevelAccountant, epsilon_after
from strategies.privacy.adaptive_clipping import COUNT_SENSITIVITY, update_noise_multiplier
from strategies.privacy.audit import (
    CONFIDENCE,
    audit_one_run,
    count_fit,
    gaussian_fit,
    random_directions,
    simulate_canaries,
    subsampled_gaussian_scores,
)
from strategies.privacy.discretization import centred, encode_update, rotation_signs
from strategies.privacy.distributed import SkellamAccountant
from strategies.privacy.ledger import CLIPPED_SUM, Mechanism, effective_noise_multiplier
from strategies.privacy.mechanism import clip_update
from strategies.privacy.randomness import DPRandomness, os_entropy_seed_sequence
from strategies.privacy.sensitivity import Release, Reply, SensitivityCheck, check_sensitivity, neighbouring_cohorts
from strategies.privacy.sensitivity import report as sensitivity_report
from strategies.privacy.skellam import skellam_epsilon
from strategies.screening import UpdateScreen
from strategies.wire import CLIENT_CLIP_NORM, CLIENT_KEY

OK = Status(Code.OK, "")
CANARY_LENGTH = 1e6  # an included canary's update: far beyond any clipping norm, clipped to S
CANARY_KEYS = 1 << 40  # distributed DP, reproducible noise: canaries' client keys, apart from the partitions'
AUDITED_SHAPES = [(6, 4), (6,), (2, 3, 3)]  # the mechanism audit's small model
PRV_SMALLEST_SIGMA = 0.5  # the smallest σ the audit hands the PRV accountant (`epsilon_at`)


def flat(arrays: list[np.ndarray], dtype: type = np.float32) -> np.ndarray:
    return np.concatenate([np.ravel(a).astype(dtype) for a in arrays])


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

    def __init__(self, index: int, direction: np.ndarray, cfg: AppConfig | None = None) -> None:
        super().__init__(cid=f"canary-{index}")
        self.index = index
        self.key = f"canary-{index:06d}"
        self.direction = direction
        self.cfg = cfg  # distributed DP: the canary encodes S·u and adds its noise share like a client

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        return GetPropertiesRes(OK, {CLIENT_KEY: self.key})

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        weights = parameters_to_ndarrays(ins.parameters)
        if CLIENT_CLIP_NORM in ins.config:
            update = float(ins.config[CLIENT_CLIP_NORM]) * self.direction
        else:
            update = flat(weights) + CANARY_LENGTH * self.direction
        if self.cfg is not None and self.cfg.dp.mode == "distributed":
            message = distributed_message(self.cfg, CANARY_KEYS + self.index, [update], ins.config)
            return FitRes(OK, ndarrays_to_parameters([message]), 1, {})
        return FitRes(OK, ndarrays_to_parameters(unflatten(update, weights)), 1, {})

    def evaluate(self, ins: EvaluateIns, timeout, group_id):
        raise PermissionError("canaries do not evaluate")

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


@dataclass
class Observations:
    """What the auditor sees, round by round: z = ⟨m·mean, u⟩ / S for every canary
    direction u (the released noised mean, its expected cohort m and the round's clipping
    norm S are public), which canaries were sampled (each canary knows when it is asked
    to train), and the released centred count m·b̃ − ½m of adaptive clipping."""

    directions: np.ndarray
    projections: list[np.ndarray] = field(default_factory=list)
    sampled: list[np.ndarray] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)

    def release(self, mean: list[np.ndarray], cohort_size: float, clipping_norm: float,
                sampled: Sequence[int], unclipped_fraction: float | None) -> None:
        """Record one round's release."""
        self.projections.append(self.directions @ (flat(mean, np.float64) * (cohort_size / clipping_norm)))
        hit = np.zeros(len(self.directions), dtype=bool)
        hit[list(sampled)] = True
        self.sampled.append(hit)
        if unclipped_fraction is not None:
            self.counts.append(cohort_size * (unclipped_fraction - 0.5))

    @property
    def z(self) -> np.ndarray:
        """canaries × rounds."""
        return np.stack(self.projections, axis=1)

    @property
    def sampled_matrix(self) -> np.ndarray:
        """canaries × rounds: whether the canary was sampled in the round."""
        return np.stack(self.sampled, axis=1)


class ScoringServer(RecordingServer):
    """`RecordingServer` that shows every round's release to `observations`; with
    `noise_scale` < 1 or `count_scale` > 1, a DP-FedAvg whose update noise is too small or
    whose count's sensitivity is larger than declared (fault injection)."""

    def __init__(self, *, observations: Observations, noise_scale: float = 1.0, count_scale: float = 1.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        assert isinstance(self.strategy, DPFedAvg), "the canary audit audits DP-FedAvg"
        self.strategy: DPFedAvg = self.strategy
        self.observations = observations
        self.strategy.noise_factor = noise_scale
        self.strategy.count_scale = count_scale
        self.strategy.release_observer = self._released
        self._mean: list[np.ndarray] | None = None

    def _released(self, mean: list[np.ndarray]) -> None:
        self._mean = mean

    def fit_cohort(self, server_round: int, instructions: list, timeout: float | None):
        clipping_norm = self.strategy.clipping_norm  # the round's S (adaptive clipping moves it after)
        sampled = [proxy.index for proxy, _ in instructions if isinstance(proxy, CanaryClient)]
        self._mean = None
        parameters, metrics, outcome = super().fit_cohort(server_round, instructions, timeout)
        if self._mean is not None:
            fraction = metrics.get("noised_unclipped_fraction")
            self.observations.release(self._mean, self.strategy.clients_per_round, clipping_norm, sampled,
                                      None if fraction is None else float(fraction))
        return parameters, metrics, outcome


def epsilon_at(noise_multiplier: float, privacy: dict[str, Any]) -> float:
    """The run's accountant's ε at its δ, q and rounds for `noise_multiplier`: 0 for an
    infinite one (nothing measured), and for the PRV accountant at least
    `PRV_SMALLEST_SIGMA` (its grid grows as σ shrinks: minutes and gigabytes, or inf, below
    about 0.2); ε falls as σ grows, so that figure understates, and a bound stays a bound."""
    if not math.isfinite(noise_multiplier):
        return 0.0
    if privacy["accountant"] == SkellamAccountant.kind:  # distributed DP: σ over S, Δ₂ ≈ S/γ in integer units
        (mechanism,) = privacy["mechanisms"]
        scaled = mechanism["sensitivity"] / (1 + mechanism["rounding_norm_increase"])
        return skellam_epsilon(noise_multiplier * scaled / mechanism["sensitivity"], mechanism["sensitivity"],
                               mechanism["l1_sensitivity"], privacy["sampling_rate"], privacy["rounds_accounted"],
                               privacy["delta"])
    if privacy["accountant"] == "prv":
        noise_multiplier = max(noise_multiplier, PRV_SMALLEST_SIGMA)
    return epsilon_after(noise_multiplier, privacy["sampling_rate"], privacy["rounds_accounted"],
                         privacy["delta"], privacy["accountant"])


def epsilon_as_run(privacy: dict[str, Any], noise_scale: float, count_scale: float) -> float:
    """The accountant's ε of the mechanism as it ran: the declared update noise × `noise_scale`
    and the count's noise multiplier ÷ `count_scale` (its sensitivity × it); the reported ε
    without a fault, inf without update noise."""
    if noise_scale == 0:
        return math.inf
    if noise_scale == 1 and count_scale == 1:
        return privacy["epsilon"]
    if privacy["accountant"] == SkellamAccountant.kind:
        (mechanism,) = privacy["mechanisms"]
        return skellam_epsilon(mechanism["noise_multiplier"] * noise_scale, mechanism["sensitivity"],
                               mechanism["l1_sensitivity"], privacy["sampling_rate"], privacy["rounds_accounted"],
                               privacy["delta"])
    scale = {UPDATE_SUM: noise_scale, UNCLIPPED_COUNT: 1 / count_scale}
    ran = [Mechanism(m["name"], m["unit"], m["sensitivity"], m["noise_multiplier"] * scale[m["name"]])
           for m in privacy["mechanisms"]]
    return epsilon_at(effective_noise_multiplier(ran), privacy)


def audit_figures(seen: Observations, included: np.ndarray, privacy: dict[str, Any],
                  confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The audit's statistics (strategies/privacy/audit.py) from what the auditor saw:
    each bound at 1 − (1 − `confidence`)/2, so that both hold together at `confidence`."""
    # the noise std over S (distributed DP declares it over Δ₂ = S/γ plus rounding's extra)
    declared = {m["name"]: m["noise_multiplier"] * (1 + m.get("rounding_norm_increase", 0.0))
                for m in privacy["mechanisms"]}
    each = 1 - (1 - confidence) / 2
    z, sampled = seen.z, seen.sampled_matrix
    scores = subsampled_gaussian_scores(z, privacy["sampling_rate"], declared[UPDATE_SUM])
    one_run = audit_one_run(scores, included, privacy["delta"], confidence=each)
    update = gaussian_fit(z, included, sampled, confidence=each)
    multipliers: dict[str, tuple[float | str, float]] = {UPDATE_SUM: (CLIPPED_SUM, update.noise_multiplier)}
    figures = {
        "epsilon_reported": privacy["epsilon"], "delta": privacy["delta"],
        "epsilon_lower_95": one_run.epsilon_lower,
        "epsilon_gaussian_95": epsilon_at(update.noise_multiplier_upper, privacy),
        "guesses": one_run.guesses, "correct_guesses": one_run.correct,
        "update_noise_multiplier": update.noise_multiplier, "update_noise_multiplier_upper":
            update.noise_multiplier_upper, "update_noise_multiplier_declared": declared[UPDATE_SUM],
        "canary_effect": update.effect, "canary_effect_lower": update.effect_lower, "update_noise": update.noise,
    }
    if seen.counts:
        count = count_fit(seen.counts, sampled.sum(axis=0), confidence=each)
        multipliers[UNCLIPPED_COUNT] = (COUNT_SENSITIVITY, count.noise_multiplier)
        figures |= {"count_noise_multiplier": count.noise_multiplier,
                    "count_noise_multiplier_declared": declared[UNCLIPPED_COUNT],
                    "count_effect": count.effect, "count_effect_lower": count.effect_lower, "count_noise": count.noise}
    measured = [Mechanism(name, "client", sensitivity, sigma)
                for name, (sensitivity, sigma) in multipliers.items() if 0 < sigma < math.inf]
    figures["epsilon_estimate"] = epsilon_at(effective_noise_multiplier(measured), privacy) if measured else 0.0
    figures["violation"] = max(figures["epsilon_lower_95"], figures["epsilon_gaussian_95"]) > privacy["epsilon"]
    return figures


def simulated_audit(rng: np.random.Generator, noise_multiplier: float, count_stddev: float, delta: float,
                    noise_scale: float = 1.0, count_scale: float = 1.0, **setting: Any) -> dict[str, Any]:
    """The audit's figures on an ideal DP-FedAvg round after round, simulated without
    training (`simulate_canaries`; `setting`: canaries, rounds, clients, cohort): σ and σ_b
    as declared, RDP, adaptive clipping's two mechanisms; the update noise × `noise_scale`
    and the count's effect × `count_scale` as run."""
    update_sigma = update_noise_multiplier(noise_multiplier, count_stddev)
    sim = simulate_canaries(rng, update_sigma * noise_scale, count_stddev, COUNT_SENSITIVITY * count_scale, **setting)
    seen = Observations(np.zeros((len(sim.included), 1)), list(sim.z.T), list(sim.sampled.T), list(sim.counts))
    rounds = sim.z.shape[1]
    privacy = {"epsilon": epsilon_after(noise_multiplier, sim.q, rounds, delta, "rdp"), "delta": delta,
               "sampling_rate": sim.q, "rounds_accounted": rounds, "accountant": "rdp",
               "mechanisms": [m.as_dict() for m in (
                   Mechanism(UPDATE_SUM, "client", CLIPPED_SUM, update_sigma),
                   Mechanism(UNCLIPPED_COUNT, "client", COUNT_SENSITIVITY, count_stddev / COUNT_SENSITIVITY))]}
    return audit_figures(seen, sim.included, privacy) | {
        "epsilon_true": epsilon_as_run(privacy, noise_scale, count_scale), "canaries_included": int(sim.included.sum()),
        "noise_scale": noise_scale, "count_scale": count_scale, "sampling_rate": sim.q, "rounds": rounds}


def run_audit(run_config: dict[str, Any], num_clients: int, canaries: int, run_dir: Path,
              noise_scale: float = 1.0, count_scale: float = 1.0,
              rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Run the configured central-DP federation with `canaries` canary clients (each
    included with probability ½) and return the audit's figures (also in audit.json)."""
    cfg = AppConfig.from_run_config(run_config)
    if not cfg.dp.central:
        raise ConfigError(f"Invalid run-config: dp-mode = '{cfg.dp.mode}' (allowed: 'central' or 'distributed'; "
                          "the audit measures client-level DP-FedAvg)")
    if count_scale != 1.0 and cfg.dp.clipping != "adaptive":
        raise ConfigError(f"--fault count-sensitivity needs dp-clipping = 'adaptive' (got '{cfg.dp.clipping}': "
                          "no count is released)")
    if canaries < 4:
        raise ValueError(f"--canaries = {canaries} (allowed: at least 4)")
    rng = rng or np.random.default_rng(os_entropy_seed_sequence())  # the auditor's secret
    dimension = sum(w.size for w in get_weights(seeded_model(cfg.train.model, cfg.run.seed)))
    directions = random_directions(canaries, dimension, rng)
    included = rng.random(canaries) < 0.5
    clients = [CanaryClient(int(i), directions[i], cfg) for i in np.flatnonzero(included)]
    seen = Observations(directions)
    workers = 1 if uses_dropout(cfg.train.model) else os.cpu_count() or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if workers > 1 else threads)  # one torch thread per client training at once
    try:
        run_federation(run_config, num_clients, cfg.data.data_dir, run_dir, extra_clients=clients,
                       server_class=ScoringServer, workers=workers,
                       server_options={"observations": seen, "noise_scale": noise_scale, "count_scale": count_scale})
    finally:
        torch.set_num_threads(threads)
    run = RunDir(run_dir)
    privacy = run.read_summary()["privacy"]
    figures = audit_figures(seen, included, privacy) | {
        "epsilon_true": epsilon_as_run(privacy, noise_scale, count_scale),
        "canaries": canaries, "canaries_included": int(included.sum()),
        "noise_scale": noise_scale, "count_scale": count_scale,
        "population": privacy["population"], "rounds": privacy["rounds_accounted"],
        "sampling_rate": privacy["sampling_rate"], "noise_multiplier": privacy["noise_multiplier"],
        "accountant": privacy["accountant"], "model": run.read_config()["model"],
    }
    run.write_audit(figures)
    return figures


def report(figures: dict[str, Any]) -> list[str]:
    """The printed table and the last line."""
    rows = [
        ("epsilon reported (accountant)", f"{figures['epsilon_reported']:.4g} at delta {figures['delta']:g}"),
        ("epsilon lower bound, any mechanism (95%)",
         (f"{figures['epsilon_lower_95']:.4g}  ({figures['correct_guesses']} of {figures['guesses']} guesses "
          "right; Steinke et al. 2023)")),
        ("epsilon lower bound, Gaussian (95%)",
         (f"{figures['epsilon_gaussian_95']:.4g}  (the accountant at the measured noise multiplier's 95% "
          "limit; Nasr et al. 2023)")),
        ("epsilon estimate", f"{figures['epsilon_estimate']:.4g}  (the accountant at the measured noise multipliers)"),
        ("update sum: noise multiplier",
         (f"{figures['update_noise_multiplier']:.4g} measured (<= {figures['update_noise_multiplier_upper']:.4g}), "
          f"{figures['update_noise_multiplier_declared']:.4g} declared")),
        ("update sum: canary effect / S",
         f"{figures['canary_effect']:.3f} (>= {figures['canary_effect_lower']:.3f}), 1 declared"),
    ]
    if "count_effect" in figures:
        rows += [
            ("count: noise multiplier", (f"{figures['count_noise_multiplier']:.4g} measured, "
                                         f"{figures['count_noise_multiplier_declared']:.4g} declared")),
            ("count: canary effect", (f"{figures['count_effect']:.3f} (>= {figures['count_effect_lower']:.3f}), "
                                      f"{COUNT_SENSITIVITY:g} declared")),
        ]
    rows.append(("canaries", f"{figures['canaries']} ({figures['canaries_included']} included)"))
    if figures["noise_scale"] != 1.0:
        rows.append(("FAULT INJECTED", (f"update noise x {figures['noise_scale']:g} "
                                        f"(true epsilon {figures['epsilon_true']:.4g})")))
    if figures["count_scale"] != 1.0:
        rows.append(("FAULT INJECTED", (f"count sensitivity x {figures['count_scale']:g} "
                                        f"(true epsilon {figures['epsilon_true']:.4g})")))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if figures["violation"]:
        lines.append("VIOLATION: a measured lower bound exceeds the reported epsilon")
    lines.append(f"epsilon_reported={figures['epsilon_reported']:.4f} "
                 f"epsilon_lower_95={figures['epsilon_lower_95']:.4f} "
                 f"epsilon_gaussian_95={figures['epsilon_gaussian_95']:.4f} "
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


def survivors(cohort: Sequence[Reply], clipping_norm: float, secagg: SecAggConfig
              ) -> list[tuple[Reply, list[np.ndarray]]]:
    """The clipped updates SecAgg+ sums for a cohort (fl_app/secure_aggregation.py): each
    client clips its update to S and does not send a non-finite one (as fl_app/client.py
    does); none when SecAgg+ halts (more clients send nothing than `tolerated_dropouts`
    allows); a cohort of one sends its clipped update without SecAgg+. Each with its reply."""
    updates = []
    for reply in cohort:
        if reply.arrays is not None:
            with np.errstate(invalid="ignore"):  # a non-finite update clips to NaN
                update, _ = clip_update(list(reply.arrays), clipping_norm)
            if all(np.isfinite(a).all() for a in update):
                updates.append((reply, update))
    if len(cohort) >= 2 and len(cohort) - len(updates) > tolerated_dropouts(
            len(cohort), secagg.num_shares, secagg.reconstruction_threshold):
        return []
    return updates


def secure_aggregate(cohort: Sequence[Reply], clipping_norm: float, secagg: SecAggConfig
                     ) -> list[tuple[ClientProxy, FitRes]]:
    """What DP-FedAvg receives from a SecAgg+ round: K results holding the mean of the K
    `survivors`' updates, weighted 1 each (none when there is no survivor)."""
    updates = [update for _, update in survivors(cohort, clipping_norm, secagg)]
    if not updates:
        return []
    mean = [np.mean([u[i].astype(np.float64) for u in updates], axis=0) for i in range(len(updates[0]))]
    return [(AuditedClient(f"client-{k}"), FitRes(OK, ndarrays_to_parameters(mean), 1, {}))
            for k in range(len(updates))]


def unnoised_release(strategy: DPFedAvg, cohort: Sequence[Reply], secagg: SecAggConfig) -> Release:
    """The strategy's released quantities before noise for a round with these replies."""
    results = (secure_aggregate(cohort, strategy.clipping_norm, secagg) if strategy.secure_aggregation
               else fit_results(cohort))
    return strategy.unnoised_round(1, results).released()


def distributed_unnoised_release(strategy: DistributedDPFedAvg, cohort: Sequence[Reply], secagg: SecAggConfig,
                                 rounding_seeds: dict[Reply, int]) -> Release:
    """Distributed DP's released quantity before noise, in integer units: the sum of the
    survivors' rounded vectors (each encoded as the clients encode, without noise; zero
    when there is no sum). Each reply rounds with its own generator, seeded by
    `rounding_seeds` (a new reply gets the next seed), so that neighbouring cohorts share
    the other clients' draws, as the sensitivity argument couples them."""
    s = strategy.skellam
    signs = rotation_signs(rotation_seed(strategy.seed, 1), s.padded_dimension)
    total = np.zeros(s.padded_dimension, dtype=np.int64)
    for reply, update in survivors(cohort, strategy.clipping_norm, secagg):
        seed = rounding_seeds.setdefault(reply, len(rounding_seeds))
        residues = encode_update(flat(update, np.float64), signs=signs, scale=s.scale, norm_bound=s.l2_sensitivity,
                                 noise_variance=0.0, modulus=s.modulus, rng=np.random.default_rng(seed))
        total += centred(residues, s.modulus)
    return {UPDATE_SUM: [total]}


def mechanism_audit(run_config: dict[str, Any], sensitivity_scale: float = 1.0,
                    rng: np.random.Generator | None = None) -> tuple[list[SensitivityCheck], int]:
    """The configured DP-FedAvg's sensitivity checks (see the module) and the number of
    mechanisms it declares; every declared sensitivity × `sensitivity_scale`. σ is
    dp-noise-multiplier, or 1 where it would be calibrated: no sensitivity depends on it."""
    cfg = AppConfig.from_run_config(run_config)
    if not cfg.dp.central:
        raise ConfigError(f"Invalid run-config: dp-mode = '{cfg.dp.mode}' (allowed: 'central' or 'distributed'; "
                          "the audit checks client-level DP-FedAvg)")
    rng = rng or np.random.default_rng(cfg.run.seed)
    reference = [rng.normal(size=shape).astype(np.float32) for shape in AUDITED_SHAPES]
    initial = ndarrays_to_parameters(reference)
    options: dict[str, Any] = dict(
        clipping=cfg.dp.clipping, clipping_norm=cfg.dp.clipping_norm,
        noise_multiplier=cfg.dp.noise_multiplier or 1.0, clients_per_round=cfg.dp.clients_per_round,
        target_epsilon=None, rounds=None, server_learning_rate=1.0, target_quantile=cfg.dp.target_quantile,
        clip_learning_rate=cfg.dp.clip_learning_rate, clipped_count_stddev=cfg.dp.clipped_count_stddev,
        secure_aggregation=cfg.secagg.enabled, randomness=DPRandomness(cfg.run.seed, reproducible=False),
        min_available_clients=1,
    )
    parts = (WeightedFedAvg(initial_parameters=initial), UpdateScreen(initial, log_rejections=False))
    cases = neighbouring_cohorts(reference, cfg.dp.clipping_norm, sends_deltas=cfg.dp.clipping == "client",
                                 foreign_clients=not cfg.secagg.enabled, rng=rng)
    strategy: DPFedAvg
    release: Callable[[Sequence[Reply]], Release]
    l1_bounds: dict[str, float] = {}
    if cfg.dp.mode == "distributed":
        distributed = DistributedDPFedAvg(
            *parts, **options, accountant=SkellamAccountant(cfg.dp.delta), bits=cfg.dp.bits,
            dimension=sum(int(np.prod(shape)) for shape in AUDITED_SHAPES), seed=cfg.run.seed, secure_sum=False,
            threshold=lambda k: unmask_threshold(k, cfg.secagg.num_shares, cfg.secagg.reconstruction_threshold))
        distributed.population = [str(k) for k in range(max(math.ceil(cfg.dp.clients_per_round), 1))]
        distributed.settle_noise()
        strategy = distributed
        release = functools.partial(distributed_unnoised_release, distributed, secagg=cfg.secagg,
                                    rounding_seeds={})
        l1_bounds = {UPDATE_SUM: sensitivity_scale * distributed.skellam.l1_sensitivity}
    else:
        strategy = DPFedAvg(*parts, **options, accountant=ClientLevelAccountant(cfg.dp.accountant, cfg.dp.delta))
        release = functools.partial(unnoised_release, strategy, secagg=cfg.secagg)
    declared = strategy.mechanisms()
    bounds = {m.name: sensitivity_scale * m.sensitivity_value(strategy.clipping_norm) for m in declared}
    return check_sensitivity(release, bounds, cases, l1_bounds), len(declared)


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


CANARY_FAULTS = ("noise-scale", "count-sensitivity")


def parse_fault(text: str) -> tuple[str, float]:
    """`noise-scale=F` (0 <= F < 1), `count-sensitivity=F` (F > 1) or
    `sensitivity-scale=F` (F > 0) → (name, F)."""
    name, _, value = text.partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = math.nan
    if ((name == "noise-scale" and 0 <= scale < 1) or (name == "count-sensitivity" and 1 < scale < math.inf)
            or (name == "sensitivity-scale" and 0 < scale < math.inf)):
        return name, scale
    raise argparse.ArgumentTypeError(f"--fault {text!r} (allowed: noise-scale=F with 0 <= F < 1, "
                                     "count-sensitivity=F with F > 1, sensitivity-scale=F with F > 0 and --mechanisms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_app.audit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--mechanisms", action="store_true",
                        help="check every declared mechanism's sensitivity instead (no training)")
    parser.add_argument("--num-clients", type=int, help="MNIST clients (partitions); required without --mechanisms")
    parser.add_argument("--canaries", type=int, default=1000, help="canary clients, each included with p = 1/2")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--fault", type=parse_fault, default=None,
                        metavar="noise-scale=F|count-sensitivity=F|sensitivity-scale=F",
                        help="fault injection: update noise x F, or the count's sensitivity x F (canary audit); "
                             "declared sensitivities x F (--mechanisms)")
    args = parser.parse_args(argv)
    fault_name, fault_scale = args.fault or (None, 1.0)
    if fault_name == "sensitivity-scale" and not args.mechanisms:
        parser.error("--fault sensitivity-scale=F needs --mechanisms")
    if fault_name in CANARY_FAULTS and args.mechanisms:
        parser.error(f"--fault {fault_name}=F is for the canary audit, not --mechanisms")
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
        quorum = min(cfg.strategy.min_available_clients, args.num_clients)
        figures = run_audit(run_config | {"min-available-clients": quorum},
                            args.num_clients, args.canaries, run_dir,
                            noise_scale=fault_scale if fault_name == "noise-scale" else 1.0,
                            count_scale=fault_scale if fault_name == "count-sensitivity" else 1.0)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report(figures):
        print(line)
    print(f"run directory: {run_dir}", file=sys.stderr)
    return 1 if figures["violation"] else 0


if __name__ == "__main__":
    sys.exit(main())
