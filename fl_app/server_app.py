"""ServerApp: the configured strategy over the MNIST clients, evaluated centrally on
the test set."""

import math
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.common import Context, NDArrays, Scalar, log, ndarrays_to_parameters
from flwr.server import Grid, ServerApp, ServerConfig
from flwr.server.compat import start_grid
from flwr.server.strategy import Strategy

from data.mnist import MNIST_TRAIN_SIZE, TensorDataset, ensure_mnist, load_mnist
from fl_app.checkpoint import load_checkpoint
from fl_app.client_manager import KeyedClientManager
from fl_app.config import AppConfig, ConfigError, auto_settings, check_partitioning, check_resumable
from fl_app.model import build_model, seeded_model
from fl_app.outputs import RunRecorder, new_run_dir, output_dir_problem, resolve_output_dir
from strategies.privacy.release import ReleasePolicy
from fl_app.secure_aggregation import SecAggPlusServer
from fl_app.server import RecordingServer
from fl_app.tracking import check_tracking
from fl_app.task import device, evaluate, get_weights, set_weights
from strategies import registry
from strategies.privacy.accounting import ClientLevelAccountant
from strategies.dp_fedavg import DPFedAvg
from strategies.privacy.randomness import DPRandomness
from strategies.privacy.statement import LocalPrivacyLedger
from strategies.registry import StrategyArgs
from strategies.wire import LEARNING_RATE, SERVER_ROUND

def round_learning_rate(cfg: AppConfig, server_round: int) -> float:
    """The clients' learning rate in `server_round` (1-based): constant, or cosine-decayed
    from `learning-rate` towards 0 over `num-server-rounds`."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (server_round - 1) / cfg.num_server_rounds
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_test_set(cfg: AppConfig, data_dir: str) -> TensorDataset:
    """The MNIST test set, or its first `eval-samples` samples."""
    test_set = load_mnist(data_dir, train=False)
    return test_set.subset(torch.arange(cfg.eval_samples)) if cfg.eval_samples else test_set


def centralized_evaluator(
    test_set: TensorDataset, model: str,
) -> Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]]]:
    """`evaluate_fn` for the strategy: loss and accuracy of the global `model` on `test_set`."""
    net = build_model(model).to(device())

    def evaluate_fn(server_round: int, weights: NDArrays, config: dict[str, Scalar]):
        set_weights(net, weights)
        loss, accuracy = evaluate(net, test_set)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def strategy_args(cfg: AppConfig, test_set: TensorDataset) -> StrategyArgs:
    """What every strategy receives, the screen's round rules and the built-in strategies'
    hyperparameters."""
    common = dict(
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=cfg.min_fit_clients,
        min_evaluate_clients=cfg.min_evaluate_clients,
        min_available_clients=cfg.min_available_clients,
        evaluate_fn=centralized_evaluator(test_set, cfg.model),
        on_fit_config_fn=lambda r: {SERVER_ROUND: r, LEARNING_RATE: round_learning_rate(cfg, r)},
        on_evaluate_config_fn=lambda r: {SERVER_ROUND: r},
        initial_parameters=ndarrays_to_parameters(get_weights(seeded_model(cfg.model, cfg.seed))),
    )
    return StrategyArgs(
        common=common,
        max_failure_fraction=cfg.max_failure_fraction,
        max_examples_ratio=cfg.max_examples_ratio,
        max_update_norm_ratio=cfg.max_update_norm_ratio,
        server_learning_rate=cfg.server_learning_rate,
        server_momentum=cfg.server_momentum,
        server_beta_1=cfg.server_beta_1,
        server_beta_2=cfg.server_beta_2,
        server_tau=cfg.server_tau,
        trim_fraction=cfg.trim_fraction,
        num_malicious_clients=cfg.num_malicious_clients,
        client_learning_rate=cfg.learning_rate,
        qfedavg_q=cfg.qfedavg_q,
    )


def build_strategy(cfg: AppConfig, test_set: TensorDataset) -> Strategy:
    """`strategy` by name behind the screen; with `dp-mode = "central"`, DP-FedAvg around
    it, whose released model feeds the strategy's server optimizer, if it has one (local
    DP: clients add the noise). The screen logs a DP run's rejections only with
    `dp-release-unprotected-metrics`."""
    args = strategy_args(cfg, test_set)
    if cfg.dp_mode != "central":
        return registry.build(cfg.strategy, args)
    return DPFedAvg(
        registry.inner(cfg.strategy, args),
        registry.screen(args, log_rejections=cfg.dp_release_unprotected_metrics),
        clipping=cfg.dp_clipping,
        clipping_norm=cfg.dp_clipping_norm,
        noise_multiplier=cfg.dp_noise_multiplier or None,
        clients_per_round=cfg.dp_clients_per_round,
        accountant=ClientLevelAccountant(cfg.dp_accountant, cfg.dp_delta),
        target_epsilon=cfg.dp_target_epsilon or None,
        rounds=cfg.num_server_rounds,
        server_learning_rate=1.0 if cfg.strategy in registry.SERVER_OPTIMIZERS else cfg.server_learning_rate,
        target_quantile=cfg.dp_target_quantile,
        clip_learning_rate=cfg.dp_clip_learning_rate,
        clipped_count_stddev=cfg.dp_clipped_count_stddev,
        secure_aggregation=cfg.secure_aggregation,
        randomness=DPRandomness(cfg.seed, reproducible=cfg.dp_reproducible_noise),
        min_available_clients=cfg.min_available_clients,
        on_fit_config_fn=args.common["on_fit_config_fn"],
    )


def warn_if_reproducible_noise(cfg: AppConfig) -> None:
    """Log that a DP run whose noise follows the public seed makes no valid claim."""
    if cfg.dp_mode != "off" and cfg.dp_reproducible_noise:
        log(WARNING, "dp-reproducible-noise = true: DP noise and sampling follow the public "
            "seed, which every client can read; this run's epsilon is NOT a valid privacy claim")


def local_privacy_ledger(cfg: AppConfig) -> LocalPrivacyLedger | None:
    """Collects the clients' reports under local DP; None otherwise."""
    if cfg.dp_mode != "local":
        return None
    return LocalPrivacyLedger(
        target_epsilon=cfg.dp_target_epsilon, delta=cfg.dp_delta, accountant=cfg.dp_accountant,
        max_grad_norm=cfg.dp_max_grad_norm, reproducible_noise=cfg.dp_reproducible_noise,
    )


