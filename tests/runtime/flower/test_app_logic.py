"""The Flower app's server and node logic on an in-memory grid (no daemons): the same results as
the in-process runtime, failures, resume, node state on disk."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedoa.errors import FedoaError
from fedoa.runtime.flower.node import node_spec
from fedoa.runtime.flower.server_app import serve
from fedoa.runtime.inprocess import run_simulation
from tests.support import tiny_config
from tests.support.flower import NAMES, FakeGrid, make_federation, run_config


@pytest.fixture(autouse=True)
def _output_root(output_root):
    """Every test here: the server writes under the test's folder."""


def deploy(cfg, paths, nodes, out, **kw):
    rc = run_config(cfg, out, num_nodes=len(nodes), eval_path=str(paths["shared"]), **kw)
    return FakeGrid(nodes, rc), rc


def quiet(grid, rc):
    return serve(grid, rc, log=lambda m: None).to_json()


def adapter(folder):
    return load_file(str(folder / "adapters" / "global" / "adapter_model.safetensors"))


def test_deployment_logic_matches_the_in_process_run(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    grid, rc = deploy(cfg, paths, nodes, "dep")
    dep = quiet(grid, rc)

    a, b = adapter(tmp_path / "sim"), adapter(tmp_path / "dep")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    for key in ("summary", "per_client", "matrices", "clients", "test_sets", "id_set", "ood_sets"):
        assert json.dumps(dep[key], sort_keys=True) == json.dumps(sim[key], sort_keys=True), key
    for key in ("adapter_bytes", "bytes_up_per_round", "bytes_down_per_round", "updates_per_round"):
        assert dep["communication"][key] == sim["communication"][key]
    assert dep["failures"] == []
    # the nodes' private test records stay private: counts only, no per-record outcome (no opt-in)
    assert dep["deployment"]["record_outcomes"] is False
    assert all(h == "" for by_client in dep["records"].values() for sets in by_client.values() for h in sets.values())
    assert any(h for by_client in sim["records"].values() for sets in by_client.values() for h in sets.values())
    sim_lines = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    dep_lines = [json.loads(x) for x in (tmp_path / "dep" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda ls: [{k: v for k, v in x.items() if k != "seconds"} for x in ls]  # noqa: E731
    assert strip(dep_lines) == strip(sim_lines)
    assert (tmp_path / "dep" / "report.md").read_text().startswith("# fedoa run: fedoa")
    assert not (tmp_path / "dep" / "adapters" / "personal").exists()  # personal adapters stay on nodes
    # each node keeps its own client's state, and its final personal adapter, on its own disk
    for n in NAMES:
        [run_dir] = (tmp_path / f"state-{n}" / n).iterdir()
        assert sorted(p.name for p in run_dir.glob("round-*.safetensors")) == ["round-0001.safetensors", "round-0002.safetensors"]
        mine = load_file(str(run_dir / "adapters" / "personal" / "adapter_model.safetensors"))
        ref = load_file(str(tmp_path / "sim" / "adapters" / "personal" / n / "adapter_model.safetensors"))
        assert max((mine[k] - ref[k]).abs().max().item() for k in ref) <= 1e-5
    # one evaluate message per node after round 1 (a look) and after the last round (shared models
    # scored once per set), and the per-round numbers equal the in-process run's
    evals = [t for _, t in grid.sent if t == "evaluate"]
    assert len(evals) == 2 * 3
    assert json.dumps(dep["rounds"], sort_keys=True) == json.dumps(sim["rounds"], sort_keys=True)


def test_with_batch_clients_on_a_node_scores_its_models_in_one_pass_and_alike(tmp_path, task_identity, monkeypatch):
    """runtime.batch_clients = "on": each node's personal, mixed, global and zero-shot models score a
    batch of records in one pass (evaluation/batched.py), with the results of one model at a time."""
    import fedoa.evaluation.batched as batched

    cfg, paths, nodes = make_federation(tmp_path)
    cfg.train.lr = 0.2  # trained far enough that the models answer differently
    cfg.runtime.batch_clients = "off"
    one_by_one = quiet(*deploy(cfg, paths, nodes, "off"))
    passes = []
    real = batched.batched_predictions
    monkeypatch.setattr(batched, "batched_predictions",  # the real one, counting the models of each pass
                        lambda ev, models, *a: passes.append(len(models)) or real(ev, models, *a))
    cfg.runtime.batch_clients = "on"
    together = quiet(*deploy(cfg, paths, nodes, "on"))
    # per node: a look after round 1 and the final evaluation, each with every model in one pass
    assert len(passes) == 2 * len(NAMES) and max(passes) >= 3, passes
    for key in ("summary", "per_client", "matrices", "rounds"):
        assert json.dumps(together[key], sort_keys=True) == json.dumps(one_by_one[key], sort_keys=True), key
    assert len({json.dumps(m, sort_keys=True) for m in together["matrices"].values()}) > 1  # the models differ


def test_a_lost_node_is_recorded_and_the_round_goes_on(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    grid, rc = deploy(cfg, paths, nodes, "dep", min_nodes=2)

    def kill_b_in_round_two(msg):
        if msg.metadata.message_type == "train" and msg.metadata.group_id == "2":
            grid.dead.add(101)

    grid.on_push = kill_b_in_round_two
    dep = quiet(grid, rc)
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "b", "c"], "2": ["a", "c"]}
    assert dep["clients"] == ["a", "c"]  # b's personal model could not be evaluated
    assert set(dep["matrices"]["global"]["a"]) == {"a", "b", "c"}  # b's test set is still used (eval-path)
    assert len(dep["failures"]) == 2 and "round 2: client b (node 101)" in dep["failures"][0]
    assert dep["failures"][1].startswith("evaluation: client b")
    assert "Node Unavailable" in dep["failures"][0]
    assert dep["deployment"]["clients_not_evaluated"] == ["b"]
    assert "## Failures" in (tmp_path / "dep" / "report.md").read_text()


def test_too_few_updates_stop_the_run_and_a_rerun_resumes_exactly(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    full_grid, rc = deploy(cfg, paths, nodes, "full")
    quiet(full_grid, rc)

    grid, rc = deploy(cfg, paths, nodes, "dep", min_nodes=3, round_timeout=0.5)
    grid.on_push = lambda m: grid.silent.add(102) if m.metadata.group_id == "2" else None
    with pytest.raises(FedoaError, match="round 2: 2 of 3"):
        quiet(grid, rc)
    assert not (tmp_path / "dep" / "results.json").exists()
    # the nodes have run round 2 already (a and b); the rerun must start them from round 1's state
    grid2 = FakeGrid(nodes, rc)
    quiet(grid2, rc)
    assert [t for _, t in grid2.sent].count("train") == 3  # only round 2 again
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "dep")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _same_results(sim, dep, sim_dir, dep_dir):
    a, b = adapter(sim_dir), adapter(dep_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    for key in ("summary", "matrices", "clients", "test_sets", "id_set", "ood_sets", "protocol"):
        assert json.dumps(dep[key], sort_keys=True) == json.dumps(sim[key], sort_keys=True), key


def test_embedded_vader_nodes_and_shared_test_sets(tmp_path, task_identity):
    cfg = tiny_config(fed={"rounds": 1}, data={"source": "vader", "tasks": ["movie", "nyt"], "train_per_client": 8,
                                               "test_per_client": 6})
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    nodes = {7: {"client-name": "movie", "vader-domain": "movie", "state-dir": str(tmp_path / "s")},
             8: {"client-name": "nyt", "vader-domain": "nyt", "state-dir": str(tmp_path / "s")}}
    rc = run_config(cfg, "dep", num_nodes=2, eval_path="embedded:vader")
    dep = quiet(FakeGrid(nodes, rc), rc)
    _same_results(sim, dep, tmp_path / "sim", tmp_path / "dep")


def test_leave_category_out_held_out_sets_come_from_the_eval_path(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path, categories={"a": "x", "b": "x", "c": "y"}, fed={"rounds": 1})
    cfg.protocol.name, cfg.protocol.holdout = "leave-category-out", "y"
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    nodes = {n: v for n, v in nodes.items() if v["client-name"] != "c"}  # nobody holds the held-out category
    rc = run_config(cfg, "dep", num_nodes=2, eval_path=str(paths["shared"]))
    dep = quiet(FakeGrid(nodes, rc), rc)
    assert dep["ood_sets"] == {"a": ["c"], "b": ["c"]}
    _same_results(sim, dep, tmp_path / "sim", tmp_path / "dep")


def test_a_misconfigured_node_stops_the_run_at_the_start(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    nodes[101]["data-path"] = str(tmp_path / "nowhere")
    grid, rc = deploy(cfg, paths, nodes, "dep")
    with pytest.raises(FedoaError, match="node 101 cannot serve a client: .*data folder not found"):
        quiet(grid, rc)
    assert [t for _, t in grid.sent] == ["query"] * 3  # nothing was trained


def test_a_method_that_pools_data_is_refused(tmp_path, task_identity):
    from fedoa.algorithms import ALGORITHMS

    if "centralized" not in ALGORITHMS:
        pytest.skip("no centralized method registered")
    cfg, paths, nodes = make_federation(tmp_path)
    cfg.method = "centralized"
    grid, rc = deploy(cfg, paths, nodes, "dep")
    with pytest.raises(FedoaError, match="pooled data"):
        quiet(grid, rc)
    assert "train" not in [t for _, t in grid.sent]


@pytest.mark.parametrize("method", ["fedit", "fedprox", "ditto", "local", "pfedme", "feddpa", "fedsdr"])
def test_other_methods_match_the_in_process_run(tmp_path, task_identity, method):
    from fedoa.algorithms import ALGORITHMS

    if method not in ALGORITHMS:
        pytest.skip(f"no {method} method registered")
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 2})
    cfg.method = method
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    grid, rc = deploy(cfg, paths, nodes, "dep")
    dep = quiet(grid, rc)
    for key in ("summary", "matrices", "clients"):
        assert json.dumps(dep[key], sort_keys=True) == json.dumps(sim[key], sort_keys=True), key
    for key in ("adapter_bytes", "bytes_up_per_round", "bytes_down_per_round"):
        assert dep["communication"][key] == sim["communication"][key]
    if (tmp_path / "sim" / "adapters" / "global").exists():
        a, b = adapter(tmp_path / "sim"), adapter(tmp_path / "dep")
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_node_config_and_run_config_are_checked(tmp_path):
    with pytest.raises(FedoaError, match="exactly one of data-path or vader-domain"):
        node_spec({"client-name": "a"})
    with pytest.raises(FedoaError, match="unknown node-config"):
        node_spec({"client-name": "a", "data_path": "/x"})
    with pytest.raises(FedoaError, match="file name"):
        node_spec({"client-name": "../a", "vader-domain": "movie"})
    for key in ("lora-rank", "threads"):
        for bad in ("4", 0, True, 2.5):
            with pytest.raises(FedoaError, match=f"{key} must be a positive integer"):
                node_spec({"client-name": "a", "vader-domain": "movie", key: bad})
    assert node_spec({"client-name": "a", "vader-domain": "movie", "lora-rank": 4}).rank == 4
    assert node_spec({"client-name": "a", "vader-domain": "movie", "threads": 3}).threads == 3


def test_int8_uploads_and_node_ranks_match_the_in_process_run(tmp_path, task_identity):
    """fed.upload = int8 with heterogeneous ranks: node a declares lora-rank = 2 itself, b takes rank 1
    from the run's lora.client_ranks, c has lora.r = 4; the same global adapter, bytes and metrics
    as the in-process run with client_ranks {a: 2, b: 1}."""
    cfg, paths, nodes = make_federation(tmp_path, fed={"upload": "int8"}, lora={"client_ranks": {"a": 2, "b": 1}})
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    nodes[100]["lora-rank"] = 2
    deployed = cfg.clone()
    deployed.lora.client_ranks = {"b": 1}
    grid, rc = deploy(deployed, paths, nodes, "dep")
    dep = quiet(grid, rc)
    assert dep["failures"] == []
    a, b = adapter(tmp_path / "sim"), adapter(tmp_path / "dep")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    for key in ("bytes_up_per_round", "bytes_down_per_round", "bytes_up_per_client_round", "upload_format",
                "client_ranks"):
        assert dep["communication"][key] == sim["communication"][key], key
    assert dep["communication"]["client_ranks"] == {"a": 2, "b": 1, "c": 4}
    assert json.dumps(dep["summary"], sort_keys=True) == json.dumps(sim["summary"], sort_keys=True)


def test_a_node_declaring_a_rank_above_lora_r_cannot_join(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    nodes[101]["lora-rank"] = 8
    with pytest.raises(FedoaError, match="lora-rank 8 exceeds the run's lora.r = 4"):
        quiet(*deploy(cfg, paths, nodes, "dep"))


@pytest.mark.parametrize("out", ["../elsewhere", "/etc/fedoa", "a/../../b"])
def test_the_server_writes_only_under_its_output_root(tmp_path, out):
    grid = FakeGrid({}, {})
    with pytest.raises(FedoaError, match="leaves the server's output root"):
        serve(grid, run_config(tiny_config(), out, num_nodes=1), log=lambda m: None)
    assert grid.sent == []


def test_the_run_config_is_flower_keys_and_round_trips():
    from fedoa.runtime.flower.runconfig import DeploySettings, flatten, unflatten

    cfg = tiny_config(data={"hf_columns": {"instruction": "q"}})
    rc = flatten(cfg, DeploySettings(out_dir="x", num_nodes=3))
    assert all(isinstance(v, (bool, int, float, str)) for v in rc.values())
    assert rc["train.lr"] == cfg.train.lr and rc["deploy.num-nodes"] == 3
    back, deploy = unflatten(rc)
    assert back == cfg and deploy.num_nodes == 3 and deploy.out_dir == "x"
    with pytest.raises(FedoaError, match="train.lr"):
        unflatten({**rc, "train.lr": "fast"})
    with pytest.raises(FedoaError, match="deploy.num-nodes"):
        unflatten({**rc, "deploy.num-nodes": "four"})


@pytest.mark.parametrize("method", ["fedlora", "perada"])
def test_the_paper_table_methods_match_the_in_process_run(tmp_path, task_identity, method):
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 2})
    cfg.method = method
    cfg.perada.pool = "none"  # PerAda's client side; its distillation is refused below
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    dep = quiet(*deploy(cfg, paths, nodes, "dep"))
    for key in ("summary", "matrices", "clients"):
        assert json.dumps(dep[key], sort_keys=True) == json.dumps(sim[key], sort_keys=True), key
    a, b = adapter(tmp_path / "sim"), adapter(tmp_path / "dep")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_server_side_distillation_is_refused_before_round_1(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    cfg.method = "perada"  # the default pool distils on the server
    grid, rc = deploy(cfg, paths, nodes, "dep")
    with pytest.raises(FedoaError, match="server-side data"):
        quiet(grid, rc)
    assert "train" not in [t for _, t in grid.sent]


def test_rouge_scores_travel_from_the_nodes(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    cfg.eval.rouge, cfg.eval.rouge_max_new_tokens = True, 3
    sim = run_simulation(cfg, tmp_path / "sim", progress=False, reports=False).to_json()
    with pytest.raises(FedoaError, match="deploy.record-outcomes"):  # per-record ROUGE needs the opt-in
        quiet(*deploy(cfg, paths, nodes, "refused"))
    dep = quiet(*deploy(cfg, paths, nodes, "dep", record_outcomes=True))
    assert dep["deployment"]["record_outcomes"] is True
    assert dep["rouge"]["records"] and json.dumps(dep["rouge"], sort_keys=True) == json.dumps(sim["rouge"], sort_keys=True)


def test_a_hostile_node_is_that_clients_failure_never_a_server_exception(tmp_path, task_identity, monkeypatch):
    """Node b answers training with num-examples = inf (an OverflowError in the old parser) and
    evaluation with a score for a set it was not asked to score: each is b's recorded failure,
    the run completes with the others, and b's invented score is nowhere."""
    from fedoa.runtime.flower import client_app, wire

    real = client_app.handle

    def hostile(kind, node_config, run_config, content):
        reply = real(kind, node_config, run_config, content)
        if node_config["client-name"] != "b" or kind == wire.QUERY:
            return reply
        values = wire.values_of(reply)
        if kind == wire.TRAIN:
            values["num-examples"] = float("inf")
        else:
            values["scores"] = json.dumps([{"kind": "global", "set": "a", "options": 0.0, "generation": None}])
        return wire.content(values, wire.state_of(reply))

    monkeypatch.setattr(client_app, "handle", hostile)
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 1, "personal_start_round": 1})
    dep = quiet(*deploy(cfg, paths, nodes, "dep", min_nodes=2))
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "c"]}
    assert any("round 1: client b" in f and "malformed reply: num-examples" in f for f in dep["failures"])
    assert any(f.startswith("evaluation: client b") and "not asked to score" in f for f in dep["failures"])
    assert dep["clients"] == ["a", "c"]  # b's models are not evaluated; its claim is not used


