"""The distributed Skellam mechanism's math against independent computations: the exact
Rényi divergence of the Skellam distribution (scipy), Google's dp_accounting for the
Gaussian limit, Monte Carlo for rounding and wrap-around, Flower's own SecAgg+
quantization for the exact transport of integers."""

import math

import numpy as np
import pytest
from dp_accounting import dp_event, rdp
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, factor_extract
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from scipy import stats

from fl_app.secagg_params import unmask_threshold
from strategies.distributed_dp import residues_of
from strategies.privacy.discretization import (
    centred,
    conditional_round,
    decode_sum,
    encode_update,
    hadamard,
    rotate,
    rotation_signs,
    skellam_noise,
    unrotate,
)
from strategies.privacy.distributed import (
    SkellamAccountant,
    SkellamSettings,
    cohort_bound,
    noise_growth,
    settings_for_run,
)
from strategies.privacy.skellam import (
    ORDERS,
    calibrate_skellam_noise,
    rdp_to_epsilon,
    rounded_l1_bound,
    rounded_l2_bound,
    skellam_epsilon,
    skellam_rdp,
    subsampled_rdp,
    wrap_probability,
)


def exact_skellam_divergence(order: int, shift: int, variance: float) -> float:
    """D_α(sk(μ) + Δ ‖ sk(μ)) summed over the support with scipy's Skellam pmf."""
    k = np.arange(-int(20 * math.sqrt(variance)) - 50, int(20 * math.sqrt(variance)) + 50)
    log_p = stats.skellam.logpmf(k - shift, variance / 2, variance / 2)
    log_q = stats.skellam.logpmf(k, variance / 2, variance / 2)
    terms = order * log_p + (1 - order) * log_q
    return float(np.logaddexp.reduce(terms[np.isfinite(terms)])) / (order - 1)


@pytest.mark.parametrize("variance", [4.0, 30.0, 400.0])
@pytest.mark.parametrize("shift", [1, 3])
def test_skellam_rdp_bounds_the_exact_divergence(variance, shift):
    for order in (2, 5, 16, 40):
        exact = exact_skellam_divergence(order, shift, variance)
        bound = skellam_rdp(order, shift, shift, variance)
        assert exact <= bound * (1 + 1e-9), (order, exact, bound)
        assert bound <= order * shift ** 2 / (2 * variance) + 3 * shift / (2 * variance) + 1e-12


def gaussian_epsilon(sigma: float, q: float, rounds: int, delta: float) -> float:
    accountant = rdp.RdpAccountant(list(ORDERS))
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("sigma, q, rounds", [(1.0, 1.0, 10), (3.0, 1.0, 50), (1.9, 0.1, 50), (0.86, 0.1, 50)])
def test_a_fine_grid_tends_to_the_gaussian_and_never_beats_it(sigma, q, rounds):
    """At a large integer sensitivity the discrete surcharge vanishes: at q = 1 ε is the
    Gaussian's (dp_accounting); with sampling the general amplification bound (Zhu & Wang
    Theorem 6) is never below dp_accounting's sampled-Gaussian bound."""
    l2 = 1e6
    ours = skellam_epsilon(sigma, l2, rounded_l1_bound(l2, 2 ** 15), q, rounds, 1e-5)
    theirs = gaussian_epsilon(sigma, q, rounds, 1e-5)
    if q == 1.0:
        assert ours == pytest.approx(theirs, rel=1e-3)
    else:
        assert ours >= theirs * (1 - 1e-6)


def test_amplification_without_sampling_is_none_and_is_monotone_in_q():
    base = lambda a: a / 2.0  # noqa: E731  the Gaussian at σ = 1
    assert subsampled_rdp(7, 1.0, base) == base(7)
    values = [subsampled_rdp(7, q, base) for q in (0.01, 0.1, 0.5, 0.9)]
    assert values == sorted(values) and values[-1] <= base(7)


