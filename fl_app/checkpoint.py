"""Checkpoints of a run, written atomically into its run directory.

`checkpoint.npz` is written after a round's aggregation and centralized evaluation,
before its model leaves the server. It holds the round number, the global model, the
history rows recorded before that round and the round's own row so far, the strategy's
state (server optimizer moments, adaptive clipping norm, privacy accountant; the DP
generators' states only with `dp-reproducible-noise`), the client sampler's generator,
the global random-number states, the resolved run-config, the number of nodes and the
wall time so far. Arrays are stored as arrays and everything else as one JSON document,
so loading runs no pickle. The file is written to a temporary name (mode 0600: it holds
the exact model and training state, for the operator only), flushed to disk and renamed
over the previous one: a kill at any moment leaves either the previous or the new
checkpoint, whole.

Loading checks every field before anything runs: the archive's CRCs, the format, the
saved run-config, the round against its `num-server-rounds`, each weight's shape, float
dtype and finiteness against the configured model, the history against the round, the
strategy's state (model-shaped moments; under central DP the accountant against σ, q,
δ and the round), the generator states, and that the run directory holds no symbolic
link. Anything wrong is a `CheckpointError` of one line.

A finished run (its summary.json written) is never resumed. Under DP, released history is
append-only: a resume never cuts history.jsonl or computes a released round again, so it
is refused when history.jsonl holds a round after the checkpoint's (`resumed_history`).
"""

import io
import json
import math
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from fl_app.config import AppConfig, ConfigError
from fl_app.model import build_model
from fl_app.run_dir import RunDir, find_symlink, symlink_message, write_atomically
from strategies.privacy.distributed import SkellamAccountant, SkellamSettings
from strategies.state import FLOWER_STATE_ATTRIBUTES

FORMAT = 2
DP_STATE_KEYS = ("accountant", "noise_multiplier", "clipping_norm", "population", "randomness",
                 "server_optimizer")


class CheckpointError(RuntimeError):
    """A run directory that cannot be resumed; the message says why."""


@dataclass
class Checkpoint:
    """Everything a run needs to finish `round` and continue after it."""

    round: int
    weights: list[np.ndarray]
    history: list[dict[str, Any]]  # rows recorded before `round`
    row: dict[str, Any]  # `round`'s row before federated evaluation
    strategy: dict[str, Any]
    sampler: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]
    wall_seconds: float
    num_nodes: int  # connected when the run started


