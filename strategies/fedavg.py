"""FedAvg whose aggregation leaves out malformed client results."""

from logging import WARNING

import math
from collections.abc import Callable

from flwr.common import (
    EvaluateRes,
    FitRes,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
import numpy as np
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from strategies.aggregation import update_problem, weighted_average, weighted_metric_means

Failures = list[tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException]


class FedAvg(FlowerFedAvg):
    """Flower's FedAvg with w = sum_k n_k/n w_k computed by `weighted_average`.

    A result with the wrong number or shapes of tensors, non-finite values or no
    examples is logged and left out; it never reaches the global model. The shapes
    are those of `initial_parameters`, which is therefore required. Client metrics
    are aggregated as example-weighted means unless aggregation functions are given.
    """

    def __init__(self, *, initial_parameters: Parameters, **kwargs) -> None:
        kwargs.setdefault("fit_metrics_aggregation_fn", weighted_metric_means)
        kwargs.setdefault("evaluate_metrics_aggregation_fn", weighted_metric_means)
        super().__init__(initial_parameters=initial_parameters, **kwargs)
        self.expected_shapes = [a.shape for a in parameters_to_ndarrays(initial_parameters)]

    def __repr__(self) -> str:
        return f"FedAvg(accept_failures={self.accept_failures})"

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Average the well-formed results, weighted by their example counts."""
        if failures and not self.accept_failures:
            return None, {}
        accepted = self.screen(
            server_round, results,
            lambda _, res: f"num_examples = {res.num_examples}" if res.num_examples <= 0 else None,
        )
        num_rejected = len(results) - len(accepted)
        if not accepted:
            return None, {"num_rejected": num_rejected}
        aggregated = weighted_average([u for u, _ in accepted], [r.num_examples for _, r in accepted])
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None:
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in accepted]))
        metrics["num_rejected"] = num_rejected
        epsilons = [float(r.metrics["epsilon"]) for _, r in accepted if "epsilon" in r.metrics]
        if epsilons:  # local DP: each client's own epsilon so far
            metrics.pop("epsilon", None)
            metrics["client_epsilon_max"] = max(epsilons)
            metrics["client_epsilon_mean"] = sum(epsilons) / len(epsilons)
        return ndarrays_to_parameters(aggregated), metrics

    def screen(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        check: Callable[[list[np.ndarray], FitRes], str | None],
    ) -> list[tuple[list[np.ndarray], FitRes]]:
        """(arrays, result) of every result with the expected tensors, all finite, that
        `check` finds no problem with; the others are logged and left out."""
        accepted = []
        for proxy, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            problem = update_problem(arrays, self.expected_shapes) or check(arrays, res)
            if problem is not None:
                log(WARNING, "round %s: left out client %s: %s", server_round, proxy.cid, problem)
                continue
            accepted.append((arrays, res))
        return accepted

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Failures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Example-weighted mean loss and metrics, leaving out non-finite losses."""
        usable = []
        for proxy, res in results:
            if res.num_examples > 0 and math.isfinite(res.loss):
                usable.append((proxy, res))
            else:
                log(
                    WARNING,
                    "round %s: left out evaluation of client %s: loss %s on %s examples",
                    server_round, proxy.cid, res.loss, res.num_examples,
                )
        return super().aggregate_evaluate(server_round, usable, failures)
