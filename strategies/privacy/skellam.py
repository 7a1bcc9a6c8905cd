"""The distributed Skellam mechanism's math: its Rényi DP, amplification by Poisson
sampling for any mechanism, the (ε, δ) conversion, the noise calibration, the norm of a
randomly rounded vector and the probability that the modular sum wraps around.

The mechanism (Agarwal, Kairouz & Liu 2021, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS): every client clips its update to L2 norm S,
rotates it, scales it by 1/γ, rounds it to integers with a bounded norm, adds symmetric
Skellam noise and sends it through secure aggregation; a sum of independent Skellam
variables is Skellam, so the sum carries one Skellam noise of the total variance.
`sk(μ)` below is the symmetric Skellam distribution of variance μ: Poisson(μ/2) −
Poisson(μ/2).
"""

import math
from collections.abc import Callable, Sequence

from scipy import optimize, special

# Integer orders (the amplification bound below needs integers): dense where the optimum
# of a federated run lies, sparse up to where it never does.
ORDERS: tuple[int, ...] = tuple(range(2, 65)) + tuple(range(72, 257, 8))


def skellam_rdp(order: int, l2_sensitivity: float, l1_sensitivity: float, variance: float) -> float:
    """RDP of the multi-dimensional Skellam mechanism, integer order α > 1:

        ε(α) ≤ α Δ₂² / (2μ) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4μ²), 3 Δ₁ / (2μ) )

    for integer-valued queries of L2 / L1 sensitivity Δ₂ / Δ₁ and noise sk(μ) on every
    coordinate (Agarwal, Kairouz & Liu 2021, Theorem 3.5, written with the variance μ).
    The first term is the Gaussian mechanism's at the same variance; the second is what
    the discrete noise costs beyond it, negligible once Δ₂ is large.

    Args:
        order: α ≥ 2, an integer.
        l2_sensitivity: Δ₂, in integer units.
        l1_sensitivity: Δ₁, in integer units.
        variance: μ, the noise variance per coordinate.

    Returns:
        ε(α).
    """
    a, mu = order, variance
    return (a * l2_sensitivity ** 2 / (2 * mu)
            + min(((2 * a - 1) * l2_sensitivity ** 2 + 6 * l1_sensitivity) / (4 * mu ** 2),
                  3 * l1_sensitivity / (2 * mu)))


def subsampled_rdp(order: int, sampling_rate: float, rdp: Callable[[int], float]) -> float:
    """RDP at integer order α of any mechanism with RDP `rdp` run on a Poisson sample
    of rate q, for add/remove neighbours (Zhu & Wang 2019, "Poisson Subsampled Rényi
    Differential Privacy", ICML, Theorem 6, the bound for a general mechanism):

        ε'(α) ≤ 1/(α−1) · log( (1−q)^(α−1) (αq − q + 1) + C(α,2) q² (1−q)^(α−2) e^{ε(2)}
                               + 3 Σ_{l=3..α} C(α,l) q^l (1−q)^(α−l) e^{(l−1) ε(l)} )

    and never more than ε(α) itself (q = 1: no amplification)."""
    if sampling_rate >= 1:
        return rdp(order)
    q, a = sampling_rate, order
    log_terms = [math.log((1 - q) ** (a - 1) * (a * q - q + 1)),
                 math.log(special.comb(a, 2)) + 2 * math.log(q) + (a - 2) * math.log1p(-q) + rdp(2)]
    for ell in range(3, a + 1):
        log_terms.append(math.log(3) + special.gammaln(a + 1) - special.gammaln(ell + 1)
                         - special.gammaln(a - ell + 1) + ell * math.log(q) + (a - ell) * math.log1p(-q)
                         + (ell - 1) * rdp(ell))
    return min(float(special.logsumexp(log_terms)) / (a - 1), rdp(order))


def rdp_to_epsilon(rdp: Sequence[float], orders: Sequence[int], delta: float) -> float:
    """ε at δ from RDP at several orders, the best order's (Balle et al. 2020,
    "Hypothesis Testing Interpretations and Renyi Differential Privacy", Theorem 21; the
    conversion Opacus and dp_accounting use):

        ε = min_α  ε(α) + log((α−1)/α) − (log δ + log α) / (α − 1)
    """
    return max(0.0, min(r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
                        for r, a in zip(rdp, orders, strict=True)))


def skellam_round_rdp(noise_multiplier: float, l2_sensitivity: float, l1_sensitivity: float,
                      sampling_rate: float) -> list[float]:
    """RDP at `ORDERS` of one release of the Skellam mechanism with variance (σΔ₂)² on a
    Poisson sample of rate q (q = 1: on a cohort the observer knows)."""
    variance = (noise_multiplier * l2_sensitivity) ** 2

    def base(order: int) -> float:
        return skellam_rdp(order, l2_sensitivity, l1_sensitivity, variance)

    return [subsampled_rdp(a, sampling_rate, base) for a in ORDERS]


