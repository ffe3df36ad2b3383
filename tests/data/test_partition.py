import json
from collections import Counter

import pytest

from fedoa.config import DataConfig
from fedoa.data import load_clients
from fedoa.data import vader as vader_mod
from fedoa.data.partition import cap_records, dirichlet_partition, natural_partition
from fedoa.data.records import Record
from fedoa.errors import DataError


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


def test_dirichlet_covers_every_record_once():
    tasks = _tasks()
    clients = dirichlet_partition(tasks, 5, 0.5, seed=0)
    assert [c.name for c in clients] == [f"client{i}" for i in range(5)]
    for split in (0, 1):
        given = Counter(r for tr_te in tasks.values() for r in tr_te[split])
        got = Counter(r for c in clients for r in (c.train, c.test)[split])
        assert got == given
    assert all(c.train for c in clients)


def test_dirichlet_seeded():
    tasks = _tasks()
    a = dirichlet_partition(tasks, 4, 0.5, seed=3)
    assert a == dirichlet_partition(tasks, 4, 0.5, seed=3)
    assert a != dirichlet_partition(tasks, 4, 0.5, seed=4)


def _max_share(client):
    counts = Counter(r.output for r in client.train)
    return max(counts.values()) / sum(counts.values())


def test_dirichlet_alpha_controls_skew():
    tasks = _tasks()
    uniform = dirichlet_partition(tasks, 4, 1000.0, seed=0)
    skewed = dirichlet_partition(tasks, 4, 0.05, seed=0)
    assert all(_max_share(c) < 0.35 for c in uniform)  # 4 labels: 0.25 each
    assert all(abs(len(c.train) - 200) < 40 for c in uniform)
    assert sum(_max_share(c) for c in skewed) / 4 > 0.8


def test_dirichlet_tiny_alpha_still_fills_every_client():
    clients = dirichlet_partition(_tasks(n_per_label=3, labels=("a", "b")), 10, 0.001, seed=0)
    assert all(c.train for c in clients) and all(c.test for c in clients)
    assert sum(len(c.train) for c in clients) == 12


def test_dirichlet_too_few_records():
    with pytest.raises(DataError, match="cannot fill 20 clients"):
        dirichlet_partition(_tasks(n_per_label=2, labels=("a",)), 20, 1.0, seed=0)


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
