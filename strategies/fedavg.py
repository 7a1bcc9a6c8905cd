"""FedAvg: w = Σ_k n_k/n w_k over the results that pass the screen."""

from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from strategies.aggregation import weighted_average
from strategies.screening import Failures, ScreenedAggregation


class _WeightedFedAvg(FlowerFedAvg):
    """Flower's FedAvg with the average computed by `weighted_average`."""

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        aggregated = weighted_average(
            [parameters_to_ndarrays(r.parameters) for _, r in results],
            [r.num_examples for _, r in results],
        )
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None:
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results]))
        return ndarrays_to_parameters(aggregated), metrics


class FedAvg(ScreenedAggregation, _WeightedFedAvg):
    """FedAvg (McMahan et al. 2017) behind the app's screen for malformed updates;
    client metrics are example-weighted means unless aggregation functions are given."""

    def __repr__(self) -> str:
        return "FedAvg"
