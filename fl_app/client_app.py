"""ClientApp: Flower's entry point to the client of `fl_app/client.py`.

This module imports Flower alone, the client (torch, data) at the first message: the
simulation process loads the ClientApp only to check it before it starts Ray, which
would otherwise wait seconds for torch's import; client processes import it anyway.
"""

from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS


def client_fn(context: Context) -> Client:
    """The client for this node (`fl_app.client.client_fn`)."""
    from fl_app.client import client_fn as node_client

    return node_client(context)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client protocol for the messages of a SecAgg+ round; other
    messages go straight to the client."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[secure_aggregation_mod])
