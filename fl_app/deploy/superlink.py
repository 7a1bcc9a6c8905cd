"""Start the SuperLink of a deployment: TLS with the certificates in `--certificates`
(ca.crt, server.crt, server.key from `fl_app.deploy.credentials`), only registered SuperNodes
admitted (`--enable-supernode-auth`), no runtime dependency installation (the app's
dependencies are installed on this host beforehand), state kept in `--database`.

Flower serves the Fleet API (SuperNodes), the Control API (`flwr run`, `flwr supernode
register`, ...) and the ServerApp's API on one port, so they share one listening
address. The Control and ServerApp APIs have no authentication here: the SuperLink
listens on loopback (127.0.0.1) unless `--host` says otherwise, and with another
address it prints a warning naming the port to firewall.

    python -m fl_app.deploy.superlink --certificates certificates               # this machine only
    python -m fl_app.deploy.superlink --certificates certificates --host 0.0.0.0 --port 8000
"""

import argparse
import ipaddress
import sys
from pathlib import Path

from fl_app.deploy.credentials import CA_KEY
from fl_app.deploy.launch import exec_command, executable, fail
from fl_app.deploy.preflight import PreflightError, check_superlink_credentials

DEFAULT_HOST = "127.0.0.1"


def superlink_command(
    certificates: Path, host: str, port: int, database: Path | None
) -> list[str]:
    """The `flower-superlink` command line."""
    command = [
        executable("flower-superlink"),
        "--ssl-ca-certfile", str(certificates / "ca.crt"),
        "--ssl-certfile", str(certificates / "server.crt"),
        "--ssl-keyfile", str(certificates / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
    ]
    return command + (["--database", str(database)] if database else [])


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the port reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def exposure_warning(host: str, port: int) -> str:
    """The one line printed when the SuperLink listens beyond loopback."""
    return (f"warning: listening on {host} port {port}, reachable from other machines; this port "
            "also serves Flower's Control API and ServerApp API, which have no authentication "
            "here (whoever reaches it can submit, stop and read runs and register SuperNodes): "
            f"let only the sites and the operator through to TCP port {port} (firewall, VPN, "
            "security group)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fl_app.deploy.superlink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certificates", type=Path, required=True,
                        help="directory with ca.crt, server.crt, server.key")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s: this machine only); "
                             "SuperNodes on other machines need 0.0.0.0 (all interfaces) or "
                             "this host's IP, and then a firewall on --port")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database", type=Path, default=Path("superlink-state.db"),
                        help="SQLite file keeping registered nodes and runs across restarts")
    args = parser.parse_args(argv)
    certificates = args.certificates.resolve()
    try:
        valid_for = check_superlink_credentials(certificates, args.host)
        command = superlink_command(certificates, args.host, args.port, args.database.resolve())
    except PreflightError as err:
        fail(err)
    if (certificates / CA_KEY).exists():
        print(f"warning: '{certificates / CA_KEY}' is on the SuperLink host; whoever holds the CA "
              "key can impersonate the SuperLink: keep it on the operator's machine only and "
              "delete it here", file=sys.stderr, flush=True)
    if not is_loopback(args.host):
        print(exposure_warning(args.host, args.port), file=sys.stderr, flush=True)
    print(f"SuperLink certificate valid for: {', '.join(valid_for)} "
          f"(SuperNodes and `flwr` must use one of these in --superlink / address)", flush=True)
    exec_command(command)


if __name__ == "__main__":
    main()
