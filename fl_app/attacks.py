"""Simulated attackers: what a malicious client sends instead of its honest result.

An attacker trains like everyone else, then replaces what it sends (model weights, or
the clipped update Δ under central DP with client clipping):
- `sign-flip`: the reflection of its honest change, scaled: ref − scale·(honest − ref);
- `scaled-noise`: ref + Gaussian noise whose norm is about scale × that of its honest change;
- `nan`: arrays full of NaN.
`ref` is the global model for weights, zero for updates.
"""

import numpy as np

Arrays = list[np.ndarray]


def attacked(attack: str, honest: Arrays, reference: Arrays, scale: float, rng: np.random.Generator) -> Arrays:
    """What the attacker sends in place of `honest`."""
    change = [h.astype(np.float64) - r for h, r in zip(honest, reference, strict=True)]
    if attack == "sign-flip":
        sent = [r - scale * c for r, c in zip(reference, change, strict=True)]
    elif attack == "scaled-noise":
        size = sum(c.size for c in change)
        norm = np.sqrt(sum(float(np.sum(c * c)) for c in change))
        std = scale * norm / np.sqrt(size)
        sent = [r + rng.normal(0.0, std, size=r.shape) for r in reference]
    elif attack == "nan":
        sent = [np.full(h.shape, np.nan) for h in honest]
    else:
        raise ValueError(f"unknown attack {attack!r}")
    return [s.astype(h.dtype) for s, h in zip(sent, honest, strict=True)]
