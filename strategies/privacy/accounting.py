"""Client-level privacy accounting for DP-FedAvg with Opacus' accountants.

Every round is one application of the subsampled Gaussian mechanism with noise
multiplier σ and client sampling rate q; the accountant composes them and converts to
(ε, δ):

- ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov 2017; Mironov, Talwar &
  Zhang 2019), converted to (ε, δ) with the improved bound of Balle et al. 2020;
- ``prv``: numerical composition of privacy loss random variables (Gopi, Lee &
  Wutschitz 2021), usually a tighter ε.
"""

from functools import lru_cache
from typing import Any

import numpy as np

# Opacus (with scipy) takes over a second to import: it is imported where it is used,
# so that processes without DP (every ClientApp of a plain run) never load it.

ACCOUNTANTS = ("rdp", "prv")


class ClientLevelAccountant:
    """ε spent so far at a fixed δ, one `step(σ, q)` per round; serialisable."""

    def __init__(self, accountant: str, delta: float) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        from strategies.privacy.opacus_compat import create_accountant

        self.kind = accountant
        self.delta = delta
        self._accountant = create_accountant(mechanism=accountant)

    @property
    def rounds(self) -> int:
        """Rounds accounted for."""
        return sum(steps for _, _, steps in self._accountant.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Account for one round released with (σ, q)."""
        self._accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self) -> float:
        """ε at `delta` after the rounds so far (0 before the first)."""
        if not self._accountant.history:
            return 0.0
        return composed_epsilon(self.kind, self.delta, tuple(tuple(entry) for entry in self._accountant.history))

    def epsilon_without_sampling(self) -> float:
        """ε at `delta` of the same rounds released at q = 1: what an observer who knows
        every round's cohort is protected by (0 before the first round)."""
        if not self._accountant.history:
            return 0.0
        return composed_epsilon(self.kind, self.delta,
                                tuple((sigma, 1.0, steps) for sigma, _, steps in self._accountant.history))

    def epsilon_after_next(self, noise_multiplier: float, sample_rate: float) -> float:
        """ε if one more round with (σ, q) were released; the state is unchanged."""
        trial = ClientLevelAccountant(self.kind, self.delta)
        trial.load_state_dict(self.state_dict())
        trial.step(noise_multiplier, sample_rate)
        return trial.epsilon()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue accounting in a resumed run."""
        return {
            "accountant": self.kind,
            "delta": self.delta,
            "history": [list(entry) for entry in self._accountant.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the accountant kind and δ must match."""
        if state["accountant"] != self.kind or state["delta"] != self.delta:
            raise ValueError(
                f"accountant state is for {state['accountant']} at delta {state['delta']}, "
                f"not {self.kind} at delta {self.delta}"
            )
        self._accountant.history = [tuple(entry) for entry in state["history"]]


@lru_cache(maxsize=64)
def composed_epsilon(accountant: str, delta: float, history: tuple[tuple[float, float, int], ...]) -> float:
    """ε at δ of an accountant's `history` of (σ, q, rounds) entries, remembered: a round
    asks for the same ε twice (the budget check before it, the report after it), at a
    quarter of a second each with RDP's fractional orders."""
    from strategies.privacy.opacus_compat import create_accountant

    composed = create_accountant(mechanism=accountant)
    composed.history = list(history)
    with np.errstate(divide="ignore"):  # PRV takes log(1 − q), −inf at q = 1, and handles it
        return float(composed.get_epsilon(delta=delta))


def epsilon_after(noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str) -> float:
    """ε at δ of `rounds` compositions of the subsampled Gaussian mechanism.

    Args:
        noise_multiplier: σ.
        sample_rate: q, the Poisson sampling rate.
        rounds: how many rounds are released with (σ, q).
        delta: δ.
        accountant: "rdp" or "prv".

    Returns:
        ε (0 for no round).
    """
    if rounds <= 0:
        return 0.0
    from strategies.privacy.opacus_compat import create_accountant

    composed = create_accountant(mechanism=accountant)
    composed.history = [(noise_multiplier, sample_rate, rounds)]
    return float(composed.get_epsilon(delta=delta))


def rounds_within_budget(
    noise_multiplier: float, sample_rate: float, target_epsilon: float, delta: float, accountant: str,
    max_rounds: int,
) -> int:
    """The most rounds released with (σ, q) whose ε at δ stays within a budget; ε grows
    with the rounds, so a binary search over `epsilon_after` finds it.

    Args:
        noise_multiplier: σ.
        sample_rate: q.
        target_epsilon: the ε budget.
        delta: δ.
        accountant: "rdp" or "prv".
        max_rounds: the search's upper end (the planned rounds).

    Returns:
        A round count in [0, `max_rounds`].
    """
    low, high = 0, max_rounds
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon_after(noise_multiplier, sample_rate, middle, delta, accountant) <= target_epsilon:
            low = middle
        else:
            high = middle - 1
    return low


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier σ for which `steps` compositions of the subsampled Gaussian
    mechanism at rate q spend at most `target_epsilon` at δ (Opacus' binary search,
    tolerance 0.01 in ε). Central DP: one step per round at the client rate q = m/N;
    local DP-SGD: one per batch at the batch rate.

    Args:
        target_epsilon: the ε to spend.
        delta: δ.
        sample_rate: q.
        steps: how many times the mechanism runs.
        accountant: "rdp" or "prv".

    Returns:
        σ.
    """
    from strategies.privacy.opacus_compat import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )
