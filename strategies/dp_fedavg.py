"""Central client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", ICLR) as a Flower strategy that wraps another.

Per round `DPFedAvg` Poisson-samples the fixed population at rate q = m/N, screens the
replies (`UpdateScreen`), clips each Δ_k = w_k − w to norm S (or checks the clients'
clipping), sums, adds N(0, σ²S² I), divides by the fixed m, steps the accountant once
with (σ, q) and hands the released model w + η·mean to its inner strategy: a Flower
server optimizer (FedAvgM, FedAdam, ...) that steps on it, or `WeightedFedAvg`, which
takes it as it is. Both are post-processing and cost no privacy. What a round releases
is declared in the privacy ledger (`DPFedAvg.mechanisms`), and the accountant steps with
the noise multiplier the declared mechanisms compose to. The math lives in
strategies/privacy/ (`mechanism`, `sampling`, `accounting`, `adaptive_clipping`,
`ledger`, `randomness`); this module only orchestrates it.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    MetricsAggregationFn,
    Parameters,
    Scalar,
    Status,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from strategies.aggregation import server_step, weighted_metric_means
from strategies.privacy.accounting import ClientLevelAccountant, calibrate_noise_multiplier, rounds_within_budget
from strategies.privacy.adaptive_clipping import (
    COUNT_SENSITIVITY,
    centred_unclipped_count,
    check_count_noise,
    next_clipping_norm,
    noised_unclipped_fraction,
    update_noise_multiplier,
)
from strategies.privacy.ledger import CLIPPED_SUM, Mechanism, effective_noise_multiplier
from strategies.privacy.mechanism import (
    NORM_SLACK,
    SECURE_NORM_SLACK,
    clipped_deltas,
    clipping_statistics,
    global_l2_norm,
    noisy_mean,
    sum_updates,
    within_norm,
)
from strategies.privacy.randomness import DPRandomness
from strategies.privacy.sampling import poisson_sample
from strategies.privacy.statement import central_privacy
from strategies.screening import AroundStrategy, FitFailures, UpdateScreen
from strategies.state import load_strategy_state, strategy_state
from strategies.wire import CLIENT_CLIP_NORM

CLIPPING_MODES = ("server", "client", "adaptive")
OK = Status(Code.OK, "")
UPDATE_SUM, UNCLIPPED_COUNT = "update_sum", "unclipped_count"  # the mechanisms' names in the ledger


@dataclass
class UnnoisedRound:
    """What a round releases before its noise, the clipped sum and (adaptive clipping)
    the centred count of unclipped updates, and the facts its diagnostics need: the
    accepted results, the update norms and the number of rejected results."""

    update_sum: list[np.ndarray]
    unclipped_count: float | None
    accepted: list[tuple[ClientProxy, FitRes]]
    norms: list[float]
    rejected: int

    def released(self) -> dict[str, list[np.ndarray] | float]:
        """The quantities by the names of the mechanisms that noise them (the ledger's)."""
        if self.unclipped_count is None:
            return {UPDATE_SUM: self.update_sum}
        return {UPDATE_SUM: self.update_sum, UNCLIPPED_COUNT: self.unclipped_count}


def clients_by_key(client_manager: ClientManager) -> dict[str, ClientProxy]:
    """Connected clients by their stable key (a `KeyedClientManager`'s), else by node id."""
    by_key = getattr(client_manager, "by_key", None)
    return by_key() if by_key else client_manager.all()


class DPFedAvg(AroundStrategy):
    """Client-level (ε, δ)-DP around `inner`: clipping norm S, noise multiplier σ, expected
    cohort size m, Poisson sampling, an accountant and an optional ε budget.

    The population N is the number of clients connected when round 1 is configured
    (after waiting for `min_available_clients`), identified by their stable keys, so a
    resumed run samples the same clients; q = m/N must lie in (0, 1]. Without a
    `noise_multiplier`, σ is calibrated then so that `rounds` rounds spend at most
    `target_epsilon`; with both, the target is a budget stop (`stop_reason`).

    Every round releases a noised model, whatever replies arrive: a sampled client that
    fails, or whose reply the screen or the norm check refuses, counts as not having
    participated, and the denominator stays m. No round is skipped for failures
    (`max-failure-fraction`) or for too few usable replies (`min-fit-clients`): a skip
    decided on the clients' replies would itself be a release outside ε, and an empty
    cohort is a valid round of the mechanism (noise only).

    `clipping` is "server" (clip what arrives), "client" (clients send clip(Δ_k, S); one
    longer than S is refused) or "adaptive" (server clipping with S following
    `target_quantile` of the update norms, Andrew et al. 2021; the update noise then uses
    σ_Δ so that the round still costs one step of σ). Under `secure_aggregation` the
    server sees only SecAgg+'s mean of the K client-clipped updates, weighted 1 each, and
    recovers the sum as K × mean. Only for the privacy audit (fl_app.audit):
    `release_observer` is called with each round's released noised mean, and two fault
    injections, `noise_factor` < 1 (the update noise × it) and `count_scale` > 1 (each
    client's centred count × it: sensitivity ½·count_scale while ½ is declared).
    Initialisation and evaluation are `inner`'s; `state_dict()` holds everything a
    resumed run needs.
    """

    def __init__(
        self,
        inner: Strategy,
        screen: UpdateScreen,
        *,
        clipping: str,
        clipping_norm: float,
        noise_multiplier: float | None,
        clients_per_round: float,
        accountant: ClientLevelAccountant,
        target_epsilon: float | None,
        rounds: int | None,
        server_learning_rate: float,
        target_quantile: float,
        clip_learning_rate: float,
        clipped_count_stddev: float,
        secure_aggregation: bool,
        randomness: DPRandomness,
        min_available_clients: int,
        on_fit_config_fn: Callable[[int], dict[str, Scalar]] | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = weighted_metric_means,
        server_step_factor: Callable[[int], float] | None = None,
    ) -> None:
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping must be one of {CLIPPING_MODES}, got {clipping!r}")
        if not clipping_norm > 0 or not clients_per_round > 0:
            raise ValueError("clipping_norm and clients_per_round must be > 0")
        if noise_multiplier is None and (target_epsilon is None or rounds is None):
            raise ValueError("give noise_multiplier, or target_epsilon and rounds to calibrate it")
        if noise_multiplier is not None and not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
        if secure_aggregation and clipping != "client":
            raise ValueError("secure aggregation needs clipping = 'client': the server never "
                             "sees an individual update to clip")
        super().__init__(inner, screen)
        self.clipping = clipping
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.clients_per_round = clients_per_round
        self.accountant = accountant
        self.target_epsilon = target_epsilon
        self.rounds = rounds
        self.server_learning_rate = server_learning_rate
        self.target_quantile = target_quantile
        self.clip_learning_rate = clip_learning_rate
        self.clipped_count_stddev = clipped_count_stddev
        self.secure_aggregation = secure_aggregation
        self.randomness = randomness
        self.min_available_clients = min_available_clients
        self.on_fit_config_fn = on_fit_config_fn
        self.fit_metrics_aggregation_fn = fit_metrics_aggregation_fn
        self.server_step_factor = server_step_factor
        self.noise_factor = 1.0
        self.count_scale = 1.0
        self.release_observer: Callable[[list[np.ndarray]], None] | None = None
        self.population: list[str] | None = None
        self.global_weights = screen.reference  # the round's model, from configure_fit on
        self.cohort_size = 0

    def __repr__(self) -> str:
        return (f"DPFedAvg(S={self.clipping_norm}, sigma={self.noise_multiplier}, "
                f"m={self.clients_per_round}, clipping={self.clipping})")

    @property
    def sampling_rate(self) -> float:
        """q = m / N (known once the population is fixed)."""
        if self.population is None:
            raise RuntimeError("the population is fixed when round 1 is configured")
        return self.clients_per_round / len(self.population)

    @property
    def update_sigma(self) -> float:
        """The update sum's noise multiplier: σ, or σ_Δ under adaptive clipping."""
        assert self.noise_multiplier is not None, "σ is settled when the population is fixed"
        if self.clipping == "adaptive":
            return update_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        return self.noise_multiplier

    def mechanisms(self) -> list[Mechanism]:
        """What each round releases about the cohort (the privacy ledger): the noised sum
        of the clipped updates (sensitivity S) and, under adaptive clipping, the noised
        centred count of unclipped updates (sensitivity ½, noise std σ_b)."""
        released = [Mechanism(UPDATE_SUM, "client", CLIPPED_SUM, self.update_sigma)]
        if self.clipping == "adaptive":
            released.append(Mechanism(UNCLIPPED_COUNT, "client", COUNT_SENSITIVITY,
                                      self.clipped_count_stddev / COUNT_SENSITIVITY))
        return released

    @property
    def round_noise_multiplier(self) -> float:
        """The noise multiplier of one round, the declared mechanisms composed: σ up to
        float rounding (σ_Δ and the count's 2σ_b compose back to σ)."""
        return effective_noise_multiplier(self.mechanisms())

    def fix_population(self, client_manager: ClientManager) -> None:
        """Wait for `min_available_clients`, fix N, check q ∈ (0, 1] and settle σ (`settle_noise`)."""
        # Flower's ClientManager.wait_for lacks the default timeout of SimpleClientManager's
        client_manager.wait_for(self.min_available_clients)  # type: ignore[call-arg]
        self.population = sorted(clients_by_key(client_manager))
        if self.sampling_rate > 1:
            raise ValueError(
                f"dp-clients-per-round = {self.clients_per_round} exceeds the population of "
                f"{len(self.population)} clients (q must be in (0, 1])"
            )
        if self.accountant.delta >= 1 / len(self.population):
            log(WARNING, "dp-delta = %g is not below 1/population = %g: a δ this large "
                "allows the leak of a whole client's data", self.accountant.delta,
                1 / len(self.population))
        self.settle_noise()

    def settle_noise(self) -> None:
        """Calibrate σ for the target ε (or check that a given σ lasts the rounds); log
        the run's DP figures."""
        assert self.population is not None, "fixed by fix_population"
        if self.noise_multiplier is None:
            assert self.target_epsilon is not None and self.rounds is not None, "__init__ requires them without σ"
            self.noise_multiplier = calibrate_noise_multiplier(
                self.target_epsilon, self.accountant.delta, self.sampling_rate, self.rounds,
                self.accountant.kind,
            )
        elif self.target_epsilon is not None and self.rounds is not None:
            self._warn_of_an_early_stop(self.noise_multiplier, self.target_epsilon, self.rounds)
        if self.clipping == "adaptive" and (problem := check_count_noise(self.noise_multiplier,
                                                                         self.clipped_count_stddev)):
            raise ValueError(problem)  # a calibrated σ can leave no room for the count noise
        log(INFO, "DP: population N = %s, q = %.4f, sigma = %.4f, S = %g, %s accountant",
            len(self.population), self.sampling_rate, self.noise_multiplier,
            self.clipping_norm, self.accountant.kind)

    def _warn_of_an_early_stop(self, noise_multiplier: float, target_epsilon: float, rounds: int) -> None:
        """Log how many rounds the budget allows, if fewer than planned."""
        allowed = rounds_within_budget(noise_multiplier, self.sampling_rate, target_epsilon,
                                       self.accountant.delta, self.accountant.kind, rounds)
        if allowed < rounds:
            log(WARNING, "dp-noise-multiplier = %g with dp-target-epsilon = %g: the budget allows "
                "%s of the %s rounds, so training stops after round %s (set dp-noise-multiplier = 0 "
                "to calibrate sigma for all %s rounds instead)", noise_multiplier,
                target_epsilon, allowed, rounds, allowed, rounds)

    def stop_reason(self, server_round: int, client_manager: ClientManager) -> str | None:
        """Why round `server_round` must not run (it would exceed the ε budget), or None."""
        if self.population is None:
            self.fix_population(client_manager)
        if self.target_epsilon is None:
            return None
        next_epsilon = self.epsilon_after_next_round()
        if next_epsilon > self.target_epsilon:
            return (f"privacy budget reached: round {server_round} would raise epsilon from "
                    f"{self.accountant.epsilon():.4f} to {next_epsilon:.4f} > "
                    f"dp-target-epsilon = {self.target_epsilon}")
        return None

    def epsilon_after_next_round(self) -> float:
        """ε if one more round were released (the accountant is unchanged)."""
        return self.accountant.epsilon_after_next(self.round_noise_multiplier, self.sampling_rate)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Poisson-sample the cohort; clients clip locally in client mode."""
        if self.population is None:
            self.fix_population(client_manager)
        self.global_weights = parameters_to_ndarrays(parameters)
        config = self.on_fit_config_fn(server_round) if self.on_fit_config_fn else {}
        if self.clipping == "client":
            config[CLIENT_CLIP_NORM] = self.clipping_norm
        assert self.population is not None, "fixed by fix_population"
        cohort = poisson_sample(self.population, self.sampling_rate, self.randomness.sampling)
        self.cohort_size = len(cohort)
        connected = clients_by_key(client_manager)
        fit_ins = FitIns(parameters, config)
        return [(connected[key], fit_ins) for key in cohort if key in connected]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: FitFailures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Release the noised mean whatever replies arrived, account, let `inner` step."""
        unnoised = self.unnoised_round(server_round, results)
        mean = noisy_mean(
            unnoised.update_sum,
            clipping_norm=self.clipping_norm,
            noise_multiplier=self.update_sigma * self.noise_factor,
            expected_cohort_size=self.clients_per_round,
            rng=self.randomness.noise,
        )
        if self.release_observer is not None:
            self.release_observer(mean)
        parameters = self._step(server_round, mean)
        self.accountant.step(self.round_noise_multiplier, self.sampling_rate)
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None and unnoised.accepted:
            metrics.update(self.fit_metrics_aggregation_fn(
                [(r.num_examples, r.metrics) for _, r in unnoised.accepted]))
        metrics.update(self._diagnostics(unnoised.norms, unnoised.rejected))
        if unnoised.unclipped_count is not None:  # adaptive clipping
            fraction = noised_unclipped_fraction(
                self.count_scale * unnoised.unclipped_count, self.clipped_count_stddev, self.clients_per_round,
                self.randomness.noise,
            )
            metrics["noised_unclipped_fraction"] = fraction
            self.clipping_norm = next_clipping_norm(
                self.clipping_norm, fraction, self.target_quantile, self.clip_learning_rate
            )
        return parameters, metrics

    def unnoised_round(self, server_round: int, results: list[tuple[ClientProxy, FitRes]]) -> UnnoisedRound:
        """The round's released quantities before noise, computed from the replies as
        `aggregate_fit` releases them (the screen, clipping or the norm check, SecAgg+'s
        K × mean): what the sensitivity audit (`strategies.privacy.sensitivity`) measures."""
        norms: list[float] = []
        accepted: list[tuple[ClientProxy, FitRes]] = []
        if self.secure_aggregation:
            clipped: Iterable[list[np.ndarray]] = self._securely_summed(server_round, results)
        else:
            screened = self.screen.screened(server_round, results, self._client_clipping_problem)
            clipped = self._clipped_updates(screened, accepted, norms)
        update_sum = sum_updates(clipped, self.screen.expected_shapes)
        if self.secure_aggregation:  # one securely summed aggregate stands for the whole cohort
            rejected = 0 if clipped else len(results)
        else:
            rejected = len(results) - len(norms)
        count = centred_unclipped_count(norms, self.clipping_norm) if self.clipping == "adaptive" else None
        return UnnoisedRound(update_sum, count, accepted, norms, rejected)

    def _step(self, server_round: int, mean: list[np.ndarray]) -> Parameters | None:
        """`inner`'s next model from the released w + η·f(t)·mean (f: `server_step_factor`,
        1 without it), handed over as one result of weight 1; post-processing of the noised
        mean, so outside the privacy accounting."""
        factor = self.server_step_factor(server_round) if self.server_step_factor else 1.0
        released = ndarrays_to_parameters(server_step(self.global_weights, mean, self.server_learning_rate * factor))
        # no client stands behind the released model: Flower's strategies never read a result's proxy
        parameters, _ = self.inner.aggregate_fit(
            server_round, [(None, FitRes(OK, released, 1, {}))], [])  # type: ignore[list-item]
        return parameters

    def _securely_summed(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[list[np.ndarray]]:
        """[K × SecAgg+'s mean of the K unit-weighted updates], or [] (none, or refused)."""
        if not results:
            return []
        mean = list(self.screen.screened(server_round, results[:1], self._secure_mean_problem, any_float=True))
        if not mean:
            return []
        return [[a.astype(np.float64) * len(results) for a in mean[0][2]]]

    def _secure_mean_problem(self, arrays: list[np.ndarray], res: FitRes) -> str | None:
        """Why SecAgg+'s mean is refused (not unit weights, or longer than S), or None."""
        if res.num_examples != 1:
            return f"secure aggregation needs unit weights, got num_examples = {res.num_examples}"
        if not within_norm(arrays, self.clipping_norm, SECURE_NORM_SLACK):
            return f"securely aggregated mean is longer than S = {self.clipping_norm}"
        return None

    def _client_clipping_problem(self, arrays: list[np.ndarray], res: FitRes) -> str | None:
        """In client mode, why an update is refused (longer than S), or None."""
        if self.clipping == "client" and not within_norm(arrays, self.clipping_norm, NORM_SLACK):
            return f"client-clipped update is longer than S = {self.clipping_norm}"  # its norm stays private
        return None

    def _clipped_updates(
        self, screened: Iterator[tuple[ClientProxy, FitRes, list[np.ndarray]]],
        accepted: list[tuple[ClientProxy, FitRes]], norms: list[float],
    ) -> Iterator[list[np.ndarray]]:
        """Each screened Δ clipped (client mode: as sent), read and released one at a time;
        the results to `accepted`, the norms to `norms`."""
        def weights() -> Iterator[list[np.ndarray]]:
            for proxy, res, arrays in screened:
                accepted.append((proxy, res))
                yield arrays

        if self.clipping != "client":
            yield from clipped_deltas(weights(), self.global_weights, self.clipping_norm, norms)
            return
        for arrays in weights():
            norms.append(global_l2_norm(arrays))
            yield arrays

    def _diagnostics(self, norms: list[float], rejected: int) -> dict[str, Scalar]:
        """ε, cohort size, S and the exact clipping figures (outside ε, see privacy/release.py)."""
        slack = NORM_SLACK if self.clipping == "client" else 0.0  # a client-clipped update at S counts as clipped
        return {
            "epsilon": self.accountant.epsilon(),
            "cohort_size": self.cohort_size,
            "num_rejected": rejected,
            **clipping_statistics(norms, self.clipping_norm, slack),
            "clipping_norm": self.clipping_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        """Accountant, σ, S, population, `inner`'s state, generators (reproducible mode only)."""
        return {
            "accountant": self.accountant.state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "population": self.population,
            "randomness": self.randomness.state_dict(),
            "server_optimizer": strategy_state(self.inner),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: ε goes on from where it was."""
        self.accountant.load_state_dict(state["accountant"])
        self.noise_multiplier = state["noise_multiplier"]
        self.clipping_norm = state["clipping_norm"]
        self.population = state["population"]
        self.randomness.load_state_dict(state["randomness"])
        if state["server_optimizer"] is not None:
            load_strategy_state(self.inner, state["server_optimizer"])

    def summary(self) -> dict[str, Any]:
        """The run's privacy statement, under `privacy`, with the ledger of one round."""
        mechanisms = self.mechanisms() if self.noise_multiplier is not None else []
        return {"privacy": central_privacy(
            epsilon=self.accountant.epsilon(),
            target_epsilon=self.target_epsilon,
            delta=self.accountant.delta,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate if self.population else float("nan"),
            rounds_accounted=self.accountant.rounds,
            accountant=self.accountant.kind,
            clipping=self.clipping,
            clipping_norm=self.clipping_norm,
            clients_per_round=self.clients_per_round,
            population=len(self.population) if self.population else 0,
            secure_aggregation=self.secure_aggregation,
            reproducible_noise=self.randomness.reproducible,
            mechanisms=[m.as_dict() for m in mechanisms],
            effective_noise_multiplier=effective_noise_multiplier(mechanisms) if mechanisms else None,
            epsilon_against_sampled_clients=(self.accountant.epsilon_without_sampling()
                                             if self.secure_aggregation else None),
        )}
