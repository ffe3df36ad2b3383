import json
from collections import Counter

import pytest

from fedoa.config import DataConfig
from fedoa.data import load_clients
from fedoa.data import vader as vader_mod
from fedoa.data.partition import cap_records, flower_partition, natural_partition
from fedoa.data.records import Record
from fedoa.errors import ConfigError, DataError


def _tasks(n_per_label=100, labels=("a", "b", "c", "d"), n_test=20):
    """Two tasks whose records are unique, with balanced labels."""
    out = {}
    for t in ("t1", "t2"):
        def make(split, n):
            return [Record(f"{t} {split} {lab} {i}", lab, tuple(labels), t)
                    for lab in labels for i in range(n)]
        out[t] = (make("train", n_per_label), make("test", n_test))
    return out


def test_natural():
    clients = natural_partition(_tasks())
    assert [c.name for c in clients] == ["t1", "t2"]
    assert clients[0].tasks == {"t1"} and len(clients[0].train) == 400


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"partition": "dirichlet", **kw})


def _split(cfg, tasks=None, seed=0):
    return flower_partition(tasks or _tasks(), cfg, seed)


def _covers_each_record_once(tasks, clients, split):
    given = Counter(r for tr_te in tasks.values() for r in tr_te[split])
    got = Counter(r for c in clients for r in (c.train, c.test)[split])
    return got == given


#: every Flower partitioner that uses all the training data, with the settings it needs
USES_ALL = {
    "iid": {}, "dirichlet": {}, "linear": {}, "square": {}, "exponential": {}, "natural_id": {},
    "shard": {"shards_per_client": 2}, "inner_dirichlet": {"partition_sizes": [100, 300, 400]},
}


@pytest.mark.parametrize("partition", sorted(USES_ALL))
def test_flower_partitioners_give_every_record_once(partition):
    tasks = _tasks()
    clients = _split(_cfg(partition=partition, **USES_ALL[partition]))
    assert _covers_each_record_once(tasks, clients, 0) and _covers_each_record_once(tasks, clients, 1)
    assert all(c.train and c.test for c in clients)
    pooled = [r for tr, _ in tasks.values() for r in tr]
    assert all(c.train == sorted(c.train, key=pooled.index) for c in clients)  # pooled order kept


