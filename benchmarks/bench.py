"""fedoa at scale: every figure a ratio of two things measured side by side in one run.

    make bench                              # = .venv/bin/python benchmarks/bench.py (~20 min, 2 cores)
    .venv/bin/python benchmarks/bench.py --tiny   # tiny random model, < 1 minute (a slow test runs it)

Prints a table and writes ``benchmarks/bench.json`` (``--out`` elsewhere): ``ratios`` (name ->
number), ``details`` (what each ratio was made of) and ``scaling`` (rows of the growth table).
``--tiny`` swaps SmolLM2 for the tests' tiny random model; keys and structure stay the same.

1. MFU of the local LoRA step (fedoa's ``train_slot``, batch 8, 64 and 128 tokens, no padding):
   the step's arithmetic / its time / this machine's float32 matmul peak (a 2048^3 matmul, same run).
   FLOPs counted per token (N: weights of the frozen decoder matmuls, from their shapes):
   forward 2N + backward for activation gradients 2N (frozen weights get no weight gradient) +
   LoRA 6 r (d_in + d_out) per adapted module (forward, activation and weight gradients), plus
   4 V H for the LM head only at the positions that carry the loss (2 per example here).
   Attention scores (QK^T, AV) are left out (~2% at 128 tokens): the MFU is slightly understated.
   Beside it: the same step with the LM head at every position (what a Trainer's loss does).
2. FedOA client round / FedIT client round: ``fedoa.algorithms`` through ``ClientContext`` on the
   default preset (SmolLM2, a VADER client's 64 records, batch 8, 128 tokens), round 2 (FedOA
   trains its personal adapter, then the global one), at 1 and 3 local epochs. The floor by
   arithmetic is 2 + 0.5 / epochs, not 2.0: FedOA also runs one forward pass (half a training
   step's FLOPs) per example under the received global adapter, for the regularizer's targets.
   The FedOA row sets ``target_features = "separate_pass"`` (the reference's way) and the
   ``fedoa_gs`` row ``"global_step"`` (floor 2.0), whatever the preset says.
3. Peak resident memory of an in-process FedOA simulation with 32 clients / with 2 clients (same
   per-client data: 8 synthetic records of 64 tokens, 1 round), each in its own process
   (``getrusage`` max RSS), on the tiny model and on SmolLM2.
4. Bytes a client sends per round / the base model's bytes, and all bytes sent in that 32-client
   run (up and down) / the base model's bytes.
5. A FedIT round of the default preset's 4 clients in fedoa / the same round written with a Hugging
   Face ``Trainer`` built per client per round on a PEFT LoRA model loaded from the global adapter's
   folder, client adapters written with ``save_pretrained`` and averaged from their files. Same base
   (loaded once for the whole pipeline), tokens, batch size, steps, learning rate and schedule,
   float32; the Trainer groups batches by length as fedoa does.
6. Growth of round time and peak memory with clients (2, 8, 32), sequence length (64, 128, 256) and
   LoRA rank (4, 8, 16) on the tiny model, one setting changed at a time from (2, 64, 8).
7. Option scoring with the shared KV cache / one forward per (prompt, option) pair.
8. Batched clients: clients per second of a FedOA round (round 2: personal and global step) with
   every client in one joint loop (``runtime.batch_clients = "on"``, docs/batched.md) / one client
   after another, at N = 2, 8 and 32 clients (16 records each, 40-126 tokens, batch 8), on the tiny
   model (``--batched-only`` runs just this section). Both timed side by side in one run, fastest
   of the repeats, alternating which goes first. Beside it, a FedOA run's final evaluation (every
   client's personal, mixed and global models on every client's test set, short synthetic records)
   with every model in one pass per batch of records / one model after another, at N = 2 and 8.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # the checkout's fedoa and its tests' tiny model

from fedoa.algorithms import make_algorithm  # noqa: E402
from fedoa.algorithms.base import ClientContext, batched_updates  # noqa: E402
from fedoa.config import LoraConfig, TrainConfig, default_config_path, load_config  # noqa: E402
from fedoa.data.prompts import Encoded  # noqa: E402
from fedoa.evaluation.scoring import option_scores  # noqa: E402
from fedoa.model.adapters import GLOBAL, AdapterModel  # noqa: E402
from fedoa.model.base import load_base  # noqa: E402
from fedoa.training.loop import train_slot  # noqa: E402
from fedoa.training.losses import task_objective  # noqa: E402

EMBEDDED = "embedded:smollm2-135m-instruct"
TARGETS = {  # ratio -> (comparison, bound) the brief sets
    "mfu_lora_step_seq64": (">=", 0.75), "mfu_lora_step_seq128": (">=", 0.75),
    "fedoa_over_fedit_round_1_epoch": ("<=", 2.1), "fedoa_global_step_over_fedit_round_1_epoch": ("<=", 2.1),
    "memory_32_over_2_clients_tiny": ("<=", 1.25),
    "memory_32_over_2_clients_model": ("<=", 1.25), "trainer_round_over_fedoa_round": (">=", 2.0),
}


# ----------------------------------------------------------------------------- measuring


def timed(fn, repeats: int = 3, warmup=None) -> float:
    """Median seconds of ``fn()`` after one warm-up call (``warmup`` or ``fn`` itself)."""
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(n: int = 2048) -> float:
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return 2 * n**3 / timed(lambda: torch.mm(a, b, out=out), 5)


def lora_step_flops(am: AdapterModel, tokens: int, head_positions: int, slot: str = GLOBAL) -> float:
    """Arithmetic of one LoRA training step (see the module docstring)."""
    from peft.tuners.lora.layer import LoraLayer

    frozen = lora = 0
    for name, m in am.decoder.named_modules():
        if isinstance(m, LoraLayer):
            base = m.get_base_layer()
            lora += m.r[slot] * (base.in_features + base.out_features)
        elif isinstance(m, torch.nn.Linear) and ".lora_" not in name:
            frozen += m.in_features * m.out_features
    head = am.lm_head.in_features * am.lm_head.out_features
    return 4 * frozen * tokens + 6 * lora * tokens + 4 * head * head_positions


def random_examples(vocab: int, n: int, seq: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    return [Encoded(tuple(torch.randint(10, vocab, (seq - 2,), generator=g).tolist()), (11, 2)) for _ in range(n)]


def full_head_objective(am: AdapterModel, batch):
    """The usual causal-LM loss: logits at every position, labels -100 outside the response."""
    logits = am.logits(am.hidden(batch.input_ids, batch.attention_mask)).float()
    labels = torch.full_like(batch.input_ids, -100)
    labels[batch.loss_rows, batch.loss_cols + 1] = batch.targets
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    return loss, {}


def step_seconds(am: AdapterModel, examples: list[Encoded], batch: int, pad: int, objective=task_objective) -> float:
    """Seconds per optimizer step of fedoa's own loop (a warm-up step first)."""
    cfg = TrainConfig(batch_size=batch, micro_batch_size=batch, lr=1e-4)
    am.set(GLOBAL, am.fresh_state(0))
    train_slot(am, GLOBAL, examples[:batch], cfg, objective, "warm-up", pad)
    r = train_slot(am, GLOBAL, examples, cfg, objective, "bench", pad)
    return r.seconds / r.steps


