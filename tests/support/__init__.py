"""What the tests share beyond :mod:`fedoa.testing` (tiny model, synthetic clients, small configs,
re-exported here): finished tiny runs (:mod:`.runs`), the Flower harness (:mod:`.flower`) and
certificates (:mod:`.pki`)."""
from fedoa.testing import (  # noqa: F401
    sentiment_record,
    synthetic_clients,
    tiny_config,
    tiny_model_dir,
    vader_tiny_config,
)
