"""The audit's statistics on synthetic releases from mechanisms whose ε is known, no training."""

import math

import numpy as np
import pytest
from scipy import stats

from strategies.privacy.audit import (
    audit_one_run,
    count_fit,
    epsilon_lower_bound,
    gaussian_fit,
    p_value_one_run,
    random_directions,
    simulate_canaries,
    subsampled_gaussian_scores,
)

# The configuration: 20 clients and 200 canaries (about 100 included), m = 30, 20
# rounds; σ_Δ is the update sum's noise multiplier at ε = 2 (δ = 1e-5, RDP, q ≈ 0.25) and 8.
SIGMA_EPS2, SIGMA_EPS8 = 2.909, 1.085


def subsampled_gaussian_run(rng, sigma: float):
    """z, included, sampled and q of an ideal subsampled Gaussian in that configuration."""
    sim = simulate_canaries(rng, sigma, 5.0, 0.5)
    return sim.z, sim.included, sim.sampled, sim.q


def test_the_p_value_is_the_binomial_tail_for_pure_dp():
    assert p_value_one_run(100, 50, 40, 1.0, 0.0) == pytest.approx(stats.binom.sf(39, 50, 1 / (1 + math.exp(-1))))
    assert p_value_one_run(100, 50, 40, 1.0, 1e-3) > p_value_one_run(100, 50, 40, 1.0, 0.0)
    assert epsilon_lower_bound(100, 50, 25, 1e-5) == 0.0  # chance-level guessing proves nothing


def test_the_scores_are_the_likelihood_ratio_of_the_subsampled_gaussian():
    rng = np.random.default_rng(0)
    z, q, sigma = rng.normal(0.3, 2.0, size=(5, 7)), 0.2, 1.7
    ratio = ((1 - q) * stats.norm.pdf(z, 0, sigma) + q * stats.norm.pdf(z, 1, sigma)) / stats.norm.pdf(z, 0, sigma)
    np.testing.assert_allclose(subsampled_gaussian_scores(z, q, sigma), np.log(ratio).sum(axis=1), rtol=1e-10)
    assert subsampled_gaussian_scores(np.array([[50.0]]), 1.0, 1.0)[0] == pytest.approx(49.5)  # q = 1: Gaussian
    with pytest.raises(ValueError, match="q=0"):
        subsampled_gaussian_scores(z, 0.0, sigma)