def test_conversion_matches_dp_accounting():
    curve = [a / (2 * 1.5 ** 2) * 20 for a in ORDERS]
    accountant = rdp.RdpAccountant(list(ORDERS))
    accountant.compose(dp_event.GaussianDpEvent(1.5), 20)
    assert rdp_to_epsilon(curve, ORDERS, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_calibration_spends_the_target_and_no_more():
    l2 = 2000.0
    l1 = rounded_l1_bound(l2, 2 ** 15)
    sigma = calibrate_skellam_noise(2.0, l2, l1, 0.1, 50, 1e-5)
    assert skellam_epsilon(sigma, l2, l1, 0.1, 50, 1e-5) <= 2.0
    assert skellam_epsilon(sigma * 0.995, l2, l1, 0.1, 50, 1e-5) > 2.0


def test_hadamard_is_orthonormal_and_its_own_inverse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=64)
    matrix = np.array([hadamard(e) for e in np.eye(64)])
    assert np.allclose(matrix @ matrix.T, np.eye(64))
    assert np.allclose(hadamard(hadamard(x)), x)
    signs = rotation_signs([1, 2, 3], 128)
    y = rng.normal(size=100)
    assert np.linalg.norm(rotate(y, signs)) == pytest.approx(np.linalg.norm(y))
    assert np.allclose(unrotate(rotate(y, signs), signs, 100), y)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(np.ones(6))


def test_conditional_rounding_is_unbiased_and_never_exceeds_its_bound():
    rng = np.random.default_rng(1)
    d, norm = 256, 40.0
    x = rng.normal(size=d)
    x *= norm / np.linalg.norm(x)
    bound = rounded_l2_bound(norm, d, math.exp(-0.5))
    draws = np.array([conditional_round(x, bound, rng) for _ in range(2000)])
    assert (np.linalg.norm(draws, axis=1) <= bound).all()
    assert np.abs(draws.mean(axis=0) - x).max() < 0.1
    unconditioned = np.floor(x) + (rng.random((2000, d)) < x - np.floor(x))
    assert (np.linalg.norm(unconditioned, axis=1) > bound).mean() <= math.exp(-0.5)


def test_skellam_noise_has_its_variance():
    noise = skellam_noise(np.random.default_rng(2), 50.0, 200_000)
    assert noise.dtype.kind == "i"
    assert noise.mean() == pytest.approx(0, abs=0.05) and noise.var() == pytest.approx(50.0, rel=0.02)


def test_wrap_probability_bounds_monte_carlo():
    rng = np.random.default_rng(3)
    modulus, d, n, variance = 256, 64, 4, 1200.0
    bound = wrap_probability(modulus / 2, (n * 10.0) ** 2 / d, variance, n, d)
    assert 0.01 < bound < 1
    signs, wraps = rotation_signs([0], d), 0
    for _ in range(400):
        x = np.zeros(d)
        x[0] = 10.0  # all n clients aligned on one coordinate: the worst case for the signal
        total = sum(conditional_round(rotate(x, signs), 10.0 + math.sqrt(d), rng) for _ in range(n))
        total = total + skellam_noise(rng, variance, d)
        wraps += bool((np.abs(total) >= modulus / 2).any())
    assert wraps / 400 <= bound


def test_encoded_updates_sum_to_the_noised_sum():
    """Clients encode, the residues add modulo M, the server decodes: the sum of the
    updates plus noise of variance γ²·(total noise) per coordinate, unbiased."""
    rng = np.random.default_rng(4)
    d, clients, scale, modulus, share = 300, 5, 1e-3, 2 ** 16, 400.0
    signs = rotation_signs([9, 1], 512)
    updates = [rng.normal(size=d) * 0.02 for _ in range(clients)]
    errors = []
    for _ in range(40):
        residues = np.zeros(512, dtype=np.int64)
        for update in updates:
            message = encode_update(update, signs=signs, scale=scale, norm_bound=1e9, noise_variance=share,
                                    modulus=modulus, rng=rng)
            assert message.min() >= 0 and message.max() < modulus
            residues = np.mod(residues + message, modulus)
        errors.append(decode_sum(residues, signs=signs, scale=scale, modulus=modulus, dimension=d,
                                 top_up=np.zeros(512, dtype=np.int64)) - sum(updates))
    errors = np.array(errors)
    rounding_variance = clients / 4 * scale ** 2  # at most a quarter per client and coordinate
    assert errors.var() == pytest.approx(clients * share * scale ** 2, rel=0.1, abs=rounding_variance)
    assert abs(errors.mean()) < 3 * math.sqrt(errors.var() / errors.size)


