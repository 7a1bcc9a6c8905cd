"""Flower's legacy `Server` with a round loop that records every round."""

import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.common import Parameters, Scalar, log, parameters_to_ndarrays
from flwr.server import History, Server
from flwr.server.server import FitResultsAndFailures, fit_clients

from fl_app.outputs import RunRecorder


class RecordingServer(Server):
    """Runs round 0 (centralized evaluation of the initial model) and rounds 1..N of
    fit -> centralized evaluation -> federated evaluation, handing each round's
    figures to a `RunRecorder` and the final model to it at the end.

    Strategies may add two optional methods: `stop_reason(server_round, client_manager)
    -> str | None`
    (e.g. a spent privacy budget) ends training cleanly before that round, and
    `summary() -> dict` adds to summary.json. A round whose cohort is empty still asks
    the strategy to aggregate (DP-FedAvg releases noise then).
    """

    def __init__(
        self,
        *,
        recorder: RunRecorder,
        check_population: Callable[[int], None] = lambda n: None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.check_population = check_population

    def fit(self, num_rounds: int, timeout: float | None) -> tuple[History, float]:
        """Run the federation for up to `num_rounds` rounds."""
        history = History()
        start = time.perf_counter()
        self.check_population(self.client_manager().num_available())
        self.parameters = self._get_initial_parameters(server_round=0, timeout=timeout)
        stopped = None
        for server_round in range(num_rounds + 1):
            stopped = self._stop_reason(server_round) if server_round > 0 else None
            if stopped:
                log(WARNING, "Stopping before round %s: %s", server_round, stopped)
                break
            round_start = time.perf_counter()
            row: dict[str, Any] = {"round": server_round, "num_fit_clients": 0}
            if server_round > 0:
                row.update(self._fit(server_round, timeout, history))
            loss, metrics = self.strategy.evaluate(server_round, parameters=self.parameters)
            history.add_loss_centralized(server_round=server_round, loss=loss)
            history.add_metrics_centralized(server_round=server_round, metrics=metrics)
            row.update(centralized_loss=loss, centralized_accuracy=metrics["accuracy"])
            row.update(federated_loss=None, federated_accuracy=None)
            if server_round > 0:
                row.update(self._evaluate(server_round, timeout, history))
            row["seconds"] = time.perf_counter() - round_start
            self.recorder.record(row)
        extra = dict(getattr(self.strategy, "summary", dict)())
        if stopped:
            extra["stopped_early"] = stopped
        self.recorder.finish(parameters_to_ndarrays(self.parameters), extra)
        return history, time.perf_counter() - start

    def _stop_reason(self, server_round: int) -> str | None:
        stop_reason = getattr(self.strategy, "stop_reason", None)
        return stop_reason(server_round, self.client_manager()) if stop_reason else None

    def fit_round(
        self, server_round: int, timeout: float | None
    ) -> tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures]:
        """Flower's fit round, except that an empty cohort still reaches `aggregate_fit`."""
        instructions = self.strategy.configure_fit(
            server_round=server_round, parameters=self.parameters,
            client_manager=self._client_manager,
        )
        log(INFO, "configure_fit: strategy sampled %s clients (out of %s)",
            len(instructions), self._client_manager.num_available())
        results, failures = fit_clients(
            client_instructions=instructions, max_workers=self.max_workers,
            timeout=timeout, group_id=server_round,
        ) if instructions else ([], [])
        log(INFO, "aggregate_fit: received %s results and %s failures", len(results), len(failures))
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        return parameters, metrics, (results, failures)

    def _fit(self, server_round: int, timeout: float | None, history: History) -> dict:
        parameters, metrics, (results, failures) = self.fit_round(server_round, timeout)
        if parameters is not None:
            self.parameters = parameters
        history.add_metrics_distributed_fit(server_round=server_round, metrics=metrics)
        return {"num_fit_clients": len(results), "num_fit_failures": len(failures)} | metrics

    def _evaluate(self, server_round: int, timeout: float | None, history: History) -> dict:
        res = self.evaluate_round(server_round=server_round, timeout=timeout)
        if res is None or res[0] is None:
            return {}
        loss, metrics, _ = res
        history.add_loss_distributed(server_round=server_round, loss=loss)
        history.add_metrics_distributed(server_round=server_round, metrics=metrics)
        return {"federated_loss": loss, "federated_accuracy": metrics.get("accuracy")}