def mfu(am: AdapterModel, pad: int, peak: float, steps: int) -> dict:
    out = {}
    vocab = am.base.config.vocab_size
    for seq in (64, 128):
        examples = random_examples(vocab, 8 * steps, seq)
        s = step_seconds(am, examples, 8, pad)
        flops = lora_step_flops(am, 8 * seq, 8 * 2)
        out[seq] = {"seconds": s, "flops": flops, "flop_per_s": flops / s, "mfu": flops / s / peak}
    s_full = step_seconds(am, random_examples(vocab, 8 * steps, 128), 8, pad, full_head_objective)
    out["full_head_128_seconds"] = s_full
    return out


def scoring(am: AdapterModel, pad: int, repeats: int) -> dict:
    """16 prompts of 120 tokens, 4 options of 3-6 tokens: KV-cached scoring vs a pass per option."""
    g = torch.Generator().manual_seed(1)
    vocab = am.base.config.vocab_size
    prompts = [tuple(torch.randint(10, vocab, (120,), generator=g).tolist()) for _ in range(16)]
    options = [[tuple(torch.randint(10, vocab, (k,), generator=g).tolist()) for k in (3, 5, 4, 6)] for _ in prompts]
    am.use(GLOBAL)

    @torch.no_grad()
    def per_option(n=16):
        seqs = [p + o for p, opts in zip(prompts[:n], options[:n]) for o in opts]
        width = max(map(len, seqs))
        ids, mask = torch.full((len(seqs), width), pad), torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        for s in range(0, len(seqs), 16):
            am.logits(am.hidden(ids[s : s + 16], mask[s : s + 16])[:, 119:])

    cached = timed(lambda: option_scores(am, prompts, options, pad), repeats,
                   lambda: option_scores(am, prompts[:2], options[:2], pad))
    return {"cached_seconds": cached, "per_option_seconds": timed(per_option, repeats, lambda: per_option(2))}


