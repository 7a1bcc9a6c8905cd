"""What a DP run releases to the people who read its outputs and logs.

By default a DP run releases only what its ε covers: the noised models, what the server
computes from them on its own data (centralized test metrics), noised statistics whose
cost is accounted (adaptive clipping's noised count and the clipping norm that follows
from it) and ε itself. Client-reported figures (train loss and accuracy, federated
evaluation), exact clipping diagnostics (clip fraction, median update norm, rejected and
failed counts) and the realised Poisson cohort size (Binomial(N, q): it moves with one
client's presence) are functions of individual clients' data outside the guarantee:
they are released only with `dp-release-unprotected-metrics = true`, which
`summary.json` records.

`ReleasePolicy` is the one gate every channel passes: history rows (history.jsonl,
TensorBoard, MLflow and the round's log line are written from them), the metrics kept
in Flower's `History` (which Flower prints as its end-of-run `[SUMMARY]`), and the
log records of the server process (`log_filter`, on Flower's logger: Flower's own
lines that count a round's sampled clients, replies, failures or SecAgg+ survivors,
and the app's per-client warnings).

Under local DP the server is the party the clients protect themselves from: what they
withhold is decided on the clients (they send no exact train figures and refuse
federated evaluation); the server's own counts of replies and failures stay in the
outputs.
"""

import logging
from dataclasses import dataclass
from typing import Any

# Per-round fields a DP run releases by default.
DP_RELEASED_FIELDS = frozenset({
    "round", "centralized_loss", "centralized_accuracy", "seconds",
    "epsilon", "epsilon_against_server", "clipping_norm", "noised_unclipped_fraction",
    "client_epsilon_max", "client_epsilon_mean",
})
# Under local DP, also the server's own counts (the clients decide what they send).
LOCAL_DP_SERVER_COUNTS = frozenset({"num_fit_clients", "num_fit_failures", "num_rejected"})
# Per-round fields every row has (null when withheld).
ALWAYS_PRESENT = ("federated_loss", "federated_accuracy", "num_fit_clients")

# Log templates that count or name a round's clients (Flower 1.42's `Server` and
# SecAgg+ workflow, and the app's own per-client lines): withheld with client figures.
CLIENT_LOG_TEMPLATES = frozenset({
    "configure_fit: strategy sampled %s clients (out of %s)",
    "aggregate_fit: received %s results and %s failures",
    "configure_evaluate: strategy sampled %s clients (out of %s)",
    "aggregate_evaluate: received %s results and %s failures",
    "configure_fit: no clients selected, cancel",
    "configure_evaluate: no clients selected, skipping evaluation",
    "round %s: a client failed: %s",
    "round %s: left out client %s: %s",
    "round %s: left out evaluation of client %s: %s",
    "round %s: SecAgg+ could not run with this cohort; the strategy aggregates no client update",
})
# Flower's SecAgg+ workflow reports how many clients reached each stage, and whether the
# protocol halted (too many dropouts): under DP none of its lines leave the server.
SECAGG_WORKFLOW_MODULE = "secaggplus_workflow"


@dataclass(frozen=True)
class ReleasePolicy:
    """`dp_mode`: "off", "central" or "local"; `unprotected`: a DP run also releases
    figures outside ε (opt-in)."""

    dp_mode: str
    unprotected: bool

    @property
    def client_figures(self) -> bool:
        """Whether client-reported and exact per-client figures may leave the server."""
        return self.dp_mode == "off" or self.unprotected

    @property
    def server_counts(self) -> bool:
        """Whether the numbers of replies, failures and rejected updates may be released."""
        return self.client_figures or self.dp_mode == "local"

    def metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """A round's aggregated metrics as they may enter Flower's `History`."""
        if self.client_figures:
            return dict(metrics)
        return {k: v for k, v in metrics.items() if k in DP_RELEASED_FIELDS}

    def log_filter(self) -> logging.Filter | None:
        """The filter for Flower's logger in the server process, None when nothing is withheld."""
        return None if self.server_counts else ClientLogFilter()

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` without the fields this policy withholds (`ALWAYS_PRESENT` ones set to None)."""
        if self.client_figures:
            return dict(row)
        allowed = DP_RELEASED_FIELDS | (LOCAL_DP_SERVER_COUNTS if self.server_counts else set())
        released = {k: v for k, v in row.items() if k in allowed}
        for field in ALWAYS_PRESENT:
            released.setdefault(field, None)
        return released


class ClientLogFilter(logging.Filter):
    """Drops the log records that count or name a round's clients (`CLIENT_LOG_TEMPLATES`)
    and every record of Flower's SecAgg+ workflow."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in CLIENT_LOG_TEMPLATES and SECAGG_WORKFLOW_MODULE not in record.module


def install_log_filter(policy: ReleasePolicy) -> logging.Filter | None:
    """Attach `policy`'s filter to Flower's logger (once per process); return it."""
    from flwr.common.logger import FLOWER_LOGGER

    log_filter = policy.log_filter()
    if log_filter is None:
        return None
    for existing in FLOWER_LOGGER.filters:
        if isinstance(existing, ClientLogFilter):
            return existing
    FLOWER_LOGGER.addFilter(log_filter)
    return log_filter
