"""Start a SuperNode of a deployment, after checking what it needs: its authentication
key, the CA certificate, its data, and a verified TLS connection to the SuperLink.

A site with its own data (MNIST IDX files, class folders of images or a .npz; see
data/site_data.py):

    python -m fl_app.deploy.supernode --superlink superlink.example.org:8000 \
        --root-certificates ca.crt --private-key keys/site-a --data-dir /data/site-a

Demo mode, partition 0 of 3 of MNIST found in --data-dir:

    python -m fl_app.deploy.supernode ... --partition-id 0 --num-partitions 3 --data-dir ~/mnist
"""

import argparse
from pathlib import Path

from data.mnist import DataUnavailableError, missing_files
from data.site_data import load_site_data
from fl_app.deploy.launch import exec_command, executable, fail
from fl_app.deploy.preflight import (
    PreflightError,
    check_node_key,
    check_superlink_connection,
    parse_address,
)


def node_config(data_dir: Path, partition_id: int | None, num_partitions: int | None) -> str:
    """The `--node-config` string: data-dir, plus the partition in demo mode."""
    if any(c in "\"\\" for c in str(data_dir)):
        raise PreflightError(f"data-dir '{data_dir}' contains a double quote or backslash, "
                             "which node-config cannot carry; use another path or a symlink")
    config = f'data-dir="{data_dir}"'
    if partition_id is not None:
        config += f" partition-id={partition_id} num-partitions={num_partitions}"
    return config


def check_data(data_dir: Path, partition_id: int | None, num_partitions: int | None) -> str:
    """Check the node's data; return a one-line description of it."""
    if (partition_id is None) != (num_partitions is None):
        raise PreflightError("give both --partition-id and --num-partitions (demo mode), or neither")
    if partition_id is None:
        try:
            return f"own data: {len(load_site_data(data_dir))} samples in {data_dir}"
        except DataUnavailableError as err:
            raise PreflightError(str(err)) from None
    assert num_partitions is not None, "given together with partition_id (checked above)"
    if not 0 <= partition_id < num_partitions:
        raise PreflightError(f"--partition-id {partition_id} outside [0, {num_partitions - 1}]")
    if missing := missing_files(data_dir):
        raise PreflightError(f"MNIST not found in --data-dir '{data_dir}': missing {', '.join(missing)}")
    return f"demo data: partition {partition_id} of {num_partitions} of MNIST in {data_dir}"


def supernode_command(
    superlink: str, root_certificates: Path, private_key: Path, port: int, config: str
) -> list[str]:
    """The `flower-supernode` command line."""
    return [
        executable("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(private_key),
        "--port", str(port),
        "--node-config", config,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fl_app.deploy.supernode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superlink", required=True, help="the SuperLink's host:port")
    parser.add_argument("--root-certificates", type=Path, required=True,
                        help="the federation's CA certificate (ca.crt)")
    parser.add_argument("--private-key", type=Path, required=True,
                        help="this node's authentication key (registered with flwr supernode register)")
    parser.add_argument("--port", type=int, default=9094,
                        help="local port of this node's ClientApp API; distinct per node on one host")
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="this site's data (MNIST IDX dir, class folders or .npz), or MNIST in demo mode")
    parser.add_argument("--partition-id", type=int, help="demo mode: which partition of MNIST")
    parser.add_argument("--num-partitions", type=int, help="demo mode: how many partitions")
    parser.add_argument("--connect-wait", type=float, default=30.0,
                        help="seconds to keep trying to reach the SuperLink (default %(default)s)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    try:
        parse_address(args.superlink)
        check_node_key(args.private_key)
        data = check_data(data_dir, args.partition_id, args.num_partitions)
        config = node_config(data_dir, args.partition_id, args.num_partitions)
        check_superlink_connection(args.superlink, args.root_certificates, wait=args.connect_wait)
        command = supernode_command(args.superlink, args.root_certificates.resolve(),
                                    args.private_key.resolve(), args.port, config)
    except PreflightError as err:
        fail(err)
    print(f"SuperLink {args.superlink} reached, certificate verified; {data}", flush=True)
    exec_command(command)


if __name__ == "__main__":
    main()