# ----------------------------------------------------------------------------- FedOA vs FedIT


def client_update_seconds(cfg, method: str, epochs: int, make_context, sync=lambda: None, max_steps: int = 0) -> float:
    """Seconds of one client update of ``method`` in the round where FedOA trains both adapters;
    ``fedoa_gs``: FedOA with ``target_features = "global_step"`` (h_G from the global step's passes)."""
    c = cfg.clone()
    c.method, c.train.epochs, c.train.max_steps = method.removesuffix("_gs"), epochs, max_steps
    if c.method == "fedoa":  # both named explicitly: the embedded preset turns global_step on
        c.fedoa.target_features = "global_step" if method == "fedoa_gs" else "separate_pass"
    algo = make_algorithm(c)
    ctx = make_context(algo, c)
    g = algo.init_global(ctx.am)
    sync()
    t = time.perf_counter()
    algo.client_update(ctx, g, round_=c.fed.personal_start_round)
    sync()
    return time.perf_counter() - t


def client_round_ratios(cfg, make_context, sync=lambda: None, warmup_steps: int = 1, repeats: int = 1) -> dict:
    """FedOA client update / FedIT client update on the same data, model and settings, at 1 and 3
    local epochs, after an untimed FedOA and FedIT update of ``warmup_steps`` steps (0: a whole
    epoch; a GPU meets every padded length's kernels for the first time there), so first-call
    costs land on neither. Each update is timed ``repeats`` times and the fastest kept (noise only
    ever adds time; a GPU's updates last seconds, so one timing scatters)."""
    for method in ("fedoa", "fedit"):
        client_update_seconds(cfg, method, 1, make_context, sync, max_steps=warmup_steps)
    out = {}
    for epochs in (1, 3):
        row = {m: min(client_update_seconds(cfg, m, epochs, make_context, sync) for _ in range(repeats))
               for m in ("fedit", "fedoa", "fedoa_gs")}
        out[epochs] = {**row, "ratio": row["fedoa"] / row["fedit"], "ratio_gs": row["fedoa_gs"] / row["fedit"]}
    return out


def session_context(session):
    """``make_context`` for :func:`client_round_ratios`: the session's first client."""
    name = session.clients[0].name

    def make(algo, cfg):
        session.cfg = cfg
        return session.context(name, algo.init_client(session.am, name))

    return make


# ----------------------------------------------------------------------------- batched clients


def varied_examples(vocab: int, n: int, seed: int, low: int = 40, high: int = 126) -> list[Encoded]:
    """Records of varied length, as real prompts are (the default preset cuts them at 128 tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g).tolist()
    return [Encoded(tuple(torch.randint(10, vocab, (k,), generator=g).tolist()), (11, 2)) for k in lengths]


def round_flops(am: AdapterModel, contexts: list, phases: int) -> float:
    """Arithmetic of a round's training: every real token of every client, ``phases`` times."""
    tokens = sum(len(e) for ctx in contexts for e in ctx.train)
    heads = sum(len(e.response) for ctx in contexts for e in ctx.train)
    return phases * lora_step_flops(am, tokens, heads)


