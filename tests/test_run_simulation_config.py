"""The simulation launcher (`fl_app.simulate`: `fl-app-simulate`, `run_simulation.py`) refuses
bad input before starting anything: one line, exit 2."""

import pytest

from data.mnist import MNIST_FILES
from fl_app import simulate
from fl_app.local_superlink import RAY_INLINE_BYTES, LocalSuperLink


def run(capsys, *argv: str) -> tuple[int, str]:
    code = simulate.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("batch-size=0", "Invalid run-config: batch-size = 0 (allowed: an integer >= 1, or 'auto')"),
        ("partitioner='zipf'",
         "Invalid run-config: partitioner = 'zipf' (allowed: one of 'iid', 'dirichlet', 'shards')"),
        ("optimizer='lbfgs'", "Invalid run-config: optimizer = 'lbfgs' (allowed: one of 'sgd', 'adam', 'adadelta')"),
        ("dirichlet-alpha=0.0", "Invalid run-config: dirichlet-alpha = 0.0 (allowed: a number in (0, infinity))"),
        ("fraction-fit=1.5", "Invalid run-config: fraction-fit = 1.5 (allowed: a number in (0, 1])"),
        ("num-server-rounds=0", "Invalid run-config: num-server-rounds = 0 (allowed: an integer >= 1, or 'auto')"),
    ],
)
def test_bad_value_stops_with_one_line(capsys, mnist_dir, overrides, message):
    code, err = run(capsys, "--run-config", f"data-dir='{mnist_dir}' {overrides}")
    assert code == 2
    assert err == f"run_simulation: {message}\n"


def test_more_clients_than_samples_is_refused(capsys, mnist_dir):
    code, err = run(capsys, "--num-clients", "60001", "--run-config", f"data-dir='{mnist_dir}'")
    assert code == 2
    assert err.count("\n") == 1 and "num-partitions = 60001 (allowed: 1 to 60000" in err


def test_missing_data_names_directory_and_files(capsys, tmp_path):
    code, err = run(capsys, "--run-config", f"data-dir='{tmp_path}' data-download=false")
    assert code == 2
    assert err.count("\n") == 1 and str(tmp_path) in err
    assert all(name in err for name in MNIST_FILES)


def test_unparseable_run_config_is_explained(capsys):
    code, err = run(capsys, "--run-config", "data-dir=../x")
    assert code == 2
    assert err.startswith("run_simulation: Invalid --run-config 'data-dir=../x'") and err.count("\n") == 1


def test_values_that_used_to_fail_after_start_up_stop_with_one_line(capsys, mnist_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (["--num-clients", "3"], "dp-mode='central' dp-clients-per-round=10 dp-noise-multiplier=1.0",
         "Invalid run-config: dp-clients-per-round = 10 (allowed: at most the 3 clients of this federation)"),
        ([], "dp-mode='central' dp-noise-multiplier=1e-300",
         "Invalid run-config: dp-noise-multiplier = 1e-300 (allowed: 0 or a number in [1e-06, 1e+06])"),
        ([], "dp-mode='central' dp-clipping-norm=1e308 dp-noise-multiplier=1.0",
         "Invalid run-config: dp-clipping-norm = 1e+308 (allowed: a number in (0, 1e+06])"),
        ([], "samples-per-client=2 validation-fraction=0.9",
         "Invalid run-config: validation-fraction = 0.9 (allowed: a fraction that leaves at least one of "
         "samples-per-client = 2 samples to train on)"),
        ([], f"output-dir='{blocker}/outputs'",
         f"Invalid run-config: output-dir = '{blocker}/outputs' (not writable: Not a directory)"),
    ]
    for argv, overrides, message in cases:
        code, err = run(capsys, *argv, "--run-config", f"data-dir='{mnist_dir}' {overrides}")
        assert (code, err) == (2, f"run_simulation: {message}\n")


def test_the_local_superlink_has_ray_pass_small_models_inline_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_max_direct_call_object_size", raising=False)
    link = LocalSuperLink(tmp_path)
    assert link.env()["RAY_max_direct_call_object_size"] == str(RAY_INLINE_BYTES) == "1048576"
    monkeypatch.setenv("RAY_max_direct_call_object_size", "4096")
    assert link.env()["RAY_max_direct_call_object_size"] == "4096"
    assert link.env()["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
