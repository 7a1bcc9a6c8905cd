"""Distributed DP (`dp-mode = "distributed"`): the settings every party derives from the
run (`SkellamSettings`) and the accountant of the two statements (`SkellamAccountant`).

Each sampled client sends encode(clip(Δ, S)) (`strategies.privacy.discretization`) only
through SecAgg+; it adds sk(μ/(gτ)) noise, τ the fewest survivors with which SecAgg+
can unmask its cohort of K and g ≥ K/τ(K) for every cohort the population allows, so
every sum the server ever unmasks carries noise of variance at least μ/g (μ = (σΔ₂)²)
and at most μ. The server adds sk(μ − n·μ/(gτ)) to the sum of the n survivors, so that
every released round carries exactly sk(μ), whatever the cohort's size and the
dropouts (a sum of independent Skellam variables is Skellam). Two guarantees follow,
both accounted every round:

- against the server, which chooses the cohort, sees who took part and knows the noise
  it added: each round is the Skellam mechanism of variance μ/g on a known cohort (no
  amplification). It protects a client's update (its data), whatever it is, zero
  included; it also covers the sampled clients, which learn their cohort's size;
- against everyone who sees only the released models: the Skellam mechanism of variance
  μ on a Poisson sample of rate q (amplification by sampling). Its noise does not depend
  on the cohort, so the mechanism is exactly the one the amplification theorem covers.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scipy import stats

from strategies.privacy.skellam import (
    ORDERS,
    calibrate_skellam_noise,
    padded_dimension,
    rdp_to_epsilon,
    rounded_l1_bound,
    rounded_l2_bound,
    skellam_round_rdp,
    wrap_probability,
)

ROUNDING_BETA = math.exp(-0.5)  # a rounding draw fails its norm bound with probability ≤ β (TFF's default)
WRAP_TARGET = 1e-6  # the scale γ keeps a round's wrap-around probability below this
COHORT_TAIL = 1e-9  # cohorts larger than the one sized for occur with at most this probability
FIELD_BITS = 32  # Flower's SecAgg+ sums modulo 2^32 (its `modulus_range`)


@dataclass(frozen=True)
class SkellamSettings:
    """The discretization and noise of a run: clipping norm S, model dimension d, bits b
    per coordinate (modulus M = 2^b), scale γ (real units per integer step), noise
    multiplier σ (the std of every released sum's noise over Δ₂) and `noise_growth` g
    (every unmasked sum carries at least 1/g of that variance); `cohort_bound` the
    largest cohort the scale is sized for, `wrap_bound` the probability that a round's
    sum wraps."""

    clipping_norm: float
    dimension: int
    bits: int
    scale: float
    noise_multiplier: float
    noise_growth: float
    cohort_bound: int
    wrap_bound: float

    @property
    def padded_dimension(self) -> int:
        """d', the next power of two ≥ d."""
        return padded_dimension(self.dimension)

    @property
    def modulus(self) -> int:
        """M = 2^b."""
        return 1 << self.bits

    @property
    def l2_sensitivity(self) -> float:
        """Δ₂: the norm bound of one client's rounded vector (S/γ plus rounding's extra)."""
        return scaled_l2_sensitivity(self.clipping_norm / self.scale, self.padded_dimension)

    @property
    def l1_sensitivity(self) -> float:
        """Δ₁ of one client's rounded vector."""
        return rounded_l1_bound(self.l2_sensitivity, self.padded_dimension)

    @property
    def variance(self) -> float:
        """μ = (σΔ₂)², the noise variance per coordinate of every released sum."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2

    @property
    def server_noise_multiplier(self) -> float:
        """σ/√g: the least noise of an unmasked sum over Δ₂ (what the server sees)."""
        return self.noise_multiplier / math.sqrt(self.noise_growth)

    def share_variance(self, threshold: int) -> float:
        """The noise variance one client adds when at least `threshold` clients' vectors
        make up the sum: μ/(gτ)."""
        return self.variance / (self.noise_growth * max(threshold, 1))

    def top_up_variance(self, survivors: int, threshold: int) -> float:
        """What the server adds to the sum of `survivors` clients' vectors (shares of
        μ/(gτ) each) so that the released sum carries exactly μ."""
        return max(self.variance - survivors * self.share_variance(threshold), 0.0)

    def as_dict(self) -> dict[str, Any]:
        """The figures `summary.json` and the clients need."""
        return {"clipping_norm": self.clipping_norm, "dimension": self.dimension, "bits": self.bits,
                "scale": self.scale, "noise_multiplier": self.noise_multiplier,
                "noise_growth": self.noise_growth, "cohort_bound": self.cohort_bound, "wrap_bound": self.wrap_bound}


def scaled_l2_sensitivity(scaled_norm: float, padded: int) -> float:
    """Δ₂ for a clipped update of norm S/γ in d' coordinates after conditional rounding."""
    return rounded_l2_bound(scaled_norm, padded, ROUNDING_BETA)


def cohort_bound(population: int, sampling_rate: float) -> int:
    """The cohort size a Poisson sample of rate q exceeds with probability ≤ `COHORT_TAIL`."""
    if sampling_rate >= 1:
        return population
    return int(min(population, stats.binom.isf(COHORT_TAIL, population, sampling_rate)))


def noise_growth(population: int, threshold: Callable[[int], int]) -> float:
    """g = max K/τ(K) over the cohorts K ≤ `population` can have: with shares of μ/(gτ),
    no unmasked sum carries more than μ, and every one at least μ/g."""
    return max(k / max(threshold(k), 1) for k in range(1, max(population, 1) + 1))