def batched_rows(am: AdapterModel, cfg, counts=(2, 8, 32), records: int = 16, method: str = "fedoa",
                 sync=lambda: None, repeats: int = 2, peak: float = 0.0, lengths=(40, 126)) -> list[dict]:
    """Clients per second, batched / sequential, of one round of ``method`` over N clients (one
    resident model), measured side by side; with ``peak``, the MFU of both (real tokens only)."""
    c = cfg.clone()
    c.method, c.fed.personal_start_round, c.train.batch_size, c.train.micro_batch_size = method, 1, 8, 8
    c.lora.dropout = 0.0
    algo = make_algorithm(c)
    vocab = am.base.config.vocab_size
    g = algo.init_global(am)

    def contexts(n):
        return [ClientContext(f"c{i}", am, varied_examples(vocab, records, i, *lengths), algo.init_client(am, f"c{i}"),
                              c, 0) for i in range(n)]

    def sequential(ctxs):
        for ctx in ctxs:
            algo.client_update(ctx, g, 1)

    def batched(ctxs):
        batched_updates(algo, ctxs, g, 1)

    def seconds(fn, ctxs):
        sync()
        t = time.perf_counter()
        fn(ctxs)
        sync()
        return time.perf_counter() - t

    warm = contexts(2)
    sequential(warm), batched(warm)  # first-call costs land on neither
    rows = []
    for n in counts:
        ctxs = contexts(n)
        times = {"sequential": [], "batched": []}
        for rep in range(repeats):
            order = ("sequential", "batched") if rep % 2 == 0 else ("batched", "sequential")
            for name in order:
                times[name].append(seconds(sequential if name == "sequential" else batched, ctxs))
        seq, bat = min(times["sequential"]), min(times["batched"])
        row = {"clients": n, "method": method, "sequential_seconds": seq, "batched_seconds": bat,
               "sequential_clients_per_s": n / seq, "batched_clients_per_s": n / bat, "ratio": seq / bat,
               "tokens_per_joint_step": round(c.train.micro_batch_size * n * (2 if method == "fedoa" else 1)
                                              * statistics.mean(len(e) for ctx in ctxs for e in ctx.train))}
        if peak:
            flops = round_flops(am, ctxs, 2 if method == "fedoa" else 1)
            row.update(sequential_mfu=flops / seq / peak, batched_mfu=flops / bat / peak)
        rows.append(row)
        print(f"  batched clients, N = {n}: {seq:.2f} s sequential, {bat:.2f} s batched", file=sys.stderr, flush=True)
    return rows


def tiny_batched_rows(repeats: int, small: bool = False) -> list[dict]:
    """Section 8 on the tests' tiny model (float32, CPU threads as set); ``small``: 4 records of
    8-24 tokens per client (``--tiny``: seconds)."""
    from fedoa.testing import tiny_config

    cfg = tiny_config()
    base, _ = load_base(cfg.model)
    am = AdapterModel(base, cfg.lora)
    if small:
        return batched_rows(am, cfg, repeats=repeats, records=4, lengths=(8, 24))
    return batched_rows(am, cfg, repeats=repeats)


def print_batched(rows: list[dict]) -> None:
    print(f"\n{'batched clients (tiny model, FedOA round)':42}")
    print(f"{'clients':>7} {'sequential s':>12} {'batched s':>9} {'clients/s seq':>13} {'clients/s bat':>13} "
          f"{'batched/seq':>11}")
    for r in rows:
        print(f"{r['clients']:7} {r['sequential_seconds']:12.2f} {r['batched_seconds']:9.2f} "
              f"{r['sequential_clients_per_s']:13.2f} {r['batched_clients_per_s']:13.2f} {r['ratio']:11.2f}")
    slower = [r["clients"] for r in rows if r["ratio"] < 1]
    if slower:
        print(f"batching is SLOWER here at N = {', '.join(map(str, slower))} "
              "(runtime.batch_clients = 'auto' keeps CPU runs sequential)")


def eval_rows(counts=(2, 8), records: int = 8, repeats: int = 2) -> list[dict]:
    """Seconds of a FedOA run's final evaluation (every client's personal, mixed and global models
    on every client's test set) with every model in one pass per batch of records (batched,
    ``evaluation/batched.py``) / one model after another, at N clients, on the tiny model with
    short synthetic records; trained-like adapters (random B). Side by side, fastest of the repeats."""
    from fedoa.runtime.common import eval_kinds
    from fedoa.runtime.inprocess import InProcess
    from fedoa.runtime.session import build_model, open_session
    from fedoa.testing import synthetic_clients, tiny_config

    cfg = tiny_config(lora={"dropout": 0.0}, eval={"zero_shot": False})
    cfg.method = "fedoa"
    model = build_model(cfg)
    am = model[0]

    def trained_like(seed):
        gen = torch.Generator().manual_seed(seed)
        return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in am.fresh_state(seed).items()}

    rows = []
    for n in counts:
        clients = synthetic_clients(tuple(f"c{i}" for i in range(n)), n_train=records, n_test=records)
        session = open_session(cfg.clone(), clients=clients, model=model)
        algo = make_algorithm(session.cfg)
        transport = InProcess(session, progress=False)
        transport.open(algo)
        transport.restore({c.name: {"personal": trained_like(i)} for i, c in enumerate(clients)}, {})
        g, kinds = trained_like(1000), eval_kinds(session.cfg, algo)
        times = {"off": [], "on": []}
        for rep in range(repeats + 1):  # the first pass of each warms up
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                session.cfg.runtime.batch_clients = mode
                t = time.perf_counter()
                transport.evaluate(session.plan, kinds, g)
                if rep:
                    times[mode].append(time.perf_counter() - t)
        seq, bat = min(times["off"]), min(times["on"])
        models = sum(len({algo.eval_identity(k, c.name) for c in clients}) for k in kinds)
        rows.append({"clients": n, "models": models, "records": n * records, "sequential_seconds": seq,
                     "batched_seconds": bat, "ratio": seq / bat})
        print(f"  batched evaluation, N = {n}: {seq:.2f} s sequential, {bat:.2f} s batched", file=sys.stderr, flush=True)
    return rows


