"""fedoa on Flower's Deployment Engine: one SuperNode per client, on as many machines as clients.

- :mod:`.server_app` + :mod:`.transport`: the ServerApp hands the round loop to the driver
  (:mod:`fedoa.runtime.driver`) with a transport that speaks to the nodes;
- :mod:`.client_app` + :mod:`.node`: the ClientApp (a node's data, its private state on disk,
  ``client_update`` and evaluation);
- :mod:`.wire`: what travels (the global adapter and small values);
- :mod:`.runconfig` + ``app/pyproject.toml``: the checked-in Flower app and its run-config keys.

``fedoa deploy ...`` (:mod:`fedoa.cli.deploy`) starts SuperLink and SuperNodes and submits runs.
See docs/deployment.md.
"""
