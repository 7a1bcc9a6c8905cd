"""Credentials for a TLS-encrypted, node-authenticated federation.

`ca`: a certificate authority (self-signed, EC P-384) that the SuperNodes and the
operator's `flwr` CLI trust, written to its own directory (default `ca/`: ca.key and
ca.crt) that stays on the operator's machine; it refuses to replace an existing CA key
without `--force`. `server`: the SuperLink's certificate, signed by that CA, whose
subject alternative names list every host name and IP address the SuperLink is reached
at (TLS clients check the address they dial against them), plus 127.0.0.1 and
localhost: a SuperLink listening on all interfaces has its own SuperExec and ServerApp
connect to it over loopback, with TLS. It writes server.key, server.crt and a copy of
ca.crt to `--out` (default `certificates/`), the folder copied to the SuperLink host,
and refuses an `--out` holding a CA key. `node-keys`: one EC P-384 key pair per
SuperNode in OpenSSH format, the private key for `flower-supernode
--auth-supernode-private-key`, the public key for `flwr supernode register`.

Private keys are created readable and writable by their owner only (mode 0600) from
the start. All cryptography is the `cryptography` package's; nothing here is hand-rolled.

    python -m fl_app.deploy.credentials ca --out ca
    python -m fl_app.deploy.credentials server --ca ca --out certificates \
        --host superlink.example.org --host 10.0.0.5
    python -m fl_app.deploy.credentials node-keys --out keys site-a site-b site-c
"""

import argparse
import datetime as dt
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
# the kinds of CA key that can sign a certificate in every supported `cryptography` (>= 42)
ISSUER_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey,
               ed448.Ed448PrivateKey)
ISSUER_PUBLIC_KEYS = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, dsa.DSAPublicKey, ed25519.Ed25519PublicKey,
                      ed448.Ed448PublicKey)
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
DEFAULT_DAYS = 365
LOOPBACK = ("127.0.0.1", "localhost")
CA_DIR, CERT_DIR = Path("ca"), Path("certificates")  # operator's machine only; SuperLink host


class CredentialsError(RuntimeError):
    """A request the tool refuses; the message says what to do."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes) -> Path:
    """Write public `data` (a certificate, a public key) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_private(path: Path, data: bytes) -> Path:
    """Write a private key to `path`, readable by its owner only from the start: into a
    new file that `mkstemp` creates with mode 0600 (O_EXCL), then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
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


def make_ca(
    out_dir: Path, common_name: str = "fl-app federation CA", days: int = 3650, force: bool = False
) -> Path:
    """Write a self-signed CA certificate and key to `out_dir` (created mode 0700); return
    the certificate path. An existing CA key is replaced only with `force`."""
    if (out_dir / CA_KEY).exists() and not force:
        raise CredentialsError(
            f"CA key '{out_dir / CA_KEY}' already exists; a new CA invalidates every "
            "certificate the old one signed: pass --force to replace it"
        )
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    _write_private(out_dir / CA_KEY, _pem_key(key))
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
    for `LOOPBACK`, plus a copy of the CA certificate, to `out_dir`."""
    if not hosts:
        raise ValueError("at least one --host (a name or IP the SuperLink is reached at) is needed")
    missing = [name for name in (CA_CERT, CA_KEY) if not (ca_dir / name).is_file()]
    if missing:
        raise CredentialsError(
            f"no CA in '{ca_dir}' (missing {', '.join(missing)}); create one with: "
            f"python -m fl_app.deploy.credentials ca --out {ca_dir}"
        )
    hosts = list(dict.fromkeys([*hosts, *LOOPBACK]))
    ca_pem = (ca_dir / CA_CERT).read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    ca_public_key = ca_cert.public_key()
    if not isinstance(ca_key, ISSUER_KEYS) or not isinstance(ca_public_key, ISSUER_PUBLIC_KEYS):
        raise CredentialsError(f"the CA in '{ca_dir}' has a key that cannot sign certificates "
                               f"({type(ca_key).__name__}); an EC, RSA, DSA, Ed25519 or Ed448 key can")
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
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public_key), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out_dir / SERVER_KEY, _pem_key(key))
    if (out_dir / CA_CERT).resolve() != (ca_dir / CA_CERT).resolve():
        _write(out_dir / CA_CERT, ca_pem)
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
        _write_private(out_dir / name, private),
        _write(out_dir / f"{name}.pub", public + f" {name}\n".encode()),
    )


def check_out_dir(out_dir: Path) -> None:
    """Refuse a SuperLink credentials folder that holds a CA key: it is copied to the
    SuperLink host, and the CA key must stay on the operator's machine."""
    if (out_dir / CA_KEY).exists():
        raise CredentialsError(
            f"'{out_dir / CA_KEY}' exists, but '{out_dir}' is copied to the SuperLink host "
            "and the CA key must never leave this machine: move ca.key and ca.crt to their "
            f"own directory (default '{CA_DIR}') and pass it with --ca"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fl_app.deploy.credentials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("ca", help="create a certificate authority")
    ca.add_argument("--out", type=Path, default=CA_DIR,
                    help="directory for ca.key and ca.crt, kept on this machine (default %(default)s)")
    ca.add_argument("--days", type=int, default=3650)
    ca.add_argument("--force", action="store_true",
                    help="replace an existing CA key (invalidates every certificate it signed)")
    server = commands.add_parser("server", help="create the SuperLink's certificate")
    server.add_argument("--ca", type=Path, default=CA_DIR,
                        help="directory holding ca.crt, ca.key (default %(default)s)")
    server.add_argument("--out", type=Path, default=CERT_DIR,
                        help="directory for server.key, server.crt and ca.crt, copied to the "
                             "SuperLink host (default %(default)s)")
    server.add_argument("--host", action="append", required=True,
                        help="a host name or IP the SuperLink is reached at (repeat)")
    server.add_argument("--days", type=int, default=DEFAULT_DAYS)
    nodes = commands.add_parser("node-keys", help="create SuperNode authentication keys")
    nodes.add_argument("--out", type=Path, required=True)
    nodes.add_argument("names", nargs="+", help="one name per SuperNode")
    args = parser.parse_args(argv)

    try:
        if args.command == "ca":
            cert = make_ca(args.out, days=args.days, force=args.force)
            print(f"CA certificate: {cert}; CA key: {args.out / CA_KEY} (never copy it off this machine)")
        elif args.command == "server":
            check_out_dir(args.out)
            path = make_server_certificate(args.ca, args.out, args.host, days=args.days)
            hosts = dict.fromkeys([*args.host, *LOOPBACK])
            print(f"SuperLink certificate: {path} (valid for: {', '.join(hosts)}); "
                  f"copy '{args.out}' to the SuperLink host")
        else:
            for name in args.names:
                private, public = make_node_keys(args.out, name)
                print(f"{name}: private key {private}, public key {public}")
    except CredentialsError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