def print_eval(rows: list[dict]) -> None:
    print(f"\n{'batched evaluation (tiny model, FedOA personal/mixed/global, every test set)':42}")
    print(f"{'clients':>7} {'models':>6} {'records':>7} {'sequential s':>12} {'batched s':>9} {'batched/seq':>11}")
    for r in rows:
        print(f"{r['clients']:7} {r['models']:6} {r['records']:7} {r['sequential_seconds']:12.2f} "
              f"{r['batched_seconds']:9.2f} {r['ratio']:11.2f}")
    slower = [r["clients"] for r in rows if r["ratio"] < 1]
    if slower:
        print(f"batched evaluation is SLOWER here at N = {', '.join(map(str, slower))}")


# ----------------------------------------------------------------------------- vs a Trainer pipeline


def fedoa_round(session, cfg) -> float:
    """One FedIT round in fedoa's in-process runtime: every client's update, then FedAvg."""
    algo = make_algorithm(cfg)
    session.cfg = cfg
    g = algo.init_global(session.am)
    t = time.perf_counter()
    updates = [algo.client_update(session.context(c.name, {}), g, 1) for c in session.clients]
    algo.aggregate(updates, g, 1)
    return time.perf_counter() - t


def trainer_round(base, tokenizer, data: dict[str, list[Encoded]], cfg, work: Path) -> tuple[float, object]:
    """The same round as users write it with transformers' Trainer and PEFT, adapters in files."""
    from datasets import Dataset
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    t = time.perf_counter()
    for name, examples in data.items():
        rows = [{"input_ids": list(e.prompt + e.response), "attention_mask": [1] * len(e),
                 "labels": [-100] * len(e.prompt) + list(e.response)} for e in examples]
        model = PeftModel.from_pretrained(base, work / "global", is_trainable=True)
        args = TrainingArguments(
            output_dir=str(work / "trainer"), per_device_train_batch_size=cfg.train.batch_size,
            num_train_epochs=cfg.train.epochs, learning_rate=cfg.train.lr, lr_scheduler_type="linear",
            weight_decay=0.0, max_grad_norm=0.0, optim="adamw_torch", train_sampling_strategy="group_by_length",
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, remove_unused_columns=False, seed=cfg.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # its end-of-training line would break the table
        trainer.train()
        model.save_pretrained(work / "clients" / name)
        base = model.unload()
    states = [load_file(str(work / "clients" / n / "adapter_model.safetensors")) for n in data]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
    save_file(mean, str(work / "global" / "adapter_model.safetensors"))
    return time.perf_counter() - t, base


def trainer_comparison(session, cfg, model_path: str) -> dict:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from fedoa.model.adapters import peft_lora_config

    c = cfg.clone()
    c.method = "fedit"
    work = Path(tempfile.mkdtemp(prefix="fedoa-bench-trainer-"))
    try:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        peft = get_peft_model(base, peft_lora_config(c.lora))
        peft.save_pretrained(work / "global")
        base = peft.unload()
        data = {cl.name: session.train[cl.name] for cl in session.clients}
        first = next(iter(data))
        warm = {first: data[first][: c.train.batch_size]}  # imports, allocator, the first Trainer
        _, base = trainer_round(base, session.tokenizer, warm, c, work)
        ours_warm = c.clone()
        ours_warm.train.max_steps = 1
        fedoa_round(session, ours_warm)
        trainer_s, base = trainer_round(base, session.tokenizer, data, c, work)
        ours_s = fedoa_round(session, c)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"clients": len(data), "steps_per_client": math.ceil(len(data[first]) / c.train.batch_size),
            "fedoa_seconds": ours_s, "trainer_seconds": trainer_s, "ratio": trainer_s / ours_s}


