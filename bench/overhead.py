"""Federation overhead: the same training through Flower's simulation and in a plain
PyTorch loop in one process, side by side in one invocation.

    python bench/overhead.py [--num-clients 10] [--samples-per-client 600] [--rounds 4]
        [--local-epochs 1] [--gpus-per-client 0] [--json overhead.json]

Simulation: run_simulation.py, every client every round, batch 32, centralized
evaluation on the test set each round, no federated evaluation. Plain loop: for each
round, each client's samples trained from the global model with the same optimizer,
epochs and batch size (the same number of optimizer steps), the weighted average, the
same centralized evaluation. Prints the ratio for the whole run (start-up included) and
per round in steady state (rounds 2.., start-up apart). Goal: <= 1.10. On a GPU machine
both sides train on the GPU (`--gpus-per-client` is each simulated client's fraction).
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_app.client_app import load_client_data  # noqa: E402
from fl_app.config import AppConfig, project_defaults  # noqa: E402
from fl_app.model import seeded_net  # noqa: E402
from fl_app.run_dir import RunDir  # noqa: E402
from fl_app.server_app import load_test_set, round_learning_rate  # noqa: E402
from fl_app.task import TrainSettings, device, evaluate, get_weights, set_weights, train  # noqa: E402


def machine() -> str:
    """The processor, torch's threads and the GPU, if any."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, " \
           f"torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"


def plain_loop(cfg: AppConfig, num_clients: int, data_dir: str,
               clients_per_round: int | None = None) -> tuple[float, list[float]]:
    """(total seconds, seconds per round) of FedAvg in one process; `clients_per_round`
    clients drawn at random each round (default: all)."""
    start = time.perf_counter()
    clients = [load_client_data(cfg, data_dir, pid, num_clients)[0] for pid in range(num_clients)]
    test_set = load_test_set(cfg, data_dir)
    net = seeded_net(cfg.run.seed).to(device())
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
            train(net, data, TrainSettings(cfg.train.local_epochs, cfg.train.batch_size, cfg.train.optimizer,
                                           round_learning_rate(cfg, server_round), cfg.train.momentum,
                                           seed=cfg.run.seed + pid + server_round))
            new.append(get_weights(net))
            counts.append(len(data))
        total = sum(counts)
        global_weights = [sum(w[i] * (n / total) for w, n in zip(new, counts)).astype(new[0][i].dtype)
                          for i in range(len(new[0]))]
        set_weights(net, global_weights)
        evaluate(net, test_set)
        rounds.append(time.perf_counter() - round_start)
    return time.perf_counter() - start, rounds


def run_config_text(overrides: dict) -> str:
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


def simulation(args: argparse.Namespace, run_config: str, out: Path) -> tuple[float, list[float], int]:
    """(total seconds, seconds per round, peak PSS in bytes) of run_simulation.py."""
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "run_simulation.py"), "--num-clients", str(args.num_clients),
               "--rounds", str(args.rounds), "--gpus-per-client", str(args.gpus_per_client),
               "--run-config", run_config + f" output-dir='{out}'"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    memory = PeakMemory(proc.pid)
    memory.start()
    output, _ = proc.communicate()
    memory.done.set()
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(output[-6000:])
    (run_dir,) = out.iterdir()
    rows = RunDir(run_dir).read_history()
    return total, [r["seconds"] for r in rows if r["round"] > 0], memory.peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--samples-per-client", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=Path("overhead.json"))
    args = parser.parse_args()

    overrides = {"data-dir": str(args.data_dir.resolve()), "samples-per-client": args.samples_per_client,
                 "local-epochs": args.local_epochs, "num-server-rounds": args.rounds,
                 "fraction-evaluate": 0.0, "validation-fraction": 0.0, "checkpoint-every": 0,
                 "data-download": False}
    cfg = AppConfig.from_run_config(project_defaults(ROOT) | overrides)
    run_config = run_config_text(overrides)
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        sim_total, sim_rounds, _ = simulation(args, run_config, Path(tmp) / "sim")
    plain_total, plain_rounds = plain_loop(cfg, args.num_clients, str(args.data_dir.resolve()))
    steady_sim, steady_plain = np.mean(sim_rounds[1:]), np.mean(plain_rounds[1:])
    figures = {
        "setup": {k: str(v) for k, v in vars(args).items()},
        "simulation_total_s": sim_total, "plain_total_s": plain_total,
        "simulation_round_s": sim_rounds, "plain_round_s": plain_rounds,
        "ratio_total": sim_total / plain_total, "ratio_steady_round": float(steady_sim / steady_plain),
        "machine": machine(),
    }
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"\nwhole run: simulation {sim_total:.1f} s vs plain {plain_total:.1f} s, ratio "
          f"{figures['ratio_total']:.2f}; steady-state round: {steady_sim:.2f} s vs {steady_plain:.2f} s, "
          f"ratio {figures['ratio_steady_round']:.2f}")


if __name__ == "__main__":
    main()
