"""Names of the evaluated model kinds, shared by evaluation, statistics and rendering.

- ``personal``: a client's own adapter(s), never sent;
- ``mixed``: a client's personal and the global adapter mixed per test input (FedDPA's
  instance-wise inference; FedOA's reference evaluation script can answer this way too);
- ``global``: the federated adapter, the same for every client;
- ``zero_shot``: the base model without adapters.
"""
from __future__ import annotations

PERSONAL = "personal"
MIXED = "mixed"
GLOBAL = "global"
ZERO_SHOT = "zero_shot"

#: report order
ORDER = (PERSONAL, MIXED, GLOBAL, ZERO_SHOT)
LABELS = {PERSONAL: "personal", MIXED: "mixed", GLOBAL: "global", ZERO_SHOT: "zero-shot"}
