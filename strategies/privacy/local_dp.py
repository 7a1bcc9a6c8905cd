"""Sample-level DP-SGD on a client with Opacus (Abadi et al. 2016, "Deep Learning with
Differential Privacy").

Each client trains with Poisson-sampled minibatches (rate B/n), per-sample gradients
clipped to `max_grad_norm` and Gaussian noise of std σ·max_grad_norm on their sum. The
guarantee protects one *sample* of that client's data. The client's accountant lives
across rounds (its state travels in the node's context), so ε grows with every round
the client joins; a fresh PrivacyEngine per round would restart it at zero.

The Poisson batches and the noise come from two torch generators whose whole state is
OS entropy (`dp_randomness.os_entropy_torch_generator`), never from the seed, the
client's id or the round, which the server knows; the noise is drawn in Opacus' secure
mode (sum of four draws, Holohan & Braghin 2021). A Poisson batch that comes out empty
still takes a noised step, as the accountant assumes.
"""

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset as TorchTensorDataset

from data.mnist import TensorDataset
from strategies.privacy.accounting import calibrate_noise_multiplier
from strategies.privacy.opacus_compat import ModuleValidator, PrivacyEngine
from strategies.privacy.randomness import os_entropy_torch_generator, seeded_torch_generator


@dataclass(frozen=True)
class LocalDPSettings:
    """A client's DP-SGD parameters."""

    max_grad_norm: float
    noise_multiplier: float
    delta: float
    accountant: str
    reproducible: bool = False  # dp-reproducible-noise: batches and noise from `seed` (no valid claim)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Opacus' Poisson loader runs ceil(n/B) steps per epoch at rate 1/ceil(n/B)."""
    return math.ceil(num_samples / batch_size)


@lru_cache(maxsize=64)
def local_noise_multiplier(
    *, target_epsilon: float, delta: float, num_samples: int, batch_size: int,
    epochs: int, rounds: int, accountant: str,
) -> float:
    """σ such that joining every one of `rounds` rounds spends at most `target_epsilon`."""
    steps_per_epoch = batches_per_epoch(num_samples, batch_size)
    return calibrate_noise_multiplier(target_epsilon, delta, 1 / steps_per_epoch,
                                      rounds * epochs * steps_per_epoch, accountant)


def train_private(
    net: nn.Module,
    data: TensorDataset,
    dp: LocalDPSettings,
    accountant_state: dict[str, Any] | None,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> tuple[float, float, float, dict[str, Any]]:
    """Train `net` with DP-SGD for `epochs` epochs of Poisson batches of expected size
    `batch_size`, continuing the accountant from `accountant_state`.

    Opacus trains a copy (its hooks stay there) with `make_optimizer(copy)`; the result is
    loaded into `net`. `seed` fixes dropout masks (public) and, with `dp.reproducible`,
    the batches and the noise.
    Returns (mean train loss, train accuracy, ε so far at δ, new accountant state).
    """
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise ValueError(f"model is not compatible with Opacus: {errors}")
    torch.manual_seed(seed)  # dropout masks: public, as DP-SGD's analysis allows
    if dp.reproducible:
        batches, noise = seeded_torch_generator(seed), seeded_torch_generator(seed + 1)
    else:
        batches, noise = os_entropy_torch_generator(), os_entropy_torch_generator()
    loader = DataLoader(TorchTensorDataset(data.images, data.labels),
                        batch_size=batch_size, generator=batches)
    private_net = copy.deepcopy(net)
    with warnings.catch_warnings():  # "Secure RNG turned off": our generators are OS entropy
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=dp.accountant)
    if accountant_state:
        engine.accountant.load_state_dict(accountant_state)
    model, optimizer, private_loader = engine.make_private(
        module=private_net, optimizer=make_optimizer(private_net), data_loader=loader,
        noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True, noise_generator=noise,
    )
    optimizer.secure_mode = True  # four draws per noise value (Opacus refuses a generator in its own secure mode)
    dev = next(net.parameters()).device
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        for x, y in private_loader:
            x, y = x.to(dev), y.to(dev)
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.nll_loss(out, y, reduction="sum") / max(len(y), 1)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            optimizer.step()  # an empty batch adds noise only, and is accounted
            loss_sum += float(loss) * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
    net.load_state_dict(private_net.state_dict())
    epsilon = float(engine.get_epsilon(dp.delta))
    return loss_sum / max(seen, 1), correct / max(seen, 1), epsilon, engine.accountant.state_dict()
