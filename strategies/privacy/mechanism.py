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

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from strategies.privacy.randomness import secure_gaussian

Update = Sequence[np.ndarray]

NORM_SLACK = 1e-5  # float32 rounding allowed on the norm of an update a client clipped
SECURE_NORM_SLACK = 1e-3  # plus SecAgg+'s quantization error on a securely summed mean
# Rounding Δ · S/‖Δ‖₂ to the nearest float32 keeps ‖clip(Δ, S)‖₂ within 2·2⁻²⁴ relative of
# S while the scale is a normal float32 (it is cast to float32 first) and S is far above
# the absolute rounding (2⁻¹⁵⁰ per value) of subnormal results; below either bound, e.g.
# an update of values near float32's maximum, rounding to nearest lengthened it by up to
# percents (0.9% for 10⁶ values at S = 0.01).
NORMAL_SCALE = float(np.finfo(np.float32).tiny)
NORMAL_CLIPPING_NORM = 1e-25


def global_l2_norm(update: Update) -> float:
    """‖Δ‖₂ over all tensors of the update taken as one vector, squares summed in float64."""
    total = 0.0
    for a in update:
        flat = np.ravel(a).astype(np.float64)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def within_norm(update: Update, bound: float, slack: float) -> bool:
    """Whether ‖Δ‖₂ ≤ bound · (1 + slack): an update clipped elsewhere (by a client, or the
    mean of client-clipped updates, inside the ball by convexity) keeps the sensitivity S."""
    return global_l2_norm(update) <= bound * (1 + slack)


def clip_update(
    update: Update, clipping_norm: float, *, in_place: bool = False
) -> tuple[list[np.ndarray], float]:
    """clip(Δ, S) = Δ · min(1, S / ‖Δ‖₂), the whole update scaled as one vector.

    Args:
        update: Δ, one client's update (every tensor of the model).
        clipping_norm: S > 0.
        in_place: scale the given arrays instead of copies.

    Returns:
        The clipped update (Δ itself when ‖Δ‖₂ ≤ S; below `NORMAL_SCALE` or
        `NORMAL_CLIPPING_NORM`, rounded towards zero) and ‖Δ‖₂ before clipping.
    """
    if not clipping_norm > 0:
        raise ValueError(f"clipping norm must be > 0, got {clipping_norm}")
    norm = global_l2_norm(update)
    if norm <= clipping_norm:
        return list(update), norm
    scale = clipping_norm / norm
    if scale < NORMAL_SCALE or clipping_norm < NORMAL_CLIPPING_NORM:
        clipped = [scaled_towards_zero(a, scale) for a in update]
        if in_place:
            for a, c in zip(update, clipped, strict=True):
                np.copyto(a, c)
            clipped = list(update)
        return clipped, norm
    if in_place:
        return [np.multiply(a, scale, out=a, dtype=a.dtype) for a in update], norm
    return [np.multiply(a, scale, dtype=a.dtype) for a in update], norm


def scaled_towards_zero(array: np.ndarray, scale: float) -> np.ndarray:
    """array · scale in array's dtype (float32), each value rounded towards zero, so that
    none is longer than the exact product: the product in float64, then cast down."""
    exact = array.astype(np.float64)
    exact *= scale
    scaled = exact.astype(array.dtype)
    np.nextafter(scaled, 0, out=scaled, where=np.abs(scaled) > np.abs(exact))
    return scaled


def sum_updates(updates: Iterable[Update], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The unweighted Σ_k Δ_k, read once and in order.

    Accumulated in the updates' dtype (float32 for the model: every term is at most S in
    norm, so rounding is ~1e-7·m relative).

    Args:
        updates: the clipped updates.
        shapes: the model's tensor shapes, for an empty cohort.

    Returns:
        The sum in float64; all-zero arrays of `shapes` when there is no update.
    """
    total: list[np.ndarray] | None = None
    for update in updates:
        if total is None:
            total = [np.array(a, dtype=np.result_type(a, np.float32)) for a in update]
            continue
        for acc, array in zip(total, update, strict=True):
            acc += array
    if total is None:
        return [np.zeros(shape, dtype=np.float64) for shape in shapes]
    return [t.astype(np.float64, copy=False) for t in total]


def add_gaussian_noise(
    total: Sequence[np.ndarray], std: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """total + N(0, std² I), independently per coordinate (`secure_gaussian`)."""
    noised = []
    for t in total:
        noise = secure_gaussian(rng, std, t.shape)
        noise += t
        noised.append(noise)
    return noised


def noisy_mean(
    total: Sequence[np.ndarray],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The Gaussian mechanism of DP-FedAvg (McMahan et al. 2018):
    (Σ_k clip(Δ_k, S) + N(0, σ²S² I)) / m.

    Args:
        total: Σ_k clip(Δ_k, S) (`sum_updates`) over the cohort's updates, each of norm
            ≤ S already (clipped on the server, or by the clients before sending).
        clipping_norm: S, the sensitivity of the sum.
        noise_multiplier: σ (the update noise multiplier σ_Δ under adaptive clipping).
        expected_cohort_size: m = qN, the fixed, data-independent denominator.
        rng: the generator of the DP noise.

    Returns:
        The noised mean in float64.
    """
    if not expected_cohort_size > 0:
        raise ValueError(f"expected cohort size must be > 0, got {expected_cohort_size}")
    noised = add_gaussian_noise(total, noise_multiplier * clipping_norm, rng)
    for n in noised:
        n /= expected_cohort_size
    return noised


def model_delta(weights: Update, reference: Update, out: Update | None = None) -> list[np.ndarray]:
    """Δ = weights − reference, tensor by tensor, in the weights' dtype (the same
    arithmetic on clients and server, so both clipping modes agree bitwise); into the
    arrays `out` when given."""
    if out is None:
        return [np.subtract(w, r, dtype=w.dtype) for w, r in zip(weights, reference, strict=True)]
    return [np.subtract(w, r, out=o, dtype=w.dtype) for w, r, o in zip(weights, reference, out, strict=True)]


def clipped_deltas(
    weights: Iterable[Update], reference: Update, clipping_norm: float, norms: list[float]
) -> Iterator[list[np.ndarray]]:
    """clip(w_k − reference, S) for each client's weights w_k, in order.

    Computed in one reused set of arrays: each yielded update is valid until the next is
    requested (sum it first, as `sum_updates` does).

    Args:
        weights: the clients' models w_k.
        reference: the global model the round started from.
        clipping_norm: S.
        norms: receives ‖w_k − reference‖₂ before clipping, one per update yielded.

    Yields:
        The clipped updates.
    """
    workspace = [np.empty_like(r) for r in reference]
    for update in weights:
        clipped, norm = clip_update(model_delta(update, reference, out=workspace), clipping_norm, in_place=True)
        norms.append(norm)
        yield clipped


def clipping_statistics(norms: Sequence[float], clipping_norm: float, slack: float) -> dict[str, float]:
    """The exact clipping diagnostics (functions of individual updates, outside ε).

    Args:
        norms: the update norms before clipping (of what arrived, under client clipping).
        clipping_norm: S.
        slack: an update longer than S · (1 − slack) counts as clipped (client clipping:
            it arrives at norm S up to float32 rounding); 0 for server clipping.

    Returns:
        `clip_fraction` (share of updates longer than that) and `median_update_norm`; NaN
        for both without updates.
    """
    if not norms:
        return {"clip_fraction": float("nan"), "median_update_norm": float("nan")}
    limit = clipping_norm * (1 - slack)
    return {"clip_fraction": float(np.mean([n > limit for n in norms])),
            "median_update_norm": float(np.median(norms))}
