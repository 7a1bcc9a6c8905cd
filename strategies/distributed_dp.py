"""Distributed client-level DP-FedAvg (`dp-mode = "distributed"`): the clients add the
noise, so no party, the server included, ever holds an un-noised sum.

Per round the strategy Poisson-samples the cohort as `DPFedAvg` does and tells each
sampled client the round's scale γ, the noise multiplier σ/√g every unmasked sum must
carry and the cohort size K. Each client clips its update to S, rotates, scales, rounds
and adds Skellam noise of variance μ/(gτ(K)) (`strategies.privacy.discretization`),
τ(K) the fewest survivors with which SecAgg+ unmasks a cohort of K, and sends the
residues modulo M = 2^bits only through SecAgg+. The server receives the modular sum of
the n survivors' vectors, centres it, adds sk(μ − n·μ/(gτ(K))) so that the released sum
carries exactly sk(μ) whatever K and n are, unscales and rotates it back, divides by the
fixed expected cohort size m and steps its server optimizer, and accounts the round
once for two observers (`strategies.privacy.distributed.SkellamAccountant`). A round
with no sum (an empty cohort, or SecAgg+ halted by dropouts) releases sk(μ) noise the
server draws itself: a release that depends on no client's update.
"""

from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, log, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from strategies.dp_fedavg import UPDATE_SUM, DPFedAvg, UnnoisedRound
from strategies.privacy.discretization import decode_sum, rotation_signs, skellam_noise
from strategies.privacy.distributed import SkellamAccountant, SkellamSettings, settings_for_run
from strategies.privacy.ledger import Mechanism
from strategies.privacy.statement import distributed_privacy
from strategies.screening import FitFailures
from strategies.wire import COHORT_SIZE, DISTRIBUTED_NOISE_MULTIPLIER, DISTRIBUTED_SCALE

ROTATION_SALT = 0x0D15  # the rotation's seed: (seed, round, salt), public like the seed


def rotation_seed(seed: int, server_round: int) -> list[int]:
    """The public seed of a round's rotation signs."""
    return [seed, server_round, ROTATION_SALT]


