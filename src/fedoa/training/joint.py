"""The joint loop: many local updates (slot jobs) trained in one forward and one backward pass.

Each :class:`SlotJob` is what :func:`fedoa.training.loop.train_slot` would train alone: a start
state, a client's examples, the seed text of its batch order, and its objective (task loss, plus
optionally a feature regularizer, a proximal term, or FedDPA's training mix). The loop keeps
every job's schedule (the same batches, micro-batches, learning-rate schedule and gradient
accumulation as ``train_slot``), so a joint run gives each job the adapter its sequential run gives
(within float rounding; with LoRA dropout the draws differ).

How: the jobs' states are stacked in a :class:`fedoa.model.slots.SlotBank`; joint step ``s``
trains every job that still has an ``s``-th step. A joint micro-batch holds ``micro_batch_size``
rows per participating job (a job's shorter last micro-batch is filled with one-token dummy rows
that carry no loss), so the slot layer's batched matmuls see equal groups. Per job: its own loss
mean, its own gradient clipping, and one AdamW over the stacked tensors with per-job step counts
and learning rates; a job without a step at ``s`` (it has less data) has its weights and moments
masked out of the update.

No host round-trips inside a phase: every joint batch is built before the first step (pinned and
copied with ``non_blocking`` on CUDA, widths rounded up to fixed buckets), losses and metrics stay
on the device, and finiteness is checked once at the end.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from fedoa.config import TrainConfig
from fedoa.data.batching import epoch_batches
from fedoa.data.prompts import Encoded
from fedoa.model.adapters import AdapterModel, AdapterState
from fedoa.model.slots import Routing, SlotBank, routed
from fedoa.seeding import derive_seed
from fedoa.training.loop import NON_FINITE, LocalResult, NonFiniteLoss, lr_factor, planned_steps
from fedoa.training.losses import example_features, features

#: ``fn(h_p, h_g, group, counts, groups) -> [groups]``: a regularizer per group of rows
SegmentRegularizer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which train_slot uses


def segment_sum(values: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """Sums of ``values`` rows per group (``group[i]``: the group of row ``i``)."""
    out = torch.zeros((groups, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add(0, group, values)


@dataclass
class SlotReg:
    """A feature regularizer: ``weight * fn(h(x), target[x])`` per job (weight 0: measured only)."""

    feature: str
    weight: float
    fn: SegmentRegularizer
    #: ``[n, d]`` target features per example (the caller fills them: one pass for every job)
    target: torch.Tensor | None = None
    #: take the target from the features this client's job of that phase captured (``SlotJob.capture``)
    target_from: str | None = None


@dataclass
class SlotJob:
    """One client's local training phase, as the joint loop trains it."""

    phase: str
    start: AdapterState
    examples: list[Encoded]
    seed_text: str
    reg: SlotReg | None = None
    #: weight of the proximal term ``prox/2 * ||w - anchor||^2`` (0: none)
    prox: float = 0.0
    anchor: AdapterState | None = None
    #: the row's output is ``own * slot(x) + fixed * detach(fixed adapter(x))`` (FedDPA's training mix)
    own_weight: float = 1.0
    fixed_weight: float = 0.0
    #: a plain task-loss step whose result may be shared (StepMemo)
    memoize: bool = False
    #: keep h(x) of this kind from the job's own training passes (the last time each example is
    #: seen, dropout included) in ``captured``: FedOA's ``target_features = "global_step"``
    capture: str | None = None
    captured: torch.Tensor | None = None

    def metric_names(self) -> list[str]:
        return ["task_loss"] + (["reg"] if self.reg else []) + (["prox"] if self.prox else [])


METRICS = ("task_loss", "reg", "prox")


