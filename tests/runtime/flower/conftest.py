"""What the Flower tests share: the server's output root, Flower's task identity in-process."""
from __future__ import annotations

import pytest


@pytest.fixture
def output_root(tmp_path, monkeypatch):
    """The server writes only under its output root: the test's folder."""
    monkeypatch.setenv("FEDOA_OUTPUT_ROOT", str(tmp_path))


@pytest.fixture
def task_identity():
    """Flower's per-process task identity, which its messages read (set by flwr-serverapp in a deployment)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
