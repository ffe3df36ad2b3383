"""``fedoa deploy supernode`` runs Flower's own SuperNode with a shorter idle poll."""
from __future__ import annotations

import time
import types

import pytest

from fedoa.runtime.flower.launch import supernode_command
from fedoa.runtime.flower.supernode import check_flower, shorter_sleeps


def test_the_installed_flower_still_has_the_loop_it_shortens():
    import flwr.supercore.heartbeat as sender
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop

    check_flower(loop, connection, sender)  # fails the day Flower changes them: then the module must change too
    with pytest.raises(SystemExit, match="run flower-supernode itself"):
        check_flower(types)  # a module without that loop
    with pytest.raises(SystemExit, match="HEARTBEAT_DEFAULT_INTERVAL"):
        check_flower(loop, types)


def test_every_sleep_of_the_loop_is_capped_and_the_rest_of_time_is_untouched(monkeypatch):
    slept = []
    shim = shorter_sleeps(0.25)
    monkeypatch.setattr(time, "sleep", slept.append)
    shim.sleep(3)
    shim.sleep(0.1)
    assert slept == [0.25, 0.1]
    assert shim.time is time.time and shim.monotonic is time.monotonic


def test_the_node_command_is_flowers_supernode_through_this_module():
    cmd = supernode_command("127.0.0.1:9092", 9094, {"client-name": "a", "vader-domain": "movie"}, insecure=True)
    assert cmd[1:3] == ["-m", "fedoa.runtime.flower.supernode"] and "--insecure" in cmd
