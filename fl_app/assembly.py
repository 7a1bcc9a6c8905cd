"""How a run is assembled, in one place for the ServerApp (`fl_app/server_app.py`, over
Flower's transport) and the in-process federation (`fl_app/in_process.py`).

`prepare_run` validates the run-config and gathers what the run needs: the run
directory's writer lock, the checkpoint to resume (refused if the run finished or the
config changes what the run computes), MNIST and the test set, the run directory's
`RunRecorder`, the release policy and, under local DP, the ledger of the clients'
privacy reports; it logs the `auto` settings and warns of reproducible DP noise. A run
writes to a new `<output-dir>/<time>-run<run_id>` (mode 0700), to the `run_dir` its
caller names (in process), or, with `resume-from`, to the resumed run's.

`build_server` makes the client manager, the strategy and the server that runs the
rounds: a `RecordingServer` that waits for `min-available-clients` nodes and checks the
federation they form (`check_population`), or a `SecAggPlusServer` with
`secure-aggregation = true`, which needs Flower's transport (a `Grid`).
"""

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import Context, NDArrays, Scalar, log, ndarrays_to_parameters
from flwr.server import Grid
from flwr.server.strategy import Strategy

from data.mnist import MNIST_TRAIN_SIZE, TensorDataset, ensure_mnist, load_mnist
from fl_app.checkpoint import Checkpoint, check_run_dir, load_checkpoint, resumed_history
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, ConfigError, auto_settings, check_partitioning, check_resumable
from fl_app.model import build_model, seeded_model
from fl_app.outputs import RunRecorder, check_tensorboard, output_dir_problem, resolve_output_dir
from fl_app.run_dir import RunLock, new_run_dir
from fl_app.schedule import round_learning_rates, server_step_factor
from fl_app.secagg_params import unmask_threshold
from fl_app.secure_aggregation import SecAggPlusServer
from fl_app.server import RecordingServer
from fl_app.task import device, evaluate, get_weights, set_weights
from fl_app.tracking import check_tracking
from strategies import registry
from strategies.distributed_dp import DistributedDPFedAvg
from strategies.dp_fedavg import DPFedAvg
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.privacy.distributed import FIELD_BITS, SkellamAccountant
from strategies.privacy.randomness import DPRandomness
from strategies.privacy.release import ReleasePolicy
from strategies.privacy.statement import LocalPrivacyLedger
from strategies.registry import StrategyArgs
from strategies.wire import FINAL_LEARNING_RATE, LEARNING_RATE, SERVER_ROUND


def fit_config(cfg: AppConfig, server_round: int) -> dict[str, Scalar]:
    """What the clients are told for `server_round`: the round and its learning rates."""
    first, last = round_learning_rates(cfg, server_round)
    return {SERVER_ROUND: server_round, LEARNING_RATE: first, FINAL_LEARNING_RATE: last}


def load_test_set(cfg: AppConfig, data_dir: str) -> TensorDataset:
    """The MNIST test set, or its first `eval-samples` samples."""
    test_set = load_mnist(data_dir, train=False)
    return test_set.subset(torch.arange(cfg.data.eval_samples)) if cfg.data.eval_samples else test_set


# The CPU's result depends on torch's thread count in the last bits, and in a simulation
# that count depends on timing (torch reads OMP_NUM_THREADS, which Ray sets to 1, at its
# first parallel operation): a fixed count makes the figures the same on every run, in
# the simulation and in process. Two threads evaluate 10,000 test images in 3.7-4.3 s
# against 6.9-7.1 s on one (2-core machine), while the clients wait between rounds.
EVAL_THREADS = 2


def centralized_evaluator(
    test_set: TensorDataset, model: str,
) -> Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]]]:
    """`evaluate_fn` for the strategy: loss and accuracy of the global `model` on `test_set`,
    computed on `EVAL_THREADS` CPU threads."""
    net = build_model(model).to(device())

    def evaluate_fn(server_round: int, weights: NDArrays, config: dict[str, Scalar]):
        set_weights(net, weights)
        threads = torch.get_num_threads()
        torch.set_num_threads(EVAL_THREADS)
        try:
            loss, accuracy = evaluate(net, test_set)
        finally:
            torch.set_num_threads(threads)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def strategy_args(cfg: AppConfig, test_set: TensorDataset) -> StrategyArgs:
    """What every strategy receives, the screen's round rules and the built-in strategies'
    hyperparameters."""
    common = dict(
        fraction_fit=cfg.strategy.fraction_fit,
        fraction_evaluate=cfg.strategy.fraction_evaluate,
        min_fit_clients=cfg.strategy.min_fit_clients,
        min_evaluate_clients=cfg.strategy.min_evaluate_clients,
        min_available_clients=cfg.strategy.min_available_clients,
        evaluate_fn=centralized_evaluator(test_set, cfg.train.model),
        on_fit_config_fn=lambda r: fit_config(cfg, r),
        on_evaluate_config_fn=lambda r: {SERVER_ROUND: r},
        initial_parameters=ndarrays_to_parameters(get_weights(seeded_model(cfg.train.model, cfg.run.seed))),
    )
    hyperparameters = {f.name: getattr(cfg.strategy, f.name) for f in fields(StrategyArgs)
                       if f.name not in ("common", "client_learning_rate")}  # same names in the section
    return StrategyArgs(common=common, client_learning_rate=cfg.train.learning_rate, **hyperparameters)


