"""Flower's legacy `Server` with a round loop that records every round, checkpoints
and resumes."""

import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.common import FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import FLOWER_LOGGER
from flwr.server import History, Server
from flwr.server.client_proxy import ClientProxy
from flwr.server.server import EvaluateResultsAndFailures, FitResultsAndFailures

from fl_app.checkpoint import Checkpoint, global_rng_state, save_checkpoint, set_global_rng_state
from fl_app.cohort_calls import evaluate_cohort, fit_cohort
from fl_app.outputs import RunRecorder
from strategies.client_reports import EVALUATE_METRICS, FIT_METRICS, is_finite_number
from strategies.privacy.release import ReleasePolicy, install_log_filter
from strategies.privacy.statement import LocalPrivacyLedger
from strategies.state import load_strategy_state, strategy_state
from strategies.wire import ACCURACY


def failure_reason(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    """What went wrong with one client's fit, in one line."""
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}".replace("\n", " ")
    proxy, res = failure
    return f"node {proxy.cid}: {res.status.code.name} {res.status.message}"


class RecordingServer(Server):
    """Runs round 0 (centralized evaluation of the initial model) and rounds 1..N of
    fit -> centralized evaluation -> checkpoint -> federated evaluation, handing each
    round's released figures to a `RunRecorder` and the final model to it at the end.
    `fl_app.assembly.build_server` builds it from the run's config.

    Strategies may add two optional methods: `stop_reason(server_round, client_manager)
    -> str | None` (e.g. a spent privacy budget) ends training cleanly before that round,
    and `summary() -> dict` adds to summary.json (DP-FedAvg: its `privacy` object). A
    round whose cohort is empty still asks the strategy to aggregate (DP-FedAvg releases
    noise then).

    A round's model leaves the server (federated evaluation, the next round's clients,
    history.jsonl, the outputs) only after its checkpoint is written, when one is due:
    a run resumed from that checkpoint finishes the round's release (federated
    evaluation, its history row), unless its row was recorded already (under DP, where
    history.jsonl is never cut), and goes on with the next round, so it never computes
    a released round again. `release` decides which figures leave (see `release`);
    `local_privacy` collects the clients' local-DP reports for the summary.

    Training waits for `quorum` connected nodes, then `check_population(nodes)` may refuse
    the federation. Results are aggregated in the client manager's key order (when it has
    one), not in arrival order, so that float sums do not depend on scheduling.

    The Flower internals it relies on (flwr 1.42, `flwr/server/server.py`): `Server`'s
    constructor (`client_manager`, `strategy`), its attributes `parameters`, `strategy`
    and `max_workers` (`set_max_workers`) and `client_manager()`; `run_fl` (what
    `start_grid` runs) calling `fit(num_rounds, timeout)`, which this class replaces,
    then the inherited `disconnect_all_clients(timeout)`; the types
    `FitResultsAndFailures` and `EvaluateResultsAndFailures`. A round's instructions go
    out through `fl_app.cohort_calls` (over the grid in one round trip). `fit_round`
    and `evaluate_round` keep the names and return values of `Server`'s, which `fit`
    here calls and `SecAggPlusServer` overrides.
    """

    def __init__(
        self,
        *,
        recorder: RunRecorder,
        check_population: Callable[[int], None],
        quorum: int,
        checkpoint_every: int,
        config: dict[str, Any],
        resume: Checkpoint | None,
        release: ReleasePolicy,
        local_privacy: LocalPrivacyLedger | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.check_population = check_population
        self.quorum = quorum
        self.checkpoint_every = checkpoint_every
        self.config = config
        self.resume = resume
        self.release = release
        self.local_privacy = local_privacy
        self.num_nodes = 0

    def fit(self, num_rounds: int, timeout: float | None) -> tuple[History, float]:
        """Run the federation for up to `num_rounds` rounds (when resuming: finish the
        checkpoint's round, then go on), Flower's log lines passing the release policy's filter."""
        log_filter = install_log_filter(self.release)
        try:
            return self._fit_rounds(num_rounds, timeout)
        finally:
            if log_filter is not None:
                FLOWER_LOGGER.removeFilter(log_filter)

    def _fit_rounds(self, num_rounds: int, timeout: float | None) -> tuple[History, float]:
        """`fit`'s rounds."""
        history = History()
        start = time.perf_counter()
        if self.client_manager().num_available() < self.quorum:
            log(INFO, "Waiting for %s nodes to connect (min-available-clients)", self.quorum)
            # Flower's ClientManager.wait_for lacks the default timeout of SimpleClientManager's
            self.client_manager().wait_for(self.quorum)  # type: ignore[call-arg]
        self.num_nodes = self.client_manager().num_available()
        self.check_population(self.num_nodes)
        if prefetch_keys := getattr(self.client_manager(), "prefetch_keys", None):
            prefetch_keys()  # clients start up (and report their keys) while round 0 evaluates
        if not self.release.client_figures:
            log(INFO, "DP: client-reported figures, federated evaluation and exact clipping "
                "statistics are withheld (dp-release-unprotected-metrics = false)")
        first_round = 0
        if self.resume is not None:
            first_round = self._restore(self.resume)
            if self.recorder.rows and self.recorder.rows[-1]["round"] == self.resume.round:
                log(INFO, "Round %s was released before the run stopped: going on with round %s",
                    self.resume.round, first_round)
            else:
                self._release_round(dict(self.resume.row), time.perf_counter(), timeout, history)
        else:
            self.parameters = self._initial_parameters()
        stopped = None
        for server_round in range(first_round, num_rounds + 1):
            stopped = self._stop_reason(server_round) if server_round > 0 else None
            if stopped:
                log(WARNING, "Stopping before round %s: %s", server_round, stopped)
                break
            round_start = time.perf_counter()
            row: dict[str, Any] = {"round": server_round, "num_fit_clients": 0}
            if server_round > 0:
                row.update(self._fit(server_round, timeout, history))
            evaluated = self.strategy.evaluate(server_round, parameters=self.parameters)
            assert evaluated is not None, "every strategy of the app evaluates centrally"
            loss, metrics = evaluated
            history.add_loss_centralized(server_round=server_round, loss=loss)
            history.add_metrics_centralized(server_round=server_round, metrics=metrics)
            row.update(centralized_loss=loss, centralized_accuracy=metrics["accuracy"])
            row.update(federated_loss=None, federated_accuracy=None)
            row = self.release.row(row)
            if server_round > 0 and self.checkpoint_every and (
                server_round % self.checkpoint_every == 0 or server_round == num_rounds
            ):
                self._save_checkpoint(server_round, row)
            self._release_round(row, round_start, timeout, history)
        extra = dict(getattr(self.strategy, "summary", dict)())
        if self.local_privacy is not None:
            extra["privacy"] = self.local_privacy.privacy(self.num_nodes)
        extra.setdefault("privacy", None)
        if extra["privacy"] is not None:
            extra["privacy"]["unprotected_metrics_released"] = self.release.unprotected
        extra["num_nodes"] = self.num_nodes
        if stopped:
            extra["stopped_early"] = stopped
        self.recorder.finish(parameters_to_ndarrays(self.parameters), extra)
        return history, time.perf_counter() - start

    def _release_round(self, row: dict[str, Any], round_start: float, timeout: float | None,
                       history: History) -> None:
        """Federated evaluation of the round's model (when released) and its history row."""
        server_round = row["round"]
        if server_round > 0 and self.release.client_figures:
            row.update(self._evaluate(server_round, timeout, history))
        row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - round_start
        self.recorder.record(row, parameters_to_ndarrays(self.parameters))

    def _initial_parameters(self) -> Parameters:
        """The strategy's initial model (every strategy of the app has one)."""
        parameters = self.strategy.initialize_parameters(client_manager=self.client_manager())
        if parameters is None:
            raise ValueError(f"strategy {type(self.strategy).__name__} gave no initial parameters")
        return parameters

    def _save_checkpoint(self, server_round: int, row: dict[str, Any]) -> None:
        """Write the round's checkpoint: model, history, strategy, sampler and RNG states."""
        manager_state: dict[str, Any] = getattr(self.client_manager(), "state_dict", dict)()
        save_checkpoint(self.recorder.run_dir.path, Checkpoint(
            round=server_round,
            weights=parameters_to_ndarrays(self.parameters),
            history=self.recorder.rows,
            row=row,
            strategy=strategy_state(self.strategy),
            sampler=manager_state,
            rng=global_rng_state(),
            config=self.config,
            wall_seconds=self.recorder.wall_seconds,
            num_nodes=self.num_nodes,
        ))

    def _restore(self, checkpoint: Checkpoint) -> int:
        """Load `checkpoint`; return the first round to run after finishing its round."""
        self.parameters = ndarrays_to_parameters(checkpoint.weights)
        load_strategy_state(self.strategy, checkpoint.strategy)
        load = getattr(self.client_manager(), "load_state_dict", None)
        if load is not None:
            load(checkpoint.sampler)
        set_global_rng_state(checkpoint.rng)
        log(INFO, "Resuming after round %s of %s", checkpoint.round, self.recorder.run_dir.path)
        if checkpoint.num_nodes != self.num_nodes:
            log(WARNING, "The run started with %s nodes, %s are connected now: clients and data "
                "differ from the interrupted run", checkpoint.num_nodes, self.num_nodes)
        return checkpoint.round + 1

    def _record_clients(self, server_round: int, phase: str, results: list) -> None:
        """Each reply's example count and finite numeric figures in clients.jsonl, when
        the release policy lets client figures out (never by default under DP)."""
        if not self.release.client_figures:
            return
        key = getattr(self.client_manager(), "key", lambda cid: cid)
        known = FIT_METRICS if phase == "train" else ("loss", *EVALUATE_METRICS)
        rows = []
        for proxy, res in results:
            figures = {"loss": getattr(res, "loss", None)} | dict(res.metrics)
            rows.append({"round": server_round, "phase": phase, "client": key(proxy.cid),
                         "num_examples": res.num_examples if isinstance(res.num_examples, int) else None}
                        | {name: figures[name] for name in known if is_finite_number(figures.get(name))})
        self.recorder.record_clients(rows)

    def _in_key_order(self, results: list) -> list:
        """`results` sorted by the client manager's stable client keys."""
        key = getattr(self.client_manager(), "key", None)
        return sorted(results, key=lambda r: (key(r[0].cid), r[0].cid)) if key else results

    def _stop_reason(self, server_round: int) -> str | None:
        """The strategy's reason to stop before `server_round`, if it has one."""
        stop_reason = getattr(self.strategy, "stop_reason", None)
        return stop_reason(server_round, self.client_manager()) if stop_reason else None

    def fit_round(
        self, server_round: int, timeout: float | None
    ) -> tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures]:
        """Flower's fit round, except that an empty cohort still reaches `aggregate_fit`."""
        instructions = self.strategy.configure_fit(
            server_round=server_round, parameters=self.parameters,
            client_manager=self.client_manager(),
        )
        log(INFO, "configure_fit: strategy sampled %s clients (out of %s)",
            len(instructions), self.client_manager().num_available())
        return self.fit_cohort(server_round, instructions, timeout)

    def fit_cohort(
        self, server_round: int, instructions: list, timeout: float | None
    ) -> tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures]:
        """Send a sampled cohort its fit instructions and aggregate the replies."""
        results, failures = fit_cohort(
            instructions, max_workers=self.max_workers, timeout=timeout, group_id=server_round,
        ) if instructions else ([], [])
        if self.release.server_counts:
            log(INFO, "aggregate_fit: received %s results and %s failures", len(results), len(failures))
            for failure in failures:
                log(WARNING, "round %s: a client failed: %s", server_round, failure_reason(failure))
        results = self._in_key_order(results)
        self._record_clients(server_round, "train", results)
        if self.local_privacy is not None:
            key = getattr(self.client_manager(), "key", lambda cid: cid)
            for proxy, res in results:
                self.local_privacy.update(key(proxy.cid), res.metrics)
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        return parameters, metrics, (results, failures)

    def evaluate_round(
        self, server_round: int, timeout: float | None
    ) -> tuple[float | None, dict[str, Scalar], EvaluateResultsAndFailures] | None:
        """Flower's federated evaluation round, aggregating in key order."""
        instructions = self.strategy.configure_evaluate(
            server_round=server_round, parameters=self.parameters,
            client_manager=self.client_manager(),
        )
        if not instructions:
            return None
        results, failures = evaluate_cohort(
            instructions, max_workers=self.max_workers, timeout=timeout, group_id=server_round,
        )
        results = self._in_key_order(results)
        self._record_clients(server_round, "evaluate", results)
        loss, metrics = self.strategy.aggregate_evaluate(server_round, results, failures)
        return loss, metrics, (results, failures)

    def _fit(self, server_round: int, timeout: float | None, history: History) -> dict[str, Any]:
        """One fit round: the new global model (when aggregated) and the row's fit figures."""
        parameters, metrics, (results, failures) = self.fit_round(server_round, timeout)
        if parameters is not None:
            self.parameters = parameters
        history.add_metrics_distributed_fit(server_round=server_round, metrics=self.release.metrics(metrics))
        return dict(metrics) | {"num_fit_clients": len(results), "num_fit_failures": len(failures)}

    def _evaluate(self, server_round: int, timeout: float | None, history: History) -> dict[str, Any]:
        """One federated evaluation round: the row's federated figures (none without replies)."""
        res = self.evaluate_round(server_round=server_round, timeout=timeout)
        if res is None:
            return {}
        loss, metrics, _ = res
        if loss is None:
            return {}
        history.add_loss_distributed(server_round=server_round, loss=loss)
        history.add_metrics_distributed(server_round=server_round, metrics=metrics)
        return {"federated_loss": loss, "federated_accuracy": metrics.get(ACCURACY)}
