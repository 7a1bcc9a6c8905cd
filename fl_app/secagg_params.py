"""The share count and reconstruction threshold Flower 1.42's SecAgg+ derives for a
cohort (`SecAggPlusWorkflow.setup_stage`), and how many dropouts a cohort survives.

SecAgg+ halts a round when some sampled client has fewer than τ active neighbours among
its `num_shares`: with τ = num_shares, one dropout halts the round, and a round that
halts releases no client's update. Under DP that would let one client's presence (it
drops out) change the release by the whole cohort's sum, so the app refuses settings
where one dropout halts a cohort of the expected size (`fl_app.config`).
"""


def secagg_shares(cohort_size: int, num_shares: float, reconstruction_threshold: float) -> tuple[int, int]:
    """(num_shares, τ) for a cohort of K ≥ 2 clients from the fractions of K, as Flower
    computes them: shares round(s·K), made odd when below K, K when ≤ 2; τ = max(2, round(t·shares))."""
    shares = round(num_shares * cohort_size)
    if shares < cohort_size and shares % 2 == 0:
        shares += 1
    if shares <= 2:
        shares = cohort_size
    return shares, max(round(reconstruction_threshold * shares), 2)


def tolerated_dropouts(cohort_size: int, num_shares: float, reconstruction_threshold: float) -> int:
    """How many of K sampled clients may drop out without halting SecAgg+ (every client
    keeps at least τ active neighbours among its shares, itself counted); 0 for K < 2,
    where SecAgg+ cannot run."""
    if cohort_size < 2:
        return 0
    shares, threshold = secagg_shares(cohort_size, num_shares, reconstruction_threshold)
    return max(shares - threshold, 0)


def unmask_threshold(cohort_size: int, num_shares: float, reconstruction_threshold: float) -> int:
    """τ(K): the fewest survivors whose vectors make up a sum SecAgg+ unmasks for a cohort
    of K (each client's mask needs τ shares, each held by a different survivor); 1 for a
    cohort of one, which sends without SecAgg+ (distributed DP's noise shares are μ/τ(K))."""
    if cohort_size < 2:
        return 1
    return secagg_shares(cohort_size, num_shares, reconstruction_threshold)[1]
