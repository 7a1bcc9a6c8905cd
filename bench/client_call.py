"""Where a simulated client's time goes: one fit message through the ClientApp, in this
process and through a Ray actor, for each inline limit of Ray's.

    python -m bench.client_call [--model cnn] [--samples-per-client 60] [--calls 100] \
        [--inline-bytes 102400 1048576] [--json client_call.json]

The message is what the server sends a client of `bench.scale` (the global model of
`--model`, round 1's learning rates; the client trains 1 epoch, batch 32, on its
`--samples-per-client` of MNIST, partition k of 1000). Measured, as the mean over
`--calls` calls, each to another partition: the ClientApp call in this process (one
torch thread, as an actor has), and, in a child process per `--inline-bytes` value (Ray's
`max_direct_call_object_size`: task arguments and results up to it go inline, larger
ones through the object store), one Ray actor with 1 CPU asked one call at a time: the
round trip of an echo of the message and its context, and of the ClientApp call as
Flower's `ClientAppActor.run` makes it, with the time inside the actor. The simulation
runs such calls on two actors at once, beside the ServerApp, so a round's overhead is
not their sum; what they show is what each part costs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch
from flwr.common import Context, FitIns, Message, MessageType, RecordDict, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from bench.common import APP_DEFAULTS, ROOT, add_data_dir, add_json, argument_parser, machine, write_json
from bench.scale import scale_overrides
from fl_app.client_app import app
from fl_app.config import AppConfig
from fl_app.model import MODELS, seeded_model
from fl_app.schedule import round_learning_rates
from fl_app.task import get_weights
from strategies.wire import FINAL_LEARNING_RATE, LEARNING_RATE, SERVER_ROUND

NUM_PARTITIONS = 1000


def run_config(model: str, data_dir: str, samples: int) -> dict[str, Any]:
    """The run-config of `bench.scale`'s simulation (its defaults) for `model`."""
    return APP_DEFAULTS | scale_overrides(data_dir, model, samples, NUM_PARTITIONS, clients_per_round=100, rounds=4)


def fit_message(config: dict[str, Any], partition: int) -> tuple[Message, Context]:
    """Round 1's fit message for `partition` and that node's context."""
    cfg = AppConfig.from_run_config(config)
    first, last = round_learning_rates(cfg, 1)
    ins = FitIns(ndarrays_to_parameters(get_weights(seeded_model(cfg.train.model, cfg.run.seed))),
                 {SERVER_ROUND: 1, LEARNING_RATE: first, FINAL_LEARNING_RATE: last})
    node = partition + 1
    message = Message(content=compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=node,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = f"fit-{partition}"
    context = Context(run_id=1, node_id=node, node_config={"partition-id": partition,
                                                           "num-partitions": NUM_PARTITIONS},
                      state=RecordDict(), run_config=config)
    return message, context


def set_identity() -> None:
    """The identity a ServerApp process has, which messages are built with."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def mean_ms(calls: list[float]) -> float:
    return 1000 * sum(calls) / len(calls)


def in_process(config: dict[str, Any], calls: int) -> dict[str, float]:
    """Message size and the ClientApp call's mean time in this process (after 5 warm-up calls)."""
    torch.set_num_threads(1)
    for partition in range(5):
        app(*fit_message(config, partition))
    times = []
    for partition in range(5, 5 + calls):
        message, context = fit_message(config, partition)
        start = time.perf_counter()
        reply = app(message, context)
        times.append(time.perf_counter() - start)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
    size = sum(len(t) for t in compat.recorddict_to_fitins(message.content, keep_input=True).parameters.tensors)
    return {"model_bytes": size, "clientapp_call_ms": mean_ms(times)}


def through_ray(config: dict[str, Any], calls: int) -> dict[str, float]:
    """Round trips to one Ray actor: an echo of (message, context), and the ClientApp call
    (with the time inside the actor). Ray's inline limit comes from the environment."""
    import ray

    @ray.remote(num_cpus=1)
    class Client:
        """What Flower's `ClientAppActor.run` does with a message, timed inside; and an echo."""

        def echo(self, message: Message, context: Context) -> tuple[Message, Context]:
            return message, context

        def timed(self, message: Message, context: Context) -> tuple[float, Message, Context]:
            set_identity()
            start = time.perf_counter()
            reply = app(message, context)
            return time.perf_counter() - start, reply, context

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        echo = Client.remote()
        for partition in range(5):
            ray.get(echo.timed.remote(*fit_message(config, partition)))
        figures: dict[str, list[float]] = {"echo": [], "actor": [], "inside": []}
        for partition in range(5, 5 + calls):
            message, context = fit_message(config, partition)
            start = time.perf_counter()
            ray.get(echo.echo.remote(message, context))
            figures["echo"].append(time.perf_counter() - start)
            start = time.perf_counter()
            inside, _, _ = ray.get(echo.timed.remote(message, context))
            figures["actor"].append(time.perf_counter() - start)
            figures["inside"].append(inside)
        return {"echo_round_trip_ms": mean_ms(figures["echo"]),
                "clientapp_call_round_trip_ms": mean_ms(figures["actor"]),
                "clientapp_call_inside_actor_ms": mean_ms(figures["inside"])}
    finally:
        ray.shutdown()


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--samples-per-client", type=int, default=60)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--inline-bytes", type=int, nargs="+", default=[100 * 1024, 1 << 20])
    parser.add_argument("--ray-child", action="store_true", help=argparse.SUPPRESS)  # the Ray part, as a child
    add_data_dir(parser)
    add_json(parser, "client_call.json")
    args = parser.parse_args()
    set_identity()
    config = run_config(args.model, str(args.data_dir.resolve()), args.samples_per_client)
    if args.ray_child:
        print(json.dumps(through_ray(config, args.calls)))
        return
    figures: dict[str, Any] = {"setup": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
                               **in_process(config, args.calls), "ray": {}}
    for limit in args.inline_bytes:
        child = subprocess.run(
            [sys.executable, "-m", "bench.client_call", "--ray-child", "--model", args.model,
             "--samples-per-client", str(args.samples_per_client), "--calls", str(args.calls),
             "--data-dir", str(args.data_dir), "--json", os.devnull],
            cwd=ROOT, env=os.environ | {"RAY_max_direct_call_object_size": str(limit)},
            capture_output=True, text=True, check=True)
        figures["ray"][str(limit)] = json.loads(child.stdout.strip().splitlines()[-1])
    write_json(args.json, figures, show=True)
    print(f"\n{args.model}: {figures['model_bytes'] / 1e6:.3f} MB model; ClientApp call in process "
          f"{figures['clientapp_call_ms']:.1f} ms")
    for limit, ray_figures in figures["ray"].items():
        print(f"  Ray, inline up to {int(limit):,} bytes: echo {ray_figures['echo_round_trip_ms']:.1f} ms, "
              f"ClientApp call {ray_figures['clientapp_call_round_trip_ms']:.1f} ms round trip "
              f"({ray_figures['clientapp_call_inside_actor_ms']:.1f} ms inside the actor)")


if __name__ == "__main__":
    main()
