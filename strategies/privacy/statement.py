"""The run's privacy guarantee as `summary.json` states it: one `privacy` object per DP
run (`null` for a plain run) with every figure the claim rests on and one sentence a
user can paste into a report."""

import math
from typing import Any

from strategies.client_reports import LOCAL_DP_METRICS, is_finite_number
from strategies.privacy.ledger import Mechanism, effective_noise_multiplier
from strategies.wire import CLIENT_EPSILON, DP_NOISE_MULTIPLIER, DP_ROUNDS, DP_SAMPLE_RATE


def round_up(value: float, digits: int = 3) -> float:
    """`value` rounded up to `digits` significant digits: a stated ε never understates."""
    if value <= 0 or not math.isfinite(value):
        return value
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale - 1e-9) / scale


TIMING = ("timing is outside ε: anyone who watches a run (or reads per-round seconds and the "
          "wall time) sees how long each round took, which grows with the slowest sampled client")
SERVER_SEES_UPDATES = ("the server is trusted: it clips and noises, and it sees every sampled "
                       "client's update and the exact cohort; ε holds against everyone else "
                       "(clients, readers of the outputs and logs)")
SERVER_SEES_SUM = ("the server is trusted to add the noise and to keep the un-noised sum it holds: "
                   "SecAgg+ hides each client's update from it, not the cohort's sum; ε holds "
                   "against everyone else (clients, readers of the outputs and logs)")
SECAGG_DROPOUTS = ("a round whose SecAgg+ halts (more dropouts than the reconstruction threshold "
                   "tolerates) releases noise only; the guarantee assumes no round loses more "
                   "clients than that (settings where one dropout halts a cohort of the expected "
                   "size are refused)")
SECAGG_SHOWS_THE_COHORT = "SecAgg+ tells each sampled client its cohort's size and its neighbours' node ids"
SECAGG_COHORT_SEEN = (f"{SECAGG_SHOWS_THE_COHORT}: against a client, the rounds it is sampled in are not amplified "
                      "by sampling, so ε (which assumes a secret sample) does not hold against the clients; "
                      "epsilon_against_sampled_clients does (every round at q = 1)")
PUBLIC_DATASET_SIZE = ("each site's number of records is treated as public: its DP-SGD batch rate "
                       "(1/batches per epoch) and noise multiplier follow from it and reach the server")


def central_assumptions(secure_aggregation: bool) -> list[str]:
    """What a central DP-FedAvg claim rests on beyond its figures."""
    if secure_aggregation:
        return [SERVER_SEES_SUM, SECAGG_DROPOUTS, SECAGG_COHORT_SEEN, TIMING]
    return [SERVER_SEES_UPDATES, TIMING]


def statement(
    *, epsilon: float, delta: float, level: str, population: int, rounds: int, accountant: str,
    valid: bool, per_client: bool = False, trust: str = "",
) -> str:
    """`(ε = 1.97, δ = 1e-05) client-level DP for 1000 clients over 20 rounds, RDP
    accountant; <trust>` (ε rounded up to 3 significant digits), with a warning appended
    when the claim is not valid."""
    bound = f"(ε = {round_up(epsilon):g}, δ = {delta:g})"
    who = (f"sample-level DP for each of {population} clients' data (largest ε over clients)"
           if per_client else f"{level}-level DP for {population} clients")
    sentence = f"{bound} {who} over {rounds} rounds, {accountant.upper()} accountant"
    if trust:
        sentence += f"; {trust}"
    if not valid:
        sentence += ("; NOT A VALID CLAIM: dp-reproducible-noise = true makes the noise "
                     "predictable from the public seed")
    return sentence


