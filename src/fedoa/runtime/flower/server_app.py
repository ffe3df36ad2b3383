"""The ServerApp: runs in the SuperLink's ``flwr-serverapp`` process for each ``flwr run``."""
from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedoa.runtime.flower.server import ServerSettings, run_server

    run_server(grid, ServerSettings.from_run_config(context.run_config), log=lambda m: print(m, flush=True))
