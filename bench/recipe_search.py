"""Recipe search for the reference experiment (10 clients, the reference CNN, FedAvg):
many local-training recipes at once on one GPU, every client of every recipe trained
together as one batch of models (torch.func.vmap), then the best re-run on other seeds
and on Dirichlet(0.5) partitions. `--grid ceiling` trains the same CNN centrally (one
client holding the 10 clients' 54,000 samples, a round = an epoch) beside FedAvg with the
same recipe: what the federation costs in sample passes. `--grid defaults` runs the app's
default recipe (pyproject) on seeds 1 and 2 and on Dirichlet(0.5).

    python -m bench.recipe_search [--rounds 10] [--budget-s 420] [--top 3]
        [--grid search|ceiling|defaults] [--only RECIPE ...]
        [--optimizers adam sgd adadelta]
        [--data-dir ../shared/data] [--json recipe_search.json]

Each recipe is a set of run-config values (`Recipe.run_config`), trained as the app's
`train` does per client and round: its data split from `load_client_data`, shuffled
minibatches, NLL loss, the optimizer built anew each round, the learning rate from
`fl_app.schedule` (linear within a round between the schedule's round boundaries), the
global model = Σ n_k/n w_k, or FedAvgM's server momentum. Prints, per recipe, accuracy
per round and the round reaching 99.0% with its sample passes; ranks recipes by passes
to 99.0%, then by best accuracy. It needs a GPU to finish in minutes (a CPU runs it too).
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from bench.common import APP_DEFAULTS, add_data_dir, add_json, argument_parser, machine, train_sets, write_json
from fl_app.assembly import load_test_set
from fl_app.config import AppConfig
from fl_app.model import build_model, seeded_model
from fl_app.schedule import round_learning_rates

NUM_CLIENTS = 10
TARGET = 0.99
PASS_BUDGET = 240_000
EVAL_CHUNK = 2000


@dataclass(frozen=True)
class Recipe:
    """One local-training recipe and the run it is tried on."""

    optimizer: str  # sgd (momentum), adam, adadelta
    batch_size: int
    learning_rate: float
    schedule: str  # constant, cosine, exp (lr-decay-rate per round)
    warmup: int = 0  # rounds of linear warm-up
    momentum: float = 0.9  # sgd only
    local_epochs: int = 1
    server_momentum: float = 0.0
    seed: int = 42
    partitioner: str = "iid"
    num_clients: int = NUM_CLIENTS  # 1: centralized training on the same 54,000 samples

    @property
    def name(self) -> str:
        parts = [self.optimizer, f"b{self.batch_size}", f"lr{self.learning_rate:g}", self.schedule]
        parts += [f"warm{self.warmup}"] if self.warmup else []
        parts += [f"e{self.local_epochs}"] if self.local_epochs != 1 else []
        parts += [f"sm{self.server_momentum:g}"] if self.server_momentum else []
        parts += [f"c{self.num_clients}"] if self.num_clients != NUM_CLIENTS else []
        return "-".join(parts + [self.partitioner, f"s{self.seed}"])

    def run_config(self, rounds: int) -> dict:
        """The run-config values that make the app train this recipe."""
        values = {"optimizer": self.optimizer, "batch-size": self.batch_size, "learning-rate": self.learning_rate,
                  "lr-schedule": self.schedule, "lr-warmup-rounds": self.warmup,
                  "momentum": self.momentum, "local-epochs": self.local_epochs, "seed": self.seed,
                  "partitioner": self.partitioner, "num-server-rounds": rounds}
        if self.server_momentum:
            values |= {"strategy": "fedavgm", "server-momentum": self.server_momentum, "server-learning-rate": 1.0}
        return values

    def group(self) -> tuple:
        """Recipes of one group train together: same optimizer, batches, epochs and data."""
        return self.optimizer, self.batch_size, self.local_epochs, self.seed, self.partitioner, self.num_clients


class Optimizer:
    """SGD with momentum, Adam or Adadelta as torch.optim defines them, over stacked
    parameters (one row per model), with a learning rate per model; a model whose
    `active` is 0 is left as it is (its client has no batch left this step)."""

    def __init__(self, kind: str, params: dict[str, torch.Tensor], momentum: torch.Tensor) -> None:
        self.kind, self.momentum = kind, momentum
        self.state = {k: [torch.zeros_like(p), torch.zeros_like(p)] for k, p in params.items()}
        self.steps = torch.zeros_like(momentum)

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             lr: torch.Tensor, active: torch.Tensor) -> None:
        self.steps += active
        for key, p in params.items():
            g, (a, b) = grads[key], self.state[key]
            shape = (-1,) + (1,) * (p.dim() - 1)
            on, rate = active.view(shape), lr.view(shape)
            if self.kind == "sgd":
                mom = self.momentum.view(shape)
                a.copy_(torch.where(on > 0, torch.where(self.steps.view(shape) > 1, mom * a + g, g), a))
                p.sub_(rate * on * a)
            elif self.kind == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                a.copy_(torch.where(on > 0, b1 * a + (1 - b1) * g, a))
                b.copy_(torch.where(on > 0, b2 * b + (1 - b2) * g * g, b))
                t = self.steps.clamp(min=1).view(shape)
                denom = (b / (1 - b2 ** t)).sqrt() + eps
                p.sub_(rate * on * (a / (1 - b1 ** t)) / denom)
            elif self.kind == "adadelta":
                rho, eps = 0.9, 1e-6
                a.copy_(torch.where(on > 0, rho * a + (1 - rho) * g * g, a))
                delta = (b + eps).sqrt() / (a + eps).sqrt() * g
                b.copy_(torch.where(on > 0, rho * b + (1 - rho) * delta * delta, b))
                p.sub_(rate * on * delta)
            else:
                raise ValueError(f"unknown optimizer {self.kind!r}")


def app_config(recipe: Recipe, rounds: int, data_dir: str) -> AppConfig:
    """The app's configuration for `recipe` (validated as a run would be)."""
    cfg = AppConfig.from_run_config(APP_DEFAULTS | recipe.run_config(rounds) | {"data-dir": data_dir})
    cfg.check(load_strategy=False)
    return cfg


