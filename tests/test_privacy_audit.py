"""The audit's statistics on synthetic scores from mechanisms whose ε is known."""

import math

import numpy as np
import pytest
from scipy import stats

from strategies.privacy.audit import (
    audit_one_run,
    epsilon_lower_bound,
    gdp_epsilon,
    one_shot_estimate,
    p_value_one_run,
    random_directions,
)


def test_gdp_epsilon_solves_the_gaussian_tradeoff():
    for mu in (0.3, 1.0, 3.0):
        epsilon = gdp_epsilon(mu, 1e-5)
        delta = stats.norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2)
        assert delta == pytest.approx(1e-5, rel=1e-4)
    assert gdp_epsilon(1.0, 1e-5) < gdp_epsilon(2.0, 1e-5) and gdp_epsilon(0.0, 1e-5) == 0.0


def test_the_p_value_is_the_binomial_tail_for_pure_dp():
    assert p_value_one_run(100, 50, 40, 1.0, 0.0) == pytest.approx(stats.binom.sf(39, 50, 1 / (1 + math.exp(-1))))
    assert p_value_one_run(100, 50, 40, 1.0, 1e-3) > p_value_one_run(100, 50, 40, 1.0, 0.0)
    assert epsilon_lower_bound(100, 50, 25, 1e-5) == 0.0  # chance-level guessing proves nothing


def randomized_response(m: int, epsilon: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """ε-DP per canary: the score says 'included' correctly with probability e^ε/(1+e^ε)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-epsilon))
    says_in = np.where(truthful, included, ~included)
    return says_in + 0.01 * rng.random(m), included


def gaussian_scores(m: int, mu: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """μ-GDP per canary: score = μ·[included] + N(0, 1)."""
    included = rng.random(m) < 0.5
    return mu * included + rng.standard_normal(m), included


def test_the_one_run_bound_exceeds_the_true_epsilon_at_most_as_often_as_its_confidence_allows():
    """A 95% bound may exceed the true ε in 5% of runs: over 40 runs per mechanism at
    most 5 may (P[Binomial(40, 0.05) > 5] < 2%), and never by much."""
    rng = np.random.default_rng(0)
    for mu in (0.5, 2.0, 4.0):
        true = gdp_epsilon(mu, 1e-5)
        bounds = np.array([audit_one_run(*gaussian_scores(1000, mu, rng), delta=1e-5).epsilon_lower
                           for _ in range(40)])
        assert (bounds > true).sum() <= 5 and bounds.max() < 1.5 * true, (mu, true, bounds)
    for epsilon in (0.5, 2.0):
        bounds = np.array([audit_one_run(*randomized_response(2000, epsilon, rng), delta=0.0).epsilon_lower
                           for _ in range(40)])
        assert (bounds > epsilon).sum() <= 5 and bounds.max() < 1.5 * epsilon, (epsilon, bounds)


def test_the_one_run_bound_approaches_the_true_epsilon_with_many_canaries():
    rng = np.random.default_rng(1)
    few = audit_one_run(*randomized_response(200, 2.0, rng), delta=0.0, guess_fractions=(1.0,))
    many = audit_one_run(*randomized_response(20000, 2.0, rng), delta=0.0, guess_fractions=(1.0,))
    assert few.epsilon_lower < many.epsilon_lower <= 2.0
    assert many.epsilon_lower > 0.9 * 2.0
    assert (many.canaries, many.guesses) == (20000, 20000) and many.correct > 0.85 * 20000


def test_the_one_shot_estimate_recovers_a_known_gaussian_mechanism():
    rng = np.random.default_rng(2)
    for mu in (1.0, 3.0):
        estimate = one_shot_estimate(mu + rng.standard_normal(5000), rng.standard_normal(5000), 1e-5)
        assert estimate.mu == pytest.approx(mu, abs=0.1)
        assert estimate.epsilon == pytest.approx(gdp_epsilon(mu, 1e-5), rel=0.1)
    null = one_shot_estimate(rng.standard_normal(2000), rng.standard_normal(2000), 1e-5)
    assert null.epsilon < 0.3


def test_random_directions_are_unit_and_nearly_orthogonal():
    directions = random_directions(50, 26_010, np.random.default_rng(3))
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-5)
    cosines = directions @ directions.T - np.eye(50)
    assert np.abs(cosines).max() < 6 / math.sqrt(26_010)
