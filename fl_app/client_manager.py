"""A client manager whose sampling is reproducible: clients are ordered by a stable
key each reports once (its partition id, or a site's node id) instead of Flower's node
ids, which are random per simulation run, and sampled with a seeded generator whose
state is checkpointed, instead of the process-global `random`.

Over Flower's grid the keys are asked for in batches of `KEY_BATCH` messages, one
`send_and_receive` each (10,000 nodes: 10 batches instead of 10,000 round trips, 32 at a
time); other proxies (the in-process federation's) are asked one by one in threads."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import GetPropertiesIns, MessageTypeLegacy, RecordDict, log
from flwr.compat.common.recorddict_compat import getpropertiesins_to_recorddict, recorddict_to_getpropertiesres
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.criterion import Criterion

from fl_app.cohort_calls import ask_over_grid
from strategies.privacy.sampling import fixed_size_sample
from strategies.wire import CLIENT_KEY

KEY_TIMEOUT_S = 120.0  # for one proxy's answer, or one batch's answers
KEY_BATCH = 1000  # key queries per grid round trip


class KeyedClientManager(SimpleClientManager):
    """`SimpleClientManager` with `key(cid)`, `ordered(cids)` and seeded sampling."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3]))
        self._keys: dict[str, str] = {}
        self._fetching = threading.Lock()  # one query at a time: a second caller waits for its keys

    def prefetch_keys(self) -> threading.Thread:
        """Ask every connected client for its key in the background (started, returned):
        the query, and the clients' start-up it sets off, overlaps what the server does
        meanwhile (round 0's evaluation)."""
        def fetch() -> None:
            start, cids = time.perf_counter(), list(self.all())
            self._fetch_keys(cids)
            log(INFO, "client keys: %s clients reported theirs in %.1f s", len(cids), time.perf_counter() - start)

        thread = threading.Thread(target=fetch, daemon=True, name="client-keys")
        thread.start()
        return thread

    def _fetch_keys(self, cids: list[str]) -> None:
        """Ask the clients without a known key for theirs (one query at a time): over the
        grid in batches, other proxies in parallel threads. A node that does not answer is
        ordered by its node id."""
        with self._fetching:
            missing = [cid for cid in cids if cid not in self._keys]
            if not missing:
                return
            proxies = self.all()
            over_grid = [proxy for proxy in (proxies[cid] for cid in missing) if isinstance(proxy, GridClientProxy)]
            others = [cid for cid in missing if not isinstance(proxies[cid], GridClientProxy)]
            found: dict[str, str] = {}
            for start in range(0, len(over_grid), KEY_BATCH):
                found.update(_ask_over_grid(over_grid[start:start + KEY_BATCH]))
            if others:
                with ThreadPoolExecutor(max_workers=min(32, len(others))) as pool:
                    found.update((cid, key) for cid, key in pool.map(lambda c: _ask(proxies[c]), others) if key)
            unanswered = [cid for cid in missing if cid not in found]
            if unanswered:
                log(WARNING, "%s node(s) did not report their client key (e.g. node %s); ordered by node id",
                    len(unanswered), unanswered[0])
            self._keys.update(found | {cid: f"node-{cid}" for cid in unanswered})

    def key(self, cid: str) -> str:
        """The client's stable key."""
        if cid not in self._keys:
            self._fetch_keys([cid])
        return self._keys[cid]

    def ordered(self, cids: list[str]) -> list[str]:
        """`cids` sorted by stable key (node id breaks ties)."""
        self._fetch_keys(list(cids))
        return sorted(cids, key=lambda cid: (self._keys[cid], cid))

    def by_key(self) -> dict[str, ClientProxy]:
        """Connected clients by stable key."""
        proxies = self.all()
        self._fetch_keys(list(proxies))
        return {self._keys[cid]: proxy for cid, proxy in proxies.items()}

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]:
        """`num_clients` clients drawn with this manager's generator from the connected
        ones in key order (after waiting for `min_num_clients`)."""
        self.wait_for(min_num_clients if min_num_clients is not None else num_clients)
        proxies = self.all()
        available = [cid for cid in self.ordered(list(proxies))
                     if criterion is None or criterion.select(proxies[cid])]
        if num_clients > len(available):
            return []
        return [proxies[cid] for cid in fixed_size_sample(available, num_clients, self.rng)]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def _ask(proxy: ClientProxy) -> tuple[str, str]:
    """(cid, key) from one proxy's `get_properties`; (cid, "") when it fails."""
    try:
        res = proxy.get_properties(GetPropertiesIns({}), timeout=KEY_TIMEOUT_S, group_id=0)
        return proxy.cid, str(res.properties[CLIENT_KEY])
    except Exception as err:  # a node that cannot build its client still gets an order
        log(WARNING, "node %s: no client key (%s)", proxy.cid, str(err).splitlines()[0][:200])
        return proxy.cid, ""


def _ask_over_grid(proxies: list[GridClientProxy]) -> dict[str, str]:
    """{cid: key} of the nodes behind `proxies` (one grid) that answered, from one
    round trip of the legacy get-properties message each proxy would send."""
    question = getpropertiesins_to_recorddict(GetPropertiesIns({}))
    answers = ask_over_grid([(proxy, question) for proxy in proxies], MessageTypeLegacy.GET_PROPERTIES,
                            KEY_TIMEOUT_S, None)
    keys = {}
    for proxy, answer in zip(proxies, answers, strict=True):
        if isinstance(answer, RecordDict):
            properties = recorddict_to_getpropertiesres(answer).properties
            if CLIENT_KEY in properties:
                keys[proxy.cid] = str(properties[CLIENT_KEY])
    return keys
