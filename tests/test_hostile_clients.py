"""One hostile client among honest ones, in in-process federations: whatever it sends
(bytes that are no tensors, complex or integer tensors, text metrics, metrics named like
server fields, a rejected update with extreme figures), the round goes on, the global
model keeps its dtype, shapes and finite values, and history.jsonl keeps the server's
own figures."""

import numpy as np
import pytest
import torch
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    GetPropertiesRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy

from fl_app.in_process import run_federation
from fl_app.run_dir import RunDir
from strategies.wire import CLIENT_EPSILON, CLIENT_KEY

OK = Status(Code.OK, "")
SMALL = {"samples-per-client": 200, "num-server-rounds": 1, "local-epochs": 1, "eval-samples": 1000,
         "lr-schedule": "constant", "fraction-evaluate": 1.0, "min-fit-clients": 2}
DP = {"dp-mode": "central", "min-fit-clients": "auto", "dp-clipping": "server", "dp-clipping-norm": 5.0,
      "dp-noise-multiplier": 0.01,
      "dp-clients-per-round": 5, "model": "cnn", "strategy": "fedavg", "learning-rate": 0.02,
      "local-epochs": 1, "batch-size": 32, "momentum": 0.9, "server-momentum": 0.0,
      "server-learning-rate": 1.0, "dp-reproducible-noise": True}


def _global(ins_parameters: Parameters) -> list[np.ndarray]:
    return parameters_to_ndarrays(ins_parameters)


ATTACKS = {
    "bytes that are no tensors": lambda w: (Parameters([b"\x93NUMPY garbage"], "numpy.ndarray"), 200, {}),
    "complex64 tensors": lambda w: (ndarrays_to_parameters([a.astype(np.complex64) for a in w]), 200, {}),
    "int32 tensors": lambda w: (ndarrays_to_parameters([np.zeros(a.shape, np.int32) for a in w]), 200, {}),
    "text metric": lambda w: (ndarrays_to_parameters(w), 200, {CLIENT_EPSILON: "x", "train_loss": "x"}),
    "metrics named like server fields": lambda w: (
        ndarrays_to_parameters(w), 200, {"round": 1e9, "num_fit_clients": 7777, "num_fit_failures": 5555}),
    "float num_examples": lambda w: (ndarrays_to_parameters(w), 2.5, {}),
    "an update of norm 1e30": lambda w: (
        ndarrays_to_parameters([a + np.float32(1e30 / np.sqrt(sum(b.size for b in w))) for a in w]), 200, {}),
    "a zero model": lambda w: (ndarrays_to_parameters([np.zeros_like(a) for a in w]), 200, {}),
    "10**12 examples for the unchanged model": lambda w: (ndarrays_to_parameters(w), 10**12, {}),
}
ACCEPTED = ("metrics named like server fields", "10**12 examples for the unchanged model")


class HostileProxy(ClientProxy):
    """A client that sorts first (its key) and answers fit with `attack(global model)`."""

    def __init__(self, attack, evaluate_loss=0.1):
        super().__init__(cid="hostile")
        self.attack = attack
        self.evaluate_loss = evaluate_loss

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(OK, {CLIENT_KEY: "!hostile"})

    def fit(self, ins, timeout, group_id):
        parameters, num_examples, metrics = self.attack(_global(ins.parameters))
        return FitRes(OK, parameters, num_examples, metrics)

    def evaluate(self, ins, timeout, group_id):
        return EvaluateRes(OK, self.evaluate_loss, 10, {"accuracy": "high", "round": 1e9})

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


def run_with(tmp_path, mnist_dir, default_run_config, overrides, proxy):
    config = default_run_config | SMALL | {"data-dir": mnist_dir} | overrides
    rows = run_federation(config, 4, mnist_dir, tmp_path / "run", extra_clients=[proxy])
    model = torch.load(RunDir(tmp_path / "run").model)
    summary = RunDir(tmp_path / "run").read_summary()
    return rows, model, summary


def numbers(value):
    """Every number in a JSON-like value (a substring test would match digits of timings)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for item in value for n in numbers(item)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def assert_model_intact(model):
    for name, tensor in model.items():
        assert tensor.dtype == torch.float32, (name, tensor.dtype)
        assert torch.isfinite(tensor).all(), name


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian", "central-dp"])
def test_a_hostile_reply_is_left_out_and_the_run_goes_on(tmp_path, mnist_dir, default_run_config, attack, strategy):
    overrides = DP if strategy == "central-dp" else {"strategy": strategy}
    if attack.startswith("10**12"):  # with 4 honest clients, 10 x the median would still be 71%
        overrides = overrides | {"max-examples-ratio": 1.0}
    rows, model, summary = run_with(tmp_path, mnist_dir, default_run_config, overrides, HostileProxy(ATTACKS[attack]))
    assert [r["round"] for r in rows] == [0, 1]
    assert_model_intact(model)
    if strategy == "central-dp" and attack == "an update of norm 1e30":
        return  # clipped to S, not left out: it moves the model by at most S/m (here S/5)
    assert rows[1]["centralized_accuracy"] > rows[0]["centralized_accuracy"] + 0.15, rows
    planted = {7777, 5555, 1e9}  # the hostile metrics' values: none may reach the outputs
    assert not planted & set(numbers(rows)) and not planted & set(numbers(summary)), (rows, summary)
    if strategy != "central-dp":  # the counts are withheld under DP
        assert rows[1]["num_fit_clients"] == 5 and rows[1]["num_fit_failures"] == 0
        assert rows[1]["num_rejected"] == (0 if attack in ACCEPTED else 1)


def test_under_central_dp_figures_of_a_rejected_reply_are_not_aggregated(tmp_path, mnist_dir, default_run_config):
    def rejected_with_extreme_figures(w):
        return ndarrays_to_parameters([np.zeros(a.shape, np.int32) for a in w]), 200, {"train_loss": 1e6}

    overrides = DP | {"dp-release-unprotected-metrics": True}
    rows, model, _ = run_with(tmp_path, mnist_dir, default_run_config, overrides,
                              HostileProxy(rejected_with_extreme_figures))
    assert rows[1]["num_rejected"] == 1
    assert rows[1]["train_loss"] < 10, rows[1]
    assert_model_intact(model)


def test_fedavg_weighs_a_claimed_count_at_most_max_examples_ratio_times_the_median(strategy_args):
    from flwr.common import FitRes

    from strategies.registry import build

    weights = [np.zeros((2, 2), np.float32)]
    strategy = build("fedavg", strategy_args({"initial_parameters": ndarrays_to_parameters(weights)},
                                             max_examples_ratio=10.0, max_update_norm_ratio=10.0))
    results = [(type("P", (), {"cid": str(k)})(),
                FitRes(OK, ndarrays_to_parameters([np.full((2, 2), v, np.float32)]), n, {}))
               for k, (v, n) in enumerate([(1.0, 100), (1.0, 300), (1.0, 200), (-1.0, 10**12)])]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    # the claim counts as 10 x the median (200 and 300 -> 250): 2500 of 3100
    expected = (600 - 2500) / 3100
    assert np.allclose(parameters_to_ndarrays(parameters)[0], expected)
    assert metrics["num_rejected"] == 0


def test_a_text_loss_in_federated_evaluation_is_left_out(tmp_path, mnist_dir, default_run_config):
    honest = ATTACKS["metrics named like server fields"]
    rows, _, _ = run_with(tmp_path, mnist_dir, default_run_config, {"strategy": "fedavg"},
                          HostileProxy(honest, evaluate_loss="low"))
    assert rows[1]["federated_loss"] is not None and rows[1]["federated_loss"] < 5
    assert isinstance(rows[1]["federated_accuracy"], float)
