"""Shared fixtures: a tiny random Llama (real transformers + PEFT code, seconds to run) and
small synthetic clients in the project's record format."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

from fedoa.config import LoraConfig, ModelConfig, RunConfig
from fedoa.data.records import ClientData, make_record

warnings.filterwarnings("ignore", category=FutureWarning)

# The tiny model's matmuls are too small to gain from threads, and several test processes
# (Flower nodes) share the cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture
def all_threads():
    """Tests on the real SmolLM2 use every core."""
    import os

    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)

WORDS = {
    "positive": ["great", "lovely", "superb", "fun", "brilliant", "warm"],
    "negative": ["awful", "dull", "boring", "bad", "terrible", "cold"],
}


def sentiment_record(label: str, rng: random.Random, domain: str):
    text = " ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(2, 6)))
    instruction = f"Is this {domain} text positive or negative?\n{text}\nOPTIONS:\n- negative\n- positive"
    return make_record(instruction, label, task=domain, category="sentiment")


def synthetic_clients(names=("a", "b", "c"), n_train=8, n_test=6, seed=0) -> list[ClientData]:
    rng = random.Random(seed)
    clients = []
    for name in names:
        labels = ["positive", "negative"]
        train = [sentiment_record(labels[i % 2], rng, name) for i in range(n_train)]
        test = [sentiment_record(labels[i % 2], rng, name) for i in range(n_test)]
        clients.append(ClientData(name, train, test))
    return clients


def tiny_config(**sections) -> RunConfig:
    cfg = RunConfig(model=ModelConfig(name="tiny:llama", max_length=64), lora=LoraConfig(r=4, alpha=8))
    cfg.data.template = "plain"
    cfg.train.lr = 1e-2
    cfg.train.batch_size = 4
    cfg.train.micro_batch_size = 2
    cfg.fed.rounds = 2
    cfg.fed.personal_start_round = 1
    cfg.eval.batch_size = 4
    for section, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    return cfg


@pytest.fixture
def clients():
    return synthetic_clients()


@pytest.fixture(scope="session")
def tiny():
    """(AdapterModel, tokenizer) of the tiny random Llama with global + personal slots."""
    from fedoa.model.adapters import AdapterModel
    from fedoa.model.base import load_base

    base, tok = load_base(ModelConfig(name="tiny:llama"))
    return AdapterModel(base, LoraConfig(r=4, alpha=8, dropout=0.0)), tok