def central_privacy(
    *, epsilon: float, target_epsilon: float | None, delta: float, noise_multiplier: float | None,
    sampling_rate: float, rounds_accounted: int, accountant: str, clipping: str, clipping_norm: float,
    clients_per_round: float, population: int, secure_aggregation: bool, reproducible_noise: bool,
    mechanisms: list[dict[str, Any]], effective_noise_multiplier: float | None,
    epsilon_against_sampled_clients: float | None,
) -> dict[str, Any]:
    """The privacy object of a central DP-FedAvg run (client-level); the server adds
    `unprotected_metrics_released`. `mechanisms` is the ledger of one round (each
    mechanism's name, unit, sensitivity and noise multiplier, `strategies.privacy.ledger`)
    and `effective_noise_multiplier` the σ they compose to, the one the accountant steps
    with. Under SecAgg+ the sampled clients learn their cohort, so a second figure and
    statement hold against them: `epsilon_against_sampled_clients`, the same rounds at
    q = 1 (None without SecAgg+)."""
    privacy = {
        "mode": "central",
        "level": "client",
        "epsilon": epsilon,
        "target_epsilon": target_epsilon,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "mechanisms": mechanisms,
        "effective_noise_multiplier": effective_noise_multiplier,
        "sampling_rate": sampling_rate,
        "rounds_accounted": rounds_accounted,
        "accountant": accountant,
        "clipping": clipping,
        "clipping_norm": clipping_norm,
        "clients_per_round": clients_per_round,
        "population": population,
        "secure_aggregation": secure_aggregation,
        "reproducible_noise": reproducible_noise,
        "valid_claim": not reproducible_noise,
        "assumptions": central_assumptions(secure_aggregation),
        "statement": statement(epsilon=epsilon, delta=delta, level="client", population=population,
                               rounds=rounds_accounted, accountant=accountant, valid=not reproducible_noise,
                               trust=("trusted server adds the noise (sees each round's un-noised sum, "
                                      "SecAgg+ hides each update)" if secure_aggregation else
                                      "trusted server (sees each sampled update)")),
    }
    if epsilon_against_sampled_clients is not None:
        privacy["epsilon_against_sampled_clients"] = epsilon_against_sampled_clients
        privacy["statement_against_sampled_clients"] = statement(
            epsilon=epsilon_against_sampled_clients, delta=delta, level="client", population=population,
            rounds=rounds_accounted, accountant=accountant, valid=not reproducible_noise,
            trust="against the sampled clients too (no amplification by sampling: SecAgg+ shows them the cohort)")
    return privacy


SERVER_RUNS_THE_PROTOCOL = ("the server is honest but curious: it runs SecAgg+ and Poisson sampling as "
                            "specified and tells the clients the true cohort size K (each client's noise share "
                            "is μ/(gτ(K))); it sees masked vectors and the noised sum only, never an update nor a "
                            "sum with less than μ/g of noise")
SURVIVORS = ("every sum SecAgg+ unmasks has at least τ(K) survivors, so at least the noise μ/g the statement "
             "against the server counts; a round with no usable sum (empty cohort, SecAgg+ halted by dropouts) "
             "releases noise the server draws, which depends on no client's update")
RELEASED_NOISE = ("the server tops every sum up to exactly sk(μ) (sk(μ − n·μ/(gτ(K))) for n survivors), so the "
                  "released models' noise does not depend on the cohort: the amplified ε trusts it to; without "
                  "it they would still be covered by ε against the server")
SAMPLED_CLIENTS_SEE_THE_COHORT = (f"{SECAGG_SHOWS_THE_COHORT}: against a client that is sampled, ε against the "
                                  "server holds, not the amplified ε")


