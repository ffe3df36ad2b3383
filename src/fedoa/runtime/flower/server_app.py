"""The ServerApp: runs in the SuperLink's ``flwr-serverapp`` process for each ``flwr run``.

It reads the run config (every fedoa key plus ``deploy.*``), and hands the round loop to the
driver with the Flower transport.
"""
from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, dict(context.run_config), log=lambda message: print(message, flush=True))


def serve(grid, run_config: dict, log=print) -> dict:
    """The whole run on the server: join the nodes, the rounds, evaluation, artifacts."""
    from fedoa.reports.publish import render_reports
    from fedoa.runtime.driver import run_federation
    from fedoa.runtime.flower.runconfig import unflatten
    from fedoa.runtime.flower.transport import FlowerTransport

    cfg, deploy = unflatten(run_config)
    transport = FlowerTransport(grid, cfg, deploy, log)
    results = run_federation(cfg, transport, transport.out_dir, fresh=deploy.fresh, render=render_reports,
                              replace=deploy.replace)
    log(f"[fedoa] done in {results.timing['wall_seconds']:.0f} s; results in {transport.out_dir / 'results.json'}")
    for kind, s in results.summary.items():
        log(f"[fedoa] {kind}: ID {s.get('id_accuracy')}, OOD {s.get('ood_accuracy')}")
    return results
