"""What the tests share (not tests themselves): a tiny random model of a second architecture,
synthetic clients in the project's record format, and small configs."""
from __future__ import annotations

import random

from fedoa.config import LoraConfig, ModelConfig, RunConfig
from fedoa.data.records import ClientData, make_record
from tests.support.tiny import tiny_model_dir

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
    """A config on the tiny model: a few steps per client, seconds per run."""
    cfg = RunConfig(model=ModelConfig(name=str(tiny_model_dir()), max_length=64), lora=LoraConfig(r=4, alpha=8))
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


def vader_tiny_config(**sections) -> RunConfig:
    """The embedded VADER data on the tiny model, capped to a few records per client."""
    cfg = tiny_config(**sections)
    cfg.data.source = "vader"
    cfg.data.tasks = ["movie", "tweets", "nyt"]
    cfg.data.train_per_client = 8
    cfg.data.test_per_client = 6
    return cfg
