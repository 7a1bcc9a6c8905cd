"""Adaptive clipping for DP-FedAvg (Andrew, Thakkar, McMahan & Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS).

The clipping norm C tracks a target quantile γ of the update norms. Each round every
client reports b_k = 1[‖Δ_k‖₂ ≤ C]; the server releases the noised fraction

    b̃ = (Σ_k b_k + N(0, σ_b²)) / m

and moves C geometrically: C ← C · exp(−η_C (b̃ − γ)). When most updates are below C
(b̃ > γ) C shrinks; when most are clipped it grows.

Releasing b̃ is a second Gaussian query on the same cohort. To keep the round's total
privacy equal to that of one Gaussian mechanism with noise multiplier σ (the one the
accountant steps with), the update sum gets the slightly larger noise multiplier

    σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2),

which requires 2σ_b > σ (Theorem 1 of the paper).
"""

import math
from collections.abc import Sequence

import numpy as np

from strategies.privacy.randomness import secure_gaussian


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
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def noised_unclipped_fraction(
    norms: Sequence[float],
    clipping_norm: float,
    count_stddev: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> float:
    """b̃ = (#{k: ‖Δ_k‖₂ ≤ C} + N(0, σ_b²)) / m.

    Args:
        norms: ‖Δ_k‖₂ of the round's updates before clipping.
        clipping_norm: C, the round's clipping norm.
        count_stddev: σ_b.
        expected_cohort_size: m = qN, the fixed denominator.
        rng: the generator of the DP noise.

    Returns:
        The noised fraction of unclipped updates b̃.
    """
    unclipped = sum(1 for n in norms if n <= clipping_norm)
    return (unclipped + float(secure_gaussian(rng, count_stddev, 1)[0])) / expected_cohort_size


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
