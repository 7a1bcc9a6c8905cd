"""Strategies by name: Flower's own classes behind the app's screen, and users' classes
loaded from `package.module:ClassName`.

Every strategy is built from the same Flower keyword arguments (`StrategyArgs.common`):
fractions and minimum client counts, `evaluate_fn`, `on_fit_config_fn`,
`on_evaluate_config_fn`, `initial_parameters`, `fit_metrics_aggregation_fn`,
`evaluate_metrics_aggregation_fn` (example-weighted means unless given), plus its own
hyperparameters; the screen's round rules are `StrategyArgs`' own fields.
"""

import importlib
from dataclasses import dataclass
from typing import Any

from flwr.server import strategy as flower
from flwr.server.strategy import Strategy

from strategies.fedavg import METRIC_MEANS, FedAvg, WeightedFedAvg
from strategies.screening import ScreenedStrategy, UpdateScreen

# Linear in the client updates: central DP's noised mean can feed them (post-processing).
LINEAR = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
NON_LINEAR = ("fedmedian", "fedtrimmedavg", "krum", "bulyan", "qfedavg")
BUILT_IN = LINEAR + NON_LINEAR
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class StrategyArgs:
    """What a strategy is built from: Flower's keyword arguments, the screen's round rules
    and the hyperparameters of the built-in strategies (the run-config's values)."""

    common: dict[str, Any]
    max_failure_fraction: float
    max_examples_ratio: float
    max_update_norm_ratio: float
    server_learning_rate: float
    server_momentum: float
    server_beta_1: float
    server_beta_2: float
    server_tau: float
    trim_fraction: float
    num_malicious_clients: int
    client_learning_rate: float
    qfedavg_q: float

    @property
    def round_rules(self) -> dict[str, float]:
        """The keyword arguments of `ScreenedStrategy`'s round rules."""
        return {"max_failure_fraction": self.max_failure_fraction, "max_examples_ratio": self.max_examples_ratio,
                "max_update_norm_ratio": self.max_update_norm_ratio}


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
    hyperparameters: dict[str, dict[str, Any]] = {
        "fedtrimmedavg": {"beta": a.trim_fraction},
        "krum": {"num_malicious_clients": a.num_malicious_clients},
        "bulyan": {"num_malicious_clients": a.num_malicious_clients, "to_keep": 0},  # Krum inside
        "qfedavg": {"q_param": a.qfedavg_q, "qffl_learning_rate": a.client_learning_rate},
    }
    return hyperparameters.get(name, {})


def load_strategy_class(path: str) -> type[Strategy]:
    """The class at `package.module:ClassName`; ValueError says what is wrong."""
    module_name, sep, class_name = path.partition(":")
    dotted = all(part.isidentifier() for part in module_name.split("."))  # no relative or blank names
    if not sep or not dotted or not class_name.isidentifier():
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


def inner(name: str, args: StrategyArgs) -> Strategy:
    """Built-in strategy `name` or the user's class at `name`, without the screen; for
    central DP (a linear `name`), the strategy that steps on the noised mean: `WeightedFedAvg`
    (fedavg, fedprox: FedProx differs from FedAvg on the clients only) or a server optimizer."""
    kwargs = METRIC_MEANS | args.common
    if name in ("fedavg", "fedprox"):
        return WeightedFedAvg(**kwargs)
    if name in FLOWER_CLASSES:
        return FLOWER_CLASSES[name](**kwargs, **own_kwargs(name, args))
    return load_strategy_class(name)(**kwargs)


def screen(args: StrategyArgs, *, log_rejections: bool) -> UpdateScreen:
    """The screen for results of the model in `args.common['initial_parameters']`."""
    return UpdateScreen(args.common["initial_parameters"], log_rejections=log_rejections)


def build(name: str, args: StrategyArgs) -> Strategy:
    """Built-in strategy `name` or the user's class at `name`, behind the screen."""
    if name in ("fedavg", "fedprox"):
        return FedAvg(**args.common, **args.round_rules)
    if name not in FLOWER_CLASSES and issubclass(load_strategy_class(name), FedAvg):
        return load_strategy_class(name)(**args.common, **args.round_rules)  # screened already
    return ScreenedStrategy(inner(name, args), screen(args, log_rejections=True), **args.round_rules)
