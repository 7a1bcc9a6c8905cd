"""A user strategy: FedAvg that bounds every client's change to the global model.

Run it with `--run-config "strategy='fl_app.examples.norm_bounded_fedavg:NormBoundedFedAvg'"`.
The app constructs the class with Flower's FedAvg keyword arguments (fractions, minimum
client counts, evaluate_fn, on_fit_config_fn, on_evaluate_config_fn,
initial_parameters, fit/evaluate_metrics_aggregation_fn) and puts its screen in front,
so malformed updates never reach `aggregate_fit`.
"""

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg


class NormBoundedFedAvg(FedAvg):
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?"):
    each client's w_k − w_global is scaled to at most `max_norm` before averaging."""

    max_norm = 5.0

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        self.global_weights = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        for _, res in results:
            weights = parameters_to_ndarrays(res.parameters)
            change = [w - g for w, g in zip(weights, self.global_weights, strict=True)]
            norm = float(np.sqrt(sum(np.sum(c.astype(np.float64) ** 2) for c in change)))
            scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
            res.parameters = ndarrays_to_parameters(
                [(g + scale * c).astype(w.dtype) for g, c, w in zip(self.global_weights, change, weights, strict=True)]
            )
        return super().aggregate_fit(server_round, results, failures)