def settings_for_run(*, clipping_norm: float, dimension: int, bits: int, noise_multiplier: float | None,
                     target_epsilon: float | None, rounds: int, delta: float, population: int,
                     sampling_rate: float, threshold: Callable[[int], int]) -> SkellamSettings:
    """The scale γ and σ of a run: σ as given, or calibrated so that `rounds` rounds spend
    `target_epsilon` against the released models (amplified at rate q); γ the finest
    scale whose round wraps around with probability ≤ `WRAP_TARGET` (the signal taken
    as `cohort_bound` clients' updates all aligned, the noise at its largest). σ and γ
    depend on each other only through rounding's extra norm: a few passes settle them.

    Raises:
        ValueError: the bits cannot hold the sum, or Flower's field the cohort's factors.
    """
    padded = padded_dimension(dimension)
    bound = cohort_bound(population, sampling_rate)
    if bound << bits >= 1 << FIELD_BITS:
        raise ValueError(f"dp-bits = {bits} leaves SecAgg+'s 2^{FIELD_BITS} field room for cohorts of fewer "
                         f"than {(1 << FIELD_BITS) >> bits} clients; this run samples up to {bound}")
    growth = noise_growth(population, threshold)
    modulus = 1 << bits

    def sigma_for(scaled_norm: float) -> float:
        if noise_multiplier is not None:
            return noise_multiplier
        assert target_epsilon is not None, "σ or a target ε"
        l2 = scaled_l2_sensitivity(scaled_norm, padded)
        return calibrate_skellam_noise(target_epsilon, l2, rounded_l1_bound(l2, padded), sampling_rate, rounds,
                                       delta)

    def wrap(scaled_norm: float, sigma: float) -> float:
        l2 = scaled_l2_sensitivity(scaled_norm, padded)
        signal = (bound * scaled_norm) ** 2 / padded
        return wrap_probability(modulus / 2, signal, (sigma * l2) ** 2, bound, padded)

    def finest(sigma: float) -> float:
        """The largest S/γ (finest grid) whose wrap bound stays within the target."""
        low, high = 1.0, float(modulus)
        if wrap(low, sigma) > WRAP_TARGET:
            raise ValueError(f"dp-bits = {bits} cannot hold the noised sum of {bound} clients in "
                             f"{padded} coordinates; use more bits")
        for _ in range(60):
            middle = math.sqrt(low * high)
            low, high = (middle, high) if wrap(middle, sigma) <= WRAP_TARGET else (low, middle)
        return low

    sigma = sigma_for(1e6)  # the Gaussian limit: the discrete surcharge vanishes for a fine grid
    for _ in range(4):
        scaled_norm = finest(sigma)
        updated = sigma_for(scaled_norm)
        if updated <= sigma:
            break
        sigma = updated
    scaled_norm = finest(sigma)
    return SkellamSettings(clipping_norm=clipping_norm, dimension=dimension, bits=bits,
                           scale=clipping_norm / scaled_norm, noise_multiplier=sigma, noise_growth=growth,
                           cohort_bound=bound,
                           wrap_bound=wrap(scaled_norm, sigma) + COHORT_TAIL)


class SkellamAccountant:
    """ε of a distributed-DP run at δ, against the released models (noise multiplier σ,
    amplified at the sampling rate) and against the server (σ/√g, q = 1), one `step` per
    released round."""

    kind = "skellam-rdp"

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self.history: list[list[float]] = []  # [σ, σ against the server, q, Δ₂, Δ₁, rounds]

    @property
    def rounds(self) -> int:
        """Rounds accounted for."""
        return int(sum(entry[5] for entry in self.history))

    def step(self, settings: SkellamSettings, sampling_rate: float) -> None:
        """Account for one round released with these settings."""
        entry = [settings.noise_multiplier, settings.server_noise_multiplier, sampling_rate,
                 settings.l2_sensitivity, settings.l1_sensitivity]
        if self.history and self.history[-1][:5] == entry:
            self.history[-1][5] += 1
        else:
            self.history.append(entry + [1])

    def epsilon(self, against_server: bool = False) -> float:
        """ε at δ so far; `against_server`: at σ/√g, without amplification by sampling."""
        return history_epsilon(self.history, self.delta, against_server)

    def epsilon_after_next(self, settings: SkellamSettings, sampling_rate: float) -> float:
        """ε (against the released models) if one more round were released."""
        trial = SkellamAccountant(self.delta)
        trial.history = [list(entry) for entry in self.history]
        trial.step(settings, sampling_rate)
        return trial.epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.kind, "delta": self.delta, "history": [list(e) for e in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["accountant"] != self.kind or state["delta"] != self.delta:
            raise ValueError(f"accountant state is for {state['accountant']} at delta {state['delta']}, "
                             f"not {self.kind} at delta {self.delta}")
        self.history = [list(entry) for entry in state["history"]]


def history_epsilon(history: list[list[float]], delta: float, against_server: bool) -> float:
    """ε at δ of an accountant history of [σ, σ against the server, q, Δ₂, Δ₁, rounds]
    entries (RDP adds up); `against_server`: every entry at its server σ and q = 1."""
    if not history:
        return 0.0
    total = [0.0] * len(ORDERS)
    for sigma, server_sigma, q, l2, l1, rounds in history:
        curve = (skellam_round_rdp(server_sigma, l2, l1, 1.0) if against_server
                 else skellam_round_rdp(sigma, l2, l1, q))
        total = [t + rounds * r for t, r in zip(total, curve, strict=True)]
    return rdp_to_epsilon(total, ORDERS, delta)
