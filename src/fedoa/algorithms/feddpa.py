"""FedDPA: a federated global adapter plus a local adapter, mixed per test instance.

Yang, Long, Shen, Jiang, Blumenstein. "Dual-Personalizing Adapter for Federated Foundation
Models", NeurIPS 2024 (arXiv 2403.19211).

Training (FedDPA-T, the iterative variant): per round a sampled client
1. trains its local (personal) adapter P on the task loss *on top of* the received global
   adapter G: the forward pass is ``base + G + P`` with G frozen, so P learns what G lacks on the
   client's data (from ``fed.personal_start_round`` on, starting from ``fed.personal_init``);
2. trains the received G with the plain task loss and uploads it; the server averages (FedAvg).
The sequential variant FedDPA-F (P fine-tuned once after federated training) is approximated by
``fed.personal_start_round = fed.rounds``.

Inference ("personal" model of a client), ``feddpa.mix``:
- ``instance`` (FedDPA's instance-wise dynamic weighting): ``num_instances`` (5) of the client's
  training instances are sampled once (seeded by run seed and client); for a test input x,
  ``sim(x) = mean_k cos(h(x), h(x_k))`` with ``h`` the *base* model's final hidden state at the
  last prompt token, and ``w = clip(sim_scale * sim(x), 0, 1)`` (``sim_scale`` 0.5). Every LoRA
  layer then outputs ``W0 x + (1 - w) * G(x) + w * P(x)`` (``instance_weight_on = "personal"``,
  the default) or ``W0 x + w * G(x) + (1 - w) * P(x)`` (``"global"``), with ``G(x)``/``P(x)``
  the adapters' scaled LoRA outputs;
- ``fixed``: ``W0 x + w * G(x) + (1 - w) * P(x)`` with ``w = fixed_weight`` for every input;
- ``sum``: ``W0 x + G(x) + P(x)``, the composition P was trained under.
The "global" model is G alone.

Implementation: both LoRA slots are active at once (PEFT adds every active adapter's output);
forward hooks on each layer's ``lora_B[global]`` / ``lora_B[personal]`` multiply the output by a
per-row weight ``[B, 1, 1]``, and a pre-hook on the decoder sets those weights whenever a new
prompt batch arrives (computing the base-model features with the adapters disabled). The
KV-cache continuation pass of option scoring re-indexes prompt rows; the weights follow
through :data:`fedoa.evaluation.scoring.CONTINUATION_ROWS`. The hooks act only while armed by
``setup_eval`` *and* both slots are active, so they are inert for every other method sharing
the model.

Deviations / choices (the FedOA paper's description of FedDPA inference, leaves them
open):
- which adapter the instance weight multiplies: by default the local one (a test input that
  resembles the client's data leans on the local adapter; the global one keeps at least half);
- the features are the frozen base model's, of the *prompt* only (test inputs have no answer,
  so the sampled training instances are embedded without theirs either);
- ``w`` is clipped to [0, 1] (a negative cosine would otherwise subtract an adapter);
- a client that never trained has no sampled instances: its "personal" model is G alone
  (``instance``) — its P is untrained anyway;
- within a round the local adapter is trained before the global one, on top of the received G
  (FedOA's order of steps); at evaluation it is combined with the final aggregated G;
- P is trained under ``base + G + P`` but evaluated under weights that sum to 1 (``instance``,
  ``fixed``), as in FedDPA; ``mix = "sum"`` evaluates the training-time composition.
"""
from __future__ import annotations

import random
import weakref
from functools import partial

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer

from fedoa.algorithms.base import ClientContext, ClientState, ClientUpdate
from fedoa.algorithms.personalized import PersonalThenGlobal
from fedoa.algorithms.registry import register
from fedoa.data.batching import Batch
from fedoa.data.prompts import Encoded
from fedoa.evaluation.scoring import CONTINUATION_ROWS
from fedoa.model.adapters import GLOBAL, PERSONAL, AdapterModel, AdapterState
from fedoa.seeding import derive_seed
from fedoa.training.loop import Objective
from fedoa.training.losses import task_objective

#: client-state entry holding the base-model features of the sampled training instances
ANCHORS = "feddpa_anchors"
FEATURES = "features"


# ---------------------------------------------------------------------------- features and weights


