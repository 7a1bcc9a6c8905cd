"""Run the app in Flower's simulation engine on this machine, start to finish.

    fl-app-simulate --num-clients 10 --rounds 5 [--cpus-per-client 1]
        [--gpus-per-client 0.2] [--ray-address HOST:PORT] [--verbose] [--run-config "key=value ..."]

(the same as `python run_simulation.py ...` in the checkout, or `python -m fl_app.simulate ...`).

Validates the configuration first, starts a private SuperLink (free port, its own
FLWR_HOME, no per-run dependency installation), submits the app with `flwr run
--stream` (from a staged copy of its bundle files), prints the run's log as it goes,
and stops the SuperLink and everything it spawned on success, failure, Ctrl-C or
SIGTERM; if this process is killed, the SuperLink's guardian stops them
(`fl_app.process_guard`). Exit status: 0 when the run finished:completed, 1 when it
failed, 2 on a bad configuration, missing data, or a run directory that cannot be
resumed (finished, damaged, or in use by another run).
"""

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from flwr.common.config import parse_config_args

from data.mnist import MNIST_TRAIN_SIZE, DataUnavailableError, ensure_mnist
from fl_app.app_bundle import stage_app
from fl_app.checkpoint import CheckpointError, load_checkpoint
from fl_app.config import APP_DIR, AppConfig, ConfigError, check_partitioning, check_resumable, project_defaults
from fl_app.local_superlink import LocalSuperLink, flower_executable, write_connection
from fl_app.outputs import output_dir_problem
from fl_app.run_dir import RunDirInUse, RunLock

CONNECTION = "run-simulation"
PATH_KEYS = ("data-dir", "output-dir", "resume-from")


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=positive_int, default=10,
                        help="simulated SuperNodes, one MNIST partition each (default 10)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="server rounds (default: num-server-rounds from pyproject.toml)")
    parser.add_argument("--cpus-per-client", type=positive_int, default=1,
                        help="CPU cores Ray reserves per client (default 1)")
    parser.add_argument("--gpus-per-client", type=non_negative_float, default=0.0,
                        help="GPU fraction Ray reserves per client, e.g. 0.2 (default 0)")
    parser.add_argument("--ray-address", default=None,
                        help="attach to a running Ray cluster (HOST:PORT of a `ray start --head` "
                             "node) instead of starting Ray on this machine")
    parser.add_argument("--verbose", action="store_true",
                        help="Flower's DEBUG log, each line timestamped (federation-config verbose = true)")
    parser.add_argument("--run-config", default="",
                        help='run-config overrides, e.g. "local-epochs=2 optimizer=\'adam\'"')
    return parser.parse_args(argv)


def toml_value(value: Any) -> str:
    """One run-config value in the TOML form `flwr run --run-config` parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def resolve_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """pyproject defaults + overrides, paths made absolute against the current directory,
    validated; raises ConfigError or DataUnavailableError."""
    try:
        overrides = parse_config_args([args.run_config]) if args.run_config else {}
    except click.ClickException as err:
        raise ConfigError(f"Invalid --run-config {args.run_config!r}: {err.message}") from None
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    merged = project_defaults(APP_DIR) | overrides
    cfg = AppConfig.from_run_config(merged)
    check_partitioning(cfg, args.num_clients, MNIST_TRAIN_SIZE)
    for key in PATH_KEYS:
        if merged[key]:
            merged[key] = str(Path(str(merged[key])).expanduser().resolve())
    if not merged["resume-from"] and (problem := output_dir_problem(Path(merged["output-dir"]))):
        raise ConfigError(f"Invalid run-config: output-dir = '{merged['output-dir']}' ({problem})")
    ensure_mnist(merged["data-dir"], cfg.data.data_download)
    if merged["resume-from"]:
        checkpoint = load_checkpoint(merged["resume-from"])
        check_resumable(checkpoint.config, merged)
        RunLock(Path(merged["resume-from"])).release()  # refused while another run writes there
        if checkpoint.num_nodes != args.num_clients:
            raise ConfigError(f"Invalid --num-clients {args.num_clients} (allowed: "
                              f"{checkpoint.num_nodes}, as in the run being resumed)")
    return merged


def run_status(link: LocalSuperLink, run_id: str) -> str:
    """The run's status as `flwr list` reports it, e.g. 'finished:completed'."""
    out = subprocess.run(
        [flower_executable("flwr"), "list", "--run-id", run_id, "--format", "json"],
        env=link.env(), capture_output=True, text=True, timeout=60, check=False,
    )
    try:
        return json.loads(out.stdout)["runs"][0]["status"]
    except (json.JSONDecodeError, KeyError, IndexError):
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"


def simulate(args: argparse.Namespace, run_config: dict[str, Any], flwr_home: Path) -> int:
    started = time.perf_counter()
    print(f"run_simulation: starting a local SuperLink for {args.num_clients} simulated clients ...", flush=True)
    with LocalSuperLink(flwr_home, ray_address=args.ray_address) as link:
        print(f"run_simulation: SuperLink up after {time.perf_counter() - started:.1f} s; submitting the run "
              "(Ray and the client actors start next, then round 0 evaluates the initial model)", flush=True)
        write_connection(flwr_home, CONNECTION, link.address)
        federation = (
            f"num-supernodes={args.num_clients} "
            f"client-resources-num-cpus={args.cpus_per_client} "
            f"client-resources-num-gpus={args.gpus_per_client} "
            f"verbose={toml_value(args.verbose)}"
        )
        app_dir = stage_app(APP_DIR, flwr_home / "app")  # the FAB's files, not the whole checkout or site-packages
        command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--stream",
                   "--federation-config", federation]
        for key, value in run_config.items():
            command += ["--run-config", f"{key}={toml_value(value)}"]
        run_id = None
        with subprocess.Popen(command, env=link.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as flwr_run:
            assert flwr_run.stdout is not None, "stdout=PIPE"
            try:
                for line in flwr_run.stdout:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    if run_id is None and (m := re.search(r"started run (\d+)", line)):
                        run_id = m.group(1)
            finally:
                if flwr_run.poll() is None:
                    flwr_run.terminate()
        if run_id is None:
            print("run_simulation: the run was not started (see above)", file=sys.stderr)
            return 1
        status = run_status(link, run_id)
        print(f"run_simulation: run {run_id} {status}")
        return 0 if status == "finished:completed" else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_config = resolve_run_config(args)
    except (ConfigError, DataUnavailableError, CheckpointError, RunDirInUse) as err:
        print(f"run_simulation: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C must clean up even when started with SIGINT ignored (nohup, background jobs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="fl-app-flwr-home-") as flwr_home:
        try:
            return simulate(args, run_config, Path(flwr_home))
        except KeyboardInterrupt:
            print("run_simulation: interrupted; SuperLink and simulation stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