def global_rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global generator states."""
    version, state, gauss = random.getstate()
    return {
        "python": [version, list(state), gauss],
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state().numpy(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8)))


def _split(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """`value` with every numpy array replaced by a reference into `arrays`."""
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, dict):
        return {str(k): _split(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` atomically and durably to `RunDir(run_dir).checkpoint` (mode 0600)."""
    arrays: dict[str, np.ndarray] = {}
    document = _split({"format": FORMAT, **checkpoint.__dict__}, arrays)
    buffer = io.BytesIO()
    document_bytes = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(buffer, __document__=document_bytes, **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays could be allow_pickle
    path = RunDir(run_dir).checkpoint
    write_atomically(path, buffer.getvalue(), mode=0o600, durable=True)
    return path


def check_run_dir(run_dir: str | Path) -> None:
    """`CheckpointError` (one line) unless `run_dir` is a run directory (it holds config.json)."""
    run_dir = Path(run_dir).expanduser()
    if not RunDir(run_dir).config.is_file():
        raise CheckpointError(f"resume-from = '{run_dir}' is not a run directory (no {RunDir(run_dir).config.name})")


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The checkpoint of the unfinished run in `run_dir`, every field checked against its
    run-config and model, and under DP its history.jsonl against it (`resumed_history`);
    `CheckpointError` (one line) if there is none, the run finished or it is not valid."""
    run_dir = Path(run_dir).expanduser()
    run = RunDir(run_dir)
    check_run_dir(run_dir)
    link = find_symlink(run_dir)
    if link is not None:
        raise CheckpointError(f"resume-from = '{run_dir}' cannot be resumed: {symlink_message(link)}")
    if run.summary.exists():
        raise CheckpointError(f"resume-from = '{run_dir}' cannot be resumed: the run finished (it wrote "
                              f"{run.summary.name}); start a new run instead")
    if not run.checkpoint.is_file():
        raise CheckpointError(f"resume-from = '{run_dir}' has no {run.checkpoint.name}: the run ended "
                              "before its first checkpoint, or checkpoint-every is 0")
    checkpoint = _Validator(run.checkpoint).checkpoint(*_read(run.checkpoint))
    resumed_history(run_dir, checkpoint)
    return checkpoint


def resumed_history(run_dir: str | Path, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The history rows a run resumed from `checkpoint` continues from.

    Without DP: the checkpoint's rows (history.jsonl is cut back to them). Under DP the
    rows history.jsonl holds, never cut: the checkpoint's, then its own round's row when
    that round was released before the run stopped (the resumed run then goes on with the
    next round). `CheckpointError` (one line) when history.jsonl holds a later round (a
    resume would compute a released round again) or rows that differ from the checkpoint's."""
    if AppConfig.from_run_config(checkpoint.config).dp.mode == "off":
        return checkpoint.history
    run_dir = Path(run_dir).expanduser()
    path = RunDir(run_dir).history
    try:
        rows = RunDir(run_dir).read_history()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"resume-from = '{run_dir}' cannot be resumed: {path.name} is unreadable "
                              f"({type(err).__name__}: {err})".replace("\n", " ")) from None
    rounds = [row.get("round") if isinstance(row, dict) else None for row in rows]
    later = [r for r in rounds if isinstance(r, int) and r > checkpoint.round]
    if later:
        raise CheckpointError(
            f"resume-from = '{run_dir}' cannot be resumed: its {path.name} holds round {max(later)}, released "
            f"after the checkpoint of round {checkpoint.round}; under DP a released round is never computed again")
    expected = [json.dumps(row) for row in checkpoint.history]
    if [json.dumps(row) for row in rows[:len(expected)]] != expected or rounds[len(expected):] not in (
            [], [checkpoint.round]):
        raise CheckpointError(
            f"resume-from = '{run_dir}' cannot be resumed: its {path.name} does not continue the checkpoint's "
            f"history (allowed under DP: the rows of rounds 0 to {checkpoint.round - 1}, then at most round "
            f"{checkpoint.round}'s)")
    return rows


def _read(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """The JSON document and the arrays of `path`, its CRCs checked first."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"bad CRC-32 for {damaged}")
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        document = json.loads(arrays.pop("__document__").tobytes().decode())
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as err:
        detail = f"{type(err).__name__}: {err}".replace("\n", " ")
        raise CheckpointError(f"Invalid checkpoint {path}: the file is unreadable ({detail}); "
                              "it is truncated or corrupted") from None
    return document, arrays


def _show(value: Any) -> str:
    """`value` on one short line (arrays by dtype and shape)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if isinstance(value, list) and any(isinstance(v, np.ndarray) for v in value):
        return f"a list of {len(value)} items"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any, low: float = -math.inf) -> bool:
    return _is_number(value) and math.isfinite(value) and value >= low


