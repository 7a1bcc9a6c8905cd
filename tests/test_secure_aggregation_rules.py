"""SecAgg+ under central DP: no single client can halt the round of an expected cohort,
and a cohort of one (which SecAgg+ cannot run) still releases that client's clipped
update plus noise, so one client's presence moves a round by at most S."""

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, Context, FitIns, FitRes, RecordDict, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fl_app.config import AppConfig, ConfigError
from fl_app.secagg_params import secagg_shares, tolerated_dropouts
from fl_app.secure_aggregation import SecAggPlusServer

SECURE = {"dp-mode": "central", "dp-clipping": "client", "dp-noise-multiplier": 1.0, "secure-aggregation": True}


def test_flowers_share_and_threshold_formulas():
    # Flower 1.42 SecAggPlusWorkflow.setup_stage: shares round(s·K) made odd below K, K when ≤ 2;
    # threshold max(2, round(t·shares))
    assert secagg_shares(10, 1.0, 0.5) == (10, 5)
    assert secagg_shares(10, 0.4, 0.5) == (5, 2)
    assert secagg_shares(3, 0.5, 0.5) == (3, 2)
    assert secagg_shares(2, 1.0, 0.1) == (2, 2)
    assert [tolerated_dropouts(k, 1.0, 0.5) for k in range(1, 7)] == [0, 0, 1, 2, 3, 3]
    assert tolerated_dropouts(100, 1.0, 1.0) == 0 and tolerated_dropouts(100, 1.0, 0.99) == 1


@pytest.mark.parametrize("clients_per_round, threshold", [(100.0, 1.0), (10.0, 0.95), (2.0, 0.5), (2.9, 0.5)])
def test_a_threshold_at_which_one_dropout_halts_an_expected_cohort_is_refused(
        default_run_config, clients_per_round, threshold):
    config = default_run_config | SECURE | {"dp-clients-per-round": clients_per_round,
                                            "secagg-reconstruction-threshold": threshold}
    with pytest.raises(ConfigError) as refused:
        AppConfig.from_run_config(config)
    message = str(refused.value)
    assert message.startswith(f"Invalid run-config: secagg-reconstruction-threshold = {threshold}")
    assert "survives one dropout" in message and "\n" not in message


def test_thresholds_that_survive_a_dropout_are_accepted(default_run_config):
    for clients_per_round, threshold in [(100.0, 0.99), (10.0, 0.5), (3.0, 0.5)]:
        AppConfig.from_run_config(default_run_config | SECURE | {
            "dp-clients-per-round": clients_per_round, "secagg-reconstruction-threshold": threshold})


class OneClient(ClientProxy):
    """A sampled client that answers a plain fit with its clipped update, weight 1."""

    def __init__(self, update):
        super().__init__("only")
        self.node_id = 7
        self.update = update
        self.calls = 0

    def fit(self, ins, timeout, group_id):
        self.calls += 1
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(self.update), 1, {})

    def get_properties(self, *a, **k): raise AssertionError
    def get_parameters(self, *a, **k): raise AssertionError
    def evaluate(self, *a, **k): raise AssertionError
    def reconnect(self, *a, **k): raise AssertionError


class Recording:
    """The strategy seen by the server: samples `cohort`, records what it aggregates."""

    def __init__(self, cohort):
        self.cohort = cohort
        self.aggregated = None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, FitIns(parameters, {})) for proxy in self.cohort]

    def aggregate_fit(self, server_round, results, failures):
        self.aggregated = (results, failures)
        return None, {}


def secure_server(strategy) -> SecAggPlusServer:
    server = SecAggPlusServer(
        grid=SimpleNamespace(), context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                run_config={}),
        num_shares=1.0, reconstruction_threshold=0.5, clipping_range=1.0,
        client_manager=SimpleClientManager(), strategy=strategy, recorder=None, check_population=None,
        quorum=1, checkpoint_every=1, config={}, resume=None,
        release=SimpleNamespace(server_counts=False, client_figures=False), local_privacy=None,
    )
    server.parameters = ndarrays_to_parameters([np.zeros(3, dtype=np.float32)])
    return server


def test_a_cohort_of_one_sends_its_clipped_update_instead_of_halting():
    update = [np.array([0.6, 0.0, 0.8], dtype=np.float32)]
    client = OneClient(update)
    strategy = Recording([client])
    secure_server(strategy).fit_round(1, timeout=None)
    results, failures = strategy.aggregated
    assert client.calls == 1 and failures == []
    assert [proxy for proxy, _ in results] == [client]
    assert results[0][1].num_examples == 1


def test_an_empty_cohort_aggregates_nothing():
    strategy = Recording([])
    secure_server(strategy).fit_round(1, timeout=None)
    assert strategy.aggregated == ([], [])
