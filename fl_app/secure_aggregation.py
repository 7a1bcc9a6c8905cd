"""Fit rounds through Flower's SecAgg+ protocol, so the server learns only the sum of
the clients' (clipped) updates, never one of them.

Each round runs `SecAggPlusWorkflow` (Bell et al. 2020) over the cohort the strategy
samples; the clients' `secaggplus_mod` masks their unit-weighted updates, and the
strategy's `aggregate_fit` receives the unmasked mean of the K updates. A round the
protocol cannot carry out (fewer than 2 sampled clients, too many dropouts) still
reaches `aggregate_fit`, with no results: DP-FedAvg then releases noise only, so every
round costs exactly one accountant step. A cohort of one client (SecAgg+ needs two) sends
its clipped update as it is: the sum of one update is that update, so the server learns
nothing more than SecAgg+ would tell it, and the client's presence moves the release by
at most S, as in any other round.
"""

import time
from logging import WARNING
from typing import Any

from flwr.common import ConfigRecord, Context, FitRes, Parameters, Scalar, log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.server import FitResultsAndFailures
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp.grid import Grid

from fl_app.server import RecordingServer


class _AggregateFitRecorder:
    """The strategy as the workflow sees it: keeps what `aggregate_fit` was given and
    what it returned."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.outcome: tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures] | None = None
        self.instructions: list = []

    def configure_fit(self, *args, **kwargs):
        self.instructions = self.strategy.configure_fit(*args, **kwargs)
        return self.instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        self.outcome = (parameters, metrics, (results, failures))
        return parameters, metrics


class SecAggPlusServer(RecordingServer):
    """`RecordingServer` whose fit rounds are SecAgg+ rounds.

    `num_shares` and `reconstruction_threshold` are fractions of the sampled clients
    (see `SecAggPlusWorkflow`); `clipping_range` bounds every coordinate of an update
    (the DP clipping norm S bounds them all), which SecAgg+ quantizes to
    `quantization_range` levels and sums modulo `modulus_range`. Distributed DP sends
    integers r − M/2 with r in [0, M): with clipping range M/2 and M levels, Flower's
    quantizer maps each to r exactly (its stochastic rounding leaves an integer as it
    is), and the unmasked mean of n messages is (Σr mod 2^32 − n·M/2)/n, from which the
    strategy recovers Σr; `timeout` bounds each protocol stage.
    """

    def __init__(
        self,
        *,
        grid: Grid,
        context: Context,
        num_shares: float,
        reconstruction_threshold: float,
        clipping_range: float,
        quantization_range: int = 1 << 22,
        modulus_range: int = 1 << 32,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.grid = grid
        self.context = context
        self.workflow = SecAggPlusWorkflow(
            num_shares=num_shares,
            reconstruction_threshold=reconstruction_threshold,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus_range,
            max_weight=1.0,  # every client sends weight 1: the mean of K unit weights
            timeout=timeout,
        )

    def fit_round(
        self, server_round: int, timeout: float | None
    ) -> tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures]:
        recorder = _AggregateFitRecorder(self.strategy)
        legacy = LegacyContext(self.context, ServerConfig(), recorder, self.client_manager())  # type: ignore[arg-type]
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            self.parameters, keep_input=True
        )
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: server_round, Key.START_TIME: time.perf_counter()}
        )
        self.workflow(self.grid, legacy)
        if recorder.outcome is not None:
            return recorder.outcome
        if len(recorder.instructions) == 1:
            # SecAgg+ needs 2 clients; the sum of a cohort of one is its update, so the
            # server learns the same from the client's clipped update sent as it is.
            return self.fit_cohort(server_round, recorder.instructions, timeout)
        log(WARNING, "round %s: SecAgg+ could not run with this cohort; the strategy "
            "aggregates no client update", server_round)
        parameters, metrics = self.strategy.aggregate_fit(server_round, [], [])
        return parameters, metrics, ([], [])
