"""The app's run configuration: one typed view of `[tool.flwr.app.config]`, validated
in one place.

Defaults live only in pyproject.toml; this module checks what Flower hands over
(defaults merged with `--run-config` overrides) before any work starts. A key whose
value is `auto` takes its value from pyproject's `[tool.fl-app.auto]` table: the
`central-dp` column under `dp-mode = "central"` or `"distributed"` (the client-level DP recipe), the
`local-dp` column under `dp-mode = "local"` (the sample-level one), the `plain` column
otherwise; any other value is used as given.
"""

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from data.partition import PARTITIONERS
from fl_app.model import MODELS
from fl_app.secagg_params import tolerated_dropouts
from strategies.dp_fedavg import CLIPPING_MODES
from strategies.privacy.accounting import ACCOUNTANTS
from strategies.privacy.adaptive_clipping import check_count_noise
from strategies.registry import BUILT_IN, LINEAR, load_strategy_class

OPTIMIZERS = ("sgd", "adam", "adadelta")
LR_SCHEDULES = ("constant", "cosine", "exp")
SERVER_LR_SCHEDULES = ("constant", "cosine")
DP_MODES = ("off", "central", "distributed", "local")
CLIENT_LEVEL_MODES = ("central", "distributed")  # DP-FedAvg on the server: client-level ε, its accountant
MNIST_TEST_SIZE = 10_000
ATTACKS = ("sign-flip", "scaled-noise", "nan")
TRACKING = ("none", "mlflow")  # mlflow: an optional dependency (see fl_app.tracking)


class ConfigError(ValueError):
    """A run-config value that the app cannot use."""


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            return f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        if maximum is not None and v > maximum:
            return f"an integer in [{minimum}, {maximum}]"
        return None

    return check


def _real(v: Any) -> float | None:
    """`v` as a float when it is a number (not a bool) that a float holds, else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        return float(v)
    except OverflowError:  # an integer beyond float's range (TOML parsers read any length)
        return None


def _float(low: float, high: float, low_open: bool, high_open: bool) -> Callable[[Any], str | None]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    interval = f"a number in {lo}{low:g}, {high:g}{hi}".replace("inf", "infinity")

    def check(v: Any) -> str | None:
        if (x := _real(v)) is None:
            return interval
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        return None if above and below else interval

    return check


def _off_or_at_least(minimum: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        x = _real(v)
        return None if x is not None and (x == 0 or minimum <= x < INF) else f"0 (off) or a number >= {minimum:g}"

    return check


def _off_or_within(low: float, high: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        x = _real(v)
        return None if x is not None and (x == 0 or low <= x <= high) else f"0 or a number in [{low:g}, {high:g}]"

    return check


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed else "one of " + ", ".join(f"'{a}'" for a in allowed)

    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def _optional_text(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string (empty: none)"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


INF = float("inf")
# Below σ = 1e-6 the accountant overflows (and there is no privacy to account); clipping
# norms and σ above 1e6 make the noise σS overflow float32 weights.
MIN_NOISE_MULTIPLIER = 1e-6
MAX_SCALE = 1e6
AUTO = "auto"
PACKAGE_DIR = Path(__file__).resolve().parent
# The directory holding the app's pyproject.toml: fl_app/ itself in an installed wheel
# (which ships a copy there: pyproject's force-include), else the one above fl_app/ (the
# checkout, or the app bundle a SuperExec or SuperNode unpacked).
APP_DIR = PACKAGE_DIR if (PACKAGE_DIR / "pyproject.toml").is_file() else PACKAGE_DIR.parent

# Keys a resumed run may change: they do not alter what is computed, nor which rounds are
# checkpointed (a resume with fewer checkpoints could be resumed again from an older one).
RESUMABLE_CHANGES = ("resume-from", "output-dir", "data-dir", "data-download", "round-timeout",
                     "tensorboard", "tracking", "tracking-uri")
# Keys that do not apply under central DP, where every round releases a noised model
# whatever replies arrive (a skip that depends on the replies would itself be a release):
# they must stay `auto` (or its resolved value), which the `central-dp` column sets to "never skip".
NOT_UNDER_CENTRAL_DP = ("min-fit-clients", "max-failure-fraction")
# dp-mode → [tool.fl-app.auto] column
AUTO_COLUMNS = {"central": "central-dp", "distributed": "central-dp", "local": "local-dp"}


def setting(key: str, rule: Callable[[Any], str | None]) -> Any:
    """A config field: its run-config `key` and the `rule` that returns what is allowed
    when a value is refused (None when accepted). The default lives in pyproject only."""
    return field(metadata={"key": key, "rule": rule})


@dataclass(frozen=True)
class RunConfig:
    """How long the run is, where its outputs go and what records it."""

    num_server_rounds: int = setting("num-server-rounds", _int(1))
    seed: int = setting("seed", _int(0))
    output_dir: str = setting("output-dir", _text)
    checkpoint_every: int = setting("checkpoint-every", _int(0))
    resume_from: str = setting("resume-from", _optional_text)
    round_timeout: float = setting("round-timeout", _float(0, INF, False, True))
    tensorboard: bool = setting("tensorboard", _bool)
    tracking: str = setting("tracking", _choice(*TRACKING))
    tracking_uri: str = setting("tracking-uri", _optional_text)


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST comes from and how it is split over the clients."""

    data_dir: str = setting("data-dir", _text)
    data_download: bool = setting("data-download", _bool)
    partitioner: str = setting("partitioner", _choice(*PARTITIONERS))
    dirichlet_alpha: float = setting("dirichlet-alpha", _float(0, INF, True, True))
    shards_per_client: int = setting("shards-per-client", _int(1))
    samples_per_client: int = setting("samples-per-client", _int(0))
    validation_fraction: float = setting("validation-fraction", _float(0, 1, False, True))
    eval_samples: int = setting("eval-samples", _int(0, MNIST_TEST_SIZE))


