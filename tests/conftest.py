"""Fixtures: the tiny model (see fedoa.testing) loaded once, and synthetic clients."""
from __future__ import annotations

import os
import warnings

# Before torch loads OpenMP (its settings are read once, at load): threads that wait for work sleep
# instead of spinning. Two xdist workers and the processes they start share 2 cores; spinning
# threads took the cores from each other (the real-model run beside bench.py --tiny: 130 s, 39 s
# with passive waits). Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.support import synthetic_clients

warnings.filterwarnings("ignore", category=FutureWarning)

# The tiny model's matmuls are too small to gain from threads, and several test processes
# (Flower nodes) share the cores: one thread each avoids oversubscription.
torch.set_num_threads(1)

#: session fixtures worth building once: the tests that use one run on one xdist worker
SHARED_FIXTURES = ("tiny_run", "smollm2_run")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in SHARED_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
    # the long units first, so that the short ones fill the other worker's time around them
    # (xdist hands out units in this order with --no-loadscope-reorder)
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 item.get_closest_marker("xdist_group") is None))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        _suffix_groups(items)


def _suffix_groups(items) -> None:
    """``--dist loadgroup`` sends tests whose node id ends in ``@group`` to one worker. xdist 3.8
    appends it to ``item._nodeid``, which pytest 9 no longer reads (the id is ``item._id``): do it here."""
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({m.args[0] if m.args else m.kwargs.get("name", "default")
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture
def all_threads():
    """Tests on the real SmolLM2 use every core."""
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def clients():
    return synthetic_clients()


@pytest.fixture(scope="session")
def tiny():
    """(AdapterModel, tokenizer) of the tiny random model with global + personal slots."""
    from fedoa.config import LoraConfig, ModelConfig
    from fedoa.model.adapters import AdapterModel
    from fedoa.model.base import load_base
    from fedoa.testing import tiny_model_dir

    base, tok = load_base(ModelConfig(name=str(tiny_model_dir())))
    return AdapterModel(base, LoraConfig(r=4, alpha=8, dropout=0.0)), tok


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished FedOA run folder on the tiny model (personal, mixed, global, zero-shot); read-only.
    A high learning rate makes the mixed model answer unlike the global one."""
    from tests.support.runs import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("runs") / "fedoa", reports=True, train={"lr": 0.2})


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory):
    """One finished run on the real SmolLM2, shared by the slow tests that need one (CliRun: the
    folder, the fresh model cache it converted the GGUF into, its stderr); read-only."""
    from tests.support.runs import smollm2_cli_run

    return smollm2_cli_run(tmp_path_factory.mktemp("smollm2"))