# ----------------------------------------------------------------------------- simulations in subprocesses


def write_clients(root: Path, clients: int, records: int) -> None:
    """``clients`` tasks of one category with the same number of long synthetic records each
    (prompts are cut to ``model.max_length``, keeping their end: every example has that length)."""
    rng = random.Random(0)
    words = ["great", "lovely", "fun", "warm", "awful", "dull", "boring", "cold", "plot", "actor", "scene"]
    for c in range(clients):
        folder = root / "reviews"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", records), ("test", 2)):
            lines = []
            for i in range(n):
                label = ("negative", "positive")[i % 2]
                text = " ".join(rng.choice(words) for _ in range(400))
                instruction = f"{text}\nIs this review positive or negative?\nOPTIONS:\n- negative\n- positive"
                lines.append(json.dumps({"instruction": instruction, "output": label, "task": f"c{c:02d}"}))
            (folder / f"c{c:02d}_{split}.jsonl").write_text("\n".join(lines) + "\n")


def simulate(spec: dict) -> dict:
    """In a child process: one round of FedOA in-process; its round time, peak RSS and traffic."""
    from fedoa.runtime.inprocess import run_simulation
    from fedoa.runtime.session import open_session

    work = Path(spec["work"])
    write_clients(work / "data", spec["clients"], spec["records"])
    cfg = load_config(default_config_path(), [
        f"model.name={json.dumps(spec['model'])}", f"model.max_length={spec['seq']}", f"lora.r={spec['r']}",
        "data.source='jsonl'", f"data.path={json.dumps(str(work / 'data'))}",
        f"data.train_per_client={spec['records']}",
        "data.test_per_client=2", "fed.rounds=1", "fed.personal_start_round=1", "eval.ood=false",
        "eval.zero_shot=false",
    ])
    session = open_session(cfg)
    base_bytes = sum(p.numel() * p.element_size() for n, p in session.am.peft.named_parameters() if ".lora_" not in n)
    results = run_simulation(cfg, work / "run", progress=False, session=session, reports=False)  # numbers only
    return {"round_seconds": results.timing["train_seconds"], "base_bytes": base_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "communication": results.communication}


def in_subprocess(spec: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fedoa-bench-sim-"))
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "work": str(work)})],
                              capture_output=True, text=True, cwd=ROOT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"simulation {spec} failed:\n{proc.stderr[-3000:]}")
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def scaling(tiny: str, small: bool) -> list[dict]:
    """One setting changed at a time from (2 clients, 64 tokens, rank 8), each in its own process
    (``small``: 2 and 32 clients only, for --tiny)."""
    base = {"model": tiny, "clients": 2, "seq": 64, "r": 8, "records": 8}
    # each setting is a process of its own (a few seconds of imports): --tiny checks only the clients axis
    clients, seqs, ranks = ((32,), (), ()) if small else ((8, 32), (128, 256), (4, 16))
    specs = [base] + [{**base, "clients": c} for c in clients] + [{**base, "seq": s} for s in seqs] + \
        [{**base, "r": r} for r in ranks]
    rows = [in_subprocess(s) for s in specs]
    first = rows[0]
    for row in rows:
        row["time_vs_base"] = row["round_seconds"] / first["round_seconds"]
        row["memory_vs_base"] = row["peak_rss_bytes"] / first["peak_rss_bytes"]
    return rows


# ----------------------------------------------------------------------------- the run


