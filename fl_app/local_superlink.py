"""Start and stop a private simulation SuperLink, for `run_simulation.py` and tests.

Flower's `:local:` connection starts a SuperLink that outlives the command on a fixed
port; this one listens on a free port, keeps its state in its own FLWR_HOME, and is
stopped with every process it spawned (SuperExec, simulation, Ray): by `stop`, or by its
guardian (`fl_app.process_guard`) when the process that started it dies.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fl_app.process_guard import GUARD_SCRIPT, stop_process_tree

STARTUP_TIMEOUT_S = 60.0
# Ray passes task arguments and results up to `max_direct_call_object_size` bytes inline
# (100 KiB by default) and larger ones through its shared-memory object store. A message
# of the DP recipe's model (tanh-cnn, 26,010 parameters) is 106 KB: on the 2-core machine
# an actor's echo of it took 2.7 ms inline against 7.0 ms through the store
# (`python -m bench.client_call --model tanh-cnn`). The reference CNN's 4.8 MB messages
# stay in the store.
RAY_INLINE_BYTES = 1 << 20


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_executable(name: str) -> str:
    """Path of a Flower console script, preferring this interpreter's environment."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"'{name}' not found: install the app's dependencies first")
    return found


def write_connection(flwr_home: Path, name: str, address: str) -> None:
    """Make `name` (an insecure connection to `address`) the default in FLWR_HOME's config."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "{address}"\ninsecure = true\n'
    )


class LocalSuperLink:
    """A `flower-superlink --simulation` on 127.0.0.1:<free port>, as a context manager.

    On Linux it runs under a guardian (`fl_app.process_guard`, in a session of its own:
    Ctrl-C reaches this process only) that stops it and everything it started when the
    thread that called `start` exits, even by SIGKILL: no SuperExec or ServerApp outlives
    it to go on writing the run directory.

    Runtime dependency installation is disabled: the app runs in this environment and
    nothing is downloaded per run. With `ray_address`, the simulation attaches to that
    running Ray cluster instead of starting its own Ray instance. The Ray it starts passes
    objects up to `RAY_INLINE_BYTES` inline, unless `RAY_max_direct_call_object_size` is
    set already.
    """

    def __init__(self, flwr_home: Path, port: int | None = None, ray_address: str | None = None) -> None:
        self.flwr_home = flwr_home
        self.ray_address = ray_address
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = flwr_home / "superlink.log"
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Environment for this SuperLink and the processes talking to it (this
        interpreter's scripts first on PATH: the SuperLink spawns `flower-superexec`)."""
        scripts = str(Path(sys.executable).parent)
        env = os.environ | {
            "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]),
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        env.setdefault("RAY_max_direct_call_object_size", str(RAY_INLINE_BYTES))
        if self.ray_address:  # the simulation's ray.init() joins this cluster
            env["RAY_ADDRESS"] = self.ray_address
        return env

    def start(self) -> "LocalSuperLink":
        """Start the SuperLink and wait until it answers its health check."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        guard = [sys.executable, str(GUARD_SCRIPT), str(os.getpid())] if sys.platform == "linux" else []
        command = [
            *guard,
            flower_executable("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation", "subprocess",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, env=self.env(), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"flower-superlink exited with code {self.process.returncode}; "
                    f"log: {self.log_path}"
                )
            try:
                if httpx.get(f"http://{self.address}/health", timeout=0.5).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"flower-superlink did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Stop the SuperLink and everything it started."""
        if self.process is not None:
            stop_process_tree(self.process.pid)
            self.process.wait()
            self.process = None

    def __enter__(self) -> "LocalSuperLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
