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


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """σ_Δ for the update sum, given the accounted σ and the count noise std σ_b."""
    if not 2 * count_stddev > noise_multiplier:
        raise ValueError(
            f"adaptive clipping needs 2 * dp-clipped-count-stddev > noise multiplier; "
            f"got 2 * {count_stddev} <= {noise_multiplier}"
        )
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def noised_unclipped_fraction(
    norms: Sequence[float],
    clipping_norm: float,
    count_stddev: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> float:
    """b̃ = (#{k: ‖Δ_k‖ ≤ C} + N(0, σ_b²)) / m."""
    unclipped = sum(1 for n in norms if n <= clipping_norm)
    return (unclipped + float(secure_gaussian(rng, count_stddev, 1)[0])) / expected_cohort_size


def next_clipping_norm(
    clipping_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """C · exp(−η_C (b̃ − γ))."""
    return clipping_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))
