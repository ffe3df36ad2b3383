"""A tiny random model of another architecture than the embedded one (Qwen2, not Llama): real
transformers + PEFT code paths in seconds, and proof that nothing assumes SmolLM2's layout.

It is saved once as an ordinary model folder (config, safetensors weights, the embedded model's
tokenizer), so production code loads it like any local model, also in the subprocesses of the
Flower tests."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

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