@dataclass
class JointBatch:
    """One joint micro-batch: ``len(slots)`` groups of ``rows`` rows (CPU tensors until :meth:`to`)."""

    slots: torch.Tensor
    rows: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_rows: torch.Tensor
    loss_cols: torch.Tensor
    loss_group: torch.Tensor
    targets: torch.Tensor
    tokens: torch.Tensor  # [S] loss tokens per group
    share: torch.Tensor  # [S] the group's share of its job's optimizer step
    last: torch.Tensor
    answer: torch.Tensor
    reg_rows: torch.Tensor  # real rows of jobs with a regularizer
    reg_group: torch.Tensor
    reg_target: torch.Tensor  # row of each reg row in the joint target table
    reg_count: torch.Tensor  # [S] rows with a regularizer per group (>= 1)
    cap_rows: torch.Tensor  # real rows of jobs that capture their features
    cap_index: torch.Tensor  # row of each captured row in the joint capture table
    weight: torch.Tensor | None = None
    fixed_weight: torch.Tensor | None = None
    all_slots: bool = False

    def _map(self, fn) -> "JointBatch":
        return JointBatch(**{name: fn(v) if isinstance(v, torch.Tensor) else v
                             for name, v in ((n, getattr(self, n)) for n in self.__dataclass_fields__)})

    def pinned(self) -> "JointBatch":
        """In page-locked host memory, so the copy to a GPU runs asynchronously."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device) -> "JointBatch":
        return self._map(lambda v: v.to(device, non_blocking=v.is_pinned()))

    def routing(self) -> Routing:
        return Routing(self.slots, self.rows, self.weight, self.fixed_weight, self.all_slots)


# ---------------------------------------------------------------------------- schedules and batches


def job_steps(job: SlotJob, cfg: TrainConfig) -> list[list[int]]:
    """The job's optimizer steps as example indices: exactly ``train_slot``'s batches."""
    total = planned_steps(len(job.examples), cfg)
    lengths = [len(e) for e in job.examples]
    steps: list[list[int]] = []
    for epoch in range(cfg.epochs):
        for idx in epoch_batches(lengths, cfg.batch_size, f"{job.seed_text}:epoch{epoch}"):
            if len(steps) >= total:
                return steps
            steps.append(idx)
    return steps


def bucket_width(width: int, bucket: int) -> int:
    return -(-width // bucket) * bucket


def build_batch(jobs: list[SlotJob], parts: list[tuple[int, list[int], int]], rows: int, pad_id: int,
                offsets: list[int], bucket: int) -> JointBatch:
    """``parts``: (job index, example indices of its micro-batch, size of its optimizer step)."""
    groups = len(parts)
    width = bucket_width(max(len(jobs[k].examples[i]) for k, idx, _ in parts for i in idx), bucket)
    ids = torch.full((groups * rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((groups * rows, width), dtype=torch.long)
    mask[:, 0] = 1  # a dummy row is one (masked-out-of-the-loss) token: no fully masked row
    loss_rows, loss_cols, loss_group, targets = [], [], [], []
    last = torch.zeros(groups * rows, dtype=torch.long)
    answer = torch.zeros(groups * rows, dtype=torch.long)
    reg_rows, reg_group, reg_target, cap_rows, cap_index = [], [], [], [], []
    tokens, share, reg_count, weight, fixed = [], [], [], [], []
    for g, (k, idx, step_size) in enumerate(parts):
        job = jobs[k]
        n_tokens = 0
        for r, i in enumerate(idx):
            e, row = job.examples[i], g * rows + r
            seq = e.prompt + e.response
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            start = len(e.prompt) - 1
            loss_rows += [row] * len(e.response)
            loss_cols += range(start, start + len(e.response))
            loss_group += [g] * len(e.response)
            targets += e.response
            n_tokens += len(e.response)
            last[row], answer[row] = len(seq) - 1, start
            if job.reg is not None:
                reg_rows.append(row)
                reg_group.append(g)
                reg_target.append(offsets[k] + i)
            if job.capture is not None:
                cap_rows.append(row)
                cap_index.append(offsets[k] + i)
        tokens.append(max(1, n_tokens))
        share.append(len(idx) / step_size)
        reg_count.append(len(idx) if job.reg is not None else 1)
        weight += [job.own_weight] * rows
        fixed += [job.fixed_weight] * rows
    slots = [k for k, _, _ in parts]
    return JointBatch(
        torch.tensor(slots), rows, ids, mask, torch.tensor(loss_rows), torch.tensor(loss_cols),
        torch.tensor(loss_group), torch.tensor(targets), torch.tensor(tokens, dtype=torch.float32),
        torch.tensor(share, dtype=torch.float32), last, answer, torch.tensor(reg_rows, dtype=torch.long),
        torch.tensor(reg_group, dtype=torch.long), torch.tensor(reg_target, dtype=torch.long),
        torch.tensor(reg_count, dtype=torch.float32), torch.tensor(cap_rows, dtype=torch.long),
        torch.tensor(cap_index, dtype=torch.long),
        None if all(w == 1.0 for w in weight) else torch.tensor(weight),
        None if all(w == 0.0 for w in fixed) else torch.tensor(fixed),
        all_slots=slots == list(range(len(jobs))),
    )


@dataclass
class Plan:
    """Every joint step of a phase: its micro-batches and, per job, whether it steps and how."""

    steps: list[list[JointBatch]] = field(default_factory=list)
    active: list[list[bool]] = field(default_factory=list)  # [step][job]
    micro: list[list[int]] = field(default_factory=list)  # [step][job] micro-batches of the job's step
    examples: list[int] = field(default_factory=list)  # per job
    job_steps: list[int] = field(default_factory=list)  # per job


def plan_phase(jobs: list[SlotJob], cfg: TrainConfig, pad_id: int, bucket: int, pin: bool = False) -> Plan:
    mbs = cfg.micro_batch_size
    schedules = [job_steps(j, cfg) for j in jobs]
    offsets = [0]
    for j in jobs:
        offsets.append(offsets[-1] + len(j.examples))
    plan = Plan(examples=[sum(map(len, s)) for s in schedules], job_steps=[len(s) for s in schedules])
    for s in range(max(plan.job_steps, default=0)):
        todo = [(k, sched[s]) for k, sched in enumerate(schedules) if s < len(sched)]
        micro = [0] * len(jobs)
        for k, idx in todo:
            micro[k] = math.ceil(len(idx) / mbs)
        batches = []
        for m in range(max(micro)):
            parts = [(k, idx[m * mbs:(m + 1) * mbs], len(idx)) for k, idx in todo if m < micro[k]]
            batch = build_batch(jobs, parts, mbs, pad_id, offsets, bucket)
            batches.append(batch.pinned() if pin else batch)
        plan.steps.append(batches)
        plan.active.append([m > 0 for m in micro])
        plan.micro.append(micro)
    return plan


# ---------------------------------------------------------------------------- the optimizer


class StackedAdamW:
    """``torch.optim.AdamW`` (single-tensor form) over stacked tensors ``[K, ...]``, one step count
    and learning rate per slot; a masked-out slot keeps its weights and moments as they are."""

    def __init__(self, params: list[torch.Tensor], weight_decay: float):
        self.params, self.weight_decay = params, weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: torch.Tensor, step_size: torch.Tensor, bc2_sqrt: torch.Tensor) -> None:
        beta1, beta2 = BETAS
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)
            on = active.view(shape)
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            new_p = p * (1 - lr.view(shape) * self.weight_decay) if self.weight_decay else p
            new_m = m.lerp(g, 1 - beta1)
            new_v = (v * beta2).addcmul_(g, g, value=1 - beta2)
            denom = (new_v.sqrt() / bc2_sqrt.view(shape)).add_(EPS)
            new_p = new_p - (new_m / denom) * step_size.view(shape)
            p.copy_(torch.where(on, new_p, p))
            m.copy_(torch.where(on, new_m, m))
            v.copy_(torch.where(on, new_v, v))
            p.grad = None


def adam_schedule(plan: Plan, jobs: list[SlotJob], cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """``[steps, 4, K]``: per joint step and job: active, lr, lr / (1 - beta1^t), sqrt(1 - beta2^t)."""
    beta1, beta2 = BETAS
    factors = [lr_factor(cfg.schedule, cfg.warmup_steps, n) for n in plan.job_steps]
    rows = []
    for s, active in enumerate(plan.active):
        t = s + 1
        lr = [cfg.lr * factors[k](s) if on else 0.0 for k, on in enumerate(active)]
        rows.append([
            [float(on) for on in active],
            lr,
            [lr[k] / (1 - beta1 ** t) for k in range(len(jobs))],
            [math.sqrt(1 - beta2 ** t)] * len(jobs),
        ])
    return torch.tensor(rows, dtype=torch.float32).to(device)


@torch.no_grad()
def clip_per_slot(params: list[torch.Tensor], max_norm: float) -> None:
    """Each slot's gradient clipped to ``max_norm`` on its own (``clip_grad_norm_`` per slot)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))


# ---------------------------------------------------------------------------- one micro-batch


def row_features(hidden: torch.Tensor, batch: JointBatch, kind: str, rows: torch.Tensor) -> torch.Tensor:
    """``features`` of the given rows only (what it reads of a batch, restricted to them)."""
    view = SimpleNamespace(last=batch.last[rows], answer=batch.answer[rows], attention_mask=batch.attention_mask[rows])
    return features(hidden[rows], view, kind)


def micro_losses(am: AdapterModel, bank: SlotBank, batch: JointBatch, reg: SlotReg | None, targets: torch.Tensor | None,
                 reg_weight: torch.Tensor, prox_weight: torch.Tensor, anchors: dict[str, torch.Tensor] | None,
                 capture: tuple[str, torch.Tensor] | None = None):
    """Per group: the loss to train on and its parts ``[S, len(METRICS)]`` (0 where a part is absent)."""
    groups = batch.slots.shape[0]
    hidden = am.hidden(batch.input_ids, batch.attention_mask)
    if capture is not None and batch.cap_rows.numel():
        kind, table = capture
        table[batch.cap_index] = row_features(hidden, batch, kind, batch.cap_rows).detach().to(table.dtype)
    logits = am.logits(hidden[batch.loss_rows, batch.loss_cols]).float()
    ce = F.cross_entropy(logits, batch.targets, reduction="none")
    task = segment_sum(ce, batch.loss_group, groups) / batch.tokens
    loss, zero = task, torch.zeros_like(task)
    reg_value = prox_value = zero
    if reg is not None and batch.reg_rows.numel():
        h = row_features(hidden, batch, reg.feature, batch.reg_rows).float()
        reg_value = reg.fn(h, targets[batch.reg_target], batch.reg_group, batch.reg_count, groups)
        loss = loss + reg_weight[batch.slots] * reg_value
    if anchors is not None:
        prox_value = sum(
            (t.index_select(0, batch.slots) - anchors[k].index_select(0, batch.slots)).pow(2).flatten(1).sum(1)
            for k, t in bank.tensors.items()
        )
        loss = loss + 0.5 * prox_weight[batch.slots] * prox_value
    return loss, torch.stack([task, reg_value, prox_value], dim=1).detach()


