"""Two rounds of every registered method through the in-process runtime (tiny model, vader caps)."""
import json

import pytest

from fedoa.algorithms import ALGORITHMS
from fedoa.runtime.inprocess import run_simulation
from tests.support import vader_tiny_config

CLIENTS = ("movie", "tweets", "nyt")
PHASES = {  # the phases each method logs ("update": the norm of each returned global-adapter update)
    "local": {"personal"},
    "fedit": {"global", "update"},
    "fedprox": {"global", "update"},
    "centralized": {"global", "update"},
    "ditto": {"personal", "global", "update"},
    "pfedme": {"pfedme", "update"},
    "fedsdr": {"personal", "global", "update"},
    "feddpa": {"personal", "global", "update"},
    "fedoa": {"personal", "global", "update"},
    "fedlora": {"personal", "global", "update"},
    "perada": {"personal", "global", "update", "distill"},  # distill: the server's line
}


@pytest.mark.parametrize("method", sorted(ALGORITHMS))  # every registered method, a new one included
def test_two_round_run(tmp_path, method):
    cfg = vader_tiny_config()
    cfg.method = method
    cfg.data.train_per_client = 4
    cfg.data.test_per_client = 3
    if method == "feddpa":
        cfg.eval.metric = "both"  # the instance mix through option scoring and generation
        cfg.eval.max_new_tokens = 3
    out = tmp_path / method
    run_simulation(cfg, out, progress=False, reports=False)
    results = json.loads((out / "results.json").read_text())
    algo = ALGORITHMS[method](cfg)
    assert set(results["summary"]) == set(algo.evaluated) | {"zero_shot"}
    for kind in algo.evaluated:
        assert set(results["matrices"][kind]) == set(CLIENTS)
        assert all(0.0 <= v["id_accuracy"] <= 1.0 for v in results["per_client"][kind].values())

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    phases = {line["phase"] for line in lines} - {"eval"}
    assert phases == PHASES[method] if method in PHASES else phases - {"update"}, phases
    lines = [line for line in lines if line["phase"] not in ("update", "eval", "distill")]
    comm = results["communication"]
    if method in ("local", "centralized"):
        assert comm["bytes_up_total"] == 0 and comm["bytes_down_per_round"] == 0
    else:
        assert comm["bytes_up_per_round"] == 3 * comm["adapter_bytes"]
    if method == "centralized":  # one trainer on the union of the clients' data per round
        assert [(l["client"], l["examples"]) for l in lines] == [("pooled", 12), ("pooled", 12)]
    else:
        assert len({l["client"] for l in lines}) == 3

    adapters = out / "adapters"
    assert (adapters / "global").is_dir() == ("global" in algo.evaluated)
    assert (adapters / "personal").is_dir() == ("personal" in algo.evaluated)
