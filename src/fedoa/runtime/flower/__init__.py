"""fedoa on Flower's Deployment Engine: one SuperNode per client, on as many machines as clients.

- :mod:`.server_app` + :mod:`.transport`: the ServerApp hands the round loop to the driver
  (:mod:`fedoa.runtime.driver`) with a transport that speaks to the nodes;
- :mod:`.client_app` + :mod:`.node`: the ClientApp (a node's data, its private state on disk,
  ``client_update`` and evaluation);
- :mod:`.wire`: what travels (the global adapter and small values);
- :mod:`.runconfig`: the run-config keys and the Flower app generated from them;
- :mod:`.launch`: the Flower commands fedoa starts (one transport-security rule), submitting and
  following runs; ``fedoa deploy ...`` (:mod:`fedoa.cli.deploy`) parses arguments and calls it.
See docs/deployment.md.
"""
