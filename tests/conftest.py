"""Fixtures: the tiny model (see fedoa.testing) loaded once, and synthetic clients."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from tests.support import synthetic_clients

warnings.filterwarnings("ignore", category=FutureWarning)

# The tiny model's matmuls are too small to gain from threads, and several test processes
# (Flower nodes) share the cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


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

    return make_tiny_run(tmp_path_factory.mktemp("runs") / "fedoa", train={"lr": 0.2})