def skellam_epsilon(noise_multiplier: float, l2_sensitivity: float, l1_sensitivity: float,
                    sampling_rate: float, rounds: int, delta: float) -> float:
    """ε at δ of `rounds` releases of the Skellam mechanism with variance (σΔ₂)², each on
    a Poisson sample of rate q (RDP adds up over the releases).

    Args:
        noise_multiplier: σ, the noise std over Δ₂.
        l2_sensitivity: Δ₂ (integer units).
        l1_sensitivity: Δ₁ (integer units).
        sampling_rate: q (1: no amplification).
        rounds: how many releases compose.
        delta: δ.

    Returns:
        ε (0 for no round).
    """
    if rounds <= 0:
        return 0.0
    rdp = skellam_round_rdp(noise_multiplier, l2_sensitivity, l1_sensitivity, sampling_rate)
    return rdp_to_epsilon([rounds * r for r in rdp], ORDERS, delta)


def calibrate_skellam_noise(target_epsilon: float, l2_sensitivity: float, l1_sensitivity: float,
                            sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest σ (to 0.1%) whose `skellam_epsilon` is at most `target_epsilon`."""
    def excess(log_sigma: float) -> float:
        return skellam_epsilon(math.exp(log_sigma), l2_sensitivity, l1_sensitivity, sampling_rate,
                               rounds, delta) - target_epsilon

    low, high = math.log(0.05), math.log(50.0)
    if excess(high) > 0:
        raise ValueError(f"no noise multiplier up to 50 reaches epsilon = {target_epsilon} in {rounds} rounds")
    if excess(low) <= 0:
        return math.exp(low)
    sigma = math.exp(optimize.brentq(excess, low, high, xtol=1e-4))
    while excess(math.log(sigma)) > 0:  # brentq's root may sit on either side
        sigma *= 1.0005
    return sigma


def rounded_l2_bound(norm: float, dimension: int, beta: float) -> float:
    """The L2 norm that conditional randomized rounding guarantees for a vector of norm
    `norm` in d dimensions: each coordinate rounded up or down at random (unbiased), the
    draw repeated until the rounded vector's norm is at most

        min( norm + √d,  √(norm² + d/4 + √(2 log(1/β)) · (norm + √d / 2)) )

    which a single draw exceeds with probability at most β (Kairouz, Liu & Steinke 2021,
    "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
    Aggregation", ICML, Lemma 28). The first bound always holds (each coordinate moves by
    less than 1)."""
    always = norm + math.sqrt(dimension)
    if beta <= 0:
        return always
    with_retries = math.sqrt(norm ** 2 + dimension / 4
                             + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dimension) / 2))
    return min(always, with_retries)


def rounded_l1_bound(l2_bound: float, dimension: int) -> float:
    """An L1 bound for an integer vector of L2 norm at most Δ₂: Δ₁ ≤ min(Δ₂², √d Δ₂)
    (|x| ≤ x² for an integer, and Cauchy-Schwarz)."""
    return min(l2_bound ** 2, math.sqrt(dimension) * l2_bound)


def wrap_probability(half_range: float, signal_proxy: float, variance: float, rounding: float,
                     dimension: int) -> float:
    """An upper bound on the probability that some coordinate of the integer sum leaves
    (−M/2, M/2), so that the modular sum wraps around (a union over the d coordinates of a
    Chernoff bound).

    After a shared random rotation the sum of the scaled updates is, per coordinate,
    sub-Gaussian with variance proxy s² ≤ ‖Σ x‖²/d (`signal_proxy`); the Skellam noise
    sk(μ) has E e^{tZ} = e^{μ(cosh t − 1)}; rounding moves a coordinate of the sum by less
    than `rounding` (one per client). So P(|X| ≥ a) ≤ 2 min_t exp(−ta + t²s²/2 + μ(cosh t − 1))
    with a = M/2 − rounding.

    Args:
        half_range: M/2.
        signal_proxy: s², the signal's variance proxy per coordinate (integer units).
        variance: μ.
        rounding: the largest shift rounding gives a coordinate of the sum.
        dimension: d, the number of coordinates.

    Returns:
        A probability bound in [0, 1].
    """
    a = half_range - rounding
    if a <= 0:
        return 1.0

    def log_bound(t: float) -> float:
        return -t * a + t * t * signal_proxy / 2 + variance * (math.cosh(t) - 1)

    t_max = math.asinh(a / max(variance, 1e-300)) + 1.0
    best = optimize.minimize_scalar(log_bound, bounds=(0.0, t_max), method="bounded", options={"xatol": 1e-12})
    log_total = math.log(2 * dimension) + min(float(best.fun), 0.0)
    return float(min(1.0, math.exp(log_total)))


def padded_dimension(dimension: int) -> int:
    """The next power of two ≥ d (the Hadamard transform's length)."""
    return 1 << max(0, math.ceil(math.log2(dimension)))
