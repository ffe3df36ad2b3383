"""Stacked LoRA slots: many adapters trained in one forward pass, each batch row on its own slot.

A :class:`SlotBank` holds K adapter states as stacked tensors (``A: [K, r, in]``, ``B: [K, out, r]``
per LoRA layer, keyed like PEFT's saved files). While a :class:`Routing` is engaged
(:func:`routed`), every LoRA layer of the model adds, to its frozen base output, each row's own
slot's LoRA output computed with two batched matmuls (``torch.bmm``) over the rows grouped by
slot, so one forward and one backward pass train every slot at once. PEFT's own slots are switched
off meanwhile (``AdapterModel.peft_slots_off``, for the backward pass too).

Rows come grouped: the batch is ``S`` groups of ``rows`` rows each, group ``i`` on slot
``slots[i]``. A row may also carry a weight on its slot's output and a weight on one *fixed*
adapter shared by every row (FedDPA trains its local adapter under ``a P(x) + (1 - a) G(x)`` with
G frozen and detached); the fixed adapter takes no gradient.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from fedoa.model.adapters import GLOBAL, AdapterModel, AdapterState, per_model
from fedoa.model.mixing import InstanceWeights


def _layer_key(module_name: str, part: str) -> str:
    """``...q_proj`` + ``lora_A`` -> ``...q_proj.lora_A.weight`` (PEFT's saved key)."""
    return f"{module_name}.{part}.weight"


@dataclass
class Routing:
    """Which slot each group of rows uses in the current forward pass."""

    slots: torch.Tensor  # [S] long: the slot of each group of rows
    rows: int  # rows per group
    weight: torch.Tensor | None = None  # [S * rows]: weight on the row's own slot (None: 1)
    fixed_weight: torch.Tensor | None = None  # [S * rows]: weight on the fixed adapter (None: not used)
    all_slots: bool = False  # slots == arange(K): no gather needed

    def select(self, rows: torch.Tensor) -> "Routing":
        """The routing of some rows of this batch, one slot per row (option scoring's KV-cache
        continuation re-indexes the prompt rows: they no longer come in equal groups)."""
        per_row = self.slots.repeat_interleave(self.rows)[rows]
        return Routing(per_row, 1, None if self.weight is None else self.weight[rows],
                       None if self.fixed_weight is None else self.fixed_weight[rows])


@dataclass
class SlotModel:
    """A model scored on stacked slots (batched evaluation): ``own_weight * own(x) +
    fixed_weight * G(x)`` added to the base model's layers, G being the adapter every row shares
    (the global one). ``own`` None: no adapter of its own (a zero slot: the base model alone)."""

    own: AdapterState | None
    own_weight: float = 1.0
    fixed_weight: float = 0.0
    #: an instance-wise mix (FedDPA's inference): per-row weights from each input's features
    #: (under ``own`` alone, or the base model), in place of the two constant weights
    instance: InstanceWeights | None = None


class SlotBank:
    """K adapter states stacked per LoRA layer, optionally trainable (leaf tensors with gradients)."""

    def __init__(self, am: AdapterModel, states: list[AdapterState], trainable: bool = True,
                 fixed: AdapterState | None = None):
        keys = am.keys()
        device = am.device
        self.size = len(states)
        self.tensors: dict[str, torch.Tensor] = {}
        for k in keys:
            t = torch.stack([s[k].to(torch.float32) for s in states]).to(device)
            self.tensors[k] = t.requires_grad_(trainable)
        self.fixed = None if fixed is None else {k: fixed[k].to(device=device, dtype=torch.float32) for k in keys}

    def params(self) -> list[torch.Tensor]:
        return list(self.tensors.values())

    def state(self, slot: int) -> AdapterState:
        """A detached CPU copy of one slot (PEFT's keys)."""
        return {k: t[slot].detach().to("cpu", copy=True) for k, t in self.tensors.items()}


class SlotLayers:
    """Forward hooks on every LoRA layer of a model; inert unless a bank and a routing are engaged."""

    def __init__(self, am: AdapterModel):
        from peft.tuners.lora.layer import LoraLayer

        self.bank: SlotBank | None = None
        self.routing: Routing | None = None
        self.dropout = am.lora.dropout
        self.names = []
        for name, module in am.peft.named_modules():
            if isinstance(module, LoraLayer) and GLOBAL in module.lora_A:
                module.register_forward_hook(partial(self._add, name, float(module.scaling[GLOBAL])))
                self.names.append(name)
        if not self.names:
            raise ValueError("no LoRA layers to stack slots on")

    def _add(self, name: str, scaling: float, module, args, output):
        routing, bank = self.routing, self.bank
        if routing is None or bank is None:
            return None
        x = args[0].to(torch.float32)
        a, b = bank.tensors[_layer_key(name, "lora_A")], bank.tensors[_layer_key(name, "lora_B")]
        if not routing.all_slots:
            a, b = a.index_select(0, routing.slots), b.index_select(0, routing.slots)
        groups, width = a.shape[0], x.shape[-1]
        xd = F.dropout(x, self.dropout, training=True) if self.dropout and module.training else x
        grouped = xd.reshape(groups, -1, width)  # [S, rows * T, in]
        delta = torch.bmm(torch.bmm(grouped, a.transpose(1, 2)), b.transpose(1, 2)).reshape(*x.shape[:-1], -1)
        delta = delta * scaling
        if routing.weight is not None:
            delta = delta * routing.weight.view(-1, *([1] * (delta.dim() - 1)))
        if routing.fixed_weight is not None and bank.fixed is not None:
            with torch.no_grad():
                fa, fb = bank.fixed[_layer_key(name, "lora_A")], bank.fixed[_layer_key(name, "lora_B")]
                xf = F.dropout(x, self.dropout, training=True) if self.dropout and module.training else x
                fixed = (xf @ fa.t()) @ fb.t() * scaling
            delta = delta + fixed * routing.fixed_weight.view(-1, *([1] * (fixed.dim() - 1)))
        return (output + delta).to(output.dtype)


_LAYERS: "weakref.WeakKeyDictionary[AdapterModel, SlotLayers]" = weakref.WeakKeyDictionary()


def slot_layers(am: AdapterModel) -> SlotLayers:
    """The slot hooks of ``am`` (installed on first use, once per model)."""
    return per_model(_LAYERS, am, SlotLayers)


@contextlib.contextmanager
def routed(am: AdapterModel, bank: SlotBank, routing: Routing):
    """Forward passes of ``am`` go through ``bank``'s slots as ``routing`` says (PEFT's slots off)."""
    layers = slot_layers(am)
    with am.peft_slots_off():
        layers.bank, layers.routing = bank, routing
        try:
            yield
        finally:
            layers.bank = layers.routing = None