def build_strategy(cfg: AppConfig, test_set: TensorDataset, *, secure_sum: bool = True) -> Strategy:
    """`strategy` by name behind the screen; with client-level DP, DP-FedAvg around it
    (`dp-mode = "distributed"`: its distributed form, which receives SecAgg+'s sum, or
    with `secure_sum = False` each client's residues), whose released model feeds the
    strategy's server optimizer, if it has one (local DP: clients add the noise). The
    screen logs a DP run's rejections only with `dp-release-unprotected-metrics`."""
    args = strategy_args(cfg, test_set)
    if not cfg.dp.central:
        return registry.build(cfg.strategy.name, args)
    options: dict[str, Any] = dict(
        clipping=cfg.dp.clipping,
        clipping_norm=cfg.dp.clipping_norm,
        noise_multiplier=cfg.dp.noise_multiplier or None,
        clients_per_round=cfg.dp.clients_per_round,
        accountant=(SkellamAccountant(cfg.dp.delta) if cfg.dp.mode == "distributed"
                    else ClientLevelAccountant(cfg.dp.accountant, cfg.dp.delta)),
        target_epsilon=cfg.dp.target_epsilon or None,
        rounds=cfg.run.num_server_rounds,
        server_learning_rate=(1.0 if cfg.strategy.name in registry.SERVER_OPTIMIZERS
                              else cfg.strategy.server_learning_rate),
        target_quantile=cfg.dp.target_quantile,
        clip_learning_rate=cfg.dp.clip_learning_rate,
        clipped_count_stddev=cfg.dp.clipped_count_stddev,
        secure_aggregation=cfg.secagg.enabled,
        randomness=DPRandomness(cfg.run.seed, reproducible=cfg.dp.reproducible_noise),
        min_available_clients=cfg.strategy.min_available_clients,
        on_fit_config_fn=args.common["on_fit_config_fn"],
        server_step_factor=partial(server_step_factor, cfg.strategy.server_lr_schedule, cfg.run.num_server_rounds),
    )
    inner = registry.inner(cfg.strategy.name, args)
    screen = registry.screen(args, log_rejections=cfg.dp.release_unprotected_metrics)
    if cfg.dp.mode == "central":
        return DPFedAvg(inner, screen, **options)
    if not secure_sum:
        log(WARNING, "in-process federation: the server adds the clients' noised residues itself, standing "
            "in for SecAgg+ (benchmarks and audits only: each client's vector carries only its noise share)")
    dimension = sum(int(np.prod(shape)) for shape in screen.expected_shapes)
    return DistributedDPFedAvg(
        inner, screen, bits=cfg.dp.bits, dimension=dimension, seed=cfg.run.seed, secure_sum=secure_sum,
        threshold=partial(unmask_threshold, num_shares=cfg.secagg.num_shares,
                          reconstruction_threshold=cfg.secagg.reconstruction_threshold),
        **options,
    )


def warn_if_reproducible_noise(cfg: AppConfig) -> None:
    """Log that a DP run whose noise follows the public seed makes no valid claim."""
    if cfg.dp.mode != "off" and cfg.dp.reproducible_noise:
        log(WARNING, "dp-reproducible-noise = true: DP noise and sampling follow the public "
            "seed, which every client can read; this run's epsilon is NOT a valid privacy claim")


def local_privacy_ledger(cfg: AppConfig) -> LocalPrivacyLedger | None:
    """Collects the clients' reports under local DP; None otherwise."""
    if cfg.dp.mode != "local":
        return None
    return LocalPrivacyLedger(
        target_epsilon=cfg.dp.target_epsilon, delta=cfg.dp.delta, accountant=cfg.dp.accountant,
        max_grad_norm=cfg.dp.max_grad_norm, reproducible_noise=cfg.dp.reproducible_noise,
    )


def round_timeout(cfg: AppConfig) -> float | None:
    """`round-timeout` in seconds, None for no limit (0)."""
    return cfg.run.round_timeout or None


@dataclass(frozen=True)
class PreparedRun:
    """What a run needs before its server is built (see `prepare_run`)."""

    cfg: AppConfig
    config: dict[str, Any]  # the resolved run-config: config.json and the checkpoints
    resume: Checkpoint | None
    test_set: TensorDataset
    recorder: RunRecorder
    release: ReleasePolicy
    local_privacy: LocalPrivacyLedger | None