def train_group(configs: list[AppConfig], clients: list, test, dev: torch.device) -> list[list[float]]:
    """Train the recipes of one group (`configs`) for their rounds; test accuracy per round."""
    first = configs[0].train
    rounds, seed = configs[0].run.num_server_rounds, configs[0].run.seed
    num_v, k = len(configs), len(clients)
    net = build_model("cnn").to(dev)
    init = {n: p.detach().to(dev) for n, p in seeded_model("cnn", seed).named_parameters()}
    glob = {n: p.unsqueeze(0).repeat(num_v, *([1] * p.dim())).clone() for n, p in init.items()}
    velocity = {n: torch.zeros_like(p) for n, p in glob.items()}
    sizes = torch.tensor([len(c) for c in clients], device=dev)
    n_max = int(sizes.max())
    images = torch.zeros((k, n_max, 1, 28, 28), device=dev)
    labels = torch.zeros((k, n_max), dtype=torch.int64, device=dev)
    for i, c in enumerate(clients):
        images[i, : len(c)], labels[i, : len(c)] = c.images.to(dev), c.labels.to(dev)
    client_of = torch.arange(k, device=dev).repeat(num_v)
    weights = (sizes / sizes.sum()).float()
    server_momentum = torch.tensor([c.strategy.server_momentum if c.strategy.name == "fedavgm" else 0.0
                                    for c in configs], device=dev)
    momentum = torch.tensor([c.train.momentum for c in configs], device=dev).repeat_interleave(k)
    b = first.batch_size
    steps_epoch = math.ceil(n_max / b)
    client_steps = ((sizes + b - 1) // b * first.local_epochs)[client_of].float()
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def loss(p, x, y, w):
        nll = F.nll_loss(functional_call(net, p, (x,)), y, reduction="none")
        return (nll * w).sum() / w.sum().clamp(min=1)

    step_fn = vmap(grad_and_value(loss), randomness="different")
    eval_fn = vmap(lambda p, x: functional_call(net, p, (x,)).argmax(-1), in_dims=(0, None))
    accuracy: list[list[float]] = [[] for _ in configs]
    for rnd in range(rounds):
        rates = torch.tensor([round_learning_rates(c, rnd + 1) for c in configs], device=dev)
        lr_first, lr_last = rates[:, 0].repeat_interleave(k), rates[:, 1].repeat_interleave(k)
        params = {n: g.repeat_interleave(k, dim=0).clone() for n, g in glob.items()}
        opt = Optimizer(first.optimizer, params, momentum)
        net.train()
        for epoch in range(first.local_epochs):
            keys = torch.rand((num_v * k, n_max), generator=generator).to(dev)
            keys[sizes[client_of].unsqueeze(1) <= torch.arange(n_max, device=dev)] = 2.0
            order = keys.argsort(dim=1)
            valid_all = keys.gather(1, order) < 2.0
            for s in range(steps_epoch):
                idx, valid = order[:, s * b:(s + 1) * b], valid_all[:, s * b:(s + 1) * b]
                x, y = images[client_of.unsqueeze(1), idx], labels[client_of.unsqueeze(1), idx]
                grads, _ = step_fn(params, x, y, valid.float())
                done = (epoch * steps_epoch + s) / client_steps
                opt.step(params, grads, lr_first + (lr_last - lr_first) * done, valid.any(1).float())
        for n in glob:
            local = params[n].view(num_v, k, *params[n].shape[1:])
            avg = torch.einsum("k,vk...->v...", weights, local)
            velocity[n] = server_momentum.view((-1,) + (1,) * (avg.dim() - 1)) * velocity[n] + (avg - glob[n])
            glob[n] = glob[n] + velocity[n]
        net.eval()
        with torch.no_grad():
            correct = torch.zeros(num_v, device=dev)
            for start in range(0, len(test), EVAL_CHUNK):
                x = test.images[start:start + EVAL_CHUNK].to(dev)
                y = test.labels[start:start + EVAL_CHUNK].to(dev)
                correct += (eval_fn(glob, x) == y).float().sum(1)
        for v, c in enumerate((correct / len(test)).tolist()):
            accuracy[v].append(c)
    return accuracy


def summary(recipe: Recipe, acc: list[float], passes_per_round: int) -> dict:
    """Figures for one recipe's run."""
    reached = next((r + 1 for r, a in enumerate(acc) if a >= TARGET), None)
    return {"recipe": recipe.name, **asdict(recipe), "accuracy": acc, "best": max(acc),
            "round_to_99": reached, "passes_to_99": reached * passes_per_round if reached else None}


def rank_key(result: dict) -> tuple:
    """Fewest passes to 99.0%, then the best accuracy."""
    return (result["passes_to_99"] or math.inf, -result["best"])


def search_grid() -> list[Recipe]:
    """Phase 1: optimizers, batch sizes, learning rates, schedules and warm-ups on seed 42."""
    schedules = [("cosine", 0), ("cosine", 1), ("exp", 0), ("exp", 1), ("constant", 0)]
    grid = {("adam", 16): (5e-4, 1e-3, 2e-3), ("adam", 8): (5e-4, 1e-3), ("sgd", 16): (0.01, 0.02, 0.05),
            ("adadelta", 64): (0.5, 1.0, 2.0), ("adam", 32): (1e-3, 2e-3, 4e-3), ("sgd", 32): (0.02, 0.05, 0.1),
            ("adadelta", 16): (0.5, 1.0)}
    recipes = [Recipe(opt, b, lr, s, w) for (opt, b), lrs in grid.items() for lr in lrs for s, w in schedules]
    recipes += [Recipe("adam", 16, 1e-3, s, w, server_momentum=m) for s, w in (("cosine", 1), ("exp", 0))
                for m in (0.3, 0.6)]  # trains with the first group (same optimizer, batches and data)
    two_epochs = [Recipe("adam", 16, lr, s, w, local_epochs=2) for lr in (1e-3, 2e-3)
                  for s, w in (("cosine", 1), ("exp", 0))]
    return recipes[:25] + two_epochs + recipes[25:]  # tried in this order while time lasts


def ceiling_grid() -> list[Recipe]:
    """What bounds FedAvg's passes to 99.0%: the same CNN trained centrally (one client
    holding all 54,000 samples; Adadelta lr 1, batch 64, x0.7 per epoch is PyTorch's MNIST
    example) beside FedAvg over the 10 clients with the best centralized recipe, with more
    local steps per pass (batch 8) and with 2 local epochs."""
    central = [Recipe("adadelta", 64, 1.0, "exp", num_clients=1),
               Recipe("adam", 16, 1e-3, "constant", num_clients=1), Recipe("adam", 16, 1e-3, "cosine", num_clients=1)]
    federated = [Recipe("adam", 16, 1e-3, "cosine")]  # the best centralized recipe, federated
    federated += [Recipe("adam", 8, lr, "constant") for lr in (5e-4, 1e-3)]
    federated += [Recipe("adam", 16, 1e-3, "constant", local_epochs=2)]
    return central + federated


def defaults_grid() -> list[Recipe]:
    """The app's default recipe (pyproject) on seeds 1 and 2 and on Dirichlet(0.5)."""
    train = AppConfig.from_run_config(APP_DEFAULTS).train
    recipe = Recipe(train.optimizer, train.batch_size, train.learning_rate, train.lr_schedule,
                    train.lr_warmup_rounds, train.momentum, train.local_epochs)
    return [replace(recipe, seed=s, partitioner=p) for s, p in ((1, "iid"), (2, "iid"), (42, "dirichlet"))]


GRIDS = {"search": search_grid, "ceiling": ceiling_grid, "defaults": defaults_grid}


def run_groups(recipes: list[Recipe], data_dir: str, test, rounds: int, deadline: float,
               dev: torch.device, save: Callable[[list[dict]], None]) -> list[dict]:
    """Train `recipes` group by group until `deadline`; a result per finished recipe,
    handed to `save` after each group."""
    groups: dict[tuple, list[Recipe]] = {}
    for recipe in recipes:
        groups.setdefault(recipe.group(), []).append(recipe)
    results = []
    for key, members in groups.items():
        if time.monotonic() > deadline:
            print(f"recipe_search: out of time, skipped {key}", flush=True)
            continue
        started = time.monotonic()
        configs = [app_config(r, rounds, data_dir) for r in members]
        clients = train_sets(configs[0], data_dir, members[0].num_clients)
        passes = sum(len(c) for c in clients) * members[0].local_epochs
        accuracy = train_group(configs, clients, test, dev)
        print(f"recipe_search: group {key} ({len(members)} recipes) {time.monotonic() - started:.0f} s", flush=True)
        for recipe, acc in zip(members, accuracy, strict=True):
            results.append(summary(recipe, acc, passes))
            print(f"  {recipe.name}: " + " ".join(f"{a * 100:.2f}" for a in acc)
                  + f" | 99.0% at round {results[-1]['round_to_99']}", flush=True)
        save(results)
    return results


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for both phases")
    parser.add_argument("--top", type=int, default=3, help="recipes re-run on other seeds and Dirichlet(0.5)")
    parser.add_argument("--grid", choices=tuple(GRIDS), default="search",
                        help="search: the recipe grid; ceiling: centralized training beside FedAvg; "
                             "defaults: the app's recipe on other seeds and Dirichlet(0.5)")
    parser.add_argument("--only", nargs="+", default=[], metavar="RECIPE",
                        help="run only these recipes of the grid (names as printed)")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd", "adadelta"],
                        help="search only these optimizers' recipes, in this order")
    add_data_dir(parser)
    add_json(parser, "recipe_search.json")
    args = parser.parse_args()

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = str(args.data_dir.resolve())
    cfg = AppConfig.from_run_config(APP_DEFAULTS | {"data-dir": data_dir})
    test = load_test_set(cfg, data_dir)
    started = time.monotonic()
    grid = sorted((r for r in GRIDS[args.grid]() if r.optimizer in args.optimizers
                   and (not args.only or r.name in args.only)),
                  key=lambda r: args.optimizers.index(r.optimizer))
    figures = {"machine": machine(), "rounds": args.rounds, "search": [], "checks": []}

    def save(part: str) -> Callable[[list[dict]], None]:
        def write(results: list[dict]) -> None:
            figures[part] = results
            write_json(args.json, figures | {"seconds": time.monotonic() - started})
        return write

    search_share = 0.6 if args.top else 1.0
    search = run_groups(grid, data_dir, test, args.rounds, started + search_share * args.budget_s, dev,
                        save("search"))
    best = sorted(search, key=rank_key)[: args.top]
    checks = [replace(Recipe(**{k: r[k] for k in Recipe.__dataclass_fields__}), seed=s, partitioner=p)
              for s, p in ((1, "iid"), (2, "iid"), (42, "dirichlet")) for r in best]
    run_groups(checks, data_dir, test, args.rounds, started + args.budget_s, dev, save("checks"))
    print("recipe_search: best by passes to 99.0%, then best accuracy")
    for r in sorted(search, key=rank_key)[:10]:
        print(f"  {r['recipe']}: 99.0% at {r['passes_to_99']} passes, best {r['best'] * 100:.2f}%")


if __name__ == "__main__":
    main()
