"""A mixin that puts every Flower strategy behind the same screen: malformed client
results never reach its aggregation, and a round with too few usable results or too
many failures leaves the global model as it is."""

import math
from collections.abc import Callable
from logging import INFO, WARNING

import numpy as np
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, log, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from strategies.aggregation import update_problem, weighted_metric_means

Failures = list[tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException]
Screened = list[tuple[ClientProxy, FitRes, list[np.ndarray]]]


class ScreenedAggregation:
    """Put first in the bases of a Flower strategy: `class S(ScreenedAggregation, FedMedian)`.

    Before the strategy's own `aggregate_fit`:
    - a result with the wrong number or shapes of tensors (those of `initial_parameters`,
      which is therefore required), non-finite values or no examples is logged and left out;
    - a round whose failures exceed `max_failure_fraction` of its replies, or with fewer
      usable results than `min_fit_clients`, is skipped with a log line.
    Evaluation results with a non-finite loss are left out too. Clients' local-DP
    epsilons are summarised as `client_epsilon_max` and `client_epsilon_mean`. Each
    left-out result is logged unless `log_rejections` is false (central DP: which client
    was left out, and why, is a figure outside ε).
    """

    log_rejections = True

    def __init__(self, *, initial_parameters: Parameters, max_failure_fraction: float = 1.0, **kwargs) -> None:
        kwargs.setdefault("fit_metrics_aggregation_fn", weighted_metric_means)
        kwargs.setdefault("evaluate_metrics_aggregation_fn", weighted_metric_means)
        super().__init__(initial_parameters=initial_parameters, **kwargs)  # type: ignore[call-arg]
        self.expected_shapes = [a.shape for a in parameters_to_ndarrays(initial_parameters)]
        self.max_failure_fraction = max_failure_fraction

    def screen(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        check: Callable[[list[np.ndarray], FitRes], str | None] = lambda arrays, res: None,
    ) -> Screened:
        """(proxy, result, arrays) of every result with the expected tensors, all finite,
        at least one example, that `check` finds no problem with; the others are logged
        and left out."""
        accepted = []
        for proxy, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            problem = update_problem(arrays, self.expected_shapes) or check(arrays, res)
            if problem is None and res.num_examples <= 0:
                problem = f"num_examples = {res.num_examples}"
            if problem is not None:
                if self.log_rejections:
                    log(WARNING, "round %s: left out client %s: %s", server_round, proxy.cid, problem)
                continue
            accepted.append((proxy, res, arrays))
        return accepted

    def too_many_failures(self, server_round: int, num_results: int, failures: Failures) -> bool:
        """Whether failures exceed `max_failure_fraction` of the round's replies (logged)."""
        replies = num_results + len(failures)
        if failures and len(failures) > self.max_failure_fraction * replies:
            log(WARNING, "round %s skipped: %s of %s clients failed (max-failure-fraction = %s)",
                server_round, len(failures), replies, self.max_failure_fraction)
            return True
        return False

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The strategy's aggregation over the results that pass the screen."""
        if self.too_many_failures(server_round, len(results), failures):
            return None, {"num_rejected": 0}
        accepted = self.screen(server_round, results)
        num_rejected = len(results) - len(accepted)
        minimum = getattr(self, "min_fit_clients", 1)
        if len(accepted) < minimum:
            log(INFO, "round %s skipped: %s usable results, fewer than min-fit-clients = %s",
                server_round, len(accepted), minimum)
            return None, {"num_rejected": num_rejected}
        parameters, metrics = super().aggregate_fit(  # type: ignore[misc]
            server_round, [(proxy, res) for proxy, res, _ in accepted], failures
        )
        metrics = dict(metrics)
        metrics["num_rejected"] = num_rejected
        epsilons = [float(res.metrics["epsilon"]) for _, res, _ in accepted if "epsilon" in res.metrics]
        if epsilons:  # local DP: each client's own epsilon so far
            metrics.pop("epsilon", None)
            metrics["client_epsilon_max"] = max(epsilons)
            metrics["client_epsilon_mean"] = sum(epsilons) / len(epsilons)
        return parameters, metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Failures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The strategy's evaluation aggregate, leaving out non-finite losses."""
        usable = []
        for proxy, res in results:
            if res.num_examples > 0 and math.isfinite(res.loss):
                usable.append((proxy, res))
            else:
                log(WARNING, "round %s: left out evaluation of client %s: loss %s on %s examples",
                    server_round, proxy.cid, res.loss, res.num_examples)
        if not usable:
            return None, {}
        return super().aggregate_evaluate(server_round, usable, failures)  # type: ignore[misc]
