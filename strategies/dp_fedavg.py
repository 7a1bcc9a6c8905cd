"""Central client-level DP-FedAvg (McMahan et al. 2018) as a Flower strategy.

Per round: Poisson-sample the fixed population at rate q = m/N; take each returned
update Δ_k = w_k − w_global over every tensor; clip it to norm S (here, or trust the
clients' clipping after checking its norm); release (Σ clipped Δ_k + N(0, σ²S² I)) / m;
set w ← w + η·mean; step the accountant once with (σ, q). Under secure aggregation the
server only ever sees the mean of the K clients' clipped updates (Flower's SecAgg+
with every client weighted 1), so it recovers the sum as K × mean. With adaptive clipping the
server clips, S follows a target quantile of the update norms, and the update noise
uses σ_Δ so that the round still costs one step of σ (see `adaptive_clipping`). The math lives in
`dp_mechanism`, `sampling` and `accounting`; this module is the Flower glue. Sampling
and noise come from `dp_randomness` (OS entropy unless `dp-reproducible-noise`).
"""

from collections.abc import Iterable, Iterator
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    FitIns,
    FitRes,
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

from strategies.privacy.accounting import ClientLevelAccountant, calibrate_noise_multiplier, rounds_within_budget
from strategies.privacy.adaptive_clipping import (
    next_clipping_norm,
    noised_unclipped_fraction,
    update_noise_multiplier,
)
from strategies.privacy.mechanism import clipped_deltas, global_l2_norm, noisy_mean
from strategies.privacy.randomness import DPRandomness
from strategies.fedavg import FedAvg
from strategies.privacy.statement import central_privacy
from strategies.privacy.sampling import poisson_sample
from strategies.screening import Failures, Screened
from strategies.state import load_strategy_state, strategy_state
from strategies.wire import CLIENT_CLIP_NORM

CLIPPING_MODES = ("server", "client", "adaptive")
NORM_SLACK = 1e-5  # float32 rounding allowed on client-clipped norms
OK = Status(Code.OK, "")
SECURE_NORM_SLACK = 1e-3  # plus SecAgg+'s quantization error on the securely summed mean


def clients_by_key(client_manager: ClientManager) -> dict[str, ClientProxy]:
    """Connected clients by their stable key (a `KeyedClientManager`'s), else by node id."""
    by_key = getattr(client_manager, "by_key", None)
    return by_key() if by_key else client_manager.all()


