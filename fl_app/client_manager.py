"""A client manager whose sampling is reproducible: clients are ordered by a stable
key each reports once (its partition id, or a site's node id) instead of Flower's node
ids, which are random per simulation run, and sampled with a seeded generator whose
state is checkpointed, instead of the process-global `random`."""

import threading
import time
from logging import INFO, WARNING
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from flwr.common import GetPropertiesIns, log
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from strategies.privacy.sampling import fixed_size_sample
from strategies.wire import CLIENT_KEY

KEY_TIMEOUT_S = 120.0


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
        """Ask the clients without a known key for theirs, in parallel."""
        with self._fetching:
            missing = [cid for cid in cids if cid not in self._keys]
            if not missing:
                return
            proxies = self.all()

            def ask(cid: str) -> tuple[str, str]:
                try:
                    res = proxies[cid].get_properties(GetPropertiesIns({}), timeout=KEY_TIMEOUT_S, group_id=0)
                    return cid, str(res.properties[CLIENT_KEY])
                except Exception as err:  # a node that cannot build its client still gets an order
                    log(WARNING, "node %s did not report its client key (%s); ordered by node id",
                        cid, str(err).splitlines()[0][:200])
                    return cid, f"node-{cid}"

            with ThreadPoolExecutor(max_workers=min(32, len(missing))) as pool:
                self._keys.update(pool.map(ask, missing))

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
