"""The screen every client reply passes before any aggregation (`UpdateScreen`), and
`ScreenedStrategy`, the wrapper that puts a Flower strategy behind it with the round
rules of the app's strategies without central DP (norm and count bounds, the failure and
`min-fit-clients` skips)."""

from collections.abc import Callable, Iterator
from logging import INFO, WARNING

import numpy as np
from flwr.common import EvaluateRes, FitIns, FitRes, Parameters, Scalar, log, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from strategies.aggregation import update_problem
from strategies.client_reports import (
    EVALUATE_METRICS,
    FIT_METRICS,
    example_count_problem,
    is_finite_number,
    known_metrics,
    metrics_problem,
)
from strategies.privacy.mechanism import global_l2_norm, model_delta
from strategies.tensors import read_arrays
from strategies.wire import CLIENT_EPSILON

FitFailures = list[tuple[ClientProxy, FitRes] | BaseException]
EvaluateFailures = list[tuple[ClientProxy, EvaluateRes] | BaseException]
Measured = list[tuple[ClientProxy, FitRes, float]]  # a result and the length of its change to the model
Check = Callable[[list[np.ndarray], FitRes], str | None]


class UpdateScreen:
    """Leaves out (and logs, unless `log_rejections` is false) every reply that cannot be
    aggregated: tensors that do not deserialise, differ in number, shape or dtype from
    `reference` (the initial model) or hold non-finite values, an example count that is
    not a whole number > 0, a known metric that is not a finite number
    (strategies/client_reports.py); metrics under other names are dropped. Under central
    DP `log_rejections` is false unless unprotected metrics are released: which client
    was left out, and why, is a figure outside ε."""

    def __init__(self, reference: Parameters, *, log_rejections: bool) -> None:
        self.reference = parameters_to_ndarrays(reference)
        self.expected_shapes = [a.shape for a in self.reference]
        self.expected_dtypes = [a.dtype for a in self.reference]
        self.log_rejections = log_rejections

    def screened(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        check: Check | None = None,
        *,
        any_float: bool = False,
    ) -> Iterator[tuple[ClientProxy, FitRes, list[np.ndarray]]]:
        """(proxy, result, arrays) of every usable fit result that `check` finds no problem
        with, its metrics reduced to the known ones, one at a time (each result's tensors
        are read when it is reached: a caller that keeps only what it needs of them holds
        one update, not the round's); `any_float` accepts any float dtype (a result the
        server computed itself, such as SecAgg+'s dequantized mean)."""
        dtypes = None if any_float else self.expected_dtypes
        for proxy, res in results:
            arrays, problem = _arrays(res)
            problem = (problem or example_count_problem(res.num_examples)
                       or update_problem(arrays, self.expected_shapes, dtypes)
                       or metrics_problem(res.metrics, FIT_METRICS)
                       or (check(arrays, res) if check else None))
            if problem is not None:
                self.reject(server_round, proxy, problem)
                continue
            res.metrics = known_metrics(res.metrics, FIT_METRICS)
            yield proxy, res, arrays

    def evaluate_results(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]]
    ) -> list[tuple[ClientProxy, EvaluateRes]]:
        """The evaluation replies with a finite loss, a whole number of examples > 0 and
        finite known metrics (others dropped); the rest are logged and left out."""
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
        return usable

    def reject(self, server_round: int, proxy: ClientProxy, problem: str) -> None:
        """Log that `proxy`'s reply was left out, when rejections may be logged."""
        if self.log_rejections:
            log(WARNING, "round %s: left out client %s: %s", server_round, proxy.cid, problem)


def _arrays(res: FitRes) -> tuple[list[np.ndarray], str | None]:
    """The result's tensors (read-only, over its bytes), or why they cannot be read."""
    try:
        return read_arrays(res.parameters), None
    except Exception as err:  # any bytes a client sends must not stop the server
        return [], f"unreadable tensors ({type(err).__name__})"


