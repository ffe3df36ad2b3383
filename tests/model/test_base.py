import pytest
import torch

from fedoa.config import ModelConfig
from fedoa.errors import ModelError
from fedoa.model.base import EMBEDDED, embedded_cache_dir, load_base
from fedoa.testing import tiny_model_dir


@pytest.mark.parametrize("name", ["/no/such/folder", "./missing-model", "missing.gguf"])
def test_unknown_model_path_is_a_clear_error(name):
    with pytest.raises(ModelError) as e:
        load_base(ModelConfig(name=name))
    assert "model.name" in str(e.value)


def test_tiny_model_is_deterministic_and_frozen():
    a, tok = load_base(ModelConfig(name=str(tiny_model_dir())))
    b, _ = load_base(ModelConfig(name=str(tiny_model_dir())))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters())
    assert tok.pad_token_id is not None


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_from_the_safetensors_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_base(ModelConfig(name=EMBEDDED))
    assert (embedded_cache_dir() / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert "Paris" in tok.decode([nxt])  # the de-quantized weights are a working model


@pytest.mark.slow
def test_a_gguf_file_path_loads_like_the_embedded_model():
    from fedoa.model.base import _EMBEDDED_GGUF, embedded_package_dir

    gguf = embedded_package_dir() / _EMBEDDED_GGUF
    from_gguf, tok = load_base(ModelConfig(name=str(gguf)))
    cached, _ = load_base(ModelConfig(name=EMBEDDED))
    ids = tok("Federated learning keeps data", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = from_gguf(input_ids=ids).logits, cached(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
