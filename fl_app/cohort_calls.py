"""A round's calls to its cohort: every instruction in one round trip over the grid.

Flower's legacy `fit_clients` and `evaluate_clients` (flwr 1.42, `flwr/server/server.py`)
call each proxy in a pool of `max_workers` threads (by default min(32, CPUs + 4): 6 on a
2-core machine), and a `GridClientProxy` sends its one message with
`grid.send_and_receive`, which polls for the reply every 0.1 s (`InMemoryGrid`). So at
most 6 clients of a round are in flight at once, each one waiting for a delivery cycle
and a pull on top of its work, and each instruction carries its own serialised copy of
the global model.

`fit_cohort` and `evaluate_cohort` send every instruction of the round in one
`send_and_receive` when the proxies are `GridClientProxy`s of one grid and distinct
nodes (instructions sharing one `FitIns`/`EvaluateIns` share one record, so the model is
converted once per round, and a deployment's SuperLink receives it once), and give what
Flower's functions give: `(results, failures)`, where a reply whose status is not OK is
a `(proxy, res)` failure and a reply carrying an error, one that cannot be read, or no
reply within the timeout is an exception. Other proxies (the in-process federation's)
go through Flower's functions, or, with `max_workers` = 1, are called one after the
other in the calling thread (`call_in_this_thread`, same results and failures): torch
trains 2.5 times slower in a pool thread on 2 cores, its thread team there competing
with the main thread's (tanh CNN, batch 10, 2 threads: 4.8 ms a step against 1.9 ms).
`ask_over_grid` is the round trip itself; the key query (`fl_app/client_manager.py`)
uses it too.
"""

from collections.abc import Callable, Sequence
from typing import TypeVar

from flwr.common import Code, EvaluateIns, EvaluateRes, FitIns, FitRes, Message, MessageType, RecordDict
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.server import (
    EvaluateResultsAndFailures,
    FitResultsAndFailures,
    evaluate_clients,
    fit_clients,
)

Ins = TypeVar("Ins", FitIns, EvaluateIns)
Res = TypeVar("Res", FitRes, EvaluateRes)


class NoReplyError(TimeoutError):
    """A node sent no reply within the round's timeout."""


def ask_over_grid(
    calls: Sequence[tuple[GridClientProxy, RecordDict]], message_type: str,
    timeout: float | None, group_id: int | None,
) -> list[RecordDict | Exception]:
    """Each call's reply content, or the exception standing for it, in the order of
    `calls` (distinct nodes of one grid), from one `send_and_receive`; a message's TTL
    is `timeout`, as a `GridClientProxy` sets it."""
    grid = calls[0][0].grid
    messages = [Message(content=content, message_type=message_type, dst_node_id=proxy.node_id,
                        group_id=str(group_id) if group_id else "", ttl=timeout)
                for proxy, content in calls]
    replies = {reply.metadata.src_node_id: reply
               for reply in grid.send_and_receive(messages, timeout=timeout)}
    del messages
    answers: list[RecordDict | Exception] = []
    for proxy, _ in calls:
        reply = replies.pop(proxy.node_id, None)
        if reply is None:
            answers.append(NoReplyError(f"node {proxy.node_id}: no reply within {timeout} s"))
        elif reply.has_error():
            answers.append(ValueError(f"Message contains an Error (reason: {reply.error.reason}). "
                                      "It originated during client-side execution of a message."))
        else:
            answers.append(reply.content)
    return answers


def over_one_grid(proxies: Sequence[ClientProxy]) -> bool:
    """Whether `proxies` are `GridClientProxy`s of distinct nodes on one grid."""
    grid_proxies = [p for p in proxies if isinstance(p, GridClientProxy)]
    if not proxies or len(grid_proxies) < len(proxies):
        return False
    grid = grid_proxies[0].grid
    return all(p.grid is grid for p in grid_proxies) and len({p.node_id for p in grid_proxies}) == len(grid_proxies)


