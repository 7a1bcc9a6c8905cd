"""Sensitivity tested, not assumed: how far one client moves each quantity a round
releases, measured on adversarial neighbouring cohorts.

Every mechanism of the privacy ledger (`strategies.privacy.ledger`) declares the L2
sensitivity of the quantity it noises when one client joins or leaves the cohort; the
accountant's ε is only as right as that number. `check_sensitivity` measures it: for each
pair of neighbouring cohorts (a cohort, and the same cohort with one more sampled
client) it computes both rounds' released quantities before noise with a `release`
function that runs the app's own code (`DPFedAvg.unnoised_round` behind the Flower glue
of `python -m fl_app.audit --mechanisms`) and flags every quantity that moves by more
than its declared bound. `neighbouring_cohorts` builds the pairs: the added client's
update exactly at S, far above it, just above and just below the clipping norm, tiny,
non-finite, of the wrong shape or dtype, with a huge example count, or the client
failing after it was sampled; beside no other client, one, or three.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Quantity = Sequence[np.ndarray] | float  # a released sum of arrays, or a released number
Release = Mapping[str, Quantity]  # by mechanism name
TOLERANCE = 1e-5  # relative to a bound: float32 rounding of the summed updates
FOREIGN_CLIENTS = ("wrong-shape", "wrong-dtype")  # replies only a client outside the app can send


@dataclass(frozen=True, eq=False)
class Reply:
    """One sampled client's reply as it reaches the server: the arrays it sends (None:
    it failed after it was sampled) and the example count it reports."""

    arrays: tuple[np.ndarray, ...] | None
    num_examples: int = 1


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Two neighbouring cohorts: `others`, and `others` with `client` added."""

    name: str
    others: tuple[Reply, ...]
    client: Reply

    @property
    def with_client(self) -> tuple[Reply, ...]:
        """The larger cohort (the client first: the sums are taken in this order)."""
        return (self.client, *self.others)


@dataclass(frozen=True)
class SensitivityCheck:
    """How far one pair of neighbouring cohorts moved one mechanism's quantity (L2)."""

    case: str
    mechanism: str
    change: float
    bound: float

    @property
    def ok(self) -> bool:
        """Whether the change is within the declared sensitivity (up to `TOLERANCE`)."""
        return self.change <= self.bound * (1 + TOLERANCE)


def distance(a: Quantity, b: Quantity, order: int = 2) -> float:
    """‖a − b‖ (L2, or L1 with `order` = 1) over every array (or the two numbers), in float64."""
    if isinstance(a, float | int) or isinstance(b, float | int):
        return abs(float(a) - float(b))  # type: ignore[arg-type]
    total = 0.0
    for x, y in zip(a, b, strict=True):
        d = np.ravel(x).astype(np.float64) - np.ravel(y).astype(np.float64)
        total += float(np.abs(d).sum()) if order == 1 else float(d @ d)
    return total if order == 1 else float(np.sqrt(total))


def check_sensitivity(
    release: Callable[[Sequence[Reply]], Release], bounds: Mapping[str, float], cases: Sequence[Neighbours],
    l1_bounds: Mapping[str, float] | None = None,
) -> list[SensitivityCheck]:
    """Every case's change of every released quantity beside its declared bound.

    Args:
        release: the round's released quantities before noise, by mechanism name, from a
            cohort's replies.
        bounds: the declared L2 sensitivity of each mechanism, by name.
        cases: the neighbouring cohorts.
        l1_bounds: the declared L1 sensitivity of the mechanisms whose accounting uses
            one (distributed DP's Skellam noise), checked as "<name> (L1)".

    Returns:
        One check per case and mechanism (and L1 bound), in order.

    Raises:
        ValueError: `release` gives quantities that are not exactly the declared ones.
    """
    checks: list[SensitivityCheck] = []
    for case in cases:
        smaller, larger = release(case.others), release(case.with_client)
        for released in (smaller, larger):
            if set(released) != set(bounds):
                raise ValueError(f"{case.name}: the round releases {sorted(released)}, the ledger "
                                 f"declares {sorted(bounds)}")
        checks.extend(SensitivityCheck(case.name, name, distance(smaller[name], larger[name]), bound)
                      for name, bound in bounds.items())
        checks.extend(SensitivityCheck(case.name, f"{name} (L1)", distance(smaller[name], larger[name], 1), bound)
                      for name, bound in (l1_bounds or {}).items())
    return checks


