import pytest

from fl_app.config import RULES, AppConfig, ConfigError, check_partitioning


def auto_suffix(key: str) -> str:
    """Keys that take `auto` say so in their message."""
    from fl_app.config import auto_table

    return ", or 'auto'" if key in auto_table()["plain"] else ""


def test_defaults_are_valid_and_cover_every_key(default_run_config):
    from fl_app.config import auto_settings

    cfg = AppConfig.from_run_config(default_run_config)
    assert cfg.to_run_config() == default_run_config | auto_settings(default_run_config)
    assert set(default_run_config) == set(RULES)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("partitioner", "random", "one of 'iid', 'dirichlet', 'shards'"),
        ("optimizer", "rmsprop", "one of 'sgd', 'adam', 'adadelta'"),
        ("dirichlet-alpha", 0.0, "a number in (0, infinity)"),
        ("dirichlet-alpha", -1, "a number in (0, infinity)"),
        ("fraction-fit", 0.0, "a number in (0, 1]"),
        ("fraction-fit", 1.5, "a number in (0, 1]"),
        ("max-examples-ratio", 0.5, "0 (off) or a number >= 1"),
        ("max-update-norm-ratio", "10", "0 (off) or a number >= 1"),
        ("max-update-norm-ratio", float("inf"), "0 (off) or a number >= 1"),
        ("fraction-evaluate", -0.1, "a number in [0, 1]"),
        ("num-server-rounds", 0, "an integer >= 1"),
        ("batch-size", 0, "an integer >= 1"),
        ("batch-size", 3.5, "an integer >= 1"),
        ("local-epochs", True, "an integer >= 1"),
        ("learning-rate", 0, "a number in (0, infinity)"),
        ("lr-schedule", "step", "one of 'constant', 'cosine', 'exp'"),
        ("server-lr-schedule", "exp", "one of 'constant', 'cosine'"),
        ("validation-fraction", 1.0, "a number in [0, 1)"),
        ("data-dir", "", "a non-empty string"),
        ("data-download", "yes", "true or false"),
    ],
)
def test_bad_value_gives_one_message_naming_key_value_and_allowed(default_run_config, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(default_run_config | {key: value})
    assert str(err.value) == f"Invalid run-config: {key} = {value!r} (allowed: {allowed}{auto_suffix(key)})"


def test_unknown_and_missing_keys_are_named(default_run_config):
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        AppConfig.from_run_config(default_run_config | {"learning_rate": 0.1})
    incomplete = dict(default_run_config)
    del incomplete["seed"]
    with pytest.raises(ConfigError, match="missing key 'seed'"):
        AppConfig.from_run_config(incomplete)


def test_integers_are_accepted_for_float_keys(default_run_config):
    assert AppConfig.from_run_config(default_run_config | {"learning-rate": 1}).train.learning_rate == 1


def test_more_partitions_than_samples_is_refused(default_run_config):
    cfg = AppConfig.from_run_config(default_run_config)
    check_partitioning(cfg, 60_000, 60_000)
    with pytest.raises(ConfigError, match=r"num-partitions = 60001 \(allowed: 1 to 60000"):
        check_partitioning(cfg, 60_001, 60_000)
    shards = AppConfig.from_run_config(default_run_config | {"partitioner": "shards", "shards-per-client": 7})
    with pytest.raises(ConfigError, match=r"shards-per-client = 7 \(allowed: at most 6"):
        check_partitioning(shards, 10_000, 60_000)


def test_waiting_for_more_clients_than_exist_is_refused(default_run_config):
    cfg = AppConfig.from_run_config(default_run_config | {"min-available-clients": 5})
    with pytest.raises(ConfigError, match=r"min-available-clients = 5 \(allowed: at most the 3 clients"):
        check_partitioning(cfg, 3, 60_000)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("dp-mode", "both", "one of 'off', 'central', 'distributed', 'local'"),
        ("dp-max-grad-norm", 0.0, "a number in (0, 1e+06]"),
        ("dp-clipping", "auto", "one of 'server', 'client', 'adaptive'"),
        ("dp-clipping-norm", 0.0, "a number in (0, 1e+06]"),
        ("dp-delta", 1.0, "a number in (0, 1)"),
        ("dp-delta", 0.0, "a number in (0, 1)"),
        ("dp-noise-multiplier", -1.0, "0 or a number in [1e-06, 1e+06]"),
        ("dp-clients-per-round", 0.0, "a number in (0, infinity)"),
        ("dp-accountant", "gdp", "one of 'rdp', 'prv'"),
        ("server-learning-rate", 0.0, "a number in (0, infinity)"),
    ],
)
def test_bad_dp_values_are_named(default_run_config, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(default_run_config | {key: value})
    assert str(err.value) == f"Invalid run-config: {key} = {value!r} (allowed: {allowed}{auto_suffix(key)})"


def test_central_dp_needs_a_noise_multiplier_or_a_target(default_run_config):
    no_noise = default_run_config | {"dp-mode": "central", "dp-noise-multiplier": 0.0}
    with pytest.raises(ConfigError, match=r"dp-noise-multiplier = 0.0 \(allowed: > 0, or 0 with dp-target-epsilon > 0"):
        AppConfig.from_run_config(no_noise)
    assert AppConfig.from_run_config(no_noise | {"dp-target-epsilon": 3.0}).dp.target_epsilon == 3.0


def test_adaptive_clipping_needs_enough_count_noise(default_run_config):
    adaptive = default_run_config | {"dp-mode": "central", "dp-clipping": "adaptive",
                                     "dp-noise-multiplier": 3.0, "dp-clipped-count-stddev": 1.0}
    with pytest.raises(ConfigError, match=r"dp-clipped-count-stddev = 1.0 \(allowed: > dp-noise-multiplier / 2 = 1.5"):
        AppConfig.from_run_config(adaptive)


def test_local_dp_needs_a_per_client_target(default_run_config):
    with pytest.raises(ConfigError, match=r"dp-target-epsilon = 0.0 \(allowed: > 0 with dp-mode = 'local'"):
        AppConfig.from_run_config(default_run_config | {"dp-mode": "local"})


def test_auto_keys_follow_the_dp_mode_and_explicit_values_win(default_run_config):
    from fl_app.config import auto_settings, auto_table

    plain = AppConfig.from_run_config(default_run_config)
    central_config = default_run_config | {"dp-mode": "central", "dp-target-epsilon": 2.0}
    central = AppConfig.from_run_config(central_config)
    assert auto_settings(default_run_config) == auto_table()["plain"]
    assert auto_settings(central_config) == auto_table()["central-dp"]
    local_config = default_run_config | {"dp-mode": "local", "dp-target-epsilon": 3.0}
    assert auto_settings(local_config) == auto_table()["local-dp"]
    assert AppConfig.from_run_config(local_config).train.batch_size == auto_table()["local-dp"]["batch-size"]
    for key, value in auto_table()["central-dp"].items():
        assert central.to_run_config()[key] == value
    assert (plain.train.model, central.train.model) == ("cnn", "tanh-cnn")
    assert AppConfig.from_run_config(central_config | {"model": "cnn"}).train.model == "cnn"
    assert central.to_run_config()["model"] == "tanh-cnn"  # config.json holds what ran
    with pytest.raises(ConfigError, match=r"^Invalid run-config: seed = 'auto' \(allowed: an integer >= 0\)$"):
        AppConfig.from_run_config(default_run_config | {"seed": "auto"})
    with pytest.raises(ConfigError, match=r"model = 'mlp' \(allowed: one of 'cnn', 'tanh-cnn', or 'auto'\)"):
        AppConfig.from_run_config(default_run_config | {"model": "mlp"})


def test_values_that_used_to_fail_late_are_refused_up_front(default_run_config):
    """Each of these passed validation and then failed in round 1 or trained a NaN model."""
    central = default_run_config | {"dp-mode": "central", "dp-noise-multiplier": 1.0}
    cfg = AppConfig.from_run_config(central | {"dp-clients-per-round": 10})
    with pytest.raises(ConfigError, match=r"dp-clients-per-round = 10 \(allowed: at most the 3 clients"):
        check_partitioning(cfg, 3, 60_000)
    with pytest.raises(ConfigError,
                       match=r"dp-noise-multiplier = 1e-300 \(allowed: 0 or a number in \[1e-06, 1e\+06\]"):
        AppConfig.from_run_config(central | {"dp-noise-multiplier": 1e-300})
    with pytest.raises(ConfigError, match=r"dp-clipping-norm = 1e\+308 \(allowed: a number in \(0, 1e\+06\]"):
        AppConfig.from_run_config(central | {"dp-clipping-norm": 1e308})
    tiny = AppConfig.from_run_config(default_run_config | {"samples-per-client": 2, "validation-fraction": 0.9})
    with pytest.raises(ConfigError, match=r"validation-fraction = 0.9 \(allowed: a fraction that leaves at least "
                                          r"one of samples-per-client = 2 samples to train on"):
        check_partitioning(tiny, 10, 60_000)


def _documented_config_rows() -> dict[str, list[str]]:
    """key -> [default cells] of the `| key | default | allowed | meaning |` tables in
    README.md and docs/*.md (docs/configuration.md holds them all)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rows: dict[str, list[str]] = {}
    in_table = False
    text = "\n".join(path.read_text() for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))])
    for line in text.splitlines():
        if line.startswith("| key | default | allowed | meaning |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if not in_table or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        keys = re.findall(r"`([a-z0-9-]+)`", cells[0])
        defaults = cells[1].split(", ") if len(keys) > 1 else [cells[1]]
        assert len(defaults) == len(keys), line
        for key, default in zip(keys, defaults, strict=True):
            rows.setdefault(key, []).append(default)
    return rows


def _same(cell: str, value) -> bool:
    cell = cell.strip("`'\"")
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, int | float):
        return float(cell) == float(value)
    return cell == value


def test_the_documented_config_tables_match_the_declaration(default_run_config):
    """Every key of [tool.flwr.app.config] is documented once, with its default (and, for
    `auto`, the values of [tool.fl-app.auto]), and the docs document no other key."""
    import re

    from fl_app.config import auto_table

    rows = _documented_config_rows()
    assert set(rows) == set(default_run_config) == set(RULES)
    auto = auto_table()
    for key, (cell, *more) in rows.items():
        assert not more, f"{key} is documented {1 + len(more)} times"
        value = default_run_config[key]
        if value == "auto":
            m = re.fullmatch(r"`auto` \((.+); central DP: (.+); local DP: (.+)\)", cell)
            assert m, f"{key}: {cell}"
            assert _same(m.group(1), auto["plain"][key]) and _same(m.group(2), auto["central-dp"][key]), (key, cell)
            assert _same(m.group(3), auto["local-dp"][key]), (key, cell)
        else:
            assert _same(cell, value), (key, cell, value)


@pytest.mark.parametrize("key, value", [("min-fit-clients", 2), ("max-failure-fraction", 0.5)])
def test_round_skips_are_refused_under_central_dp(default_run_config, key, value):
    central = default_run_config | {"dp-mode": "central", "dp-noise-multiplier": 1.0}
    never_skip = AppConfig.from_run_config(central)
    assert (never_skip.strategy.min_fit_clients, never_skip.strategy.max_failure_fraction) == (1, 1.0)
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(central | {key: value})
    assert str(err.value).startswith(f"Invalid run-config: {key} = {value} (allowed: 'auto' (= ")
    assert AppConfig.from_run_config(default_run_config | {key: value}).to_run_config()[key] == value


def test_each_key_is_declared_once_with_its_rule_beside_its_field():
    from dataclasses import MISSING, fields

    from fl_app.config import DECLARED, SECTIONS

    keys = [f.metadata["key"] for cls in SECTIONS.values() for f in fields(cls)]
    assert len(keys) == len(set(keys)) == len(DECLARED) == len(RULES)
    assert all(f.default is MISSING and f.default_factory is MISSING for cls in SECTIONS.values() for f in fields(cls))


def test_clients_validate_a_run_config_once_and_never_import_the_strategy_module(default_run_config):
    import sys

    from fl_app.config import client_config

    run_config = default_run_config | {"strategy": "not_a_module_anywhere:Strategy"}
    with pytest.raises(ConfigError, match="cannot import module 'not_a_module_anywhere'"):
        AppConfig.from_run_config(run_config)
    cfg = client_config(run_config)
    assert client_config(dict(reversed(list(run_config.items())))) is cfg
    assert cfg.strategy.name == "not_a_module_anywhere:Strategy" and "not_a_module_anywhere" not in sys.modules


@pytest.mark.parametrize("every", [0, 2])
def test_checkpoint_every_is_1_under_central_dp(default_run_config, every):
    """Every released round is checkpointed before it leaves the server (see test_checkpoint.py)."""
    central = default_run_config | {"dp-mode": "central", "dp-noise-multiplier": 1.0}
    assert AppConfig.from_run_config(central).run.checkpoint_every == 1
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(central | {"checkpoint-every": every})
    assert str(err.value).startswith(f"Invalid run-config: checkpoint-every = {every} (allowed: 1 with dp-mode = "
                                     "'central': each released round is checkpointed before it leaves the server")
    assert AppConfig.from_run_config(default_run_config | {"checkpoint-every": every}).run.checkpoint_every == every


def test_a_server_schedule_needs_central_dp(default_run_config):
    with pytest.raises(ConfigError) as err:
        AppConfig.from_run_config(default_run_config | {"server-lr-schedule": "cosine"})
    assert str(err.value) == ("Invalid run-config: server-lr-schedule = 'cosine' (allowed: 'constant', or "
                              "'cosine' with dp-mode = 'central' or 'distributed' (it scales DP-FedAvg's noised mean))")
    central = default_run_config | {"dp-mode": "central", "dp-noise-multiplier": 1.0, "server-lr-schedule": "cosine"}
    assert AppConfig.from_run_config(central).strategy.server_lr_schedule == "cosine"
