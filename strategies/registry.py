"""Strategies by name: Flower's own classes behind the app's screen, and users' classes
loaded from `package.module:ClassName`.

Every strategy receives the same keyword arguments (`StrategyArgs.common`): fractions
and minimum client counts, `evaluate_fn`, `on_fit_config_fn`, `on_evaluate_config_fn`,
`initial_parameters`, `fit_metrics_aggregation_fn`, `evaluate_metrics_aggregation_fn`,
plus its own hyperparameters.
"""

import importlib
from dataclasses import dataclass
from typing import Any

from flwr.server import strategy as flower
from flwr.server.strategy import Strategy

from strategies.fedavg import FedAvg
from strategies.screening import ScreenedAggregation

# Linear in the client updates: central DP's noised mean can feed them (post-processing).
LINEAR = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
NON_LINEAR = ("fedmedian", "fedtrimmedavg", "krum", "bulyan", "qfedavg")
BUILT_IN = LINEAR + NON_LINEAR
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class StrategyArgs:
    """What a strategy is built from: the arguments every strategy takes and the
    hyperparameters of the built-in ones."""

    common: dict[str, Any]
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-9
    trim_fraction: float = 0.2
    num_malicious_clients: int = 0
    client_learning_rate: float = 0.1
    qfedavg_q: float = 0.2


def screened(cls: type[Strategy]) -> type[Strategy]:
    """`cls` with `ScreenedAggregation` in front: malformed updates never reach it."""
    if issubclass(cls, ScreenedAggregation):
        return cls
    return type(f"Screened{cls.__name__}", (ScreenedAggregation, cls), {"__module__": __name__})


def _server_optimizer(name: str, a: StrategyArgs) -> dict[str, Any]:
    if name == "fedavgm":
        return {"server_learning_rate": a.server_learning_rate, "server_momentum": a.server_momentum}
    kwargs = {"eta": a.server_learning_rate, "eta_l": a.client_learning_rate, "tau": a.server_tau}
    if name in ("fedadam", "fedyogi"):
        kwargs |= {"beta_1": a.server_beta_1, "beta_2": a.server_beta_2}
    return kwargs


FLOWER_CLASSES: dict[str, type[Strategy]] = {
    "fedavgm": flower.FedAvgM,
    "fedadam": flower.FedAdam,
    "fedyogi": flower.FedYogi,
    "fedadagrad": flower.FedAdagrad,
    "fedmedian": flower.FedMedian,
    "fedtrimmedavg": flower.FedTrimmedAvg,
    "krum": flower.Krum,
    "bulyan": flower.Bulyan,
    "qfedavg": flower.QFedAvg,
}


def own_kwargs(name: str, a: StrategyArgs) -> dict[str, Any]:
    """The hyperparameters of built-in strategy `name`."""
    if name in SERVER_OPTIMIZERS:
        return _server_optimizer(name, a)
    return {
        "fedtrimmedavg": {"beta": a.trim_fraction},
        "krum": {"num_malicious_clients": a.num_malicious_clients},
        "bulyan": {"num_malicious_clients": a.num_malicious_clients, "to_keep": 0},  # Krum inside
        "qfedavg": {"q_param": a.qfedavg_q, "qffl_learning_rate": a.client_learning_rate},
    }.get(name, {})


def load_strategy_class(path: str) -> type[Strategy]:
    """The class at `package.module:ClassName`; ValueError says what is wrong."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise ValueError(f"strategy = {path!r} (allowed: a built-in name ({', '.join(BUILT_IN)}) "
                         "or 'package.module:ClassName')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"strategy = {path!r}: cannot import module '{module_name}' ({err})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"strategy = {path!r}: module '{module_name}' has no '{class_name}'")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"strategy = {path!r}: '{class_name}' is not a subclass of "
                         "flwr.server.strategy.Strategy")
    return cls


def build(name: str, args: StrategyArgs) -> Strategy:
    """Built-in strategy `name` or the user's class at `name`, screened."""
    if name in ("fedavg", "fedprox"):  # FedProx differs from FedAvg on the clients only
        return FedAvg(**args.common)
    if name in FLOWER_CLASSES:
        return screened(FLOWER_CLASSES[name])(**args.common, **own_kwargs(name, args))
    return screened(load_strategy_class(name))(**args.common)


def build_server_optimizer(name: str, args: StrategyArgs) -> Strategy | None:
    """For central DP: the Flower server optimizer that turns the noised mean into the
    next global model, or None for plain w + η·mean (fedavg, fedprox)."""
    if name not in SERVER_OPTIMIZERS:
        return None
    return FLOWER_CLASSES[name](initial_parameters=args.common["initial_parameters"],
                                **_server_optimizer(name, args))