class DPFedAvg(FedAvg):
    """FedAvg with client-level (ε, δ)-DP: fixed clipping norm S, noise multiplier σ,
    expected cohort size m, Poisson sampling, an accountant and an optional ε budget.

    The population N is the number of clients connected when round 1 is configured
    (after waiting for `min_available_clients`), identified by their stable keys, so a
    resumed run samples the same clients; q = m/N must lie in (0, 1]. Without a
    `noise_multiplier`, σ is calibrated then so that `rounds` rounds spend at most
    `target_epsilon`. `state_dict()` holds everything a resumed run needs.
    """

    def __init__(
        self,
        *,
        initial_parameters: Parameters,
        clipping_norm: float,
        noise_multiplier: float | None,
        clients_per_round: float,
        accountant: ClientLevelAccountant,
        target_epsilon: float | None = None,
        rounds: int | None = None,
        clipping: str = "server",
        server_learning_rate: float = 1.0,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        clipped_count_stddev: float = 1.0,
        secure_aggregation: bool = False,
        server_optimizer: Strategy | None = None,
        randomness: DPRandomness | None = None,
        release_unprotected_metrics: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(initial_parameters=initial_parameters, **kwargs)
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
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.clients_per_round = clients_per_round
        self.accountant = accountant
        self.target_epsilon = target_epsilon
        self.rounds = rounds
        self.clipping = clipping
        self.server_learning_rate = server_learning_rate
        self.target_quantile = target_quantile
        self.clip_learning_rate = clip_learning_rate
        self.clipped_count_stddev = clipped_count_stddev
        self.secure_aggregation = secure_aggregation
        self.server_optimizer = server_optimizer
        self.randomness = randomness or DPRandomness(0, reproducible=False)
        self.noise_factor = 1.0  # < 1 only as the privacy audit's fault injection (fl_app.audit)
        self.log_rejections = release_unprotected_metrics  # which client was left out is outside ε
        self.population: list[str] | None = None
        self.global_weights = parameters_to_ndarrays(initial_parameters)
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

    def fix_population(self, client_manager: ClientManager) -> None:
        """Wait for `min_available_clients`, then fix N and check q ∈ (0, 1]."""
        client_manager.wait_for(self.min_available_clients)
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
        if self.noise_multiplier is None:
            self.noise_multiplier = calibrate_noise_multiplier(
                self.target_epsilon, self.accountant.delta, self.sampling_rate, self.rounds,
                self.accountant.kind,
            )
        elif self.target_epsilon is not None and self.rounds is not None:
            self._warn_of_an_early_stop()
        if self.clipping == "adaptive":
            update_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)  # checks 2σ_b > σ
        log(INFO, "DP: population N = %s, q = %.4f, sigma = %.4f, S = %g, %s accountant",
            len(self.population), self.sampling_rate, self.noise_multiplier,
            self.clipping_norm, self.accountant.kind)

    def _warn_of_an_early_stop(self) -> None:
        """With both σ and a target given, the target is a budget stop: say up front how
        many rounds it allows if fewer than planned."""
        allowed = rounds_within_budget(self.noise_multiplier, self.sampling_rate, self.target_epsilon,
                                       self.accountant.delta, self.accountant.kind, self.rounds)
        if allowed < self.rounds:
            log(WARNING, "dp-noise-multiplier = %g with dp-target-epsilon = %g: the budget allows "
                "%s of the %s rounds, so training stops after round %s (set dp-noise-multiplier = 0 "
                "to calibrate sigma for all %s rounds instead)", self.noise_multiplier,
                self.target_epsilon, allowed, self.rounds, allowed, self.rounds)

    def stop_reason(self, server_round: int, client_manager: ClientManager) -> str | None:
        """Why round `server_round` must not run (it would exceed the ε budget), or None."""
        if self.population is None:
            self.fix_population(client_manager)
        if self.target_epsilon is None:
            return None
        next_epsilon = self.accountant.epsilon_after_next(self.noise_multiplier, self.sampling_rate)
        if next_epsilon > self.target_epsilon:
            return (f"privacy budget reached: round {server_round} would raise epsilon from "
                    f"{self.accountant.epsilon():.4f} to {next_epsilon:.4f} > "
                    f"dp-target-epsilon = {self.target_epsilon}")
        return None

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
        cohort = poisson_sample(self.population, self.sampling_rate, self.randomness.sampling)
        self.cohort_size = len(cohort)
        connected = clients_by_key(client_manager)
        fit_ins = FitIns(parameters, config)
        return [(connected[key], fit_ins) for key in cohort if key in connected]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Release the noised mean of the clipped updates and account for the round."""
        norms: list[float] = []
        screened: Screened = []
        if self.secure_aggregation:
            clipped: Iterable[list[np.ndarray]] = self._securely_summed(server_round, results)
        else:
            screened = self.screen(server_round, results, self._client_clipping_problem)
            clipped = self._clipped_updates(screened, norms)
        update_sigma = self.noise_multiplier
        if self.clipping == "adaptive":
            update_sigma = update_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        mean = noisy_mean(
            clipped,
            self.expected_shapes,
            clipping_norm=self.clipping_norm,
            noise_multiplier=update_sigma * self.noise_factor,
            expected_cohort_size=self.clients_per_round,
            rng=self.randomness.noise,
        )
        new_weights = self._apply(server_round, mean)
        self.accountant.step(self.noise_multiplier, self.sampling_rate)
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None and screened:
            metrics.update(self.fit_metrics_aggregation_fn(
                [(r.num_examples, r.metrics) for _, r, _ in screened]))
        if self.secure_aggregation:  # one securely summed aggregate stands for the whole cohort
            rejected = 0 if clipped else len(results)
        else:
            rejected = len(results) - len(norms)
        metrics.update(self._diagnostics(norms, rejected))
        if self.clipping == "adaptive":
            fraction = noised_unclipped_fraction(
                norms, self.clipping_norm, self.clipped_count_stddev, self.clients_per_round,
                self.randomness.noise,
            )
            metrics["noised_unclipped_fraction"] = fraction
            self.clipping_norm = next_clipping_norm(
                self.clipping_norm, fraction, self.target_quantile, self.clip_learning_rate
            )
        return ndarrays_to_parameters(new_weights), metrics

    def _apply(self, server_round: int, mean: list[np.ndarray]) -> list[np.ndarray]:
        """The next global model: w + η·mean, or the server optimizer's step on the noised
        mean (post-processing, so it costs no privacy)."""
        if self.server_optimizer is None:
            return [(w.astype(np.float64) + self.server_learning_rate * m).astype(w.dtype)
                    for w, m in zip(self.global_weights, mean)]
        target = [(w.astype(np.float64) + m).astype(w.dtype) for w, m in zip(self.global_weights, mean)]
        stepped, _ = self.server_optimizer.aggregate_fit(
            server_round, [(None, FitRes(OK, ndarrays_to_parameters(target), 1, {}))], []
        )
        return parameters_to_ndarrays(stepped)

    def _securely_summed(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[list[np.ndarray]]:
        """[Σ_k clipped Δ_k] from SecAgg+, where every result carries the same mean of K
        unit-weighted updates; [] when there is none or the aggregate is malformed."""
        if not results:
            return []
        mean = self.screen(server_round, results[:1], self._secure_mean_problem, any_float=True)
        if not mean:
            return []
        return [[a.astype(np.float64) * len(results) for a in mean[0][2]]]

    def _secure_mean_problem(self, arrays: list[np.ndarray], res: FitRes) -> str | None:
        """The mean of client-clipped updates is within S (convexity of the norm ball)."""
        if res.num_examples != 1:
            return f"secure aggregation needs unit weights, got num_examples = {res.num_examples}"
        norm = global_l2_norm(arrays)
        if norm > self.clipping_norm * (1 + SECURE_NORM_SLACK):
            return f"securely aggregated mean is longer than S = {self.clipping_norm}"
        return None

    def _client_clipping_problem(self, arrays: list[np.ndarray], res: FitRes) -> str | None:
        """In client mode, an update longer than S (beyond float32 rounding) is refused."""
        if self.clipping != "client":
            return None
        norm = global_l2_norm(arrays)
        if norm > self.clipping_norm * (1 + NORM_SLACK):
            return f"client-clipped update is longer than S = {self.clipping_norm}"  # its norm stays private
        return None

    def _clipped_updates(self, screened: Screened, norms: list[float]) -> Iterator[list[np.ndarray]]:
        """Each accepted result's clipped Δ, one at a time (summed before the next is made):
        clipped here, or as the client sent it. Appends each norm before clipping (client
        mode: the norm of what arrived, at most S) to `norms`."""
        if self.clipping != "client":
            weights = (arrays for _, _, arrays in screened)
            yield from clipped_deltas(weights, self.global_weights, self.clipping_norm, norms)
            return
        for _, _, arrays in screened:
            norms.append(global_l2_norm(arrays))
            yield arrays

    def _diagnostics(self, norms: list[float], rejected: int) -> dict[str, Scalar]:
        """The privacy spent so far, the realised cohort size and S of this round, and the
        exact clipping diagnostics users need to choose S (`num_rejected`, `clip_fraction`,
        `median_update_norm`: functions of individual updates, outside ε, which the
        server releases only with `dp-release-unprotected-metrics`). In client mode an
        update that arrives at norm S counts as clipped."""
        limit = self.clipping_norm * (1 - NORM_SLACK) if self.clipping == "client" else self.clipping_norm
        return {
            "epsilon": self.accountant.epsilon(),
            "cohort_size": self.cohort_size,
            "num_rejected": rejected,
            "clip_fraction": float(np.mean([n > limit for n in norms])) if norms else float("nan"),
            "median_update_norm": float(np.median(norms)) if norms else float("nan"),
            "clipping_norm": self.clipping_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        """Accountant, calibrated σ, current S, population, the server optimizer's state
        and, only in reproducible mode, the DP generators' states."""
        return {
            "accountant": self.accountant.state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "population": self.population,
            "randomness": self.randomness.state_dict(),
            "server_optimizer": strategy_state(self.server_optimizer) if self.server_optimizer else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: ε goes on from where it was."""
        self.accountant.load_state_dict(state["accountant"])
        self.noise_multiplier = state["noise_multiplier"]
        self.clipping_norm = state["clipping_norm"]
        self.population = state["population"]
        self.randomness.load_state_dict(state["randomness"])
        if self.server_optimizer is not None:
            load_strategy_state(self.server_optimizer, state["server_optimizer"])

    def summary(self) -> dict[str, Any]:
        """The run's privacy statement, under `privacy`."""
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
        )}
