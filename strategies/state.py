"""A strategy's state across a resumed run: what changes from round to round and is
not the global model itself (server optimizer moments, FedAvgM's momentum, q-FedAvg's
previous weights, DP-FedAvg's accountant and generators).

A strategy with `state_dict()` / `load_state_dict(state)` (ours, or a user's) is saved
through them; for Flower's built-in strategies the attributes below are saved, which
covers every one of them. A `ScreenedStrategy` holds no state of its own: its inner
strategy's is saved.
"""

from typing import Any

from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from strategies.screening import ScreenedStrategy

# Flower's round-to-round attributes: FedOpt (FedAdam, FedYogi, FedAdagrad), FedAvgM
# (which also moves initial_parameters along as its current model) and QFedAvg.
FLOWER_STATE_ATTRIBUTES = ("current_weights", "m_t", "v_t", "momentum_vector", "pre_weights",
                           "initial_parameters")


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy's state, as plain values and numpy arrays."""
    strategy = _holder(strategy)
    own = getattr(strategy, "state_dict", None)
    if callable(own):
        return {"state_dict": own()}
    attributes = {}
    for name in FLOWER_STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if isinstance(value, Parameters):
            value = {"parameters": parameters_to_ndarrays(value)}
        if value is not None:
            attributes[name] = value
    return {"attributes": attributes}


def load_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Restore what `strategy_state` saved."""
    strategy = _holder(strategy)
    if "state_dict" in state:
        strategy.load_state_dict(state["state_dict"])  # type: ignore[attr-defined]
        return
    for name, value in state["attributes"].items():
        if isinstance(value, dict) and "parameters" in value:
            value = ndarrays_to_parameters(value["parameters"])
        setattr(strategy, name, value)


def _holder(strategy: Strategy) -> Strategy:
    """The strategy that holds the state: behind a screen without a `state_dict` of its
    own, the inner one."""
    while isinstance(strategy, ScreenedStrategy) and not callable(getattr(strategy, "state_dict", None)):
        strategy = strategy.inner
    return strategy
