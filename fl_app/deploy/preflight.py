"""Checks run before a SuperLink or SuperNode starts, so that the failures operators
meet most (wrong address, a certificate from another CA, for another host or expired,
a bad key, missing site data) end in one message that says what to do, instead of a
retry loop or a TLS stack trace."""

import datetime as dt
import ipaddress
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl_app.deploy.credentials import CA_CERT, SERVER_CERT, SERVER_KEY

WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # listen-all -> the SuperLink's own loopback address
REISSUE = "python -m fl_app.deploy.credentials server --ca <ca dir> --out <dir> --host <name or IP> ..."

# OpenSSL verification codes (X509_V_ERR_*) that have a specific remedy.
CERT_NOT_YET_VALID, CERT_EXPIRED = 9, 10
NAME_MISMATCH = (62, 64)  # host name, IP address


class PreflightError(RuntimeError):
    """A deployment problem found before starting; the message says what to do."""


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[addr]:port`) as (host, port)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PreflightError(f"SuperLink address '{address}' is not host:port (e.g. 10.0.0.5:8000)")
    return host, int(port)


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """A PEM certificate, or a PreflightError naming `what` and the file."""
    if not path.is_file():
        raise PreflightError(f"{what} '{path}' does not exist")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise PreflightError(f"{what} '{path}' is not a PEM certificate") from None


def names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def check_dates(cert: x509.Certificate, what: str, now: dt.datetime | None = None) -> None:
    """Refuse a certificate that has expired or is not valid yet."""
    now = now or dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise PreflightError(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new "
            f"one: {REISSUE}"
        )
    if now < cert.not_valid_before_utc:
        raise PreflightError(
            f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
            "(is this machine's clock right?)"
        )


def matches(cert: x509.Certificate, host: str) -> bool:
    """Whether `host` (a name or IP) is among the certificate's SANs."""
    try:
        return ipaddress.ip_address(host) in [
            ipaddress.ip_address(n) for n in names(cert) if _is_ip(n)
        ]
    except ValueError:
        return host.lower() in [n.lower() for n in names(cert) if not _is_ip(n)]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def check_superlink_credentials(cert_dir: Path, host: str) -> list[str]:
    """Check the SuperLink's CA, certificate and key in `cert_dir` before it starts:
    all present, the certificate signed by the CA, matching the key, within its dates
    and naming `host` (loopback when `host` means all interfaces). Returns the names the
    certificate is valid for."""
    ca = load_certificate(cert_dir / CA_CERT, "CA certificate")
    cert = load_certificate(cert_dir / SERVER_CERT, "SuperLink certificate")
    key_path = cert_dir / SERVER_KEY
    if not key_path.is_file():
        raise PreflightError(f"SuperLink key '{key_path}' does not exist")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PreflightError(f"SuperLink key '{key_path}' is not an unencrypted PEM private key") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PreflightError(
            f"SuperLink certificate '{cert_dir / SERVER_CERT}' is not signed by the CA in "
            f"'{cert_dir / CA_CERT}'; issue it again with that CA: {REISSUE}"
        ) from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise PreflightError(f"SuperLink key '{key_path}' does not belong to its certificate")
    check_dates(ca, "CA certificate")
    check_dates(cert, "SuperLink certificate")
    valid_for = names(cert)
    # The SuperLink's own SuperExec connects to --host, or to loopback when it listens on all
    # interfaces, and verifies the certificate like any client.
    dialled = WILDCARD_HOSTS.get(host, host)
    if not matches(cert, dialled):
        raise PreflightError(
            f"SuperLink certificate is valid for {', '.join(valid_for) or 'no host'}, not for "
            f"{dialled} (the SuperLink's own processes connect to it there with --host {host}); "
            f"issue one naming it: {REISSUE}"
        )
    return valid_for


def check_node_key(path: Path) -> None:
    """The SuperNode's authentication key: an OpenSSH EC private key."""
    if not path.is_file():
        raise PreflightError(f"SuperNode private key '{path}' does not exist")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PreflightError(
            f"SuperNode private key '{path}' is not an OpenSSH EC private key; create one "
            "with: python -m fl_app.deploy.credentials node-keys --out <dir> <name>"
        )


def _peer_certificate(host: str, port: int, timeout: float) -> x509.Certificate | None:
    """The certificate the server presents, fetched without verifying it (for messages)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def check_superlink_connection(
    address: str, root_certificates: Path, wait: float = 30.0, timeout: float = 5.0
) -> None:
    """Reach the SuperLink at `address` and complete a TLS handshake that verifies its
    certificate against `root_certificates` and the host name, retrying a refused or
    timed-out connection for up to `wait` seconds."""
    host, port = parse_address(address)
    ca = load_certificate(root_certificates, "Root certificate")
    check_dates(ca, f"Root certificate '{root_certificates}'")
    context = ssl.create_default_context(cafile=str(root_certificates))
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                with context.wrap_socket(sock, server_hostname=host):
                    return
        except socket.gaierror as err:
            raise PreflightError(f"SuperLink host '{host}' cannot be resolved ({err.strerror})") from None
        except ssl.SSLCertVerificationError as err:
            raise PreflightError(_verification_message(err, host, port, root_certificates, timeout)) from None
        except ssl.SSLError as err:
            raise PreflightError(
                f"TLS handshake with the SuperLink at {address} failed ({err.reason}); is it "
                "started with TLS certificates, not --insecure?"
            ) from None
        except OSError as err:
            if time.monotonic() >= deadline:
                reason = err.strerror or type(err).__name__
                raise PreflightError(
                    f"Cannot reach the SuperLink at {address} ({reason}, for {wait:.0f} s): is it "
                    "running, is the address right, and for other machines does it listen on "
                    "--host 0.0.0.0 with the port open in the firewall?"
                ) from None
            time.sleep(1.0)


def _verification_message(
    err: ssl.SSLCertVerificationError, host: str, port: int, root_certificates: Path, timeout: float
) -> str:
    presented = _peer_certificate(host, port, timeout)
    if err.verify_code == CERT_EXPIRED and presented is not None:
        expired = f"{presented.not_valid_after_utc:%Y-%m-%d %H:%M}"
        return (f"The SuperLink's certificate expired on {expired} UTC; the operator must "
                f"issue a new one: {REISSUE}")
    if err.verify_code == CERT_NOT_YET_VALID:
        return "The SuperLink's certificate is not valid yet: check both machines' clocks"
    if err.verify_code in NAME_MISMATCH and presented is not None:
        return (f"The SuperLink's certificate is valid for {', '.join(names(presented))}, not "
                f"for '{host}': connect to one of those, or issue a certificate naming "
                f"'{host}': {REISSUE}")
    issuer = presented.issuer.rfc4514_string() if presented is not None else "unknown"
    return (f"The SuperLink's certificate (issuer: {issuer}) is not signed by the CA in "
            f"'{root_certificates}' ({err.verify_message}); use the ca.crt that the "
            "SuperLink's certificate was issued with")
