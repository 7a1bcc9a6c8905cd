"""ServerApp: the run assembled by `fl_app.assembly`, its rounds driven over Flower's grid.

This module imports Flower alone, the assembly (torch, data) when the run starts: the
simulation process loads the ServerApp and then the ClientApp under one lock before it
starts Ray, which would otherwise wait seconds for torch's import.
"""

from flwr.common import Context
from flwr.server import Grid, ServerApp, ServerConfig
from flwr.server.compat import start_grid


def main(grid: Grid, context: Context) -> None:
    """Prepare the run, build its server and run its rounds on `grid` (an error marks it FAILED in MLflow).
    In a simulation, this process also runs Flower's simulation runtime, whose message
    delivery is indexed first (`fl_app.message_delivery`)."""
    from fl_app.assembly import build_server, prepare_run, round_timeout
    from fl_app.message_delivery import index_message_delivery

    index_message_delivery()
    run = prepare_run(context.run_config, run_id=context.run_id)
    cfg = run.cfg
    with run.recorder:
        server = build_server(run, grid=grid, context=context)
        start_grid(grid=grid, server=server,
                   config=ServerConfig(num_rounds=cfg.run.num_server_rounds, round_timeout=round_timeout(cfg)))


app = ServerApp()
app.main()(main)
