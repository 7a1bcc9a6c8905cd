"""The indexed delivery hands out exactly what Flower's in-memory link state does."""

from types import SimpleNamespace

from flwr.common import now
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.federation.noop_federation_manager import NOOP_FEDERATION_ID

from fl_app import message_delivery


def state_with(messages: list[tuple[str, int, int, float]]) -> InMemoryLinkState:
    """A link state holding (id, destination node, run, ttl) messages, none delivered."""
    state = InMemoryLinkState(NoOpFederationManager(), ObjectStoreFactory())
    for run_id in (1, 2):
        state.run_ids[run_id] = SimpleNamespace(run=SimpleNamespace(federation_id=NOOP_FEDERATION_ID))
    for message_id, node, run_id, ttl in messages:
        metadata = SimpleNamespace(message_id=message_id, dst_node_id=node, src_node_id=0, run_id=run_id,
                                   created_at=now().timestamp(), ttl=ttl, delivered_at="")
        state.message_ins_store[message_id] = SimpleNamespace(metadata=metadata)
    return state


def test_indexed_delivery_returns_what_flower_returns(monkeypatch):
    messages = [("a", 5, 1, 60.0), ("b", 6, 1, 60.0), ("c", 5, 1, 60.0), ("d", 5, 2, 60.0),
                ("e", 7, 1, -1.0), ("f", 5, 1, 60.0)]  # e has expired
    calls = [(5, 1, None), (6, 1, None), (7, 1, None), (5, 2, 1), (5, None, 2), (5, None, None), (6, 1, None)]
    flower, indexed = state_with(messages), state_with(messages)
    expected = [[m.metadata.message_id for m in flower.get_message_ins(node, limit, run_id=run)]
                for node, limit, run in calls]
    monkeypatch.setattr(InMemoryLinkState, "get_message_ins", message_delivery._get_message_ins)
    got = [[m.metadata.message_id for m in indexed.get_message_ins(node, limit, run_id=run)]
           for node, limit, run in calls]
    assert got == expected == [["a"], ["b"], [], ["c", "f"], ["d"], [], []]
    assert "e" not in indexed.message_ins_store  # the expired message is deleted, as Flower does
    assert all(m.metadata.delivered_at != "" for m in indexed.message_ins_store.values())
