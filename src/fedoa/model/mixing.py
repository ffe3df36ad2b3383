"""Both LoRA slots active at once, each slot's output scaled per batch row.

Every LoRA layer then computes ``W0 x + w_G[b] * G(x) + w_P[b] * P(x)`` for batch row ``b``.
FedDPA trains its local adapter under a constant mix (``0.5 P + 0.5 detach(G)``) and answers
with instance-wise weights; FedOA's "mixed" model is FedDPA's inference applied to FedOA's two
adapters (the reference evaluation script can do both).

Implementation: PEFT adds the outputs of every active adapter; forward hooks on each layer's
``lora_B[global]`` / ``lora_B[personal]`` multiply them by per-row weights ``[B, 1, 1]``, and a
pre-hook on the decoder sets those weights whenever a new prompt batch arrives. The KV-cache
continuation pass of option scoring re-indexes prompt rows; the weights follow through
:data:`CONTINUATION_ROWS`. The hooks act only while the mix is armed
*and* both slots are active, so they are inert for everything else sharing the model.
"""
from __future__ import annotations

import hashlib
import random
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial

import torch
import torch.nn.functional as F

from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, per_model

#: While option scoring runs a continuation pass over cached prompts, the prompt-batch row of
#: each input row (``None`` otherwise): the mix re-indexes its per-row weights with it.
CONTINUATION_ROWS: ContextVar[torch.Tensor | None] = ContextVar("continuation_rows", default=None)