def test_a_node_that_rejoins_cannot_raise_its_declared_example_count(tmp_path, task_identity, output_root):
    from fedoa.runtime.flower.runconfig import unflatten
    from fedoa.runtime.flower.transport import FlowerTransport
    from tests.support import synthetic_clients
    from tests.support.flower import write_federation

    cfg, paths, nodes = make_federation(tmp_path)
    grid, rc = deploy(cfg, paths, nodes, "dep")
    t = FlowerTransport(grid, *unflatten(rc), log=lambda m: None)
    t.discover()
    assert t.examples_of("a") == 8
    bigger = write_federation(tmp_path / "bigger", synthetic_clients(["a"], n_train=16, n_test=6))
    del grid.node_configs[100]  # a's node goes, and "a" comes back on a new node claiming 16 examples
    grid.node_configs[200] = {"client-name": "a", "data-path": str(bigger["a"]), "state-dir": str(tmp_path / "s"),
                              "eval-path": str(paths["shared"])}
    t.discover(expected={"a", "b", "c"})
    assert t.fed.node_of["a"] == 200 and t.fed.reports["a"]["train"] == 16
    assert t.examples_of("a") == 8  # capped at the first declaration
    t.restore({}, t.meta())  # and a resumed server keeps it
    assert t.examples_of("a") == 8


