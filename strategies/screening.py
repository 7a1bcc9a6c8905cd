"""A mixin that puts every Flower strategy behind the same screen: malformed client
results never reach its aggregation, and a round with too few usable results or too
many failures leaves the global model as it is."""

from collections.abc import Callable
from logging import INFO, WARNING

import numpy as np
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, log, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from strategies.aggregation import update_problem, weighted_metric_means
from strategies.client_reports import (
    EVALUATE_METRICS,
    FIT_METRICS,
    example_count_problem,
    is_finite_number,
    known_metrics,
    metrics_problem,
)
from strategies.privacy.mechanism import global_l2_norm, model_delta
from strategies.wire import CLIENT_EPSILON

Failures = list[tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException]
Screened = list[tuple[ClientProxy, FitRes, list[np.ndarray]]]


class ScreenedAggregation:
    """Put first in the bases of a Flower strategy: `class S(ScreenedAggregation, FedMedian)`.

    Before the strategy's own `aggregate_fit`:
    - a result whose tensors do not deserialise, differ in number, shape or dtype from
      `initial_parameters` (which is therefore required), hold non-finite values, whose
      example count is not a whole number > 0 or whose known metrics are not finite
      numbers (strategies/client_reports.py) is logged and left out; metrics under other
      names are dropped;
    - with 3 or more usable results, an update whose change to the global model is longer
      than `max_update_norm_ratio` × the round's median change is left out, and an
      example count above `max_examples_ratio` × the round's median count is lowered to
      that bound (logged): FedAvg weights each client by the count it reports, so one
      client claiming 10^12 examples would otherwise decide the average alone; 0 = off.
      Central DP does not use these bounds: it weights clients equally and clips;
    - a round whose failures exceed `max_failure_fraction` of its replies, or with fewer
      usable results than `min_fit_clients`, is skipped with a log line.
    Evaluation results with a non-finite loss are left out too. Clients' local-DP
    epsilons are summarised as `client_epsilon_max` and `client_epsilon_mean`. Each
    left-out result is logged unless `log_rejections` is false (central DP: which client
    was left out, and why, is a figure outside ε).
    """

    log_rejections = True

    def __init__(self, *, initial_parameters: Parameters, max_failure_fraction: float = 1.0,
                 max_examples_ratio: float = 0.0, max_update_norm_ratio: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("fit_metrics_aggregation_fn", weighted_metric_means)
        kwargs.setdefault("evaluate_metrics_aggregation_fn", weighted_metric_means)
        super().__init__(initial_parameters=initial_parameters, **kwargs)  # type: ignore[call-arg]
        initial = parameters_to_ndarrays(initial_parameters)
        self.expected_shapes = [a.shape for a in initial]
        self.expected_dtypes = [a.dtype for a in initial]
        self.max_failure_fraction = max_failure_fraction
        self.max_examples_ratio = max_examples_ratio
        self.max_update_norm_ratio = max_update_norm_ratio
        self.round_weights = initial

    def screen(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        check: Callable[[list[np.ndarray], FitRes], str | None] = lambda arrays, res: None,
        *,
        any_float: bool = False,
    ) -> Screened:
        """(proxy, result, arrays) of every result with the expected tensors, all finite,
        a whole number of examples > 0, finite known metrics, that `check` finds no
        problem with, its metrics reduced to the known ones; the others are logged and
        left out. `any_float` accepts any float dtype instead of the model's (a result the
        server computed itself, such as SecAgg+'s dequantized mean)."""
        accepted = []
        for proxy, res in results:
            arrays, problem = self._arrays(res)
            problem = (problem or example_count_problem(res.num_examples)
                       or update_problem(arrays, self.expected_shapes, None if any_float else self.expected_dtypes)
                       or metrics_problem(res.metrics, FIT_METRICS) or check(arrays, res))
            if problem is not None:
                self._reject(server_round, proxy, problem)
                continue
            res.metrics = known_metrics(res.metrics, FIT_METRICS)
            accepted.append((proxy, res, arrays))
        return accepted

    @staticmethod
    def _arrays(res: FitRes) -> tuple[list[np.ndarray], str | None]:
        """The result's tensors, or why they cannot be read."""
        try:
            return parameters_to_ndarrays(res.parameters), None
        except Exception as err:  # any bytes a client sends must not stop the server
            return [], f"unreadable tensors ({type(err).__name__})"

    def _reject(self, server_round: int, proxy: ClientProxy, problem: str) -> None:
        if self.log_rejections:
            log(WARNING, "round %s: left out client %s: %s", server_round, proxy.cid, problem)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager) -> list:
        """The strategy's fit instructions; remembers the model the round starts from."""
        self.round_weights = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)  # type: ignore[misc]

    def bounded(self, server_round: int, accepted: Screened) -> Screened:
        """`accepted` without updates far longer than the round's median change, example
        counts capped at `max_examples_ratio` × the median count (see the class)."""
        if len(accepted) < 3:
            return accepted
        if self.max_update_norm_ratio:
            norms = [global_l2_norm(model_delta(arrays, self.round_weights)) for _, _, arrays in accepted]
            median = float(np.median(norms))
            kept = []
            for (proxy, res, arrays), norm in zip(accepted, norms):
                if norm > self.max_update_norm_ratio * median:
                    self._reject(server_round, proxy, f"update changes the model by {norm:.3g}, more than "
                                 f"max-update-norm-ratio = {self.max_update_norm_ratio:g} x the median {median:.3g}")
                else:
                    kept.append((proxy, res, arrays))
            accepted = kept
        if self.max_examples_ratio:
            cap = int(self.max_examples_ratio * float(np.median([res.num_examples for _, res, _ in accepted])))
            for proxy, res, _ in accepted:
                if res.num_examples > cap:
                    log(WARNING, "round %s: client %s reported %s examples; weighted as %s "
                        "(max-examples-ratio = %g x the median)", server_round, proxy.cid,
                        res.num_examples, cap, self.max_examples_ratio)
                    res.num_examples = cap
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
        accepted = self.bounded(server_round, self.screen(server_round, results))
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
        epsilons = [float(res.metrics[CLIENT_EPSILON]) for _, res, _ in accepted if CLIENT_EPSILON in res.metrics]
        if epsilons:  # local DP: each client's own epsilon so far
            metrics.pop(CLIENT_EPSILON, None)
            metrics["client_epsilon_max"] = max(epsilons)
            metrics["client_epsilon_mean"] = sum(epsilons) / len(epsilons)
        return parameters, metrics

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Failures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The strategy's evaluation aggregate over the replies with a finite loss, a whole
        number of examples > 0 and finite known metrics (others dropped)."""
        usable = []
        for proxy, res in results:
            problem = (example_count_problem(res.num_examples)
                       or (None if is_finite_number(res.loss) else "loss is not a finite number")
                       or metrics_problem(res.metrics, EVALUATE_METRICS))
            if problem is None:
                res.metrics = known_metrics(res.metrics, EVALUATE_METRICS)
                usable.append((proxy, res))
            else:
                log(WARNING, "round %s: left out evaluation of client %s: %s", server_round, proxy.cid, problem)
        if not usable:
            return None, {}
        return super().aggregate_evaluate(server_round, usable, failures)  # type: ignore[misc]
