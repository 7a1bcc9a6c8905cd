from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from strategies import FedAvg
from strategies.tensors import read_arrays
from strategies.wire import CLIENT_EPSILON

OK = Status(code=Code.OK, message="")
SHAPES = [(2, 2), (3,)]


def arrays(value: float) -> list[np.ndarray]:
    return [np.full(s, value, dtype=np.float32) for s in SHAPES]


def fit_result(cid: str, weights: list[np.ndarray], n: int, **metrics):
    return SimpleNamespace(cid=cid), FitRes(OK, ndarrays_to_parameters(weights), n, metrics)


@pytest.fixture
def rules(default_run_config) -> dict:
    """The round rules' run-config defaults (pyproject), as FedAvg's keyword arguments."""
    return {key.replace("-", "_"): default_run_config[key]
            for key in ("max-failure-fraction", "max-examples-ratio", "max-update-norm-ratio")}


@pytest.fixture
def strategy(rules) -> FedAvg:
    return FedAvg(initial_parameters=ndarrays_to_parameters(arrays(0.0)), min_fit_clients=1, **rules)


def test_aggregate_fit_is_example_weighted(strategy):
    results = [fit_result("a", arrays(1.0), 100, train_loss=1.0), fit_result("b", arrays(4.0), 300, train_loss=3.0)]
    params, metrics = strategy.aggregate_fit(1, results, [])
    for layer in parameters_to_ndarrays(params):
        np.testing.assert_allclose(layer, 0.25 * 1.0 + 0.75 * 4.0)
    assert metrics["train_loss"] == pytest.approx(2.5)
    assert metrics["num_rejected"] == 0


def test_malformed_results_are_left_out_and_logged(strategy, caplog):
    nan = arrays(1.0)
    nan[1][0] = np.nan
    results = [
        fit_result("good", arrays(2.0), 50),
        fit_result("nan", nan, 1000),
        fit_result("inf", arrays(np.inf), 1000),
        fit_result("shape", [np.zeros((4,)), np.zeros(3)], 1000),
        fit_result("count", arrays(3.0)[:1], 1000),
        fit_result("empty", arrays(9.0), 0),
    ]
    params, metrics = strategy.aggregate_fit(3, results, [])
    for layer in parameters_to_ndarrays(params):
        np.testing.assert_array_equal(layer, 2.0)
    assert metrics["num_rejected"] == 5
    for cid in ("nan", "inf", "shape", "count", "empty"):
        assert f"left out client {cid}" in caplog.text


def test_round_with_only_bad_results_keeps_the_global_model(strategy):
    params, metrics = strategy.aggregate_fit(1, [fit_result("x", arrays(np.nan), 10)], [])
    assert params is None
    assert metrics == {"num_rejected": 1}


def test_round_is_skipped_when_failures_exceed_the_tolerated_fraction(caplog, rules):
    tolerant = FedAvg(initial_parameters=ndarrays_to_parameters(arrays(0.0)), **(rules | {"max_failure_fraction": 0.5}))
    ok = [fit_result(c, arrays(1.0), 10) for c in "ab"]
    params, _ = tolerant.aggregate_fit(1, ok, [RuntimeError("boom")] * 2)  # 2 of 4: tolerated
    assert params is not None
    params, _ = tolerant.aggregate_fit(2, ok, [RuntimeError("boom")] * 3)  # 3 of 5: too many
    assert params is None and "round 2 skipped: 3 of 5 clients failed" in caplog.text


def test_round_with_fewer_usable_results_than_min_fit_clients_is_skipped(caplog, rules):
    strategy = FedAvg(initial_parameters=ndarrays_to_parameters(arrays(0.0)), min_fit_clients=2, **rules)
    params, metrics = strategy.aggregate_fit(1, [fit_result("a", arrays(1.0), 10),
                                                 fit_result("b", arrays(np.nan), 10)], [])
    assert params is None and metrics == {"num_rejected": 1}
    assert "round 1 skipped: 1 usable results, fewer than min-fit-clients = 2" in caplog.text


def test_aggregate_evaluate_drops_non_finite_losses(strategy):
    def res(cid, loss, n, acc):
        return SimpleNamespace(cid=cid), EvaluateRes(OK, loss, n, {"accuracy": acc})

    loss, metrics = strategy.aggregate_evaluate(
        1, [res("a", 0.5, 10, 0.8), res("b", float("nan"), 90, 0.0), res("c", 1.5, 30, 0.4)], []
    )
    assert loss == pytest.approx((10 * 0.5 + 30 * 1.5) / 40)
    assert metrics["accuracy"] == pytest.approx((10 * 0.8 + 30 * 0.4) / 40)


def test_client_reported_epsilons_are_summarised_as_max_and_mean(strategy):
    results = [fit_result("a", arrays(1.0), 10, **{CLIENT_EPSILON: 1.0}),
               fit_result("b", arrays(1.0), 30, **{CLIENT_EPSILON: 3.0})]
    _, metrics = strategy.aggregate_fit(2, results, [])
    assert (metrics["client_epsilon_max"], metrics["client_epsilon_mean"]) == (3.0, 2.0)
    assert "epsilon" not in metrics and CLIENT_EPSILON not in metrics


def test_a_round_is_screened_and_averaged_holding_one_update_as_arrays_at_a_time(strategy, monkeypatch):
    """The server holds the round's replies serialised; as arrays it holds the update it is
    reading (and the one before, until the next replaces it), not the round's."""
    import weakref

    import strategies.fedavg
    import strategies.screening

    alive: list[weakref.ref] = []
    most_alive = []

    def tracked(parameters):
        most_alive.append(sum(ref() is not None for ref in alive))
        update = read_arrays(parameters)
        alive.append(weakref.ref(update[0]))  # an update lives as long as its first tensor
        return update

    monkeypatch.setattr(strategies.screening, "read_arrays", tracked)
    monkeypatch.setattr(strategies.fedavg, "read_arrays", tracked)
    results = [fit_result(str(k), arrays(float(k)), 10) for k in range(20)]
    params, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics["num_rejected"] == 0 and len(most_alive) == 40  # each update read twice
    assert max(most_alive) <= 1
    for layer in parameters_to_ndarrays(params):
        np.testing.assert_allclose(layer, 9.5)


def test_a_reply_carrying_an_npz_archive_is_left_out_and_the_round_goes_on(strategy, caplog):
    """np.load opens a .npz archive as an NpzFile, whose missing shape used to stop the
    server's aggregation: one hostile client could end the run."""
    import io

    archive = io.BytesIO()
    np.savez(archive, a=np.zeros(3, np.float32))
    hostile = ndarrays_to_parameters(arrays(5.0))
    hostile.tensors[1] = archive.getvalue()
    results = [fit_result("good", arrays(2.0), 50), (SimpleNamespace(cid="npz"), FitRes(OK, hostile, 50, {}))]
    params, metrics = strategy.aggregate_fit(1, results, [])
    for layer in parameters_to_ndarrays(params):
        np.testing.assert_array_equal(layer, 2.0)
    assert metrics["num_rejected"] == 1
    assert "left out client npz: unreadable tensors (ValueError)" in caplog.text