def run(args) -> dict:
    from fedoa.runtime.session import open_session
    from fedoa.testing import tiny_model_dir

    tiny = str(tiny_model_dir())
    model = tiny if args.tiny else EMBEDDED
    model_path = tiny if args.tiny else str(load_base_path())
    repeats = 1 if args.tiny else 3
    details: dict = {"model": "tiny" if args.tiny else "smollm2-135m-instruct", "threads": torch.get_num_threads()}

    clock = Clock(details)
    rows = scaling(tiny, small=args.tiny)
    two, thirty_two = rows[0], next(r for r in rows if r["clients"] == 32)
    if args.tiny:
        model_two, model_32 = two, thirty_two
    else:
        spec = {"model": model, "clients": 2, "seq": 64, "r": 8, "records": 8}
        model_two, model_32 = in_subprocess(spec), in_subprocess({**spec, "clients": 32})
    details["memory"] = {"tiny": [two["peak_rss_bytes"], thirty_two["peak_rss_bytes"]],
                         "model": [model_two["peak_rss_bytes"], model_32["peak_rss_bytes"]]}
    comm = model_32["communication"]
    details["bytes"] = {"base": model_32["base_bytes"], **comm, "clients": 32, "rounds": 1}
    clock("simulations")

    peak = matmul_peak()
    base, tok = load_base(load_config(None, [f"model.name={json.dumps(model)}"]).model)
    am = AdapterModel(base, LoraConfig())
    details["matmul_peak_flop_per_s"] = peak
    details["lora_step"] = mfu(am, tok.pad_token_id, peak, steps=repeats)
    clock("lora_step")
    details["scoring"] = scoring(am, tok.pad_token_id, repeats=1)
    clock("scoring")
    del am, base

    sizes = ["data.train_per_client=16"] if args.tiny else []
    cfg = load_config(default_config_path(), [f"model.name={json.dumps(model)}", *sizes])
    session = open_session(cfg)
    # a whole warm-up epoch and the fastest of 2 timings: single timings of the same update scattered
    # by 20% on this shared machine (84 s vs 101 s), more than the effects measured
    details["client_round"] = client_round_ratios(cfg, session_context(session), warmup_steps=0, repeats=2)
    clock("client_round")
    details["trainer"] = trainer_comparison(session, cfg, model_path)
    clock("trainer")
    details["batched"] = tiny_batched_rows(repeats=1 if args.tiny else 2, small=args.tiny)
    clock("batched")
    details["batched_eval"] = eval_rows(records=4 if args.tiny else 8, repeats=1 if args.tiny else 2)
    clock("batched_eval")

    step, scored = details["lora_step"], details["scoring"]
    ratios = {
        "mfu_lora_step_seq64": step[64]["mfu"],
        "mfu_lora_step_seq128": step[128]["mfu"],
        "full_head_step_over_fedoa_step_seq128": step["full_head_128_seconds"] / step[128]["seconds"],
        "fedoa_over_fedit_round_1_epoch": details["client_round"][1]["ratio"],
        "fedoa_over_fedit_round_3_epochs": details["client_round"][3]["ratio"],
        "fedoa_global_step_over_fedit_round_1_epoch": details["client_round"][1]["ratio_gs"],
        "fedoa_global_step_over_fedit_round_3_epochs": details["client_round"][3]["ratio_gs"],
        "memory_32_over_2_clients_tiny": thirty_two["peak_rss_bytes"] / two["peak_rss_bytes"],
        "memory_32_over_2_clients_model": model_32["peak_rss_bytes"] / model_two["peak_rss_bytes"],
        "bytes_per_client_round_over_base": comm["bytes_up_per_round"] / 32 / model_32["base_bytes"],
        "bytes_whole_run_over_base": (comm["bytes_up_total"] + comm["bytes_down_total"]) / model_32["base_bytes"],
        "trainer_round_over_fedoa_round": details["trainer"]["ratio"],
        "per_option_over_cached_scoring": scored["per_option_seconds"] / scored["cached_seconds"],
        **{f"batched_over_sequential_clients_per_s_{r['clients']}": r["ratio"] for r in details["batched"]},
        **{f"batched_over_sequential_eval_per_s_{r['clients']}": r["ratio"] for r in details["batched_eval"]},
    }
    return {"ratios": ratios, "details": details, "scaling": rows}


class Clock:
    """Seconds of each part of the run, into ``details["part_seconds"]``."""

    def __init__(self, details: dict):
        self.parts, self.t = details.setdefault("part_seconds", {}), time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part], self.t = now - self.t, now


def load_base_path() -> Path:
    from fedoa.model.base import ensure_embedded_model

    return ensure_embedded_model()


