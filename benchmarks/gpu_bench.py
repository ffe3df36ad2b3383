"""fedoa on one GPU: the LoRA step against the card's bf16 peak, FedOA/FedIT, memory per client count.

    python benchmarks/gpu_bench.py --out DIR            # one CUDA GPU, under 9 minutes (--budget)
    python benchmarks/gpu_bench.py --tiny --out DIR     # CPU, a tiny architecture, < 1 minute (tested)
    python benchmarks/gpu_bench.py --profile --out DIR  # also where the embedded architecture's step spends its time

Writes ``DIR/gpu_bench.json`` and ``DIR/gpu_bench.md`` with four tables, measured in one run:

- ``step``: fedoa's LoRA training step (``train_slot``, batch 8 x 512 tokens, LoRA r=8 on q/v)
  in tokens/s and MFU = arithmetic / time / the bf16 matmul peak measured first (an 8192^3 bf16
  matmul loop; FLOPs counted as in ``benchmarks/bench.py``), for SmolLM2-135M's architecture and a
  1.1B Llama (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32000), both at random
  initialization (speed does not depend on the weights), with the base in bf16 and, when
  bitsandbytes is installed, 4-bit NF4 (``model.quantization = "4bit"``, bf16 compute);
- ``client_round``: FedOA client round / FedIT client round (``fedoa.algorithms``, the default
  preset's settings: 64 records of 40-126 tokens, batch 8), 1 and 3 local epochs, after a whole
  warm-up epoch of each, fastest of 3 timings;
- ``batched``: clients per second of a FedOA round (personal and global step, 16 records of 40-126
  tokens per client, batch 8) with every client in one joint loop (docs/batched.md) / one client
  after another, at N = 2, 8, 32, side by side, and the MFU of both (real tokens only), per
  architecture and mode (bf16, 4-bit);
- ``memory``: peak GPU memory (``torch.cuda.max_memory_allocated``) of a FedOA round over 2, 8
  and 32 clients (8 records each) on one resident model; on CPU (--tiny) the process's peak RSS.

Every model goes through fedoa's own loading (``load_base``): the random model is saved once as a
bf16 safetensors folder with a stand-in tokenizer. Sections that would start after ``--budget``
seconds are skipped and marked so.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import batched_rows, client_round_ratios, lora_step_flops, random_examples  # noqa: E402  (puts ../src first)

from fedoa.algorithms import make_algorithm  # noqa: E402
from fedoa.algorithms.base import ClientContext  # noqa: E402
from fedoa.config import TrainConfig, default_config_path, load_config  # noqa: E402
from fedoa.model.adapters import GLOBAL, AdapterModel  # noqa: E402
from fedoa.model.base import load_base  # noqa: E402
from fedoa.training.loop import train_slot  # noqa: E402
from fedoa.training.losses import task_objective  # noqa: E402

ARCHS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
}
TINY_ARCHS = {
    "tiny-llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> bool:
        return time.perf_counter() < self.end


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device: torch.device, n: int, iters: int) -> float:
    """FLOP/s of a square bf16 matmul loop (warm-up first)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=out)
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def save_random_model(arch: dict, folder: Path, device: torch.device) -> None:
    """A random-initialized Llama saved in bf16 with a stand-in tokenizer (load_base wants one)."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**arch, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):  # initialized where it runs: seconds on a GPU even for 1B weights
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(folder)


def run_config(folder: Path, device: torch.device, quantization: str, seq: int):
    return load_config(default_config_path(), [
        f"model.name={json.dumps(str(folder))}", "model.dtype='bfloat16'", f"model.device='{device}'",
        f"model.quantization='{quantization}'", f"model.max_length={seq}",
    ])


def adapter_model(folder: Path, device, quantization: str):
    """The saved random model through fedoa's own loading, with its LoRA adapters; and its config."""
    cfg = run_config(folder, device, quantization, 128)
    return AdapterModel(load_base(cfg.model)[0], cfg.lora), cfg


def warm_global(am: AdapterModel, warmup: list, cfg: TrainConfig) -> None:
    """A fresh global adapter, trained once untimed (first-call costs)."""
    am.set(GLOBAL, am.fresh_state(0))
    train_slot(am, GLOBAL, warmup, cfg, task_objective, "warm-up", 0)


