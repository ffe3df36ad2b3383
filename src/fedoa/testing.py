"""Tiny models and synthetic clients for tests and benchmarks (seconds, no download).

- :func:`tiny_model_dir`: a tiny random model of another architecture than the embedded one
  (Qwen2, not Llama), saved once as an ordinary model folder (config, safetensors weights, the
  embedded model's tokenizer), so production code loads it like any local model, also in the
  subprocesses of the Flower tests; real transformers + PEFT code paths in seconds, and proof
  that nothing assumes SmolLM2's layout;
- :func:`synthetic_clients`: sentiment-like clients in the project's record format;
- :func:`tiny_config` / :func:`vader_tiny_config`: configs on the tiny model that run in seconds.
"""
from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

from fedoa.config import LoraConfig, ModelConfig, RunConfig
from fedoa.data.records import ClientData, make_record

VERSION = "qwen2-tiny-v1"  # change it to rebuild every cached copy


def tiny_model_dir() -> Path:
    from fedoa.io import replace_dir
    from fedoa.model.base import ensure_embedded_model
    from fedoa.paths import cache_dir

    tokenizer_dir = ensure_embedded_model()
    tag = hashlib.sha256(f"{VERSION}:{tokenizer_dir}".encode()).hexdigest()[:12]
    target = cache_dir() / "test-models" / f"tiny-{tag}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not (target / "model.safetensors").is_file():  # another process may have won the race
        replace_dir(tmp, target)
    return target


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
    cfg.tracking.tensorboard = False  # seconds per run; the tests that read the event files turn it on
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
