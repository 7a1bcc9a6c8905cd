"""Harness for the deployment tests: a TLS, node-authenticated federation whose
SuperLink and SuperNodes are started with the guide's launchers (fl_app/deploy/), each process
with its own FLWR_HOME, on free ports, optionally inside a network namespace. Every
process started here is stopped by `Federation.stop`."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fl_app.deploy.credentials import make_ca, make_node_keys, make_server_certificate
from fl_app.deploy.preflight import PreflightError, check_superlink_connection
from fl_app.local_superlink import free_port, stop_process_tree
from fl_app.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
CONNECTION = "deployment"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def make_credentials(root: Path, hosts: list[str], nodes: list[str]) -> tuple[Path, Path]:
    """CA + SuperLink certificate for `hosts` in root/certificates, node keys in root/keys."""
    certs, keys = root / "certificates", root / "keys"
    make_ca(certs)
    make_server_certificate(certs, certs, hosts)
    for name in nodes:
        make_node_keys(keys, name)
    return certs, keys


@dataclass
class Federation:
    """Processes of one deployment; `netns` prefixes commands with `ip netns exec`."""

    root: Path
    certs: Path
    keys: Path
    superlink_host: str
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    netns: dict[str, str] = field(default_factory=dict)  # process name -> namespace

    @property
    def address(self) -> str:
        return f"{self.superlink_host}:{self.port}"

    def env(self, name: str) -> dict[str, str]:
        home = self.root / name / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        return os.environ | {
            "FLWR_HOME": str(home),
            "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
        }

    def log(self, name: str) -> Path:
        return self.root / name / "log.txt"

    def start(self, name: str, command: list[str], namespace: str | None = None) -> subprocess.Popen:
        """Start `command` as process `name` (cwd and log in root/name)."""
        if namespace:
            command = ["ip", "netns", "exec", namespace, *command]
        cwd = self.root / name
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as log:
            proc = subprocess.Popen(command, cwd=cwd, env=self.env(name), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_superlink(self, listen: str, namespace: str | None = None) -> None:
        self.start("superlink", [sys.executable, "-m", "fl_app.deploy.superlink",
                                 "--certificates", str(self.certs), "--host", listen,
                                 "--port", str(self.port),
                                 "--database", str(self.root / "superlink" / "state.db")],
                   namespace)
        self.wait_for_superlink()

    def wait_for_superlink(self) -> None:
        def up() -> bool:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"SuperLink exited: {self.log('superlink').read_text()[-2000:]}")
            try:
                check_superlink_connection(self.address, self.certs / "ca.crt", wait=0, timeout=2)
                return True
            except PreflightError:
                return False
        wait_until(up, 60, "the SuperLink", interval=0.5)

    def supernode_command(self, key: str, data_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "fl_app.deploy.supernode", "--superlink", self.address,
                "--root-certificates", str(self.certs / "ca.crt"),
                "--private-key", str(self.keys / key), "--port", str(free_port()),
                "--data-dir", str(data_dir), *extra]

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The operator's `flwr` CLI, with this federation as its connection."""
        env = self.env("operator")
        (Path(env["FLWR_HOME"]) / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.certs / "ca.crt"}"\n'
        )
        command = [str(SCRIPTS / "flwr"), *args]
        if "operator" in self.netns:
            command = ["ip", "netns", "exec", self.netns["operator"], *command]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def register(self, key: str) -> None:
        result = self.flwr("supernode", "register", str(self.keys / f"{key}.pub"), CONNECTION)
        assert "registered successfully" in result.stdout, result.stdout + result.stderr

    def nodes(self) -> list[dict]:
        result = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        return json.loads(result.stdout)["nodes"]

    def online(self) -> int:
        return sum(node["status"] == "online" for node in self.nodes())

    def submit(self, run_config: str) -> str:
        """`flwr run . deployment`; the run id."""
        result = self.flwr("run", ".", CONNECTION, "--run-config", run_config)
        assert "Successfully started run" in result.stdout, result.stdout + result.stderr
        return result.stdout.split("Successfully started run ")[1].split()[0]

    def status(self, run_id: str) -> str:
        listing = self.flwr("list", CONNECTION, "--run-id", run_id, "--format", "json")
        return json.loads(listing.stdout)["runs"][0]["status"]

    def wait_for_run(self, run_id: str, output_dir: Path, timeout: float = 600) -> str:
        """Wait until the run has finished; its final status. Watches for the run's
        summary.json and asks the SuperLink only every 15 s: each `flwr` call costs a
        second of CPU that the federation's processes need."""
        deadline = time.monotonic() + timeout
        while not RunDir.finished_under(output_dir):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")
            for _ in range(15):
                time.sleep(1)
                if RunDir.finished_under(output_dir):
                    break
            else:
                if self.status(run_id).startswith("finished"):
                    break
        wait_until(lambda: self.status(run_id).startswith("finished"), 60, f"run {run_id}", interval=2)
        return self.status(run_id)

    def run(self, run_config: str, output_dir: Path, timeout: float = 600) -> tuple[str, str]:
        """Submit a run writing to `output_dir` and wait for it; (run id, final status)."""
        run_id = self.submit(run_config + f" output-dir='{output_dir}'")
        return run_id, self.wait_for_run(run_id, output_dir, timeout)

    def run_log(self, run_id: str) -> str:
        return self.flwr("log", run_id, CONNECTION, "--show").stdout

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and everything it started (a crashed machine)."""
        proc = self.processes.pop(name)
        procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
        for p in procs:
            p.kill()
        psutil.wait_procs(procs, timeout=10)

    def stop_process(self, name: str) -> None:
        """Stop process `name` and its children gracefully."""
        proc = self.processes.pop(name)
        stop_process_tree(proc.pid)
        proc.wait()

    def stop(self) -> None:
        for proc in self.processes.values():
            stop_process_tree(proc.pid)
            proc.wait()
        self.processes.clear()


def history(output_dir: Path) -> tuple[list[dict], dict]:
    """(history rows, summary) of the only run directory under `output_dir`."""
    (run_dir,) = output_dir.iterdir()
    run = RunDir(run_dir)
    return run.read_history(), run.read_summary() if run.summary.exists() else {}
