"""Training throughput of our client against a bare PyTorch loop, side by side.

    python -m bench.client_loop [--samples 6000] [--epochs 1] [--repeats 3]

Both train the reference CNN on the same 6000 MNIST samples (partition 0 of 10), batch
size 32, SGD with momentum, in this process, alternating: the bare loop is
`for batch in shuffled tensors: forward, backward, step`; ours is `FlowerClient.fit`
(weights in from numpy, seeded local training, weights out to numpy, metrics). Prints
samples/s of each and their ratio (goal: ours / bare >= 0.95).
"""

import platform
import statistics
import time

import torch
import torch.nn.functional as F

from bench.common import APP_DEFAULTS, add_data_dir, add_json, argument_parser, write_json
from data.mnist import load_mnist
from fl_app.client import FlowerClient, load_client_data
from fl_app.config import AppConfig
from fl_app.model import Net
from fl_app.task import get_weights
from strategies.wire import FINAL_LEARNING_RATE, LEARNING_RATE, SERVER_ROUND


def bare_loop(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int) -> None:
    """Train a fresh `Net` on the tensors with shuffled minibatches, nothing else."""
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(net(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()


def main() -> None:
    """Time both loops alternately; print and write the figures."""
    parser = argument_parser(__doc__)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    add_data_dir(parser)
    add_json(parser, "client_loop.json")
    args = parser.parse_args()

    cfg = AppConfig.from_run_config(APP_DEFAULTS | {
        "data-dir": str(args.data_dir), "samples-per-client": args.samples, "validation-fraction": 0.0,
        "local-epochs": args.epochs, "batch-size": 32})
    load_mnist(str(args.data_dir), train=True)
    train_set, val_set = load_client_data(cfg, str(args.data_dir), 0, 10)
    client = FlowerClient(cfg, 0, lambda: (train_set, val_set))
    weights = get_weights(Net())
    n = len(train_set) * args.epochs
    ours, bare = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        client.fit(weights, {SERVER_ROUND: 1, LEARNING_RATE: 0.02, FINAL_LEARNING_RATE: 0.02})
        ours.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        bare_loop(train_set.images, train_set.labels, args.epochs, 32)
        bare.append(n / (time.perf_counter() - start))
    figures = {
        "samples": len(train_set), "epochs": args.epochs, "batch_size": 32,
        "client_samples_per_s": statistics.median(ours), "bare_samples_per_s": statistics.median(bare),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }
    figures["ratio"] = figures["client_samples_per_s"] / figures["bare_samples_per_s"]
    write_json(args.json, figures, show=True)
    print(f"\nour client {figures['client_samples_per_s']:.0f} samples/s, bare loop "
          f"{figures['bare_samples_per_s']:.0f} samples/s: ratio {figures['ratio']:.3f}")


if __name__ == "__main__":
    main()
