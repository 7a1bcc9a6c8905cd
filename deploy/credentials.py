"""Credentials for a TLS-encrypted, node-authenticated federation.

`ca`: a certificate authority (self-signed, EC P-384) that the SuperNodes and the
operator's `flwr` CLI trust. `server`: the SuperLink's certificate, signed by that CA,
whose subject alternative names list every host name and IP address the SuperLink is
reached at (TLS clients check the address they dial against them), plus 127.0.0.1 and
localhost: a SuperLink listening on all interfaces has its own SuperExec and ServerApp
connect to it over loopback, with TLS. `node-keys`: one EC
P-384 key pair per SuperNode in OpenSSH format, the private key for `flower-supernode
--auth-supernode-private-key`, the public key for `flwr supernode register`.

All cryptography is the `cryptography` package's; nothing here is hand-rolled.

    python -m deploy.credentials ca --out certificates
    python -m deploy.credentials server --ca certificates --out certificates \
        --host superlink.example.org --host 10.0.0.5
    python -m deploy.credentials node-keys --out keys site-a site-b site-c
"""

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
DEFAULT_DAYS = 365
LOOPBACK = ("127.0.0.1", "localhost")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write `data` to `path`; private keys are readable by their owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def san_entry(host: str) -> x509.GeneralName:
    """An IP-address SAN for an IP, a DNS-name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca(out_dir: Path, common_name: str = "fl-app federation CA", days: int = 3650) -> Path:
    """Write a self-signed CA certificate and key to `out_dir`; return the certificate path."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(out_dir / CA_KEY, _pem_key(key), private=True)
    return _write(out_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))


def make_server_certificate(
    ca_dir: Path,
    out_dir: Path,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    valid_from: dt.datetime | None = None,
) -> Path:
    """Write the SuperLink's key and a certificate signed by the CA in `ca_dir`, valid
    for `days` days from `valid_from` (default: now) for every name/IP in `hosts` and
    for `LOOPBACK`."""
    if not hosts:
        raise ValueError("at least one --host (a name or IP the SuperLink is reached at) is needed")
    hosts = list(dict.fromkeys([*hosts, *LOOPBACK]))
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP384R1())
    start = valid_from or _now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san_entry(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(out_dir / SERVER_KEY, _pem_key(key), private=True)
    return _write(out_dir / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def make_node_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>` (private) and `<name>.pub` (public), an EC P-384 pair in OpenSSH
    format; return their paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return (
        _write(out_dir / name, private, private=True),
        _write(out_dir / f"{name}.pub", public + f" {name}\n".encode()),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.credentials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("ca", help="create a certificate authority")
    ca.add_argument("--out", type=Path, required=True)
    ca.add_argument("--days", type=int, default=3650)
    server = commands.add_parser("server", help="create the SuperLink's certificate")
    server.add_argument("--ca", type=Path, required=True, help="directory holding ca.crt, ca.key")
    server.add_argument("--out", type=Path, required=True)
    server.add_argument("--host", action="append", required=True,
                        help="a host name or IP the SuperLink is reached at (repeat)")
    server.add_argument("--days", type=int, default=DEFAULT_DAYS)
    nodes = commands.add_parser("node-keys", help="create SuperNode authentication keys")
    nodes.add_argument("--out", type=Path, required=True)
    nodes.add_argument("names", nargs="+", help="one name per SuperNode")
    args = parser.parse_args(argv)

    if args.command == "ca":
        print(f"CA certificate: {make_ca(args.out, days=args.days)}")
    elif args.command == "server":
        path = make_server_certificate(args.ca, args.out, args.host, days=args.days)
        hosts = dict.fromkeys([*args.host, *LOOPBACK])
        print(f"SuperLink certificate: {path} (valid for: {', '.join(hosts)})")
    else:
        for name in args.names:
            private, public = make_node_keys(args.out, name)
            print(f"{name}: private key {private}, public key {public}")


if __name__ == "__main__":
    main()