@dataclass(frozen=True)
class TrainConfig:
    """The model and each client's local training."""

    model: str = setting("model", _choice(*MODELS))
    local_epochs: int = setting("local-epochs", _int(1))
    batch_size: int = setting("batch-size", _int(1))
    optimizer: str = setting("optimizer", _choice(*OPTIMIZERS))
    learning_rate: float = setting("learning-rate", _float(0, INF, True, True))
    momentum: float = setting("momentum", _float(0, 1, False, True))
    lr_schedule: str = setting("lr-schedule", _choice(*LR_SCHEDULES))
    lr_decay_rate: float = setting("lr-decay-rate", _float(0, 1, True, False))
    lr_warmup_rounds: int = setting("lr-warmup-rounds", _int(0))
    proximal_mu: float = setting("proximal-mu", _float(0, INF, False, True))


@dataclass(frozen=True)
class StrategyConfig:
    """The aggregation strategy, its client counts, its screen and its hyperparameters."""

    name: str = setting("strategy", _text)
    fraction_fit: float = setting("fraction-fit", _float(0, 1, True, False))
    fraction_evaluate: float = setting("fraction-evaluate", _float(0, 1, False, False))  # 0: none
    min_fit_clients: int = setting("min-fit-clients", _int(1))
    min_evaluate_clients: int = setting("min-evaluate-clients", _int(1))
    min_available_clients: int = setting("min-available-clients", _int(1))
    max_failure_fraction: float = setting("max-failure-fraction", _float(0, 1, False, False))
    max_examples_ratio: float = setting("max-examples-ratio", _off_or_at_least(1))
    max_update_norm_ratio: float = setting("max-update-norm-ratio", _off_or_at_least(1))
    server_learning_rate: float = setting("server-learning-rate", _float(0, INF, True, True))
    server_lr_schedule: str = setting("server-lr-schedule", _choice(*SERVER_LR_SCHEDULES))
    server_momentum: float = setting("server-momentum", _float(0, 1, False, True))
    server_beta_1: float = setting("server-beta-1", _float(0, 1, False, True))
    server_beta_2: float = setting("server-beta-2", _float(0, 1, False, True))
    server_tau: float = setting("server-tau", _float(0, INF, True, True))
    trim_fraction: float = setting("trim-fraction", _float(0, 0.5, False, True))
    num_malicious_clients: int = setting("num-malicious-clients", _int(0))
    qfedavg_q: float = setting("qfedavg-q", _float(0, INF, False, True))


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy: central (client-level, on the server) or local (DP-SGD)."""

    mode: str = setting("dp-mode", _choice(*DP_MODES))
    clipping: str = setting("dp-clipping", _choice(*CLIPPING_MODES))
    clipping_norm: float = setting("dp-clipping-norm", _float(0, MAX_SCALE, True, False))
    noise_multiplier: float = setting("dp-noise-multiplier", _off_or_within(MIN_NOISE_MULTIPLIER, MAX_SCALE))
    target_epsilon: float = setting("dp-target-epsilon", _float(0, INF, False, True))
    delta: float = setting("dp-delta", _float(0, 1, True, True))
    clients_per_round: float = setting("dp-clients-per-round", _float(0, INF, True, True))
    accountant: str = setting("dp-accountant", _choice(*ACCOUNTANTS))
    max_grad_norm: float = setting("dp-max-grad-norm", _float(0, MAX_SCALE, True, False))
    target_quantile: float = setting("dp-target-quantile", _float(0, 1, True, True))
    clip_learning_rate: float = setting("dp-clip-learning-rate", _float(0, INF, True, True))
    clipped_count_stddev: float = setting("dp-clipped-count-stddev", _float(0, INF, True, True))
    reproducible_noise: bool = setting("dp-reproducible-noise", _bool)
    release_unprotected_metrics: bool = setting("dp-release-unprotected-metrics", _bool)
    bits: int = setting("dp-bits", _int(8, 30))

    @property
    def central(self) -> bool:
        """Whether the DP is client-level and accounted on the server: dp-mode "central"
        (the server adds the noise) or "distributed" (the clients do, under SecAgg+)."""
        return self.mode in CLIENT_LEVEL_MODES


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (SecAgg+) of the clients' clipped updates."""

    enabled: bool = setting("secure-aggregation", _bool)
    num_shares: float = setting("secagg-num-shares", _float(0, 1, True, False))
    reconstruction_threshold: float = setting("secagg-reconstruction-threshold", _float(0, 1, True, False))