def print_table(out: dict) -> None:
    d, r = out["details"], out["ratios"]
    print(f"fedoa bench: {d['model']}, {d['threads']} threads, fp32 matmul peak "
          f"{d['matmul_peak_flop_per_s'] / 1e9:.0f} GFLOP/s\n")
    print(f"{'ratio':42} {'value':>9}  {'target':8} made of")
    s = d["lora_step"]
    parts = {
        "mfu_lora_step_seq64": f"{s[64]['seconds']:.2f} s/step, {s[64]['flop_per_s'] / 1e9:.0f} GFLOP/s",
        "mfu_lora_step_seq128": f"{s[128]['seconds']:.2f} s/step, {s[128]['flop_per_s'] / 1e9:.0f} GFLOP/s",
        "full_head_step_over_fedoa_step_seq128": f"{s['full_head_128_seconds']:.2f} s vs {s[128]['seconds']:.2f} s",
        "fedoa_over_fedit_round_1_epoch": "{fedoa:.1f} s vs {fedit:.1f} s (floor 2.5)".format(**d["client_round"][1]),
        "fedoa_over_fedit_round_3_epochs": "{fedoa:.1f} s vs {fedit:.1f} s (floor 2.17)".format(**d["client_round"][3]),
        "fedoa_global_step_over_fedit_round_1_epoch": "{fedoa_gs:.1f} s vs {fedit:.1f} s (floor 2.0)".format(
            **d["client_round"][1]),
        "fedoa_global_step_over_fedit_round_3_epochs": "{fedoa_gs:.1f} s vs {fedit:.1f} s (floor 2.0)".format(
            **d["client_round"][3]),
        "memory_32_over_2_clients_tiny": "{:.0f} vs {:.0f} MB".format(*(b / 1e6 for b in d["memory"]["tiny"][::-1])),
        "memory_32_over_2_clients_model": "{:.0f} vs {:.0f} MB".format(*(b / 1e6 for b in d["memory"]["model"][::-1])),
        "bytes_per_client_round_over_base": f"{d['bytes']['adapter_bytes'] / 1e6:.2f} MB vs "
                                            f"{d['bytes']['base'] / 1e6:.0f} MB",
        "bytes_whole_run_over_base": "32 clients, 1 round, up and down",
        "trainer_round_over_fedoa_round": "Trainer {trainer_seconds:.1f} s vs fedoa {fedoa_seconds:.1f} s".format(
            **d["trainer"]),
        "per_option_over_cached_scoring": "{per_option_seconds:.2f} s vs {cached_seconds:.2f} s".format(**d["scoring"]),
        **{f"batched_over_sequential_clients_per_s_{r['clients']}":
           f"tiny model, FedOA round: {r['batched_seconds']:.2f} s vs {r['sequential_seconds']:.2f} s"
           for r in d["batched"]},
        **{f"batched_over_sequential_eval_per_s_{r['clients']}":
           f"tiny model, FedOA evaluation, {r['models']} models: {r['batched_seconds']:.2f} s vs "
           f"{r['sequential_seconds']:.2f} s" for r in d["batched_eval"]},
    }
    for name, value in r.items():
        target = " ".join(map(str, TARGETS[name])) if name in TARGETS else ""
        print(f"{name:42} {value:9.4g}  {target:8} {parts[name]}")
    print_batched(d["batched"])
    print_eval(d["batched_eval"])
    print(f"\n{'clients':>7} {'tokens':>6} {'rank':>4} {'round s':>8} {'x':>5} {'peak MB':>8} {'x':>5}")
    for row in out["scaling"]:
        print(f"{row['clients']:7} {row['seq']:6} {row['r']:4} {row['round_seconds']:8.2f} {row['time_vs_base']:5.2f} "
              f"{row['peak_rss_bytes'] / 1e6:8.0f} {row['memory_vs_base']:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny random model, tiny sizes (< 1 minute)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "bench.json"), help="where the JSON goes")
    ap.add_argument("--batched-only", action="store_true",
                    help="only section 8: batched / sequential clients per second at N = 2, 8, 32 (tiny model)")
    ap.add_argument("--repeats", type=int, default=2, help="timings per side in --batched-only (fastest kept)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.child:
        print(json.dumps(simulate(json.loads(args.child))))
        return
    start = time.perf_counter()
    if args.batched_only:
        rows = tiny_batched_rows(args.repeats)
        evaluation = eval_rows(repeats=args.repeats)
        print(f"fedoa bench --batched-only: {torch.get_num_threads()} threads")
        print_batched(rows)
        print_eval(evaluation)
        from fedoa.io import write_json

        write_json(Path(args.out), {"batched": rows, "batched_eval": evaluation,
                                    "seconds": time.perf_counter() - start, "threads": torch.get_num_threads()})
        print(f"\n{time.perf_counter() - start:.0f} s; written to {args.out}")
        return
    out = run(args)
    out["seconds"] = time.perf_counter() - start
    print_table(out)
    from fedoa.io import write_json

    write_json(Path(args.out), out)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in out["details"]["part_seconds"].items())
    print(f"\n{out['seconds']:.0f} s ({parts}); written to {args.out}")


if __name__ == "__main__":
    main()
