"""Whole federations in Flower's simulation engine: `run_simulation.py` and `flwr run .`
on the local connection. Each test uses its own FLWR_HOME and ports and stops every
process it started. References come from the in-process federation (tests/federation.py)
with one torch thread, as each simulated client has: it equals the simulation bitwise."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
from federation import run_federation
from flwr.common.config import parse_config_args

from fl_app.config import project_defaults
from fl_app.local_superlink import free_port, stop_process_tree
from fl_app.outputs import HISTORY_FIELDS
from fl_app.run_dir import RunDir
from strategies.privacy.skellam import skellam_epsilon

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
QUICK = "samples-per-client=500 num-server-rounds=2 eval-samples=2000 local-epochs=1"


def assert_complete_run_dir(output_dir: Path, rounds: int) -> dict:
    (run_dir,) = output_dir.iterdir()
    for name in ("config.json", "history.jsonl", "summary.json", "model.pt", "curves.png"):
        assert (run_dir / name).is_file(), name
    history = RunDir(run_dir).read_history()
    assert [h["round"] for h in history] == list(range(rounds + 1))
    assert all(set(HISTORY_FIELDS) <= set(h) for h in history)
    assert all(h["num_fit_clients"] == 3 for h in history[1:])
    summary = RunDir(run_dir).read_summary()
    assert summary["rounds"] == rounds
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    return summary


def flower_processes() -> set[int]:
    marks = ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet", "gcs_server")
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(mark in cmdline for mark in marks):
            found.add(proc.info["pid"])
    return found


def in_process_reference(run_config: str, num_clients: int, run_dir: Path) -> list[dict]:
    """The same federation in this process with one torch thread; history.jsonl's rows.
    `run_config` is parsed as `run_simulation.py` parses its --run-config."""
    config = project_defaults(REPO) | parse_config_args([run_config])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_federation(config, num_clients, config["data-dir"], run_dir, node_seed=7)
    finally:
        torch.set_num_threads(threads)


def run_simulation_cli(tmp_path: Path, run_config: str, rounds: int = 2) -> subprocess.CompletedProcess:
    """`run_simulation.py` with 3 clients and `rounds` rounds, run from `tmp_path`."""
    return subprocess.run(
        [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "3", "--rounds", str(rounds),
         "--run-config", run_config],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )


@pytest.fixture
def local_connection(tmp_path):
    """Environment for `flwr run . [local]` with a private FLWR_HOME and free ports;
    stops the background SuperLink that `flwr run` starts."""
    home = tmp_path / "flwr-home"
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}",
    }
    yield env
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "flower-superlink" in cmdline and str(home) in cmdline:
            stop_process_tree(proc.info["pid"])


def flwr(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "flwr"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def run_status(env: dict, cwd: Path, stdout: str) -> dict:
    run_id = stdout.split("Successfully started run ")[1].split()[0]
    listing = flwr(env, cwd, "list", "--run-id", run_id, "--format", "json")
    return json.loads(listing.stdout)["runs"][0]


def test_flwr_run_on_the_local_connection_with_local_dp(tmp_path, mnist_dir, local_connection):
    """`flwr run .` with sample-level DP on the clients: each round logs the clients'
    largest ε, which grows and stays within the target; a bad value fails the run with
    the config message before round 1. (200 samples per client at ε = 8 barely learn in
    two rounds; learning through the simulation is asserted by the resume test.)"""
    workdir = tmp_path / "work"
    workdir.mkdir()
    dp = "dp-mode='local' dp-target-epsilon=8.0 dp-delta=1e-3 dp-max-grad-norm=1.0"
    result = flwr(local_connection, workdir, "run", str(REPO), "--stream",
                  "--run-config", f"{QUICK.replace('=500', '=200')} {dp} data-dir='{mnist_dir}'",
                  "--federation-config", "num-supernodes=3 client-resources-num-cpus=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 2/2 | test acc" in result.stdout and "client epsilon max" in result.stdout
    assert run_status(local_connection, workdir, result.stdout)["status"] == "finished:completed"
    # relative output-dir: under the directory the local SuperLink was started from
    assert_complete_run_dir(workdir / "outputs", rounds=2)
    (run_dir,) = (workdir / "outputs").iterdir()
    history = RunDir(run_dir).read_history()
    maxima = [h["client_epsilon_max"] for h in history[1:]]
    assert 0 < maxima[0] < maxima[1] <= 8.0
    assert all(h["client_epsilon_mean"] <= h["client_epsilon_max"] * (1 + 1e-12) for h in history[1:])

    bad = flwr(local_connection, workdir, "run", str(REPO), "--stream",
               "--run-config", f"batch-size=0 data-dir='{mnist_dir}'",
               "--federation-config", "num-supernodes=3 client-resources-num-cpus=1")
    status = run_status(local_connection, workdir, bad.stdout)
    assert status["status"] == "finished:failed"
    assert "Invalid run-config: batch-size = 0 (allowed: an integer >= 1, or 'auto')" in status["status-details"]
    assert "round 1/" not in bad.stdout


def test_secure_aggregation_releases_the_same_model_as_plain_client_clipping(tmp_path, mnist_dir):
    """Central DP in the simulation with SecAgg+, σ calibrated to spend ε = 8 at δ = 1e-3:
    the server sees only the sum; with every client in the round (q = 1) and the same
    seeded noise, the model equals plain client clipping's (in process) up to SecAgg+'s
    quantization (one round: later rounds would amplify that difference)."""
    dp = ("dp-mode='central' dp-clipping='client' dp-clients-per-round=3.0 dp-noise-multiplier=0.0 "
          "dp-target-epsilon=8.0 dp-delta=1e-3 dp-clipping-norm=2.0 dp-reproducible-noise=true")
    out = tmp_path / "secure"
    result = run_simulation_cli(
        tmp_path, f"{QUICK} {dp} secure-aggregation=true data-dir='{mnist_dir}' output-dir='{out}'", rounds=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "[SUMMARY]" in console and "round 1/1 | test acc" in console
    # the release gate: no line of Flower's SecAgg+ workflow (stage counts, halts), no count of
    # sampled clients or replies, no exact statistic in Flower's History
    assert [mark for mark in ("Secure aggregation", "[Stage", "strategy sampled", "results and",
                              "median_update_norm", "num_rejected", "cohort_size") if mark in console] == []
    (run_dir,) = out.iterdir()
    run = RunDir(run_dir)
    summary, history = run.read_summary(), run.read_history()
    privacy = summary["privacy"]
    assert (privacy["delta"], privacy["accountant"], privacy["sampling_rate"]) == (1e-3, "rdp", 1.0)
    assert privacy["epsilon"] == pytest.approx(history[-1]["epsilon"])
    assert 0.98 * 8.0 <= privacy["epsilon"] <= 8.0  # σ calibrated to spend the budget
    assert privacy["noise_multiplier"] > 0 and privacy["secure_aggregation"] is True
    # q = 1: the clients, who see the cohort, are covered by the same ε
    assert privacy["epsilon_against_sampled_clients"] == pytest.approx(privacy["epsilon"], rel=1e-9)
    assert f"vs sampled clients  {privacy['statement_against_sampled_clients']}" in console

    one_round = QUICK.replace("rounds=2", "rounds=1")
    plain = in_process_reference(f"{one_round} {dp} data-dir='{mnist_dir}'", 3, tmp_path / "plain")
    assert plain[-1]["epsilon"] == history[-1]["epsilon"]
    secure_model, plain_model = torch.load(run.model), torch.load(RunDir(tmp_path / "plain").model)
    difference = max(float((secure_model[k] - plain_model[k]).abs().max()) for k in plain_model)
    assert 0 < difference < 1e-5


def test_distributed_dp_in_the_simulation_sums_the_clients_integers_exactly(tmp_path, mnist_dir):
    """Distributed DP through `run_simulation.py`: the clients add the noise and SecAgg+
    sums their integer vectors; with reproducible noise the released model is bitwise the
    in-process federation's (which adds the residues itself): SecAgg+ loses nothing.
    Both statements are in summary.json, and the console shows neither SecAgg+'s stage
    counts nor exact client figures."""
    dp = ("dp-mode='distributed' dp-clipping='client' secure-aggregation=true dp-clients-per-round=3.0 "
          "dp-noise-multiplier=0.0 dp-target-epsilon=8.0 dp-delta=1e-3 dp-clipping-norm=1.0 "
          "dp-reproducible-noise=true")
    out = tmp_path / "secure"
    result = run_simulation_cli(tmp_path, f"{QUICK} {dp} data-dir='{mnist_dir}' output-dir='{out}'", rounds=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "vs the server" in console and "against the server and the sampled clients too" in console
    assert [mark for mark in ("Secure aggregation", "[Stage", "strategy sampled", "results and",
                              "cohort_size") if mark in console] == []
    (run_dir,) = out.iterdir()
    run = RunDir(run_dir)
    privacy = run.read_summary()["privacy"]
    assert privacy["mode"] == "distributed" and privacy["sampling_rate"] == 1.0
    assert 0.98 * 8.0 <= privacy["epsilon"] <= 8.0
    # q = 1: against the server only the noise differs, μ/g against μ (g = 3/τ(3) = 3/2)
    (mechanism,) = privacy["mechanisms"]
    assert mechanism["noise_growth"] == 1.5 and privacy["epsilon_against_server"] > privacy["epsilon"]
    assert privacy["epsilon_against_server"] == pytest.approx(skellam_epsilon(
        mechanism["noise_multiplier"] / math.sqrt(1.5), mechanism["sensitivity"], mechanism["l1_sensitivity"],
        1.0, 1, 1e-3), rel=1e-9)
    one_round = QUICK.replace("rounds=2", "rounds=1")
    plain = in_process_reference(f"{one_round} {dp} data-dir='{mnist_dir}'", 3, tmp_path / "plain")
    assert plain[-1]["epsilon"] == run.read_history()[-1]["epsilon"]
    secure_model, plain_model = torch.load(run.model), torch.load(RunDir(tmp_path / "plain").model)
    assert all(torch.equal(secure_model[k], plain_model[k]) for k in plain_model)


def test_run_simulation_stops_everything_on_ctrl_c(tmp_path, mnist_dir):
    before = flower_processes()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "2", "--rounds", "50",
         "--run-config", f"samples-per-client=200 eval-samples=500 data-dir='{mnist_dir}' output-dir='{tmp_path}'"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        for line in proc.stdout:
            if "round 0/50" in line:  # the SuperLink, the simulation and Ray are all up
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            stop_process_tree(proc.pid)
    assert proc.returncode == 130
    assert "interrupted; SuperLink and simulation stopped" in out
    assert flower_processes() <= before


@contextmanager
def ray_head(log_path: Path):
    """`ray start --head --block` on a free port; yields (address, Ray's temp dir)."""
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
    address = f"127.0.0.1:{port}"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [str(SCRIPTS / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={ray_tmp}", "--block"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(SCRIPTS / "ray"), "status", f"--address={address}"],
                             capture_output=True).returncode != 0:
            assert head.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1)
        yield address, ray_tmp
        assert head.poll() is None  # the cluster outlives the runs attached to it
    finally:
        stop_process_tree(head.pid, timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_sigkilled_simulation_resumes_on_a_ray_cluster_to_the_same_result(tmp_path, mnist_dir):
    """Same seed, 2 of 3 clients sampled per round: a run on a private Ray instance whose
    whole process tree is SIGKILLed after its first checkpoint, then resumed with
    `run_simulation.py --ray-address` on a Ray cluster (a head node this test starts and
    stops), ends with the same model and history as the uninterrupted run, client
    sampling included (node ids and scheduling differ). No process is left behind."""
    from fl_app.checkpoint import CheckpointError, load_checkpoint

    before = flower_processes()
    config = (f"samples-per-client=300 eval-samples=1000 local-epochs=1 fraction-fit=0.67 "
              f"fraction-evaluate=0.67 min-fit-clients=2 min-evaluate-clients=2 "
              f"min-available-clients=2 data-dir='{mnist_dir}'")
    killed_out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "3", "--rounds", "2",
             "--run-config", config + f" output-dir='{killed_out}'"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)

    def checkpointed() -> bool:
        try:
            return load_checkpoint(next(killed_out.iterdir())).round >= 1
        except (StopIteration, FileNotFoundError, CheckpointError):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            return False
    deadline = time.monotonic() + 300
    while not checkpointed():
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    (run_dir,) = killed_out.iterdir()
    assert not RunDir(run_dir).summary.exists()
    assert flower_processes() <= before

    with ray_head(tmp_path / "ray-head.log") as (address, ray_tmp):
        resumed = subprocess.run(
            [sys.executable, str(REPO / "run_simulation.py"), "--num-clients", "3", "--rounds", "2",
             "--ray-address", address, "--run-config", config + f" resume-from='{run_dir}'"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        # it ran as a job of the head's cluster: its driver and ClientApp actors logged there
        logs = ray_tmp / "session_latest" / "logs"
        assert list(logs.glob("python-core-driver-*.log")), sorted(p.name for p in logs.iterdir())
        assert any("ClientAppActor" in p.read_text(errors="ignore") for p in logs.glob("worker-*.out"))
    assert "Resuming after round 1" in resumed.stdout and "round 2/2 | test acc" in resumed.stdout
    assert "finished:completed" in resumed.stdout and "Run summary" in resumed.stdout
    for name in ("config.json", "history.jsonl", "summary.json", "model.pt", "curves.png", "checkpoint.npz"):
        assert (run_dir / name).is_file(), name
    assert flower_processes() <= before

    reference = in_process_reference(config + " num-server-rounds=2", 3, tmp_path / "reference")
    drop_seconds = [{k: v for k, v in row.items() if k != "seconds"} for row in reference]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in RunDir(run_dir).read_history()] == drop_seconds
    assert [r["num_fit_clients"] for r in reference[1:]] == [2, 2]
    # 2 short rounds, the cosine ending at 0: it learns (chance: 0.1)
    assert reference[-1]["centralized_accuracy"] > 0.4
    a, b = torch.load(RunDir(tmp_path / "reference").model), torch.load(RunDir(run_dir).model)
    assert all(torch.equal(a[k], b[k]) for k in a)
