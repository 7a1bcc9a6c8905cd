"""The app's run configuration: one typed view of `[tool.flwr.app.config]`, validated
in one place.

Defaults live only in pyproject.toml; this module checks what Flower hands over
(defaults merged with `--run-config` overrides) before any work starts. A key whose
value is `auto` takes its value from pyproject's `[tool.fl-app.auto]` table: the
`central-dp` column under `dp-mode = "central"` (the DP recipe), the `plain` column
otherwise; any other value is used as given.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib

from data.partition import PARTITIONERS
from fl_app.model import MODELS
from strategies.privacy.accounting import ACCOUNTANTS
from strategies.dp_fedavg import CLIPPING_MODES
from strategies.registry import BUILT_IN, LINEAR, load_strategy_class

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
DP_MODES = ("off", "central", "local")
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


def _float(low: float, high: float, low_open: bool, high_open: bool) -> Callable[[Any], str | None]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    interval = f"a number in {lo}{low:g}, {high:g}{hi}".replace("inf", "infinity")

    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return interval
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return None if above and below else interval

    return check


def _off_or_at_least(minimum: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        return None if numeric and (v == 0 or minimum <= v < INF) else f"0 (off) or a number >= {minimum:g}"

    return check


def _off_or_within(low: float, high: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        return None if numeric and (v == 0 or low <= v <= high) else f"0 or a number in [{low:g}, {high:g}]"

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
APP_DIR = Path(__file__).resolve().parents[1]

# key -> rule; the dataclass below has one field per key (kebab-case -> snake_case).
RULES: dict[str, Callable[[Any], str | None]] = {
    "num-server-rounds": _int(1),
    "seed": _int(0),
    "model": _choice(*MODELS),
    "data-dir": _text,
    "data-download": _bool,
    "output-dir": _text,
    "partitioner": _choice(*PARTITIONERS),
    "dirichlet-alpha": _float(0, INF, True, True),
    "shards-per-client": _int(1),
    "samples-per-client": _int(0),
    "validation-fraction": _float(0, 1, False, True),
    "eval-samples": _int(0, MNIST_TEST_SIZE),
    "local-epochs": _int(1),
    "batch-size": _int(1),
    "optimizer": _choice(*OPTIMIZERS),
    "learning-rate": _float(0, INF, True, True),
    "momentum": _float(0, 1, False, True),
    "lr-schedule": _choice(*LR_SCHEDULES),
    "fraction-fit": _float(0, 1, True, False),
    "fraction-evaluate": _float(0, 1, False, False),  # 0: no federated evaluation
    "min-fit-clients": _int(1),
    "min-evaluate-clients": _int(1),
    "min-available-clients": _int(1),
    "server-learning-rate": _float(0, INF, True, True),
    "dp-mode": _choice(*DP_MODES),
    "dp-clipping": _choice(*CLIPPING_MODES),
    "dp-clipping-norm": _float(0, MAX_SCALE, True, False),
    "dp-noise-multiplier": _off_or_within(MIN_NOISE_MULTIPLIER, MAX_SCALE),
    "dp-target-epsilon": _float(0, INF, False, True),
    "dp-delta": _float(0, 1, True, True),
    "dp-clients-per-round": _float(0, INF, True, True),
    "dp-accountant": _choice(*ACCOUNTANTS),
    "dp-max-grad-norm": _float(0, MAX_SCALE, True, False),
    "dp-target-quantile": _float(0, 1, True, True),
    "dp-clip-learning-rate": _float(0, INF, True, True),
    "dp-clipped-count-stddev": _float(0, INF, True, True),
    "dp-reproducible-noise": _bool,
    "dp-release-unprotected-metrics": _bool,
    "strategy": _text,
    "max-failure-fraction": _float(0, 1, False, False),
    "max-examples-ratio": _off_or_at_least(1),
    "max-update-norm-ratio": _off_or_at_least(1),
    "round-timeout": _float(0, INF, False, True),
    "proximal-mu": _float(0, INF, False, True),
    "server-momentum": _float(0, 1, False, True),
    "server-beta-1": _float(0, 1, False, True),
    "server-beta-2": _float(0, 1, False, True),
    "server-tau": _float(0, INF, True, True),
    "trim-fraction": _float(0, 0.5, False, True),
    "num-malicious-clients": _int(0),
    "qfedavg-q": _float(0, INF, False, True),
    "num-attackers": _int(0),
    "attack": _choice(*ATTACKS),
    "attack-scale": _float(0, INF, True, True),
    "secure-aggregation": _bool,
    "secagg-num-shares": _float(0, 1, True, False),
    "secagg-reconstruction-threshold": _float(0, 1, True, False),
    "checkpoint-every": _int(0),
    "resume-from": _optional_text,
    "tensorboard": _bool,
    "tracking": _choice(*TRACKING),
    "tracking-uri": _optional_text,
}

# Keys a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = ("resume-from", "output-dir", "data-dir", "data-download", "round-timeout",
                     "checkpoint-every", "tensorboard", "tracking", "tracking-uri")


@dataclass(frozen=True)
class AppConfig:
    """The validated run configuration (see README's config reference)."""

    num_server_rounds: int
    seed: int
    model: str
    data_dir: str
    data_download: bool
    output_dir: str
    partitioner: str
    dirichlet_alpha: float
    shards_per_client: int
    samples_per_client: int
    validation_fraction: float
    eval_samples: int
    local_epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    lr_schedule: str
    fraction_fit: float
    fraction_evaluate: float
    min_fit_clients: int
    min_evaluate_clients: int
    min_available_clients: int
    server_learning_rate: float
    dp_mode: str
    dp_clipping: str
    dp_clipping_norm: float
    dp_noise_multiplier: float
    dp_target_epsilon: float
    dp_delta: float
    dp_clients_per_round: float
    dp_accountant: str
    dp_max_grad_norm: float
    dp_target_quantile: float
    dp_clip_learning_rate: float
    dp_clipped_count_stddev: float
    dp_reproducible_noise: bool
    dp_release_unprotected_metrics: bool
    strategy: str
    max_failure_fraction: float
    max_examples_ratio: float
    max_update_norm_ratio: float
    round_timeout: float
    proximal_mu: float
    server_momentum: float
    server_beta_1: float
    server_beta_2: float
    server_tau: float
    trim_fraction: float
    num_malicious_clients: int
    qfedavg_q: float
    num_attackers: int
    attack: str
    attack_scale: float
    secure_aggregation: bool
    secagg_num_shares: float
    secagg_reconstruction_threshold: float
    checkpoint_every: int
    resume_from: str
    tensorboard: bool
    tracking: str
    tracking_uri: str

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "AppConfig":
        """Validate `run_config`; raise `ConfigError` on the first bad or missing key."""
        unknown = sorted(set(run_config) - set(RULES))
        if unknown:
            raise ConfigError(
                f"Invalid run-config: unknown key '{unknown[0]}' "
                f"(allowed keys: {', '.join(RULES)})"
            )
        missing = [key for key in RULES if key not in run_config]
        if missing:
            raise ConfigError(f"Invalid run-config: missing key '{missing[0]}'")
        automatic = auto_settings(run_config)
        values = {}
        for key, rule in RULES.items():
            value = automatic.get(key, run_config[key])
            allowed = rule(value)
            if allowed is not None:
                if key in auto_table()["plain"]:
                    allowed += f", or '{AUTO}'"
                raise ConfigError(
                    f"Invalid run-config: {key} = {value!r} (allowed: {allowed})"
                )
            values[key.replace("-", "_")] = value
        if values["min_fit_clients"] > values["min_available_clients"]:
            raise ConfigError(
                f"Invalid run-config: min-fit-clients = {values['min_fit_clients']} "
                f"(allowed: at most min-available-clients = {values['min_available_clients']})"
            )
        if values["dp_mode"] == "central" and not (
            values["dp_noise_multiplier"] > 0 or values["dp_target_epsilon"] > 0
        ):
            raise ConfigError(
                f"Invalid run-config: dp-noise-multiplier = {values['dp_noise_multiplier']!r} "
                "(allowed: > 0, or 0 with dp-target-epsilon > 0 to calibrate it)"
            )
        if values["dp_mode"] == "local" and not values["dp_target_epsilon"] > 0:
            raise ConfigError(
                f"Invalid run-config: dp-target-epsilon = {values['dp_target_epsilon']!r} "
                "(allowed: > 0 with dp-mode = 'local', the per-client budget)"
            )
        from strategies.privacy.adaptive_clipping import check_count_noise  # the one 2σ_b > σ check

        if (
            values["dp_mode"] == "central"
            and values["dp_clipping"] == "adaptive"
            and values["dp_noise_multiplier"] > 0
            and check_count_noise(values["dp_noise_multiplier"], values["dp_clipped_count_stddev"])
        ):
            raise ConfigError(
                f"Invalid run-config: dp-clipped-count-stddev = {values['dp_clipped_count_stddev']!r} "
                f"(allowed: > dp-noise-multiplier / 2 = {values['dp_noise_multiplier'] / 2:g} "
                "with adaptive clipping)"
            )
        if values["dp_mode"] == "central" and values["checkpoint_every"] > 1:
            raise ConfigError(
                f"Invalid run-config: checkpoint-every = {values['checkpoint_every']!r} (allowed: "
                "0 or 1 with dp-mode = 'central': each released round is checkpointed before it "
                "leaves the server, so a resumed run never computes a released round again)"
            )
        check_strategy(values)
        if values["resume_from"] and values["dp_mode"] == "local":
            raise ConfigError(
                f"Invalid run-config: resume-from = {values['resume_from']!r} (allowed: only "
                "with dp-mode 'off' or 'central'; with 'local' the privacy accountants live on "
                "the clients and a new run would start them from zero)"
            )
        if values["secure_aggregation"] and (
            values["dp_mode"] != "central" or values["dp_clipping"] != "client"
        ):
            raise ConfigError(
                "Invalid run-config: secure-aggregation = true (allowed: only with "
                "dp-mode = 'central' and dp-clipping = 'client', where clients clip and the "
                f"server needs only the sum; got dp-mode = '{values['dp_mode']}', "
                f"dp-clipping = '{values['dp_clipping']}')"
            )
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping this config was built from."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def check_strategy(values: Mapping[str, Any]) -> None:
    """The strategy exists, composes with the DP mode, and gets only keys it uses."""
    name = values["strategy"]
    if name not in BUILT_IN:
        try:
            load_strategy_class(name)
        except ValueError as err:
            raise ConfigError(f"Invalid run-config: {err}") from None
    if values["dp_mode"] == "central" and name not in LINEAR:
        raise ConfigError(
            f"Invalid run-config: strategy = {name!r} (allowed with dp-mode = 'central': "
            f"{', '.join(repr(n) for n in LINEAR)}; the noise is calibrated to a sum of clipped "
            "updates, which a median, trimmed mean, Krum, Bulyan, q-FedAvg or an unknown "
            "strategy does not compute)"
        )
    if values["proximal_mu"] > 0 and name != "fedprox":
        raise ConfigError(f"Invalid run-config: proximal-mu = {values['proximal_mu']!r} "
                          f"(allowed: 0 unless strategy = 'fedprox'; strategy is {name!r})")
    if name == "fedprox" and values["dp_mode"] == "local":
        raise ConfigError("Invalid run-config: strategy = 'fedprox' (allowed: with dp-mode "
                          "'off' or 'central'; DP-SGD clips per-sample gradients of the plain loss)")
    if values["server_momentum"] > 0 and name != "fedavgm":
        raise ConfigError(f"Invalid run-config: server-momentum = {values['server_momentum']!r} "
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
    if num_partitions < cfg.min_available_clients:
        raise ConfigError(
            f"Invalid run-config: min-available-clients = {cfg.min_available_clients} "
            f"(allowed: at most the {num_partitions} clients of this federation)"
        )
    if cfg.num_attackers > num_partitions:
        raise ConfigError(
            f"Invalid run-config: num-attackers = {cfg.num_attackers} "
            f"(allowed: at most the {num_partitions} clients of this federation)"
        )
    if cfg.dp_mode == "central" and cfg.dp_clients_per_round > population:
        raise ConfigError(
            f"Invalid run-config: dp-clients-per-round = {cfg.dp_clients_per_round:g} "
            f"(allowed: at most the {population} clients of this federation)"
        )
    if cfg.samples_per_client and round(cfg.samples_per_client * cfg.validation_fraction) >= cfg.samples_per_client:
        raise ConfigError(
            f"Invalid run-config: validation-fraction = {cfg.validation_fraction} (allowed: a "
            f"fraction that leaves at least one of samples-per-client = {cfg.samples_per_client} "
            "samples to train on)"
        )
    cohort = max(int(num_partitions * cfg.fraction_fit), cfg.min_fit_clients)
    f = cfg.num_malicious_clients
    needed = {"krum": 2 * f + 3, "bulyan": 4 * f + 3}.get(cfg.strategy, 0)
    if cohort < needed:
        raise ConfigError(
            f"Invalid run-config: num-malicious-clients = {f} (allowed: {cfg.strategy} needs "
            f"at least {needed} clients per round, this federation samples {cohort})"
        )
    if cfg.partitioner == "shards" and num_partitions * cfg.shards_per_client > num_samples:
        raise ConfigError(
            f"Invalid run-config: shards-per-client = {cfg.shards_per_client} "
            f"(allowed: at most {num_samples // num_partitions} with {num_partitions} "
            f"partitions of {num_samples} samples)"
        )


@lru_cache(maxsize=1)
def auto_table() -> dict[str, dict[str, Any]]:
    """`[tool.fl-app.auto]` of the app's pyproject.toml: per key, its value in `plain`
    runs and under central DP (`central-dp`)."""
    with open(APP_DIR / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["fl-app"]["auto"]


def auto_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The values the `auto` keys of `run_config` take (see the module docstring); `auto`
    for a key without an entry is left to that key's rule to refuse."""
    column = "central-dp" if run_config.get("dp-mode") == "central" else "plain"
    table = auto_table()[column]
    return {key: table[key] for key, value in run_config.items() if value == AUTO and key in table}


def project_defaults(project_dir: str | Path) -> dict[str, Any]:
    """The `[tool.flwr.app.config]` table of the app's pyproject.toml."""
    with open(Path(project_dir) / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]