# ----------------------------------------------------------------------------- access control (loopback, no daemons)


def test_a_run_cannot_point_a_node_at_a_folder_its_operator_did_not_configure(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    for n in nodes.values():
        del n["eval-path"]  # the nodes name no shared folder; the run asks for one
    grid, rc = deploy(cfg, paths, nodes, "dep")
    with pytest.raises(FedoaError, match="reads only the folders its own config names"):
        quiet(grid, rc)
    assert "train" not in [t for _, t in grid.sent]
    from fedoa.runtime.flower.node import confined_eval_path, node_spec

    spec = node_spec({"client-name": "a", "vader-domain": "movie"})
    assert confined_eval_path(spec, "embedded:vader") == "embedded:vader" and confined_eval_path(spec, "") == ""
    own = node_spec({"client-name": "a", "vader-domain": "movie", "eval-path": "/srv/shared"})
    assert confined_eval_path(own, "/etc") == "/srv/shared"  # the node's own folder, whatever the run says


def test_a_run_cannot_make_a_node_load_a_model_from_a_folder_its_operator_did_not_configure(
        tmp_path, task_identity, monkeypatch):
    import shutil

    from fedoa.runtime.flower.node import confined_model, node_spec
    from fedoa.testing import tiny_model_dir

    cfg, paths, nodes = make_federation(tmp_path)
    cfg.model.name = str(shutil.copytree(tiny_model_dir(), tmp_path / "elsewhere" / "tiny"))  # a real model, not the node's
    grid, rc = deploy(cfg, paths, nodes, "dep")
    with pytest.raises(FedoaError, match="neither a hub id nor inside the node's model folder"):
        quiet(grid, rc)
    assert "train" not in [t for _, t in grid.sent]
    for n in nodes.values():  # the same run, once the nodes' operators name that folder: it trains
        n["model-path"] = str(tmp_path / "elsewhere")
    grid, rc = deploy(cfg, paths, nodes, "dep2")
    assert quiet(grid, rc)["summary"]

    spec = node_spec({"client-name": "a", "vader-domain": "movie", "model-path": str(tmp_path / "elsewhere")})
    assert confined_model(spec, "tiny", "") == str(tmp_path / "elsewhere" / "tiny")
    assert confined_model(spec, "embedded:smollm2-135m-instruct", "") == "embedded:smollm2-135m-instruct"
    assert confined_model(spec, "HuggingFaceTB/SmolLM2-135M", "") == "HuggingFaceTB/SmolLM2-135M"  # a hub id
    (tmp_path / "elsewhere" / "escape").symlink_to(tmp_path / "data")
    (tmp_path / "cwd" / "owner" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    escape = str(tmp_path / "elsewhere" / "escape")  # inside by name, outside once the link is followed
    for name in ("/etc", "../data", "tiny/../../data", "~/.ssh", escape, "owner/model", "x.gguf"):
        with pytest.raises(FedoaError, match="model.name"):
            confined_model(spec, name, "")
    with pytest.raises(FedoaError, match="model.gguf_file"):
        confined_model(spec, "tiny", "../../x.gguf")


def test_with_node_auth_a_client_name_stays_bound_to_its_first_node_for_the_whole_run(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 2, "personal_start_round": 2})
    grid, rc = deploy(cfg, paths, nodes, "dep", node_auth=True)
    impostor = {**nodes[100], "state-dir": str(tmp_path / "impostor")}

    def join_in_round_two(msg):  # an impostor claims "a" while a's node is online, then a's node leaves
        if msg.metadata.message_type == "train" and msg.metadata.group_id == "1":
            grid.node_configs[300] = impostor
        if msg.metadata.message_type == "train" and msg.metadata.group_id == "2":
            grid.dead.add(100)
    grid.on_push = join_in_round_two
    dep = quiet(grid, rc)
    assert dep["deployment"]["nodes"]["a"] == 100
    assert {"node": 300, "client": "a", "bound_to": 100} in dep["deployment"]["refused"]
    assert all(n != 300 for n, t in grid.sent if t == "train")  # the impostor never trained


def test_two_nodes_claiming_one_name_at_the_start_the_second_is_refused_and_the_first_served(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path)
    nodes[103] = {**nodes[100], "state-dir": str(tmp_path / "impostor")}  # answers after node 100, in the same poll
    rc = run_config(cfg, "dep", num_nodes=3, eval_path=str(paths["shared"]), node_auth=True, join_timeout=60.0)
    grid = FakeGrid(nodes, rc)
    dep = quiet(grid, rc)
    assert dep["deployment"]["nodes"] == {"a": 100, "b": 101, "c": 102}
    assert {"node": 103, "client": "a", "bound_to": 100} in dep["deployment"]["refused"]
    assert 103 not in [n for n, t in grid.sent if t != "query"]  # asked who it is, never trained nor evaluated
    assert dep["summary"]["personal"]["id_accuracy"] is not None  # client a was served
    rc = run_config(cfg, "dep2", num_nodes=3, eval_path=str(paths["shared"]))  # without keys: a misconfiguration
    grid = FakeGrid(nodes, rc)
    with pytest.raises(FedoaError, match="client-name must be unique"):
        quiet(grid, rc)


def test_one_run_cannot_touch_the_out_dir_another_run_is_writing(tmp_path, task_identity):
    from fedoa.io import FolderLock

    cfg, paths, nodes = make_federation(tmp_path)
    (tmp_path / "dep").mkdir()
    other = FolderLock(tmp_path / "dep")
    assert other.acquire()
    try:
        grid, rc = deploy(cfg, paths, nodes, "dep", fresh=True)
        with pytest.raises(FedoaError, match="another run is writing into this folder"):
            quiet(grid, rc)
        assert "train" not in [t for _, t in grid.sent] and not (tmp_path / "dep" / ".run").exists()
    finally:
        other.release()


def test_a_malformed_int8_upload_is_that_clients_failure_never_a_server_exception(tmp_path, task_identity, monkeypatch):
    """Node b sends its int8 change with a negative scale: b's recorded failure; the round goes on."""
    from flwr.app import ConfigRecord

    from fedoa.runtime.flower import client_app, wire

    real = client_app.handle

    def hostile(kind, node_config, run_config, content):
        reply = real(kind, node_config, run_config, content)
        if node_config["client-name"] == "b" and kind == wire.TRAIN:
            values = wire.values_of(reply)
            meta = json.loads(values[wire.UPLOAD])
            meta["scales"] = {k: -1.0 for k in meta["scales"]}
            reply[wire.VALUES] = ConfigRecord({**values, wire.UPLOAD: json.dumps(meta)})
        return reply

    monkeypatch.setattr(client_app, "handle", hostile)
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 1, "personal_start_round": 1, "upload": "int8"})
    dep = quiet(*deploy(cfg, paths, nodes, "dep", min_nodes=2))
    assert dep["communication"]["updates_per_round"] == {"1": ["a", "c"]}
    assert [f for f in dep["failures"] if "client b" in f] and all(
        "malformed reply: upload.scales" in f for f in dep["failures"] if "client b" in f), dep["failures"]
def test_a_later_run_cannot_replace_another_finished_runs_results_fresh_or_not(tmp_path, task_identity):
    cfg, paths, nodes = make_federation(tmp_path, fed={"rounds": 1, "personal_start_round": 1})
    quiet(*deploy(cfg, paths, nodes, "dep"))
    first = (tmp_path / "dep" / "results.json").read_bytes()
    other = cfg.clone()
    other.train.lr = 0.05
    grid, rc = deploy(other, paths, nodes, "dep", fresh=True)
    with pytest.raises(FedoaError, match=r"holds the finished results of another run \(other values of train.lr\)"):
        quiet(grid, rc)
    assert "train" not in [t for _, t in grid.sent] and (tmp_path / "dep" / "results.json").read_bytes() == first
    assert quiet(*deploy(other, paths, nodes, "dep", replace=True))["config"]["train"]["lr"] == 0.05  # asked for
