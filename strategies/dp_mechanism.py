"""The Gaussian mechanism of DP-FedAvg on plain numpy arrays (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models", ICLR).

An update is one client's model delta Δ_k = w_k − w_global as a list of arrays (every
tensor of the model, buffers included). With clipping norm S, noise multiplier σ and a
fixed expected cohort size m = qN, one round releases

    mean = ( Σ_k clip(Δ_k, S) + N(0, σ² S² I) ) / m,    clip(Δ, S) = Δ · min(1, S / ‖Δ‖₂)

Each client changes the clipped sum by at most S in L2 norm, so the sum has sensitivity S
and the noise std σS calibrates it; dividing by the data-independent m (never the
realised cohort size, never example counts) keeps that calibration.
"""

from collections.abc import Sequence

import numpy as np

Update = Sequence[np.ndarray]


def global_l2_norm(update: Update) -> float:
    """‖Δ‖₂ over all tensors of the update taken as one vector."""
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in update)))


def clip_update(update: Update, clipping_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale the whole update by min(1, S/‖Δ‖₂); return it and its norm before clipping."""
    if not clipping_norm > 0:
        raise ValueError(f"clipping norm must be > 0, got {clipping_norm}")
    norm = global_l2_norm(update)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return [(a * scale).astype(a.dtype, copy=False) for a in update], norm


def sum_updates(updates: Sequence[Update], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Unweighted Σ_k Δ_k in float64; all-zero arrays of `shapes` for an empty cohort."""
    total = [np.zeros(shape, dtype=np.float64) for shape in shapes]
    for update in updates:
        for acc, array in zip(total, update):
            acc += array
    return total


def add_gaussian_noise(
    total: Sequence[np.ndarray], std: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """total + N(0, std² I), independently per coordinate."""
    return [t + rng.normal(0.0, std, size=t.shape) for t in total]


def noisy_mean(
    clipped_updates: Sequence[Update],
    shapes: Sequence[tuple[int, ...]],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """(Σ_k clipped Δ_k + N(0, σ²S² I)) / m, in float64.

    The caller guarantees every update already has norm ≤ S (clipped here on the server,
    or by the clients before sending).
    """
    if not expected_cohort_size > 0:
        raise ValueError(f"expected cohort size must be > 0, got {expected_cohort_size}")
    total = sum_updates(clipped_updates, shapes)
    noised = add_gaussian_noise(total, noise_multiplier * clipping_norm, rng)
    return [n / expected_cohort_size for n in noised]


def model_delta(weights: Update, reference: Update) -> list[np.ndarray]:
    """Δ = weights − reference, tensor by tensor, in the weights' dtype (the same
    arithmetic on clients and server, so both clipping modes agree bitwise)."""
    return [np.subtract(w, r, dtype=w.dtype) for w, r in zip(weights, reference)]
