"""Empirical privacy auditing of client-level DP-FedAvg with canary clients, on plain
numpy arrays.

Two statistics of how strongly the released models move along the canaries' secret
directions:

- **A lower bound from one run** (Steinke, Nasr & Jagielski 2023, "Privacy Auditing
  with One (1) Training Run", NeurIPS; Theorem 5.2 and its Algorithm): each of m canaries
  is included independently with probability ½; the auditor guesses "included" for the
  k₊ highest scores and "excluded" for the k₋ lowest, abstaining on the rest. If the
  mechanism is (ε, δ)-DP, the number V of correct guesses among the r = k₊ + k₋ satisfies

      P[V ≥ v] ≤ β(v) + 2mδ · max_{1≤i≤v} P[v > B ≥ v − i] / i,   B ~ Binomial(r, e^ε/(1+e^ε)),
      β(v) = P[B ≥ v].

  ε_lower is the largest ε this rejects at the given confidence: a bound that holds with
  that probability whatever the mechanism, if the canaries' inclusion is random.
- **A one-shot estimate** (Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar 2024,
  "One-shot Empirical Privacy Estimation for Federated Learning", ICLR): the cosines of
  the final model change with the inserted canaries' directions and with directions
  never inserted are fitted by Gaussians N(μ₁, σ₁²) and N(μ₀, σ₀²); the estimate is the ε
  at δ of the Gaussian mechanism that separates them, μ = (μ₁ − μ₀)/σ₀ (μ-GDP, Dong, Roth
  & Su 2022): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2). An estimate, not a bound.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95


def p_value_one_run(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[V ≥ v] for an (ε, δ)-DP mechanism audited with m canaries and r
    guesses (Steinke et al. 2023, Theorem 5.2; the formula in the module docstring)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(1.0, beta)
    i = np.arange(1, v + 1)
    alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))  # max_i P[v > B ≥ v − i] / i
    return min(1.0, beta + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest ε for which `v` correct guesses out of `r` would have probability below
    1 − `confidence` (0 when even ε = 0 explains them), by bisection to 1e-4."""
    alpha = 1.0 - confidence
    if p_value_one_run(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value_one_run(m, r, v, high, delta) < alpha:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > 1e-4:
        middle = (low + high) / 2
        if p_value_one_run(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class OneRunAudit:
    """The guesses of the one-run audit and the bound they give."""

    canaries: int
    guesses: int
    correct: int
    epsilon_lower: float


def audit_one_run(
    scores: Sequence[float], included: Sequence[bool], delta: float,
    guess_fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5), confidence: float = CONFIDENCE,
) -> OneRunAudit:
    """Guess the top and bottom k of `scores` for each k = fraction × m / 2 and keep the
    best bound; the confidence of each is raised so that all of them together hold at
    `confidence` (Bonferroni over the fractions tried)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    order = np.argsort(scores)  # ascending; ties do not matter for the bound
    per_test = 1.0 - (1.0 - confidence) / len(guess_fractions)
    best = OneRunAudit(m, 0, 0, 0.0)
    for fraction in guess_fractions:
        k = max(1, int(fraction * m / 2))
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        if bound > best.epsilon_lower or best.guesses == 0:
            best = OneRunAudit(m, 2 * k, correct, bound)
    return best


def gdp_epsilon(mu: float, delta: float) -> float:
    """ε at δ of μ-GDP (the Gaussian mechanism with sensitivity/σ = μ); 0 for μ ≤ 0."""
    if mu <= 0:
        return 0.0

    def excess(epsilon: float) -> float:
        return (stats.norm.cdf(-epsilon / mu + mu / 2)
                - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2) - delta)

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e4:
            return math.inf
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-6))


@dataclass(frozen=True)
class OneShotEstimate:
    """The Gaussian fits of the one-shot estimate and the ε they give."""

    inserted_mean: float
    inserted_std: float
    held_out_mean: float
    held_out_std: float
    mu: float
    epsilon: float


def one_shot_estimate(inserted: Sequence[float], held_out: Sequence[float], delta: float) -> OneShotEstimate:
    """Andrew et al. 2024: μ = (mean of inserted cosines − mean of held-out ones) / std of
    held-out ones; ε at δ of μ-GDP."""
    inserted, held_out = np.asarray(inserted, dtype=np.float64), np.asarray(held_out, dtype=np.float64)
    if len(inserted) < 2 or len(held_out) < 2:
        raise ValueError("need at least two inserted and two held-out canaries")
    spread = float(held_out.std(ddof=1))
    mu = (float(inserted.mean()) - float(held_out.mean())) / spread
    return OneShotEstimate(float(inserted.mean()), float(inserted.std(ddof=1)), float(held_out.mean()),
                           spread, mu, gdp_epsilon(mu, delta))


def random_directions(count: int, dimension: int, rng: np.random.Generator) -> np.ndarray:
    """`count` independent unit vectors, uniform on the sphere of R^`dimension` (rows)."""
    directions = rng.standard_normal((count, dimension)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions
