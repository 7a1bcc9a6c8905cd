"""A round's instructions go over the grid in one round trip, and every kind of reply
lands where Flower's per-proxy calls put it: results, (proxy, res) failures, exceptions."""

import threading

import numpy as np
import pytest
from flwr.common import (
    Code,
    Error,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesRes,
    Message,
    MessageType,
    MessageTypeLegacy,
    RecordDict,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.supercore.task_identity import TaskIdentity

from fl_app.client_manager import KeyedClientManager
from fl_app.cohort_calls import NoReplyError, evaluate_cohort, fit_cohort
from strategies.wire import CLIENT_KEY


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """Messages are built as in a ServerApp process, which knows its run and task."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """A grid whose node n answers as `behaviour[n]` says; it records what it is sent."""

    def __init__(self, behaviour: dict[int, str]) -> None:
        self.behaviour = behaviour
        self.sent: list[tuple[list[Message], float | None]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.append((messages, timeout))
        replies = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            kind = self.behaviour[msg.metadata.dst_node_id]
            if kind == "silent":
                continue
            if kind == "error":
                replies.append(Message(Error(code=0, reason="client crashed"), reply_to=msg))
            else:
                replies.append(Message(self.content(kind, msg), reply_to=msg))
        return replies

    @staticmethod
    def content(kind: str, msg: Message) -> RecordDict:
        node = msg.metadata.dst_node_id
        if kind == "garbage":
            return RecordDict()
        if msg.metadata.message_type == MessageTypeLegacy.GET_PROPERTIES:
            res = GetPropertiesRes(Status(Code.OK, ""), {CLIENT_KEY: f"partition-{100 - node:06d}"})
            return compat.getpropertiesres_to_recorddict(res)
        status = Status(Code.OK if kind == "ok" else Code.FIT_NOT_IMPLEMENTED, "")
        if msg.metadata.message_type == MessageType.EVALUATE:
            return compat.evaluateres_to_recorddict(EvaluateRes(status, 0.5, node, {}))
        weights = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
        return compat.fitres_to_recorddict(
            FitRes(status, ndarrays_to_parameters([w + node for w in weights]), node, {}), keep_input=True)


def proxies(grid: FakeGrid) -> list[GridClientProxy]:
    return [GridClientProxy(node, grid, run_id=1) for node in grid.behaviour]  # type: ignore[arg-type]


def test_a_round_goes_out_in_one_round_trip_and_each_reply_lands_where_flower_puts_it():
    grid = FakeGrid({1: "ok", 2: "refused", 3: "error", 4: "silent", 5: "garbage", 6: "ok"})
    cohort = proxies(grid)
    ins = FitIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), {"server-round": 4})
    results, failures = fit_cohort([(p, ins) for p in cohort], max_workers=None, timeout=30.0, group_id=4)

    ((messages, timeout),) = grid.sent  # one send_and_receive for the whole cohort
    assert timeout == 30.0 and len(messages) == 6
    assert {m.metadata.ttl for m in messages} == {30.0} and {m.metadata.group_id for m in messages} == {"4"}
    assert len({id(m.content) for m in messages}) == 1  # one record of the shared FitIns
    assert [(p.node_id, res.num_examples) for p, res in results] == [(1, 1), (6, 6)]
    assert [w.tolist() for w in parameters_to_ndarrays(results[1][1].parameters)] == [[6.0, 6.0, 6.0]]
    refused, crashed, silent, garbage = failures
    assert refused[0] is cohort[1] and refused[1].status.code == Code.FIT_NOT_IMPLEMENTED
    assert isinstance(crashed, ValueError) and "client crashed" in str(crashed)
    assert isinstance(silent, NoReplyError) and "node 4: no reply within 30.0 s" in str(silent)
    assert isinstance(garbage, Exception) and not isinstance(garbage, NoReplyError)


def test_distinct_instructions_keep_their_own_records_and_evaluation_goes_the_same_way():
    grid = FakeGrid({1: "ok", 2: "ok"})
    first, second = proxies(grid)
    fit = [(first, FitIns(ndarrays_to_parameters([np.zeros(2, np.float32)]), {})),
           (second, FitIns(ndarrays_to_parameters([np.ones(2, np.float32)]), {}))]
    results, failures = fit_cohort(fit, max_workers=None, timeout=None, group_id=1)
    assert not failures
    assert [parameters_to_ndarrays(res.parameters)[0].tolist() for _, res in results] == [[1, 1], [3, 3]]

    grid = FakeGrid({7: "ok", 8: "error"})
    instruction = EvaluateIns(ndarrays_to_parameters([np.zeros(2, np.float32)]), {})
    results, failures = evaluate_cohort([(p, instruction) for p in proxies(grid)], None, None, 2)
    assert [(p.node_id, res.loss, res.num_examples) for p, res in results] == [(7, 0.5, 7)]
    assert len(failures) == 1 and "client crashed" in str(failures[0])
    ((messages, _),) = grid.sent
    assert {m.metadata.message_type for m in messages} == {MessageType.EVALUATE}


def test_the_key_query_is_one_round_trip_and_a_silent_node_is_ordered_by_its_id():
    grid = FakeGrid({1: "ok", 2: "ok", 3: "silent"})
    manager = KeyedClientManager(seed=0)
    for proxy in proxies(grid):
        manager.register(proxy)
    assert manager.ordered(["1", "2", "3"]) == ["3", "2", "1"]  # node-3 < partition-000098 < ...099
    assert [manager.key(cid) for cid in ("1", "2", "3")] == ["partition-000099", "partition-000098", "node-3"]
    ((messages, timeout),) = grid.sent
    assert len(messages) == 3 and {m.metadata.message_type for m in messages} == {MessageTypeLegacy.GET_PROPERTIES}


class LocalProxy(ClientProxy):
    """An in-process client that answers as `kind` says and records the thread it ran in."""

    def __init__(self, cid: str, kind: str, threads: list[int]) -> None:
        super().__init__(cid)
        self.kind = kind
        self.threads = threads

    def _answer(self, res_type):
        self.threads.append(threading.get_ident())
        if self.kind == "raise":
            raise RuntimeError(f"client {self.cid} crashed")
        code = Code.OK if self.kind == "ok" else Code.FIT_NOT_IMPLEMENTED
        if res_type is FitRes:
            return FitRes(Status(code, ""), ndarrays_to_parameters([np.ones(2)]), 3, {})
        return EvaluateRes(Status(code, ""), 0.5, 3, {})

    def fit(self, ins, timeout, group_id):
        return self._answer(FitRes)

    def evaluate(self, ins, timeout, group_id):
        return self._answer(EvaluateRes)

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_one_worker_calls_in_process_clients_in_this_thread_and_sorts_replies_as_flower_does(call):
    threads: list[int] = []
    proxies = [LocalProxy(str(i), kind, threads) for i, kind in enumerate(["ok", "raise", "not-ok", "ok"])]
    ins = FitIns(ndarrays_to_parameters([np.zeros(2)]), {}) if call == "fit" else EvaluateIns(
        ndarrays_to_parameters([np.zeros(2)]), {})
    cohort = fit_cohort if call == "fit" else evaluate_cohort
    instructions = [(p, ins) for p in proxies]

    results, failures = cohort(instructions, max_workers=1, timeout=None, group_id=1)
    assert threads == [threading.get_ident()] * 4
    assert [p.cid for p, _ in results] == ["0", "3"]
    assert isinstance(failures[0], RuntimeError) and "client 1 crashed" in str(failures[0])
    assert failures[1][0].cid == "2" and failures[1][1].status.code != Code.OK

    threads.clear()
    pooled_results, pooled_failures = cohort(instructions, max_workers=2, timeout=None, group_id=1)
    assert threading.get_ident() not in threads  # Flower's pool
    assert sorted(p.cid for p, _ in pooled_results) == ["0", "3"]
    assert len(pooled_failures) == 2


def test_clients_training_at_once_give_the_model_of_one_at_a_time(default_run_config, mnist_dir, tmp_path):
    import torch

    from fl_app import in_process
    from fl_app.run_dir import RunDir

    config = default_run_config | {
        "data-dir": mnist_dir, "samples-per-client": 60, "eval-samples": 100, "local-epochs": 1,
        "num-server-rounds": 2, "min-available-clients": 3, "batch-size": 10, "model": "tanh-cnn",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = []
        for workers in (1, 3):
            in_process.run_federation(config, 3, mnist_dir, tmp_path / f"w{workers}", workers=workers)
            models.append(torch.load(RunDir(tmp_path / f"w{workers}").model))
    finally:
        torch.set_num_threads(threads)
    for name, tensor in models[0].items():
        assert torch.equal(tensor, models[1][name]), name
    with pytest.raises(ValueError, match="workers = 2 with model 'cnn': its dropout masks"):
        in_process.run_federation(config | {"model": "cnn"}, 3, mnist_dir, tmp_path / "cnn", workers=2)
