"""A client's message under distributed DP: its clipped update rotated, scaled, rounded,
with its share of the Skellam noise, as residues modulo 2^bits, in the form SecAgg+
carries exactly (`fl_app.secure_aggregation`)."""

from collections.abc import Mapping

import numpy as np
from flwr.common import NDArrays, Scalar

from fl_app.config import AppConfig
from fl_app.secagg_params import unmask_threshold
from strategies.distributed_dp import rotation_seed
from strategies.privacy.discretization import encode_update, rotation_signs
from strategies.privacy.distributed import SkellamSettings
from strategies.privacy.randomness import os_entropy_seed_sequence
from strategies.wire import CLIENT_CLIP_NORM, COHORT_SIZE, DISTRIBUTED_NOISE_MULTIPLIER, DISTRIBUTED_SCALE, SERVER_ROUND

NOISE_SALT = 0x5EED  # reproducible mode only: (seed, client, round, salt)


def round_settings(cfg: AppConfig, dimension: int, config: Mapping[str, Scalar]) -> tuple[SkellamSettings, int]:
    """The round's discretization and noise as the server announced them, and the cohort
    size K: σ is the noise every unmasked sum must carry, so the client's settings have
    g = 1 and its share is (σΔ₂)²/τ(K)."""
    scale, sigma = float(config[DISTRIBUTED_SCALE]), float(config[DISTRIBUTED_NOISE_MULTIPLIER])
    cohort, clip = int(config[COHORT_SIZE]), float(config[CLIENT_CLIP_NORM])
    if not (scale > 0 and sigma > 0 and cohort >= 1 and clip > 0):
        raise ValueError(f"distributed DP: the server sent scale {scale}, sigma {sigma}, cohort {cohort}, "
                         f"clipping norm {clip}; refusing to send an update")
    settings = SkellamSettings(clipping_norm=clip, dimension=dimension, bits=cfg.dp.bits, scale=scale,
                               noise_multiplier=sigma, noise_growth=1.0, cohort_bound=cohort, wrap_bound=float("nan"))
    return settings, cohort


def distributed_message(cfg: AppConfig, client_key: int, clipped: NDArrays, config: Mapping[str, Scalar]) -> np.ndarray:
    """The message r − M/2 (float64, d' values; r the residues) for a clipped update."""
    update = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in clipped])
    settings, cohort = round_settings(cfg, update.size, config)
    server_round = int(config[SERVER_ROUND])
    threshold = unmask_threshold(cohort, cfg.secagg.num_shares, cfg.secagg.reconstruction_threshold)
    seed = (np.random.SeedSequence([cfg.run.seed, client_key, server_round, NOISE_SALT])
            if cfg.dp.reproducible_noise else os_entropy_seed_sequence())
    residues = encode_update(
        update, signs=rotation_signs(rotation_seed(cfg.run.seed, server_round), settings.padded_dimension),
        scale=settings.scale, norm_bound=settings.l2_sensitivity, noise_variance=settings.share_variance(threshold),
        modulus=settings.modulus, rng=np.random.default_rng(seed),
    )
    return (residues - settings.modulus // 2).astype(np.float64)
