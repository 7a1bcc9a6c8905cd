"""The privacy ledger: every noised quantity a DP round releases, declared with its
sensitivity and noise, and the one noise multiplier the accountant steps with.

A round may release several Gaussian mechanisms about the same cohort (DP-FedAvg's
noised update sum; with adaptive clipping also the noised count of unclipped updates).
Each is declared as a `Mechanism`; `effective_noise_multiplier` turns the list into the
σ of the single Gaussian mechanism they compose to, and the accountant steps once per
round with it. Each declared sensitivity is checked against the app's code, not assumed
(`strategies.privacy.sensitivity`, `python -m fl_app.audit --mechanisms`).
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

UNITS = ("client", "sample")
CLIPPED_SUM = "S"  # the sensitivity of a sum of updates clipped to norm S: the round's clipping norm


@dataclass(frozen=True)
class Mechanism:
    """One Gaussian mechanism a round releases: `name`, the `unit` whose addition or
    removal it protects ("client" or "sample"), its L2 `sensitivity` under that addition or
    removal (a number, or `CLIPPED_SUM` for the clipping norm S of the round) and its
    `noise_multiplier`, the noise std divided by the sensitivity."""

    name: str
    unit: str
    sensitivity: float | str
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"mechanism {self.name!r}: unit must be one of {UNITS}, got {self.unit!r}")
        if self.sensitivity != CLIPPED_SUM and not (isinstance(self.sensitivity, float | int)
                                                    and self.sensitivity > 0):
            raise ValueError(f"mechanism {self.name!r}: sensitivity must be > 0 or {CLIPPED_SUM!r}, "
                             f"got {self.sensitivity!r}")
        if not self.noise_multiplier > 0:
            raise ValueError(f"mechanism {self.name!r}: noise multiplier must be > 0, got {self.noise_multiplier}")

    def sensitivity_value(self, clipping_norm: float) -> float:
        """The sensitivity as a number: S = `clipping_norm` for `CLIPPED_SUM`."""
        return clipping_norm if self.sensitivity == CLIPPED_SUM else float(self.sensitivity)

    def as_dict(self) -> dict[str, Any]:
        """{"name", "unit", "sensitivity", "noise_multiplier"}, as `summary.json` lists it."""
        return asdict(self)


def effective_noise_multiplier(mechanisms: Sequence[Mechanism]) -> float:
    """σ_eff = (Σ_i σ_i⁻²)^(−1/2), the noise multiplier of the one Gaussian mechanism that
    the declared mechanisms compose to.

    Why: mechanism i adds N(0, σ_i² Δ_i²) to a query of sensitivity Δ_i. Dividing each
    query by its noise std σ_i Δ_i and stacking them gives one vector query with unit noise
    whose L2 sensitivity is (Σ_i (Δ_i / σ_i Δ_i)²)^(1/2) = (Σ_i σ_i⁻²)^(1/2) when one unit
    joins or leaves (each bound holds for the same unit at once): a single Gaussian
    mechanism with noise multiplier σ_eff. In GDP terms μ_i = 1/σ_i composes to
    μ = (Σ_i μ_i²)^(1/2) (Dong, Roth & Su 2022, "Gaussian Differential Privacy"); in
    RDP the orders add alike. The mechanisms run on the same Poisson-sampled cohort, so a
    round is one subsampled Gaussian step with (σ_eff, q), as Andrew et al. 2021
    (Theorem 1) account adaptive clipping.

    Args:
        mechanisms: what one round releases, all protecting the same unit.

    Returns:
        σ_eff.

    Raises:
        ValueError: no mechanism, or mechanisms protecting different units.
    """
    if not mechanisms:
        raise ValueError("a round releases at least one mechanism")
    units = {m.unit for m in mechanisms}
    if len(units) > 1:
        raise ValueError(f"mechanisms protect different units {sorted(units)}: they do not compose to one")
    return float(sum(m.noise_multiplier ** -2 for m in mechanisms) ** -0.5)
