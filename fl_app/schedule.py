"""The clients' learning rate over a run: the schedule sets it at each round boundary,
and within a round it moves linearly from the round's first value to its last, step by
step. The server sends both values with each round's instructions."""

import math

from fl_app.config import AppConfig, TrainConfig


def boundary_learning_rate(train: TrainConfig, num_rounds: int, rounds_done: int) -> float:
    """The learning rate after `rounds_done` of `num_rounds` rounds, t = rounds_done:

    - constant: η;
    - cosine: η · ½ (1 + cos(π t / T)), T = `num_rounds` (Loshchilov & Hutter 2017, SGDR);
    - exp: η · γᵗ, γ = `lr-decay-rate` (PyTorch's MNIST example: γ = 0.7 per epoch);

    times min(1, t / W) during a linear warm-up of W = `lr-warmup-rounds` rounds
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    """
    t = rounds_done
    if train.lr_schedule == "constant":
        rate = train.learning_rate
    elif train.lr_schedule == "cosine":
        rate = train.learning_rate * 0.5 * (1.0 + math.cos(math.pi * t / num_rounds))
    elif train.lr_schedule == "exp":
        rate = train.learning_rate * train.lr_decay_rate ** t
    else:
        raise ValueError(f"unknown lr-schedule '{train.lr_schedule}'")
    return rate * min(1.0, t / train.lr_warmup_rounds) if train.lr_warmup_rounds else rate


def round_learning_rates(cfg: AppConfig, server_round: int) -> tuple[float, float]:
    """The clients' first and last learning rate in `server_round` (1-based)."""
    rounds = cfg.run.num_server_rounds
    return (boundary_learning_rate(cfg.train, rounds, server_round - 1),
            boundary_learning_rate(cfg.train, rounds, server_round))


def server_step_factor(schedule: str, num_rounds: int, server_round: int) -> float:
    """The factor on the server's step in `server_round` (1-based) of `num_rounds`:
    1 (constant), or ½ (1 + cos(π (t − 1) / T)) (cosine: 1 in the first round, falling
    towards 0 in the last), so that the late rounds' noise moves the model less."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / num_rounds))
    raise ValueError(f"unknown server-lr-schedule '{schedule}'")


def step_learning_rate(first: float, last: float, step: int, steps: int) -> float:
    """The learning rate of local step `step` (0-based) of `steps` in a round."""
    return first + (last - first) * step / steps