class AroundStrategy(Strategy):
    """A strategy around `inner` whose replies pass `screen`: the initial model and every
    evaluation step are the inner strategy's, over the screened evaluation replies;
    subclasses own the fit steps."""

    def __init__(self, inner: Strategy, screen: UpdateScreen) -> None:
        self.inner = inner
        self.screen = screen

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's initial model."""
        return self.inner.initialize_parameters(client_manager)

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """The inner strategy's evaluation instructions."""
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: EvaluateFailures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The inner strategy's evaluation aggregate over the usable replies."""
        usable = self.screen.evaluate_results(server_round, results)
        if not usable:
            return None, {}
        return self.inner.aggregate_evaluate(server_round, usable, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """The inner strategy's centralized evaluation."""
        return self.inner.evaluate(server_round, parameters)


class ScreenedStrategy(AroundStrategy):
    """A Flower strategy (`inner`) behind an `UpdateScreen`, with the round rules of the
    app's strategies without central DP. Before `inner.aggregate_fit`:

    - a round whose failures exceed `max_failure_fraction` of its replies is skipped;
    - the screen leaves out unusable results;
    - with 3 or more usable results, an update whose change to the global model is longer
      than `max_update_norm_ratio` × the round's median change is left out, and an example
      count above `max_examples_ratio` × the round's median count is lowered to that bound
      (logged): FedAvg weights each client by the count it reports, so one client claiming
      10^12 examples would otherwise decide the average alone; 0 = off;
    - a round with fewer usable results than the inner strategy's `min_fit_clients` is
      skipped.

    A skipped round leaves the global model as it is (logged). Clients' local-DP epsilons
    are summarised as `client_epsilon_max` and `client_epsilon_mean`; `num_rejected`
    counts the results left out. Every other Strategy method is the inner strategy's, and
    so is the state a checkpoint saves (strategies/state.py).
    """

    def __init__(self, inner: Strategy, screen: UpdateScreen, *, max_failure_fraction: float,
                 max_examples_ratio: float, max_update_norm_ratio: float) -> None:
        super().__init__(inner, screen)
        self.max_failure_fraction = max_failure_fraction
        self.max_examples_ratio = max_examples_ratio
        self.max_update_norm_ratio = max_update_norm_ratio
        self.round_weights = screen.reference  # until the first configure_fit

    def __repr__(self) -> str:
        return repr(self.inner)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The inner strategy's fit instructions; remembers the model the round starts from."""
        self.round_weights = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: FitFailures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The inner strategy's aggregation over the results that pass the screen and the
        round rules (see the class), or None for a skipped round."""
        if self._too_many_failures(server_round, len(results), failures):
            return None, {"num_rejected": 0}
        # the screen keeps each update's length, not its tensors: the inner strategy reads
        # its own, so the round's updates are never held as arrays twice (FedAvg reads them
        # one at a time)
        measured = [(proxy, res, self._change(arrays))
                    for proxy, res, arrays in self.screen.screened(server_round, results)]
        accepted = [(proxy, res) for proxy, res, _ in self._bounded(server_round, measured)]
        num_rejected = len(results) - len(accepted)
        minimum = getattr(self.inner, "min_fit_clients", 1)
        if len(accepted) < minimum:
            log(INFO, "round %s skipped: %s usable results, fewer than min-fit-clients = %s",
                server_round, len(accepted), minimum)
            return None, {"num_rejected": num_rejected}
        parameters, metrics = self.inner.aggregate_fit(server_round, accepted, failures)
        metrics = dict(metrics)
        metrics["num_rejected"] = num_rejected
        epsilons = [float(res.metrics[CLIENT_EPSILON]) for _, res in accepted if CLIENT_EPSILON in res.metrics]
        if epsilons:  # local DP: each client's own epsilon so far
            metrics.pop(CLIENT_EPSILON, None)
            metrics["client_epsilon_max"] = max(epsilons)
            metrics["client_epsilon_mean"] = sum(epsilons) / len(epsilons)
        return parameters, metrics

    def _too_many_failures(self, server_round: int, num_results: int, failures: FitFailures) -> bool:
        """Whether failures exceed `max_failure_fraction` of the round's replies (logged)."""
        replies = num_results + len(failures)
        if failures and len(failures) > self.max_failure_fraction * replies:
            log(WARNING, "round %s skipped: %s of %s clients failed (max-failure-fraction = %s)",
                server_round, len(failures), replies, self.max_failure_fraction)
            return True
        return False

    def _change(self, arrays: list[np.ndarray]) -> float:
        """‖w_k − w‖, the update's change to the round's model (0 when no norm bound applies)."""
        return global_l2_norm(model_delta(arrays, self.round_weights)) if self.max_update_norm_ratio else 0.0

    def _bounded(self, server_round: int, accepted: Measured) -> Measured:
        """`accepted` without updates far longer than the round's median change, example
        counts capped at `max_examples_ratio` × the median count (see the class)."""
        if len(accepted) < 3:
            return accepted
        if self.max_update_norm_ratio:
            median = float(np.median([norm for _, _, norm in accepted]))
            kept = []
            for proxy, res, norm in accepted:
                if norm > self.max_update_norm_ratio * median:
                    self.screen.reject(server_round, proxy, f"update changes the model by {norm:.3g}, more "
                                       f"than max-update-norm-ratio = {self.max_update_norm_ratio:g} x the "
                                       f"median {median:.3g}")
                else:
                    kept.append((proxy, res, norm))
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
