"""The numbers behind client-level DP: clipping, noise, Poisson sampling, accounting."""

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from strategies.privacy.accounting import ClientLevelAccountant, calibrate_noise_multiplier
from strategies.privacy.mechanism import (
    clip_update,
    clipped_deltas,
    global_l2_norm,
    model_delta,
    noisy_mean,
    sum_updates,
)
from strategies.privacy.sampling import poisson_sample


def random_update(seed: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [scale * rng.normal(size=s).astype(np.float32) for s in [(32, 1, 3, 3), (32,), (10, 128)]]


@pytest.mark.parametrize("seed", range(5))
def test_clipping_scales_large_updates_to_exactly_s(seed):
    update = random_update(seed, scale=10.0)
    clipped, norm = clip_update(update, clipping_norm=1.5)
    assert norm == pytest.approx(global_l2_norm(update)) and norm > 1.5
    assert global_l2_norm(clipped) == pytest.approx(1.5, rel=1e-6)
    for a, c in zip(update, clipped, strict=True):  # same direction, every tensor scaled alike
        np.testing.assert_allclose(c, a * (1.5 / norm), rtol=1e-6)


def test_global_norm_is_the_float64_norm_of_the_whole_update():
    update = random_update(3, scale=0.1)
    flat = np.concatenate([a.ravel().astype(np.float64) for a in update])
    assert global_l2_norm(update) == pytest.approx(float(np.sqrt(flat @ flat)), rel=1e-15)


def test_server_clipping_in_one_workspace_equals_clipping_each_copy():
    """The server clips Δ_k = w_k − w in one reused set of arrays and sums each before the
    next: the same sum (bitwise) and norms as clipping separate copies, inputs untouched."""
    reference = random_update(0, scale=1.0)
    weights = [[r + d for r, d in zip(reference, random_update(10 + k, scale), strict=True)]
               for k, scale in enumerate([0.001, 5.0, 0.3, 20.0])]
    before = [[a.copy() for a in w] for w in weights]
    shapes = [a.shape for a in reference]
    copies = [clip_update(model_delta(w, reference), 1.0) for w in weights]
    norms: list[float] = []
    total = sum_updates(clipped_deltas(weights, reference, 1.0, norms), shapes)
    expected = sum_updates([c for c, _ in copies], shapes)
    assert all(np.array_equal(t, e) for t, e in zip(total, expected, strict=True))
    assert norms == [n for _, n in copies] and min(norms) < 1.0 < max(norms)
    assert all(np.array_equal(a, b) for w, c in zip(weights, before, strict=True) for a, b in zip(w, c, strict=True))


def test_clipping_leaves_small_updates_untouched():
    update = random_update(0, scale=1e-3)
    clipped, norm = clip_update(update, clipping_norm=1.5)
    assert norm < 1.5
    assert all(np.array_equal(a, c) for a, c in zip(update, clipped, strict=True))


def test_noise_on_the_mean_has_std_sigma_s_over_qn():
    sigma, s, q, n = 1.3, 0.7, 0.25, 40
    shapes = [(1000, 600), (400_000,)]  # 1,000,000 coordinates
    zeros = [[np.zeros(sh, dtype=np.float32) for sh in shapes] for _ in range(3)]
    mean = noisy_mean(sum_updates(zeros, shapes), clipping_norm=s, noise_multiplier=sigma,
                      expected_cohort_size=q * n, rng=np.random.default_rng(0))
    coords = np.concatenate([m.ravel() for m in mean])
    assert coords.size >= 1_000_000
    assert abs(coords.mean()) < 5 * sigma * s / (q * n) / 1000
    assert coords.std() == pytest.approx(sigma * s / (q * n), rel=0.02)


def test_mean_divides_the_sum_by_the_expected_not_the_realised_cohort():
    shapes = [(3,)]
    updates = [[np.array([1.0, 2.0, 3.0])], [np.array([3.0, 2.0, 1.0])]]
    mean = noisy_mean(sum_updates(updates, shapes), clipping_norm=10.0, noise_multiplier=1e-12,
                      expected_cohort_size=8.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(mean[0], [0.5, 0.5, 0.5], atol=1e-9)


def test_empty_cohort_releases_noise_only():
    mean = noisy_mean(sum_updates([], [(10_000,)]), clipping_norm=1.0, noise_multiplier=2.0,
                      expected_cohort_size=5.0, rng=np.random.default_rng(1))
    assert mean[0].std() == pytest.approx(2.0 / 5.0, rel=0.05)


def test_poisson_participation_frequency_matches_q():
    q, clients, rounds = 0.3, 100, 2000
    rng = np.random.default_rng(7)
    counts = np.zeros(clients)
    for _ in range(rounds):
        for c in poisson_sample(list(range(clients)), q, rng):
            counts[c] += 1
    frequency = counts.sum() / (clients * rounds)
    standard_error = np.sqrt(q * (1 - q) / (clients * rounds))
    assert abs(frequency - q) < 4 * standard_error
    sizes = [len(poisson_sample(list(range(10)), 0.05, rng)) for _ in range(500)]
    assert 0 in sizes and len(set(sizes)) > 1  # cohorts vary, and may be empty


@pytest.mark.parametrize("kind, reference", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_opacus_stepped_directly(kind, reference):
    sigma, q, rounds, delta = 1.1, 0.1, 50, 1e-5
    ours, theirs = ClientLevelAccountant(kind, delta), reference()
    for _ in range(rounds):
        ours.step(sigma, q)
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.rounds == rounds
    assert ours.epsilon() == pytest.approx(theirs.get_epsilon(delta=delta), rel=1e-9)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_calibrated_sigma_spends_at_most_the_target_and_close_to_it(kind):
    target, delta, q, rounds = 3.0, 1e-5, 0.1, 100
    sigma = calibrate_noise_multiplier(target, delta, q, rounds, kind)
    accountant = ClientLevelAccountant(kind, delta)
    for _ in range(rounds):
        accountant.step(sigma, q)
    assert 0.98 * target <= accountant.epsilon() <= target


def test_state_dict_continues_the_budget():
    first = ClientLevelAccountant("rdp", 1e-5)
    for _ in range(10):
        first.step(1.0, 0.2)
    resumed = ClientLevelAccountant("rdp", 1e-5)
    resumed.load_state_dict(first.state_dict())
    assert resumed.rounds == 10 and resumed.epsilon() == first.epsilon()
    predicted = resumed.epsilon_after_next(1.0, 0.2)
    assert resumed.rounds == 10
    resumed.step(1.0, 0.2)
    assert resumed.epsilon() == predicted > first.epsilon()
    with pytest.raises(ValueError, match="not rdp at delta 0.001"):
        ClientLevelAccountant("rdp", 1e-3).load_state_dict(first.state_dict())


def test_adaptive_clip_norm_shrinks_when_most_updates_fit_and_grows_when_most_are_clipped():
    from strategies.privacy.adaptive_clipping import (
        centred_unclipped_count,
        next_clipping_norm,
        noised_unclipped_fraction,
    )

    def fraction(norms, c, m):
        return noised_unclipped_fraction(centred_unclipped_count(norms, c), 1.0, m, rng)

    rng = np.random.default_rng(0)
    small, large = [0.1] * 20, [10.0] * 20
    c = 1.0
    for _ in range(10):
        c = next_clipping_norm(c, fraction(small, c, 20), 0.5, 0.2)
    assert c < 0.5
    c = 1.0
    for _ in range(10):
        c = next_clipping_norm(c, fraction(large, c, 20), 0.5, 0.2)
    assert c > 2.0
    norms = list(np.random.default_rng(1).lognormal(0.0, 0.5, size=1000))
    c = 5.0
    for _ in range(300):
        c = next_clipping_norm(c, fraction(norms, c, 1000), 0.5, 0.2)
    assert c == pytest.approx(np.median(norms), rel=0.1)  # converges to the gamma-quantile


def test_the_noised_count_is_centred_and_its_centring_added_back_with_the_expected_cohort():
    """b̃ = (Σ_k (b_k − ½) + N(0, σ_b²) + ½·m) / m: each update moves the noised count by
    ±½, and the fraction is #unclipped / m when the cohort has its expected size m."""
    from strategies.privacy.adaptive_clipping import centred_unclipped_count, noised_unclipped_fraction

    assert centred_unclipped_count([0.2, 1.0, 3.0, float("nan")], 1.0) == 0.5 + 0.5 - 0.5 - 0.5
    assert centred_unclipped_count([], 1.0) == 0.0
    rng = np.random.default_rng(0)
    norms = [0.1] * 7 + [5.0] * 3  # 10 updates, 7 unclipped
    assert centred_unclipped_count(norms, 1.0) == 2.0
    assert noised_unclipped_fraction(2.0, 1e-12, 10, rng) == pytest.approx(0.7, abs=1e-9)
    assert noised_unclipped_fraction(2.0, 1e-12, 20, rng) == pytest.approx((2.0 + 10) / 20, abs=1e-9)
    draws = [noised_unclipped_fraction(0.0, 3.0, 10, rng) for _ in range(20_000)]
    assert np.std(draws) == pytest.approx(3.0 / 10, rel=0.03) and np.mean(draws) == pytest.approx(0.5, abs=0.01)


def test_adaptive_clipping_update_noise_keeps_the_accounted_sigma():
    from strategies.privacy.adaptive_clipping import update_noise_multiplier

    sigma, sigma_b = 1.0, 5.0
    sigma_delta = update_noise_multiplier(sigma, sigma_b)
    # two Gaussian queries compose like one with sigma^-2 = sigma_delta^-2 + (2 sigma_b)^-2
    assert sigma_delta ** -2 + (2 * sigma_b) ** -2 == pytest.approx(sigma ** -2)
    assert sigma_delta > sigma
    with pytest.raises(ValueError, match="2 \\* dp-clipped-count-stddev > noise multiplier"):
        update_noise_multiplier(1.0, 0.5)


def test_importing_the_app_leaves_the_root_logger_alone():
    import subprocess
    import sys

    code = ("import logging, fl_app.server_app, fl_app.client_app; "
            "print(len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"  # else every Flower log line prints twice