def randomized_response(m: int, epsilon: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """ε-DP per canary: the score says 'included' correctly with probability e^ε/(1+e^ε)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-epsilon))
    says_in = np.where(truthful, included, ~included)
    return says_in + 0.01 * rng.random(m), included


def test_the_one_run_bound_exceeds_a_pure_epsilon_at_most_as_often_as_its_confidence_allows():
    """Randomized response is where the bound is tight: over 40 runs at most 5 may exceed
    ε (P[Binomial(40, 0.05) > 5] < 2%), never by much."""
    rng = np.random.default_rng(1)
    for epsilon in (0.5, 2.0):
        bounds = np.array([audit_one_run(*randomized_response(2000, epsilon, rng), delta=0.0,
                                         guesses=(100, 500, 1000)).epsilon_lower for _ in range(40)])
        assert (bounds > epsilon).sum() <= 5 and bounds.max() < 1.5 * epsilon, (epsilon, bounds)


def test_the_one_run_bound_approaches_a_pure_epsilon_with_many_canaries():
    rng = np.random.default_rng(2)
    few = audit_one_run(*randomized_response(200, 2.0, rng), delta=0.0, guesses=(100,))
    many = audit_one_run(*randomized_response(20000, 2.0, rng), delta=0.0, guesses=(10000,))
    assert few.epsilon_lower < many.epsilon_lower <= 2.0
    assert many.epsilon_lower > 0.9 * 2.0
    assert (many.canaries, many.guesses) == (20000, 20000) and many.correct > 0.85 * 20000


def test_the_one_run_bound_stays_below_the_true_epsilon_of_a_correct_subsampled_gaussian():
    """True ε (RDP, q ≈ 0.25, 20 rounds): 1.9 at σ_Δ = 2.909, 7.9 at 1.085. A 95% bound
    may exceed it in 5% of runs; this one stays far below (at most 1.0 and 1.5 here)."""
    rng = np.random.default_rng(3)
    for sigma, true_epsilon in ((SIGMA_EPS2, 1.9), (SIGMA_EPS8, 7.9)):
        for _ in range(15):
            z, included, _, q = subsampled_gaussian_run(rng, sigma)
            bound = audit_one_run(subsampled_gaussian_scores(z, q, sigma), included, 1e-5, confidence=0.975)
            assert bound.epsilon_lower < true_epsilon, (sigma, bound)


def test_the_one_run_bound_flags_noise_ten_times_too_small_and_caps_with_the_canaries():
    """At ε = 2 with the noise × 0.1 (true ε 94) most guesses are right; with 200 canaries
    80 right guesses of 80 bound ε by 2.77, whatever the true ε."""
    rng = np.random.default_rng(4)
    bounds = []
    for _ in range(5):
        z, included, _, q = subsampled_gaussian_run(rng, 0.1 * SIGMA_EPS2)
        bounds.append(audit_one_run(subsampled_gaussian_scores(z, q, SIGMA_EPS2), included, 1e-5,
                                    confidence=0.975).epsilon_lower)
    assert min(bounds) > 2.0 and max(bounds) <= 2.78, bounds
    assert epsilon_lower_bound(200, 80, 80, 1e-5, 1 - 0.025 / 3) == pytest.approx(2.77, abs=0.01)


def test_the_gaussian_limits_hold_at_their_confidence():
    """noise_upper ≥ the true noise and effect_lower ≤ the true effect, each missed in at
    most 2.5% of runs; over 400 runs the noise multiplier's upper limit falls below the
    true σ at most 18 times (P[Binomial(400, 0.025) > 18] < 2%)."""
    rng = np.random.default_rng(5)
    misses = np.zeros(3, dtype=int)
    for _ in range(400):
        z, included, sampled, _ = subsampled_gaussian_run(rng, SIGMA_EPS2)
        fit = gaussian_fit(z, included, sampled)
        misses += [fit.noise_upper < SIGMA_EPS2, fit.effect_lower > 1.0, fit.noise_multiplier_upper < SIGMA_EPS2]
    assert misses[0] <= 18 and misses[1] <= 18 and misses[2] <= 18, misses
    assert misses[2] <= misses[0] + misses[1]


def test_the_gaussian_fit_measures_the_noise_and_a_canarys_effect():
    rng = np.random.default_rng(6)
    z, included, sampled, _ = subsampled_gaussian_run(rng, 0.5 * SIGMA_EPS2)
    fit = gaussian_fit(z, included, sampled)
    assert fit.noise == pytest.approx(0.5 * SIGMA_EPS2, rel=0.05) and fit.effect == pytest.approx(1.0, abs=0.2)
    assert fit.noise_upper > fit.noise and fit.effect_lower < fit.effect
    assert fit.noise_multiplier == pytest.approx(fit.noise / fit.effect)
    assert fit.noise_multiplier_upper < SIGMA_EPS2 / 1.5  # halved noise: the claim is refuted
    with pytest.raises(ValueError, match="more canaries or rounds"):
        gaussian_fit(z, included, np.zeros_like(sampled))


def test_the_effect_is_measured_apart_from_a_model_drifting_along_earlier_canaries():
    """A model that keeps moving along an inserted direction (each earlier sampling adds
    0.1 to every later round's z) inflates the sampled rounds' mean z by about 0.24 over
    20 rounds at q = 1/4; the fit compares them with the unsampled rounds and finds the
    true effect 1, its lower limit missing it in at most 18 of 400 runs."""
    rng = np.random.default_rng(8)
    naive, effects, misses = [], [], 0
    for _ in range(400):
        sim = simulate_canaries(rng, SIGMA_EPS2, 5.0, 0.5, drift=0.1)
        naive.append(sim.z[sim.sampled].mean())
        fit = gaussian_fit(sim.z, sim.included, sim.sampled)
        effects.append(fit.effect)
        misses += fit.effect_lower > 1.0
    assert np.mean(naive) > 1.2
    assert np.mean(effects) == pytest.approx(1.0, abs=0.03) and misses <= 18


def test_the_count_fit_measures_a_canarys_effect_on_the_noised_count():
    """y_r = a − e·n_r + N(0, σ_b²): the declared count (e = ½, σ_b = 5) and one whose
    sensitivity is doubled (e = 1); over 200 runs of 20 rounds the two limits (2.5% each)
    miss at most 18 times (P[Binomial(200, 0.05) > 18] < 2%)."""
    rng = np.random.default_rng(7)
    for effect in (0.5, 1.0):
        n = rng.binomial(100, 0.25, size=20000)
        long_run = count_fit(3.0 - effect * n + 5.0 * rng.standard_normal(n.size), n)
        assert long_run.effect == pytest.approx(effect, abs=0.02) and long_run.noise == pytest.approx(5.0, rel=0.02)
        assert long_run.noise_multiplier == pytest.approx(5.0 / effect, rel=0.05)
        held = 0
        for _ in range(200):
            n = rng.binomial(100, 0.25, size=20)
            fit = count_fit(3.0 - effect * n + 5.0 * rng.standard_normal(20), n)
            held += fit.effect_lower <= effect and fit.noise_upper >= 5.0
        assert held >= 200 - 18, held
    assert count_fit([1.0, 2.0, 3.0], [4, 4, 4]).noise_multiplier == math.inf  # n_r never varies: no effect seen


def test_random_directions_are_unit_and_nearly_orthogonal():
    directions = random_directions(50, 26_010, np.random.default_rng(8))
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-5)
    cosines = directions @ directions.T - np.eye(50)
    assert np.abs(cosines).max() < 6 / math.sqrt(26_010)
