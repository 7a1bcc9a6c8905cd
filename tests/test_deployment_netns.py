"""The deployment across hosts: the SuperLink, the operator and three SuperNodes each in
their own network namespace (own interfaces and IPs, joined by veth pairs on a bridge),
the SuperLink's certificate naming only its IP. Skipped, with the reason, where this
machine cannot create network namespaces."""

import subprocess
import sys
import uuid

import pytest
from deployment import CONNECTION, Federation, history, make_credentials, wait_until

from data.site_data import write_mnist_partition
from fl_app.deploy.preflight import PreflightError, check_superlink_connection

pytestmark = pytest.mark.integration

SUBNET = "10.77.0"
SUPERLINK_IP = f"{SUBNET}.1"
HOSTS = ("operator", "site-0", "site-1", "site-2")


def ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be created here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    probe = f"flprobe{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except FileNotFoundError:
        return "the `ip` tool (iproute2) is not installed"
    except subprocess.CalledProcessError as err:
        return f"`ip netns add` failed (needs root or CAP_NET_ADMIN): {err.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@pytest.fixture(scope="module")
def network():
    """Namespace name per host: the SuperLink's holds a bridge at SUPERLINK_IP, every
    other host a veth interface on that bridge with its own address."""
    reason = namespaces_unavailable()
    if reason:
        print(f"SKIPPED multi-host deployment test: {reason}")
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    names = {host: f"fl{tag}-{host}" for host in ("superlink", *HOSTS)}
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", namespace=ns)
        link = names["superlink"]
        ip("link", "add", "br0", "type", "bridge", namespace=link)
        ip("addr", "add", f"{SUPERLINK_IP}/24", "dev", "br0", namespace=link)
        ip("link", "set", "br0", "up", namespace=link)
        for i, host in enumerate(HOSTS):
            outer, inner = f"v{tag}{i}b", f"v{tag}{i}a"
            ip("link", "add", inner, "netns", names[host], "type", "veth", "peer", "name", outer,
               "netns", link)
            ip("link", "set", outer, "master", "br0", namespace=link)
            ip("link", "set", outer, "up", namespace=link)
            ip("addr", "add", f"{SUBNET}.{10 + i}/24", "dev", inner, namespace=names[host])
            ip("link", "set", inner, "up", namespace=names[host])
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_federation_across_network_namespaces(network, tmp_path, mnist_dir):
    certs, keys = make_credentials(tmp_path, [SUPERLINK_IP], ["site-0", "site-1", "site-2"])
    fed = Federation(tmp_path, certs, keys, SUPERLINK_IP, netns={"operator": network["operator"]})
    try:
        fed.start("superlink", [sys.executable, "-m", "fl_app.deploy.superlink", "--certificates", str(certs),
                                "--host", "0.0.0.0", "--port", str(fed.port),
                                "--database", str(tmp_path / "superlink" / "state.db")],
                  namespace=network["superlink"])
        wait_until(lambda: fed.flwr("supernode", "list", CONNECTION).returncode == 0, 90,
                   "the SuperLink, from the operator's namespace", interval=2)
        # this test's own namespace has no route to the SuperLink: the hosts are apart
        with pytest.raises(PreflightError, match="Cannot reach the SuperLink"):
            check_superlink_connection(fed.address, certs / "ca.crt", wait=0, timeout=2)
        for i, site in enumerate(("site-0", "site-1", "site-2")):
            fed.register(site)
            write_mnist_partition(mnist_dir, tmp_path / "data" / site, i, 3, max_samples=600)
            fed.start(site, fed.supernode_command(site, tmp_path / "data" / site),
                      namespace=network[site])
        wait_until(lambda: fed.online() == 3, 90, "3 SuperNodes online", interval=3)
        out = tmp_path / "outputs"
        run_id, status = fed.run(
            f"num-server-rounds=1 eval-samples=2000 local-epochs=1 fraction-evaluate=0 "
            f"data-download=false data-dir='{mnist_dir}' min-available-clients=3", out)
        assert status == "finished:completed", fed.run_log(run_id)
        rows, summary = history(out)
        assert [r["num_fit_clients"] for r in rows[1:]] == [3]
        assert summary["final_accuracy"] > 0.5, summary  # one round; chance: 0.1
    finally:
        fed.stop()