@functools.cache
def compiled_micro_losses():
    """``micro_losses`` through ``torch.compile`` (``train.compile``), wrapped once per process."""
    return torch.compile(micro_losses, dynamic=True)


# ---------------------------------------------------------------------------- the loop


def train_jobs(
    am: AdapterModel,
    jobs: list[SlotJob],
    cfg: TrainConfig,
    pad_id: int,
    fixed: AdapterState | None = None,
    progress: Callable[[int], None] | None = None,
    compile_step: bool = False,
) -> list[tuple[AdapterState, LocalResult]]:
    """Train every job at once; per job its final state and its :class:`LocalResult`."""
    if not jobs:
        return []
    start = time.perf_counter()
    device = am.device
    regs = {(j.reg.feature, j.reg.fn) for j in jobs if j.reg is not None}
    if len(regs) > 1:
        raise ValueError("the jobs of one joint loop share one feature regularizer")
    reg = next((j.reg for j in jobs if j.reg is not None), None)
    targets = None
    if reg is not None:
        d = next(j.reg.target for j in jobs if j.reg is not None).shape[1]
        targets = torch.cat([j.reg.target.to(device, torch.float32) if j.reg is not None
                             else torch.zeros(len(j.examples), d, device=device) for j in jobs])
    reg_weight = torch.tensor([j.reg.weight if j.reg else 0.0 for j in jobs], device=device)
    prox_weight = torch.tensor([j.prox for j in jobs], device=device)
    bank = SlotBank(am, [j.start for j in jobs], trainable=True, fixed=fixed)
    anchors = None
    if any(j.prox for j in jobs):
        anchors = {k: torch.stack([(j.anchor or j.start)[k].float() for j in jobs]).to(device) for k in am.keys()}

    capture = None
    kinds = {j.capture for j in jobs if j.capture is not None}
    if len(kinds) > 1:
        raise ValueError("the jobs of one joint loop capture one kind of feature")
    if kinds:
        hidden_size = am.base.config.hidden_size
        capture = (kinds.pop(), torch.zeros(sum(len(j.examples) for j in jobs), hidden_size, device=device))
    cuda = device.type == "cuda"
    plan = plan_phase(jobs, cfg, pad_id, bucket=64 if cuda else 1, pin=cuda)
    schedule = adam_schedule(plan, jobs, cfg, device)
    opt = StackedAdamW(bank.params(), cfg.weight_decay)
    micro = torch.tensor(plan.micro, dtype=torch.float32, device=device).clamp(min=1)
    active = torch.tensor(plan.active, device=device)
    K, M = len(jobs), len(METRICS)
    sums = torch.zeros(K, M, device=device)
    first, last = torch.zeros(K, M, device=device), torch.zeros(K, M, device=device)
    bad = torch.zeros(K, device=device)
    step_fn = compiled_micro_losses() if compile_step and device.type == "cuda" else micro_losses
    torch.manual_seed(derive_seed("joint", *(j.seed_text for j in jobs)))
    am.peft.train()
    try:
        for s, batches in enumerate(plan.steps):
            step_sums = torch.zeros(K, M, device=device)
            for cpu_batch in batches:
                batch = cpu_batch.to(device)
                with routed(am, bank, batch.routing()):
                    loss, parts = step_fn(am, bank, batch, reg, targets, reg_weight, prox_weight, anchors, capture)
                    (loss * batch.share).sum().backward()
                step_sums.index_add_(0, batch.slots, parts)
                bad.index_add_(0, batch.slots, (~torch.isfinite(loss)).float())
            if cfg.max_grad_norm > 0:
                clip_per_slot(bank.params(), cfg.max_grad_norm)
            on, lr, step_size, bc2 = schedule[s]
            opt.step(on.bool(), lr, step_size, bc2)
            per_step = step_sums / micro[s].unsqueeze(1)
            last = torch.where(active[s].unsqueeze(1), per_step, last)
            if s == 0:
                first = per_step
            sums += step_sums
            if progress:
                progress(sum(plan.active[s]))
    finally:
        am.peft.eval()
        am.freeze()
    if bad.any():  # the one check of the phase
        k = int(bad.nonzero()[0])
        raise NonFiniteLoss(f"{NON_FINITE} in {jobs[k].seed_text} (batched clients): lower train.lr or set "
                            "train.max_grad_norm; nothing was published")
    micro_total = torch.tensor([sum(col) for col in zip(*plan.micro)] if plan.micro else [0] * K,
                               dtype=torch.float32, device=device).clamp(min=1)
    means, first, last = (sums / micro_total.unsqueeze(1)).tolist(), first.tolist(), last.tolist()
    seconds = time.perf_counter() - start
    total_examples = max(1, sum(plan.examples))
    out = []
    if capture is not None:
        for job, rows in zip(jobs, capture[1].split([len(j.examples) for j in jobs])):
            job.captured = rows if job.capture is not None else None
    for k, job in enumerate(jobs):
        names = job.metric_names()
        pick = [METRICS.index(n) for n in names]
        result = LocalResult(
            steps=plan.job_steps[k], examples=plan.examples[k], seconds=seconds * plan.examples[k] / total_examples,
            metrics={n: means[k][i] for n, i in zip(names, pick)} if plan.job_steps[k] else {},
            first={n: first[k][i] for n, i in zip(names, pick)} if plan.job_steps[k] else {},
            last={n: last[k][i] for n, i in zip(names, pick)} if plan.job_steps[k] else {},
        )
        out.append((bank.state(k), result))
    return out


# ---------------------------------------------------------------------------- target features


def joint_features(am: AdapterModel, slot: str | None, example_lists: list[list[Encoded]], kind: str,
                   batch_size: int, pad_id: int) -> list[torch.Tensor]:
    """h(x) under ``slot`` of every example of every list in one no-grad pass over all of them
    (sorted by length, so batches mix clients); per list, rows in example order (float32)."""
    flat = [e for examples in example_lists for e in examples]
    if not flat:
        return [torch.zeros(0, am.base.config.hidden_size, device=am.device) for _ in example_lists]
    rows = example_features(am, slot, flat, kind, batch_size, pad_id).float()
    return list(rows.split([len(x) for x in example_lists]))
