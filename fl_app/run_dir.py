"""One run's directory, `<output-dir>/<YYYYmmdd-HHMMSS>-run<run-id>/`: every file in it
is named here (`RunDir`), and read and written through it.

Files are written whole to a temporary name (created new, `O_EXCL | O_NOFOLLOW`) and
renamed over their target; history.jsonl and clients.jsonl are appended to with
`O_NOFOLLOW`. Nothing is written through a symbolic link in a run directory: a link at a
target or temporary name is refused with `SymlinkError` (the run directory itself, or a
folder above it, may be a link). Run directories are created mode 0700 and their files
0600: they hold the models and the training state, for the operator only.

One process writes a run directory: its writer holds `RunLock`, an exclusive `flock` on
`run.lock` in it, taken before anything is read or written and held until the run ends
(or its process dies); a second writer is refused with `RunDirInUse`.
"""

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


class SymlinkError(OSError):
    """A symbolic link where the app writes into a run directory."""


def symlink_message(path: Path) -> str:
    """Why the link at `path` stops a run, on one line."""
    return (f"{path} is a symbolic link (to {os.readlink(path)}): nothing in a run directory "
            "is written through a link; replace it with a regular file or remove it")


def find_symlink(run_dir: Path) -> Path | None:
    """The first symbolic link in `run_dir` or below it, if any."""
    for folder, subfolders, files in os.walk(run_dir):
        for name in sorted(subfolders + files):
            if os.path.islink(os.path.join(folder, name)):
                return Path(folder) / name
    return None


def refuse_symlink(path: Path) -> None:
    """Raise `SymlinkError` when `path` is a symbolic link."""
    if path.is_symlink():
        raise SymlinkError(symlink_message(path))


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = False) -> None:
    """Write `data` to `path` through a new temporary file `.<name>.tmp` beside it and a
    rename, refusing a symbolic link at either name (a leftover regular temporary file
    is replaced). `durable`: the file and the directory are synced to disk first."""
    temporary = path.with_name(f".{path.name}.tmp")
    refuse_symlink(path)
    refuse_symlink(temporary)
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(temporary, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def append_text(path: Path, text: str) -> None:
    """Append `text` to the existing regular file `path`, never through a symbolic link."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SymlinkError(symlink_message(path)) from None
        raise
    with os.fdopen(descriptor, "a") as f:
        f.write(text)


def new_run_dir(output_dir: Path, run_id: int) -> Path:
    """Create `<output_dir>/<YYYYmmdd-HHMMSS>-run<run_id>` (suffixed if it exists), mode 0700."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    for attempt in range(1000):
        path = output_dir / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a new run directory under {output_dir}")


class RunDirInUse(RuntimeError):
    """A run directory whose lock another writer holds."""


class RunLock:
    """The writer's exclusive lock on the run directory `path`: `flock` on `run.lock`
    (created mode 0600, never through a symbolic link), released by `release()` or when
    the process ends, however it ends. Another open of the file, in this process or
    another, cannot take it meanwhile: `RunDirInUse`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lock = RunDir(path).lock
        try:
            self.descriptor: int | None = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise SymlinkError(symlink_message(lock)) from None
            raise
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise RunDirInUse(f"run directory {path} is in use by another run (locked)") from None

    def release(self) -> None:
        """Let another writer in (once; later calls do nothing)."""
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass(frozen=True)
class RunDir:
    """The files of the run directory at `path`."""

    path: Path

    @classmethod
    def finished_under(cls, output_dir: Path) -> list["RunDir"]:
        """The run directories in `output_dir` that hold a summary (none if it does not exist)."""
        return [run for folder in sorted(output_dir.glob("*")) if (run := cls(folder)).summary.is_file()]

    @property
    def lock(self) -> Path:
        """What its writer holds locked (see `RunLock`)."""
        return self.path / "run.lock"

    @property
    def config(self) -> Path:
        """The resolved run-config (JSON)."""
        return self.path / "config.json"

    @property
    def history(self) -> Path:
        """One JSON row per round, round 0 the initial model."""
        return self.path / "history.jsonl"

    @property
    def clients(self) -> Path:
        """One JSON row per client and round, where the release policy lets them out."""
        return self.path / "clients.jsonl"

    @property
    def summary(self) -> Path:
        """The end-of-run figures and the privacy statement (JSON)."""
        return self.path / "summary.json"

    @property
    def model(self) -> Path:
        """The final global model's state dict."""
        return self.path / "model.pt"

    @property
    def best_model(self) -> Path:
        """The state dict of the round with the best centralized accuracy."""
        return self.path / "model_best.pt"

    @property
    def curves(self) -> Path:
        """Accuracy and loss per round (PNG)."""
        return self.path / "curves.png"

    @property
    def checkpoint(self) -> Path:
        """What `resume-from` needs (see `fl_app.checkpoint`)."""
        return self.path / "checkpoint.npz"

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard event folder, with `tensorboard = true`."""
        return self.path / "tensorboard"

    @property
    def audit(self) -> Path:
        """The privacy audit's figures (JSON, see `fl_app.audit`)."""
        return self.path / "audit.json"

    @property
    def report(self) -> Path:
        """The default folder of `python -m fl_app.report`'s plots."""
        return self.path / "report"

    def read_config(self) -> dict[str, Any]:
        """The resolved run-config."""
        return json.loads(self.config.read_text())

    def read_history(self) -> list[dict[str, Any]]:
        """The rows recorded so far."""
        return _read_jsonl(self.history)

    def read_clients(self) -> list[dict[str, Any]]:
        """The per-client rows recorded so far."""
        return _read_jsonl(self.clients)

    def read_summary(self) -> dict[str, Any]:
        """The end-of-run summary."""
        return json.loads(self.summary.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        """config.json, keys sorted."""
        write_atomically(self.config, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """history.jsonl holding `rows` only."""
        write_atomically(self.history, _jsonl(rows).encode())

    def append_history(self, row: dict[str, Any]) -> None:
        """One more row in history.jsonl."""
        append_text(self.history, _jsonl([row]))

    def write_clients(self, rows: list[dict[str, Any]]) -> None:
        """clients.jsonl holding `rows` only."""
        write_atomically(self.clients, _jsonl(rows).encode())

    def append_clients(self, rows: list[dict[str, Any]]) -> None:
        """`rows` appended to clients.jsonl (created with the first)."""
        if not rows:
            return
        if self.clients.exists() or self.clients.is_symlink():
            append_text(self.clients, _jsonl(rows))
        else:
            self.write_clients(rows)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json in UTF-8 (the privacy statement's ε and δ as they are)."""
        write_atomically(self.summary, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def write_audit(self, figures: dict[str, Any]) -> None:
        """audit.json."""
        write_atomically(self.audit, (json.dumps(figures, indent=2) + "\n").encode())
