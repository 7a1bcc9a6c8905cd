"""The operator tooling in fl_app/deploy/: credentials are what TLS clients accept, and each
common mistake gets its own message (against small TLS servers on loopback)."""

import datetime as dt
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from data.site_data import SiteDataError, load_site_data, read_idx, write_mnist_partition, write_site_data
from fl_app.deploy.credentials import make_ca, make_node_keys, make_server_certificate
from fl_app.deploy.preflight import (
    PreflightError,
    check_node_key,
    check_superlink_connection,
    check_superlink_credentials,
)
from fl_app.deploy.supernode import check_data, node_config
from fl_app.local_superlink import free_port

REPO = Path(__file__).resolve().parents[1]


class TLSServer:
    """Accepts TLS handshakes on 127.0.0.1 with the given certificate (or plain TCP)."""

    def __init__(self, cert_dir: Path | None, host: str = "127.0.0.1"):
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.context = None
        if cert_dir is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert_dir / "server.crt", cert_dir / "server.key")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.context:
                    conn = self.context.wrap_socket(conn, server_side=True)
                else:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    def __enter__(self) -> "TLSServer":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.fixture
def ca(tmp_path):
    """A CA in its own directory (ca.key, ca.crt), as the operator keeps it."""
    make_ca(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def pki(ca, tmp_path):
    """The SuperLink's folder: ca.crt and a certificate for 127.0.0.1 and localhost."""
    certs = tmp_path / "certs"
    make_server_certificate(ca, certs, ["127.0.0.1", "localhost"])
    return certs


def test_server_certificate_names_every_host_and_is_signed_by_the_ca(pki):
    cert = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert (pki / "server.key").stat().st_mode & 0o077 == 0  # private key: owner only
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "server.crt", "server.key"]
    assert check_superlink_credentials(pki, "127.0.0.1") == ["localhost", "127.0.0.1"]


def test_node_keys_are_what_flower_accepts(tmp_path):
    private, public = make_node_keys(tmp_path, "site-a")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert serialization.load_ssh_public_key(public.read_bytes()).public_numbers() == \
        key.public_key().public_numbers()
    check_node_key(private)
    with pytest.raises(PreflightError, match="is not an OpenSSH EC private key"):
        check_node_key(public)
    with pytest.raises(PreflightError, match="does not exist"):
        check_node_key(tmp_path / "nope")


def test_a_verified_handshake_passes(pki):
    with TLSServer(pki) as server:
        check_superlink_connection(f"127.0.0.1:{server.port}", pki / "ca.crt", wait=0)
        check_superlink_connection(f"localhost:{server.port}", pki / "ca.crt", wait=0)


def test_wrong_address_is_named(pki):
    port = free_port()
    with pytest.raises(PreflightError, match=rf"Cannot reach the SuperLink at 127.0.0.1:{port} "
                                             r"\(Connection refused"):
        check_superlink_connection(f"127.0.0.1:{port}", pki / "ca.crt", wait=0)
    with pytest.raises(PreflightError, match="is not host:port"):
        check_superlink_connection("127.0.0.1", pki / "ca.crt", wait=0)
    with pytest.raises(PreflightError, match="cannot be resolved"):
        check_superlink_connection("no-such-host.invalid:8000", pki / "ca.crt", wait=0)


def test_certificate_from_another_ca_is_named(pki, tmp_path):
    make_ca(tmp_path / "other")
    with TLSServer(pki) as server:
        with pytest.raises(PreflightError, match="is not signed by the CA in .*other/ca.crt"):
            check_superlink_connection(f"127.0.0.1:{server.port}", tmp_path / "other" / "ca.crt", wait=0)


def test_certificate_for_another_host_is_named(ca, pki, tmp_path):
    make_server_certificate(ca, tmp_path / "elsewhere", ["superlink.example.org", "10.9.8.7"])
    with TLSServer(tmp_path / "elsewhere", host="127.0.0.2") as server:  # 127/8 is all loopback
        with pytest.raises(PreflightError, match="valid for superlink.example.org, localhost, "
                                                 "10.9.8.7, 127.0.0.1, not for '127.0.0.2'"):
            check_superlink_connection(f"127.0.0.2:{server.port}", pki / "ca.crt", wait=0)
    with pytest.raises(PreflightError, match="not for 10.0.0.1 "):
        check_superlink_credentials(pki, "10.0.0.1")
    assert check_superlink_credentials(pki, "0.0.0.0")  # all interfaces: its SuperExec dials 127.0.0.1


