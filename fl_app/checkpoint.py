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
"""

import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.npz"
FORMAT = 2


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
    """Write `checkpoint` atomically to `<run_dir>/checkpoint.npz`."""
    arrays: dict[str, np.ndarray] = {}
    document = _split({"format": FORMAT, **checkpoint.__dict__}, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, __document__=np.frombuffer(json.dumps(document).encode(), dtype=np.uint8), **arrays)
    path = run_dir / CHECKPOINT
    temporary = run_dir / f".{CHECKPOINT}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The checkpoint of the run in `run_dir`; `CheckpointError` if there is none."""
    run_dir = Path(run_dir).expanduser()
    path = run_dir / CHECKPOINT
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"resume-from = '{run_dir}' is not a run directory (no config.json)")
    if not path.is_file():
        raise CheckpointError(f"resume-from = '{run_dir}' has no {CHECKPOINT}: the run ended "
                              "before its first checkpoint, or checkpoint-every is 0")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        document = json.loads(arrays.pop("__document__").tobytes().decode())
    except (ValueError, OSError, KeyError) as err:
        raise CheckpointError(f"{path} is unreadable: {err}") from None
    if document.pop("format", None) != FORMAT:
        raise CheckpointError(f"{path} has an unknown format (written by another version of the app)")
    return Checkpoint(**_join(document, arrays))
