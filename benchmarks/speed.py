"""Speed of fedoa's hot paths against the machine's limits, measured side by side in one run.

    .venv/bin/python benchmarks/speed.py [--model embedded:smollm2-135m-instruct] [--repeats 3]

Prints (and writes as JSON with --json):
- the fp32 matmul peak of this machine (GFLOP/s);
- a LoRA training step (batch 8) with fedoa's loss (LM head only at response positions) next to
  the usual full-sequence LM head, and each one's model FLOP utilization (MFU);
- option scoring with the shared KV cache next to one forward pass per option.

MFU convention: a frozen base with LoRA does a forward pass (2N FLOPs per token) and a backward pass
for activations only (another 2N); N counts the matmul weights of the decoder layers, plus the LM
head at the positions where it runs. LoRA's own FLOPs and attention scores are left out (small here).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from fedoa.config import LoraConfig, ModelConfig
from fedoa.data.batching import collate
from fedoa.data.prompts import Encoded
from fedoa.evaluation.scoring import option_scores
from fedoa.model.adapters import GLOBAL, AdapterModel
from fedoa.model.base import load_base
from fedoa.training.losses import task_objective


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b, repeats) / 1e9


def decoder_matmul_params(model) -> int:
    decoder = getattr(model, model.base_model_prefix)
    return sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))


def train_step_bench(am: AdapterModel, seq: int, batch: int, repeats: int, pad: int) -> dict:
    vocab = am.base.config.vocab_size
    hidden = am.base.config.hidden_size
    g = torch.Generator().manual_seed(0)
    examples = [
        Encoded(tuple(torch.randint(10, vocab, (seq - 2,), generator=g).tolist()), (11, 2))
        for _ in range(batch)
    ]
    b = collate(examples, list(range(batch)), pad)
    am.use(GLOBAL)
    params = am.trainable(GLOBAL)
    opt = torch.optim.AdamW(params, lr=1e-4)
    am.peft.train()

    def ours():
        loss, _ = task_objective(am, b)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def full_head():  # what a Trainer with labels does: logits for every position
        logits = am.peft(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
        labels = torch.full_like(b.input_ids, -100)
        labels[b.loss_rows, b.loss_cols + 1] = b.targets
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()

    t_ours, t_full = timed(ours, repeats), timed(full_head, repeats)
    am.peft.eval()
    am.freeze()
    n = decoder_matmul_params(am.base)
    tokens = batch * seq
    flops_ours = 4 * n * tokens + 4 * vocab * hidden * len(b.targets)
    flops_full = 4 * n * tokens + 4 * vocab * hidden * tokens
    return {
        "tokens": tokens,
        "ours_s": t_ours,
        "full_head_s": t_full,
        "speedup": t_full / t_ours,
        "ours_gflops": flops_ours / t_ours / 1e9,
        "full_head_gflops": flops_full / t_full / 1e9,
    }


def scoring_bench(am: AdapterModel, prompt_len: int, option_lens: list[int], batch: int, repeats: int, pad: int) -> dict:
    vocab = am.base.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [tuple(torch.randint(10, vocab, (prompt_len,), generator=g).tolist()) for _ in range(batch)]
    options = [[tuple(torch.randint(10, vocab, (k,), generator=g).tolist()) for k in option_lens] for _ in range(batch)]
    am.use(GLOBAL)

    def cached():
        option_scores(am, prompts, options, pad)

    @torch.no_grad()
    def per_option():  # one right-padded forward per (prompt, option) pair
        seqs = [p + o for p, opts in zip(prompts, options) for o in opts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        for s in range(0, len(seqs), batch):
            h = am.hidden(ids[s : s + batch], mask[s : s + batch])
            am.logits(h[:, prompt_len - 1 :])

    t_c, t_p = timed(cached, repeats), timed(per_option, repeats)
    return {"prompt_len": prompt_len, "options": option_lens, "examples": batch,
            "cached_s": t_c, "per_option_s": t_p, "speedup": t_p / t_c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    base, tok = load_base(ModelConfig(name=args.model))
    am = AdapterModel(base, LoraConfig())
    pad = tok.pad_token_id
    out = {"threads": torch.get_num_threads(), "matmul_peak_gflops": matmul_peak()}
    print(f"threads {out['threads']}, fp32 matmul peak {out['matmul_peak_gflops']:.0f} GFLOP/s")
    out["train"] = []
    for seq in (64, 128):
        r = train_step_bench(am, seq, 8, args.repeats, pad)
        out["train"].append(r)
        print(f"LoRA step, batch 8 x {seq} tokens: fedoa {r['ours_s']:.2f} s "
              f"(MFU {r['ours_gflops'] / out['matmul_peak_gflops']:.2f}), full LM head {r['full_head_s']:.2f} s "
              f"(MFU {r['full_head_gflops'] / out['matmul_peak_gflops']:.2f}); speed-up x{r['speedup']:.2f}")
    out["scoring"] = []
    for prompt_len, opts in ((50, [1, 1]), (120, [3, 5, 4, 6])):
        r = scoring_bench(am, prompt_len, opts, 16, args.repeats, pad)
        out["scoring"].append(r)
        print(f"option scoring, 16 prompts x {prompt_len} tokens, options {opts}: cached {r['cached_s']:.2f} s, "
              f"per-option {r['per_option_s']:.2f} s; speed-up x{r['speedup']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
