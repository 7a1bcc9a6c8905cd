"""A real networked federation, started the way docs/deployment.md says: a SuperLink with
TLS and SuperNode authentication, SuperNodes with their own data, runs submitted with
`flwr run . deployment`. Loopback here; separate network namespaces in
test_deployment_netns.py. The runs are few and short: each round starts a ClientApp
process per node."""

import math
import subprocess

import psutil
import pytest
from deployment import SCRIPTS, Federation, history, make_credentials, wait_until

from data.site_data import write_mnist_partition
from fl_app.deploy.credentials import make_ca, make_node_keys
from fl_app.local_superlink import free_port
from fl_app.secagg_params import unmask_threshold
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.distributed import noise_growth
from strategies.privacy.skellam import skellam_epsilon

pytestmark = pytest.mark.integration

SITES = ("site-0", "site-1", "site-2")
FAST = ("num-server-rounds={rounds} eval-samples=2000 local-epochs=1 fraction-evaluate=0 "
        "data-download=false data-dir='{mnist}'")


@pytest.fixture(scope="module")
def federation(tmp_path_factory, mnist_dir):
    """SuperLink on 127.0.0.1 + 3 registered SuperNodes with 600 samples of their own
    each, + a registered SuperNode whose data-dir is empty, + an unregistered one."""
    root = tmp_path_factory.mktemp("deployment")
    certs, keys = make_credentials(root, ["127.0.0.1", "localhost"], [*SITES, "site-empty", "intruder"])
    fed = Federation(root, certs, keys, "127.0.0.1")
    try:
        fed.start_superlink(listen="127.0.0.1")
        for key in (*SITES, "site-empty"):
            fed.register(key)
        for i, name in enumerate(SITES):
            write_mnist_partition(mnist_dir, root / "data" / name, i, len(SITES), max_samples=600)
            fed.start(name, fed.supernode_command(name, root / "data" / name))
        (root / "data" / "empty").mkdir()
        # Started without the launcher's checks, as an operator might: it connects, and
        # its ClientApp fails on the missing data.
        fed.start("site-empty", [str(SCRIPTS / "flower-supernode"), "--superlink", fed.address,
                                 "--root-certificates", str(certs / "ca.crt"),
                                 "--auth-supernode-private-key", str(keys / "site-empty"),
                                 "--port", str(free_port()),
                                 "--node-config", f'data-dir="{root / "data" / "empty"}"'])
        fed.start("intruder", fed.supernode_command("intruder", root / "data" / "site-0"))
        wait_until(lambda: fed.online() == 4, 90, "4 SuperNodes online", interval=3)
        yield fed
    finally:
        fed.stop()


def test_unregistered_supernode_is_refused(federation):
    intruder = federation.processes["intruder"]
    wait_until(lambda: intruder.poll() is not None, 60, "the unregistered SuperNode to exit")
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in federation.log("intruder").read_text()
    assert "No SuperNode found with the given public key" in federation.log("superlink").read_text()
    assert len(federation.nodes()) == 4  # the registered ones only


def test_supernode_trusting_another_ca_cannot_connect(federation, tmp_path):
    make_ca(tmp_path / "other-ca")
    make_node_keys(tmp_path, "site-x")
    command = federation.supernode_command("site-x", federation.root / "data" / "site-0")
    command[command.index("--root-certificates") + 1] = str(tmp_path / "other-ca" / "ca.crt")
    command[command.index("--private-key") + 1] = str(tmp_path / "site-x")
    launcher = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert launcher.returncode == 2
    assert "is not signed by the CA in" in launcher.stderr
    # Flower's own SuperNode, without the launcher's check, fails the TLS handshake too
    raw = federation.start("raw-other-ca", [
        str(SCRIPTS / "flower-supernode"), "--superlink", federation.address,
        "--root-certificates", str(tmp_path / "other-ca" / "ca.crt"),
        "--auth-supernode-private-key", str(tmp_path / "site-x"),
        "--port", str(free_port()), "--node-config", "partition-id=0 num-partitions=1"])
    wait_until(lambda: raw.poll() is not None, 60, "the SuperNode trusting another CA to exit")
    assert raw.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.log("raw-other-ca").read_text()
    assert len(federation.nodes()) == 4


