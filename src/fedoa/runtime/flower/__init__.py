"""FedOA on Flower's Deployment Engine: one SuperNode per client, on as many machines as clients.

- :mod:`.server_app` / :mod:`.server`: the ServerApp (sampling, aggregation, checkpoints,
  evaluation assignment, results) -- the same ``Algorithm`` code as ``fedoa run``;
- :mod:`.client_app` / :mod:`.node`: the ClientApp (a node's data, its private state on disk,
  ``client_update`` and evaluation);
- :mod:`.wire`: what travels (the global adapter and small values);
- :mod:`.deploy`: ``fedoa deploy ...`` (SuperLink, SuperNode, run, log, status, results).

See docs/deployment.md.
"""