def prepare_run(run_config: dict[str, Any], *, run_id: int = 0, run_dir: Path | None = None) -> PreparedRun:
    """Validate `run_config`; lock the run directory (a new one, or the one to resume: before
    its checkpoint is read); load the checkpoint to resume, MNIST and the test set; open the
    run directory's `RunRecorder`, which holds the lock from then on."""
    cfg = AppConfig.from_run_config(run_config)
    check_tracking(cfg.run.tracking)
    check_tensorboard(cfg.run.tensorboard)
    if not cfg.run.resume_from and (problem := output_dir_problem(resolve_output_dir(cfg.run.output_dir))):
        raise ConfigError(f"Invalid run-config: output-dir = '{cfg.run.output_dir}' ({problem})")
    if cfg.run.resume_from:
        check_run_dir(cfg.run.resume_from)
        run_dir = Path(cfg.run.resume_from).expanduser().resolve()
        output_dir = run_dir.parent
    else:
        output_dir = resolve_output_dir(cfg.run.output_dir)
        if run_dir is None:
            run_dir = new_run_dir(output_dir, run_id)
        else:
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        resume = load_checkpoint(cfg.run.resume_from) if cfg.run.resume_from else None
        data_dir = ensure_mnist(cfg.data.data_dir, cfg.data.data_download)
        test_set = load_test_set(cfg, str(data_dir))
        resolved = cfg.to_run_config() | {"data-dir": str(data_dir), "output-dir": str(output_dir)}
        if resume is not None:
            check_resumable(resume.config, resolved)
        recorder = RunRecorder(
            run_dir, resolved, cfg.run.num_server_rounds, tensorboard=cfg.run.tensorboard,
            tracking=cfg.run.tracking, tracking_uri=cfg.run.tracking_uri, model=cfg.train.model,
            resumed_rows=resumed_history(run_dir, resume) if resume else None,
            resumed_seconds=resume.wall_seconds if resume else 0.0, append_only=cfg.dp.mode != "off", lock=lock,
        )
    except BaseException:
        lock.release()
        raise
    automatic = auto_settings(run_config)
    if automatic:
        log(INFO, "auto settings%s: %s", " (the DP recipe)" if cfg.dp.central else "",
            ", ".join(f"{k} = {v!r}" for k, v in automatic.items()))
    warn_if_reproducible_noise(cfg)
    return PreparedRun(
        cfg=cfg, config=resolved, resume=resume, test_set=test_set, recorder=recorder,
        release=ReleasePolicy(cfg.dp.mode, cfg.dp.release_unprotected_metrics),
        local_privacy=local_privacy_ledger(cfg),
    )


def build_server(run: PreparedRun, *, grid: Grid | None = None, context: Context | None = None,
                 server_class: type[RecordingServer] = RecordingServer, **options: Any) -> RecordingServer:
    """The run's client manager, strategy and `server_class(**options)`, or a SecAgg+ server over `grid`."""
    cfg = run.cfg
    common: dict[str, Any] = dict(
        client_manager=KeyedClientManager(cfg.run.seed),
        strategy=build_strategy(cfg, run.test_set, secure_sum=grid is not None),
        recorder=run.recorder,
        check_population=lambda n: check_partitioning(cfg, n, MNIST_TRAIN_SIZE),
        quorum=cfg.strategy.min_available_clients,
        checkpoint_every=cfg.run.checkpoint_every,
        config=run.config,
        resume=run.resume,
        release=run.release,
        local_privacy=run.local_privacy,
    ) | options
    if not cfg.secagg.enabled:
        return server_class(**common)
    if grid is None or context is None:
        if cfg.dp.mode == "distributed":  # in process: the strategy sums the residues (see build_strategy)
            return server_class(**common)
        raise ConfigError("Invalid run-config: secure-aggregation = true (allowed: only over Flower's "
                          "transport, i.e. run_simulation.py or a deployment; not in process)")
    return SecAggPlusServer(
        grid=grid,
        context=context,
        num_shares=cfg.secagg.num_shares,
        reconstruction_threshold=cfg.secagg.reconstruction_threshold,
        **secagg_ranges(cfg),
        timeout=round_timeout(cfg),
        **common,
    )


def secagg_ranges(cfg: AppConfig) -> dict[str, Any]:
    """SecAgg+'s quantization: floats in [−S, S] on 2^22 levels (Flower's default) under
    central DP; under distributed DP the clients' messages r − M/2 pass exactly
    (clipping range M/2, quantization range M: one level per integer)."""
    if cfg.dp.mode != "distributed":
        return {"clipping_range": cfg.dp.clipping_norm}
    modulus = 1 << cfg.dp.bits
    return {"clipping_range": float(modulus // 2), "quantization_range": modulus, "modulus_range": 1 << FIELD_BITS}