def main(grid: Grid, context: Context) -> None:
    """Validate the config, load the test set, build the strategy and run the rounds
    (through SecAgg+ when `secure-aggregation = true`), or continue the run in
    `resume-from` after its last checkpoint; with `tracking`, the run also goes to MLflow
    (marked FAILED if it stops with an error)."""
    cfg = AppConfig.from_run_config(context.run_config)
    check_tracking(cfg.tracking)
    if not cfg.resume_from and (problem := output_dir_problem(resolve_output_dir(cfg.output_dir))):
        raise ConfigError(f"Invalid run-config: output-dir = '{cfg.output_dir}' ({problem})")
    resume = load_checkpoint(cfg.resume_from) if cfg.resume_from else None
    data_dir = ensure_mnist(cfg.data_dir, cfg.data_download)
    test_set = load_test_set(cfg, str(data_dir))
    if resume is not None:
        run_dir = Path(cfg.resume_from).expanduser().resolve()
        output_dir = run_dir.parent
    else:
        output_dir = resolve_output_dir(cfg.output_dir)
        run_dir = new_run_dir(output_dir, context.run_id)
    resolved = cfg.to_run_config() | {"data-dir": str(data_dir), "output-dir": str(output_dir)}
    if resume is not None:
        check_resumable(resume.config, resolved)
    recorder = RunRecorder(
        run_dir, resolved, cfg.num_server_rounds, tensorboard=cfg.tensorboard, tracking=cfg.tracking,
        tracking_uri=cfg.tracking_uri, model=cfg.model, resumed_rows=resume.history if resume else None,
        resumed_seconds=resume.wall_seconds if resume else 0.0,
    )
    with recorder:
        timeout = cfg.round_timeout or None
        automatic = auto_settings(context.run_config)
        if automatic:
            log(INFO, "auto settings%s: %s", " (the DP recipe)" if cfg.dp_mode == "central" else "",
                ", ".join(f"{k} = {v!r}" for k, v in automatic.items()))
        warn_if_reproducible_noise(cfg)
        common = dict(
            client_manager=KeyedClientManager(cfg.seed),
            strategy=build_strategy(cfg, test_set),
            recorder=recorder,
            check_population=lambda n: check_partitioning(cfg, n, MNIST_TRAIN_SIZE),
            quorum=cfg.min_available_clients,
            checkpoint_every=cfg.checkpoint_every,
            config=resolved,
            resume=resume,
            release=ReleasePolicy(cfg.dp_mode, cfg.dp_release_unprotected_metrics),
            local_privacy=local_privacy_ledger(cfg),
        )
        if cfg.secure_aggregation:
            server: RecordingServer = SecAggPlusServer(
                grid=grid,
                context=context,
                num_shares=cfg.secagg_num_shares,
                reconstruction_threshold=cfg.secagg_reconstruction_threshold,
                clipping_range=cfg.dp_clipping_norm,
                timeout=timeout,
                **common,
            )
        else:
            server = RecordingServer(**common)
        start_grid(grid=grid, server=server,
                   config=ServerConfig(num_rounds=cfg.num_server_rounds, round_timeout=timeout))


app = ServerApp()
app.main()(main)