def neighbouring_cohorts(
    reference: Sequence[np.ndarray], clipping_norm: float, *, sends_deltas: bool, foreign_clients: bool,
    rng: np.random.Generator,
) -> list[Neighbours]:
    """Adversarial neighbouring cohorts around `reference` (the round's model): each
    added client of `client_replies` beside no other client, one or three (update norms
    0.8 S; 0.5 S, 3 S and 0.9 S).

    Args:
        reference: the round's model, whose shapes and dtypes the server expects.
        clipping_norm: S, also the clipping norm C the unclipped count compares with.
        sends_deltas: clients send Δ (client clipping) rather than their model w = reference + Δ.
        foreign_clients: include the replies only a client outside the app can send
            (`FOREIGN_CLIENTS`).
        rng: draws the updates' directions.

    Returns:
        The pairs, named "<others>+<client>".
    """
    def reply(norm: float) -> Reply:
        return Reply(sent(reference, scaled(direction(reference, rng), norm), sends_deltas))

    others = {
        "alone": (),
        "one-other": (reply(0.8 * clipping_norm),),
        "three-others": tuple(reply(f * clipping_norm) for f in (0.5, 3.0, 0.9)),
    }
    clients = client_replies(reference, clipping_norm, sends_deltas, rng)
    return [Neighbours(f"{group}+{name}", replies, client)
            for group, replies in others.items() for name, client in clients.items()
            if foreign_clients or name not in FOREIGN_CLIENTS]


def client_replies(
    reference: Sequence[np.ndarray], clipping_norm: float, sends_deltas: bool, rng: np.random.Generator
) -> dict[str, Reply]:
    """The added client's adversarial replies, by name (see the module)."""
    def at(norm: float) -> tuple[np.ndarray, ...]:
        return sent(reference, scaled(direction(reference, rng), norm), sends_deltas)

    s = clipping_norm
    nan, inf = scaled(direction(reference, rng), s), scaled(direction(reference, rng), s)
    nan[0].flat[0], inf[-1].flat[-1] = np.nan, np.inf
    model = at(s)
    return {
        "at-S": Reply(at(s)),
        "far-above-S": Reply(at(1e6 * s)),
        "just-above-C": Reply(at(s * (1 + 1e-4))),
        "just-below-C": Reply(at(s * (1 - 1e-4))),
        "tiny": Reply(at(1e-6 * s)),
        "nan": Reply(sent(reference, nan, sends_deltas)),
        "inf": Reply(sent(reference, inf, sends_deltas)),
        "wrong-shape": Reply((np.concatenate([model[0], model[0][:1]]), *model[1:])),
        "wrong-dtype": Reply(tuple(a.astype(np.float64) for a in model)),
        "huge-example-count": Reply(at(s), num_examples=10 ** 12),
        "failed": Reply(None),
    }


def direction(reference: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A random update of norm 1 with `reference`'s shapes, in float64."""
    arrays = [rng.normal(size=r.shape) for r in reference]
    norm = float(np.sqrt(sum(float(a.ravel() @ a.ravel()) for a in arrays)))
    return [a / norm for a in arrays]


def scaled(update: Sequence[np.ndarray], factor: float) -> list[np.ndarray]:
    """`update` × `factor`."""
    return [a * factor for a in update]


def sent(reference: Sequence[np.ndarray], delta: Sequence[np.ndarray], sends_deltas: bool) -> tuple[np.ndarray, ...]:
    """What a client whose update is `delta` sends, in `reference`'s dtypes: Δ itself, or
    its model reference + Δ."""
    if sends_deltas:
        return tuple(d.astype(r.dtype) for r, d in zip(reference, delta, strict=True))
    return tuple((r + d).astype(r.dtype) for r, d in zip(reference, delta, strict=True))


def report(checks: Sequence[SensitivityCheck], mechanisms: int) -> list[str]:
    """One line per check and the last line `mechanisms=<n> violations=<k>`."""
    width = max((len(c.case) for c in checks), default=0)
    lines = [f"{'ok' if c.ok else 'VIOLATION':<9}  {c.case:<{width}}  {c.mechanism:<15}  "
             f"change={c.change:.6g}  declared={c.bound:.6g}" for c in checks]
    lines.append(f"mechanisms={mechanisms} violations={sum(not c.ok for c in checks)}")
    return lines
