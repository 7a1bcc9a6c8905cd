"""Empirical privacy auditing of client-level DP-FedAvg with canary clients, on plain
numpy arrays.

Each of m canaries holds a secret unit direction u_c and is included in the population
with probability ½; an included canary, whenever sampled, contributes exactly S_r·u_c
to the round's clipped sum (its update is clipped to the round's norm S_r). Every round r
releases the noised mean; the auditor projects it on every direction,

    z_{c,r} = ⟨m·mean_r, u_c⟩ / S_r,

which is N(1, σ_Δ²) for an included canary in a round it was sampled in and N(0, σ_Δ²)
otherwise (σ_Δ the update noise multiplier; the other clients' updates and canaries add
O(1/√d) each along a random direction). Three statistics of the matrix z:

- **A lower bound for any mechanism** (Steinke, Nasr & Jagielski 2023, "Privacy
  Auditing with One (1) Training Run", NeurIPS; Theorem 5.2): each canary's score is the
  log-likelihood ratio of the claimed mechanism, the Poisson-subsampled Gaussian at rate
  q composed over the T rounds (`subsampled_gaussian_scores`; Neyman–Pearson optimal
  against the claim, and blind to which rounds sampled the canary, so that amplification
  by subsampling is kept, as it is for every other observer). The auditor guesses
  "included" for the k₊ highest scores and "excluded" for the k₋ lowest, abstaining on
  the rest. If the mechanism is (ε, δ)-DP, the number V of correct guesses among the
  r = k₊ + k₋ satisfies

      P[V ≥ v] ≤ β(v) + 2mδ · max_{1≤i≤v} P[v > B ≥ v − i] / i,   B ~ Binomial(r, e^ε/(1+e^ε)),
      β(v) = P[B ≥ v].

  ε_lower is the largest ε this rejects at the given confidence: it holds whatever the
  mechanism, if the canaries' inclusion is random. It cannot exceed the ε at which all r
  guesses are right by chance with probability α (2.77 for the 80 guesses of k = 40 at
  the audit's 2.5%/3), and for a subsampled Gaussian it reaches a small fraction of ε:
  the ε at δ = 10⁻⁵ lives in tails that a few hundred canaries never sample.
- **A lower bound for a Gaussian mechanism** (the parametric audit of Nasr, Hayes,
  Steinke, Balle, Tramèr, Jagielski, Carlini & Terzis 2023, "Tight Auditing of
  Differentially Private Machine Learning", USENIX Security: assume the release is
  Gaussian, as the mechanism's form says, and measure its parameter): along the
  directions never inserted z is the noise alone, and in the rounds an included canary
  was sampled z is its effect s plus the noise, measured against its other rounds
  (`gaussian_fit`). The measured per-round
  noise multiplier σ/s, at its 95% upper confidence limit, composed over T rounds at the
  claimed rate q by the app's accountant, is the least ε that accountant would state for
  the mechanism measured: it exceeds the stated ε only when the noise is measurably
  smaller, relative to one client's effect, than the accountant was told.
- **An estimate** (not a bound): the same accountant at the measured noise multipliers
  themselves (the update sum's and, under adaptive clipping, the noised count's,
  `count_fit`), composed as the ledger composes them. Like the one-shot estimate of
  Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar 2024 ("One-shot Empirical Privacy
  Estimation for Federated Learning", ICLR) it fits Gaussians to random canaries'
  projections; it then converts with the claimed mechanism's subsampling and composition
  instead of μ-GDP of the final model (Dong, Roth & Su 2022, "Gaussian Differential
  Privacy": μ-GDP composes as μ² adds, which the ledger's σ⁻² sum is).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
GUESSES = (10, 20, 40)  # the one-run audit's guesses per side, fixed before any run (Bonferroni over them)


def p_value_one_run(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[V ≥ v] for an (ε, δ)-DP mechanism audited with m canaries and r
    guesses (Steinke et al. 2023, Theorem 5.2; the formula in the module docstring)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(1.0, beta)
    i = np.arange(1, v + 1)
    alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))  # max_i P[v > B ≥ v − i] / i
    return min(1.0, beta + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest ε for which `v` correct guesses out of `r` would have probability below
    1 − `confidence` (0 when even ε = 0 explains them), by bisection to 1e-4."""
    alpha = 1.0 - confidence
    if p_value_one_run(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value_one_run(m, r, v, high, delta) < alpha:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > 1e-4:
        middle = (low + high) / 2
        if p_value_one_run(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


def subsampled_gaussian_scores(z: np.ndarray, sampling_rate: float, noise_multiplier: float) -> np.ndarray:
    """Each canary's log-likelihood ratio "included" against "excluded" under the claimed
    mechanism: Σ_r log(1 − q + q·exp((z_{c,r} − ½)/σ²)), the ratio of the densities
    (1 − q)·N(0, σ²) + q·N(1, σ²) and N(0, σ²) at every round's z, rows being canaries."""
    q, variance = sampling_rate, noise_multiplier ** 2
    if not 0 < q <= 1 or not variance > 0:
        raise ValueError(f"need 0 < q <= 1 and sigma > 0, got q={q}, sigma={noise_multiplier}")
    per_round = np.logaddexp(math.log1p(-q) if q < 1 else -math.inf, math.log(q) + (np.asarray(z) - 0.5) / variance)
    scores: np.ndarray = per_round.sum(axis=1)
    return scores


@dataclass(frozen=True)
class OneRunAudit:
    """The guesses of the one-run audit and the bound they give."""

    canaries: int
    guesses: int
    correct: int
    epsilon_lower: float


def audit_one_run(
    scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray, delta: float,
    guesses: Sequence[int] = GUESSES, confidence: float = CONFIDENCE,
) -> OneRunAudit:
    """Guess the k highest `scores` included and the k lowest excluded for each k in
    `guesses` (capped at m/2), and keep the best bound; the confidence of each is raised
    so that all of them together hold at `confidence` (Bonferroni over `guesses`)."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    order = np.argsort(scores)  # ascending; ties do not matter for the bound
    per_test = 1.0 - (1.0 - confidence) / len(guesses)
    best = OneRunAudit(m, 0, 0, 0.0)
    for k in guesses:
        k = max(1, min(int(k), m // 2))
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        if bound > best.epsilon_lower or best.guesses == 0:
            best = OneRunAudit(m, 2 * k, correct, bound)
    return best


@dataclass(frozen=True)
class GaussianFit:
    """A Gaussian mechanism measured through canaries: one canary's `effect` on the
    released quantity and the `noise` std, each with its one-sided confidence limit
    (`effect_lower`, `noise_upper`); the noise multiplier is noise / effect."""

    effect: float
    effect_lower: float
    noise: float
    noise_upper: float

    @property
    def noise_multiplier(self) -> float:
        """noise / effect (inf when the effect is not positive)."""
        return self.noise / self.effect if self.effect > 0 else math.inf

    @property
    def noise_multiplier_upper(self) -> float:
        """noise_upper / effect_lower: the multiplier's upper limit (inf when the effect's
        lower limit is not positive)."""
        return self.noise_upper / self.effect_lower if self.effect_lower > 0 else math.inf


def gaussian_fit(z: np.ndarray, included: Sequence[bool] | np.ndarray, sampled: np.ndarray,
                 confidence: float = CONFIDENCE) -> GaussianFit:
    """The update sum measured from the projections z (canaries × rounds): the noise std
    from the never-included canaries' z (mean 0: n·σ̂²/σ² ~ χ²(n)) and the effect as the
    included canaries' mean z in the rounds they were `sampled` in less their mean z in
    the rounds they were not (Student's t on the difference, with the smaller sample's
    degrees of freedom), each limit at 1 − (1 − `confidence`)/2, so that both hold
    together at `confidence`. The difference removes what training adds along an
    included canary's direction after it was inserted (a model that keeps moving along
    earlier canaries): Poisson sampling makes a round's sampling independent of the
    rounds before it, so that drift is the same, on average, in both sets of rounds."""
    z, included, sampled = np.asarray(z, dtype=np.float64), np.asarray(included, dtype=bool), np.asarray(sampled)
    alpha = (1.0 - confidence) / 2
    null = z[~included].ravel()
    hits = z[included][sampled[included]]
    misses = z[included][~sampled[included]]
    if len(null) < 2 or len(hits) < 2 or len(misses) < 2:
        raise ValueError(f"need two observations of the noise, two of a sampled canary and two of an unsampled "
                         f"included one, got {len(null)}, {len(hits)} and {len(misses)} (more canaries or rounds)")
    noise = math.sqrt(float(np.mean(null ** 2)))
    noise_upper = noise * math.sqrt(len(null) / stats.chi2.ppf(alpha, len(null)))
    effect = float(hits.mean() - misses.mean())
    spread = math.sqrt(float(hits.var(ddof=1)) / len(hits) + float(misses.var(ddof=1)) / len(misses))
    dof = min(len(hits), len(misses)) - 1
    effect_lower = effect - float(stats.t.ppf(1 - alpha, dof)) * spread
    return GaussianFit(effect, effect_lower, noise, noise_upper)


def count_fit(counts: Sequence[float] | np.ndarray, canaries_sampled: Sequence[float] | np.ndarray,
              confidence: float = CONFIDENCE) -> GaussianFit:
    """The noised count of adaptive clipping measured through canaries: the released
    centred counts y_r regressed on the number n_r of sampled included canaries (each
    clipped, so each moves y_r by −½ as declared: y_r = a − e·n_r + the other clients +
    noise). `effect` is e and `noise` the residual std (the other clients' counts add to it,
    so it overstates the noise); limits from the t and χ² laws of least squares with
    T − 2 degrees of freedom, each at 1 − (1 − `confidence`)/2."""
    y, n = np.asarray(counts, dtype=np.float64), np.asarray(canaries_sampled, dtype=np.float64)
    alpha = (1.0 - confidence) / 2
    dof = len(y) - 2
    spread = float(np.sum((n - n.mean()) ** 2))
    if dof < 1 or spread == 0:
        return GaussianFit(math.nan, -math.inf, math.nan, math.inf)  # nothing to regress on
    slope = float(np.sum((n - n.mean()) * (y - y.mean()))) / spread
    residuals = y - y.mean() - slope * (n - n.mean())
    noise = math.sqrt(float(np.sum(residuals ** 2)) / dof)
    effect_lower = -slope - float(stats.t.ppf(1 - alpha, dof)) * noise / math.sqrt(spread)
    return GaussianFit(-slope, effect_lower, noise, noise * math.sqrt(dof / stats.chi2.ppf(alpha, dof)))


@dataclass(frozen=True)
class SimulatedCanaries:
    """What the auditor would see of an ideal subsampled Gaussian mechanism (no training):
    `z` (canaries × rounds), which canaries are `included`, which were `sampled` in each
    round, the released centred `counts` per round and the sampling rate `q`."""

    z: np.ndarray
    included: np.ndarray
    sampled: np.ndarray
    counts: np.ndarray
    q: float


def simulate_canaries(rng: np.random.Generator, noise_multiplier: float, count_stddev: float, count_effect: float,
                      canaries: int = 200, rounds: int = 20, clients: int = 20, cohort: float = 30.0,
                      drift: float = 0.0) -> SimulatedCanaries:
    """Each canary included with probability ½, q = `cohort` / (`clients` + included),
    Poisson sampling per round; z = 1[sampled] + N(0, σ²) with σ = `noise_multiplier`, and
    a count that each sampled canary moves by −`count_effect` (½ as declared) plus
    N(0, `count_stddev`²). The real clients' updates and counts are left out, except for
    `drift`: training that adds `drift` × (the canary's earlier samplings) to its z in
    every later round (a model that keeps moving along inserted directions)."""
    included = rng.random(canaries) < 0.5
    q = cohort / (clients + int(included.sum()))
    sampled = (rng.random((canaries, rounds)) < q) & included[:, None]
    earlier: np.ndarray = np.cumsum(sampled, axis=1) - sampled
    z = sampled + drift * earlier + noise_multiplier * rng.standard_normal((canaries, rounds))
    counts = -count_effect * sampled.sum(axis=0) + count_stddev * rng.standard_normal(rounds)
    return SimulatedCanaries(z, included, sampled, counts, q)


def random_directions(count: int, dimension: int, rng: np.random.Generator) -> np.ndarray:
    """`count` independent unit vectors, uniform on the sphere of R^`dimension` (rows)."""
    directions = rng.standard_normal((count, dimension)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions
