"""Adaptive clipping for DP-FedAvg (Andrew, Thakkar, McMahan & Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS).

The clipping norm C tracks a target quantile γ of the update norms. Each round every
client's update counts b_k = 1[‖Δ_k‖₂ ≤ C]; the server releases the noised fraction

    b̃ = (Σ_k (b_k − ½) + N(0, σ_b²) + ½·m) / m

and moves C geometrically: C ← C · exp(−η_C (b̃ − γ)). When most updates are below C
(b̃ > γ) C shrinks; when most are clipped it grows.

The noised quantity is the centred count Σ_k (b_k − ½): a client joining or leaving the
cohort moves it by exactly ½ whether its update is clipped or not, so its sensitivity is
½ (the uncentred Σ_k b_k moves by 1). ½·m, with m the fixed expected cohort size, is
public and adds the centring back on average, as TensorFlow Privacy's
QuantileEstimatorQuery does. Releasing b̃ is a second Gaussian query on the same cohort,
of noise multiplier σ_b / ½ = 2σ_b. To keep the round's total privacy equal to that of
one Gaussian mechanism with noise multiplier σ (the one the accountant steps with,
`strategies.privacy.ledger`), the update sum gets the slightly larger noise multiplier

    σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2),

which requires 2σ_b > σ (Theorem 1 of the paper).
"""

import math
from collections.abc import Sequence

import numpy as np

from strategies.privacy.randomness import secure_gaussian

COUNT_SENSITIVITY = 0.5  # of the centred count: one client moves Σ_k (b_k − ½) by ½


def check_count_noise(noise_multiplier: float, count_stddev: float) -> str | None:
    """Whether the count noise leaves room for the update noise: Theorem 1 of Andrew et
    al. 2021 needs 2σ_b > σ for σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2) to exist.

    Args:
        noise_multiplier: σ, the noise multiplier the accountant steps with.
        count_stddev: σ_b, the std of the noise on the count of unclipped updates.

    Returns:
        What is wrong (2σ_b ≤ σ), or None when the pair is usable.
    """
    if 2 * count_stddev > noise_multiplier:
        return None
    return (f"adaptive clipping needs 2 * dp-clipped-count-stddev > noise multiplier; "
            f"got 2 * {count_stddev} <= {noise_multiplier}")


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The update sum's noise multiplier σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), so that the update
    sum and the noised count together cost one Gaussian mechanism of σ (Andrew et al.
    2021, Theorem 1).

    Args:
        noise_multiplier: σ, the noise multiplier the accountant steps with.
        count_stddev: σ_b, the std of the noise on the count of unclipped updates.

    Returns:
        σ_Δ (> σ).

    Raises:
        ValueError: 2σ_b ≤ σ (`check_count_noise`).
    """
    problem = check_count_noise(noise_multiplier, count_stddev)
    if problem is not None:
        raise ValueError(problem)
    return float((noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5)


def centred_unclipped_count(norms: Sequence[float], clipping_norm: float) -> float:
    """Σ_k (b_k − ½) with b_k = 1[‖Δ_k‖₂ ≤ C]: the count the server noises, of sensitivity
    `COUNT_SENSITIVITY` (a norm that is NaN counts as clipped).

    Args:
        norms: ‖Δ_k‖₂ of the round's updates before clipping.
        clipping_norm: C, the round's clipping norm.

    Returns:
        The centred count of unclipped updates.
    """
    return sum(0.5 if n <= clipping_norm else -0.5 for n in norms)


def noised_unclipped_fraction(
    centred_count: float, count_stddev: float, expected_cohort_size: float, rng: np.random.Generator
) -> float:
    """b̃ = (Σ_k (b_k − ½) + N(0, σ_b²) + ½·m) / m.

    Args:
        centred_count: Σ_k (b_k − ½), from `centred_unclipped_count`.
        count_stddev: σ_b.
        expected_cohort_size: m = qN, the fixed denominator.
        rng: the generator of the DP noise.

    Returns:
        The noised fraction of unclipped updates b̃.
    """
    noised = centred_count + float(secure_gaussian(rng, count_stddev, 1)[0])
    return (noised + 0.5 * expected_cohort_size) / expected_cohort_size


def next_clipping_norm(
    clipping_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """The geometric step C ← C · exp(−η_C (b̃ − γ)).

    Args:
        clipping_norm: C of the round.
        unclipped_fraction: b̃, the noised fraction of unclipped updates.
        target_quantile: γ.
        learning_rate: η_C.

    Returns:
        C of the next round.
    """
    return clipping_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))
