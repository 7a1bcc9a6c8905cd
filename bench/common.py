"""What the benchmark scripts share: the repository root, their common arguments, the
machine they ran on, JSON output, run_simulation.py runs and the plain PyTorch loop the
simulation is compared with. Run the scripts from the repository root as
`python -m bench.<script>`, so that they import this checkout's packages."""

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil
import torch

from data.mnist import TensorDataset
from fl_app.assembly import load_test_set
from fl_app.client import load_client_data
from fl_app.config import AppConfig, project_defaults
from fl_app.model import seeded_model
from fl_app.run_dir import RunDir
from fl_app.schedule import round_learning_rates
from fl_app.task import device, evaluate, get_weights, set_weights, train

ROOT = Path(__file__).resolve().parents[1]
APP_DEFAULTS = project_defaults(ROOT)  # the run-config defaults: what a benchmark does not set


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring `doc`."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """`--data-dir`: the directory holding MNIST/raw (default: ../shared/data beside the repository)."""
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")


def add_json(parser: argparse.ArgumentParser, name: str) -> None:
    """`--json`: the file the figures are written to (default: `name` in the working directory)."""
    parser.add_argument("--json", type=Path, default=Path(name))


def add_set(parser: argparse.ArgumentParser, example: str) -> None:
    """`--set KEY=VALUE` (repeatable): any other run-config key, VALUE read as JSON
    (numbers, true/false), else as a string; `args.set` holds the (key, value) pairs."""
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help=f"any other run-config key, e.g. --set {example}")


def setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` of `--set`: VALUE as JSON (numbers, true/false), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def write_json(path: Path, figures: dict[str, Any], *, show: bool = False) -> None:
    """Write `figures` to `path` as indented JSON (and print them with `show`)."""
    text = json.dumps(figures, indent=2)
    path.write_text(text + "\n")
    if show:
        print(text)


def machine() -> str:
    """The processor, torch's threads and the GPU, if any."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, " \
           f"torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"


def run_config_text(overrides: dict[str, Any]) -> str:
    """`--run-config` text for `overrides` (strings quoted, booleans lowercase)."""
    def value(v: object) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())


class PeakMemory(threading.Thread):
    """Largest total proportional set size (PSS) of a process and its descendants,
    sampled every `interval` seconds: shared pages (torch, Ray's object store) counted once."""

    def __init__(self, pid: int, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_bytes = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                root = psutil.Process(self.pid)
                tree = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in tree:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_bytes = max(self.peak_bytes, total)


class GpuUtilisation(threading.Thread):
    """GPU utilisation (%) and memory used (MiB) read from `nvidia-smi` every `interval`
    seconds, with the seconds since the sampler started; no samples without nvidia-smi."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples = interval, []
        self.started = time.time()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10, check=True).stdout
            except (OSError, subprocess.SubprocessError):
                return
            util, memory = (float(v) for v in out.splitlines()[0].split(","))
            self.samples.append((time.time() - self.started, util, memory))

    def mean_between(self, start: float, end: float) -> float | None:
        """Mean utilisation of the samples taken between `start` and `end` (seconds since start)."""
        inside = [u for t, u, _ in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else None


class TimedRun(NamedTuple):
    """A timed run_simulation.py run: its output lines with their arrival times."""

    start: float  # epoch seconds at the command
    total_s: float
    round_s: list[float]
    peak_bytes: int  # peak PSS
    lines: list[tuple[float, str]]  # (epoch seconds at arrival, line)


def timed_simulation(args: argparse.Namespace, run_config: str, out: Path, *options: str) -> TimedRun:
    """Run run_simulation.py (with `options`, e.g. --verbose), timing it and its output lines."""
    start, clock = time.time(), time.perf_counter()
    command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(args.num_clients),
               "--rounds", str(args.rounds), "--gpus-per-client", str(args.gpus_per_client), *options,
               "--run-config", run_config + f" output-dir='{out}'"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    memory = PeakMemory(proc.pid)
    memory.start()
    lines = [(time.time(), line) for line in proc.stdout]
    proc.wait()
    memory.done.set()
    total = time.perf_counter() - clock
    if proc.returncode != 0:
        raise RuntimeError("".join(line for _, line in lines)[-6000:])
    (run_dir,) = out.iterdir()
    rows = RunDir(run_dir).read_history()
    return TimedRun(start, total, [r["seconds"] for r in rows if r["round"] > 0], memory.peak_bytes, lines)


def simulate(num_clients: int, config: dict[str, Any], out_dir: Path) -> RunDir:
    """One run_simulation.py run with `config` as its run-config (its `output-dir` must
    be `out_dir`); returns its run directory."""
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())  # TOML-like: true, "text", 1e-05
    command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(num_clients),
               "--run-config", text]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"run failed ({done.returncode}): {config}")
    (run,) = RunDir.finished_under(out_dir)
    return run


def train_sets(cfg: AppConfig, data_dir: str, num_clients: int) -> list[TensorDataset]:
    """The training splits of `num_clients` simulated clients, as the app computes them."""
    return [load_client_data(cfg, data_dir, pid, num_clients)[0] for pid in range(num_clients)]


def plain_loop(cfg: AppConfig, num_clients: int, data_dir: str,
               clients_per_round: int | None = None) -> tuple[float, list[float]]:
    """(total seconds, seconds per round) of FedAvg in one process; `clients_per_round`
    clients drawn at random each round (default: all)."""
    start = time.perf_counter()
    clients = train_sets(cfg, data_dir, num_clients)
    test_set = load_test_set(cfg, data_dir)
    net = seeded_model(cfg.train.model, cfg.run.seed).to(device())
    global_weights = get_weights(net)
    rng = np.random.default_rng(cfg.run.seed)
    rounds = []
    for server_round in range(1, cfg.run.num_server_rounds + 1):
        round_start = time.perf_counter()
        new, counts = [], []
        cohort = range(num_clients) if clients_per_round is None else \
            sorted(int(i) for i in rng.choice(num_clients, clients_per_round, replace=False))
        for pid in cohort:
            data = clients[pid]
            set_weights(net, global_weights)
            train(net, data, cfg.train, learning_rates=round_learning_rates(cfg, server_round),
                  seed=cfg.run.seed + pid + server_round)
            new.append(get_weights(net))
            counts.append(len(data))
        total = sum(counts)
        global_weights = [sum(w[i] * (n / total) for w, n in zip(new, counts, strict=True)).astype(new[0][i].dtype)
                          for i in range(len(new[0]))]
        set_weights(net, global_weights)
        evaluate(net, test_set)
        rounds.append(time.perf_counter() - round_start)
    return time.perf_counter() - start, rounds