def test_expired_certificate_is_named(ca, pki, tmp_path):
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    make_server_certificate(ca, tmp_path / "old", ["127.0.0.1"], days=30, valid_from=past)
    with TLSServer(tmp_path / "old") as server:
        with pytest.raises(PreflightError, match="certificate expired on 2020-01-31"):
            check_superlink_connection(f"127.0.0.1:{server.port}", pki / "ca.crt", wait=0)
    with pytest.raises(PreflightError, match="SuperLink certificate expired on 2020-01-31"):
        check_superlink_credentials(tmp_path / "old", "127.0.0.1")


def test_plain_server_and_mismatched_key_are_named(ca, pki, tmp_path):
    with TLSServer(None) as server:
        with pytest.raises(PreflightError, match="TLS handshake with the SuperLink .* failed"):
            check_superlink_connection(f"127.0.0.1:{server.port}", pki / "ca.crt", wait=0)
    make_server_certificate(ca, tmp_path / "second", ["127.0.0.1"])
    (pki / "server.key").write_bytes((tmp_path / "second" / "server.key").read_bytes())
    with pytest.raises(PreflightError, match="does not belong to its certificate"):
        check_superlink_credentials(pki, "127.0.0.1")


def test_superlink_launcher_refuses_bad_credentials_before_starting(pki, tmp_path):
    (pki / "server.crt").unlink()
    result = subprocess.run([sys.executable, "-m", "fl_app.deploy.superlink", "--certificates", str(pki),
                             "--port", str(free_port())], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: SuperLink certificate '{pki / 'server.crt'}' does not exist"


def test_site_data_round_trip_and_checks(tmp_path, mnist_dir):
    count = write_mnist_partition(mnist_dir, tmp_path / "site", 1, 4, max_samples=50)
    data = load_site_data(tmp_path / "site")
    assert count == len(data) == 50 and data.images.shape == (50, 1, 28, 28)
    assert abs(float(data.images.mean())) < 0.2  # normalised like MNIST
    images = read_idx(tmp_path / "site" / "MNIST" / "raw" / "train-images-idx3-ubyte")
    assert images.dtype == np.uint8 and images.shape == (50, 28, 28)

    write_site_data(tmp_path / "bad", np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 12], np.uint8))
    with pytest.raises(SiteDataError, match="label 12 found"):
        load_site_data(tmp_path / "bad")
    write_site_data(tmp_path / "short", np.zeros((3, 28, 28), np.uint8), np.array([1, 2], np.uint8))
    with pytest.raises(SiteDataError, match="3 images but labels of shape"):
        load_site_data(tmp_path / "short")
    with pytest.raises(SiteDataError, match="missing train-images-idx3-ubyte"):
        load_site_data(tmp_path / "empty")


def test_supernode_launcher_checks_data_and_node_config(tmp_path, mnist_dir):
    write_mnist_partition(mnist_dir, tmp_path / "site", 0, 10, max_samples=20)
    assert check_data(tmp_path / "site", None, None) == f"own data: 20 samples in {tmp_path / 'site'}"
    assert check_data(Path(mnist_dir), 2, 3).startswith("demo data: partition 2 of 3")
    with pytest.raises(PreflightError, match="No usable data in data-dir"):
        check_data(tmp_path, None, None)
    with pytest.raises(PreflightError, match="give both --partition-id and --num-partitions"):
        check_data(Path(mnist_dir), 2, None)
    with pytest.raises(PreflightError, match="MNIST not found in --data-dir"):
        check_data(tmp_path, 0, 3)
    assert node_config(Path("/d/site a"), None, None) == 'data-dir="/d/site a"'
    assert node_config(Path("/d"), 1, 3) == 'data-dir="/d" partition-id=1 num-partitions=3'


def test_superlink_listening_everywhere_needs_loopback_in_its_certificate(ca, pki, tmp_path, monkeypatch):
    """Its own SuperExec connects to 127.0.0.1 with TLS: Flower fails every run silently
    (runs stay pending) when the certificate does not name it."""
    make_server_certificate(ca, tmp_path / "ip", ["10.1.2.3"])
    cert = x509.load_pem_x509_certificate((tmp_path / "ip" / "server.crt").read_bytes())
    assert "127.0.0.1" in [str(ip) for ip in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)]
    monkeypatch.setattr("fl_app.deploy.credentials.LOOPBACK", ())
    make_server_certificate(ca, pki, ["10.1.2.3"])
    assert check_superlink_credentials(pki, "10.1.2.3") == ["10.1.2.3"]
    with pytest.raises(PreflightError, match="not for 127.0.0.1 .*with --host 0.0.0.0"):
        check_superlink_credentials(pki, "0.0.0.0")