#: ``weigh(decoder, input_ids, attention_mask, position_ids) -> [B, 2]`` weights (w_G, w_P)
RowWeights = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (left or right padding)."""
    return mask.long().cumsum(-1).argmax(-1)


class AdapterMix:
    """Per-row weights on the two slots' outputs. One per :class:`AdapterModel` (:func:`mixer_of`)."""

    def __init__(self, am: AdapterModel):
        from peft.tuners.lora.layer import LoraLayer

        self.peft = am.peft  # not ``am`` itself: the registry must not keep the model alive
        self.layers = [
            m for m in am.peft.modules()
            if isinstance(m, LoraLayer) and GLOBAL in m.lora_B and PERSONAL in m.lora_B
        ]
        if not self.layers:
            raise ValueError("mixing needs LoRA layers with both the global and the personal slot")
        self.armed = False
        self.weigh: RowWeights | None = None
        self.detach_global = False
        self.batch_weights: torch.Tensor | None = None  # [B, 2] of the current prompt batch
        self.current: torch.Tensor | None = None  # [B', 2] of the rows being computed
        self.busy = False  # True while ``weigh`` runs its own forward passes
        am.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True)
        for layer in self.layers:
            layer.lora_B[GLOBAL].register_forward_hook(partial(self._scale, 0))
            layer.lora_B[PERSONAL].register_forward_hook(partial(self._scale, 1))

    # ------------------------------------------------------------ control

    def constant(self, w_global: float, w_personal: float, detach_global: bool = False) -> None:
        """The same weights for every row; ``detach_global`` stops gradients through G's output."""
        weights = torch.tensor([w_global, w_personal])
        self.arm(lambda decoder, ids, mask, pos: weights.to(ids.device).expand(ids.shape[0], 2), detach_global)

    def arm(self, weigh: RowWeights, detach_global: bool = False) -> None:
        self.weigh, self.detach_global = weigh, detach_global
        self.batch_weights = self.current = None
        self.armed = True

    def disarm(self) -> None:
        self.armed, self.weigh, self.detach_global = False, None, False
        self.batch_weights = self.current = None

    def mixing(self) -> bool:
        probe = self.layers[0]
        return (
            self.armed and not self.busy and not probe.disable_adapters
            and GLOBAL in probe.active_adapters and PERSONAL in probe.active_adapters
        )

    # ------------------------------------------------------------ hooks

    def _before_decoder(self, module, args, kwargs):
        if not self.mixing():
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("the adapter mix needs input_ids (not inputs_embeds)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:  # a new prompt batch
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            self.busy = True
            try:
                self.batch_weights = self.weigh(module, ids, mask, kwargs.get("position_ids"))
            finally:
                self.busy = False
            self.current = self.batch_weights
        else:  # continuing cached prompts: generation keeps the rows, option scoring re-indexes them
            if self.batch_weights is None:
                raise RuntimeError("adapter mix: a cached continuation without its prompt batch")
            rows = CONTINUATION_ROWS.get()
            self.current = self.batch_weights if rows is None else self.batch_weights[rows.to(self.batch_weights.device)]
        if self.current.shape[0] != ids.shape[0]:
            raise RuntimeError(f"adapter mix: {self.current.shape[0]} row weights for a batch of {ids.shape[0]}")
        return None

    def _scale(self, slot: int, module, args, output):
        if not self.mixing():
            return None
        if self.current is None:
            raise RuntimeError("adapter mix: LoRA layer called before the decoder set the row weights")
        w = self.current[:, slot].to(output.dtype)
        out = output * w.view(-1, *([1] * (output.dim() - 1)))
        return out.detach() if slot == 0 and self.detach_global else out


_MIXERS: "weakref.WeakKeyDictionary[AdapterModel, AdapterMix]" = weakref.WeakKeyDictionary()


def mixer_of(am: AdapterModel) -> AdapterMix:
    return per_model(_MIXERS, am, AdapterMix)


def mixer_off(am: AdapterModel) -> None:
    """Disarm the mix of ``am`` if it has one (installing none)."""
    mix = _MIXERS.get(am)
    if mix is not None:
        mix.disarm()


def activate_both(am: AdapterModel, trainable: str | None = None) -> None:
    """Route forward passes through global + personal; only ``trainable`` (if any) gets gradients."""
    if am.active is None:
        am.use(GLOBAL)
    am.peft.base_model.set_adapter([GLOBAL, PERSONAL], inference_mode=True)
    if trainable is not None:
        for p in am.params[trainable].values():
            p.requires_grad_(True)


# ---------------------------------------------------------------------------- instance-wise weights


def _features_under(am: AdapterModel, slot: str | None, decoder, ids, mask, positions=None) -> torch.Tensor:
    """Final hidden state at each row's last real token, with only ``slot`` active (None: no adapter)."""
    before = list(am.peft.base_model.active_adapters)
    with torch.no_grad():
        if slot is None:
            with am.peft.disable_adapter():
                hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        else:
            am.peft.base_model.set_adapter(slot, inference_mode=True)
            try:
                hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
            finally:
                am.peft.base_model.set_adapter(before, inference_mode=True)
    return hidden[torch.arange(ids.shape[0], device=ids.device), last_token_index(mask)].float()


@torch.no_grad()
def prompt_features(am: AdapterModel, slot: str | None, prompts: list[tuple[int, ...]], pad_id: int,
                    batch_size: int = 8) -> torch.Tensor:
    """``[n, d]`` features of prompts (last real token) with only ``slot`` active, float32 on CPU."""
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        out.append(_features_under(am, slot, am.decoder, ids.to(am.device), mask.to(am.device)).cpu())
    return torch.cat(out)


def sample_for_row(row_ids: list[int], n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``n`` anchor indices for one test input, drawn per input (as the reference does)
    but seeded by the input's tokens, so the draw does not depend on batching or order."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, row_ids))}".encode()).digest()
    return sorted(random.Random(digest).sample(range(n), min(k, n)))


class InstanceWeights:
    """FedDPA's instance-wise weight: ``w = scale * mean_k cos(h(x), h(x_k))`` over ``k`` local
    training instances ``x_k`` drawn per test input, features ``h`` taken with ``feature_slot``
    alone active. ``w`` goes to the ``on`` adapter, ``1 - w`` to the other."""

    def __init__(self, am: AdapterModel, anchors: torch.Tensor, *, k: int, scale: float, seed: int,
                 on: str = GLOBAL, feature_slot: str | None = PERSONAL, clip: bool = False):
        self.am, self.anchors, self.k, self.scale, self.seed = am, anchors.float(), k, scale, seed
        self.on, self.feature_slot, self.clip = on, feature_slot, clip

    def row_weight(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        anchors = self.anchors.to(features.device)
        w = []
        for b in range(features.shape[0]):
            real = ids[b][mask[b].bool()].tolist()
            idx = sample_for_row(real, anchors.shape[0], self.k, self.seed)
            w.append(F.cosine_similarity(features[b][None, :], anchors[idx], dim=-1).mean())
        w = self.scale * torch.stack(w)
        return w.clamp(0.0, 1.0) if self.clip else w

    def __call__(self, decoder, ids, mask, positions) -> torch.Tensor:
        feats = _features_under(self.am, self.feature_slot, decoder, ids, mask, positions)
        w = self.row_weight(feats, ids, mask)
        return torch.stack([w, 1 - w] if self.on == GLOBAL else [1 - w, w], dim=-1)


def arm_instance_mix(am: AdapterModel, train_prompts: list[tuple[int, ...]], pad_id: int, **kw) -> None:
    """Both slots active, weights per input from the client's training prompts (the anchors)."""
    feature_slot = kw.get("feature_slot", PERSONAL)
    activate_both(am)
    mix = mixer_of(am)
    mix.disarm()
    if not train_prompts:  # a client without data has no anchors: the global adapter alone
        mix.constant(1.0, 0.0)
        return
    anchors = prompt_features(am, feature_slot, train_prompts, pad_id)
    activate_both(am)
    mix.arm(InstanceWeights(am, anchors, **kw))