def step_row(am: AdapterModel, device, peak: float, batch: int, seq: int, steps: int) -> dict:
    examples = random_examples(am.base.config.vocab_size, batch * (steps + 1), seq)
    cfg = TrainConfig(batch_size=batch, micro_batch_size=batch, lr=1e-4)
    warm_global(am, examples[:batch], cfg)
    sync(device)
    t = time.perf_counter()
    r = train_slot(am, GLOBAL, examples[batch:], cfg, task_objective, "bench", 0)
    sync(device)
    seconds = (time.perf_counter() - t) / r.steps
    flops = lora_step_flops(am, batch * seq, batch * 2)
    return {"batch": batch, "seq": seq, "seconds": seconds, "tokens_per_s": batch * seq / seconds,
            "flop_per_s": flops / seconds, "mfu": flops / seconds / peak}


def varied_examples(vocab: int, n: int, seed: int, low: int = 40, high: int = 126):
    """Records of varied length, as real prompts are (the default preset cuts them at 128 tokens)."""
    from fedoa.data.prompts import Encoded

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g).tolist()
    return [Encoded(tuple(torch.randint(10, vocab, (k,), generator=g).tolist()), (11, 2)) for k in lengths]


def client_rounds(am: AdapterModel, cfg, device) -> list[dict]:
    data = varied_examples(am.base.config.vocab_size, 64, seed=1)

    def make(algo, c):
        return ClientContext("c0", am, data, algo.init_client(am, "c0"), c, 0)

    ratios = client_round_ratios(cfg, make, lambda: sync(device), warmup_steps=0, repeats=3)
    return [{"epochs": e, "fedit_seconds": r["fedit"], "fedoa_seconds": r["fedoa"], "ratio": r["ratio"],
             "fedoa_global_step_seconds": r["fedoa_gs"], "ratio_global_step": r["ratio_gs"]}
            for e, r in ratios.items()]


def peak_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_row(am: AdapterModel, cfg, clients: int, device) -> dict:
    """Peak memory of one FedOA round over ``clients`` clients sharing the resident model."""
    c = cfg.clone()
    c.method, c.fed.personal_start_round = "fedoa", 1
    algo = make_algorithm(c)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    g = algo.init_global(am)
    updates = []
    for i in range(clients):
        data = varied_examples(am.base.config.vocab_size, 8, seed=i)
        ctx = ClientContext(f"c{i}", am, data, algo.init_client(am, f"c{i}"), c, 0)
        updates.append(algo.client_update(ctx, g, 1))
    algo.aggregate(updates, g, 1)
    sync(device)
    return {"clients": clients, "peak_bytes": peak_memory(device)}


def bench_arch(name: str, arch: dict, device, peak: float, sizes: dict, budget: Budget, work: Path, out: dict,
               save) -> None:
    """Measure one architecture; ``save()`` after every row, so a run cut short keeps what it measured."""
    folder = work / name
    save_random_model(arch, folder, device)
    have_bnb = importlib_ok("bitsandbytes")
    for quant in ("none", "4bit"):
        mode = "bf16" if quant == "none" else "4bit"
        if not budget.left() or (quant == "4bit" and not have_bnb):
            why = "budget" if not budget.left() else "bitsandbytes not installed"
            out["step"].append({"arch": name, "mode": mode, "skipped": why})
            continue
        am, cfg = adapter_model(folder, device, quant)
        out["step"].append({"arch": name, "mode": mode,
                            **step_row(am, device, peak, 8, sizes["seq"], sizes["steps"])})
        save()
        if budget.left():
            rows = batched_rows(am, cfg, sizes["batched"], sizes["records"], sync=lambda: sync(device), peak=peak,
                                repeats=sizes["repeats"], lengths=sizes["lengths"])
        else:
            rows = [{"clients": "-", "skipped": "budget"}]
        out["batched"] += [{"arch": name, "mode": mode, **row} for row in rows]
        save()
        if quant == "none":
            rows = client_rounds(am, cfg, device) if budget.left() else [{"epochs": "-", "skipped": "budget"}]
            out["client_round"] += [{"arch": name, **row} for row in rows]
            save()
            for clients in sizes["clients"]:
                skipped = {"clients": clients, "skipped": "budget"}
                row = memory_row(am, cfg, clients, device) if budget.left() else skipped
                out["memory"].append({"arch": name, "memory_kind": memory_kind(device), **row})
                save()
        del am
        if device.type == "cuda":
            torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)


