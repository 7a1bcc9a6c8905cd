"""ServerApp: FedAvg over the MNIST clients, evaluated centrally on the test set."""

import math
from collections.abc import Callable

from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig, SimpleClientManager

from data.mnist import TensorDataset, ensure_mnist, load_mnist
from fl_app.config import AppConfig, check_partitioning
from fl_app.model import Net, seeded_net
from fl_app.outputs import RunRecorder, new_run_dir, resolve_output_dir
from fl_app.server import RecordingServer
from fl_app.task import device, evaluate, get_weights, set_weights
from strategies import FedAvg
from strategies.accounting import ClientLevelAccountant
from strategies.dp_fedavg import DPFedAvg

MNIST_TRAIN_SIZE = 60_000


def round_learning_rate(cfg: AppConfig, server_round: int) -> float:
    """The clients' learning rate in `server_round` (1-based): constant, or cosine-decayed
    from `learning-rate` towards 0 over `num-server-rounds`."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (server_round - 1) / cfg.num_server_rounds
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def centralized_evaluator(
    test_set: TensorDataset,
) -> Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]]]:
    """`evaluate_fn` for the strategy: loss and accuracy of the global model on `test_set`."""
    net = Net().to(device())

    def evaluate_fn(server_round: int, weights: NDArrays, config: dict[str, Scalar]):
        set_weights(net, weights)
        loss, accuracy = evaluate(net, test_set)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def build_strategy(cfg: AppConfig, test_set: TensorDataset) -> FedAvg:
    """Central DP-FedAvg when `dp-mode = "central"`, else FedAvg (with local DP the
    clients add the noise)."""
    common = dict(
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=cfg.min_fit_clients,
        min_evaluate_clients=cfg.min_evaluate_clients,
        min_available_clients=cfg.min_available_clients,
        evaluate_fn=centralized_evaluator(test_set),
        on_fit_config_fn=lambda r: {"server-round": r, "learning-rate": round_learning_rate(cfg, r)},
        on_evaluate_config_fn=lambda r: {"server-round": r},
        initial_parameters=ndarrays_to_parameters(get_weights(seeded_net(cfg.seed))),
    )
    if cfg.dp_mode != "central":
        return FedAvg(**common)
    return DPFedAvg(
        clipping_norm=cfg.dp_clipping_norm,
        noise_multiplier=cfg.dp_noise_multiplier or None,
        clients_per_round=cfg.dp_clients_per_round,
        accountant=ClientLevelAccountant(cfg.dp_accountant, cfg.dp_delta),
        target_epsilon=cfg.dp_target_epsilon or None,
        rounds=cfg.num_server_rounds,
        clipping=cfg.dp_clipping,
        server_learning_rate=cfg.server_learning_rate,
        target_quantile=cfg.dp_target_quantile,
        clip_learning_rate=cfg.dp_clip_learning_rate,
        clipped_count_stddev=cfg.dp_clipped_count_stddev,
        seed=cfg.seed,
        **common,
    )


def server_fn(context: Context) -> ServerAppComponents:
    """Validate the config, load the test set, and build the strategy and server."""
    cfg = AppConfig.from_run_config(context.run_config)
    data_dir = ensure_mnist(cfg.data_dir, cfg.data_download)
    test_set = load_mnist(str(data_dir), train=False)
    run_dir = new_run_dir(resolve_output_dir(cfg.output_dir), context.run_id)
    resolved = cfg.to_run_config() | {"data-dir": str(data_dir), "output-dir": str(run_dir.parent)}
    recorder = RunRecorder(run_dir, resolved, cfg.num_server_rounds)

    strategy = build_strategy(cfg, test_set)
    server = RecordingServer(
        client_manager=SimpleClientManager(),
        strategy=strategy,
        recorder=recorder,
        check_population=lambda n: check_partitioning(cfg, n, MNIST_TRAIN_SIZE),
    )
    return ServerAppComponents(server=server, config=ServerConfig(num_rounds=cfg.num_server_rounds))


app = ServerApp(server_fn=server_fn)