def test_flower_partitions_are_flwr_datasets_own():
    """fedoa's split is the partitioner's on the seeded shuffle of the pooled training labels."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    tasks = _tasks()
    pooled = [r for tr, _ in tasks.values() for r in tr]
    labels = sorted({r.output for r in pooled})
    ds = Dataset.from_dict({"row": list(range(len(pooled))), "key": [labels.index(r.output) for r in pooled]})
    p = DirichletPartitioner(5, "key", 0.3, min_partition_size=1, seed=7)
    p.dataset = ds.shuffle(seed=7)
    theirs = [sorted(int(i) for i in p.load_partition(c)["row"]) for c in range(5)]
    ours = _split(_cfg(num_clients=5, dirichlet_alpha=0.3), seed=7)
    assert [[pooled.index(r) for r in c.train] for c in ours] == theirs


def test_flower_partitions_seeded():
    a = _split(_cfg(), seed=3)
    assert a == _split(_cfg(), seed=3)
    assert a != _split(_cfg(), seed=4)


def test_test_sets_follow_each_clients_training_mix():
    for c in _split(_cfg(num_clients=4, dirichlet_alpha=0.3)):
        train, test = Counter(r.output for r in c.train), Counter(r.output for r in c.test)
        assert set(test) <= set(train)
        for label, n in test.items():  # 100 train / 20 test per label and task: a fifth, give or take one
            assert abs(n - train[label] / 5) <= 1


def _max_share(client):
    counts = Counter(r.output for r in client.train)
    return max(counts.values()) / sum(counts.values())


def test_dirichlet_alpha_controls_skew():
    uniform = _split(_cfg(dirichlet_alpha=1000.0))
    skewed = _split(_cfg(dirichlet_alpha=0.05))
    assert all(_max_share(c) < 0.35 for c in uniform)  # 4 labels: 0.25 each
    assert all(abs(len(c.train) - 200) < 40 for c in uniform)
    assert sum(_max_share(c) for c in skewed) / 4 > 0.8


def test_dirichlet_min_partition_size():
    small = _tasks(n_per_label=10, labels=("a", "b"))
    clients = _split(_cfg(num_clients=6, dirichlet_alpha=0.3, min_partition_size=2), small)
    assert all(len(c.train) >= 2 for c in clients) and all(c.test for c in clients)
    with pytest.raises(DataError, match="data.partition: dirichlet partitioner: The max number of attempts"):
        _split(_cfg(num_clients=10, dirichlet_alpha=0.001), _tasks(n_per_label=3, labels=("a", "b")))


def test_dirichlet_too_few_records():
    with pytest.raises(DataError, match="cannot fill 20 clients"):
        _split(_cfg(num_clients=20), _tasks(n_per_label=2, labels=("a",)))


def test_pathological_gives_each_client_its_classes():
    clients = _split(_cfg(partition="pathological", num_clients=4, classes_per_client=2,
                          class_assignment="deterministic"))
    # deterministic: client i holds labels i and i+1 (mod 4); test sets the same two labels
    for i, c in enumerate(clients):
        want = {"abcd"[i], "abcd"[(i + 1) % 4]}
        assert {r.output for r in c.train} == want and {r.output for r in c.test} == want


def test_natural_id_by_task_is_the_natural_split():
    tasks = _tasks()
    by_task = _split(_cfg(partition="natural_id", partition_by="task"), tasks)
    assert by_task == natural_partition(tasks)


def test_natural_id_names_clients_by_value_when_it_can():
    assert [c.name for c in _split(_cfg(partition="natural_id"))] == ["a", "b", "c", "d"]
    odd = _tasks(labels=("yes it is", "no"))
    assert [c.name for c in _split(_cfg(partition="natural_id"), odd)] == ["client0", "client1"]


def test_natural_id_by_category_merges_a_categorys_tasks():
    tasks = _tasks()
    tasks["t3"] = tuple([Record(r.instruction.replace("t1", "t3"), r.output, r.options, "t3") for r in split]
                        for split in tasks["t1"])
    for t in ("t1", "t2"):  # one category of two tasks; t3 has none, so it is its own
        tasks[t] = tuple([Record(r.instruction, r.output, r.options, t, "cat") for r in split] for split in tasks[t])
    clients = _split(_cfg(partition="natural_id", partition_by="category"), tasks)
    assert [(c.name, c.tasks, len(c.train), len(c.test)) for c in clients] == [
        ("cat", {"t1", "t2"}, 800, 160), ("t3", {"t3"}, 400, 80)]


def test_size_partition_and_its_warning(capsys):
    clients = _split(_cfg(partition="size", partition_sizes=[100, 50, 250]))
    assert [len(c.train) for c in clients] == [100, 50, 250]
    assert "smaller than the size of the dataset" in capsys.readouterr().err.replace("issmaller", "is smaller")


def test_partition_settings_checked():
    from fedoa.config import load_config

    with pytest.raises(ConfigError, match="data.partition_sizes"):
        load_config(None, ["data.partition='size'"])
    with pytest.raises(ConfigError, match="shards_per_client or shard_size"):
        load_config(None, ["data.partition='shard'"])
    with pytest.raises(ConfigError, match="data.partition"):
        load_config(None, ["data.partition='by-magic'"])


def test_missing_flwr_datasets_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "flwr_datasets", None)
    with pytest.raises(DataError, match=r"needs flwr-datasets \(pip install --no-deps flwr-datasets=="):
        _split(_cfg())
    assert natural_partition(_tasks())  # natural needs nothing


def test_cap_records():
    records = _tasks()["t1"][0]
    capped = cap_records(records, 10, seed=0, key="x")
    assert len(capped) == 10
    assert capped == sorted(capped, key=records.index)  # order preserved
    assert capped == cap_records(records, 10, seed=0, key="x")
    assert capped != cap_records(records, 10, seed=0, key="y")
    assert cap_records(records, 0, 0, "x") == records
    assert cap_records(records, 10_000, 0, "x") == records


# --------------------------------------------------------------------------- load_clients


def test_load_clients_flan8_caps(flan8):
    cfg = DataConfig(source="jsonl", path=str(flan8), tasks=["sst2", "snli"],
                     train_per_client=50, test_per_client=10)
    clients = load_clients(cfg, seed=0)
    assert [c.name for c in clients] == ["snli", "sst2"]
    assert [(len(c.train), len(c.test)) for c in clients] == [(50, 10), (50, 10)]
    assert load_clients(cfg, seed=0) == clients


def test_load_clients_dirichlet(flan8):
    cfg = DataConfig(source="jsonl", path=str(flan8), partition="dirichlet", num_clients=3,
                     dirichlet_alpha=0.3, train_per_client=100)
    clients = load_clients(cfg, seed=1)
    assert [c.name for c in clients] == ["client0", "client1", "client2"]
    assert all(0 < len(c.train) <= 100 and c.test for c in clients)


def test_load_clients_vader(vader_root, monkeypatch):
    monkeypatch.setattr(vader_mod, "ensure_vader_files", lambda: vader_root)
    clients = load_clients(DataConfig(source="vader", tasks=["movie", "nyt"]), seed=0)
    assert [c.name for c in clients] == ["movie", "nyt"]
    assert clients[0].categories == {"sentiment"}


def _folder(tmp_path, n_train, n_test):
    row = json.dumps({"instruction": "Q?\nOPTIONS:\n- yes\n- no", "output": "yes", "task": "t"})
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "t_train.jsonl").write_text("\n".join([row] * n_train))
    (cat / "t_test.jsonl").write_text("\n".join([row] * n_test))
    return str(tmp_path)


def test_load_clients_empty_train(tmp_path):
    with pytest.raises(DataError, match=r"t_train\.jsonl: the file is empty"):
        load_clients(DataConfig(source="jsonl", path=_folder(tmp_path, 0, 2)), seed=0)


def test_load_clients_empty_test(tmp_path):
    with pytest.raises(DataError, match=r"t_test\.jsonl: the file is empty"):
        load_clients(DataConfig(source="jsonl", path=_folder(tmp_path, 2, 0)), seed=0)
