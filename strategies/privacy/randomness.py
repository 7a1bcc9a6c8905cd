"""Randomness that protects privacy: DP noise, Poisson client sampling, Poisson
minibatches of DP-SGD.

A DP guarantee holds only while nobody but the party adding the noise can predict the
noise and the sampling. Every participant of a federation can read the run-config (and
`seed` in it), so these generators are seeded from the operating system's entropy
source (`os.urandom`, at least 128 bits) on every run, never from the run-config, the
node-config or anything written into the run directory. `reproducible = True` (the
`dp-reproducible-noise` key) seeds them from the public seed instead, for tests and
papers only: the run's ε is then not a valid claim.

Gaussian noise is drawn as the sum of four independent normal draws divided by two,
the defence of Holohan & Braghin 2021 ("Secure Random Sampling in Differential
Privacy", ESORICS, Section 5.1, n = 2) against attacks on the floating-point
representation of a single draw; Opacus' `secure_mode` uses the same construction.
"""

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

ENTROPY_BITS = 128
MT19937_WORDS = 624
TORCH_CPU_STATE_BYTES = 5056  # CPUGeneratorImplState: seed, left, seeded, next, state[624], ...
TORCH_MT_OFFSET = 24


class DPRandomness:
    """Independent numpy generators for one party's DP draws (client sampling, update
    noise, count noise), all from one seed sequence: OS entropy, or the public `seed`
    when `reproducible`."""

    def __init__(self, public_seed: int, reproducible: bool) -> None:
        self.reproducible = reproducible
        root = np.random.SeedSequence([public_seed, 0xD9]) if reproducible else os_entropy_seed_sequence()
        sampling, noise = root.spawn(2)
        self.sampling = np.random.default_rng(sampling)
        self.noise = np.random.default_rng(noise)

    def state_dict(self) -> dict[str, Mapping[str, Any]] | None:
        """Generator states, kept only in reproducible mode: a fresh process draws fresh
        entropy, so a checkpoint never holds the state of private generators."""
        if not self.reproducible:
            return None
        return {"sampling": self.sampling.bit_generator.state, "noise": self.noise.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]] | None) -> None:
        if self.reproducible and state is not None:
            self.sampling.bit_generator.state = state["sampling"]
            self.noise.bit_generator.state = state["noise"]


def os_entropy_seed_sequence() -> np.random.SeedSequence:
    """A seed sequence of `ENTROPY_BITS` bits from `os.urandom`."""
    return np.random.SeedSequence(int.from_bytes(os.urandom(ENTROPY_BITS // 8), "little"))


def secure_gaussian(rng: np.random.Generator, std: float, shape: Sequence[int] | int) -> np.ndarray:
    """N(0, std² I) in float64 as (z₁ + z₂ + z₃ + z₄)/2 with z_i ~ N(0, std² I)
    (Holohan & Braghin 2021, Section 5.1)."""
    total = rng.normal(0.0, std, size=shape)
    for _ in range(3):
        total += rng.normal(0.0, std, size=shape)
    total *= 0.5
    return total


def os_entropy_torch_generator() -> "torch.Generator":
    """A torch CPU generator whose whole Mersenne Twister state (624 × 32 bits) comes
    from `os.urandom`: `torch.Generator.manual_seed` takes only 64 bits. Refuses to
    run (rather than fall back to a weak seed) if torch's state layout is not the known
    one."""
    import torch

    generator = torch.Generator()
    state = generator.get_state().numpy().copy()
    if state.size != TORCH_CPU_STATE_BYTES:
        raise RuntimeError(f"unknown torch CPU generator state of {state.size} bytes; "
                           "cannot seed DP-SGD's randomness from OS entropy")
    words = np.frombuffer(os.urandom(4 * MT19937_WORDS), dtype="<u4").astype("<u8")
    end = TORCH_MT_OFFSET + 8 * MT19937_WORDS
    state[TORCH_MT_OFFSET:end] = np.frombuffer(words.tobytes(), dtype=np.uint8)
    generator.set_state(torch.from_numpy(state))
    if not np.array_equal(generator.get_state().numpy()[TORCH_MT_OFFSET:end], state[TORCH_MT_OFFSET:end]):
        raise RuntimeError("torch did not take the OS-entropy generator state")
    return generator


def seeded_torch_generator(seed: int) -> "torch.Generator":
    """A torch CPU generator from a public seed (reproducible mode only)."""
    import torch

    return torch.Generator().manual_seed(seed)
