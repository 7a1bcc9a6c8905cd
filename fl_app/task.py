"""Local training and evaluation of `Net` on in-memory tensors."""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.mnist import TensorDataset
from fl_app.config import TrainConfig
from fl_app.schedule import step_learning_rate

EVAL_BATCH_SIZE = 1000


def get_weights(net: nn.Module) -> list[np.ndarray]:
    """Copies of the model's state (parameters and buffers) as numpy arrays, in
    state_dict order; later training does not change them."""
    return [t.detach().to("cpu", copy=True).numpy() for t in net.state_dict().values()]


def set_weights(net: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays in state_dict order into the model."""
    keys = list(net.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
    net.load_state_dict(
        OrderedDict((k, torch.from_numpy(np.asarray(w))) for k, w in zip(keys, weights, strict=True)),
        strict=True,
    )


def device() -> torch.device:
    """CUDA when this process sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(net: nn.Module, settings: TrainConfig, learning_rate: float) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or Adadelta, as `settings.optimizer` says, at `learning_rate`."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=settings.momentum)
    if settings.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=learning_rate)
    if settings.optimizer == "adadelta":
        return torch.optim.Adadelta(net.parameters(), lr=learning_rate)
    raise ValueError(f"unknown optimizer '{settings.optimizer}'")


def seed_dropout(dev: torch.device, seed: int) -> None:
    """Seed the generator of `dev`'s dropout masks as `torch.manual_seed(seed)` does: the
    CPU's default generator, and every GPU's on CUDA. `torch.manual_seed` also queues a
    seed for each accelerator backend not started, with a stack trace each (0.18 ms a
    call against 3 µs on the 2-core machine)."""
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def proximal_term(net: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor | float:
    """FedProx (Li et al. 2020): μ/2 · Σ ‖w − w_global‖² over the trainable parameters,
    `anchor` being the global model the round started from (0.0 when `anchor` is empty)."""
    return 0.5 * mu * sum(torch.sum((p - a) ** 2) for p, a in zip(net.parameters(), anchor, strict=True))


def train(
    net: nn.Module, data: TensorDataset, settings: TrainConfig, *, learning_rates: tuple[float, float],
    seed: int,
) -> tuple[float, float]:
    """Train for `settings.local_epochs` epochs of shuffled minibatches of
    `settings.batch_size`, the learning rate moving linearly from the first of
    `learning_rates` to the last over the steps; `seed` fixes the order and dropout masks.

    Returns the mean training loss and accuracy over all samples seen.
    """
    dev = next(net.parameters()).device
    images, labels = data.images.to(dev), data.labels.to(dev)
    generator = torch.Generator().manual_seed(seed)
    seed_dropout(dev, seed)
    first, last = learning_rates
    optimizer = make_optimizer(net, settings, first)
    anchor = [p.detach().clone() for p in net.parameters()] if settings.proximal_mu > 0 else []
    net.train()
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    n = len(labels)
    steps = settings.local_epochs * -(-n // settings.batch_size)
    step = 0
    for _ in range(settings.local_epochs):
        order = torch.randperm(n, generator=generator).to(dev)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x, y = images[idx], labels[idx]
            for group in optimizer.param_groups:
                group["lr"] = step_learning_rate(first, last, step, steps)
            step += 1
            optimizer.zero_grad(set_to_none=True)
            out = net(x)
            loss = F.nll_loss(out, y)
            objective = loss + proximal_term(net, anchor, settings.proximal_mu) if anchor else loss
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (out.argmax(1) == y).sum()
    seen = n * settings.local_epochs
    return float(loss_sum) / seen, float(correct) / seen


@torch.no_grad()
def evaluate(net: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Mean negative log-likelihood and accuracy of `net` on `data`."""
    dev = next(net.parameters()).device
    net.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), EVAL_BATCH_SIZE):
        x = data.images[start : start + EVAL_BATCH_SIZE].to(dev)
        y = data.labels[start : start + EVAL_BATCH_SIZE].to(dev)
        out = net(x)
        loss_sum += float(F.nll_loss(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return loss_sum / len(data), correct / len(data)
