"""Start the SuperLink of a deployment: TLS with the certificates in `--certificates`
(ca.crt, server.crt, server.key from `deploy.credentials`), only registered SuperNodes
admitted (`--enable-supernode-auth`), no runtime dependency installation (the app's
dependencies are installed on this host beforehand), state kept in `--database`.
Fleet, Control and ServerApp APIs share one port.

    python -m deploy.superlink --certificates certificates --host 0.0.0.0 --port 8000
"""

import argparse
from pathlib import Path

from deploy.launch import exec_command, executable, fail
from deploy.preflight import PreflightError, check_superlink_credentials


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.superlink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certificates", type=Path, required=True,
                        help="directory with ca.crt, server.crt, server.key")
    parser.add_argument("--host", default="0.0.0.0",
                        help="interface to listen on (0.0.0.0: all; default %(default)s)")
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
    print(f"SuperLink certificate valid for: {', '.join(valid_for)} "
          f"(SuperNodes and `flwr` must use one of these in --superlink / address)", flush=True)
    exec_command(command)


if __name__ == "__main__":
    main()