def test_flowers_secagg_quantization_carries_the_integers_exactly():
    """What `SecAggPlusWorkflow` does to the messages with clipping range M/2 and M
    levels (quantize, weight factor, sum modulo 2^32 of masked vectors, factor extract,
    dequantize, offset, divide): the strategy recovers the residue sum exactly."""
    rng = np.random.default_rng(5)
    bits, n = 16, 7
    modulus, field = 2 ** bits, 2 ** 32
    residues = [rng.integers(0, modulus, size=1000) for _ in range(n)]
    totals = [np.zeros(1, dtype=np.int64), np.zeros(1000, dtype=np.int64)]
    for r in residues:
        message = (r - modulus // 2).astype(np.float64)
        quantized = quantize([message], modulus // 2, modulus)
        assert np.array_equal(quantized[0], r)  # stochastic rounding leaves integers alone
        for i, part in enumerate(factor_combine(modulus, quantized)):
            mask = rng.integers(0, field, size=part.shape)
            totals[i] = np.mod(totals[i] + np.mod(part.astype(np.int64) + mask, field) - mask, field)
    q_total, (recon,) = factor_extract(totals)
    assert q_total == n * modulus
    (mean,) = dequantize([recon], modulus // 2, modulus)
    mean = (mean - (n - 1) * (modulus // 2)) * (modulus / q_total)
    secure_sum = np.mod(np.rint(mean * n).astype(np.int64) + n * (modulus // 2), modulus)
    assert np.array_equal(secure_sum, np.mod(sum(residues), modulus))
    assert np.array_equal(residues_of((residues[0] - modulus // 2).astype(np.float64), modulus), residues[0])


def test_centred_maps_residues_to_the_signed_range():
    assert list(centred(np.array([0, 1, 127, 128, 255, -1, 256]), 256)) == [0, 1, 127, -128, -1, -1, 0]


def test_run_settings_keep_wrap_around_rare_and_refuse_too_few_bits():
    threshold = lambda k: max(2, round(0.9 * k)) if k > 1 else 1  # noqa: E731
    settings = settings_for_run(clipping_norm=0.5, dimension=26010, bits=16, noise_multiplier=None,
                                target_epsilon=8.0, rounds=50, delta=1e-5, population=1000, sampling_rate=0.1,
                                threshold=threshold)
    assert settings.padded_dimension == 32768 and settings.cohort_bound == cohort_bound(1000, 0.1) > 100
    assert settings.wrap_bound <= 2e-6
    assert 0 < settings.l2_sensitivity / (settings.clipping_norm / settings.scale) - 1 < 0.01
    assert skellam_epsilon(settings.noise_multiplier, settings.l2_sensitivity, settings.l1_sensitivity,
                           0.1, 50, 1e-5) <= 8.0
    with pytest.raises(ValueError, match="dp-bits = 8 cannot hold"):
        settings_for_run(clipping_norm=0.5, dimension=26010, bits=8, noise_multiplier=1.0, target_epsilon=None,
                         rounds=50, delta=1e-5, population=1000, sampling_rate=0.1, threshold=threshold)
    with pytest.raises(ValueError, match="dp-bits = 28 leaves SecAgg"):
        settings_for_run(clipping_norm=0.5, dimension=26010, bits=28, noise_multiplier=1.0, target_epsilon=None,
                         rounds=50, delta=1e-5, population=1000, sampling_rate=0.1, threshold=threshold)


def test_accountant_states_both_guarantees_and_round_trips():
    settings = SkellamSettings(clipping_norm=0.5, dimension=2 ** 15, bits=16, scale=0.5 / 3000, noise_multiplier=1.2,
                               noise_growth=1.1, cohort_bound=200, wrap_bound=0.0)
    l2, l1 = settings.l2_sensitivity, settings.l1_sensitivity
    accountant = SkellamAccountant(1e-5)
    for _ in range(20):
        accountant.step(settings, 0.1)
    public, server = accountant.epsilon(), accountant.epsilon(against_server=True)
    assert accountant.rounds == 20 and 0 < public < server
    assert public == pytest.approx(skellam_epsilon(1.2, l2, l1, 0.1, 20, 1e-5))
    assert server == pytest.approx(skellam_epsilon(1.2 / math.sqrt(1.1), l2, l1, 1.0, 20, 1e-5))
    copy = SkellamAccountant(1e-5)
    copy.load_state_dict(accountant.state_dict())
    assert copy.epsilon() == public
    with pytest.raises(ValueError, match="not skellam-rdp at delta 0.001"):
        SkellamAccountant(1e-3).load_state_dict(accountant.state_dict())


def test_every_released_sum_carries_exactly_mu_and_every_unmasked_sum_at_least_mu_over_g():
    """For every cohort K of a population and every number n of survivors SecAgg+ can
    unmask with (τ(K) ≤ n ≤ K), the survivors' shares stay within [μ/g, μ] and the
    server's top-up makes the released noise exactly μ."""
    threshold = lambda k: unmask_threshold(k, 1.0, 0.9)  # noqa: E731
    growth = noise_growth(60, threshold)
    settings = SkellamSettings(clipping_norm=0.5, dimension=1000, bits=16, scale=1e-3, noise_multiplier=1.3,
                               noise_growth=growth, cohort_bound=60, wrap_bound=0.0)
    mu = settings.variance
    for k in range(1, 61):
        tau = threshold(k)
        for n in range(tau, k + 1):
            survivors = n * settings.share_variance(tau)
            assert mu / growth * (1 - 1e-12) <= survivors <= mu * (1 + 1e-12)
            assert survivors + settings.top_up_variance(n, tau) == pytest.approx(mu, rel=1e-12)
    assert settings.top_up_variance(0, 1) == mu


def test_the_released_noise_does_not_tell_the_cohort_size():
    """The attack on per-client shares alone: the released noise's variance, measured
    over many coordinates, tells a cohort of 5 (τ = 4) from one of 6 (τ = 5) if each
    client adds μ/τ(K) (5/4 against 6/5 of μ). With the server's top-up both release
    sk(μ): the same measurement finds no difference."""
    rng = np.random.default_rng(11)
    threshold = lambda k: unmask_threshold(k, 1.0, 0.9)  # noqa: E731
    settings = SkellamSettings(clipping_norm=0.5, dimension=2 ** 20, bits=16, scale=1e-3, noise_multiplier=0.01,
                               noise_growth=noise_growth(60, threshold), cohort_bound=60, wrap_bound=0.0)
    size, mu = settings.padded_dimension, settings.variance
    assert (threshold(5), threshold(6)) == (4, 5)

    def measured(k: int, share: float, top_up: float) -> float:
        noise = sum(skellam_noise(rng, share, size) for _ in range(k)) + skellam_noise(rng, top_up, size)
        return float(np.var(noise)) / mu

    error = 4 * math.sqrt(2 / size)  # four standard errors of a variance estimate
    shares_only = [measured(k, mu / threshold(k), 0.0) for k in (5, 6)]
    assert shares_only[0] - shares_only[1] > 2 * error
    topped = [measured(k, settings.share_variance(threshold(k)),
                       settings.top_up_variance(k, threshold(k))) for k in (5, 6)]
    assert abs(topped[0] - topped[1]) < error and all(abs(v - 1) < error for v in topped)