class _Validator:
    """Checks a loaded document field by field; the first problem raises `CheckpointError`
    naming the file, the field, its value and what is allowed."""

    cfg: AppConfig  # the saved run-config
    model: list[tuple[str, tuple[int, ...], np.dtype]]  # its model's tensors: name, shape, dtype

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> NoReturn:
        raise CheckpointError(f"Invalid checkpoint {self.path}: {problem}")

    def require(self, ok: bool, field: str, value: Any, allowed: str) -> None:
        if not ok:
            self.fail(f"{field} = {_show(value)} (allowed: {allowed})")

    def checkpoint(self, document: Any, arrays: dict[str, np.ndarray]) -> Checkpoint:
        self.require(isinstance(document, dict), "document", document, "a JSON object")
        self.require(document.get("format") == FORMAT, "format", document.get("format"),
                     f"{FORMAT}; the file was written by another version of the app")
        names = [f.name for f in fields(Checkpoint)]
        missing = [name for name in names if name not in document]
        unknown = [name for name in document if name not in [*names, "format"]]
        if missing or unknown:
            self.fail(f"field '{(missing or unknown)[0]}' is {'missing' if missing else 'unknown'} "
                      f"(allowed: the fields {', '.join(names)})")
        try:
            checkpoint = Checkpoint(**_join({name: document[name] for name in names}, arrays))
        except (KeyError, TypeError) as err:
            self.fail(f"a field refers to an array the file does not hold ({type(err).__name__}: {err})")
        self.cfg = self.config(checkpoint.config)
        self.require(_is_int(checkpoint.round) and 1 <= checkpoint.round <= self.cfg.run.num_server_rounds,
                     "round", checkpoint.round,
                     f"an integer in [1, {self.cfg.run.num_server_rounds}], num-server-rounds of the run")
        self.model = [(name, tuple(t.shape), t.detach().numpy().dtype)
                      for name, t in build_model(self.cfg.train.model).state_dict().items()]
        self.weights("weights", checkpoint.weights)
        self.history(checkpoint.round, checkpoint.history, checkpoint.row)
        self.require(_finite(checkpoint.wall_seconds, 0.0), "wall_seconds", checkpoint.wall_seconds,
                     "a finite number >= 0")
        self.require(_is_int(checkpoint.num_nodes) and checkpoint.num_nodes >= self.cfg.strategy.min_available_clients,
                     "num_nodes", checkpoint.num_nodes,
                     f"an integer >= min-available-clients = {self.cfg.strategy.min_available_clients}")
        self.global_rng(checkpoint.rng)
        self.require(isinstance(checkpoint.sampler, dict), "sampler", checkpoint.sampler, "an object")
        if "rng" in checkpoint.sampler:
            self.generator("sampler.rng", checkpoint.sampler["rng"])
        if self.cfg.dp.central:
            state = checkpoint.strategy
            self.require(isinstance(state, dict) and set(state) == {"state_dict"}, "strategy", state,
                         f"DP-FedAvg's state_dict (dp-mode = '{self.cfg.dp.mode}')")
            self.dp_state(checkpoint.round, state["state_dict"])
        else:
            self.strategy("strategy", checkpoint.strategy)
        return checkpoint

    def config(self, config: Any) -> AppConfig:
        """The saved run-config, valid as a run-config."""
        self.require(isinstance(config, dict), "config", config, "the run's resolved run-config")
        try:
            return AppConfig.from_run_config(config)
        except ConfigError as err:
            self.fail(f"config: {str(err).removeprefix('Invalid run-config: ')}")

    def weights(self, field: str, weights: Any) -> None:
        """One finite array per tensor of the model, of its shape and of its float dtype or
        a wider one (server optimizers such as FedAdam compute in float64)."""
        self.require(isinstance(weights, list) and len(weights) == len(self.model), field, weights,
                     f"a list of the {len(self.model)} arrays of model '{self.cfg.train.model}'")
        for i, (array, (name, shape, dtype)) in enumerate(zip(weights, self.model, strict=True)):
            self.require(isinstance(array, np.ndarray) and array.shape == shape and array.dtype.kind == "f"
                         and np.can_cast(dtype, array.dtype, "safe"), f"{field}[{i}] ({name})", array,
                         f"a {dtype} (or wider float) array of shape {shape}, as in model '{self.cfg.train.model}'")
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                self.fail(f"{field}[{i}] ({name}) = {_show(array)} with {bad} NaN or infinite "
                          "values (allowed: finite values only)")

    def history(self, server_round: int, history: Any, row: Any) -> None:
        """The rows of rounds 0..round-1, then `round`'s own row so far."""
        self.require(isinstance(history, list) and all(isinstance(r, dict) for r in history), "history",
                     history, "a list of rows")
        rounds = [r.get("round") for r in history]
        self.require(rounds == list(range(server_round)) and all(_is_int(r) for r in rounds),
                     "history rounds", rounds,
                     f"{list(range(server_round))}, the rows recorded before round {server_round}")
        self.require(isinstance(row, dict) and _is_int(row.get("round")) and row["round"] == server_round,
                     "row.round", row.get("round") if isinstance(row, dict) else row, f"{server_round}, the round")
        for field, r in [*((f"history[{i}]", r) for i, r in enumerate(history)), ("row", row)]:
            self.require(_is_number(r.get("centralized_loss")), f"{field}.centralized_loss",
                         r.get("centralized_loss"), "a number")
            accuracy = r.get("centralized_accuracy")
            self.require(_finite(accuracy, 0.0) and accuracy <= 1, f"{field}.centralized_accuracy",
                         accuracy, "a number in [0, 1]")
            if r is not row:
                self.require(_finite(r.get("seconds"), 0.0), f"{field}.seconds", r.get("seconds"),
                             "a finite number >= 0")

    def global_rng(self, rng: Any) -> None:
        """Python's, numpy's and torch's generator states, tried on fresh generators."""
        self.require(isinstance(rng, dict) and set(rng) == {"python", "numpy", "torch"}, "rng", rng,
                     "an object of the python, numpy and torch generator states")
        self.require(isinstance(rng["torch"], np.ndarray) and rng["torch"].dtype == np.uint8, "rng.torch",
                     rng["torch"], "a uint8 array")
        self.applies("rng.python", rng["python"], lambda s: random.Random().setstate((s[0], tuple(s[1]), s[2])))
        self.applies("rng.numpy", rng["numpy"], lambda s: np.random.RandomState().set_state(s))
        self.applies("rng.torch", rng["torch"], lambda s: torch.Generator().set_state(torch.from_numpy(s)))

    def generator(self, field: str, state: Any) -> None:
        """A numpy `default_rng` (PCG64) state."""
        self.applies(field, state, lambda s: setattr(np.random.PCG64(), "state", s))

    def applies(self, field: str, state: Any, apply: Callable[[Any], Any]) -> None:
        """`apply(state)` to a fresh generator succeeds."""
        try:
            apply(state)
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError, OverflowError) as err:
            self.require(False, field, state, f"a generator state; {type(err).__name__}: {err}")

    def strategy(self, field: str, state: Any) -> None:
        """A strategy's own `state_dict`, or Flower's round-to-round attributes: model-shaped
        lists of finite float arrays."""
        self.require(isinstance(state, dict) and len(state) == 1 and set(state) <= {"attributes", "state_dict"},
                     field, state, "an object of 'attributes' or of 'state_dict'")
        attributes = state.get("attributes", {})
        self.require(isinstance(attributes, dict) and set(attributes) <= set(FLOWER_STATE_ATTRIBUTES),
                     f"{field}.attributes", attributes, f"some of {', '.join(FLOWER_STATE_ATTRIBUTES)}")
        for name, value in attributes.items():
            if isinstance(value, dict) and set(value) == {"parameters"}:
                value = value["parameters"]
            self.weights(f"{field}.attributes.{name}", value)

    def distributed_state(self, server_round: int, state: dict, sigma: float, q: float, steps: Any) -> None:
        """Distributed DP's discretization (S, bits, σ as configured and checkpointed, g ≥ 1)
        and a Skellam accountant with one step of (σ, σ/√g, q, Δ₂, Δ₁) per round so far."""
        cfg, field = self.cfg, "strategy.state_dict"
        settings = state.get("skellam")
        keys = {f.name for f in fields(SkellamSettings)}
        self.require(isinstance(settings, dict) and set(settings) == keys
                     and settings["clipping_norm"] == cfg.dp.clipping_norm and settings["bits"] == cfg.dp.bits
                     and settings["noise_multiplier"] == sigma and _finite(settings["scale"]) and settings["scale"] > 0
                     and _finite(settings["noise_growth"]) and settings["noise_growth"] >= 1
                     and _is_int(settings["dimension"]) and settings["dimension"] >= 1,
                     f"{field}.skellam", settings,
                     f"the run's discretization ({', '.join(sorted(keys))}) at dp-clipping-norm = "
                     f"{cfg.dp.clipping_norm!r}, dp-bits = {cfg.dp.bits}, sigma = {sigma!r}")
        assert isinstance(settings, dict), "checked above"
        skellam = SkellamSettings(**settings)
        expected = [sigma, skellam.server_noise_multiplier, q, skellam.l2_sensitivity, skellam.l1_sensitivity]
        self.require(isinstance(steps, list) and all(
            isinstance(s, list) and len(s) == 6 and s[:5] == expected and _is_int(s[5]) and s[5] >= 1
            for s in steps) and sum(s[5] for s in steps) == server_round,
            f"{field}.accountant.history", steps,
            f"[[sigma, server sigma, q, l2, l1, rounds]] = [[{', '.join(map(repr, expected))}, {server_round}]]: "
            "one step per round so far")

    def dp_state(self, server_round: int, state: Any) -> None:
        """DP-FedAvg's σ, S, population, generators and server optimizer, and an
        accountant holding one step of (σ, q = m/N) per round so far at the configured
        accountant and δ."""
        cfg, field = self.cfg, "strategy.state_dict"
        self.require(isinstance(state, dict) and all(k in state for k in DP_STATE_KEYS), field, state,
                     f"DP-FedAvg's state ({', '.join(DP_STATE_KEYS)})")
        sigma, configured = state["noise_multiplier"], cfg.dp.noise_multiplier  # 0: calibrated to a target ε
        self.require(_finite(sigma) and sigma > 0 and (not configured or sigma == configured),
                     f"{field}.noise_multiplier", sigma,
                     f"{configured!r}, dp-noise-multiplier" if configured else "a finite number > 0")
        norm, adaptive = state["clipping_norm"], cfg.dp.clipping == "adaptive"
        self.require(_finite(norm) and norm > 0 and (adaptive or norm == cfg.dp.clipping_norm),
                     f"{field}.clipping_norm", norm,
                     "a finite number > 0" if adaptive else f"{cfg.dp.clipping_norm!r}, dp-clipping-norm")
        population = state["population"]
        self.require(isinstance(population, list) and all(isinstance(k, str) for k in population)
                     and len(set(population)) == len(population) >= cfg.dp.clients_per_round,
                     f"{field}.population", population,
                     f"at least dp-clients-per-round = {cfg.dp.clients_per_round:g} distinct client keys")
        accountant = state["accountant"]
        kind = SkellamAccountant.kind if cfg.dp.mode == "distributed" else cfg.dp.accountant
        self.require(isinstance(accountant, dict) and set(accountant) == {"accountant", "delta", "history"}
                     and (accountant["accountant"], accountant["delta"]) == (kind, cfg.dp.delta),
                     f"{field}.accountant", accountant,
                     f"the {kind!r} accountant at dp-delta = {cfg.dp.delta!r}")
        q, steps = cfg.dp.clients_per_round / len(population), accountant["history"]
        if cfg.dp.mode == "distributed":
            self.distributed_state(server_round, state, sigma, q, steps)
        else:
            self.require(isinstance(steps, list) and all(
                isinstance(s, list) and len(s) == 3 and _finite(s[0]) and math.isclose(s[0], sigma, rel_tol=1e-9)
                and s[1] == q and _is_int(s[2]) and s[2] >= 1  # s[0]: the ledger's σ_eff, σ up to rounding
                for s in steps) and sum(s[2] for s in steps) == server_round,
                f"{field}.accountant.history", steps,
                f"[[sigma, q, steps]] = [[{sigma!r}, {q!r}, {server_round}]]: one step per round so far")
        randomness = state["randomness"]
        if cfg.dp.reproducible_noise:
            self.require(isinstance(randomness, dict) and set(randomness) == {"sampling", "noise"},
                         f"{field}.randomness", randomness, "the sampling and noise generators' states")
            for name, generator in randomness.items():
                self.generator(f"{field}.randomness.{name}", generator)
        else:
            self.require(randomness is None, f"{field}.randomness", randomness,
                         "null: private generators are never saved")
        if state["server_optimizer"] is not None:
            self.strategy(f"{field}.server_optimizer", state["server_optimizer"])
