"""Differential privacy: the mechanisms and their accounting, apart from Flower.

- `mechanism`: update deltas, clipping, the noised sum and mean (central DP-FedAvg).
- `sampling`: Poisson and fixed-size client sampling.
- `accounting`: the client-level accountant and noise calibration (Opacus' RDP / PRV).
- `adaptive_clipping`: the clipping norm that follows a quantile (Andrew et al. 2021).
- `ledger`: the mechanisms a round releases and the one noise multiplier they compose to.
- `sensitivity`: each declared sensitivity measured on adversarial neighbouring cohorts.
- `randomness`: the OS-entropy generators and the secure Gaussian every mechanism draws from.
- `local_dp`: sample-level DP-SGD on a client with Opacus.
- `statement`: the `privacy` object of `summary.json` and its one-line statement.
- `release`: which figures a DP run releases.
- `audit`: the statistics of the empirical privacy audit (`python -m fl_app.audit`).
"""
