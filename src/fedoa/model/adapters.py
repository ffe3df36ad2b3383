"""The resident base model with named LoRA slots, and adapter states as plain tensor dicts.

One copy of the base model serves every client: a client's adapters are *states* (dicts of
tensors keyed like PEFT's saved files) that are copied into a slot's parameters when the client
is served. Nothing is pickled; states are saved with safetensors in PEFT's own layout, so stock
``PeftModel.from_pretrained`` loads them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import weakref
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from fedoa.config import LoraConfig
from fedoa.io import atomic_write, write_text

GLOBAL = "global"
PERSONAL = "personal"
SLOTS = (GLOBAL, PERSONAL)
#: ``AdapterModel.active`` while PEFT's slots are off for a whole block (:meth:`AdapterModel.peft_slots_off`)
OFF_BLOCK = "<peft slots off>"

if TYPE_CHECKING:  # PEFT (and the bitsandbytes it pulls in) takes ~10 s to import: only where a model is built
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel
    from transformers import PreTrainedModel

AdapterState = dict[str, torch.Tensor]


def peft_lora_config(cfg: LoraConfig, base_path: str = "") -> PeftLoraConfig:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_path or None,
    )


def _slot_key(param_name: str, slot: str) -> str | None:
    """``...q_proj.lora_A.<slot>.weight`` -> ``...q_proj.lora_A.weight`` (PEFT's saved key)."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}.{slot}."
        if marker in param_name:
            return param_name.replace(marker, f".{part}.")
    return None


class AdapterModel:
    """A frozen base model wrapped by PEFT with one LoRA slot per name in ``slots``."""

    def __init__(
        self,
        base: PreTrainedModel,
        lora: LoraConfig,
        slots: tuple[str, ...] = SLOTS,
        base_path: str = "",
    ):
        self.lora = lora
        self.slots = slots
        self.base_path = base_path  # written into saved adapter configs
        # autocast_adapter_dtype (PEFT's default, spelled out): LoRA weights are created in float32
        # on a bfloat16/float16/quantized base, so training, FedAvg and saved files are float32.
        from peft import get_peft_model

        self.peft: PeftModel = get_peft_model(base, peft_lora_config(lora), adapter_name=slots[0],
                                              autocast_adapter_dtype=True)
        for slot in slots[1:]:
            self.peft.add_adapter(slot, peft_lora_config(lora), autocast_adapter_dtype=True)
        self.base = self.peft.get_base_model()
        self.decoder = getattr(self.base, self.base.base_model_prefix)
        self.lm_head = self.base.get_output_embeddings()
        self._head_fp32: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see logits()
        self.params: dict[str, dict[str, torch.nn.Parameter]] = {s: {} for s in slots}
        for name, p in self.peft.named_parameters():
            for slot in slots:
                key = _slot_key(name, slot)
                if key is not None:
                    self.params[slot][key] = p
        for slot in slots:
            if not self.params[slot]:
                raise ValueError(f"no LoRA parameters for slot {slot!r}: check lora.target_modules")
            if any(p.dtype != torch.float32 for p in self.params[slot].values()):
                raise ValueError(f"LoRA parameters of slot {slot!r} are not float32")
        self.active: str | None = slots[0]
        self.use(slots[0])
        self.peft.eval()

    @property
    def device(self) -> torch.device:
        return next(iter(self.params[self.slots[0]].values())).device

    # ------------------------------------------------------------------ states

    def keys(self, slot: str = GLOBAL) -> list[str]:
        return list(self.params[slot])

    def get(self, slot: str) -> AdapterState:
        """A detached CPU copy of the slot's LoRA weights."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params[slot].items()}

    def check(self, slot: str, state: AdapterState) -> None:
        """ValueError unless ``state`` has the keys and shapes of ``slot``."""
        params = self.params[slot]
        if state.keys() != params.keys():
            missing = sorted(params.keys() - state.keys())[:3]
            extra = sorted(state.keys() - params.keys())[:3]
            raise ValueError(f"adapter state does not match slot {slot!r}: missing {missing}, extra {extra}")
        for k, p in params.items():
            if state[k].shape != p.shape:
                raise ValueError(f"adapter tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")

    @torch.no_grad()
    def set(self, slot: str, state: AdapterState) -> None:
        self.check(slot, state)
        for k, p in self.params[slot].items():
            p.copy_(state[k])

    def fresh_state(self, seed: int) -> AdapterState:
        """PEFT's default LoRA init (A: kaiming-uniform, B: zeros), reproducible from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        state: AdapterState = {}
        for k, p in self.params[self.slots[0]].items():
            t = torch.empty(p.shape, dtype=torch.float32)
            if ".lora_A." in k:
                torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
            else:
                t.zero_()
            state[k] = t
        return state

    # ------------------------------------------------------------------ activation

    def use(self, slot: str | None) -> None:
        """Route forward passes through ``slot`` (``None``: the base model alone)."""
        if slot is None:
            self.active = None
            return
        self.peft.base_model.set_adapter(slot)
        for s in self.slots:  # set_adapter marks the active slot trainable; we decide that per step
            for p in self.params[s].values():
                p.requires_grad_(False)
        self.active = slot

    def trainable(self, slot: str) -> list[torch.nn.Parameter]:
        params = list(self.params[slot].values())
        for p in params:
            p.requires_grad_(True)
        return params

    def freeze(self) -> None:
        for s in self.slots:
            for p in self.params[s].values():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def adapters_off(self):
        with self.peft.disable_adapter():
            yield

    @contextlib.contextmanager
    def peft_slots_off(self):
        """PEFT's LoRA slots off for a whole block, backward passes included (gradient checkpointing
        recomputes the forward there, after ``adapters_off`` of a forward pass would have ended): the
        batched engine's stacked slots (``model/slots.py``) stand in for them meanwhile."""
        before = self.active
        self.peft.base_model.disable_adapter_layers()
        self.active = OFF_BLOCK
        try:
            yield
        finally:
            self.peft.base_model.enable_adapter_layers()  # marks the active slot trainable again
            self.active = None
            if before is not None:
                self.use(before)
            self.freeze()

    def _context(self):
        return self.adapters_off() if self.active is None else contextlib.nullcontext()

    # ------------------------------------------------------------------ forward

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        """Final hidden states (after the last norm): what the LM head reads."""
        with self._context():
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head in float32 whatever the base's dtype: in bfloat16 a logit near 20 is
        rounded to a multiple of 0.125, so close options tie and the first one wins. Only the
        positions that are scored or carry the loss come here. The frozen head's float32 copy is
        made once: casting it per call took 3x the matmul (SmolLM2 on CPU)."""
        head = self.lm_head
        if type(head) is not torch.nn.Linear or head.weight.dtype == torch.float32:
            return head(hidden)
        if self._head_fp32 is None:
            self._head_fp32 = (head.weight.detach().float(), None if head.bias is None else head.bias.detach().float())
        return torch.nn.functional.linear(hidden.float(), *self._head_fp32)

    def forward_with_cache(self, input_ids, attention_mask, position_ids, cache=None):
        """Final hidden states and the KV cache (``cache``: the prompt's, to continue from)."""
        with self._context():
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
        return out.last_hidden_state, out.cache

    def generate(self, **kw) -> torch.Tensor:
        with self._context():
            return self.peft.generate(**kw)

    # ------------------------------------------------------------------ files

    def adapter_config(self, base_path: str) -> dict:
        d = peft_lora_config(self.lora, base_path).to_dict()
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}

    def save(self, state: AdapterState, folder: str | Path) -> None:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout)."""
        save_adapter(state, self.adapter_config(self.base_path), folder)


def save_adapter(state: AdapterState, config: dict, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(folder / "adapter_model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    write_text(folder / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True, default=str))


def load_adapter_state(folder: str | Path) -> AdapterState:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def state_digest(state: AdapterState) -> str:
    """SHA-256 of an adapter state's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_bytes(state: AdapterState) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def per_model(table: weakref.WeakKeyDictionary, am: AdapterModel, make: Callable):
    """The object ``table`` holds for ``am``, made by ``make(am)`` on first use: hooks are installed
    once per model and go with it."""
    obj = table.get(am)
    if obj is None:
        obj = table[am] = make(am)
    return obj