def sample_instances(num_examples: int, k: int, seed: int, client: str) -> list[int]:
    """Indices of the ``k`` training instances whose features stand for the client's data."""
    k = min(k, num_examples)
    return sorted(random.Random(derive_seed(seed, "feddpa-instances", client)).sample(range(num_examples), k))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (left or right padding)."""
    return mask.long().cumsum(-1).argmax(-1)


@torch.no_grad()
def prompt_features(am: AdapterModel, prompts: list[tuple[int, ...]], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """The base model's final hidden state at each prompt's last token (no adapters), float32 on CPU."""
    out = []
    with am.adapters_off():
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, : len(p)] = torch.tensor(p)
                mask[i, : len(p)] = 1
            ids, mask = ids.to(am.device), mask.to(am.device)
            hidden = am.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            out.append(hidden[torch.arange(len(chunk), device=ids.device), last_token_index(mask)].float().cpu())
    return torch.cat(out)


def anchor_features(am: AdapterModel, train: list[Encoded], k: int, seed: int, client: str, pad_id: int) -> torch.Tensor:
    idx = sample_instances(len(train), k, seed, client)
    return prompt_features(am, [train[i].prompt for i in idx], pad_id)


def instance_weights(features: torch.Tensor, anchors: torch.Tensor, scale: float) -> torch.Tensor:
    """``clip(scale * mean_k cos(features_i, anchors_k), 0, 1)`` per row of ``features``."""
    sim = F.cosine_similarity(features.float()[:, None, :], anchors.float()[None, :, :], dim=-1).mean(-1)
    return (scale * sim).clamp(0.0, 1.0)


def slot_weights(w: torch.Tensor, on: str) -> torch.Tensor:
    """``[B, 2]`` weights of (global, personal) when ``w`` goes to the ``on`` adapter."""
    return torch.stack([1 - w, w] if on == "personal" else [w, 1 - w], dim=-1)


# ---------------------------------------------------------------------------- the per-row mix


class AdapterMix:
    """Scales each LoRA slot's output per batch row: ``W0 x + w_G[b] * G(x) + w_P[b] * P(x)``.

    Installed once per :class:`AdapterModel` (:func:`mixer_of`); acts only while armed and both
    slots are active, so the hooks cost a flag check for everyone else.
    """

    def __init__(self, am: AdapterModel):
        self.peft = am.peft  # not ``am`` itself: the registry must not keep the model alive
        self.layers = [
            m for m in am.peft.modules()
            if isinstance(m, LoraLayer) and GLOBAL in m.lora_B and PERSONAL in m.lora_B
        ]
        if not self.layers:
            raise ValueError("FedDPA needs LoRA layers with both the global and the personal slot")
        self.armed = False
        self.mode = "sum"
        self.fixed_weight = 0.5
        self.scale = 0.5
        self.on = "personal"
        self.anchors: torch.Tensor | None = None
        self.batch_weights: torch.Tensor | None = None  # [B, 2] of the current prompt batch
        self.current: torch.Tensor | None = None  # [B', 2] of the rows being computed
        self._busy = False
        am.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True)
        for layer in self.layers:
            layer.lora_B[GLOBAL].register_forward_hook(partial(self._scale, 0))
            layer.lora_B[PERSONAL].register_forward_hook(partial(self._scale, 1))

    # ------------------------------------------------------------ control

    def arm(self, mode: str, *, fixed_weight: float = 0.5, scale: float = 0.5, on: str = "personal",
            anchors: torch.Tensor | None = None) -> None:
        self.mode, self.fixed_weight, self.scale, self.on = mode, fixed_weight, scale, on
        self.anchors = anchors
        self.batch_weights = self.current = None
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
        self.anchors = self.batch_weights = self.current = None

    def mixing(self) -> bool:
        probe = self.layers[0]
        return (
            self.armed and not probe.disable_adapters
            and GLOBAL in probe.active_adapters and PERSONAL in probe.active_adapters
        )

    # ------------------------------------------------------------ weights

    def weights(self, decoder, ids: torch.Tensor, mask: torch.Tensor | None, positions) -> torch.Tensor:
        """``[B, 2]`` (w_G, w_P) for a new prompt batch."""
        n, device = ids.shape[0], ids.device
        if self.mode == "sum":
            return torch.ones((n, 2), device=device)
        if self.mode == "fixed":
            return torch.tensor([self.fixed_weight, 1.0 - self.fixed_weight], device=device).expand(n, 2)
        if self.anchors is None:  # a client that never trained: the global adapter alone
            return torch.tensor([1.0, 0.0], device=device).expand(n, 2)
        if mask is None:
            mask = torch.ones_like(ids)
        self._busy = True
        try:
            with torch.no_grad(), self.peft.disable_adapter():
                hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        finally:
            self._busy = False
        feats = hidden[torch.arange(n, device=device), last_token_index(mask)]
        w = instance_weights(feats, self.anchors.to(device), self.scale)
        return slot_weights(w, self.on)

    # ------------------------------------------------------------ hooks

    def _before_decoder(self, module, args, kwargs):
        if self._busy or not self.mixing():
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("FedDPA's instance mix needs input_ids (not inputs_embeds)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:  # a new prompt batch
            self.batch_weights = self.weights(module, ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
            self.current = self.batch_weights
        else:  # continuing cached prompts: generation keeps the rows, option scoring re-indexes them
            if self.batch_weights is None:
                raise RuntimeError("FedDPA mix: a cached continuation without its prompt batch")
            rows = CONTINUATION_ROWS.get()
            self.current = self.batch_weights if rows is None else self.batch_weights[rows.to(self.batch_weights.device)]
        if self.current.shape[0] != ids.shape[0]:
            raise RuntimeError(f"FedDPA mix: {self.current.shape[0]} row weights for a batch of {ids.shape[0]}")
        return None

    def _scale(self, slot: int, module, args, output):
        if self._busy or not self.mixing():
            return None
        if self.current is None:
            raise RuntimeError("FedDPA mix: LoRA layer called before the decoder set the row weights")
        w = self.current[:, slot].to(output.dtype)
        return output * w.view(-1, *([1] * (output.dim() - 1)))


_MIXERS: "weakref.WeakKeyDictionary[AdapterModel, AdapterMix]" = weakref.WeakKeyDictionary()


def mixer_of(am: AdapterModel) -> AdapterMix:
    mix = _MIXERS.get(am)
    if mix is None:
        mix = _MIXERS[am] = AdapterMix(am)
    return mix


def activate_both(am: AdapterModel, trainable: str | None = None) -> None:
    """Route forward passes through global + personal; only ``trainable`` (if any) gets gradients."""
    if am.active is None:
        am.use(GLOBAL)
    am.peft.base_model.set_adapter([GLOBAL, PERSONAL], inference_mode=True)
    if trainable is not None:
        for p in am.params[trainable].values():
            p.requires_grad_(True)


def on_top_of_global(objective: Objective) -> Objective:
    """``objective`` with the forward pass ``base + G + P`` (G frozen): FedDPA's local training."""

    def run(am: AdapterModel, batch: Batch):
        if set(am.peft.base_model.active_adapters) != {GLOBAL, PERSONAL}:
            activate_both(am, trainable=PERSONAL)
        return objective(am, batch)

    return run


