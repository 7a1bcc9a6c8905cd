"""bench/dp_utility.py builds each cell's run-config from the recipe of its DP mode;
`--set` (bench/common.py) overrides any key."""

import argparse
from pathlib import Path

import pytest

from bench.common import add_set
from bench.dp_utility import result_line, run_config
from fl_app.config import APP_DIR, AppConfig, auto_table, project_defaults


def args(**kw) -> argparse.Namespace:
    base = dict(seed=7, samples_per_client=0, partitioner="iid", num_clients=10, delta=1e-5, dp_mode="central",
                rounds=None, model=None, clients_per_round=None, set=[])
    return argparse.Namespace(**(base | kw))


def resolved(config: dict) -> AppConfig:
    return AppConfig.from_run_config(project_defaults(APP_DIR) | config)


def test_a_local_cell_uses_the_local_recipe_and_its_no_noise_cell_the_same_recipe_without_dp_sgd():
    noised = resolved(run_config(args(dp_mode="local"), 3.0, Path("data"), Path("out")))
    plain = resolved(run_config(args(dp_mode="local"), 0.0, Path("data"), Path("out")))
    assert (noised.dp.mode, noised.dp.target_epsilon, plain.dp.mode) == ("local", 3.0, "off")
    recipe = auto_table()["local-dp"]
    for cfg in (noised, plain):
        assert (cfg.train.model, cfg.train.batch_size, cfg.train.learning_rate, cfg.run.num_server_rounds) == (
            recipe["model"], recipe["batch-size"], recipe["learning-rate"], recipe["num-server-rounds"])
    tuned = resolved(run_config(args(dp_mode="local", rounds=3, set=[("learning-rate", 0.5)]), 0.0,
                                Path("data"), Path("out")))
    assert (tuned.run.num_server_rounds, tuned.train.learning_rate) == (3, 0.5)


def test_a_central_cell_calibrates_sigma_or_adds_almost_none():
    calibrated = resolved(run_config(args(), 2.0, Path("data"), Path("out")))
    ceiling = resolved(run_config(args(), 0.0, Path("data"), Path("out")))
    assert (calibrated.dp.target_epsilon, calibrated.dp.noise_multiplier) == (2.0, 0.0)
    assert ceiling.dp.mode == "central" and 0 < ceiling.dp.noise_multiplier < 1e-5


def test_the_result_line_of_a_local_and_of_a_plain_run():
    history = [{"round": r} for r in range(4)]
    local = {"final_accuracy": 0.97, "best_accuracy": 0.975, "model": "tanh-cnn", "history": history,
             "privacy": {"epsilon": 2.99, "noise_multiplier": [1.1, 1.2], "sampling_rate": [0.04, 0.05],
                         "rounds_accounted": 3}}
    assert result_line(local, 1e-5) == ("final_accuracy=0.9700 best_accuracy=0.9750 epsilon=2.9900 delta=1e-05 "
                                        "noise_multiplier=1.2 sampling_rate=0.0500 rounds=3 model=tanh-cnn")
    plain = local | {"privacy": None}
    assert "epsilon=inf" in result_line(plain, 1e-5) and "rounds=3" in result_line(plain, 1e-5)


def test_set_reads_json_values_else_strings_and_refuses_a_pair_without_equals(capsys):
    parser = argparse.ArgumentParser()
    add_set(parser, "dp-mode=distributed")
    parsed = parser.parse_args(["--set", "secure-aggregation=true", "--set", "dp-bits=18", "--set",
                                "dp-mode=distributed", "--set", "data-dir=a=b"])
    assert parsed.set == [("secure-aggregation", True), ("dp-bits", 18), ("dp-mode", "distributed"),
                          ("data-dir", "a=b")]
    with pytest.raises(SystemExit):
        parser.parse_args(["--set", "dp-bits"])
    assert "argument --set: expected KEY=VALUE, got 'dp-bits'" in capsys.readouterr().err
