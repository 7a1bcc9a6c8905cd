"""What a DP run releases to the people who read its outputs and logs.

By default a DP run releases only what its ε covers: the noised models, what the server
computes from them on its own data (centralized test metrics), noised statistics whose
cost is accounted (adaptive clipping's noised count) and the realised Poisson cohort
size. Client-reported figures (train loss and accuracy, federated evaluation) and exact
clipping diagnostics (clip fraction, median update norm, rejected and failed counts)
are functions of individual clients' data outside the guarantee: they are released
only with `dp-release-unprotected-metrics = true`, which `summary.json` records.

Under local DP the server is the party the clients protect themselves from: what they
withhold is decided on the clients (they send no exact train figures and refuse
federated evaluation); the server's own counts of replies and failures stay in the
outputs.
"""

from dataclasses import dataclass
from typing import Any

# Per-round fields a DP run releases by default.
DP_RELEASED_FIELDS = frozenset({
    "round", "centralized_loss", "centralized_accuracy", "seconds",
    "epsilon", "cohort_size", "clipping_norm", "noised_unclipped_fraction",
    "client_epsilon_max", "client_epsilon_mean",
})
# Under local DP, also the server's own counts (the clients decide what they send).
LOCAL_DP_SERVER_COUNTS = frozenset({"num_fit_clients", "num_fit_failures", "num_rejected"})
# Per-round fields every row has (null when withheld).
ALWAYS_PRESENT = ("federated_loss", "federated_accuracy", "num_fit_clients")


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

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` without the fields this policy withholds (`ALWAYS_PRESENT` ones set to None)."""
        if self.client_figures:
            return dict(row)
        allowed = DP_RELEASED_FIELDS | (LOCAL_DP_SERVER_COUNTS if self.server_counts else set())
        released = {k: v for k, v in row.items() if k in allowed}
        for field in ALWAYS_PRESENT:
            released.setdefault(field, None)
        return released