def test_site_killed_mid_run_central_dp_then_readmitted_and_training(federation, tmp_path, mnist_dir):
    """1. Central DP over the deployment, site-2 killed while it trains in round 1: the
    run completes with the others, the failure is logged, ε is the accountant's for every
    round. The node without data is in the population (N = 4, q = 1) and fails whenever
    sampled. 2. site-2 restarted: the next run, 1 plain round, trains on all three sites
    (the node without data failing each round, the intruder never taking part), ends
    `finished:completed`, writes its run directory and learns."""
    out = tmp_path / "dp"
    sigma = 0.02  # ε is large; what matters is that it is the accountant's
    config = (FAST.format(rounds=2, mnist=mnist_dir) + f" min-available-clients=2 "
              f"output-dir='{out}' dp-mode='central' dp-noise-multiplier={sigma} "
              "dp-clients-per-round=4 dp-clipping-norm=1.0 round-timeout=150 "
              "dp-release-unprotected-metrics=true")
    run_id = federation.submit(config)
    # The server first asks every node for its client key (a ClientApp process each); the
    # second ClientApp process of site-2 in this run is its training in round 1.
    site = psutil.Process(federation.processes["site-2"].pid)
    seen: list[int] = []

    def training() -> bool:
        seen.extend(pid for pid in sorted(_clientapps(site)) if pid not in seen)
        return len(seen) >= 2
    wait_until(training, 180, "site-2 to start training", interval=0.05)
    federation.kill("site-2")
    assert federation.wait_for_run(run_id, out, 400) == "finished:completed", federation.run_log(run_id)
    rows, summary = history(out)
    # round 1: site-2 killed, the node without data failed; round 2: site-2 is offline
    assert [(r["num_fit_clients"], r["num_fit_failures"]) for r in rows[1:]] == [(2, 2), (2, 1)]
    log = federation.run_log(run_id)
    assert log.count("round 1: a client failed") == 2 and log.count("round 2: a client failed") == 1
    assert "No usable data in data-dir" in log and "missing train-images-idx3-ubyte" in log
    privacy = summary["privacy"]
    assert privacy["population"] == 4 and privacy["sampling_rate"] == 1.0
    assert privacy["unprotected_metrics_released"] is True
    accountant = ClientLevelAccountant("rdp", 1e-5)
    epsilons = []
    for _ in range(2):
        accountant.step(sigma, 1.0)
        epsilons.append(accountant.epsilon())
    assert [r["epsilon"] for r in rows[1:]] == pytest.approx(epsilons, rel=1e-9)
    assert privacy["epsilon"] == pytest.approx(epsilons[-1], rel=1e-9)

    # Restarted once the SuperLink has marked its old session offline, it is admitted again
    wait_until(lambda: federation.online() == 3, 120, "site-2 to be marked offline", interval=3)
    federation.start("site-2", federation.supernode_command("site-2", federation.root / "data" / "site-2"))
    wait_until(lambda: federation.online() == 4, 90, "site-2 back online", interval=3)
    again = tmp_path / "again"
    one_round = FAST.format(rounds=1, mnist=mnist_dir).replace("local-epochs=1", "local-epochs=3")
    run_id, status = federation.run(one_round + " min-available-clients=4", again)
    assert status == "finished:completed", federation.run_log(run_id)
    rows, summary = history(again)
    assert [r["round"] for r in rows] == [0, 1]
    assert (rows[1]["num_fit_clients"], rows[1]["num_fit_failures"]) == (3, 1)
    assert summary["final_accuracy"] > 0.6, summary  # chance: 0.1
    for name in ("config.json", "model.pt", "summary.json", "checkpoint.npz"):
        assert (next(again.iterdir()) / name).is_file()


def test_distributed_dp_over_the_tls_deployment(federation, tmp_path, mnist_dir):
    """Distributed DP over the TLS deployment: every node is sampled (N = 4, q = 1), the
    node without data drops out of SecAgg+ in its training stage, the three others'
    noised integer vectors are unmasked; the run completes with both statements, each
    the Skellam accountant's, and no SecAgg+ stage line in the run's log."""
    out = tmp_path / "distributed"
    config = (FAST.format(rounds=1, mnist=mnist_dir) + " min-available-clients=4 dp-mode='distributed' "
              "dp-clipping='client' secure-aggregation=true dp-clients-per-round=4 dp-noise-multiplier=1.0 "
              "dp-clipping-norm=1.0 round-timeout=150")
    run_id, status = federation.run(config, out, 500)
    assert status == "finished:completed", federation.run_log(run_id)
    rows, summary = history(out)
    privacy = summary["privacy"]
    assert (privacy["mode"], privacy["population"], privacy["sampling_rate"]) == ("distributed", 4, 1.0)
    (mechanism,) = privacy["mechanisms"]
    growth = noise_growth(4, lambda k: unmask_threshold(k, 1.0, 0.5))
    assert mechanism["noise_growth"] == growth == 2.0
    l2, l1 = mechanism["sensitivity"], mechanism["l1_sensitivity"]
    assert rows[1]["epsilon"] == pytest.approx(skellam_epsilon(1.0, l2, l1, 1.0, 1, 1e-5), rel=1e-9)
    assert privacy["epsilon_against_server"] == pytest.approx(
        skellam_epsilon(1.0 / math.sqrt(growth), l2, l1, 1.0, 1, 1e-5), rel=1e-9)
    assert "[Stage" not in federation.run_log(run_id)

def _clientapps(supernode: psutil.Process) -> set[int]:
    """PIDs of the ClientApp processes the SuperNode runs now."""
    found = set()
    for child in supernode.children(recursive=True):
        try:
            if "flwr-clientapp" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return found
