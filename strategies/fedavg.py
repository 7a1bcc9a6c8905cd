"""FedAvg: w = Σ_k n_k/n w_k over the results that pass the screen."""

from typing import Any

from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from strategies.aggregation import weighted_average, weighted_metric_means
from strategies.screening import FitFailures, ScreenedStrategy, UpdateScreen
from strategies.tensors import read_arrays

# The app's client metrics are example-weighted means unless a strategy is given other functions.
METRIC_MEANS = {"fit_metrics_aggregation_fn": weighted_metric_means,
                "evaluate_metrics_aggregation_fn": weighted_metric_means}


class WeightedFedAvg(FlowerFedAvg):
    """Flower's FedAvg with the average computed by `weighted_average` (no screen)."""

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: FitFailures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """w = Σ_k n_k/n w_k and the aggregated metrics; None without results. Each
        result's tensors are read as the sum reaches them: one update in memory at a time."""
        if not results:
            return None, {}
        aggregated = weighted_average(
            (read_arrays(r.parameters) for _, r in results),
            [r.num_examples for _, r in results],
        )
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None:
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results]))
        return ndarrays_to_parameters(aggregated), metrics


class FedAvg(ScreenedStrategy):
    """FedAvg (McMahan et al. 2017): a `WeightedFedAvg` built from Flower's FedAvg keyword
    arguments, behind the app's screen and round rules (`ScreenedStrategy`)."""

    def __init__(self, *, max_failure_fraction: float, max_examples_ratio: float,
                 max_update_norm_ratio: float, **flower_kwargs: Any) -> None:
        super().__init__(
            WeightedFedAvg(**(METRIC_MEANS | flower_kwargs)),
            UpdateScreen(flower_kwargs["initial_parameters"], log_rejections=True),
            max_failure_fraction=max_failure_fraction, max_examples_ratio=max_examples_ratio,
            max_update_norm_ratio=max_update_norm_ratio,
        )

    def __repr__(self) -> str:
        return "FedAvg"