def residues_of(message: np.ndarray, modulus: int) -> np.ndarray:
    """A client's message as residues modulo M: it sends r − M/2 as float64 (what
    SecAgg+'s quantizer maps back to r exactly, see `fl_app.secure_aggregation`)."""
    return np.mod(np.rint(message).astype(np.int64) + modulus // 2, modulus)


class DistributedDPFedAvg(DPFedAvg):
    """`DPFedAvg` whose noise the clients add (see the module docstring): `bits` per
    coordinate, `dimension` the model's parameter count, `threshold(K)` the fewest
    survivors SecAgg+ unmasks a cohort of K with; `secure_sum` whether the replies are
    SecAgg+'s sum (False: the in-process federation hands each client's residues, and
    the strategy adds them modulo M as SecAgg+ would)."""

    def __init__(self, *args: Any, bits: int, dimension: int, threshold: Callable[[int], int], seed: int,
                 secure_sum: bool, **kwargs: Any) -> None:
        if kwargs.get("clipping") != "client":
            raise ValueError("distributed DP needs clipping = 'client'")
        if not isinstance(kwargs.get("accountant"), SkellamAccountant):
            raise ValueError("distributed DP is accounted by a SkellamAccountant")
        kwargs["secure_aggregation"] = True
        super().__init__(*args, **kwargs)
        self.accountant: SkellamAccountant = kwargs["accountant"]  # type: ignore[assignment]
        self.bits = bits
        self.dimension = dimension
        self.threshold = threshold
        self.seed = seed
        self.secure_sum = secure_sum
        self.settings: SkellamSettings | None = None

    def __repr__(self) -> str:
        return f"DistributedDPFedAvg(S={self.clipping_norm}, sigma={self.noise_multiplier}, bits={self.bits})"

    @property
    def skellam(self) -> SkellamSettings:
        """The run's discretization and noise (fixed with the population)."""
        assert self.settings is not None, "fixed when round 1 is configured"
        return self.settings

    def mechanisms(self) -> list[Mechanism]:
        """One mechanism a round: the Skellam-noised sum of the clients' rounded vectors,
        sensitivity Δ₂ in integer units (S/γ plus rounding's extra), released noise σΔ₂."""
        return [Mechanism(UPDATE_SUM, "client", self.skellam.l2_sensitivity, self.skellam.noise_multiplier)]

    def settle_noise(self) -> None:
        """γ and σ of the run (`settings_for_run`: σ as given or calibrated with the
        Skellam accountant for the target ε against the released models)."""
        assert self.population is not None, "fixed by fix_population"
        self.settings = settings_for_run(
            clipping_norm=self.clipping_norm, dimension=self.dimension, bits=self.bits,
            noise_multiplier=self.noise_multiplier, target_epsilon=self.target_epsilon, rounds=self.rounds or 0,
            delta=self.accountant.delta, population=len(self.population), sampling_rate=self.sampling_rate,
            threshold=self.threshold,
        )
        self.noise_multiplier = self.settings.noise_multiplier
        log(INFO, "DP (distributed): population N = %s, q = %.4f, sigma = %.4f, S = %g, %s bits, scale %.3g, "
            "wrap-around probability <= %.1e a round, noise growth g = %.3f, Skellam accountant",
            len(self.population), self.sampling_rate, self.noise_multiplier, self.clipping_norm, self.bits,
            self.settings.scale, self.settings.wrap_bound, self.settings.noise_growth)

    def epsilon_after_next_round(self) -> float:
        """ε against the released models if one more round were released."""
        return self.accountant.epsilon_after_next(self.skellam, self.sampling_rate)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """`DPFedAvg`'s cohort, told γ, σ/√g and its size K (each client's noise share is μ/(gτ(K)))."""
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if not instructions:
            return []
        config = dict(instructions[0][1].config) | {
            DISTRIBUTED_SCALE: self.skellam.scale,
            # × noise_factor: the audit's fault, a server that tells the clients too small a σ
            DISTRIBUTED_NOISE_MULTIPLIER: self.skellam.server_noise_multiplier * self.noise_factor,
            COHORT_SIZE: len(instructions),
        }
        fit_ins = FitIns(parameters, config)
        return [(proxy, fit_ins) for proxy, _ in instructions]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: FitFailures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Decode the survivors' noised sum, top its noise up to sk(μ) (all of it when
        there is no sum), release sum/m, account."""
        s = self.skellam
        residues = self.residue_sum(results)
        unusable = residues is None and bool(results)
        if unusable:
            log(WARNING, "round %s: the secure sum is unusable; the round releases noise only", server_round)
        survivors = 0 if residues is None else len(results)
        if residues is None:
            residues = np.zeros(s.padded_dimension, dtype=np.int64)
        # × noise_factor²: the audit's fault, a server that releases too little noise
        top_up = s.top_up_variance(survivors, self.threshold(self.cohort_size)) * self.noise_factor ** 2
        noised = decode_sum(residues, signs=rotation_signs(rotation_seed(self.seed, server_round),
                                                           s.padded_dimension),
                            scale=s.scale, modulus=s.modulus, dimension=s.dimension,
                            top_up=skellam_noise(self.randomness.noise, top_up, s.padded_dimension))
        mean, offset = [], 0
        for shape in self.screen.expected_shapes:
            size = int(np.prod(shape))
            mean.append(noised[offset:offset + size].reshape(shape) / self.clients_per_round)
            offset += size
        if self.release_observer is not None:
            self.release_observer(mean)
        parameters = self._step(server_round, mean)
        self.accountant.step(s, self.sampling_rate)
        metrics: dict[str, Scalar] = {
            "epsilon": self.accountant.epsilon(),
            "epsilon_against_server": self.accountant.epsilon(against_server=True),
            "cohort_size": self.cohort_size,
            "num_rejected": len(results) if unusable else 0,
            "clipping_norm": self.clipping_norm,
        }
        return parameters, metrics

    def residue_sum(self, results: list[tuple[ClientProxy, FitRes]]) -> np.ndarray | None:
        """The survivors' vectors summed modulo M, or None (no result, or not one vector of
        d' coordinates each). SecAgg+ hands every result its mean (r_sum − n·M/2)/n
        of the n survivors' messages; in process each result is one client's message."""
        s = self.skellam
        messages = []
        for _, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            if (len(arrays) != 1 or arrays[0].shape != (s.padded_dimension,) or res.num_examples != 1
                    or not np.isfinite(arrays[0]).all()):
                return None
            messages.append(arrays[0].astype(np.float64))
        if not messages:
            return None
        if self.secure_sum:
            n = len(messages)
            return np.mod(np.rint(messages[0] * n).astype(np.int64) + n * (s.modulus // 2), s.modulus)
        total = np.zeros(s.padded_dimension, dtype=np.int64)
        for message in messages:
            total = np.mod(total + residues_of(message, s.modulus), s.modulus)
        return total

    def unnoised_round(self, server_round: int, results: list[tuple[ClientProxy, FitRes]]) -> UnnoisedRound:
        """Never available: no party holds the sum before its noise."""
        raise RuntimeError("distributed DP: the server never holds an un-noised sum")

    def state_dict(self) -> dict[str, Any]:
        """`DPFedAvg`'s state and the run's discretization."""
        return super().state_dict() | {"skellam": self.settings.as_dict() if self.settings else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.settings = SkellamSettings(**state["skellam"]) if state.get("skellam") else None

    def summary(self) -> dict[str, Any]:
        """The two statements (against the released models, against the server) and the ledger."""
        s = self.settings
        return {"privacy": distributed_privacy(
            epsilon=self.accountant.epsilon(),
            epsilon_against_server=self.accountant.epsilon(against_server=True),
            target_epsilon=self.target_epsilon,
            delta=self.accountant.delta,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate if self.population else float("nan"),
            rounds_accounted=self.accountant.rounds,
            accountant=self.accountant.kind,
            clipping_norm=self.clipping_norm,
            clients_per_round=self.clients_per_round,
            population=len(self.population) if self.population else 0,
            reproducible_noise=self.randomness.reproducible,
            mechanisms=[m.as_dict() | skellam_figures(s) for m in self.mechanisms()] if s else [],
        )}


def skellam_figures(settings: SkellamSettings) -> dict[str, Any]:
    """What the ledger adds to a Skellam mechanism's entry."""
    scaled = settings.clipping_norm / settings.scale
    return {
        "noise": "skellam",
        "l1_sensitivity": settings.l1_sensitivity,
        "sensitivity_units": f"integers of {settings.scale:.6g} (S/scale = {scaled:.6g})",
        "rounding_norm_increase": settings.l2_sensitivity / scaled - 1,
        "variance": settings.variance,
        "noise_growth": settings.noise_growth,
        "noise_multiplier_against_server": settings.server_noise_multiplier,
        "wrap_around_probability": settings.wrap_bound,
        "bits": settings.bits,
        "scale": settings.scale,
        "padded_dimension": settings.padded_dimension,
        "cohort_bound": settings.cohort_bound,
    }
