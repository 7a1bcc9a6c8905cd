"""The in-process federation (`fl_app.in_process`) with a server that can be made to
crash at any point of a round."""

from pathlib import Path
from typing import Any

from flwr.server.server import fit_clients

from fl_app import in_process
from fl_app.server import RecordingServer

CRASH_POINTS = ("after-aggregation", "after-centralized-eval", "after-checkpoint",
                "during-federated-eval", "during-fit")


class Crash(Exception):
    """Stands for the server process dying; `parameters` is the global model it held."""

    def __init__(self, server_round: int, point: str, parameters) -> None:
        super().__init__(f"crash in round {server_round} {point}")
        self.parameters = parameters


class CrashingServer(RecordingServer):
    """Dies (raises `Crash`) at `point` of round `crash_round`: right after aggregation,
    after centralized evaluation (before the checkpoint), right after the checkpoint,
    once the clients have evaluated the round's model, or once the clients of the round
    have trained (before aggregation)."""

    def __init__(self, crash_round: int, point: str, **kwargs):
        super().__init__(**kwargs)
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}")
        self.crash_round, self.point = crash_round, point

    def _crash(self, server_round: int, point: str) -> None:
        if (server_round, point) == (self.crash_round, self.point):
            raise Crash(server_round, point, self.parameters)

    def fit_round(self, server_round, timeout):
        if (server_round, "during-fit") == (self.crash_round, self.point):
            instructions = self.strategy.configure_fit(
                server_round=server_round, parameters=self.parameters, client_manager=self.client_manager())
            fit_clients(instructions, max_workers=self.max_workers, timeout=timeout, group_id=server_round)
            self._crash(server_round, "during-fit")
        parameters, metrics, outcome = super().fit_round(server_round, timeout)
        if (server_round, "after-aggregation") == (self.crash_round, self.point):
            raise Crash(server_round, "after-aggregation", parameters)
        return parameters, metrics, outcome

    def _save_checkpoint(self, server_round: int, row: dict) -> None:
        self._crash(server_round, "after-centralized-eval")
        super()._save_checkpoint(server_round, row)
        self._crash(server_round, "after-checkpoint")

    def evaluate_round(self, server_round, timeout):
        result = super().evaluate_round(server_round, timeout)
        self._crash(server_round, "during-federated-eval")
        return result


def run_federation(run_config: dict[str, Any], num_clients: int, data_dir: str, run_dir: Path,
                   node_seed: int | None = None, crash_after: int = 0,
                   crash_at: tuple[int, str] | None = None, received: list | None = None) -> list[dict]:
    """`fl_app.in_process.run_federation`; `crash_after` makes the server raise `Crash`
    right after that round's checkpoint, `crash_at = (round, point)` at any of
    `CRASH_POINTS`."""
    if crash_after:
        crash_at = (crash_after, "after-checkpoint")
    options = dict(server_class=CrashingServer, server_options={"crash_round": crash_at[0], "point": crash_at[1]}) \
        if crash_at else {}
    return in_process.run_federation(run_config, num_clients, data_dir, run_dir, node_seed=node_seed,
                                     received=received, **options)