# ---------------------------------------------------------------------------- the method


@register
class FedDPA(PersonalThenGlobal):
    name = "feddpa"

    def personal_objective(self, ctx: ClientContext, global_state: AdapterState) -> Objective:
        return on_top_of_global(task_objective)

    def client_update(self, ctx: ClientContext, global_state: AdapterState, round_: int) -> ClientUpdate:
        mixer_of(ctx.am).disarm()  # training sums G + P; never the evaluation mix
        update = super().client_update(ctx, global_state, round_)
        if ANCHORS not in ctx.state and ctx.train:
            feats = anchor_features(ctx.am, ctx.train, self.cfg.feddpa.num_instances, self.cfg.seed, ctx.name, ctx.pad_id)
            ctx.state[ANCHORS] = {FEATURES: feats}
        return update

    def setup_eval(self, am: AdapterModel, kind: str, client_state: ClientState, global_state: AdapterState) -> None:
        mix = mixer_of(am)
        mix.disarm()
        if kind != "personal":
            super().setup_eval(am, kind, client_state, global_state)
            return
        c = self.cfg.feddpa
        am.set(GLOBAL, global_state)
        am.set(PERSONAL, self.starting_personal(client_state, global_state))
        activate_both(am)
        anchors = client_state.get(ANCHORS, {}).get(FEATURES)
        mix.arm(c.mix, fixed_weight=c.fixed_weight, scale=c.sim_scale, on=c.instance_weight_on, anchors=anchors)