@dataclass(frozen=True)
class AttackConfig:
    """Simulated attackers among the clients (the robustness experiments)."""

    num_attackers: int = setting("num-attackers", _int(0))
    kind: str = setting("attack", _choice(*ATTACKS))
    scale: float = setting("attack-scale", _float(0, INF, True, True))


SECTIONS: dict[str, type] = {
    "run": RunConfig, "data": DataConfig, "train": TrainConfig, "strategy": StrategyConfig,
    "dp": DPConfig, "secagg": SecAggConfig, "attack": AttackConfig,
}
# key -> (section, field name, rule): derived from the sections' fields, declared nowhere else.
DECLARED: dict[str, tuple[str, str, Callable[[Any], str | None]]] = {
    f.metadata["key"]: (section, f.name, f.metadata["rule"])
    for section, cls in SECTIONS.items() for f in fields(cls)
}
RULES: dict[str, Callable[[Any], str | None]] = {key: rule for key, (_, _, rule) in DECLARED.items()}


def refuse(key: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error for `key = value`."""
    return ConfigError(f"Invalid run-config: {key} = {value!r} (allowed: {allowed})")


@dataclass(frozen=True)
class AppConfig:
    """The validated run configuration, by section (docs/configuration.md)."""

    run: RunConfig
    data: DataConfig
    train: TrainConfig
    strategy: StrategyConfig
    dp: DPConfig
    secagg: SecAggConfig
    attack: AttackConfig

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], *, load_strategy: bool = True) -> "AppConfig":
        """Validate `run_config`; raise `ConfigError` on the first bad or missing key.
        `load_strategy=False` skips importing a user's strategy module (the clients do
        not run it; the server checks it)."""
        unknown = sorted(set(run_config) - set(DECLARED))
        if unknown:
            raise ConfigError(
                f"Invalid run-config: unknown key '{unknown[0]}' "
                f"(allowed keys: {', '.join(DECLARED)})"
            )
        missing = [key for key in DECLARED if key not in run_config]
        if missing:
            raise ConfigError(f"Invalid run-config: missing key '{missing[0]}'")
        if run_config["dp-mode"] in CLIENT_LEVEL_MODES:
            for key in NOT_UNDER_CENTRAL_DP:
                never_skip = auto_table()["central-dp"][key]
                if run_config[key] not in (AUTO, never_skip):
                    raise refuse(key, run_config[key], f"'{AUTO}' (= {never_skip}) with dp-mode = "
                                 f"'{run_config['dp-mode']}': "
                                 "every round releases a noised model whatever replies arrive, so no round "
                                 "is skipped")
        automatic = auto_settings(run_config)
        values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, (section, name, rule) in DECLARED.items():
            value = automatic.get(key, run_config[key])
            allowed = rule(value)
            if allowed is not None:
                if key in auto_table()["plain"]:
                    allowed += f", or '{AUTO}'"
                raise refuse(key, value, allowed)
            values[section][name] = value
        cfg = cls(**{section: SECTIONS[section](**kwargs) for section, kwargs in values.items()})
        cfg.check(load_strategy=load_strategy)
        return cfg

    def check(self, *, load_strategy: bool) -> None:
        """The rules that tie keys of several sections together."""
        s, dp = self.strategy, self.dp
        if s.min_fit_clients > s.min_available_clients:
            raise ConfigError(
                f"Invalid run-config: min-fit-clients = {s.min_fit_clients} "
                f"(allowed: at most min-available-clients = {s.min_available_clients})"
            )
        if dp.central and not (dp.noise_multiplier > 0 or dp.target_epsilon > 0):
            raise refuse("dp-noise-multiplier", dp.noise_multiplier,
                         "> 0, or 0 with dp-target-epsilon > 0 to calibrate it")
        if dp.mode == "local" and not dp.target_epsilon > 0:
            raise refuse("dp-target-epsilon", dp.target_epsilon,
                         "> 0 with dp-mode = 'local', the per-client budget")
        if dp.central and dp.clipping == "adaptive" and dp.noise_multiplier > 0 and check_count_noise(
            dp.noise_multiplier, dp.clipped_count_stddev
        ):
            raise refuse("dp-clipped-count-stddev", dp.clipped_count_stddev,
                         f"> dp-noise-multiplier / 2 = {dp.noise_multiplier / 2:g} with adaptive clipping")
        if dp.central and self.run.checkpoint_every != 1:
            raise refuse("checkpoint-every", self.run.checkpoint_every,
                         f"1 with dp-mode = '{dp.mode}': each released round is checkpointed before it "
                         "leaves the server, so a resumed run never computes a released round again")
        if s.server_lr_schedule != "constant" and not dp.central:
            raise refuse("server-lr-schedule", s.server_lr_schedule,
                         "'constant', or 'cosine' with dp-mode = 'central' or 'distributed' (it scales "
                         "DP-FedAvg's noised mean)")
        if self.train.lr_warmup_rounds >= self.run.num_server_rounds:
            raise refuse("lr-warmup-rounds", self.train.lr_warmup_rounds,
                         f"fewer than num-server-rounds = {self.run.num_server_rounds}")
        check_strategy(self, load_strategy=load_strategy)
        if self.run.resume_from and dp.mode == "local":
            raise refuse("resume-from", self.run.resume_from,
                         "only with dp-mode 'off' or 'central'; with 'local' the privacy accountants live "
                         "on the clients and a new run would start them from zero")
        if dp.mode == "distributed" and (not self.secagg.enabled or dp.clipping != "client"):
            raise ConfigError(
                "Invalid run-config: dp-mode = 'distributed' (allowed: only with secure-aggregation = true "
                "and dp-clipping = 'client': the clients clip and noise, and only SecAgg+ sums their vectors; "
                f"got secure-aggregation = {str(self.secagg.enabled).lower()}, dp-clipping = '{dp.clipping}')"
            )
        if self.secagg.enabled and (not dp.central or dp.clipping != "client"):
            raise ConfigError(
                "Invalid run-config: secure-aggregation = true (allowed: only with "
                "dp-mode = 'central' or 'distributed' and dp-clipping = 'client', where clients clip and the "
                f"server needs only the sum; got dp-mode = '{dp.mode}', "
                f"dp-clipping = '{dp.clipping}')"
            )
        if self.secagg.enabled and tolerated_dropouts(
            math.floor(dp.clients_per_round), self.secagg.num_shares, self.secagg.reconstruction_threshold
        ) < 1:
            raise refuse("secagg-reconstruction-threshold", self.secagg.reconstruction_threshold,
                         f"a value at which SecAgg+ survives one dropout in a cohort of "
                         f"dp-clients-per-round = {dp.clients_per_round:g} clients (at least 3; with "
                         f"secagg-num-shares = {self.secagg.num_shares:g}, a lower threshold): a halted "
                         f"round would release no update, so one client could change a round by the whole sum")

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping this config was built from."""
        return {key: getattr(getattr(self, section), name) for key, (section, name, _) in DECLARED.items()}