def profile_step(arch: dict, device, device_name: str, work: Path, steps: int = 4) -> str:
    """torch.profiler tables of ``steps`` LoRA steps (batch 8 x 128 tokens, bf16 base): where the
    time goes, host (Python, dispatch, launches) against the device's kernels."""
    from torch.profiler import ProfilerActivity, profile

    folder = work / "profiled"
    save_random_model(arch, folder, device)
    am, _ = adapter_model(folder, device, "none")
    train_cfg = TrainConfig(batch_size=8, micro_batch_size=8, lr=1e-4)
    examples = random_examples(am.base.config.vocab_size, 8 * (steps + 2), 128)
    warm_global(am, examples[:16], train_cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_slot(am, GLOBAL, examples[16:], train_cfg, task_objective, "profiled", 0)
        sync(device)
    device_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages()
    return (f"# {steps} LoRA steps, batch 8 x 128 tokens, bf16 base, {device_name}\n\n"
            f"## by total host time\n\n{table.table(sort_by='cpu_time_total', row_limit=25)}\n"
            f"## by device time\n\n{table.table(sort_by=device_key, row_limit=15)}\n")


def importlib_ok(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def memory_kind(device) -> str:
    return "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (cumulative)"


def markdown(out: dict) -> str:
    def table(rows, cols):
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            cells = []
            for c in cols:
                v = row.get(c, row.get("skipped", "") if c == cols[-1] else "")
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    return "\n\n".join([
        f"# fedoa GPU bench\n\n{out['device']}; bf16 matmul peak {out['bf16_peak_flop_per_s'] / 1e12:.1f} TFLOP/s; "
        f"{out['seconds']:.0f} s",
        "## LoRA step\n\n" + table(out["step"], ["arch", "mode", "batch", "seq", "seconds", "tokens_per_s", "mfu"]),
        "## FedOA / FedIT client round\n\n" + table(out["client_round"],
                                                     ["arch", "epochs", "fedit_seconds", "fedoa_seconds", "ratio",
                                                      "fedoa_global_step_seconds", "ratio_global_step"]),
        "## Batched / sequential clients per second (FedOA round)\n\n" + table(
            out["batched"], ["arch", "mode", "clients", "sequential_seconds", "batched_seconds", "ratio",
                             "tokens_per_joint_step", "sequential_mfu", "batched_mfu"]),
        "## Peak memory by clients\n\n" + table(out["memory"], ["arch", "clients", "memory_kind", "peak_bytes"]),
    ]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_bench.json and gpu_bench.md")
    ap.add_argument("--tiny", action="store_true", help="CPU, a tiny architecture, tiny sizes (< 1 minute)")
    ap.add_argument("--budget", type=float, default=480.0, help="no section starts after this many seconds")
    ap.add_argument("--profile", action="store_true",
                    help="also write gpu_bench_profile.txt: torch.profiler tables of the first architecture's step")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    if args.tiny:
        device, archs, peak_n = torch.device("cpu"), TINY_ARCHS, 512
        sizes = {"seq": 64, "steps": 2, "clients": (2, 8), "batched": (2, 8), "records": 4,
                 "repeats": 1, "lengths": (8, 24)}
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_bench: no CUDA device (use --tiny for the CPU check)")
        sizes = {"seq": 512, "steps": 10, "clients": (2, 8, 32), "batched": (2, 8, 32), "records": 16,
                 "repeats": 2, "lengths": (40, 126)}
        device, archs, peak_n = torch.device("cuda"), ARCHS, 8192
    budget = Budget(args.budget)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out: dict = {"device": name, "step": [], "client_round": [], "batched": [], "memory": []}
    out["bf16_peak_flop_per_s"] = bf16_peak(device, peak_n, 50 if device.type == "cuda" else 3)
    from fedoa.io import write_json, write_text

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out["seconds"] = time.perf_counter() - start
        write_json(folder / "gpu_bench.json", out)
        write_text(folder / "gpu_bench.md", markdown(out))

    work = Path(tempfile.mkdtemp(prefix="fedoa-gpu-bench-"))
    try:
        for arch_name, arch in archs.items():
            bench_arch(arch_name, arch, device, out["bf16_peak_flop_per_s"], sizes, budget, work, out, save)
        if args.profile:
            write_text(folder / "gpu_bench_profile.txt", profile_step(next(iter(archs.values())), device, name, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    print(markdown(out))


if __name__ == "__main__":
    main()
