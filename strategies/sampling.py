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
    return [member for member, joined in zip(population, joins) if joined]