@lru_cache(maxsize=8)
def _client_config(items: tuple[tuple[str, Any], ...]) -> AppConfig:
    return AppConfig.from_run_config(dict(items), load_strategy=False)


def client_config(run_config: Mapping[str, Any]) -> AppConfig:
    """`AppConfig` for a ClientApp call: validated once per process and run-config,
    without importing a user's strategy module."""
    return _client_config(tuple(sorted(run_config.items())))


def check_strategy(cfg: AppConfig, *, load_strategy: bool = True) -> None:
    """The strategy exists, composes with the DP mode, and gets only keys it uses."""
    name, dp_mode = cfg.strategy.name, cfg.dp.mode
    if name not in BUILT_IN and load_strategy:
        try:
            load_strategy_class(name)
        except ValueError as err:
            raise ConfigError(f"Invalid run-config: {err}") from None
    if dp_mode in CLIENT_LEVEL_MODES and name not in LINEAR:
        raise ConfigError(
            f"Invalid run-config: strategy = {name!r} (allowed with dp-mode = '{dp_mode}': "
            f"{', '.join(repr(n) for n in LINEAR)}; the noise is calibrated to a sum of clipped "
            "updates, which a median, trimmed mean, Krum, Bulyan, q-FedAvg or an unknown "
            "strategy does not compute)"
        )
    if cfg.train.proximal_mu > 0 and name != "fedprox":
        raise ConfigError(f"Invalid run-config: proximal-mu = {cfg.train.proximal_mu!r} "
                          f"(allowed: 0 unless strategy = 'fedprox'; strategy is {name!r})")
    if name == "fedprox" and dp_mode == "local":
        raise ConfigError("Invalid run-config: strategy = 'fedprox' (allowed: with dp-mode "
                          "'off' or 'central'; DP-SGD clips per-sample gradients of the plain loss)")
    if cfg.strategy.server_momentum > 0 and name != "fedavgm":
        raise ConfigError(f"Invalid run-config: server-momentum = {cfg.strategy.server_momentum!r} "
                          f"(allowed: 0 unless strategy = 'fedavgm'; strategy is {name!r})")


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A resumed run must compute what the interrupted one did: refuse changed keys
    other than `RESUMABLE_CHANGES` (`auto` values of `current` compared as resolved, as
    the interrupted run recorded them)."""
    current = dict(current) | auto_settings(current)
    changed = [k for k in RULES if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"Invalid run-config: {key} = {current.get(key)!r} (allowed: {saved.get(key)!r}, as "
            f"in the run being resumed; only {', '.join(RESUMABLE_CHANGES)} may change)"
        )


def check_partitioning(cfg: AppConfig, num_partitions: int, num_samples: int, population: int | None = None) -> None:
    """Refuse partition counts the training set or the minimum client counts rule out;
    `population` (default: `num_partitions`) counts every client, e.g. also clients
    without an MNIST partition."""
    population = num_partitions if population is None else population
    if num_partitions < 1 or num_partitions > num_samples:
        raise ConfigError(
            f"Invalid federation: num-partitions = {num_partitions} "
            f"(allowed: 1 to {num_samples}, the number of training samples)"
        )
    if num_partitions < cfg.strategy.min_available_clients:
        raise ConfigError(
            f"Invalid run-config: min-available-clients = {cfg.strategy.min_available_clients} "
            f"(allowed: at most the {num_partitions} clients of this federation)"
        )
    if cfg.attack.num_attackers > num_partitions:
        raise ConfigError(
            f"Invalid run-config: num-attackers = {cfg.attack.num_attackers} "
            f"(allowed: at most the {num_partitions} clients of this federation)"
        )
    if cfg.dp.central and cfg.dp.clients_per_round > population:
        raise ConfigError(
            f"Invalid run-config: dp-clients-per-round = {cfg.dp.clients_per_round:g} "
            f"(allowed: at most the {population} clients of this federation)"
        )
    capped = cfg.data.samples_per_client
    if capped and round(capped * cfg.data.validation_fraction) >= capped:
        raise ConfigError(
            f"Invalid run-config: validation-fraction = {cfg.data.validation_fraction} (allowed: a "
            f"fraction that leaves at least one of samples-per-client = {cfg.data.samples_per_client} "
            "samples to train on)"
        )
    cohort = max(int(num_partitions * cfg.strategy.fraction_fit), cfg.strategy.min_fit_clients)
    f = cfg.strategy.num_malicious_clients
    needed = {"krum": 2 * f + 3, "bulyan": 4 * f + 3}.get(cfg.strategy.name, 0)
    if cohort < needed:
        raise ConfigError(
            f"Invalid run-config: num-malicious-clients = {f} (allowed: {cfg.strategy.name} needs "
            f"at least {needed} clients per round, this federation samples {cohort})"
        )
    if cfg.data.partitioner == "shards" and num_partitions * cfg.data.shards_per_client > num_samples:
        raise ConfigError(
            f"Invalid run-config: shards-per-client = {cfg.data.shards_per_client} "
            f"(allowed: at most {num_samples // num_partitions} with {num_partitions} "
            f"partitions of {num_samples} samples)"
        )


@lru_cache(maxsize=1)
def auto_table() -> dict[str, dict[str, Any]]:
    """`[tool.fl-app.auto]` of the app's pyproject.toml: per key, its value in `plain`
    runs, under central DP (`central-dp`) and under local DP (`local-dp`)."""
    with open(APP_DIR / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["fl-app"]["auto"]


def auto_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The values the `auto` keys of `run_config` take (see the module docstring); `auto`
    for a key without an entry is left to that key's rule to refuse."""
    column = AUTO_COLUMNS.get(str(run_config.get("dp-mode")), "plain")
    table = auto_table()[column]
    return {key: table[key] for key, value in run_config.items() if value == AUTO and key in table}


def project_defaults(project_dir: str | Path) -> dict[str, Any]:
    """The `[tool.flwr.app.config]` table of the app's pyproject.toml."""
    with open(Path(project_dir) / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]