def _call_cohort(
    instructions: list[tuple[ClientProxy, Ins]], message_type: str,
    to_record: Callable[[Ins], RecordDict], from_record: Callable[[RecordDict], Res],
    timeout: float | None, group_id: int,
) -> tuple[list[tuple[ClientProxy, Res]], list[tuple[ClientProxy, Res] | BaseException]]:
    """Send `instructions` over their grid; sort the replies into results and failures."""
    records: dict[int, RecordDict] = {}
    calls: list[tuple[GridClientProxy, RecordDict]] = []
    for proxy, ins in instructions:
        assert isinstance(proxy, GridClientProxy), "callers check over_one_grid first"
        calls.append((proxy, records.setdefault(id(ins), to_record(ins))))
    del records
    results: list[tuple[ClientProxy, Res]] = []
    failures: list[tuple[ClientProxy, Res] | BaseException] = []
    answers = ask_over_grid(calls, message_type, timeout, group_id)
    del calls
    for (proxy, _), answer in zip(instructions, answers, strict=True):
        if isinstance(answer, Exception):
            failures.append(answer)
            continue
        try:
            res = from_record(answer)
        except Exception as err:  # a malformed reply is that client's failure, not the round's
            failures.append(err)
            continue
        (results if res.status.code == Code.OK else failures).append((proxy, res))
    return results, failures


def call_in_this_thread(
    instructions: list[tuple[ClientProxy, Ins]], call: Callable[[ClientProxy, Ins], Res],
) -> tuple[list[tuple[ClientProxy, Res]], list[tuple[ClientProxy, Res] | BaseException]]:
    """Each instruction's `call`, one after the other in this thread, sorted as Flower's
    `fit_clients` sorts them: an exception or a reply whose status is not OK is a failure."""
    results: list[tuple[ClientProxy, Res]] = []
    failures: list[tuple[ClientProxy, Res] | BaseException] = []
    for proxy, ins in instructions:
        try:
            res = call(proxy, ins)
        except Exception as err:  # as Flower's pool: one client's exception is its failure
            failures.append(err)
            continue
        (results if res.status.code == Code.OK else failures).append((proxy, res))
    return results, failures


def fit_cohort(
    instructions: list[tuple[ClientProxy, FitIns]], max_workers: int | None,
    timeout: float | None, group_id: int,
) -> FitResultsAndFailures:
    """The round's fit instructions, over the grid in one round trip when it can
    (`over_one_grid`), else through Flower's `fit_clients`."""
    if not over_one_grid([proxy for proxy, _ in instructions]):
        if max_workers == 1:
            return call_in_this_thread(instructions, lambda proxy, ins: proxy.fit(ins, timeout, group_id))
        return fit_clients(instructions, max_workers=max_workers, timeout=timeout, group_id=group_id)
    return _call_cohort(instructions, MessageType.TRAIN,
                        lambda ins: compat.fitins_to_recorddict(ins, keep_input=True),
                        lambda record: compat.recorddict_to_fitres(record, keep_input=False),
                        timeout, group_id)


def evaluate_cohort(
    instructions: list[tuple[ClientProxy, EvaluateIns]], max_workers: int | None,
    timeout: float | None, group_id: int,
) -> EvaluateResultsAndFailures:
    """The round's evaluate instructions, as `fit_cohort` sends fit instructions."""
    if not over_one_grid([proxy for proxy, _ in instructions]):
        if max_workers == 1:
            return call_in_this_thread(instructions, lambda proxy, ins: proxy.evaluate(ins, timeout, group_id))
        return evaluate_clients(instructions, max_workers=max_workers, timeout=timeout, group_id=group_id)
    return _call_cohort(instructions, MessageType.EVALUATE,
                        lambda ins: compat.evaluateins_to_recorddict(ins, keep_input=True),
                        compat.recorddict_to_evaluateres, timeout, group_id)
