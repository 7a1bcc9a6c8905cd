"""Poisson client sampling: each client joins a round independently with probability q.

Privacy amplification by subsampling (as used by the RDP/PRV accountants) assumes
exactly this scheme at a fixed, public q; sampling a fixed number of clients does not
match it.
"""

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def poisson_sample(population: Sequence[T], rate: float, rng: np.random.Generator) -> list[T]:
    """The members of `population` that draw a Bernoulli(rate) success; may be empty."""
    if not 0 < rate <= 1:
        raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
    joins = rng.random(len(population)) < rate
    return [member for member, joined in zip(population, joins, strict=True) if joined]


def fixed_size_sample(population: Sequence[T], size: int, rng: np.random.Generator) -> list[T]:
    """`size` distinct members of `population`, uniformly at random, in population order
    (for strategies without DP, which ask for a number of clients per round)."""
    if not 0 <= size <= len(population):
        raise ValueError(f"cannot sample {size} of {len(population)} clients")
    chosen = np.sort(rng.choice(len(population), size=size, replace=False))
    return [population[i] for i in chosen]
