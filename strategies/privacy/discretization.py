"""What a client does to its clipped update before secure aggregation in distributed DP,
and what the server does to the secure sum: rotate, scale, round, add Skellam noise,
reduce modulo M = 2^bits; then centre, unscale and rotate back (Kairouz, Liu & Steinke
2021; Agarwal, Kairouz & Liu 2021). Plain functions on numpy arrays.

The rotation is the randomized Hadamard transform R x = H D x / √d' (D: random signs,
H: the Walsh-Hadamard matrix, d' a power of two): orthonormal, so it keeps L2 norms, and
it spreads a vector's mass evenly over the coordinates, so that few bits per
coordinate hold the sum. Its signs are public (every party derives them from the seed
and the round): they protect nothing, they only flatten the vector.
"""

from collections.abc import Sequence

import numpy as np


def hadamard(values: np.ndarray) -> np.ndarray:
    """H x / √d for a vector of length d = 2^k: the orthonormal Walsh-Hadamard
    transform, its own inverse (fast transform, O(d log d))."""
    d = values.shape[0]
    if d & (d - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {d}")
    out = values.astype(np.float64, copy=True)
    h = 1
    while h < d:
        blocks = out.reshape(-1, 2, h)
        first, second = blocks[:, 0, :].copy(), blocks[:, 1, :]
        blocks[:, 0, :] += second
        blocks[:, 1, :] = first - second
        h *= 2
    out /= np.sqrt(d)
    return out


def rotation_signs(seed: Sequence[int], length: int) -> np.ndarray:
    """The rotation's public random signs (±1) for a seed (the run's seed and round)."""
    signs: np.ndarray = np.random.default_rng(np.random.SeedSequence(list(seed))).choice([-1.0, 1.0], size=length)
    return signs


def rotate(values: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """R x = H D x / √d' of `values` zero-padded to the signs' length d'."""
    padded = np.zeros(signs.shape[0])
    padded[: values.shape[0]] = values
    return hadamard(padded * signs)


def unrotate(rotated: np.ndarray, signs: np.ndarray, dimension: int) -> np.ndarray:
    """R⁻¹ y = D H y / √d', cut to the first `dimension` coordinates."""
    restored: np.ndarray = (hadamard(rotated) * signs)[:dimension]
    return restored


def conditional_round(values: np.ndarray, norm_bound: float, rng: np.random.Generator,
                      max_tries: int = 1000) -> np.ndarray:
    """Unbiased randomized rounding of each coordinate to one of its two neighbouring
    integers, redrawn until the rounded vector's L2 norm is at most `norm_bound`
    (Kairouz, Liu & Steinke 2021, Section 4.1: conditional randomized rounding). With
    `norm_bound` from `rounded_l2_bound` a draw fails with probability at most β."""
    floor = np.floor(values)
    fraction = values - floor
    for _ in range(max_tries):
        rounded: np.ndarray = (floor + (rng.random(values.shape) < fraction)).astype(np.int64)
        if float(np.sqrt(np.dot(rounded, rounded))) <= norm_bound:
            return rounded
    raise RuntimeError(f"randomized rounding exceeded the norm bound {norm_bound:g} {max_tries} times")


def skellam_noise(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """Symmetric Skellam noise of variance μ per coordinate: Poisson(μ/2) − Poisson(μ/2)."""
    noise: np.ndarray = rng.poisson(variance / 2, size) - rng.poisson(variance / 2, size)
    return noise


def centred(residues: np.ndarray, modulus: int) -> np.ndarray:
    """Integers modulo M mapped to [−M/2, M/2)."""
    values = np.mod(residues, modulus)
    signed: np.ndarray = np.where(values >= modulus // 2, values - modulus, values)
    return signed


def encode_update(update: np.ndarray, *, signs: np.ndarray, scale: float, norm_bound: float,
                  noise_variance: float, modulus: int, rng: np.random.Generator) -> np.ndarray:
    """A client's message: its clipped update (flat) rotated, divided by the scale γ,
    rounded to integers of norm ≤ `norm_bound`, plus its share of Skellam noise, reduced
    modulo M (int64 in [0, M))."""
    rounded = conditional_round(rotate(update, signs) / scale, norm_bound, rng)
    residues: np.ndarray = np.mod(rounded + skellam_noise(rng, noise_variance, rounded.shape[0]), modulus)
    return residues


def decode_sum(residue_sum: np.ndarray, *, signs: np.ndarray, scale: float, modulus: int,
               dimension: int, top_up: np.ndarray) -> np.ndarray:
    """The released noised sum (flat, float64): the modular sum centred, the server's
    integer noise `top_up` added, multiplied by γ and rotated back."""
    total = centred(residue_sum, modulus) + top_up
    return unrotate(total.astype(np.float64) * scale, signs, dimension)