def distributed_privacy(
    *, epsilon: float, epsilon_against_server: float, target_epsilon: float | None, delta: float,
    noise_multiplier: float | None, sampling_rate: float, rounds_accounted: int, accountant: str,
    clipping_norm: float, clients_per_round: float, population: int, reproducible_noise: bool,
    mechanisms: list[dict[str, Any]],
) -> dict[str, Any]:
    """The privacy object of a distributed-DP run: ε against everyone who sees only the
    released models (amplified by sampling) and ε against the server (no amplification:
    it chooses the cohort), both from the Skellam accountant."""
    valid = not reproducible_noise

    def claim(eps: float, trust: str) -> str:
        return statement(epsilon=eps, delta=delta, level="client", population=population, rounds=rounds_accounted,
                         accountant=accountant, valid=valid, trust=trust)

    return {
        "mode": "distributed",
        "level": "client",
        "epsilon": epsilon,
        "epsilon_against_server": epsilon_against_server,
        "target_epsilon": target_epsilon,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "mechanisms": mechanisms,
        "effective_noise_multiplier": noise_multiplier,
        "sampling_rate": sampling_rate,
        "rounds_accounted": rounds_accounted,
        "accountant": accountant,
        "clipping": "client",
        "clipping_norm": clipping_norm,
        "clients_per_round": clients_per_round,
        "population": population,
        "secure_aggregation": True,
        "reproducible_noise": reproducible_noise,
        "valid_claim": valid,
        "assumptions": [SERVER_RUNS_THE_PROTOCOL, SURVIVORS, RELEASED_NOISE, SAMPLED_CLIENTS_SEE_THE_COHORT, TIMING],
        "statement": claim(epsilon, "against everyone who sees only the released models; the clients add "
                                    "the noise, no party holds an un-noised sum"),
        "statement_against_server": claim(epsilon_against_server, "against the server and the sampled clients "
                                                                  "too (no amplification by sampling: they "
                                                                  "see the cohort)"),
    }


class LocalPrivacyLedger:
    """The latest privacy report of every client under local DP-SGD (each client's
    accountant lives on the client; it reports ε, σ, its Poisson batch rate and the
    rounds it trained with every update)."""

    def __init__(
        self, *, target_epsilon: float, delta: float, accountant: str, max_grad_norm: float,
        reproducible_noise: bool,
    ) -> None:
        self.target_epsilon = target_epsilon
        self.delta = delta
        self.accountant = accountant
        self.max_grad_norm = max_grad_norm
        self.reproducible_noise = reproducible_noise
        self.reports: dict[str, dict[str, float]] = {}

    def update(self, client: str, metrics: dict[str, Any]) -> None:
        """Keep `client`'s report if it holds every local-DP figure as a number."""
        values = {k: metrics.get(k) for k in LOCAL_DP_METRICS}
        numbers = {k: float(v) for k, v in values.items() if is_finite_number(v)}
        if len(numbers) == len(values):
            self.reports[client] = numbers

    def privacy(self, population: int) -> dict[str, Any]:
        """The privacy object of a local DP-SGD run (sample-level, per client) over a
        federation of `population` nodes; the server adds `unprotected_metrics_released`."""
        reports = list(self.reports.values())

        def spread(key: str) -> list[float] | None:
            values = [r[key] for r in reports]
            return [min(values), max(values)] if values else None

        sigmas = spread(DP_NOISE_MULTIPLIER)
        # one mechanism per Poisson batch of DP-SGD on each site: the sum of per-sample
        # gradients clipped to C, noised with std σC; σ the smallest any site reported
        mechanisms = [Mechanism("dp_sgd_step", "sample", self.max_grad_norm, sigmas[0])] if sigmas else []
        epsilons = [r[CLIENT_EPSILON] for r in reports]
        epsilon_max = max(epsilons) if epsilons else 0.0
        rounds = int(max((r[DP_ROUNDS] for r in reports), default=0))
        return {
            "mode": "local",
            "level": "sample",
            "epsilon": epsilon_max,
            "epsilon_max": epsilon_max,
            "epsilon_mean": sum(epsilons) / len(epsilons) if epsilons else 0.0,
            "clients_reported": len(reports),
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": sigmas,
            "mechanisms": [m.as_dict() for m in mechanisms],
            "effective_noise_multiplier": effective_noise_multiplier(mechanisms) if mechanisms else None,
            "sampling_rate": spread(DP_SAMPLE_RATE),
            "rounds_accounted": rounds,
            "accountant": self.accountant,
            "clipping_norm": self.max_grad_norm,
            "population": population,
            "reproducible_noise": self.reproducible_noise,
            "valid_claim": not self.reproducible_noise,
            "assumptions": [PUBLIC_DATASET_SIZE, TIMING],
            "statement": statement(epsilon=epsilon_max, delta=self.delta, level="sample",
                                   population=population, rounds=rounds, accountant=self.accountant,
                                   valid=not self.reproducible_noise, per_client=True,
                                   trust="each site's record count treated as public"),
        }
