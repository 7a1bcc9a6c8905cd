"""Flower's legacy `Server` with a round loop that records every round."""

import time
from collections.abc import Callable

from flwr.common import Scalar, parameters_to_ndarrays
from flwr.server import History, Server

from fl_app.outputs import RunRecorder


class RecordingServer(Server):
    """Runs round 0 (centralized evaluation of the initial model) and rounds 1..N of
    fit -> centralized evaluation -> federated evaluation, handing each round's
    figures to a `RunRecorder` and the final model to it at the end."""

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
        """Run the federation for `num_rounds` rounds."""
        history = History()
        start = time.perf_counter()
        self.check_population(self.client_manager().num_available())
        self.parameters = self._get_initial_parameters(server_round=0, timeout=timeout)
        for server_round in range(num_rounds + 1):
            round_start = time.perf_counter()
            row: dict[str, Scalar | None] = {"round": server_round, "num_fit_clients": 0}
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
        self.recorder.finish(parameters_to_ndarrays(self.parameters))
        return history, time.perf_counter() - start

    def _fit(self, server_round: int, timeout: float | None, history: History) -> dict:
        res = self.fit_round(server_round=server_round, timeout=timeout)
        if res is None:
            return {}
        parameters, metrics, (results, failures) = res
        if parameters is not None:
            self.parameters = parameters
        history.add_metrics_distributed_fit(server_round=server_round, metrics=metrics)
        return {
            "num_fit_clients": len(results),
            "num_fit_failures": len(failures),
            "num_rejected": metrics.get("num_rejected", 0),
            "train_loss": metrics.get("train_loss"),
            "train_accuracy": metrics.get("train_accuracy"),
        }

    def _evaluate(self, server_round: int, timeout: float | None, history: History) -> dict:
        res = self.evaluate_round(server_round=server_round, timeout=timeout)
        if res is None or res[0] is None:
            return {}
        loss, metrics, _ = res
        history.add_loss_distributed(server_round=server_round, loss=loss)
        history.add_metrics_distributed(server_round=server_round, metrics=metrics)
        return {"federated_loss": loss, "federated_accuracy": metrics.get("accuracy")}
